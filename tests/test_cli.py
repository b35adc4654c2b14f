"""The ``daskh5`` command line: info, demo, stats, and its one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tables
from conftest import write_node

import daskh5
from daskh5.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def mixed_file(h5path):
    with tables.open_file(h5path, "w") as f:
        f.create_carray(
            "/",
            "data",
            obj=np.ones((1000, 2)),
            filters=tables.Filters(5, "blosc:lz4", shuffle=True),
            chunkshape=(100, 2),
        )
        g = f.create_group("/", "run1")
        f.create_earray(g, "grow", obj=np.arange(50, dtype=np.int16), filters=tables.Filters(3, "zlib"))
        f.create_array(g, "fixed", obj=np.arange(6.0).reshape(2, 3))
        f.create_table("/", "events", description={"t": tables.Float64Col(), "ok": tables.BoolCol()})
        vl = f.create_vlarray("/", "vl", atom=tables.Int32Atom())
        for k in (1, 3, 2):
            vl.append(np.arange(k, dtype=np.int32))
    daskh5.write_ragged([np.ones((2, 3)), np.zeros((4, 1))], h5path, "/images", progress=False)
    return h5path


def test_info_tree_and_json(mixed_file, capsys):
    code, out, _ = run(capsys, "info", mixed_file, "--budget", "4KiB")
    assert code == 0
    assert "data" in out and "CArray" in out and "blosc:lz4(5)+shuffle" in out
    assert "zlib(3)" in out and "EArray" in out and "Table" in out and "VLArray" in out
    assert "  grow" in out  # children are indented under their group
    assert "/images (flat): 2 samples of 2-d float64" in out
    assert "/vl (vlarray): 3 samples of 1-d int32" in out
    code, out, _ = run(capsys, "info", mixed_file, "--json", "--budget", "4KiB")
    report = json.loads(out)
    nodes = {n["path"]: n for n in report["nodes"]}
    data = nodes["/data"]
    assert data["kind"] == "CArray" and data["shape"] == [1000, 2] and data["chunkshape"] == [100, 2]
    assert data["raw_bytes"] == 16000
    with tables.open_file(mixed_file) as f:  # stored size as HDF5 reports it
        assert data["stored_bytes"] == f.root.data.size_on_disk
    assert (
        data["dask"]["block_shape"] == [200, 2] and data["dask"]["blocks"] == 5
    )  # 2 chunks of 1.6 KB per 4 KiB
    assert (
        daskh5.from_pytables(mixed_file, "/data", chunks="4KiB").chunks[0][0] == 200
    )  # what it would really use
    assert nodes["/run1/fixed"]["chunkshape"] is None and nodes["/events"]["columns"] == ["ok", "t"]
    assert {g["node"] for g in report["ragged"]} == {"/images", "/vl"}
    code, out, _ = run(capsys, "info", mixed_file, "/run1")
    assert code == 0 and "CArray" not in out and "grow" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "{missing}"], "no such file"),
        (["info", "{text}"], "not an HDF5 file"),
        (["info", "{good}", "/nope"], "nearest existing nodes"),
        (["stats", "{good}", "--labels", "/data"], "labels must be one value per row"),
        (["stats", "{good}", "--data", "/nope"], "no node '/nope'"),
    ],
)
def test_errors_are_one_line_with_exit_code(argv, message, mixed_file, tmp_path, capsys):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    paths = {"missing": str(tmp_path / "missing.h5"), "text": str(text), "good": mixed_file}
    code, out, err = run(capsys, *[a.format(**paths) for a in argv])
    assert code == 1 and out == ""
    assert err.startswith("daskh5: error: ") and message in err and err.count("\n") == 1


def test_stats_matches_numpy_and_plots(h5path, tmp_path, capsys):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=5000).astype(np.int32)
    x = rng.normal(size=(5000, 2)) + labels[:, None]
    write_node(h5path, "carray", x, chunkshape=(256, 2))
    write_node(h5path, "carray", labels, mode="a", name="clusters")
    png = str(tmp_path / "s.png")
    code, out, _ = run(capsys, "stats", h5path, "--budget", "16KiB", "--json", "--plot", png)
    assert code == 0
    got = json.loads(out)
    assert got["labels"] == [0, 1, 2]
    for k in range(3):
        rows = x[labels == k]
        assert got["count"][k] == len(rows)
        np.testing.assert_allclose(got["mean"][k], rows.mean(axis=0))
        np.testing.assert_allclose(got["cov"][k], np.cov(rows, rowvar=False))
        np.testing.assert_array_equal(got["max"][k], rows.max(axis=0))
    with open(png, "rb") as fh:
        assert fh.read(8) == PNG
    code, out, _ = run(capsys, "stats", h5path, "--scheduler", "sync")
    assert code == 0 and "count" in out and "GB/s" in out


@pytest.mark.cluster
def test_stats_against_a_running_scheduler(h5path, cluster_client, capsys):
    x = np.arange(400.0).reshape(200, 2)
    write_node(h5path, "carray", x)
    write_node(h5path, "carray", np.repeat([5, 9], 100), mode="a", name="clusters")
    code, out, _ = run(capsys, "stats", h5path, "--scheduler", cluster_client.scheduler.address, "--json")
    got = json.loads(out)
    assert code == 0 and got["labels"] == [5, 9] and got["count"] == [100, 100]
    np.testing.assert_allclose(got["mean"], [x[:100].mean(axis=0), x[100:].mean(axis=0)])


@pytest.mark.cluster
def test_demo_small(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    code, out, _ = run(
        capsys,
        "demo",
        "--points",
        "200000",
        "--out",
        str(out_dir),
        "--ragged",
        "300",
        "--no-progress",
        "--budget",
        "1MiB",
    )
    assert code == 0, out
    for name in ("scatter.png", "stats.png", "ragged_lengths.png"):
        with open(out_dir / name, "rb") as fh:
            assert fh.read(8) == PNG
    data = daskh5.from_pytables(str(out_dir / "clusters.h5"), "/data").compute()
    labels = daskh5.from_pytables(str(out_dir / "clusters.h5"), "/clusters").compute()
    assert data.shape == (200_000, 2) and set(np.unique(labels)) == {0, 1, 2, 3}
    centres = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    np.testing.assert_allclose(np.abs(data - centres[labels]).std(), 0.2 * np.sqrt(1 - 2 / np.pi), rtol=0.02)
    assert "blocks of <= 1MiB" in out and out.count("\n       ") >= 4  # the table's four rows
    assert len(daskh5.open_ragged(str(out_dir / "tokens.h5"), "/tokens")) == 300


def test_console_script_and_module(tmp_path):
    help_text = subprocess.run(
        [sys.executable, "-m", "daskh5", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert all(cmd in help_text for cmd in ("info", "demo", "stats"))
    for cmd in ("info", "demo", "stats"):
        sub = subprocess.run([sys.executable, "-m", "daskh5", cmd, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0 and "usage: daskh5" in sub.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "daskh5", "info", os.fspath(tmp_path / "x.h5")], capture_output=True, text=True
    )
    assert bad.returncode == 1 and bad.stderr.startswith("daskh5: error:") and "Traceback" not in bad.stderr


# -- progress, plots, --keep ------------------------------------------------------------------------
def _labelled(path, n=60_000):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, n).astype(np.int8)
    write_node(path, "carray", rng.normal(size=(n, 2)) + labels[:, None], chunkshape=(4096, 2))
    daskh5.to_pytables(labels, path, "/clusters", progress=False)


@pytest.mark.parametrize("scheduler", ["threads", "local"])
def test_stats_shows_a_bar_over_blocks(h5path, scheduler):
    _labelled(h5path)
    argv = [sys.executable, "-m", "daskh5", "stats", h5path, "--budget", "64KiB", "--scheduler", scheduler]
    if scheduler == "local":
        argv += ["--workers", "1"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "statistics" in out.stderr and "15/15" in out.stderr  # 60,000 rows in blocks of 4,096
    quiet = subprocess.run(argv + ["--no-progress"], capture_output=True, text=True, timeout=180)
    assert "statistics" not in quiet.stderr


def test_plots_have_labels_legends_and_plain_counts(h5path, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from daskh5 import cli

    _labelled(h5path)
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    stats = daskh5.label_stats(
        daskh5.from_pytables(h5path, "/data"), daskh5.from_pytables(h5path, "/clusters")
    )
    cli.plot_stats(stats, str(tmp_path / "s.png"))
    points, labels = np.random.default_rng(1).normal(size=(300, 2)), np.arange(300) % 3
    cli.plot_scatter(points, labels, str(tmp_path / "p.png"), 300)
    cli.plot_lengths(np.arange(1, 2_000_000, 7), str(tmp_path / "l.png"))
    assert all((tmp_path / n).stat().st_size > 10_000 for n in ("s.png", "p.png", "l.png"))
    for fig in figures:
        fig.canvas.draw()
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
            assert ax.yaxis.get_offset_text().get_text() == ""  # no "1e6" above the axis
    ellipses, bars = figures[0].axes
    assert [t.get_text() for t in ellipses.get_legend().get_texts()] == ["0", "1", "2"]
    assert any("," in t.get_text() for t in bars.get_yticklabels())  # 20,000 rather than 2e4
    legend = [t.get_text() for t in figures[1].axes[0].get_legend().get_texts()]
    assert legend == ["0 (100)", "1 (100)", "2 (100)"]  # each colour named
    assert any("," in t.get_text() for t in figures[2].axes[0].get_yticklabels())


def test_demo_keep_holds_the_dashboard_until_ctrl_c(tmp_path):
    import signal
    import urllib.request

    argv = [sys.executable, "-m", "daskh5", "demo", "--points", "20000", "--ragged", "100", "--workers", "1",
            "--out", str(tmp_path), "--keep", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        link = None
        for line in proc.stdout:
            if "dashboard http" in line and link is None:
                link = line.split("dashboard ")[1].split()[0].rstrip(";")
            if "press Ctrl-C" in line:
                break
        assert link, "no dashboard link printed"
        with urllib.request.urlopen(link, timeout=30) as page:  # bokeh serves it
            assert page.status == 200
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopping the cluster" in rest


def test_info_shows_pandas_keys_by_columns_and_vlarray_values(tmp_path, capsys):
    """A pandas key is its columns (its storage nodes with --raw); a VLArray's size is its values."""
    import pandas as pd

    path = str(tmp_path / "mixed.h5")
    pd.DataFrame({"x": np.arange(3.0), "name": ["a", "b", "c"]}).to_hdf(path, key="df", format="fixed")
    with tables.open_file(path, "a") as f:
        v = f.create_vlarray("/", "v", tables.Float64Atom())
        for n in range(1, 101):
            v.append(np.arange(n, dtype="f8"))
    assert main(["info", path]) == 0
    text = capsys.readouterr().out
    assert "/df (frame, format=fixed): 3 rows x 2 columns: x, name" in text
    assert "axis0" not in text and "block0_values" not in text
    assert main(["info", path, "--raw"]) == 0
    assert "axis0" in capsys.readouterr().out
    assert main(["info", path, "--json"]) == 0
    (v,) = [r for r in json.loads(capsys.readouterr().out)["nodes"] if r["path"] == "/v"]
    assert v["payload_bytes"] == sum(range(1, 101)) * 8  # the values, not the 16-byte heap ids


def test_stats_on_array_nodes_whose_names_hold_a_colon(h5path, capsys):
    """HDF5 names may hold ':'; a node of that name is an array node, not NODE:COLUMNS."""
    x = np.arange(40.0).reshape(20, 2)
    with warnings.catch_warnings(), tables.open_file(h5path, "w") as f:
        warnings.simplefilter("ignore", tables.NaturalNameWarning)
        f.create_carray("/", "run:1", obj=x)
        f.create_carray("/", "lab:1", obj=np.arange(20) % 2)
    code, out, err = run(
        capsys, "stats", h5path, "--data", "/run:1", "--labels", "/lab:1", "--json", "--scheduler", "sync"
    )
    assert code == 0, err
    got = json.loads(out)
    assert got["labels"] == [0, 1]
    np.testing.assert_allclose(got["mean"][0], x[::2].mean(axis=0))

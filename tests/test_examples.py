"""The examples run, and compute what they claim."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quickstart(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "quickstart.py"),
            "--points",
            "300000",
            "--out",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = [
        line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and len(line.split()) == 6
    ]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3]
    assert sum(int(r[1]) for r in rows) == 300_000
    means = np.array([[float(r[2]), float(r[3])] for r in rows])
    np.testing.assert_allclose(means, [[1, 1], [-1, 1], [-1, -1], [1, -1]], atol=0.01)
    stds = np.array([[float(r[4]), float(r[5])] for r in rows])
    np.testing.assert_allclose(stds, 0.2, atol=0.01)
    assert (tmp_path / "clusters.h5").exists()


# -- the examples that redo the seed notebook's journey, each at a small size -------------------------
def run_example(name: str, out, *args: str, timeout: float = 120) -> str:
    """Run ``examples/<name>`` with ``--small --out <out>`` in a fresh interpreter; its stdout."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), "--small", "--out", str(out), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.stdout


def test_journey(tmp_path):
    import re

    import tables

    out = run_example("journey.py", tmp_path)
    sections = re.findall(r"^\[ok\] (\d)\. ", out, flags=re.M)
    assert sections == [str(i) for i in range(1, 9)]
    assert "journey: 8 sections checked against numpy" in out
    # The memory budget: 64KiB blocks of whole 1024-row HDF5 chunks of a (40000, 4) float32 array.
    m = re.search(r"chunks='64KiB' -> (\d+) blocks of (\d+) rows", out)
    blocks, rows = int(m.group(1)), int(m.group(2))
    assert rows * 4 * 4 <= 64 * 1024 and rows % 1024 == 0 and blocks == -(-40_000 // rows)
    # The EArray grew through two appends, and PyTables sees it.
    with tables.open_file(tmp_path / "earray.h5") as f:
        assert f.root.log2.nrows == 10_000 + 6_666 + 4_000
        assert f.root.log.nrows == 10_000 + 6_666
    # write_ragged left PyTables' three EArrays of the flat layout.
    with tables.open_file(tmp_path / "flat_daskh5.h5") as f:
        assert f.root.spec_start_and_stop.shape == (200, 2) and f.root.spec_shape.shape == (200, 2)


def test_cluster_stats(tmp_path):
    import tables

    out = run_example("cluster_stats.py", tmp_path)
    rows = [
        line.split() for line in out.splitlines() if line[:8].strip().isdigit() and len(line.split()) == 13
    ]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3]
    counts = np.array([int(r[1].replace(",", "")) for r in rows])
    means = np.array([[float(r[2]), float(r[3])] for r in rows])
    stds = np.array([[float(r[4]), float(r[5])] for r in rows])
    assert counts.sum() == 200_000
    # What it printed is what numpy finds in the file it wrote.
    with tables.open_file(tmp_path / "clusters.h5") as f:
        x, labels = f.root.data[:], f.root.clusters[:]
    for k in range(4):
        assert counts[k] == (labels == k).sum()
        np.testing.assert_allclose(means[k], x[labels == k].mean(axis=0), atol=1e-4)
        np.testing.assert_allclose(stds[k], x[labels == k].std(axis=0, ddof=1), atol=1e-4)
    np.testing.assert_allclose(means, [[1, 1], [-1, 1], [-1, -1], [1, -1]], atol=0.01)
    assert "checked against numpy" in out


def test_ragged_images(tmp_path):
    import re

    import daskh5

    out = run_example("ragged_images.py", tmp_path)
    assert "wrote 300 images" in out and "checked 300 images against numpy" in out
    brightest = [(int(i), float(v)) for i, v in re.findall(r"#(\d+) \(([\d.]+)\)", out.split("brightest")[1])]
    assert len(brightest) == 3 and brightest[0][1] >= brightest[1][1] >= brightest[2][1]
    kinds = dict(re.findall(r"'(\w+)': (\d+)", out))
    with daskh5.open_ragged(tmp_path / "images.h5", "/images") as r:
        assert len(r) == 300 and r.ndim == 3 and (r.shapes[:, 2] == 3).all()
        for i, value in brightest:  # recomputed from the file with plain numpy
            luma = r[i].reshape(-1, 3).mean(axis=0) @ [0.299, 0.587, 0.114]
            assert abs(luma - value) < 0.06
        assert int(kinds["portrait"]) == int((r.shapes[:, 0] > r.shapes[:, 1]).sum())
    with daskh5.open_ragged(tmp_path / "images.h5", "/thumbs") as t:
        assert len(t) == 300
    daskh5.close_files()


def test_xarray_groupby(tmp_path):
    import re

    import tables

    out = run_example("xarray_groupby.py", tmp_path)
    found = re.findall(
        r"cluster (\d): n=(\d+) mean=\(([-+.\d]+), ([-+.\d]+)\) std=\(([.\d]+), ([.\d]+)\)", out
    )
    assert [int(f[0]) for f in found] == [0, 1, 2, 3]
    with tables.open_file(tmp_path / "clusters.h5") as f:
        x, labels = f.root.data[:], f.root.clusters[:]
    for k, n, m0, m1, s0, s1 in found:
        rows = x[labels == int(k)]
        assert int(n) == len(rows)
        np.testing.assert_allclose([float(m0), float(m1)], rows.mean(axis=0), atol=1e-4)
        np.testing.assert_allclose([float(s0), float(s1)], rows.std(axis=0, ddof=1), atol=1e-4)
    assert "groupby agrees with daskh5.label_stats" in out
    assert "DataTree with children ['run1', 'run2']" in out and "datatree runs checked" in out


def test_write_back(tmp_path):
    import tables
    import xarray as xr

    out = run_example("write_back.py", tmp_path)
    assert "reopened identical" in out and "(numpy agrees)" in out
    assert "NodeExistsError" in out  # writing over a node without overwrite=True was refused
    with tables.open_file(tmp_path / "sensors.h5") as f:
        raw = f.root.steps[:].astype(np.float64)
        z = f.root.derived.normalised[:].astype(np.float64)
    assert raw.shape == z.shape == (50_000, 3)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-4)
    with tables.open_file(tmp_path / "walk.h5") as f:
        assert f.root.walk.shape == (5_000, 3) and f.root.walk.filters.complib == "zlib"
        np.testing.assert_allclose(f.root.walk[-1], raw.cumsum(axis=0)[-10], rtol=1e-9)
    ds = xr.open_dataset(tmp_path / "analysis.h5", engine="daskh5", group="/run1")
    assert ds.channel.values.tolist() == ["north", "east", "up"] and ds.position.attrs["units"] == "m"
    np.testing.assert_allclose(ds.normalised.values, z, rtol=1e-6)


def test_distributed_cluster(tmp_path):
    import re

    import tables

    out = run_example("distributed_cluster.py", tmp_path, "--workers", "2", timeout=180)
    assert "cluster: 2 workers" in out and "checked against numpy" in out
    assert [int(s) for s in re.findall(r"^(\d)\. ", out, flags=re.M)] == [1, 2, 3, 4, 5]
    printed = float(re.search(r"mean distance to the cluster centre ([.\d]+)", out).group(1))
    with tables.open_file(tmp_path / "derived.h5") as f:
        distance = f.root.distance[:]
    assert distance.shape == (200_000,)
    assert abs(distance.mean() - printed) < 1e-4
    # Gaussian noise of sigma 0.2 in 2-d: the mean distance is 0.2 * sqrt(pi / 2).
    assert abs(printed - 0.2 * np.sqrt(np.pi / 2)) < 0.01


def test_train_minibatch(tmp_path):
    """Mini-batch k-means from a file three times the shuffle window finds the four centres."""
    out = run_example("train_minibatch.py", tmp_path)
    assert "1MiB window" in out and float(out.split("labels: ")[1].split()[0]) > 0.99
    rows = [line.split() for line in out.splitlines() if len(line.split()) == 3 and line.split()[0].isdigit()]
    centres = np.array([[float(r[1]), float(r[2])] for r in rows])
    np.testing.assert_allclose(centres, [[-1, -1], [-1, 1], [1, -1], [1, 1]], atol=0.03)

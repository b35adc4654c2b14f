"""``label_stats`` on ``read_table`` columns, and ``daskh5 stats --data NODE:COLS`` (issue 16).

The reference is pandas' ``groupby`` on ``pd.read_hdf`` of the same real file, and
``label_stats`` on the equivalent dask arrays.
"""

from __future__ import annotations

import json
import os
import warnings

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import tables

import daskh5
from daskh5 import cli
from daskh5 import table as table_module

N = 30_000
COLUMNS = ["x", "y"]


def _frame(seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 4, N)
    centres = np.array([[0.0, 0.0], [5.0, 1.0], [-3.0, 4.0], [2.0, -6.0]])
    xy = centres[label] + rng.normal(size=(N, 2)) * np.array([1.0, 0.5])
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "z": rng.normal(size=N), "label": label})


@pytest.fixture(scope="module")
def obs(tmp_path_factory) -> str:
    """A PyTables Table ``/obs`` and a pandas table key ``df`` of the same rows, blosc-compressed."""
    path = str(tmp_path_factory.mktemp("tstats") / "obs.h5")
    df = _frame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df.to_hdf(path, key="df", format="table", data_columns=["label"], complevel=5, complib="blosc:lz4")
    with tables.open_file(path, "a") as f:
        f.create_table(
            "/",
            "obs",
            obj=df.to_records(index=False),
            filters=tables.Filters(5, "blosc:lz4"),
            chunkshape=(1024,),
        )
        f.create_carray("/", "data", obj=df[COLUMNS].to_numpy())
        f.create_carray("/", "clusters", obj=df["label"].to_numpy())
    return path


def _reference(path: str, key: str = "df"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pd.read_hdf(path, key).groupby("label")


def _assert_like_pandas(stats, groups, columns=COLUMNS) -> None:
    g = groups[columns]
    assert stats.labels.tolist() == sorted(groups.groups)
    np.testing.assert_array_equal(stats.count, g.size().to_numpy())
    for ours, theirs in [
        ("mean", g.mean()),
        ("var", g.var()),
        ("std", g.std()),
        ("min", g.min()),
        ("max", g.max()),
    ]:
        np.testing.assert_allclose(
            getattr(stats, ours), theirs.to_numpy(), rtol=1e-10, atol=1e-12, err_msg=ours
        )
    for i, label in enumerate(stats.labels.tolist()):
        cov = g.get_group(label).cov().to_numpy()
        np.testing.assert_allclose(stats.cov[i], cov, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("key", ["/obs", "df"])
@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_label_stats_on_table_columns_equals_pandas_groupby(obs, key, scheduler):
    ddf = daskh5.read_table(obs, key, partition_size="64KiB")
    assert ddf.npartitions > 3
    stats = daskh5.label_stats(ddf[COLUMNS], ddf["label"], scheduler=scheduler)
    _assert_like_pandas(stats, _reference(obs))


def test_label_stats_on_a_local_cluster(obs, cluster_client):
    ddf = daskh5.read_table(obs, "/obs", partition_size="64KiB")
    stats = daskh5.label_stats(ddf[COLUMNS], ddf["label"])  # the client's cluster by default
    _assert_like_pandas(stats, _reference(obs))


def test_frame_columns_give_what_the_equivalent_arrays_give(obs):
    ddf = daskh5.read_table(obs, "/obs", partition_size="64KiB")
    rows = [b - a for a, b in zip(ddf.divisions[:-2], ddf.divisions[1:-1], strict=True)]
    rows.append(N - sum(rows))
    x = da.from_array(daskh5.from_pytables(obs, "/data").compute(), chunks=(tuple(rows), 2))
    y = da.from_array(daskh5.from_pytables(obs, "/clusters").compute(), chunks=(tuple(rows),))
    on_frames = daskh5.label_stats(ddf[COLUMNS], ddf["label"])
    on_arrays = daskh5.label_stats(x, y)
    for k in ("labels", "count", "sum", "mean", "var", "std", "min", "max", "cov"):
        np.testing.assert_array_equal(getattr(on_frames, k), getattr(on_arrays, k), err_msg=k)


def test_data_and_labels_are_read_together_once_per_partition(obs, monkeypatch):
    calls = []
    real = table_module.ReadRows.__call__

    def counting(self, rows, columns=None):
        calls.append((rows, None if columns is None else tuple(sorted(columns))))
        return real(self, rows, columns)

    monkeypatch.setattr(table_module.ReadRows, "__call__", counting)
    ddf = daskh5.read_table(obs, "/obs", partition_size="64KiB")
    calls.clear()  # read_table's empty frame for the meta
    daskh5.label_stats(ddf[COLUMNS], ddf["label"], scheduler="sync")
    assert len(calls) == ddf.npartitions
    assert {c for _, c in calls} == {("label", "x", "y")}  # z is not decoded


def test_string_categorical_and_missing_labels_like_pandas(tmp_path):
    path = str(tmp_path / "s.h5")
    df = _frame(7)
    names = np.array(["north", "south", "east", "west"])[df["label"]].astype(object)
    names[::97] = None
    df = df.assign(name=names, cat=pd.Categorical(np.array(["b", "a", "c", "a"])[df["label"]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df.to_hdf(path, key="df", format="table")
    ddf = daskh5.read_table(path, "df", partition_size="64KiB")
    for label in ("name", "cat"):
        stats = daskh5.label_stats(ddf[COLUMNS], ddf[label])
        groups = pd.read_hdf(path, "df").groupby(label, observed=True)
        _assert_like_pandas(stats, groups)
        assert stats.labels.dtype == object


def test_frame_inputs_are_checked(obs):
    ddf = daskh5.read_table(obs, "df")
    with pytest.raises(TypeError, match="a dask Series of the same frame"):
        daskh5.label_stats(ddf[["x"]], np.zeros(N))
    strings = daskh5.read_table(obs, "/obs").assign(s="a")
    with pytest.raises(TypeError, match="column 's' has dtype"):
        daskh5.label_stats(strings[["x", "s"]], strings["label"])


def test_pandas_objects_work_as_arrays():
    df = _frame()
    stats = daskh5.label_stats(df[COLUMNS], df["label"])
    _assert_like_pandas(stats, df.groupby("label"))


# -- the command line ------------------------------------------------------------------------------
def _run_cli(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(
    ("data", "labels"),
    [("/obs:x,y", "/obs:label"), ("df:x,y", "df:label"), ("/df:x,y", "/df:label"), ("/data", "/clusters")],
)
def test_cli_stats_on_table_columns_equals_pandas(obs, capsys, data, labels):
    rc, out, err = _run_cli(capsys, "stats", obs, "--data", data, "--labels", labels, "--json",
                            "--scheduler", "sync", "--budget", "64KiB", "--no-progress")  # fmt: skip
    assert rc == 0, err
    result = json.loads(out)
    groups = _reference(obs)[COLUMNS]
    assert result["labels"] == [0, 1, 2, 3] and result["count"] == groups.size().tolist()
    np.testing.assert_allclose(result["mean"], groups.mean().to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(result["std"], groups.std().to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(result["min"], groups.min().to_numpy(), rtol=0)
    np.testing.assert_allclose(result["max"], groups.max().to_numpy(), rtol=0)
    if ":" in data:
        assert result["columns"] == COLUMNS
    else:
        assert "columns" not in result


@pytest.mark.cluster
def test_cli_stats_on_a_local_cluster_writes_the_plot(obs, tmp_path, capsys):
    png = str(tmp_path / "stats.png")
    rc, out, err = _run_cli(capsys, "stats", obs, "--data", "/obs:x,y", "--labels", "/obs:label",
                            "--scheduler", "local", "--plot", png, "--no-progress")  # fmt: skip
    assert rc == 0, err
    assert "4 labels, 30,000 rows" in out and "columns: [0] x, [1] y" in out and f"wrote {png}" in out
    counts = _reference(obs).size()
    for label, count in counts.items():
        assert f"{label:>8} {count:>12,d}" in out
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 10_000


def test_cli_stats_table_forms_fail_clearly(obs, capsys):
    cases = [
        (["/obs:x,y", "/clusters"], "/clusters is an array node"),
        (["/obs:x,y", "/obs:label,z"], "name one column"),
        (["/obs:", "/obs:label"], "NODE:COL"),
        (["/obs:x,nope", "/obs:label"], "no column 'nope'"),
        (["df:x,y", "/obs:label"], "cannot match the rows of df with those of /obs"),
    ]
    for (data, labels), message in cases:
        rc, _out, err = _run_cli(capsys, "stats", obs, "--data", data, "--labels", labels, "--no-progress")
        assert rc == 1 and message in err, (data, labels, err)
        assert "Traceback" not in err


def test_cli_stats_two_tables_with_the_same_rows(obs, tmp_path, capsys):
    path = str(tmp_path / "two.h5")
    df = _frame()
    with tables.open_file(path, "w") as f:
        f.create_table("/", "features", obj=df[COLUMNS].to_records(index=False), chunkshape=(700,))
        f.create_table("/", "classes", obj=df[["label"]].to_records(index=False), chunkshape=(4096,))
    with dask.config.set(scheduler="sync"):
        rc, out, err = _run_cli(capsys, "stats", path, "--data", "/features:x,y", "--labels", "/classes:label",
                                "--json", "--budget", "32KiB", "--no-progress")  # fmt: skip
    assert rc == 0, err
    np.testing.assert_allclose(
        json.loads(out)["mean"], df.groupby("label")[COLUMNS].mean().to_numpy(), rtol=1e-10
    )

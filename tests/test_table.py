"""``daskh5.read_table``: PyTables Tables and pandas keys as dask DataFrames (issue 16).

Every result is compared with the reference reader (``pd.read_hdf``, or PyTables'
``Table.read()`` as a DataFrame) with ``pd.testing.assert_frame_equal``, dtypes
included, on files the real tools wrote.
"""

from __future__ import annotations

import re
import warnings

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import tables
from test_pandas_files import _keys

import daskh5

pytestmark = pytest.mark.filterwarnings("ignore::tables.NaturalNameWarning")


@pytest.fixture(autouse=True)
def _pandas_strings():
    """Compare with pandas' own dtypes: dask's string conversion is tested on its own below."""
    with dask.config.set({"dataframe.convert-string": False}):
        yield


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tables") / "keys.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, (obj, kwargs) in _keys().items():
            obj.to_hdf(path, key=key, mode="a", **kwargs)
        with pd.HDFStore(path) as hdf:
            frame = _keys()["table"][0]
            hdf.append("appended", frame.iloc[:3], data_columns=["s"], min_itemsize={"s": 8})
            hdf.append("appended", frame.iloc[3:].assign(s=["x", None, "", "é"]))
    return path


def _reference(path, key):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pd.read_hdf(path, key)


def _equal(got, expected):
    if isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(got, expected, check_freq=False)
    else:
        pd.testing.assert_frame_equal(got, expected, check_freq=False)


@pytest.mark.parametrize("key", [*_keys(), "appended"])
def test_every_pandas_key_equals_read_hdf(store, key):
    ddf = daskh5.read_table(store, key)
    _equal(ddf.compute(), _reference(store, key))


@pytest.mark.parametrize("key", ["compressed_table", "compressed_fixed"])
def test_partitions_are_whole_chunks_within_the_budget(store, key):
    ddf = daskh5.read_table(store, key, partition_size="64KiB")
    assert ddf.npartitions > 3
    lengths = ddf.map_partitions(len).compute().tolist()
    chunk = daskh5.read_table(store, key)._meta  # noqa: F841 - meta builds without reading
    assert sum(lengths) == 30_000 and len(set(lengths[:-1])) == 1
    _equal(ddf.compute(), _reference(store, key))


# -- PyTables Tables ------------------------------------------------------------------------------
class _Inner(tables.IsDescription):
    a = tables.Int16Col(pos=0)
    b = tables.StringCol(4, pos=1)


class _Row(tables.IsDescription):
    i = tables.Int64Col(pos=0)
    x = tables.Float64Col(pos=1)
    f4 = tables.Float32Col(pos=2)
    u = tables.UInt8Col(pos=3)
    flag = tables.BoolCol(pos=4)
    name = tables.StringCol(6, pos=5)
    color = tables.EnumCol(tables.Enum({"red": 4, "green": 7, "blue": 1}), "red", base="uint8", pos=6)
    t32 = tables.Time32Col(pos=7)
    t64 = tables.Time64Col(pos=8)
    vec = tables.Float64Col(shape=(3,), pos=9)
    inner = _Inner()


N_ROWS = 5000


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("obs") / "obs.h5")
    rng = np.random.default_rng(16)
    with tables.open_file(path, "w") as f:
        t = f.create_table("/", "obs", _Row, filters=tables.Filters(5, "blosc:lz4"), chunkshape=(256,))
        rows = np.zeros(N_ROWS, dtype=t.dtype)
        rows["i"] = np.arange(N_ROWS)
        rows["x"] = rng.normal(size=N_ROWS)
        rows["f4"] = rng.normal(size=N_ROWS)
        rows["u"] = rng.integers(0, 4, N_ROWS)
        rows["flag"] = rows["u"] == 2
        rows["name"] = [f"n{k % 17}".encode() for k in range(N_ROWS)]
        rows["color"] = rng.choice([4, 7, 1], N_ROWS)
        rows["t32"] = 1_600_000_000 + np.arange(N_ROWS)
        rows["t64"] = 1_600_000_000.25 + np.arange(N_ROWS) * 0.5
        rows["vec"] = rng.normal(size=(N_ROWS, 3))
        rows["inner"]["a"] = np.arange(N_ROWS) % 300
        rows["inner"]["b"] = b"ab"
        t.append(rows)
        f.create_carray("/", "arr", obj=np.arange(10.0))
    return path


def _pytables_reference(path, node="/obs") -> pd.DataFrame:
    """``Table.read()`` as a DataFrame, with read_table's documented mapping (the module docstring)."""
    with tables.open_file(path) as f:
        t = f.get_node(node)
        rec = t.read()
        enum = t.get_enum("color")
    names = sorted(enum._names, key=lambda n: enum._names[n])
    values = sorted(enum._names.values())
    out = {
        "i": rec["i"], "x": rec["x"], "f4": rec["f4"], "u": rec["u"], "flag": rec["flag"],
        "name": rec["name"].astype(object),
        "color": pd.Categorical.from_codes(np.searchsorted(values, rec["color"]), categories=names),
        "t32": rec["t32"].astype("int64").astype("datetime64[s]"),
        "t64": (rec["t64"] * 1e6).round().astype("int64").astype("datetime64[us]"),
    }  # fmt: skip
    for j in range(3):
        out[f"vec[{j}]"] = rec["vec"][:, j]
    out["inner.a"], out["inner.b"] = rec["inner"]["a"], rec["inner"]["b"].astype(object)
    return pd.DataFrame(out)


def test_pytables_table_equals_its_read(obs):
    ddf = daskh5.read_table(obs, "/obs", partition_size="50KiB")
    assert ddf.npartitions > 5 and ddf.known_divisions
    assert ddf.divisions[0] == 0 and ddf.divisions[-1] == N_ROWS - 1
    pd.testing.assert_frame_equal(ddf.compute(), _pytables_reference(obs))


def test_columns_and_projection_decode_only_those(obs):
    ref = _pytables_reference(obs)
    ddf = daskh5.read_table(obs, "/obs", columns=["x", "inner.a", "color"])
    pd.testing.assert_frame_equal(ddf.compute(), ref[["x", "inner.a", "color"]])
    full = daskh5.read_table(obs, "/obs")
    projected = full[["x", "u"]]
    # dask's optimiser pushed the projection into read_table's columns= argument
    (layer,) = [e for e in projected.optimize().expr.walk() if type(e).__name__ == "FromMapProjectable"]
    assert layer.columns == ["x", "u"]
    pd.testing.assert_frame_equal(projected.compute(), ref[["x", "u"]])
    pd.testing.assert_series_equal(full.x.compute(), ref.x)


def test_loc_reads_only_the_partitions_it_needs(obs):
    ddf = daskh5.read_table(obs, "/obs", partition_size="50KiB")
    part = ddf.loc[1000:1200]
    assert part.npartitions < 3
    pd.testing.assert_frame_equal(part.compute(), _pytables_reference(obs).loc[1000:1200])


@pytest.mark.parametrize(
    "where, query",
    [
        ("(u == 2) & (x > 0.5)", lambda d: (d.u == 2) & (d.x > 0.5)),
        ("u in [1, 3] | ~(x < 1)", lambda d: d.u.isin([1, 3]) | ~(d.x < 1)),
        ("name == 'n3'", lambda d: d.name == b"n3"),
        ("t32 >= Timestamp('2020-09-13 12:30:00')", lambda d: d.t32 >= pd.Timestamp("2020-09-13 12:30")),
        ("color == 'green'", lambda d: d.color == "green"),
        ("0.1 < x <= 0.2", lambda d: (d.x > 0.1) & (d.x <= 0.2)),
        ("`inner.a` != 5 and flag == True", lambda d: (d["inner.a"] != 5) & d.flag),
        ("index < 100", lambda d: d.index < 100),
    ],
)
def test_where_equals_pandas_on_the_reference(obs, where, query):
    ref = _pytables_reference(obs)
    got = daskh5.read_table(obs, "/obs", where=where, partition_size="50KiB").compute()
    pd.testing.assert_frame_equal(got, ref[query(ref)])


@pytest.mark.parametrize(
    "where, message",
    [
        ("(u == 2) & (nope > 1)", "no column 'nope'"),
        ("x > 'abc'", "'abc' is not a number"),
        ("x >> 2", "expected a column or a value"),
        ("x > 1 &", "expected a column or a value"),
        ("__import__('os')", "unknown function"),
        ("x > 1 | (x > 1).system()", "unexpected character '.' at position 15"),
        ("x.__class__ > 1", "no column 'x.__class__'"),
        ("t32 > Timestamp('not a time')", "not a valid time"),
        ("u in 3", "'in' needs a list"),
        ("(x > 1", "expected ')'"),
        ("x > 1 $", "unexpected character '$'"),
    ],
)
def test_bad_where_fails_at_read_table_pointing_at_the_term(obs, where, message):
    with pytest.raises(daskh5.WhereError, match=re.escape(message)) as info:
        daskh5.read_table(obs, "/obs", where=where)
    assert isinstance(info.value, ValueError) and "^" in str(info.value)


def test_where_in_a_pandas_key_equals_read_hdf_where(store):
    ref = _reference(store, "compressed_table")
    got = daskh5.read_table(store, "compressed_table", where="(i == 3) | (i > 7)").compute()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pd.read_hdf(store, "compressed_table", where="(i == 3) | (i > 7)")
    pd.testing.assert_frame_equal(got, expected)
    pd.testing.assert_frame_equal(got, ref[(ref.i == 3) | (ref.i > 7)])
    # a condition on a column that is not a data column: pandas refuses it, daskh5 evaluates it
    got = daskh5.read_table(store, "compressed_table", where="x > 2.5").compute()
    pd.testing.assert_frame_equal(got, ref[ref.x > 2.5])


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_same_result_on_every_scheduler(obs, store, scheduler):
    ddf = daskh5.read_table(obs, "/obs", partition_size="50KiB", where="u != 1")
    ref = _pytables_reference(obs)
    pd.testing.assert_frame_equal(ddf.compute(scheduler=scheduler), ref[ref.u != 1])
    key = daskh5.read_table(store, "compressed_table", partition_size="64KiB")
    pd.testing.assert_frame_equal(key.compute(scheduler=scheduler), _reference(store, "compressed_table"))


@pytest.mark.cluster
def test_same_result_on_a_local_cluster(obs, store, cluster_client):
    ddf = daskh5.read_table(obs, "/obs", partition_size="50KiB", where="u != 1")
    ref = _pytables_reference(obs)
    pd.testing.assert_frame_equal(cluster_client.compute(ddf).result(), ref[ref.u != 1])
    mean = daskh5.read_table(store, "compressed_table", partition_size="64KiB").groupby("i").x.mean()
    expected = _reference(store, "compressed_table").groupby("i").x.mean()
    pd.testing.assert_series_equal(cluster_client.compute(mean).result().sort_index(), expected)


def test_names_are_deterministic(obs):
    a = daskh5.read_table(obs, "/obs", columns=["x"], where="x > 0")
    b = daskh5.read_table(obs, "/obs", columns=["x"], where="x > 0")
    assert a._name == b._name
    assert a._name != daskh5.read_table(obs, "/obs", columns=["x"], where="x > 1")._name


def test_graph_tasks_pickle_without_handles(obs):
    import pickle

    ddf = daskh5.read_table(obs, "/obs", where="x > 0")
    graph = dict(ddf.__dask_graph__())
    blob = pickle.dumps(graph)
    assert b"h5py._hl" not in blob and b"h5py.h5" not in blob and b"tables.file" not in blob


def test_dask_string_conversion_applies_on_top(store):
    with dask.config.set({"dataframe.convert-string": True}):
        got = daskh5.read_table(store, "table").compute()
    ref = _reference(store, "table")
    assert got.s.dtype == pd.StringDtype("pyarrow")
    assert got.s.isna().tolist() == ref.s.isna().tolist()
    assert got.s.dropna().tolist() == ref.s.dropna().tolist()
    pd.testing.assert_frame_equal(got.drop(columns="s"), ref.drop(columns="s"))


# -- bad input -------------------------------------------------------------------------------------
def test_bad_input_is_a_clear_daskh5_error(obs, store):
    with pytest.raises(daskh5.NodeNotFound, match="nearest existing nodes: /obs"):
        daskh5.read_table(obs, "/ob")
    with pytest.raises(daskh5.NodeKindError, match="from_pytables"):
        daskh5.read_table(obs, "/arr")
    with pytest.raises(daskh5.NodeNotFound, match="did you mean 'x'"):
        daskh5.read_table(obs, "/obs", columns=["xx"])
    with pytest.raises(daskh5.FileNotFound):
        daskh5.read_table(obs + ".missing", "/obs")


# -- writer ----------------------------------------------------------------------------------------
def _frame_to_write(n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "label": rng.integers(0, 5, n),
            "s": rng.choice(["a", "bb", "nan", None], n),
            "c": pd.Categorical(rng.choice(["u", "v"], n)),
            "t": pd.date_range("2020", periods=n, freq="s", tz="Europe/Paris"),
        },
        index=pd.RangeIndex(seed * n, (seed + 1) * n),
    )


def test_to_pytables_writes_a_key_pandas_reads_and_selects(tmp_path):
    path = str(tmp_path / "out.h5")
    df = _frame_to_write()
    ddf = dd.from_pandas(df, npartitions=5)
    daskh5.to_pytables(ddf, path, "df", format="table", data_columns=["label", "s"], progress=False)
    pd.testing.assert_frame_equal(_reference(path, "df"), df, check_freq=False)
    with pd.HDFStore(path, "r") as store:
        got = store.select("df", where="(label == 2) & (s == 'bb')")
    pd.testing.assert_frame_equal(got, df[(df.label == 2) & (df.s == "bb")], check_freq=False)
    back = daskh5.read_table(path, "df", partition_size="64KiB")
    assert back.known_divisions and back.npartitions > 3  # the writer recorded a sorted index
    pd.testing.assert_frame_equal(back.compute(), df, check_freq=False)
    part = back.loc[5000:5100]
    assert part.npartitions == 1
    pd.testing.assert_frame_equal(part.compute(), df.loc[5000:5100], check_freq=False)


def test_where_skips_chunks_the_writer_ruled_out(tmp_path):
    path = str(tmp_path / "out.h5")
    df = _frame_to_write().sort_values("x").reset_index(drop=True)
    daskh5.to_pytables(dd.from_pandas(df, npartitions=4), path, "df", data_columns=["x"], progress=False)
    all_parts = daskh5.read_table(path, "df", partition_size="64KiB").npartitions
    ddf = daskh5.read_table(path, "df", partition_size="64KiB", where="x > 2")
    assert ddf.npartitions < all_parts / 4
    pd.testing.assert_frame_equal(ddf.compute(), df[df.x > 2], check_freq=False)
    union = daskh5.read_table(path, "df", partition_size="64KiB", where="(x > 2) | (label == 1)")
    assert union.npartitions == all_parts  # a condition on a column without statistics reads all
    pd.testing.assert_frame_equal(union.compute(), df[(df.x > 2) | (df.label == 1)], check_freq=False)


def test_append_continues_the_key_and_refuses_another_schema(tmp_path):
    path = str(tmp_path / "out.h5")
    first, second = _frame_to_write(seed=0), _frame_to_write(seed=1)
    daskh5.to_pytables(
        dd.from_pandas(first, npartitions=3), path, "df", data_columns=["label"], progress=False
    )
    daskh5.append(dd.from_pandas(second, npartitions=2), path, "df", progress=False)
    both = pd.concat([first, second])
    pd.testing.assert_frame_equal(_reference(path, "df"), both, check_freq=False)
    back = daskh5.read_table(path, "df", where="label == 3")
    assert back.known_divisions
    pd.testing.assert_frame_equal(back.compute(), both[both.label == 3], check_freq=False)
    before = open(path, "rb").read()
    with pytest.raises(daskh5.IncompatibleArrayError, match="columns"):
        daskh5.append(dd.from_pandas(second[["x"]], npartitions=1), path, "df", progress=False)
    with pytest.raises(daskh5.IncompatibleArrayError, match="'label' is int64"):
        daskh5.append(
            dd.from_pandas(second.astype({"label": "f8"}), npartitions=1), path, "df", progress=False
        )
    with pytest.raises(daskh5.IncompatibleArrayError, match="wider"):
        daskh5.append(dd.from_pandas(second.assign(s="x" * 50), npartitions=1), path, "df", progress=False)
    assert open(path, "rb").read() == before


def test_a_failing_write_leaves_the_earlier_file_intact(tmp_path):
    path = str(tmp_path / "out.h5")
    df = _frame_to_write()
    daskh5.to_pytables(dd.from_pandas(df, npartitions=2), path, "df", progress=False)
    before = open(path, "rb").read()

    def boom(part):
        if part.index[0] > 0:
            raise RuntimeError("boom")
        return part

    bad = dd.from_pandas(df, npartitions=3).map_partitions(boom, meta=df.iloc[:0])
    with pytest.raises(RuntimeError, match="boom"):
        daskh5.to_pytables(bad, path, "other", progress=False)
    with pytest.raises(daskh5.NodeExistsError):
        daskh5.to_pytables(dd.from_pandas(df, npartitions=2), path, "df", progress=False)
    assert open(path, "rb").read() == before


@pytest.mark.cluster
def test_writer_on_a_local_cluster(tmp_path, cluster_client):
    path = str(tmp_path / "out.h5")
    df = _frame_to_write()
    daskh5.to_pytables(dd.from_pandas(df, npartitions=4), path, "df", data_columns=["label"], progress=False)
    pd.testing.assert_frame_equal(_reference(path, "df"), df, check_freq=False)

"""pandas ``to_hdf`` keys through the xarray engine, compared with ``pd.read_hdf`` (issue 13).

A corpus of frames and series written by pandas here (both formats, data columns,
categoricals with missing values, strings with missing values and custom
``nan_rep``, time-zone aware datetimes, timedeltas, MultiIndex, bool/int/float),
each opened with ``engine="daskh5"`` (lazily and with ``chunks={}``) and through
``xr.open_datatree``, and turned back into pandas with the documented mapping
(:func:`as_pandas`); plus plain PyTables ``S1`` arrays and pickle traps in
fixed-format object blocks.
"""

from __future__ import annotations

import json
import pickle
import warnings

import corpus
import numpy as np
import pandas as pd
import pytest
import tables
import xarray as xr

import daskh5

N = 7


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "f": [1.5, np.nan, 3.0, 4.0, 5.0, 6.0, 7.0],
            "i": np.arange(N) * 3,
            "b": np.arange(N) % 2 == 0,
            "s": ["a", None, "ccc", "nan", "", "é", "g"],
            "t": pd.date_range("2021-03-01", periods=N, freq="h"),
            "tz": pd.date_range("2021-03-27", periods=N, freq="D", tz="Europe/Paris"),
            "td": pd.to_timedelta([1, 2, None, 4, 5, 6, 7], unit="s"),
        },
        index=pd.Index(np.arange(N) * 10, name="when"),
    )


def _categorical_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "c": pd.Categorical(["x", None, "y", "x", "zz", None, "y"]),
            "o": pd.Categorical(
                ["lo", "hi", "lo", None, "hi", "lo", "lo"], categories=["lo", "hi"], ordered=True
            ),
            "fc": pd.Categorical([1.5, 2.5, None, 1.5, 2.5, 1.5, 1.5]),
            "v": np.arange(N, dtype="f4"),
            "none": pd.Categorical([None] * N, categories=[]),  # no categories stored at all
            "none_of": pd.Categorical([None] * N, categories=["a"]),
        }
    )


def _keys() -> dict[str, tuple[object, dict]]:
    """{key: (object written, to_hdf keywords)}."""
    frame = _frame()
    mi = pd.DataFrame(
        {"a": np.arange(6.0), "s": list("uvwxyz")},
        index=pd.MultiIndex.from_product([["p", "q"], [10, 20, 30]], names=["g", "h"]),
    )
    tz_index = pd.DataFrame(
        {"v": np.arange(4.0)},
        index=pd.date_range("2020-10-24", periods=4, freq="D", tz="Europe/Paris", name="day"),
    )
    rng = np.random.default_rng(13)
    big = pd.DataFrame(
        {
            "x": rng.normal(size=30_000),
            "i": rng.integers(0, 9, 30_000),
            "t": pd.date_range("2000", periods=30_000, freq="min"),
        }
    )
    mi_missing = pd.DataFrame(
        {"v": [1.0, 2.0, 3.0]},
        index=pd.MultiIndex.from_arrays([["a", None, "c"], [1, 2, 3]], names=["s", "n"]),
    )
    strings = pd.DataFrame({"s": ["a", None, "MISSING?", "nan"], "n": [1, 2, 3, 4]}, index=list("abcd"))
    return {
        "fixed": (frame, {"format": "fixed"}),
        "table": (frame, {"format": "table"}),
        "table_dc": (frame, {"format": "table", "data_columns": True}),
        "table_nan_rep": (strings, {"format": "table", "nan_rep": "MISSING"}),
        "table_dc_nan_rep": (strings, {"format": "table", "data_columns": True, "nan_rep": "MISSING"}),
        "fixed_strings": (strings, {"format": "fixed"}),
        "categoricals": (_categorical_frame(), {"format": "table"}),
        "categoricals_dc": (_categorical_frame(), {"format": "table", "data_columns": ["c", "fc"]}),
        "mi_fixed": (mi, {"format": "fixed"}),
        "mi_table": (mi, {"format": "table"}),
        "tz_index_fixed": (tz_index, {"format": "fixed"}),
        "tz_index_table": (tz_index, {"format": "table"}),
        "series_fixed": (pd.Series(np.arange(5.0), name="x"), {"format": "fixed"}),
        "series_table": (pd.Series(np.arange(5.0), name="x"), {"format": "table"}),
        "series_strings": (pd.Series(["a", None, "c"], index=pd.Index(list("pqr"), name="k"), name="s"), {}),
        "series_unnamed": (pd.Series([True, False, True]), {}),
        "string_index_table": (
            strings.iloc[:, ::-1].set_axis(["a", None, "c", "d"]).rename_axis("k"),
            {"format": "table"},
        ),
        "string_index_fixed": (strings.set_axis(["a", None, "c", "d"]).rename_axis("k"), {"format": "fixed"}),
        "categorical_index_fixed": (
            pd.DataFrame({"v": [1.0, 2.0, 3.0]}, index=pd.CategoricalIndex(list("aba"))),
            {},
        ),
        "categorical_index_table": (
            pd.DataFrame({"v": [1.0, 2.0, 3.0]}, index=pd.CategoricalIndex(list("aba"), name="ci")),
            {"format": "table"},
        ),
        "mi_missing_fixed": (mi_missing, {"format": "fixed"}),
        "mi_missing_table": (mi_missing, {"format": "table"}),
        "mixed_objects": (
            pd.DataFrame(
                {"o": ["a", 1, None, b"zz"], "n": [1, 2, 3, 4]},
                index=pd.Index([1, "a", 2.5, "b"], dtype=object),
            ),
            {"format": "fixed"},
        ),
        "date_index": (
            pd.DataFrame(
                {"v": [1.0, 2.0]}, index=pd.Index([pd.Timestamp(0).date(), pd.Timestamp(1e15).date()])
            ),
            {},
        ),
        "empty_fixed": (pd.DataFrame({"a": pd.Series([], dtype="f8"), "s": pd.Series([], dtype=object)}), {}),
        "int_labels": (pd.DataFrame(np.arange(6.0).reshape(3, 2), columns=[0, 1]), {}),
        "series_table_strings": (pd.Series(["a", None, "nan", "d"], name="s"), {"format": "table"}),
        "compressed_fixed": (big, {"format": "fixed", "complevel": 5, "complib": "blosc:lz4"}),
        "compressed_table": (
            big,
            {"format": "table", "complevel": 5, "complib": "zlib", "data_columns": ["i"]},
        ),
        "bool_int_float": (
            pd.DataFrame(
                {
                    "b": [True, False],
                    "i8": np.array([1, 2], "i1"),
                    "u": np.array([3, 4], "u4"),
                    "f4": np.array([0.5, 1.5], "f4"),
                }
            ),
            {"format": "fixed"},
        ),
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pandas") / "keys.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas' PerformanceWarning for pickled object blocks
        for key, (obj, kwargs) in _keys().items():
            obj.to_hdf(path, key=key, mode="a", **kwargs)
        with pd.HDFStore(path) as hdf:  # appended in pieces: the placeholder is chosen per column, once
            hdf.append("appended", _frame().iloc[:3], data_columns=["s"], min_itemsize={"s": 8})
            hdf.append("appended", _frame().iloc[3:].assign(s=["x", None, "", "é"]))
    return path


@pytest.mark.parametrize("key", ["compressed_fixed", "compressed_table"])
def test_chunks_follow_storage(store, key):
    ds = xr.open_dataset(store, engine="daskh5", group=key, chunks={})
    assert len(ds.x.chunks[0]) > 1 and ds.x.chunks == ds.i.chunks
    assert ds.x.encoding["chunksizes"][0] == ds.x.chunks[0][0]


def test_appended_table_equals_read_hdf(store):
    ds = xr.open_dataset(store, engine="daskh5", group="appended", chunks={})
    _check(ds.load(), store, "appended")


def _reference(obj):
    """``pd.read_hdf``'s result in the engine's representation (the module docstring of daskh5._pandas)."""
    frame = obj.to_frame() if isinstance(obj, pd.Series) else obj.copy()
    for name, col in frame.items():
        if isinstance(col.dtype, pd.CategoricalDtype):
            kind = col.cat.categories.dtype.kind
            frame[name] = col.astype(col.cat.categories.dtype if kind == "f" else object)
        elif isinstance(col.dtype, pd.DatetimeTZDtype):
            frame[name] = col.dt.tz_convert("UTC").dt.tz_localize(None)
        elif col.dtype == object or isinstance(col.dtype, pd.StringDtype):
            frame[name] = col.astype(object)
    index = frame.index
    if isinstance(index, pd.MultiIndex):
        frame.index = index.set_levels(
            [lv.astype(object) if lv.dtype.kind in "OT" or lv.dtype == "str" else lv for lv in index.levels]
        )
    elif isinstance(index, pd.CategoricalIndex):  # its values, as for categorical columns
        frame.index = index.astype(object)
    elif index.dtype == "str":
        frame.index = index.astype(object)
    return frame


def as_pandas(ds: xr.Dataset) -> pd.DataFrame:
    """The Dataset of a pandas key as a DataFrame: ``to_dataframe`` with the columns' order kept."""
    frame = ds.to_dataframe()[list(ds.data_vars)]
    for name, col in frame.items():  # pandas makes object columns of str its str dtype
        if isinstance(col.dtype, pd.StringDtype):
            frame[name] = col.astype(object)
    if len(ds.sizes) == 1 and not isinstance(frame.index, pd.MultiIndex) and next(iter(ds.sizes)) == "index":
        frame.index.name = None
    if isinstance(frame.index, pd.MultiIndex):
        frame.index = frame.index.set_levels(
            [lv.astype(object) if lv.dtype == "str" else lv for lv in frame.index.levels]
        )
    elif frame.index.dtype == "str":
        frame.index = frame.index.astype(object)
    return frame


def _check(ds: xr.Dataset, path: str, key: str) -> None:
    ref = pd.read_hdf(path, key)
    expected = _reference(ref)
    expected.columns = [str(c) for c in expected.columns]  # labels are variable names: strings
    got = as_pandas(ds)
    if isinstance(ref, pd.Series):
        assert list(ds.data_vars) == [str(ref.name) if ref.name is not None else "values"]
        got.columns = list(expected.columns)
    pd.testing.assert_frame_equal(
        got, expected, check_index_type=True, check_column_type=False, check_freq=False
    )
    if isinstance(ref, pd.DataFrame):
        for name, col in ref.items():
            if isinstance(col.dtype, pd.DatetimeTZDtype):
                assert ds[name].attrs["pandas_timezone"] == str(col.dt.tz)


@pytest.mark.parametrize("chunks", [None, {}], ids=["lazy", "dask"])
@pytest.mark.parametrize("key", list(_keys()))
def test_key_equals_read_hdf(store, key, chunks):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_dataset(store, engine="daskh5", group=key, chunks=chunks)
    _check(ds.load(), store, key)


def test_datatree_has_every_key_and_no_pandas_bookkeeping(store):
    tree = xr.open_datatree(store, engine="daskh5")
    assert set(tree.children) == {*_keys(), "appended"}
    assert all("meta" not in node.path.split("/") for node in tree.subtree)  # categories live in meta/
    for key in _keys():
        _check(tree[key].to_dataset(), store, key)


def test_unreadable_columns_are_left_out_with_a_warning(tmp_path):
    path = str(tmp_path / "odd.h5")
    periods = pd.DataFrame({"p": pd.period_range("2020", periods=3, freq="D"), "v": [1.0, 2.0, 3.0]})
    periods.to_hdf(path, key="per_fixed", format="fixed")
    periods.to_hdf(path, key="per_table", format="table")
    pd.DataFrame(np.ones((2, 2)), columns=pd.MultiIndex.from_tuples([("a", 1), ("a", 2)])).to_hdf(
        path, key="mi_cols"
    )
    for key in ("per_fixed", "per_table"):  # periods are never given as their int64 ordinals
        with pytest.warns(UserWarning, match=r"'p'.*period\[D\].*pd.read_hdf"):
            ds = xr.open_dataset(path, engine="daskh5", group=key)
        assert list(ds.data_vars) == ["v"] and ds.v.values.tolist() == [1.0, 2.0, 3.0]
    with pytest.warns(UserWarning, match="MultiIndex of columns"):
        ds = xr.open_dataset(path, engine="daskh5", group="mi_cols")
    assert not ds.data_vars and ds.sizes["index"] == 2


def test_malformed_key_opens_as_stored_with_a_warning(tmp_path):
    path = str(tmp_path / "bad.h5")
    pd.DataFrame({"v": [1.0, 2.0]}).to_hdf(path, key="frame", format="fixed")
    with tables.open_file(path, "a") as f:
        f.remove_node("/frame/axis1")
    with pytest.warns(
        UserWarning, match=r"/frame: a pandas 'frame' key daskh5 cannot read.*opened as stored"
    ):
        ds = xr.open_dataset(path, engine="daskh5", group="frame")
    assert "block0_values" in ds


def test_categories_and_missing_values(store):
    ds = xr.open_dataset(store, engine="daskh5", group="categoricals")
    c = ds.c.values
    assert c[0] == "x" and c[1] is np.nan and c[2] == "y" and c[4] == "zz"  # NaN, as astype(object) gives
    assert ds.c.dtype == object and ds.fc.dtype == np.float64
    assert list(ds.c.encoding["pandas_categories"]) == ["x", "y", "zz"]
    assert ds.o.encoding["pandas_ordered"] is True and not ds.c.encoding["pandas_ordered"]
    s = xr.open_dataset(store, engine="daskh5", group="table_nan_rep").s.values
    assert s[0] == "a" and pd.isna(s[1]) and s[2] == "MISSING?" and s[3] == "nan"  # literal "nan" kept


def test_multiindex_and_tz_index_are_pandas_indexes(store):
    ds = xr.open_dataset(store, engine="daskh5", group="mi_table")
    assert isinstance(ds.indexes["index"], pd.MultiIndex) and ds.indexes["index"].names == ["g", "h"]
    assert ds.sel(g="q").a.values.tolist() == [3.0, 4.0, 5.0]
    ds = xr.open_dataset(store, engine="daskh5", group="tz_index_fixed")
    assert str(ds.indexes["day"].tz) == "Europe/Paris"


def test_pytables_s1_arrays_are_lists_of_strings(tmp_path):
    path = str(tmp_path / "s1.h5")
    with tables.open_file(path, "w") as f:
        f.create_array("/", "letters", obj=np.array([b"a", b"b", b"c"]))
        f.create_array("/", "grid", obj=np.array([[b"a", b"b"], [b"c", b"d"]]))
        f.create_table("/", "t", obj=np.array([(b"x",), (b"y",)], dtype=[("ch", "S1")]))
    ds = xr.open_dataset(path, engine="daskh5")
    assert ds.letters.values.tolist() == [b"a", b"b", b"c"]
    assert ds.grid.shape == (2, 2) and ds.ch.values.tolist() == [b"x", b"y"]
    with tables.open_file(path) as f:
        np.testing.assert_array_equal(ds.letters.values, f.root.letters.read())


def test_only_netcdf_char_arrays_are_joined(tmp_path):
    """An h5py S1 array is what h5py reads (letters); a netCDF char array (a string-length dim) is joined."""
    import h5py

    path = str(tmp_path / "chars.h5")
    with h5py.File(path, "w") as f:
        f["name"] = np.array([[b"a", b"b"], [b"c", b"d"]], dtype="S1")
    assert xr.open_dataset(path, engine="daskh5").name.values.tolist() == [[b"a", b"b"], [b"c", b"d"]]
    nc = str(tmp_path / "chars.nc")
    xr.Dataset({"name": ("x", np.array([b"ab", b"cd"]))}).to_netcdf(
        nc, engine="h5netcdf", encoding={"name": {"dtype": "S1"}}
    )
    assert xr.open_dataset(nc, engine="daskh5").name.values.tolist() == [b"ab", b"cd"]


def test_object_array_unpickler_builds_plain_arrays_only():
    from daskh5._pandas_pickles import load_object_array

    arr = np.array(["a", None, 1, 2.5, b"x", True], dtype=object)
    assert load_object_array(pickle.dumps(arr)).tolist() == arr.tolist()
    assert load_object_array(pickle.dumps(arr.reshape(2, 3), protocol=2)).shape == (2, 3)
    for bad in (
        np.array([pd.Timestamp(0)], dtype=object),
        np.arange(3),
        [1, 2],
        np.array([[1]], dtype=object),
    ):
        with pytest.raises(pickle.UnpicklingError):
            load_object_array(
                pickle.dumps(bad), limit=0 if isinstance(bad, np.ndarray) and bad.size == 1 else 10
            )
    with pytest.raises(pickle.UnpicklingError, match="elements"):
        load_object_array(pickle.dumps(np.array(["a"] * 11, dtype=object)), limit=10)
    # BUILD on the stand-ins (setattr through a (None, {...}) state) cannot change them for the next pickle
    for target in (b"cnumpy\nndarray\n", b"cnumpy\ndtype\n", b"c_codecs\nencode\n"):
        with pytest.raises(pickle.UnpicklingError, match="malformed"):
            load_object_array(b"\x80\x02" + target + b"N}X\x01\x00\x00\x00xK\x01s\x86b.")
    assert load_object_array(pickle.dumps(np.array(["ok"], dtype=object))).tolist() == ["ok"]


def _trap_block(path: str, key: str, payload, node_name: str | None = None) -> None:
    """Replace the (pickled) object block (or ``node_name``) of a fixed-format key with ``payload``."""
    with tables.open_file(path, "a") as f:
        group = f.get_node(f"/{key}")
        vls = [n for n in group._f_iter_nodes() if isinstance(n, tables.VLArray)]
        node = next(n for n in vls if node_name in (None, n._v_name))
        attrs = {a: node._v_attrs[a] for a in node._v_attrs._v_attrnamesuser}
        name = node._v_name
        node._f_remove()
        vl = f.create_vlarray(group, name, atom=tables.ObjectAtom())
        vl.append(payload)
        for a, v in attrs.items():
            vl._v_attrs[a] = v


@pytest.mark.parametrize("where", ["callable", "element"])
def test_trapped_object_block_is_skipped_with_a_warning_and_runs_nothing(tmp_path, where):
    path, marker = str(tmp_path / "trap.h5"), tmp_path / "pwned"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pd.DataFrame({"s": ["a", "b", "c"], "v": [1.0, 2.0, 3.0]}).to_hdf(path, key="fixed", format="fixed")
    trap = corpus.Trap(marker)
    _trap_block(path, "fixed", trap if where == "callable" else np.array([trap, "b", "c"], dtype=object))
    code = f"""
import warnings, xarray as xr
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ds = xr.open_dataset({path!r}, engine="daskh5", group="/fixed").load()
    tree = xr.open_datatree({path!r}, engine="daskh5")
result = {{"vars": sorted(ds.data_vars), "v": ds.v.values.tolist(),
          "warnings": [str(w.message) for w in caught]}}
"""
    out = corpus.run_limited(code, timeout=120)
    assert out["status"] == "ok", out
    assert not marker.exists()
    assert out["result"]["vars"] == ["v"] and out["result"]["v"] == [1.0, 2.0, 3.0]
    assert any(
        "refused the pickled object block" in w and "/fixed/block" in w for w in out["result"]["warnings"]
    )
    json.dumps(out["result"])


def test_trapped_object_labels_and_index_run_nothing_anywhere(tmp_path):
    path, marker = str(tmp_path / "trap.h5"), tmp_path / "pwned"
    mixed = pd.Index([0, "a"], dtype=object)  # labels and index of mixed types are pickled by pandas
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pd.DataFrame(np.ones((2, 2)), columns=mixed).to_hdf(path, key="labels", format="fixed")
        pd.DataFrame({"v": [1.0, 2.0]}, index=mixed).to_hdf(path, key="index", format="fixed")
    _trap_block(path, "labels", corpus.Trap(marker), "axis0")
    _trap_block(path, "index", corpus.Trap(marker), "axis1")
    code = f"""
import warnings, xarray as xr
from daskh5 import cli
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    sets = [sorted(xr.open_dataset({path!r}, engine="daskh5", group=g).load().variables) for g in ("labels", "index")]
    tree = xr.open_datatree({path!r}, engine="daskh5")
    info = cli.info({path!r})
result = {{"sets": sets, "warnings": [str(w.message) for w in caught], "pandas": info["pandas"]}}
"""
    out = corpus.run_limited(code, timeout=120)
    assert out["status"] == "ok", out
    assert not marker.exists()
    res = out["result"]
    assert "block0_values" in res["sets"][0] and "block0_values" in res["sets"][1]  # opened as stored
    assert sum("cannot read as pandas does" in w and "io.open" in w for w in res["warnings"]) >= 2
    assert all("error" in k for k in res["pandas"] if k["key"] == "/labels")


def test_trapped_object_block_raises_from_the_unpickler(tmp_path):
    path, marker = str(tmp_path / "trap.h5"), tmp_path / "pwned"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pd.Series(["a", "b"], name="s").to_hdf(path, key="ser", format="fixed")
    _trap_block(path, "ser", corpus.Trap(marker))
    import h5py

    from daskh5._pandas import _read_object_node

    with h5py.File(path) as f, pytest.raises(daskh5.UnsafePickleError, match=r"/ser/values.*io.open"):
        _read_object_node(f["/ser/values"], 10)
    assert not marker.exists()


def test_info_describes_pandas_keys_by_their_columns(store, capsys):
    from daskh5 import cli

    report = cli.info(store)
    keys = {k["key"]: k for k in report["pandas"]}
    assert set(keys) == {f"/{k}" for k in (*_keys(), "appended")}  # pandas' meta/ groups are not keys
    assert keys["/fixed"]["columns"] == list(_frame().columns) and keys["/fixed"]["rows"] == N
    assert keys["/table_dc"]["format"] == "table" and keys["/mi_table"]["columns"] == ["a", "s"]
    assert not report["ragged"]  # object blocks are pandas', not broken ragged layouts
    assert cli.main(["info", store]) == 0
    assert (
        "/fixed (frame, format=fixed): 7 rows x 7 columns: f, i, b, s, t, tz, td" in capsys.readouterr().out
    )


# -- property test: any small frame of pandas' common dtypes, either format, reads back as pd.read_hdf ------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_TEXT = st.one_of(
    st.none(), st.sampled_from(["nan", "NaN", "", "a", "bb", "MISSING", "é"]), st.text(max_size=4)
)


def _column(kind: str, n: int):
    if kind == "f":
        return st.lists(
            st.one_of(st.none(), st.floats(allow_nan=False, width=32)), min_size=n, max_size=n
        ).map(lambda v: np.array([np.nan if x is None else x for x in v]))
    if kind == "i":
        return st.lists(st.integers(-(2**62), 2**62), min_size=n, max_size=n).map(np.array)
    if kind == "b":
        return st.lists(st.booleans(), min_size=n, max_size=n).map(np.array)
    if kind == "s":
        return st.lists(_TEXT.filter(lambda t: t is None or "\x00" not in t), min_size=n, max_size=n)
    if kind == "c":
        return st.lists(st.sampled_from(["x", "y", None]), min_size=n, max_size=n).map(pd.Categorical)
    return st.lists(st.one_of(st.none(), st.integers(0, 2**40)), min_size=n, max_size=n).map(
        lambda v: pd.to_datetime([None if x is None else x * 10**6 for x in v], utc=kind == "z")
    )


@st.composite
def _frames(draw):
    n = draw(st.integers(1, 6))
    kinds = draw(st.lists(st.sampled_from("fibsctz"), min_size=1, max_size=5))
    frame = pd.DataFrame({f"{k}{i}": draw(_column(k, n)) for i, k in enumerate(kinds)})
    index = draw(st.sampled_from(["range", "str", "tz", "multi"]))
    if index == "str":
        frame.index = pd.Index(
            draw(st.lists(st.sampled_from(["p", "q", "nan", None]), min_size=n, max_size=n))
        )
    elif index == "tz":
        frame.index = pd.date_range("2020-03-29", periods=n, freq="h", tz="Europe/Paris", name="when")
    elif index == "multi":
        frame.index = pd.MultiIndex.from_arrays([[f"g{i % 2}" for i in range(n)], range(n)], names=["g", "h"])
    fmt = "table" if any(k == "c" for k in kinds) else draw(st.sampled_from(["fixed", "table"]))
    kwargs = {"format": fmt}
    if fmt == "table":
        kwargs["data_columns"] = draw(st.sampled_from([None, True, list(frame.columns[:1])]))
        kwargs["nan_rep"] = draw(st.sampled_from([None, "MISSING", "-"]))
    return frame, kwargs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_frames())
def test_any_frame_reads_back_as_read_hdf(tmp_path, case):
    frame, kwargs = case
    path = str(tmp_path / "prop.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            frame.to_hdf(path, key="k", mode="w", **kwargs)
        except (ValueError, TypeError):  # pandas refuses some (its nan_rep sentinel, an all-None table index)
            return
    _check(xr.open_dataset(path, engine="daskh5", group="k").load(), path, "k")


def test_metadata_pickles_build_no_large_objects():
    from daskh5._pandas_pickles import inert_loads

    bomb = b"cbuiltins\nbytes\n(J\x00\x00\x00@tR."  # bytes(2**30): a 1 GiB allocation from 25 bytes
    assert inert_loads(bomb) is None
    assert inert_loads(pickle.dumps({"a": [1, "x"], "b": b"raw"}, protocol=0)) == {"a": [1, "x"], "b": b"raw"}
    zone = inert_loads(pickle.dumps(pd.Timestamp(0, tz="Europe/Paris").tzinfo, protocol=0))
    from daskh5._pandas import tz_name

    assert tz_name(zone) == "Europe/Paris"

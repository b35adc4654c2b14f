"""The engine="daskh5" xarray backend."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import tables
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daskh5
from daskh5 import _reader


def seed_file(path, n=1000):
    rng = np.random.default_rng(0)
    with tables.open_file(path, "w") as f:
        f.create_carray(
            "/",
            "data",
            obj=rng.normal(size=(n, 2)),
            filters=tables.Filters(5, "blosc:lz4"),
            chunkshape=(128, 2),
        )
        f.create_carray(
            "/", "clusters", obj=rng.integers(0, 4, size=n), filters=tables.Filters(5, "blosc:lz4")
        )
        f.root.data.attrs.units = "m"
        f.root.data.attrs.scale = 2.5
        f.root._v_attrs.experiment = "demo"
    return path


def test_open_dataset_aligns_seed_layout(h5path):
    seed_file(h5path)
    ds = xr.open_dataset(h5path, engine="daskh5")
    assert ds.data.dims == ("row_1000", "data_dim_1") and ds.clusters.dims == ("row_1000",)
    assert ds.data.attrs == {"units": "m", "scale": 2.5}
    assert ds.attrs == {"experiment": "demo"}
    assert ds.data.encoding["chunksizes"] == (128, 2)
    assert ds.data.encoding["complib"] == "blosc:lz4"
    assert ds.data.encoding["pytables_attrs"]["CLASS"] == "CARRAY"
    with tables.open_file(h5path) as f:
        want = f.root.data.read()
        labels = f.root.clusters.read()
    np.testing.assert_array_equal(ds.data.values, want)
    means = ds.data.groupby(ds.clusters).mean()
    for k in range(4):
        np.testing.assert_allclose(means.sel(clusters=k).values, want[labels == k].mean(axis=0))


def test_engine_is_registered_and_guesses(h5path):
    seed_file(h5path)
    assert "daskh5" in xr.backends.list_engines()
    engine = xr.backends.list_engines()["daskh5"]
    assert engine.guess_can_open(h5path) and not engine.guess_can_open("x.csv")
    assert engine.description and engine.url


def test_chunks_follow_storage_and_budget(h5path):
    seed_file(h5path, n=100_000)
    ds = xr.open_dataset(h5path, engine="daskh5", chunks={})
    assert ds.data.chunks[0][0] == 128
    ds = xr.open_dataset(h5path, engine="daskh5", chunks={"row_100000": "64KiB"})
    assert ds.data.chunks[0][0] % 128 == 0
    np.testing.assert_allclose(
        float(ds.data.sum().compute()), float(xr.open_dataset(h5path, engine="daskh5").data.sum())
    )


def test_opening_reads_no_data(h5path, monkeypatch):
    seed_file(h5path)
    calls = []
    original = _reader.NodeReader.__getitem__
    monkeypatch.setattr(
        _reader.NodeReader, "__getitem__", lambda self, key: calls.append(key) or original(self, key)
    )
    ds = xr.open_dataset(h5path, engine="daskh5")
    dsc = xr.open_dataset(h5path, engine="daskh5", chunks={})
    (dsc.data * 2).mean()
    assert calls == []
    np.testing.assert_array_equal(ds.data[:5].values.shape, (5, 2))
    assert len(calls) == 1


def test_dims_override_and_errors(h5path):
    seed_file(h5path)
    ds = xr.open_dataset(h5path, engine="daskh5", dims={"/data": ("sample", "xy"), "clusters": ("sample",)})
    assert ds.data.dims == ("sample", "xy") and ds.clusters.dims == ("sample",)
    with pytest.raises(ValueError, match="3 names for 2 axes"):
        xr.open_dataset(h5path, engine="daskh5", dims={"/data": ("a", "b", "c")})
    with pytest.raises(KeyError, match="nope"):
        xr.open_dataset(h5path, engine="daskh5", group="/nope")


def test_tables_become_columns(h5path):
    class Row(tables.IsDescription):
        x = tables.Float64Col(pos=0)
        flag = tables.BoolCol(pos=1)
        name = tables.StringCol(4, pos=2)
        v = tables.Int32Col(shape=(3,), pos=3)

        class nest(tables.IsDescription):
            a = tables.Int16Col()

    rows = 50
    with tables.open_file(h5path, "w") as f:
        t = f.create_table("/", "t", Row, filters=tables.Filters(5, "blosc:lz4"))
        r = t.row
        for i in range(rows):
            r["x"], r["flag"], r["name"], r["v"], r["nest/a"] = (
                i / 2,
                i % 3 == 0,
                b"n%d" % i,
                [i, -i, 2 * i],
                i,
            )
            r.append()
        f.create_carray("/", "weights", obj=np.arange(rows, dtype="f4"))
    ds = xr.open_dataset(h5path, engine="daskh5")
    assert set(ds.data_vars) == {"x", "flag", "name", "v", "nest.a", "weights"}
    assert ds.flag.dtype == bool and ds.flag.values.sum() == 17
    assert ds.v.dims == ("row_50", "v_dim_1") and ds.v.values[3].tolist() == [3, -3, 6]
    assert ds["nest.a"].values.tolist() == list(range(rows))
    assert ds.weights.dims == ds.x.dims  # a Table and an array of as many rows share the row dimension
    np.testing.assert_allclose((ds.x * ds.weights).sum().values, sum(i / 2 * i for i in range(rows)))


def test_vlarrays_are_listed_not_dropped_silently(h5path):
    seed_file(h5path)
    with tables.open_file(h5path, "a") as f:
        f.create_vlarray("/", "tokens", atom=tables.Int32Atom()).append([1, 2, 3])
    with pytest.warns(UserWarning, match="tokens.*read_ragged"):
        ds = xr.open_dataset(h5path, engine="daskh5")
    assert "tokens" not in ds


def test_empty_file_gives_empty_dataset_with_warning(h5path):
    with tables.open_file(h5path, "w") as f:
        f.create_vlarray("/", "only", atom=tables.Int8Atom())
    with pytest.warns(UserWarning, match="only"):
        ds = xr.open_dataset(h5path, engine="daskh5")
    assert len(ds.variables) == 0


def test_pandas_hdfstore_frame(h5path):
    df = pd.DataFrame(
        {"a": np.arange(6.0), "b": np.arange(6) * 3, "c": np.linspace(0, 1, 6), "label": list("abcdef")},
        index=pd.Index(np.arange(6) * 10, name="when"),
    )
    df.to_hdf(h5path, key="frame", format="table")
    ds = xr.open_dataset(h5path, engine="daskh5", group="/frame")
    assert list(ds.data_vars) == ["a", "c", "b", "label"] or set(ds.data_vars) == {"a", "b", "c", "label"}
    assert ds.a.dims == ("when",) and "when" in ds.coords
    back = ds.to_dataframe()[["a", "b", "c", "label"]]
    back["label"] = back["label"].astype(str)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert not any(isinstance(v, bytes) for v in ds.attrs.values())


def test_pandas_multiindex_series_and_datetimes(h5path):
    mi = pd.DataFrame(
        {"a": np.arange(6.0), "c": np.arange(6) % 2 == 0},
        index=pd.MultiIndex.from_product([[1, 2], [10, 20, 30]], names=["g", "h"]),
    )
    mi.to_hdf(h5path, key="mi", format="table")
    series = pd.Series(np.arange(4.0), name="s")
    series.to_hdf(h5path, key="ser", format="table")
    when = pd.date_range("2021-01-01", periods=3, name="when", freq="D")
    frame = pd.DataFrame(
        {
            "v": [1.0, 2.0, 3.0],
            "t": pd.date_range("2020", periods=3),
            "utc": pd.date_range("2020", periods=3, tz="UTC"),
        },
        index=when,
    )
    frame.to_hdf(h5path, key="dt", format="table")

    ds = xr.open_dataset(h5path, engine="daskh5", group="/mi")
    assert {"g", "h"} <= set(ds.coords) and set(ds.data_vars) == {"a", "c"}
    back = ds.set_index(index=["g", "h"]).to_dataframe()[["a", "c"]]
    back.index.names = ["g", "h"]
    pd.testing.assert_frame_equal(back, mi)

    ds = xr.open_dataset(h5path, engine="daskh5", group="/ser")
    np.testing.assert_array_equal(ds.s.values, series.values)

    ds = xr.open_dataset(h5path, engine="daskh5", group="/dt")  # index name and offset are pickled
    assert ds.v.dims == ("when",)
    np.testing.assert_array_equal(ds.when.values, when.values)
    stored = pd.read_hdf(h5path, "/dt").index
    assert ds.indexes["when"].dtype == stored.dtype  # the stored unit, as pandas reads it back
    assert ds.indexes["when"].equals(stored)
    np.testing.assert_array_equal(ds.t.values, frame.t.values)
    np.testing.assert_array_equal(ds.utc.values, frame.utc.dt.tz_localize(None).values)
    assert ds.utc.attrs["pandas_timezone"] == "UTC"  # the zone's name, not a stand-in's repr


def test_pandas_metadata_pickles_never_run(h5path, tmp_path):
    marker = tmp_path / "pwned"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    pd.DataFrame({"a": [1.0, 2.0]}).to_hdf(h5path, key="frame", format="table")
    with tables.open_file(h5path, "a") as f:
        info = f.root.frame._v_attrs.info
        info["index"]["index_name"] = Trap()
        f.root.frame._v_attrs.info = info
        f.root.frame._v_attrs.levels = Trap()
        f.root.frame.table.attrs.values_block_0_kind = Trap()
    ds = xr.open_dataset(h5path, engine="daskh5", group="/frame")
    ds.load()
    assert not marker.exists()
    assert ds["values_block_0"].dims == ("index",)  # refused labels: the stored names are used


def test_datatree(h5path):
    with tables.open_file(h5path, "w") as f:
        f.create_carray("/", "top", obj=np.arange(5.0))
        g = f.create_group("/", "run1")
        f.create_carray(g, "x", obj=np.arange(7.0))
        h = f.create_group(g, "deep")
        f.create_carray(h, "y", obj=np.ones((7, 2)))
    dt = xr.open_datatree(h5path, engine="daskh5")
    assert dt["top"].dims == ("row_5",)
    assert dt["run1/x"].dims == ("row_7",) and dt["run1/deep/y"].shape == (7, 2)
    sub = xr.open_dataset(h5path, engine="daskh5", group="/run1")
    assert list(sub.data_vars) == ["x"]


def test_pickled_attributes_stay_bytes_unless_asked(h5path, tmp_path):
    marker = tmp_path / "pwned"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    seed_file(h5path)
    with tables.open_file(h5path, "a") as f:
        f.root._v_attrs.trap = Trap()
        f.root.data.attrs.trap = Trap()
        f.root.data.attrs.plain_list = [1, 2, "three"]  # pickled by PyTables, plain builtins
    ds = xr.open_dataset(h5path, engine="daskh5")
    assert isinstance(ds.data.attrs["plain_list"], bytes) and isinstance(ds.attrs["trap"], bytes)
    ds = xr.open_dataset(h5path, engine="daskh5", decode_pickles=True)
    assert ds.data.attrs["plain_list"] == [1, 2, "three"]
    assert isinstance(ds.data.attrs["trap"], bytes)  # refused: not a plain builtin
    xr.open_datatree(h5path, engine="daskh5").load()
    assert not marker.exists()


def test_cf_decoding_and_drop_variables(h5path):
    with tables.open_file(h5path, "w") as f:
        t = f.create_carray("/", "time", obj=np.arange(3, dtype="i8"))
        t.attrs.units = "days since 2000-01-01"
        v = f.create_carray("/", "temp", obj=np.array([1, 2, -999], dtype="i2"))
        v.attrs.scale_factor = 0.5
        v.attrs._FillValue = np.int16(-999)
        f.create_carray("/", "junk", obj=np.zeros(3))
    ds = xr.open_dataset(h5path, engine="daskh5", drop_variables=["junk"])
    assert "junk" not in ds
    assert ds.time.values[1] == np.datetime64("2000-01-02")
    np.testing.assert_array_equal(ds.temp.values, [0.5, 1.0, np.nan])
    raw = xr.open_dataset(h5path, engine="daskh5", mask_and_scale=False, decode_times=False)
    assert raw.temp.values.tolist() == [1, 2, -999] and raw.time.values.tolist() == [0, 1, 2]


def test_same_values_as_h5netcdf_and_more(h5path):
    import hdf5plugin  # noqa: F401  (h5netcdf needs it for blosc)

    seed_file(h5path)
    with tables.open_file(h5path, "a") as f:
        f.create_carray("/", "flags", obj=np.array([True, False, True]))
    ours = xr.open_dataset(h5path, engine="daskh5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = xr.open_dataset(h5path, engine="h5netcdf", phony_dims="sort")
    np.testing.assert_array_equal(ours.data.values, theirs.data.values)
    np.testing.assert_array_equal(ours.clusters.values, theirs.clusters.values)
    assert ours.flags.dtype == bool and theirs.flags.dtype != bool  # h5netcdf turns bools into uint8


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    dtype=st.sampled_from(["int8", "uint32", "float32", "float64", "bool"]),
    chunk=st.integers(1, 16),
)
def test_values_match_pytables(tmp_path_factory, shape, dtype, chunk):
    path = str(tmp_path_factory.mktemp("h") / "p.h5")
    data = (np.arange(np.prod(shape)).reshape(shape) % 7).astype(dtype)
    with tables.open_file(path, "w") as f:
        f.create_carray(
            "/",
            "v",
            obj=data,
            chunkshape=tuple(min(chunk, s) for s in shape),
            filters=tables.Filters(5, "blosc:lz4"),
        )
    ds = xr.open_dataset(path, engine="daskh5", chunks={})
    np.testing.assert_array_equal(ds.v.values, data)
    assert ds.v.dtype == data.dtype
    with h5py.File(path) as f:
        assert f["v"].shape == ds.v.shape


# -- writing xarray objects ----------------------------------------------------------------------
def sample_dataset():
    rng = np.random.default_rng(2)
    time = pd.date_range("2020-01-01", periods=20, freq="D")
    return xr.Dataset(
        {
            "temp": (("time", "site"), rng.normal(size=(20, 3)).astype("f4"), {"units": "K", "note": "fake"}),
            "ok": (("time",), rng.random(20) < 0.5),
            "count": (("site",), np.array([1, 2, 3], dtype="i8")),
            "scalar": ((), 3.5),
        },
        coords={"time": time, "site": ["a", "bb", "ccc"], "elevation": (("site",), [10.0, 20.0, 30.0])},
        attrs={"title": "round trip", "version": 2},
    )


def test_dataset_round_trip_identical(h5path):
    ds = sample_dataset()
    daskh5.to_pytables(ds, h5path, progress=False)
    back = xr.open_dataset(h5path, engine="daskh5")
    xr.testing.assert_identical(back.load(), ds)
    # ordinary CArrays for PyTables users, who are warned that netCDF's DIMENSION_LIST is not for them
    with pytest.warns(tables.DataTypeWarning, match="DIMENSION_LIST"), tables.open_file(h5path) as f:
        assert type(f.root.temp).__name__ == "CArray" and f.root.temp.shape == (20, 3)


def test_dask_backed_dataset_and_dataarray(h5path):
    ds = sample_dataset().chunk({"time": 7})
    daskh5.to_pytables(ds, h5path, "/g", progress=False)
    back = xr.open_dataset(h5path, engine="daskh5", group="/g", chunks={})
    xr.testing.assert_identical(back.compute(), ds.compute())
    da_ = ds.temp.rename("t2")
    daskh5.to_pytables(da_, h5path, "/h", progress=False)
    xr.testing.assert_identical(xr.open_dataset(h5path, engine="daskh5", group="/h").t2.load(), da_.compute())


def test_dataset_encoding_is_used(h5path):
    ds = sample_dataset()
    ds.temp.encoding.update({"complib": "zlib", "complevel": 3, "chunksizes": (5, 3)})
    daskh5.to_pytables(ds, h5path, progress=False)
    back = xr.open_dataset(h5path, engine="daskh5")
    assert back.temp.encoding["complib"] == "zlib" and back.temp.encoding["chunksizes"] == (5, 3)


def test_dataset_mode_a_replaces_variables_as_to_netcdf(h5path):
    ds = sample_dataset()
    daskh5.to_pytables(ds, h5path, progress=False)
    changed = ds.assign(temp=ds.temp * 2)
    daskh5.to_pytables(changed[["temp"]], h5path, mode="a", progress=False)
    xr.testing.assert_identical(xr.open_dataset(h5path, engine="daskh5").load(), changed)


names = st.text(alphabet="abcdefghij", min_size=1, max_size=5)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    dtype=st.sampled_from(["int16", "uint8", "float32", "float64", "bool", "complex64"]),
    dims=st.lists(names, min_size=3, max_size=3, unique=True),
    attrs=st.dictionaries(names, st.one_of(st.integers(-5, 5), st.floats(-1, 1), names), max_size=3),
    chunked=st.booleans(),
)
def test_round_trip_property(tmp_path_factory, shape, dtype, dims, attrs, chunked):
    path = str(tmp_path_factory.mktemp("rt") / "rt.h5")
    data = (np.arange(np.prod(shape)).reshape(shape) % 5).astype(dtype)
    ds = xr.Dataset({"v": (tuple(dims[: len(shape)]), data, attrs)}, attrs=attrs)
    if chunked:
        ds = ds.chunk(2)
    daskh5.to_pytables(ds, path, progress=False)
    xr.testing.assert_identical(xr.open_dataset(path, engine="daskh5").load(), ds.compute())


def test_datatree_children_never_clash_with_parents(h5path):
    with tables.open_file(h5path, "w") as f:
        f.create_carray("/", "data", obj=np.zeros((4, 2)))
        g = f.create_group("/", "child")
        f.create_carray(g, "data", obj=np.ones((4, 3)))  # same generated name data_dim_1, other size
    dt = xr.open_datatree(h5path, engine="daskh5")
    assert dt["data"].dims == ("row_4", "data_dim_1")
    assert dt["child/data"].shape == (4, 3) and dt["child/data"].dims[0] == "row_4"
    assert dt["child/data"].dims[1] != "data_dim_1"


def test_dimension_scales_from_h5py_files(h5path):
    with h5py.File(h5path, "w") as f:
        f["time"] = np.arange(4.0)
        f["station"] = np.arange(3)
        f["time"].make_scale("time")
        f["station"].make_scale("station")
        f["obs"] = np.arange(12.0).reshape(4, 3)
        f["obs"].dims[0].attach_scale(f["time"])
        f["obs"].dims[1].attach_scale(f["station"])
        f["labelled"] = np.zeros((4, 2))
        f["labelled"].dims[0].label = "time"
        f["labelled"].dims[1].label = "pair"
    ds = xr.open_dataset(h5path, engine="daskh5")
    assert ds.obs.dims == ("time", "station") and ds.labelled.dims == ("time", "pair")
    assert "time" in ds.coords and ds.time.values.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_what_h5netcdf_cannot_do_works_here(h5path):
    import hdf5plugin  # noqa: F401

    with tables.open_file(h5path, "w") as f:
        f.create_table("/", "t", obj=np.array([(1.5, True), (2.5, False)], dtype=[("x", "f8"), ("ok", "?")]))
        f.root._v_attrs.config = {"alpha": 1}  # pickled by PyTables
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = xr.open_dataset(h5path, engine="h5netcdf", phony_dims="sort")
    assert theirs["t"].dtype.names is not None  # a structured array xarray cannot compute on
    ours = xr.open_dataset(h5path, engine="daskh5", decode_pickles=True)
    assert float(ours.x.sum()) == 4.0 and ours.ok.dtype == bool
    assert ours.attrs["config"] == {"alpha": 1}


@pytest.mark.cluster
def test_on_a_distributed_cluster(h5path, cluster_client):
    """Backend arrays pickle to worker processes; writing a Dataset uses the cluster too."""
    seed_file(h5path, n=50_000)
    ds = xr.open_dataset(h5path, engine="daskh5", chunks={})
    with tables.open_file(h5path) as f:
        want = f.root.data.read()
    np.testing.assert_allclose(cluster_client.compute(ds.data.sum(axis=0).data).result(), want.sum(axis=0))
    out = h5path.replace(".h5", "-out.h5")
    daskh5.to_pytables(ds[["data"]], out, progress=False)
    xr.testing.assert_identical(xr.open_dataset(out, engine="daskh5").load(), ds[["data"]].load())


def test_to_pytables_dims_for_plain_arrays(h5path):
    """Arrays written with dims= open in xarray with those names, shared across nodes."""
    daskh5.to_pytables(np.ones((10, 2)), h5path, "/data", dims=("sample", "xy"), progress=False)
    daskh5.to_pytables(np.arange(10), h5path, "/clusters", dims="sample", progress=False)
    ds = xr.open_dataset(h5path, engine="daskh5")
    assert ds.data.dims == ("sample", "xy") and ds.clusters.dims == ("sample",)
    with pytest.raises(ValueError, match="one per axis"):
        daskh5.to_pytables(np.ones((3, 2)), h5path, "/bad", dims=("only",), progress=False)
    with tables.open_file(h5path) as f:
        assert "/bad" not in f

"""Datasets written by ``daskh5.to_pytables`` as ``to_netcdf`` writes them, read by three engines.

Every file is opened by ``engine="daskh5"``, ``"h5netcdf"`` and ``"netcdf4"``
(netCDF-C), which must all give the Dataset that was written.  Refusals leave
no new file and an existing file byte for byte unchanged.
"""

from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import tables

import daskh5

xr = pytest.importorskip("xarray")
pytest.importorskip("h5netcdf")
pytest.importorskip("netCDF4")
pytest.importorskip("hdf5plugin")  # the h5netcdf engine reads blosc through it

ENGINES = ("daskh5", "h5netcdf", "netcdf4")


def varied() -> xr.Dataset:
    """Strings, times, scale/offset, fill values, an enum, a dimension without coordinate, a scalar."""
    cloud = np.dtype("u1", metadata={"enum": {"clear": 0, "cloudy": 1, "missing": 255}, "enum_name": "cloud"})
    t = pd.date_range("2024-01-01", periods=12, freq="h")
    ds = xr.Dataset(
        {
            "temp": (("time", "site"), np.random.default_rng(0).normal(size=(12, 3)), {"units": "K"}),
            "packed": (("time",), 10 + 0.5 * np.arange(12)),
            "gappy": (("time",), np.where(np.arange(12) % 4 == 0, np.nan, np.arange(12.0))),
            "label": (("time",), np.array(["a", "bé", "", "dddd"] * 3, dtype=object)),
            "code": (("site",), np.array(["x", "y", "z"])),  # one character each: still strings
            "clouds": (("time",), np.array([0, 1, 255] * 4, dtype="u1")),
            "raw": (("time", "pair"), np.arange(24, dtype="i4").reshape(12, 2)),
            "dur": (("time",), pd.to_timedelta(np.arange(12), "s")),
            "scalar": ((), 3.5),
        },
        coords={"time": t, "site": ["north", "east", "up"], "height": (("site",), [1.0, 2.0, 3.0])},
        attrs={"title": "varied", "version": 2},
    )
    ds["packed"].encoding.update(dtype="int16", scale_factor=0.5, add_offset=10.0, _FillValue=-1)
    ds["gappy"].encoding.update(_FillValue=-9999.0)
    ds["clouds"].encoding.update(dtype=cloud)
    ds["temp"].encoding.update(zlib=True, complevel=4, chunksizes=(4, 3))
    return ds


def opened(path, group, engine) -> xr.Dataset:
    daskh5.close_files()  # HDF5 refuses a second handle opened with other locking flags
    return xr.load_dataset(path, engine=engine, group=group)


def digest(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def test_varied_dataset_opens_identically_in_three_engines(tmp_path):
    path = str(tmp_path / "varied.h5")
    ds = varied()
    mixed = ds.chunk({"time": 5}).assign(label=ds.label, code=ds.code)  # dask-backed and in-memory
    daskh5.to_pytables(mixed, path, group="/run1", mode="w", unlimited_dims=["time"], progress=False)
    child = ds.isel(time=slice(0, 3))
    daskh5.to_pytables(child, path, group="/run1/child", mode="a", progress=False)
    for engine in ENGINES:
        xr.testing.assert_identical(opened(path, "run1", engine), ds)
        xr.testing.assert_identical(opened(path, "run1/child", engine), child)
    back = xr.open_dataset(path, engine="daskh5", group="run1")
    assert back.encoding["unlimited_dims"] == {"time"}
    assert back.clouds.encoding["dtype"].metadata["enum"] == {"clear": 0, "cloudy": 1, "missing": 255}
    assert back.temp.encoding["zlib"] and back.temp.encoding["complevel"] == 4
    assert back.temp.encoding["chunksizes"] == (4, 3)
    assert back.raw.encoding["complib"] == "blosc:lz4"  # daskh5's default filter elsewhere


@pytest.mark.parametrize("codec", ["zlib", "blosc:lz4", "blosc:zstd", "none"])
def test_compression_keys_round_trip(tmp_path, codec):
    path = str(tmp_path / "c.h5")
    ds = xr.Dataset({"v": (("a", "b"), np.arange(2000.0).reshape(100, 20))}).chunk({"a": 30})
    enc = {"complib": codec, "complevel": 3, "shuffle": True} if codec != "none" else {"zlib": False}
    if codec == "zlib":
        enc = {"zlib": True, "complevel": 3, "shuffle": True, "fletcher32": True, "chunksizes": (10, 20)}
    daskh5.to_pytables(ds, path, encoding={"v": enc}, progress=False)
    back = xr.load_dataset(path, engine="daskh5")
    got = back.v.encoding
    if codec == "zlib":
        assert (got["zlib"], got["complevel"], got["shuffle"], got["fletcher32"]) == (True, 3, True, True)
        assert got["chunksizes"] == (10, 20)
    elif codec == "none":
        assert got["filters"] == () and not got["zlib"]
    else:
        assert got["complib"] == codec and got["complevel"] == 3 and got["blosc"]["shuffle"] == 1
    for engine in ENGINES:
        xr.testing.assert_identical(opened(path, None, engine), ds.compute())
    again = str(tmp_path / "again.h5")  # what the reader reports is what the writer takes
    daskh5.to_pytables(back, again, progress=False)
    reported = xr.load_dataset(again, engine="daskh5").v.encoding
    assert {k: repr(v) for k, v in reported.items() if k != "source"} == {
        k: repr(v) for k, v in got.items() if k != "source"
    }


def test_plain_pytables_opens_the_data_variables(tmp_path):
    path = str(tmp_path / "p.h5")
    daskh5.to_pytables(varied(), path, mode="w", unlimited_dims=["time"], progress=False)
    with warnings.catch_warnings(record=True) as seen, tables.open_file(path) as f:
        warnings.simplefilter("always")
        assert type(f.root.temp).__name__ == "EArray" and f.root.temp.shape == (12, 3)
        assert type(f.root.height).__name__ in ("Array", "CArray")
        np.testing.assert_array_equal(f.root.raw[:], varied().raw.values)
        kinds = {leaf._v_name: type(leaf).__name__ for leaf in f.walk_nodes("/", classname="Leaf")}
    assert kinds["time"] == "EArray" and kinds["label"] == "UnImplemented"  # PyTables has no vlen strings
    assert any(
        issubclass(w.category, tables.DataTypeWarning) and "DIMENSION_LIST" in str(w.message) for w in seen
    )


def test_append_dim_grows_the_unlimited_dimension(tmp_path):
    path = str(tmp_path / "grow.h5")
    # (enum variables are laid out with a fixed size by h5netcdf, unlimited dimension or not)
    ds = varied().drop_vars(["code", "scalar", "height", "clouds"]).drop_dims("site")
    first, more = ds.isel(time=slice(0, 5)), ds.isel(time=slice(5, None)).chunk({"time": 3})
    daskh5.to_pytables(first, path, group="/g", mode="w", unlimited_dims=["time"], progress=False)
    daskh5.to_pytables(more, path, group="/g", append_dim="time", progress=False)
    for engine in ENGINES:
        xr.testing.assert_identical(opened(path, "g", engine), ds)


def test_compute_false_returns_a_delayed(tmp_path):
    from dask.delayed import Delayed

    path = str(tmp_path / "later.h5")
    ds = varied().chunk({"time": 4}).drop_vars("label")  # dask object arrays would be computed to check
    job = daskh5.to_pytables(ds, path, compute=False, progress=False)
    assert isinstance(job, Delayed) and not os.path.exists(path)
    job.compute()
    xr.testing.assert_identical(opened(path, None, "daskh5"), ds.compute())


REFUSED = {
    "slash in a name": (lambda ds: ds.rename({"temp": "a/b"}), {}, ValueError, "Forward slashes"),
    "slash in a dim": (lambda ds: ds.rename_dims({"site": "s/t"}), {}, ValueError, "Forward slashes"),
    "bad attribute": (lambda ds: ds.assign_attrs(bad={1: 2}), {}, TypeError, "Invalid value for attr"),
    "unknown encoding key": (lambda ds: ds, {"encoding": {"temp": {"foo": 1}}}, ValueError, "unexpected encoding"),
    "encoding of no variable": (lambda ds: ds, {"encoding": {"nope": {}}}, KeyError, "nope"),
    "empty name": (lambda ds: ds.rename({"temp": ""}), {}, ValueError, "Invalid name"),
    "unlimited dim not in the Dataset": (lambda ds: ds, {"unlimited_dims": ["zz"]}, ValueError, "zz"),
    "dimension of another size": (lambda ds: ds[["code"]].isel(site=[0, 1]), {"mode": "a"}, ValueError,
                                  "Unable to update size for existing dimension"),
    "append along a fixed dim": (lambda ds: ds[["code"]], {"append_dim": "site"}, ValueError, "not unlimited"),
    "append with other sizes": (lambda ds: ds[["temp"]].isel(site=[0]), {"append_dim": "time"}, ValueError,
                                "only 'time' may differ"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refusals_leave_files_as_they_were(tmp_path, case):
    make, kwargs, error, match = REFUSED[case]
    path = str(tmp_path / "existing.h5")
    daskh5.to_pytables(varied(), path, mode="w", unlimited_dims=["time"], progress=False)
    before, listing = digest(path), sorted(os.listdir(tmp_path))
    for mode in ("a", "w"):
        with pytest.raises(error, match=match):
            daskh5.to_pytables(make(varied()), path, progress=False, **{"mode": mode, **kwargs})
        assert digest(path) == before and sorted(os.listdir(tmp_path)) == listing
    if "mode" in kwargs or "append_dim" in kwargs:
        return  # needs the existing file
    new = str(tmp_path / "new.h5")
    with pytest.raises(error, match=match):
        daskh5.to_pytables(make(varied()), new, progress=False, **kwargs)
    assert not os.path.exists(new) and sorted(os.listdir(tmp_path)) == listing


def test_a_failing_computation_leaves_the_file_intact(tmp_path):
    import dask.array as da

    path = str(tmp_path / "f.h5")
    daskh5.to_pytables(varied(), path, mode="w", progress=False)
    before = digest(path)

    def boom(block):
        raise RuntimeError("the user's computation failed")

    bad = xr.Dataset({"v": (("a",), da.ones(100, chunks=10).map_blocks(boom, dtype=float))})
    for mode in ("a", "w"):
        with pytest.raises(RuntimeError, match="computation failed"):
            daskh5.to_pytables(bad, path, mode=mode, progress=False)
        assert digest(path) == before and os.listdir(tmp_path) == ["f.h5"]


@pytest.mark.cluster
def test_written_on_a_distributed_cluster(tmp_path, cluster_client):
    path = str(tmp_path / "cluster.h5")
    ds = varied().chunk({"time": 3})
    ds = ds.assign(label=ds.label.compute())  # dask object arrays: xarray computes them to check them
    daskh5.to_pytables(ds, path, progress=True)
    for engine in ENGINES:
        xr.testing.assert_identical(opened(path, None, engine), ds.compute())

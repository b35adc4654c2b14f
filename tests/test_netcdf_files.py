"""Files written by netCDF-4 tools and h5py open as their reference readers give them (issue 13).

Reference readers: xarray's ``engine="h5netcdf"`` for netCDF-4 files, h5py
for plain HDF5.  h5netcdf is opened before daskh5 in each test: daskh5
keeps an h5py handle without HDF5 file locking, which HDF5 will not let a
locking reader share.
"""

from __future__ import annotations

import pickle
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr

ENGINES = ["h5netcdf", "netcdf4"]


def era_dataset() -> xr.Dataset:
    rng = np.random.default_rng(0)
    return xr.Dataset(
        {
            "t2m": (("time", "lat", "lon"), rng.random((4, 3, 5)).astype("f4"), {"units": "K"}),
            "packed": (("time",), np.arange(4, dtype="i2"), {"scale_factor": np.float32(0.5)}),
            "grid": (("x", "y"), np.ones((2, 3))),
        },
        coords={
            "time": pd.date_range("2000-01-01", periods=4),
            "lat": [10.0, 20.0, 30.0],
            "lon": np.arange(5.0),
        },
        attrs={"title": "era-like"},
    )


def reference(path, **kwargs) -> xr.Dataset:
    import hdf5plugin  # noqa: F401  (h5netcdf needs it for some filters)

    with xr.open_dataset(path, engine="h5netcdf", **kwargs) as ds:
        return ds.load()


@pytest.mark.parametrize("writer", ENGINES)
def test_era_file_has_netcdf_dims_indexes_and_unlimited(tmp_path, writer):
    """Dimension scales name their axis; dimension-only scales are not variables (was: six dims)."""
    path = str(tmp_path / "era.nc")
    era_dataset().to_netcdf(path, engine=writer, unlimited_dims=["time"])
    want = reference(path)
    ds = xr.open_dataset(path, engine="daskh5")
    assert dict(ds.sizes) == {"time": 4, "lat": 3, "lon": 5, "x": 2, "y": 3}
    assert set(ds.indexes) == {"time", "lat", "lon"} and ds.t2m.dims == ("time", "lat", "lon")
    assert ds.encoding["unlimited_dims"] == {"time"} == want.encoding["unlimited_dims"]
    assert float(ds.t2m.sel(time="2000-01-02").mean()) == float(want.t2m.sel(time="2000-01-02").mean())
    xr.testing.assert_identical(ds.load(), want)
    assert ds.packed.dtype == np.float32 == want.packed.dtype  # a float32 scale_factor unpacks to float32


@pytest.mark.parametrize("writer", ENGINES)
def test_no_bookkeeping_attributes_and_datasets_pickle(tmp_path, writer):
    path = str(tmp_path / "era.nc")
    era_dataset().to_netcdf(path, engine=writer, unlimited_dims=["time"])
    ds = xr.open_dataset(path, engine="daskh5")
    hidden = {"_NCProperties", "_Netcdf4Dimid", "_Netcdf4Coordinates", "DIMENSION_LIST", "REFERENCE_LIST",
              "CLASS", "NAME", "_nc3_strict"}  # fmt: skip
    for name, var in [("", ds), *ds.variables.items()]:
        assert not hidden & set(var.attrs), name
    back = pickle.loads(pickle.dumps(ds))
    xr.testing.assert_identical(back.load(), ds.load())


def test_dimension_only_scales_and_non_coord_prefix(tmp_path):
    """A variable named like a dimension but not its coordinate (netCDF's ``_nc4_non_coord_``)."""
    import netCDF4

    path = str(tmp_path / "nc.nc")
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("x", 3)
        nc.createDimension("y", 2)
        nc.createVariable("x", "f8", ("y", "x"))[:] = np.arange(6.0).reshape(2, 3)
    want = reference(path)
    ds = xr.open_dataset(path, engine="daskh5")
    assert list(ds.variables) == ["x"] and ds.x.dims == ("y", "x")
    xr.testing.assert_identical(ds.load(), want)


def test_child_groups_see_parent_dimensions(tmp_path):
    """A dimension defined in a parent group names the axes of a child's variables."""
    import netCDF4

    path = str(tmp_path / "groups.nc")
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", None)
        nc.createVariable("time", "f8", ("time",))[:] = [0.0, 1.0, 2.0]
        child = nc.createGroup("run")
        child.createDimension("station", 2)
        child.createVariable("obs", "f4", ("time", "station"))[:] = np.ones((3, 2))
        inner = child.createGroup("inner")
        inner.createDimension("time", 5)  # shadows the root's time
        inner.createVariable("v", "i4", ("time",))[:] = np.arange(5)
    for group in ("/run", "/run/inner"):
        want = reference(path, group=group)
        ds = xr.open_dataset(path, engine="daskh5", group=group)
        xr.testing.assert_identical(ds.load(), want)
    assert xr.open_dataset(path, engine="daskh5", group="/run").obs.dims == ("time", "station")


def test_record_variable_shorter_than_unlimited_dim_is_padded(tmp_path):
    """netCDF-C pads a record variable to its unlimited dimension (was: conflicting sizes)."""
    import netCDF4

    path = str(tmp_path / "records.nc")
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", None)
        nc.createVariable("long", "f8", ("time",))[:] = np.arange(5.0)
        short = nc.createVariable("short", "i4", ("time",), fill_value=-1)
        short[:2] = [7, 8]
    want = reference(path)
    ds = xr.open_dataset(path, engine="daskh5")
    assert ds.sizes["time"] == 5
    xr.testing.assert_identical(ds.load(), want)
    raw = xr.open_dataset(path, engine="daskh5", mask_and_scale=False)
    assert raw.short.values.tolist() == [7, 8, -1, -1, -1]
    assert raw.short[3:].values.tolist() == [-1, -1] and int(raw.short[1]) == 8


@pytest.mark.parametrize("writer", ENGINES)
def test_strings_vlen_and_char_arrays(tmp_path, writer):
    path = str(tmp_path / "strings.nc")
    ds = xr.Dataset(
        {"names": (("n",), np.array(["a", "bb", "ccc"], dtype=object)),
         "fixed": (("n",), np.array([b"x", b"yy", b"zzz"]))},
    )  # fmt: skip
    ds.to_netcdf(path, engine=writer)
    want = reference(path)
    got = xr.open_dataset(path, engine="daskh5")
    assert got.names.values.tolist() == ["a", "bb", "ccc"] and got.fixed.values.tolist() == [
        b"x",
        b"yy",
        b"zzz",
    ]
    xr.testing.assert_identical(got.load(), want)


def test_h5py_vlen_strings_and_pytables_s1_arrays(tmp_path):
    """h5py string_dtype() reads as str; an S1 array without a char dimension stays a list of strings."""
    path = str(tmp_path / "h5py.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("words", data=["alpha", "βeta", ""], dtype=h5py.string_dtype())
        f.create_dataset("letters", data=np.array([b"a", b"b", b"c"]))
    ds = xr.open_dataset(path, engine="daskh5")
    assert ds.words.values.tolist() == ["alpha", "βeta", ""]
    assert ds.letters.values.tolist() == [b"a", b"b", b"c"] and ds.letters.dtype == "S1"


def test_attribute_fidelity(tmp_path):
    """numpy scalar dtypes kept, length-1 arrays unwrapped, bytes decoded (undecodable bytes replaced)."""
    path = str(tmp_path / "attrs.h5")
    with h5py.File(path, "w") as f:
        d = f.create_dataset("v", data=np.arange(3))
        d.attrs["f32"] = np.float32(1.5)
        d.attrs["one"] = np.array([7], dtype="i2")
        d.attrs["many"] = np.array([1.0, 2.0])
        d.attrs["text"] = np.bytes_(b"caf\xc3\xa9")
        d.attrs["latin1"] = np.bytes_(b"caf\xe9")
        d.attrs["words"] = np.array([b"ab", b"cd"])
    import hdf5plugin  # noqa: F401

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # h5netcdf warns about the undecodable bytes, and phony dims
        want = xr.open_dataset(path, engine="h5netcdf", phony_dims="sort").v.attrs
    got = xr.open_dataset(path, engine="daskh5").v.attrs
    assert type(got["f32"]) is np.float32 and type(got["one"]) is np.int16 and got["one"] == 7
    assert got["text"] == "café" and got["latin1"] == "caf\ufffd" and got["words"] == ["ab", "cd"]
    assert got.keys() == want.keys()
    # h5netcdf decodes fixed-width strings with their declared charset (ASCII here) and
    # surrogateescape: "caf\udcc3\udca9"; daskh5 decodes UTF-8 and replaces, as netCDF4-python
    assert want["text"].encode("ascii", "surrogateescape").decode("utf-8") == got["text"]
    assert want["latin1"].encode("ascii", "surrogateescape").decode("utf-8", "replace") == got["latin1"]
    for key in set(got) - {"text", "latin1"}:
        np.testing.assert_array_equal(got[key], want[key])
        assert type(got[key]) is type(want[key]), key

"""Files written by netCDF-4 tools and h5py open as their reference readers give them (issue 13).

Reference readers: xarray's ``engine="h5netcdf"`` for netCDF-4 files, h5py
for plain HDF5.  h5netcdf is opened before daskh5 where it can be: for data
daskh5 reads through h5py's cached handle (no HDF5 file locking), HDF5 would
not let a locking reader share the file.
"""

from __future__ import annotations

import pickle
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import daskh5

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


def test_compound_datasets_become_one_variable_per_field(tmp_path):
    """h5py and netCDF compound datasets read as Tables do (was: unsupported compound dtype)."""
    import netCDF4

    path = str(tmp_path / "compound.h5")
    rows = np.array(
        [(1, 2.5, (7, 8)), (3, 4.5, (9, 10))],
        dtype=[("a", "i4"), ("b", "f8"), ("c", [("x", "u1"), ("y", "u1")])],
    )
    with h5py.File(path, "w") as f:
        f.create_dataset("rows", data=rows)
    ds = xr.open_dataset(path, engine="daskh5")
    assert ds.a.values.tolist() == [1, 3] and ds.b.values.tolist() == [2.5, 4.5]
    assert ds["c.y"].values.tolist() == [8, 10] and ds.a.dims == ds["c.x"].dims

    nc_path = str(tmp_path / "compound.nc")
    with netCDF4.Dataset(nc_path, "w") as nc:
        nc.createDimension("station", 2)
        kind = nc.createCompoundType(np.dtype([("t", "f8"), ("n", "i4")]), "obs_t")
        nc.createVariable("obs", kind, ("station",))[:] = np.array([(1.5, 1), (2.5, 2)], dtype=kind.dtype)
    ds = xr.open_dataset(nc_path, engine="daskh5")
    assert ds.t.dims == ("station",) and ds.t.values.tolist() == [1.5, 2.5] and ds.n.values.tolist() == [1, 2]


def test_array_element_types_are_trailing_dimensions(tmp_path):
    """PyTables shaped atoms and h5py array dtypes (H5T_ARRAY) (was: "variable-length data")."""
    import tables

    path = str(tmp_path / "shaped.h5")
    with tables.open_file(path, "w") as f:
        c = f.create_carray("/", "c", atom=tables.Float64Atom(shape=(2, 3)), shape=(4,))
        c[:] = np.arange(24.0).reshape(4, 2, 3)
        e = f.create_earray("/", "e", atom=tables.Int32Atom(shape=(2,)), shape=(0,))
        e.append(np.arange(6, dtype="i4").reshape(3, 2))
    with tables.open_file(path) as f:
        want_c, want_e = f.root.c.read(), f.root.e.read()
    ds = xr.open_dataset(path, engine="daskh5")
    assert ds.c.shape == (4, 2, 3) and ds.e.shape == (3, 2)
    np.testing.assert_array_equal(ds.c.values, want_c)
    np.testing.assert_array_equal(ds.e.values, want_e)
    np.testing.assert_array_equal(ds.c[[3, 1], 1, ::2].values, want_c[[3, 1], 1, ::2])
    daskh5.close_files()  # daskh5's cached read-only handle would keep h5py from writing
    with h5py.File(path, "a") as f:
        h = f.create_dataset("h", shape=(3,), dtype=np.dtype(("f4", (2,))))
        h.id.write(h5py.h5s.ALL, h5py.h5s.ALL, np.arange(6, dtype="f4").reshape(3, 2), mtype=h.id.get_type())
    np.testing.assert_array_equal(
        xr.open_dataset(path, engine="daskh5").h.values, np.arange(6.0).reshape(3, 2)
    )


def test_pytables_time_atoms_and_columns_are_datetimes(tmp_path):
    """Time32/Time64 atoms and Table columns: datetime64 of PyTables' seconds (was: "metadata is damaged")."""
    import tables

    class Row(tables.IsDescription):
        when = tables.Time64Col()
        day = tables.Time32Col()

    path = str(tmp_path / "times.h5")
    with tables.open_file(path, "w") as f:
        f.create_carray("/", "t32", atom=tables.Time32Atom(), shape=(3,))[:] = [0, 86400, 1_700_000_000]
        f.create_carray("/", "t64", atom=tables.Time64Atom(), shape=(2,))[:] = [0.5, 1_700_000_000.25]
        f.create_table("/", "log", Row).append([(1.25, 86400), (-2.5, 0)])
    with tables.open_file(path) as f:
        want = {"t32": f.root.t32.read(), "t64": f.root.t64.read(), "when": f.root.log.col("when"),
                "day": f.root.log.col("day")}  # fmt: skip
    ds = xr.open_dataset(path, engine="daskh5")
    for name, seconds in want.items():
        got = (ds[name].values - np.datetime64(0, "us")) / np.timedelta64(1, "s")
        np.testing.assert_allclose(got, seconds, err_msg=name)
    assert ds.t32.dtype == "datetime64[s]" and ds.t64.dtype == "datetime64[us]"
    assert ds.t64[1:].values[0] == np.datetime64("2023-11-14T22:13:20.250")
    x = daskh5.from_pytables(path, "/t64")  # datetime64 too, never the packed integers
    assert x.dtype == "datetime64[us]" and (x.compute() == ds.t64.values).all()


def _ieee_quad_dataset(f, name: str) -> None:
    t = h5py.h5t.IEEE_F64LE.copy()
    t.set_size(16)
    t.set_precision(128)
    t.set_fields(127, 112, 15, 0, 112)
    t.set_ebias(16383)
    h5py.h5d.create(f.id, name.encode(), t, h5py.h5s.create_simple((2,)))


def test_types_without_values_are_skipped_with_one_warning(tmp_path):
    """Null dataspaces, named datatypes, opaque data, references, IEEE quad floats: listed, the rest opens."""
    path = str(tmp_path / "odd.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("vals", data=np.arange(3.0))
        f.create_dataset("empty", data=h5py.Empty("f4"))
        f["named"] = np.dtype("f8")
        f.create_dataset("uses_named", data=np.arange(2.0), dtype=f["named"])
        f.create_dataset("opaque", data=np.array([b"ab", b"cd"], dtype="V2"))
        f.create_dataset("refs", data=[f["vals"].ref], dtype=h5py.ref_dtype)
        _ieee_quad_dataset(f, "quad")
    with pytest.warns(UserWarning) as record:
        ds = xr.open_dataset(path, engine="daskh5")
    assert len(record) == 1
    message = str(record[0].message)
    for name in ("/empty", "/named", "/opaque", "/refs", "/quad"):
        assert name in message, name
    assert "re-copy" not in message and "damaged" not in message
    assert sorted(ds.variables) == ["uses_named", "vals"] and ds.vals.values.tolist() == [0.0, 1.0, 2.0]


def test_soft_links_are_followed_and_dangling_ones_listed(tmp_path):
    path = str(tmp_path / "links.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("vals", data=np.arange(3.0))
        g = f.create_group("g")
        g.create_dataset("inner", data=np.arange(2))
        f["alias"] = h5py.SoftLink("/vals")
        f["g_again"] = h5py.SoftLink("/g")
        g["loop"] = h5py.SoftLink("/g")  # a cycle
        f["dangling"] = h5py.SoftLink("/nowhere")
    with pytest.warns(UserWarning, match=r"/dangling \(a soft link to /nowhere, which does not exist\)"):
        ds = xr.open_dataset(path, engine="daskh5")
    assert ds.alias.values.tolist() == ds.vals.values.tolist() == [0.0, 1.0, 2.0]
    with pytest.warns(UserWarning, match="dangling"):
        tree = xr.open_datatree(path, engine="daskh5")
    assert sorted(tree.children) == ["g"] and tree["g"].inner.values.tolist() == [0, 1]


def test_netcdf4_python_file_with_groups_enums_chars_and_records(tmp_path):
    """A netCDF4-python file with most netCDF-4 features opens as h5netcdf gives it, group by group and as a tree."""
    import netCDF4

    path = str(tmp_path / "rich.nc")
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", None)
        nc.createDimension("nchar", 4)
        nc.createDimension("x", 3)
        nc.createVariable("time", "f8", ("time",))[:] = [0, 1, 2]
        nc["time"].units = "days since 2000-01-01"
        label = nc.createVariable("label", "S1", ("x", "nchar"))
        label[:] = netCDF4.stringtochar(np.array(["ab", "cde", "f"], dtype="S4"))
        nc.createVariable("names", str, ("x",))[:] = np.array(["uno", "dos", "tres"], dtype=object)
        cloud_t = nc.createEnumType("u1", "cloud_t", {"clear": 0, "cloudy": 1})
        nc.createVariable("cloud", cloud_t, ("time",))[:] = [0, 1, 1]
        v = nc.createVariable("v", "i2", ("time", "x"), zlib=True, complevel=4, fill_value=-9)
        v[:2] = np.arange(6).reshape(2, 3)  # shorter than time: padded
        v.scale_factor, v.add_offset = np.float32(0.1), 1.0
        v.flags, v.one = np.array([1, 2, 4], dtype="i1"), np.array([3.5])
        nc.title = "rich"
        sub = nc.createGroup("sub")
        sub.createDimension("y", 2)
        sub.createVariable("w", "f4", ("time", "y"))[:] = np.ones((3, 2))
        sub.createGroup("deeper").createVariable("z", "f4", ("y",))[:] = [1, 2]
    for group in ("/", "/sub", "/sub/deeper"):
        want = reference(path, group=group)
        got = xr.open_dataset(path, engine="daskh5", group=group)
        xr.testing.assert_identical(got.load(), want)
        for name in got.variables:
            for key in (
                "dtype",
                "chunksizes",
                "zlib",
                "complevel",
                "shuffle",
                "original_shape",
                "contiguous",
            ):
                assert str(got[name].encoding.get(key)) == str(want[name].encoding.get(key)), (
                    group,
                    name,
                    key,
                )
    assert got.encoding["unlimited_dims"] == set()
    root = xr.open_dataset(path, engine="daskh5")
    assert root.label.values.tolist() == [b"ab", b"cde", b"f"]
    assert root.cloud.encoding["dtype"].metadata == {
        "enum": {"clear": 0, "cloudy": 1},
        "enum_name": "cloud_t",
    }
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        want_tree = tree.load()
    xr.testing.assert_identical(xr.open_datatree(path, engine="daskh5").load(), want_tree)


def test_reference_attributes_are_left_out(tmp_path):
    """An attribute holding object references (h5netcdf fails on it) is not in attrs; the Dataset pickles."""
    path = str(tmp_path / "refattr.h5")
    with h5py.File(path, "w") as f:
        d = f.create_dataset("v", data=np.arange(3))
        d.attrs["link"] = f["v"].ref
        d.attrs["links"] = np.array([f["v"].ref, f["v"].ref], dtype=h5py.ref_dtype)
        d.attrs["kept"] = 1.5
    ds = xr.open_dataset(path, engine="daskh5")
    assert ds.v.attrs == {"kept": 1.5}
    xr.testing.assert_identical(pickle.loads(pickle.dumps(ds)).load(), ds.load())


def test_h5py_scales_and_labels_name_axes_together(tmp_path):
    """An axis with a dimension scale and one with only a label (h5netcdf refuses such a dataset)."""
    path = str(tmp_path / "scales.h5")
    with h5py.File(path, "w") as f:
        t = f.create_group("dims").create_dataset("time", data=np.arange(4.0))
        t.make_scale("time")
        d = f.create_dataset("data", data=np.ones((4, 2)))
        d.dims[0].attach_scale(t)
        d.dims[1].label = "pair"
        f.create_dataset("bare", data=np.ones((4, 3)))
    ds = xr.open_dataset(path, engine="daskh5")
    assert ds.data.dims == ("time", "pair") and ds.bare.dims == ("row_4", "bare_dim_1")


def test_info_lists_odd_nodes_instead_of_failing(tmp_path, capsys):
    """``daskh5 info`` on named datatypes, null dataspaces, references and time atoms (was: a crash or "re-copy")."""
    import tables

    from daskh5 import cli

    path = str(tmp_path / "odd.h5")
    with tables.open_file(path, "w") as f:
        f.create_carray("/", "t32", atom=tables.Time32Atom(), shape=(2,))
    with h5py.File(path, "a") as f:
        f.create_dataset("empty", data=h5py.Empty("f4"))
        f["named"] = np.dtype("f8")
        f.create_dataset("refs", data=[f["t32"].ref], dtype=h5py.ref_dtype)
    assert cli.main(["info", path]) == 0
    out = capsys.readouterr().out
    assert "null dataspace" in out and "named datatype" in out and "object references" in out
    assert "Time32/Time64" in out and "re-copy" not in out

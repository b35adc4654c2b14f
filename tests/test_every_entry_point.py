"""Files other tools write, through the entry points their own tests do not cover (issue 13).

``test_netcdf_files.py`` and ``test_pandas_files.py`` compare the xarray
engine and DataTrees with h5netcdf and ``pd.read_hdf``.  Here every dataset of
the same kinds of files goes through :func:`daskh5.from_pytables` (compared
with h5py, the reference for a node read as an array) and ``daskh5 info``
(every node listed, nothing fails): an array daskh5 does not read must be a
daskh5 error that names the node and says what to use instead.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import daskh5
from daskh5.cli import main as cli_main


def _era(path: str, engine: str) -> None:
    rng = np.random.default_rng(0)
    xr.Dataset(
        {
            "t2m": (("time", "lat", "lon"), rng.random((4, 3, 5)).astype("f4"), {"units": "K"}),
            "packed": (("time",), np.arange(4, dtype="i2"), {"scale_factor": np.float32(0.5)}),
            "names": (("lat",), np.array(["a", "bb", ""], dtype=object)),
            "grid": (("x", "y"), np.ones((2, 3))),
        },
        coords={"time": pd.date_range("2000-01-01", periods=4), "lat": [10.0, 20.0, 30.0]},
    ).to_netcdf(path, engine=engine, unlimited_dims=["time"], encoding={"t2m": {"zlib": True}})


def _netcdf4_python(path: str) -> None:
    import netCDF4

    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", None)
        nc.createDimension("x", 3)
        nc.createVariable("time", "f8", ("time",))[:] = [0, 1, 2]
        nc.createVariable("names", str, ("x",))[:] = np.array(["uno", "dos", "tres"], dtype=object)
        cloud = nc.createEnumType("u1", "cloud_t", {"clear": 0, "cloudy": 1})
        nc.createVariable("cloud", cloud, ("time",))[:] = [0, 1, 1]
        nc.createVariable("v", "i2", ("time", "x"), zlib=True, fill_value=-9)[:2] = np.arange(6).reshape(2, 3)
        nc.createGroup("sub").createVariable("w", "f4", ("time",))[:] = [1, 2, 3]


def _h5py(path: str) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "big_endian", data=np.arange(10, dtype=">i8"), chunks=(3,), compression="gzip", shuffle=True
        )
        f.create_dataset("shaped", data=np.ones((4, 2)), dtype=np.dtype(("f4", (2,))).base)
        f.create_dataset(
            "vlen_str", data=np.array(["x", "\u00e9t\u00e9"], dtype=object), dtype=h5py.string_dtype()
        )
        f.create_dataset("records", data=np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]))
        f.create_dataset("scalar", data=3.5)
        f.create_dataset("empty", data=h5py.Empty("f4"))
        f.create_dataset("fill", shape=(5, 5), dtype="i2", chunks=(2, 2), fillvalue=7)
        f.create_dataset("no_strings", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(4,))
        f["grp/inner"] = np.arange(6).reshape(2, 3)
        f["soft"] = h5py.SoftLink("/grp/inner")


def _pandas(path: str, fmt: str) -> None:
    df = pd.DataFrame(
        {"x": np.arange(6.0), "n": np.arange(6), "s": list("abcdef")},
        index=pd.date_range("2024-01-01", periods=6, tz="UTC"),
    )
    if fmt == "table":  # pandas stores categoricals in tables only
        df["c"] = pd.Categorical(list("aabbcc"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas' PerformanceWarning for pickled object blocks
        df.to_hdf(path, key="frame", format=fmt, **({"data_columns": ["n"]} if fmt == "table" else {}))
        df["x"].to_hdf(path, key="series", format=fmt)


WRITERS = {
    "xarray-h5netcdf": lambda p: _era(p, "h5netcdf"),
    "xarray-netcdf4": lambda p: _era(p, "netcdf4"),
    "netCDF4-python": _netcdf4_python,
    "h5py": _h5py,
    "pandas-fixed": lambda p: _pandas(p, "fixed"),
    "pandas-table": lambda p: _pandas(p, "table"),
}


def _datasets(path: str) -> dict[str, object]:
    """{node: h5py's value, or the exception h5py raised} for every dataset reached by a hard link."""
    out = {}
    with h5py.File(path, "r", locking=False) as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                try:
                    info = h5py.check_string_dtype(obj.dtype)
                    out["/" + name] = obj.asstr()[()] if info is not None and info.length is None else obj[()]
                except Exception as exc:  # h5py cannot read it either
                    out["/" + name] = exc

        f.visititems(visit)
    return out


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_dataset_through_from_pytables_and_info(tmp_path, writer):
    path = str(tmp_path / "file.h5")
    WRITERS[writer](path)
    checked = refused = 0
    for node, want in _datasets(path).items():
        try:
            got = daskh5.from_pytables(path, node).compute()
        except daskh5.Daskh5Error as exc:
            refused += 1
            msg = str(exc)
            assert node in msg and path in msg, msg
            assert any(
                hint in msg for hint in ("engine", "read_ragged", "read_table", "numpy", "holds no")
            ), msg
            continue
        assert not isinstance(want, Exception), f"{node}: h5py cannot read it but daskh5 gave {got!r}"
        want = np.asarray(want)
        if want.dtype.kind == "O":  # h5py's str objects; daskh5 gives str too
            assert got.tolist() == want.tolist(), node
        else:
            assert got.dtype == want.dtype.newbyteorder("="), node
            np.testing.assert_array_equal(got, want, err_msg=node)
        checked += 1
    assert checked >= 2  # not vacuous: most datasets are arrays
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["info", path]) == 0
    text = out.getvalue()
    if not writer.startswith("pandas"):  # pandas keys are listed by their columns instead
        for node in _datasets(path):
            assert node.rsplit("/", 1)[-1] in text, node
    daskh5.close_files()

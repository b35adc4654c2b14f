"""xarray's own netCDF backend test classes, read back with ``engine="daskh5"``.

The classes are imported from the installed xarray (``xarray.tests.test_backends``),
never copied: they are the contract.  Each test writes its Dataset with
xarray's ``to_netcdf(engine="h5netcdf")`` or ``to_netcdf(engine="netcdf4")``
as the parent class does, and only the opening goes through daskh5.  Tests
that do not open a file (writer-only checks) run unchanged.

Known differences are listed in ``docs/user-guide/xarray.rst`` ("Files
written by netCDF-4 tools"); today there are none among the tests that pass
for the h5netcdf and netCDF4 engines themselves.
"""

from __future__ import annotations

import contextlib

import pytest
import xarray as xr

tb = pytest.importorskip("xarray.tests.test_backends")
pytest.importorskip("h5netcdf")
pytest.importorskip("netCDF4")

# fixtures the parent classes take from xarray's conftest, which pytest does not load from here
from xarray.tests.conftest import time_unit, use_dask  # noqa: E402, F401

# importing xarray.tests turns this on for the whole session; only these classes want it
xr.set_options(warn_for_unclosed_files=False)


class _OpenWithDaskh5:
    """Open what the parent class wrote with ``engine="daskh5"``."""

    @pytest.fixture(autouse=True)
    def _unclosed_files_warn(self):
        with xr.set_options(warn_for_unclosed_files=True):
            yield

    @contextlib.contextmanager
    def open(self, path, **kwargs):
        with xr.open_dataset(path, engine="daskh5", **kwargs) as ds:
            yield ds


class TestFilesFromH5netcdf(_OpenWithDaskh5, tb.TestH5NetCDFData):
    """Written by ``to_netcdf(engine="h5netcdf")``."""


class TestFilesFromNetCDF4(_OpenWithDaskh5, tb.TestNetCDF4Data):
    """Written by ``to_netcdf(engine="netcdf4")`` (netCDF-C)."""

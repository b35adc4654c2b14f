"""xarray's own netCDF backend test classes with daskh5 as the writer and the reader.

As xarray's ``TestH5NetCDFData`` runs them for h5netcdf: the parent classes
(imported from the installed ``xarray.tests.test_backends``, never copied)
write with :func:`daskh5.to_pytables` and read with ``engine="daskh5"``.
"""

from __future__ import annotations

import contextlib

import pytest
import xarray as xr

import daskh5

tb = pytest.importorskip("xarray.tests.test_backends")
pytest.importorskip("h5netcdf")
pytest.importorskip("netCDF4")

from xarray.tests.conftest import time_unit, use_dask  # noqa: E402, F401

xr.set_options(warn_for_unclosed_files=False)


class TestDaskh5WritesAndReads(tb.TestH5NetCDFData):
    """Written by ``daskh5.to_pytables``, opened by ``engine="daskh5"``."""

    engine = "daskh5"

    @pytest.fixture(autouse=True)
    def _unclosed_files_warn(self):
        with xr.set_options(warn_for_unclosed_files=True):
            yield

    def save(self, dataset, path, **kwargs):
        kwargs.pop("engine", None)
        kwargs.pop("format", None)
        return daskh5.to_pytables(dataset, path, progress=False, **kwargs)

    @contextlib.contextmanager
    def open(self, path, **kwargs):
        with xr.open_dataset(path, engine="daskh5", **kwargs) as ds:
            yield ds

    @contextlib.contextmanager
    def create_store(self):
        from daskh5._netcdf_write import open_store
        from daskh5.writer import _default_filters

        with tb.create_tmp_file() as path:
            yield open_store(path, "w", None, _default_filters())

"""xarray's own netCDF backend test classes with daskh5 as the writer and the reader.

``TestH5NetCDFData`` (and ``NetCDF4Base`` and the classes below it), imported
from the installed ``xarray.tests.test_backends``, never copied, with its
``save``/``open``/``create_store`` hooks pointed at :func:`daskh5.to_pytables`,
``engine="daskh5"`` and the store daskh5 writes through.  The three expected
failures are listed in ``docs/user-guide/xarray.rst`` ("Writing Datasets")
with their reasons.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import xarray as xr

import daskh5

tb = pytest.importorskip("xarray.tests.test_backends")
pytest.importorskip("h5netcdf")
pytest.importorskip("netCDF4")

from xarray.tests.conftest import time_unit, use_dask  # noqa: E402, F401

xr.set_options(warn_for_unclosed_files=False)


def _expected_failure(name: str, reason: str):
    """The parent's test ``name``, marked as failing for ``reason`` (its own marks kept, not changed)."""
    parent = getattr(tb.TestH5NetCDFData, name)

    @functools.wraps(parent)
    def test(self, *args, **kwargs):
        return parent(self, *args, **kwargs)

    test.pytestmark = [*getattr(parent, "pytestmark", []), pytest.mark.xfail(strict=True, reason=reason)]
    return test


class TestDaskh5WritesAndReads(tb.TestH5NetCDFData):
    """Written by ``daskh5.to_pytables``, opened by ``engine="daskh5"``."""

    engine = "daskh5"

    @pytest.fixture(autouse=True)
    def _unclosed_files_warn(self):
        with xr.set_options(warn_for_unclosed_files=True):
            yield

    test_numpy_bool_ = _expected_failure(
        "test_numpy_bool_",
        "invalid_netcdf=True (h5netcdf's option to write files netCDF-C cannot read) is not offered",
    )
    test_create_default_indexes = _expected_failure(
        "test_create_default_indexes",
        "it writes with Dataset.to_netcdf(engine=self.engine), which knows only xarray's own writers",
    )

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

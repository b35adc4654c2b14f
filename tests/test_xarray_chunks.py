"""The engine's chunks: ``{}`` follows storage exactly, ``"auto"`` whole storage chunks within the budget."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import tables
import xarray as xr

import daskh5


@pytest.fixture
def demo_like(tmp_path):
    path = str(tmp_path / "c.h5")
    with tables.open_file(path, "w") as f:
        filters = tables.Filters(5, "blosc:lz4", shuffle=True)
        f.create_carray("/", "data", obj=np.ones((300_000, 2)), chunkshape=(3000, 2), filters=filters)
        f.create_carray("/", "clusters", obj=np.zeros(300_000, "i1"), chunkshape=(50_000,), filters=filters)
    return path


def test_empty_dict_follows_storage(demo_like):
    ds = xr.open_dataset(demo_like, engine="daskh5", chunks={})
    assert ds.data.encoding["preferred_chunks"] == {"row_300000": 3000, "data_dim_1": 2}
    assert set(ds.data.chunks[0][:-1]) == {3000} and len(ds.data.chunks[0]) == 100


@pytest.mark.parametrize("budget", ["96KiB", "1MiB", "4MiB"])
def test_auto_is_whole_storage_chunks_within_the_budget(demo_like, budget):
    with dask.config.set({"array.chunk-size": budget}):
        ds = xr.open_dataset(demo_like, engine="daskh5", chunks="auto")
        ours = daskh5.from_pytables(demo_like, "/data")
    limit = dask.utils.parse_bytes(budget)
    rows = ds.data.chunks[0]
    assert all(r % 3000 == 0 for r in rows[:-1])  # whole HDF5 chunks
    assert max(rows) * 16 <= limit and max(rows) * 16 > limit / 2  # as big as the budget allows
    assert ds.data.chunks == ours.chunks  # the same blocks as from_pytables
    assert all(r % 50_000 == 0 for r in ds.clusters.chunks[0][:-1])

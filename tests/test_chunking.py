"""Budget chunks: whole multiples of the HDF5 chunkshape, within the budget."""

from __future__ import annotations

import math

import dask
import numpy as np
import pytest
import tables
from dask.utils import parse_bytes
from hypothesis import given, settings
from hypothesis import strategies as st

import daskh5
from daskh5._chunking import budget_chunks


@settings(max_examples=300, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5000), min_size=1, max_size=4),
    data=st.data(),
    itemsize=st.sampled_from([1, 2, 4, 8, 16]),
    budget=st.integers(1, 1 << 22),
)
def test_budget_chunks_properties(shape, data, itemsize, budget):
    chunkshape = tuple(data.draw(st.integers(1, max(1, s))) for s in shape)
    chunks = budget_chunks(tuple(shape), chunkshape, itemsize, budget)
    assert tuple(sum(c) for c in chunks) == tuple(shape)
    block = tuple(c[0] for c in chunks)
    for b, c, s in zip(block, chunkshape, shape, strict=True):
        if s:
            assert b % c == 0 or b == s, "blocks are whole multiples of the HDF5 chunkshape"
    nbytes = math.prod(block) * itemsize
    one_chunk = math.prod(min(c, s) for c, s in zip(chunkshape, shape, strict=True)) * itemsize
    assert nbytes <= max(budget, one_chunk), "within budget unless one HDF5 chunk is already bigger"
    for c in chunks:  # every block but the last along an axis has the same size
        assert len(set(c[:-1])) <= 1


@pytest.fixture
def big(h5path):
    with tables.open_file(h5path, "w") as f:
        f.create_carray("/", "data", atom=tables.Float64Atom(), shape=(1_000_000, 2), chunkshape=(4096, 2))
    return h5path


@pytest.mark.parametrize(("chunks", "budget"), [("64MiB", "64MiB"), ("1 MB", "1 MB"), ("300000B", 300_000)])
def test_budget_argument(big, chunks, budget):
    x = daskh5.from_pytables(big, "/data", chunks=chunks)
    budget = parse_bytes(budget) if isinstance(budget, str) else budget
    rows = x.chunks[0][0]
    assert rows % 4096 == 0 or rows == 1_000_000  # whole chunks, or the whole axis
    assert rows * 16 <= budget
    assert (rows + 4096) * 16 > min(budget, 16e6)  # and as many whole chunks as fit


def test_an_int_is_elements_as_in_dask(big):
    """``chunks=<int>`` means what it means to ``da.from_array``: elements along every axis."""
    import dask.array as da

    x = daskh5.from_pytables(big, "/data", chunks=300_000)
    assert x.chunks == da.from_array(np.empty((1_000_000, 2)), chunks=300_000).chunks
    assert x.chunks == ((300_000, 300_000, 300_000, 100_000), (2,))
    with pytest.raises(ValueError, match="elements"):
        daskh5.from_pytables(big, "/data", chunks=0)


def test_auto_follows_dask_config(big):
    with dask.config.set({"array.chunk-size": "1MiB"}):
        x = daskh5.from_pytables(big, "/data")
    assert x.chunks[0][0] == 65536  # 16 chunks of 4096 rows x 16 bytes = 1 MiB
    assert x.chunks[1] == (2,)


def test_one_chunk_over_budget_is_one_block(big):
    x = daskh5.from_pytables(big, "/data", chunks="1KiB")
    assert x.chunks[0][0] == 4096


def test_explicit_chunks_are_honoured(big):
    x = daskh5.from_pytables(big, "/data", chunks=(100_000, 1))
    assert x.chunks == ((100_000,) * 10, (1, 1))
    y = daskh5.from_pytables(big, "/data", chunks={0: 250_000})
    assert y.chunks[0] == (250_000,) * 4
    z = daskh5.from_pytables(big, "/data", chunks=(-1, "auto"))
    assert z.chunks == ((1_000_000,), (2,))


@pytest.mark.parametrize("bad", ["-5MiB", 0, (10,), "lots"])
def test_bad_chunks(big, bad):
    with pytest.raises((ValueError, TypeError)):
        daskh5.from_pytables(big, "/data", chunks=bad)


def test_trailing_axes_grow_first(h5path):
    with tables.open_file(h5path, "w") as f:
        f.create_carray("/", "data", atom=tables.UInt8Atom(), shape=(64, 256, 256), chunkshape=(4, 32, 32))
    x = daskh5.from_pytables(h5path, "/data", chunks="1MiB")
    assert x.chunks[1] == (256,) and x.chunks[2] == (256,)
    assert x.chunks[0][0] == 16
    np.testing.assert_array_equal(x.compute(), np.zeros((64, 256, 256), np.uint8))

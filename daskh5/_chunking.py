"""Turn a memory budget into dask chunks aligned to a node's HDF5 chunks."""

from __future__ import annotations

import math

import dask
import numpy as np
from dask.array.core import normalize_chunks
from dask.utils import parse_bytes

from daskh5.errors import ResourceLimitError

__all__ = ["MAX_BLOCKS", "budget_chunks", "count_blocks", "preferred_chunks", "resolve_chunks"]

MAX_BLOCKS = 1 << 20
"""Most dask blocks daskh5 makes for one array (a node's shape comes from the file: a small
file can claim any shape, and a tuple of 2**27 chunk sizes alone is a gigabyte)."""


def count_blocks(shape: tuple[int, ...], block: tuple[int, ...]) -> int:
    """Number of blocks of shape ``block`` that tile ``shape`` (arithmetic: nothing is built).

    >>> count_blocks((1000, 3), (300, 3))
    4
    """
    return math.prod(max(1, -(-int(s) // max(1, int(b)))) for s, b in zip(shape, block))


def budget_block(
    shape: tuple[int, ...], chunkshape: tuple[int, ...] | None, itemsize: int, budget: int
) -> tuple[int, ...]:
    """The block shape of :func:`budget_chunks` (the last block along an axis may be smaller)."""
    unit = tuple(chunkshape) if chunkshape else (1,) + tuple(shape[1:])
    unit = tuple(max(1, min(u, s)) if s else max(1, u) for u, s in zip(unit, shape))
    block = list(unit)
    nbytes = math.prod(unit) * itemsize
    for axis in reversed(range(len(shape))):
        whole = max(1, -(-shape[axis] // unit[axis]))  # chunks along this axis
        fit = max(1, budget // nbytes) if nbytes else whole
        k = min(whole, fit)
        block[axis] = unit[axis] * k
        nbytes *= k
        if k < whole:
            break
    return tuple(block)


def budget_chunks(
    shape: tuple[int, ...], chunkshape: tuple[int, ...] | None, itemsize: int, budget: int
) -> tuple[tuple[int, ...], ...]:
    """Blocks of whole HDF5 chunks whose bytes stay within ``budget``.

    Blocks grow along the last axes first (to their full extent), then along
    earlier ones, so each block is as close to one contiguous run of rows as
    possible.  One HDF5 chunk bigger than the budget makes a block of its own.
    Contiguous nodes (no chunkshape) are aligned to single rows.

    >>> budget_chunks((1000, 2), (100, 2), 8, 3200)
    ((200, 200, 200, 200, 200), (2,))
    >>> budget_chunks((1000, 2), (300, 2), 8, 100)   # one chunk is over budget
    ((300, 300, 300, 100), (2,))
    """
    if not shape:
        return ()
    block = budget_block(shape, chunkshape, itemsize, budget)
    return tuple(_split(s, b) for s, b in zip(shape, block))


def preferred_chunks(
    shape: tuple[int, ...], chunkshape: tuple[int, ...], itemsize: int, limit: int = MAX_BLOCKS
) -> tuple[int, ...]:
    """Dask chunks to suggest for a node: its HDF5 chunks, or whole multiples of them when
    those would make more than ``limit`` blocks (xarray's ``chunks={}`` takes them as they are).

    >>> preferred_chunks((1000,), (10,), 8)
    (10,)
    >>> preferred_chunks((1 << 27,), (1,), 8)  # 2**27 chunks: blocks of dask's array.chunk-size
    (16777216,)
    >>> preferred_chunks((1 << 27,), (1,), 8, limit=4)  # and never more than ``limit`` of them
    (33554432,)
    """
    block = list(chunkshape)
    if count_blocks(shape, block) <= limit:
        return tuple(block)
    block = list(budget_block(shape, chunkshape, itemsize, parse_bytes(dask.config.get("array.chunk-size"))))
    for axis in range(len(shape)):
        n = count_blocks(shape, block)
        if n <= limit:
            break
        along = max(1, -(-shape[axis] // block[axis]))
        allowed = max(1, limit // (n // along))
        block[axis] *= -(-along // allowed)
    return tuple(block)


def _check_blocks(shape, block, where: str) -> None:
    n = count_blocks(shape, block)
    if n > MAX_BLOCKS:
        raise ResourceLimitError(
            f"{where}: shape {tuple(shape)} in blocks of {tuple(block)} is {n:,} dask blocks, more than "
            f"daskh5 makes for one array ({MAX_BLOCKS:,}); pass a bigger chunks= budget (e.g. '1GiB'), "
            "or the file's shape is damaged"
        )


def _split(n: int, b: int) -> tuple[int, ...]:
    if n == 0:
        return (0,)
    full, rest = divmod(n, b)
    return (b,) * full + ((rest,) if rest else ())


def resolve_chunks(chunks, shape, chunkshape, dtype: np.dtype, where: str = "the array"):
    """Normalise the ``chunks`` argument of :func:`daskh5.from_pytables`.

    ``"auto"`` uses dask's ``array.chunk-size``; a string is a byte budget
    (blocks of whole HDF5 chunks); as in :func:`dask.array.from_array`, an
    int is a number of elements along every axis, and a tuple or dict gives
    explicit chunks (``"auto"`` or ``None`` entries inside it follow the
    budget, -1 means the whole axis). More than :data:`MAX_BLOCKS` blocks is
    a :class:`~daskh5.ResourceLimitError` naming ``where``, raised before any
    chunk tuple is built.

    >>> resolve_chunks(1000, (2500, 3), (100, 3), np.dtype("f8"))
    ((1000, 1000, 500), (3,))
    >>> resolve_chunks("8KiB", (2500, 3), (100, 3), np.dtype("f8"))
    ((300, 300, 300, 300, 300, 300, 300, 300, 100), (3,))
    """
    if chunks is None or chunks == "auto":
        chunks = dask.config.get("array.chunk-size")
    if isinstance(chunks, str):
        budget = parse_bytes(chunks)
        if budget <= 0:
            raise ValueError(f"chunks: a memory budget must be positive, got {chunks!r}")
        if shape:
            _check_blocks(shape, budget_block(shape, chunkshape, dtype.itemsize, budget), where)
        return budget_chunks(shape, chunkshape, dtype.itemsize, budget)
    if isinstance(chunks, bool):
        raise TypeError(f"chunks: give a budget like '64MiB', elements per axis, or a tuple, not {chunks!r}")
    if isinstance(chunks, (int, np.integer)):
        if chunks <= 0 and chunks != -1:
            raise ValueError(
                f"chunks: an int is a number of elements along every axis (>0 or -1), got {chunks}"
            )
        _check_blocks(shape, [_block_of(int(chunks), n) for n in shape], where)
        return normalize_chunks(int(chunks), shape, dtype=dtype)
    if isinstance(chunks, dict):
        chunks = tuple(chunks.get(i, chunks.get(i - len(shape), "auto")) for i in range(len(shape)))
    if isinstance(chunks, (tuple, list)) and len(chunks) != len(shape):
        raise ValueError(f"chunks: got {len(chunks)} entries for an array of {len(shape)} dimensions")
    auto = budget_block(shape, chunkshape, dtype.itemsize, parse_bytes(dask.config.get("array.chunk-size")))
    chunks = tuple(a if c in ("auto", None) else c for c, a in zip(chunks, auto))
    _check_blocks(shape, [_block_of(c, s) for c, s in zip(chunks, shape)], where)
    return normalize_chunks(chunks, shape, dtype=dtype)


def _block_of(entry, size: int) -> int:
    """One axis of an explicit ``chunks`` tuple as a block length (for counting blocks)."""
    if isinstance(entry, (int, np.integer)) and not isinstance(entry, bool):
        return int(size) if entry == -1 else int(entry)
    if isinstance(entry, (tuple, list)):  # explicit block sizes: the caller built them already
        return -(-int(size) // max(1, len(entry)))
    return int(size)  # anything else: dask's to judge, counted as one block


def resolve_budget(size) -> int:
    """A byte budget from ``None`` (dask's ``array.chunk-size``), a string or an int."""
    if size is None or size == "auto":
        size = dask.config.get("array.chunk-size")
    budget = parse_bytes(size) if isinstance(size, str) else int(size)
    if budget <= 0:
        raise ValueError(f"a memory budget must be positive, got {size!r}")
    return budget

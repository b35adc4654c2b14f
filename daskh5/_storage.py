"""Where a node's bytes are: the chunk index of a chunked node.

The index is read once from the HDF5 B-tree through h5py (``chunk_iter``,
about 2 us a chunk) and kept as numpy arrays with one entry per chunk that
was *written*, sorted by the chunk's position in the grid, so a reader finds
any chunk's file offset with a binary search and no HDF5 call.  Chunks that
were never written (they read as the fill value) cost nothing: a file of a
few KB whose node claims 2**27 chunks has an index of the chunks it holds.
"""

from __future__ import annotations

import array
import math
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from daskh5._nodes import NodeInfo, lookup, maybe_open, size_problem
from daskh5.errors import ChunkDecodeError, NotHDF5Error

__all__ = ["ChunkIndex", "read_chunk_index", "unwritten_chunks"]


def _strides(grid: tuple[int, ...]) -> tuple[int, ...]:
    """C-order strides of the chunk grid, in chunks."""
    out, step = [], 1
    for g in reversed(grid):
        out.append(step)
        step *= max(1, g)
    return tuple(reversed(out))


@dataclass(frozen=True)
class ChunkIndex:
    """File offset, stored size and filter mask of every written chunk.

    ``positions`` holds the C-order linear grid position of each written chunk,
    sorted; ``offsets``, ``sizes`` and ``masks`` are aligned with it.  A chunk
    that is not listed was never written: it reads as the fill value.
    """

    grid: tuple[int, ...]
    positions: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    masks: np.ndarray
    mtime_ns: int

    def __dask_tokenize__(self):
        return ("daskh5.ChunkIndex", self.grid, self.mtime_ns, len(self.positions), int(self.offsets.sum()))

    def linear(self, coords) -> int:
        """The linear grid position of the chunk at grid coordinates ``coords``."""
        return sum(int(c) * s for c, s in zip(coords, _strides(self.grid)))

    def find(self, linear) -> np.ndarray:
        """Where each of ``linear`` (grid positions) is in the arrays, -1 for an unwritten chunk."""
        linear = np.asarray(linear, dtype=np.int64)
        at = np.searchsorted(self.positions, linear)
        inside = at < len(self.positions)
        hit = np.zeros(linear.shape, dtype=bool)
        hit[inside] = self.positions[at[inside]] == linear[inside]
        return np.where(hit, at, -1)

    def chunk(self, coords) -> tuple[int, int, int] | None:
        """``(offset, stored size, filter mask)`` of the chunk at ``coords``, or None if never written."""
        lin = self.linear(coords)
        at = int(np.searchsorted(self.positions, lin))
        if at == len(self.positions) or int(self.positions[at]) != lin:
            return None
        return int(self.offsets[at]), int(self.sizes[at]), int(self.masks[at])

    def between(self, lo: int, hi: int) -> slice:
        """The written chunks whose linear positions are in ``[lo, hi)``, as a slice of the arrays."""
        return slice(*(int(i) for i in np.searchsorted(self.positions, [lo, hi])))

    def coords(self, at) -> tuple[np.ndarray, ...]:
        """Grid coordinates (one array per axis) of the written chunks at array positions ``at``."""
        lin = self.positions[at]
        return tuple(np.asarray(c, dtype=np.int64) for c in _unravel(lin, self.grid))


def _unravel(lin: np.ndarray, grid: tuple[int, ...]) -> list[np.ndarray]:
    out = []
    for s, g in zip(_strides(grid), grid):
        out.append((lin // s) % max(1, g))
    return out


def _grid(shape: tuple[int, ...], chunkshape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(-(-s // c) for s, c in zip(shape, chunkshape))


def read_chunk_index(info: NodeInfo, mtime_ns: int | None = None, f=None) -> ChunkIndex:
    """Read the chunk index of a chunked node as it is on disk now (``f``: an open h5py handle)."""
    with maybe_open(info.path, f) as f:
        ds = lookup(f, info.node)
        shape = tuple(int(s) for s in ds.shape)
        if any(s < o for s, o in zip(shape, info.shape)):
            raise NotHDF5Error(
                f"{info.path}:{info.node} shrank from {info.shape} to {shape} after the dask array "
                "was created; create it again"
            )
        problem = size_problem(shape, info.chunkshape, info.itemsize)  # the node may have grown since
        if problem:
            raise NotHDF5Error(f"{info.path}:{info.node}: {problem}")
        grid = _grid(shape, info.chunkshape)
        strides = _strides(grid)
        cs = info.chunkshape
        positions, offsets, sizes, masks = (
            array.array("q"),
            array.array("q"),
            array.array("q"),
            array.array("Q"),
        )

        def record(si) -> None:
            pos = [o // c for o, c in zip(si.chunk_offset, cs)]
            if all(p < g for p, g in zip(pos, grid)):
                positions.append(sum(p * s for p, s in zip(pos, strides)))
                offsets.append(si.byte_offset)
                sizes.append(si.size)
                masks.append(si.filter_mask)

        each_chunk(ds, record, f"{info.path}:{info.node}")
    return _sorted_index(
        grid, positions, offsets, sizes, masks, info.mtime_ns if mtime_ns is None else mtime_ns
    )


def _sorted_index(grid, positions, offsets, sizes, masks, mtime_ns: int) -> ChunkIndex:
    """The arrays sorted by grid position; a position listed twice (a damaged B-tree) keeps its last entry."""
    pos = np.frombuffer(positions, dtype=np.int64) if len(positions) else np.empty(0, np.int64)
    arrays = [
        np.frombuffer(a, dtype=np.int64).copy() if len(a) else np.empty(0, np.int64) for a in (offsets, sizes)
    ]
    mask = np.frombuffer(masks, dtype=np.uint64).astype(np.uint32) if len(masks) else np.empty(0, np.uint32)
    if len(pos) > 1 and not (pos[1:] > pos[:-1]).all():
        order = np.argsort(pos, kind="stable")
        pos = pos[order]
        keep = np.append(pos[1:] != pos[:-1], True)  # the last of each run of equal positions
        order = order[keep]
        pos = pos[keep]
        arrays = [a[order] for a in arrays]
        mask = mask[order]
    else:
        pos = pos.copy()
    return ChunkIndex(tuple(grid), pos, arrays[0], arrays[1], mask, mtime_ns)


def each_chunk(ds, fn, where: str) -> None:
    """Call ``fn`` with the storage info of every written chunk of the h5py dataset ``ds``."""
    try:
        ds.id.chunk_iter(fn)
    except AttributeError:  # HDF5 older than 1.12.3: one call per chunk
        for i in range(ds.id.get_num_chunks()):
            fn(ds.id.get_chunk_info(i))
    except Exception as exc:
        raise NotHDF5Error(f"{where}: the chunk index is unreadable: {exc}") from exc


def unwritten_chunks(ds, rows: int, where: str) -> int:
    """How many of the chunks holding rows ``[0, rows)`` of the h5py dataset ``ds`` were never written.

    Costs one step per *written* chunk, whatever the dataset's shape claims.
    Contiguous and compact datasets have every byte in the file: 0.
    """
    if ds.chunks is None or rows <= 0:
        return 0
    shape, cs = tuple(int(s) for s in ds.shape), tuple(int(c) for c in ds.chunks)
    wanted = -(-min(rows, shape[0]) // cs[0])  # row-chunks
    rest = _grid(shape[1:], cs[1:])
    seen: set[tuple[int, ...]] = set()  # a damaged B-tree may list a chunk twice

    def count(si) -> None:
        pos = tuple(o // c for o, c in zip(si.chunk_offset, cs))
        if pos[0] < wanted and all(p < g for p, g in zip(pos[1:], rest)):
            seen.add(pos)

    each_chunk(ds, count, where)
    return wanted * math.prod(rest) - len(seen)


_fresh: dict[tuple[str, str], ChunkIndex] = {}
_fresh_lock = threading.Lock()


def current_index(info: NodeInfo, index: ChunkIndex, mtime_ns: int) -> ChunkIndex:
    """``index`` if the file is unchanged, else the file's index now (cached per process).

    Appending to an EArray rewrites its last chunk, maybe elsewhere in the file; the
    fresh index still serves the rows the dask array was created with.
    """
    if mtime_ns == index.mtime_ns:
        return index
    key = (info.path, info.node)
    with _fresh_lock:
        cached = _fresh.get(key)
    if cached is not None and cached.mtime_ns == mtime_ns:
        return cached
    for attempt in range(_RETRIES):
        fresh = read_chunk_index(info, mtime_ns)
        lost = _lost_chunks(index, fresh)
        if lost is None:
            with _fresh_lock:
                _fresh[key] = fresh
            return fresh
        # Another process is flushing the index (a chunk the dask array saw is
        # missing now): read it again in a moment, never serve fill values.
        time.sleep(0.01 * 2**attempt)
        mtime_ns = os.stat(info.path).st_mtime_ns
    raise ChunkDecodeError(
        f"{info.path}:{info.node}: chunk {lost} vanished from the chunk index while another process "
        "was writing the file; read again when the writer is done"
    )


_RETRIES = 8  # about 2.5 s of waiting in all


def _lost_chunks(old: ChunkIndex, new: ChunkIndex) -> tuple[int, ...] | None:
    """The grid position of a chunk ``old`` had and ``new`` lacks, or None."""
    coords = old.coords(slice(None))
    inside = np.ones(len(old.positions), dtype=bool)
    for c, g in zip(coords, new.grid):
        inside &= c < g
    coords = [c[inside] for c in coords]
    lin = sum((c * s for c, s in zip(coords, _strides(new.grid))), np.zeros(int(inside.sum()), np.int64))
    gone = np.flatnonzero(new.find(lin) < 0)
    if not len(gone):
        return None
    return tuple(int(c[gone[0]]) for c in coords)

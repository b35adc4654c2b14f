"""Where a node's bytes are: the chunk index of a chunked node.

The index is read once from the HDF5 B-tree through h5py (``chunk_iter``,
about 2 us a chunk) and kept as dense numpy arrays over the chunk grid, so a
reader finds any chunk's file offset without another HDF5 call.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from daskh5._nodes import NodeInfo, lookup, maybe_open, size_problem
from daskh5.errors import ChunkDecodeError, NotHDF5Error

__all__ = ["ChunkIndex", "read_chunk_index"]


@dataclass(frozen=True)
class ChunkIndex:
    """File offset, stored size and filter mask of every chunk, by grid position.

    ``offsets`` is -1 where a chunk was never written (it reads as the fill value).
    """

    grid: tuple[int, ...]
    offsets: np.ndarray
    sizes: np.ndarray
    masks: np.ndarray
    mtime_ns: int

    def __dask_tokenize__(self):
        return ("daskh5.ChunkIndex", self.grid, self.mtime_ns, int(self.offsets.sum()))


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
        offsets = np.full(grid, -1, dtype=np.int64)
        sizes = np.zeros(grid, dtype=np.int64)
        masks = np.zeros(grid, dtype=np.uint32)
        cs = info.chunkshape

        def record(si) -> None:
            pos = tuple(o // c for o, c in zip(si.chunk_offset, cs))
            if all(p < g for p, g in zip(pos, grid)):
                offsets[pos] = si.byte_offset
                sizes[pos] = si.size
                masks[pos] = si.filter_mask

        try:
            ds.id.chunk_iter(record)
        except AttributeError:  # HDF5 older than 1.12.3: one call per chunk
            for i in range(ds.id.get_num_chunks()):
                record(ds.id.get_chunk_info(i))
        except Exception as exc:
            raise NotHDF5Error(f"{info.path}:{info.node}: the chunk index is unreadable: {exc}") from exc
    return ChunkIndex(grid, offsets, sizes, masks, info.mtime_ns if mtime_ns is None else mtime_ns)


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
    region = tuple(slice(0, min(a, b)) for a, b in zip(old.grid, new.grid))
    gone = (old.offsets[region] >= 0) & (new.offsets[region] < 0)
    if not gone.any():
        return None
    return tuple(int(i) for i in np.argwhere(gone)[0])

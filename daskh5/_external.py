"""Read a dataset with EXTERNAL raw storage, for callers that passed ``allow_external=True``.

Such a dataset's elements, in C order, are the concatenation of byte ranges
of other files (``(name, offset, size)`` segments from the creation property
list).  HDF5 resolves relative names against the current directory; daskh5
resolves them against the directory of the HDF5 file, so a file and its
external parts can be moved together.  As in HDF5, bytes past the end of an
external file read as zeros.  External storage is never filtered (HDF5 forbids it).
"""

from __future__ import annotations

import os

import numpy as np

from daskh5.errors import ChunkDecodeError, FileNotFound

__all__ = ["external_segments", "read_external"]


def external_segments(dcpl, path: str) -> tuple[tuple[str, int, int], ...]:
    """``(absolute file, offset, size)`` of every external segment, relative names next to ``path``."""
    base = os.path.dirname(path)
    out = []
    for i in range(dcpl.get_external_count()):
        name, offset, size = dcpl.get_external(i)
        name = os.fsdecode(name)
        full = os.path.abspath(name if os.path.isabs(name) else os.path.join(base, name))
        out.append((full, int(offset), int(size)))
    return tuple(out)


def _read_span(info, start: int, nbytes: int) -> bytearray:
    """Bytes ``[start, start + nbytes)`` of the dataset's element stream."""
    out = bytearray(nbytes)
    view = memoryview(out)
    pos = 0  # where the current segment starts in the stream
    for name, offset, size in info.external:
        lo, hi = max(start, pos), min(start + nbytes, pos + size)
        if lo < hi:
            try:
                fd = os.open(name, os.O_RDONLY)
            except FileNotFoundError:
                raise FileNotFound(
                    f"{info.path}:{info.node} stores its values in {name}, which does not exist"
                ) from None
            try:
                got = os.preadv(fd, [view[lo - start : hi - start]], offset + lo - pos)
            finally:
                os.close(fd)
            if got < 0:  # pragma: no cover - preadv raises instead
                raise ChunkDecodeError(f"{info.path}:{info.node}: reading {name} failed")
        pos += size
        if pos >= start + nbytes:
            break
    return out  # what no segment covers stays zero, as past the end of a short file


def read_external(info, sel) -> np.ndarray:
    """The box of rows ``sel`` needs, then ``sel`` applied to it (outer indexing, as the other readers)."""
    shape = info.shape
    if not shape:
        raw = _read_span(info, 0, info.itemsize)
        return np.frombuffer(raw, dtype=info.disk_dtype).reshape(())
    first = sel[0]
    lo, hi = first if isinstance(first, tuple) else (int(first.min()), int(first.max()) + 1)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * info.itemsize
    raw = _read_span(info, lo * row_bytes, (hi - lo) * row_bytes)
    block = np.frombuffer(raw, dtype=info.disk_dtype).reshape((hi - lo, *shape[1:]))
    rows = slice(0, hi - lo) if isinstance(first, tuple) else first - lo
    out = block[rows] if isinstance(rows, slice) else np.take(block, rows, axis=0)
    for axis, s in enumerate(sel[1:], start=1):
        index = (slice(None),) * axis
        out = out[(*index, slice(*s))] if isinstance(s, tuple) else np.take(out, s, axis=axis)
    return np.ascontiguousarray(out)

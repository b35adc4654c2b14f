"""Recycled memory for large decoded blocks.

Memory fresh from the kernel is zeroed page by page when it is first written:
on the 2-core VM that cost a quarter of the CPU of reading an 800 MB blosc
array (``perf``: ``clear_page_erms`` under the unshuffle that fills each
block).  Blocks of one array usually have one size, so the memory of a block
that is no longer used is kept for the next block of that size instead of
going back to the kernel.

A block is an ``ndarray`` viewing a buffer through one private *owner* array.
NumPy points every view derived from the block (slices, reshapes, ``.T``,
memoryviews) at that owner, never past it, so the owner lives exactly as long
as any view of the memory; only when it is collected does a ``weakref``
finalizer hand the buffer back.  Nothing is reused while something can still
see it.

Idle memory goes back to the kernel: buffers unused for :data:`IDLE_SECONDS`
are dropped by a timer, at most :data:`MAX_IDLE` are kept, and
:func:`release` drops them all (``daskh5.close_files`` calls it).
"""

from __future__ import annotations

import mmap
import os
import threading
import time
import weakref

import numpy as np

__all__ = ["empty", "release"]

MIN_BYTES = 16 << 20
"""Smaller blocks come from ``np.empty``: malloc already reuses memory of that size."""
IDLE_SECONDS = 2.0
MAX_IDLE = 2 * (os.cpu_count() or 1)

_lock = threading.Lock()
_idle: dict[int, list[tuple[float, mmap.mmap]]] = {}  # nbytes -> [(time returned, buffer)]
_timer: threading.Timer | None = None


def empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array, on recycled memory when it is large.

    >>> a = empty((4, 2), np.dtype("f8"))
    >>> a.shape, a.dtype, a.flags.c_contiguous, a.flags.writeable
    ((4, 2), dtype('float64'), True, True)
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    with _lock:
        idle = _idle.get(nbytes)
        buf = idle.pop()[1] if idle else None
    if buf is None:
        buf = mmap.mmap(-1, nbytes)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            buf.madvise(mmap.MADV_HUGEPAGE)
    owner = np.frombuffer(buf, dtype=np.uint8)  # its base is a memoryview, not an array
    weakref.finalize(owner, _give_back, buf).atexit = False
    return owner.view(dtype).reshape(shape)


def _give_back(buf: mmap.mmap) -> None:
    global _timer
    with _lock:
        if sum(len(v) for v in _idle.values()) >= MAX_IDLE:
            return  # dropped: the memory goes back to the kernel
        _idle.setdefault(len(buf), []).append((time.monotonic(), buf))
        if _timer is None:
            _timer = threading.Timer(IDLE_SECONDS, _trim)
            _timer.daemon = True
            _timer.start()


def _trim() -> None:
    """Drop buffers idle for :data:`IDLE_SECONDS`; come back while any remain."""
    global _timer
    cutoff = time.monotonic() - IDLE_SECONDS
    with _lock:
        for nbytes in list(_idle):
            _idle[nbytes] = [(t, b) for t, b in _idle[nbytes] if t > cutoff]
            if not _idle[nbytes]:
                del _idle[nbytes]
        _timer = None
        if _idle:
            _timer = threading.Timer(IDLE_SECONDS, _trim)
            _timer.daemon = True
            _timer.start()


def idle_bytes() -> int:
    """Bytes held for reuse right now."""
    with _lock:
        return sum(nbytes * len(v) for nbytes, v in _idle.items())


def release() -> None:
    """Give every idle buffer back to the kernel now."""
    with _lock:
        _idle.clear()


def _after_fork() -> None:
    global _lock, _timer
    _lock = threading.Lock()  # another thread of the parent may have held it
    _idle.clear()  # and its timer thread does not exist here
    _timer = None


os.register_at_fork(after_in_child=_after_fork)

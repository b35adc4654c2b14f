"""Recycled memory for large decoded blocks.

Memory fresh from the kernel is zeroed page by page when it is first written:
on the 2-core VM that cost a quarter of the CPU of reading an 800 MB blosc
array (``perf``: ``clear_page_erms`` under the unshuffle that fills each
block).  Blocks of one array usually have one size, so the memory of a block
that is no longer used is kept for the next block (of that size or somewhat
smaller) instead of going back to the kernel.

A block is an ``ndarray`` viewing a buffer through one private *owner* array.
NumPy points every view derived from the block (slices, reshapes, ``.T``,
memoryviews) at that owner, never past it, so the owner lives exactly as long
as any view of the memory; only when it is collected does a ``weakref``
finalizer hand the buffer back.  Nothing is reused while something can still
see it.

Idle memory goes back to the kernel: all of it as soon as a block needs
memory no idle buffer can give (so recycling never raises a peak), buffers
unused for :data:`IDLE_SECONDS` by a timer, any beyond :data:`MAX_IDLE` at
once, and all of it on :func:`release` (``daskh5.close_files`` calls it).
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

# Reentrant: a garbage collection inside a locked section can run a finalizer that gives a buffer back.
_lock = threading.RLock()
_idle: list[tuple[float, mmap.mmap]] = []  # (time it was given back, buffer)
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
    buf = _take(nbytes)
    if buf is None:
        # private: shared anonymous memory is shmem (4 KiB faults, no huge pages) and a
        # forked child would write into the parent's blocks
        try:
            buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as exc:  # what np.empty would say
            raise MemoryError(f"cannot allocate {nbytes:,} bytes for a block: {exc}") from None
        if hasattr(mmap, "MADV_HUGEPAGE"):
            buf.madvise(mmap.MADV_HUGEPAGE)
    owner = np.frombuffer(buf, dtype=np.uint8, count=nbytes)  # its base is a memoryview, not an array
    weakref.finalize(owner, _give_back, buf).atexit = False
    return owner.view(dtype).reshape(shape)


def _take(nbytes: int) -> mmap.mmap | None:
    """The smallest idle buffer that holds ``nbytes`` (and is not over twice as large), or None.

    On a miss every idle buffer is dropped before new memory is mapped, so idle
    memory never adds to a peak: at most what is in use at once is mapped.
    """
    with _lock:
        fits = [i for i, (_t, b) in enumerate(_idle) if nbytes <= len(b) <= 2 * nbytes]
        if fits:
            best = min(fits, key=lambda i: len(_idle[i][1]))
            return _idle.pop(best)[1]
        _idle.clear()
        return None


def _give_back(buf: mmap.mmap) -> None:
    global _timer
    with _lock:
        if len(_idle) >= MAX_IDLE:
            return  # dropped: the memory goes back to the kernel
        _idle.append((time.monotonic(), buf))
        if _timer is None:
            _timer = threading.Timer(IDLE_SECONDS, _trim)
            _timer.daemon = True
            _timer.start()


def _trim() -> None:
    """Drop buffers idle for :data:`IDLE_SECONDS`; come back while any remain."""
    global _timer
    cutoff = time.monotonic() - IDLE_SECONDS
    with _lock:
        _idle[:] = [(t, b) for t, b in _idle if t > cutoff]
        _timer = None
        if _idle:
            _timer = threading.Timer(IDLE_SECONDS, _trim)
            _timer.daemon = True
            _timer.start()


def idle_bytes() -> int:
    """Bytes held for reuse right now."""
    with _lock:
        return sum(len(b) for _t, b in _idle)


def release() -> None:
    """Give every idle buffer back to the kernel now."""
    with _lock:
        _idle.clear()


def _after_fork() -> None:
    global _lock, _timer
    _lock = threading.RLock()  # another thread of the parent may have held it
    _idle.clear()  # and its timer thread does not exist here
    _timer = None


os.register_at_fork(after_in_child=_after_fork)

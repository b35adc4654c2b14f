"""Recycled memory for large decoded blocks.

Memory fresh from the kernel is zeroed page by page when it is first written:
on the 2-core VM that cost a quarter of the CPU of reading an 800 MB blosc
array (``perf``: ``clear_page_erms`` under the unshuffle that fills each
block).  Blocks of one array usually have one size, so the memory of a block
that is no longer used is kept for the next block (of that size or up to half
smaller) instead of going back to the kernel.

The memory is a private anonymous map that only this module holds.  Each
block gets a fresh *lease*: a ctypes array over that memory (``from_address``,
so it references nothing), which is the only object that exports the memory
to Python.  NumPy keeps the exporter as the base of the block and of every
array, view or memoryview made from it, even one rebuilt from ``.base``, so
the lease lives exactly as long as anything can see the memory; only when it
is collected does a ``weakref`` finalizer hand the memory back.

Idle memory goes back to the kernel: all of it as soon as a block needs
memory no idle buffer can give (so idle buffers never add to a peak; a block
may occupy a buffer up to twice its size), buffers unused for
:data:`IDLE_SECONDS` by a timer, any beyond :data:`MAX_IDLE` at once, and all
of it on :func:`release` (``daskh5.close_files`` calls it).
"""

from __future__ import annotations

import ctypes
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
_idle: list[tuple[float, _Memory]] = []  # (time it was given back, memory)
_timer: threading.Timer | None = None
_lease_types: dict[int, type] = {}


class _Memory:
    """A private anonymous map and its address; never handed out."""

    __slots__ = ("address", "map", "pin")

    def __init__(self, nbytes: int):
        # private: shared anonymous memory is shmem (4 KiB faults, no huge pages) and a
        # forked child would write into the parent's blocks
        try:
            self.map = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as exc:  # what np.empty would say
            raise MemoryError(f"cannot allocate {nbytes:,} bytes for a block: {exc}") from None
        if hasattr(mmap, "MADV_HUGEPAGE"):
            self.map.madvise(mmap.MADV_HUGEPAGE)
        self.pin = ctypes.c_char.from_buffer(self.map)  # an export: the map cannot close or move
        self.address = ctypes.addressof(self.pin)

    def __len__(self) -> int:
        return len(self.map)


def _lease(memory: _Memory, nbytes: int):
    """A new object exporting the first ``nbytes`` of ``memory``, and nothing else."""
    t = _lease_types.get(nbytes)
    if t is None:
        if len(_lease_types) > 256:
            _lease_types.clear()  # live leases keep their types
        t = _lease_types[nbytes] = type("_Lease", (ctypes.c_ubyte * nbytes,), {})
    return t.from_address(memory.address)


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
    memory = _take(nbytes) or _Memory(nbytes)
    lease = _lease(memory, nbytes)
    weakref.finalize(lease, _give_back, memory).atexit = False
    return np.frombuffer(lease, dtype=np.uint8).view(dtype).reshape(shape)


def _take(nbytes: int) -> _Memory | None:
    """The smallest idle buffer that holds ``nbytes`` (and is not over twice as large), or None.

    On a miss every idle buffer is dropped before new memory is mapped, so idle
    buffers never add to a peak.
    """
    with _lock:
        fits = [i for i, (_t, m) in enumerate(_idle) if nbytes <= len(m) <= 2 * nbytes]
        if fits:
            best = min(fits, key=lambda i: len(_idle[i][1]))
            return _idle.pop(best)[1]
        _idle.clear()
        return None


def _give_back(memory: _Memory) -> None:
    with _lock:
        if len(_idle) >= MAX_IDLE:
            return  # dropped: the memory goes back to the kernel
        _idle.append((time.monotonic(), memory))
        _arm_timer()


def _arm_timer() -> None:
    """Start the trimming timer if none runs (call under ``_lock``)."""
    global _timer
    if _timer is not None or not _idle:
        return
    timer = threading.Timer(IDLE_SECONDS, _trim)
    timer.daemon = True
    try:
        timer.start()
    except RuntimeError:  # no new threads (interpreter shutdown): idle memory waits for a miss
        return
    _timer = timer


def _trim() -> None:
    """Drop buffers idle for :data:`IDLE_SECONDS`; come back while any remain."""
    global _timer
    cutoff = time.monotonic() - IDLE_SECONDS
    with _lock:
        _idle[:] = [(t, m) for t, m in _idle if t > cutoff]
        _timer = None
        _arm_timer()


def idle_bytes() -> int:
    """Bytes held for reuse right now."""
    with _lock:
        return sum(len(m) for _t, m in _idle)


def release() -> None:
    """Give every idle buffer back to the kernel now (and stop the trimming timer: nothing is left)."""
    global _timer
    with _lock:
        _idle.clear()
        if _timer is not None:
            _timer.cancel()
            _timer = None


def _after_fork() -> None:
    global _lock, _timer
    _lock = threading.RLock()  # another thread of the parent may have held it
    _idle.clear()  # and its timer thread does not exist here
    _timer = None


os.register_at_fork(after_in_child=_after_fork)

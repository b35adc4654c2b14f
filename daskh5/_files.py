"""Per-process cache of open files, and exact positional reads.

Tasks carry paths, never handles; each worker process opens a file once and
keeps the descriptor.  ``os.pread`` needs no seek and no lock, so threads of
one process read the same descriptor in parallel.  A file that was replaced
(new inode) is reopened.  :func:`close_files` closes everything on purpose;
it also runs at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import threading

from daskh5.errors import ChunkDecodeError, FileNotFound

__all__ = ["close_files", "file_image", "pread_exact"]

_lock = threading.Lock()
_fds: dict[str, tuple[int, int, int]] = {}  # path -> (fd, dev, ino)
_images: dict[tuple[str, int], bytes] = {}  # (path, mtime_ns) -> whole file, for driver="H5FD_CORE"


def _fd(path: str) -> tuple[int, int]:
    """This process's descriptor for ``path`` (reopened if the file was replaced) and its size."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFound(f"{path}: the file disappeared after the dask array was created") from None
    with _lock:
        cached = _fds.get(path)
        if cached and cached[1:] == (st.st_dev, st.st_ino):
            return cached[0], st.st_size
        if cached:
            os.close(cached[0])
        fd = os.open(path, os.O_RDONLY)
        _fds[path] = (fd, st.st_dev, st.st_ino)
        return fd, st.st_size


def file_image(path: str, mtime_ns: int) -> bytes:
    """The whole file, read once per process (the ``H5FD_CORE`` in-memory driver)."""
    key = (path, mtime_ns)
    with _lock:
        image = _images.get(key)
    if image is None:
        with open(path, "rb") as fh:
            image = fh.read()
        with _lock:
            for old in [k for k in _images if k[0] == path]:
                del _images[old]
            _images[key] = image
    return image


_local = threading.local()


_SCRATCH_MAX = 64 << 20  # bigger reads get a buffer of their own, freed with it


def _scratch(size: int) -> memoryview:
    """A per-thread read buffer, reused: fresh memory costs page faults on every read.

    A read of a chunk stored in more than :data:`_SCRATCH_MAX` bytes is not kept for
    reuse: one such chunk would otherwise stay allocated in every thread that read one.
    """
    if size > _SCRATCH_MAX:
        return memoryview(bytearray(size))
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < size:
        buf = _local.buf = bytearray(max(size, 1 << 20))
    return memoryview(buf)[:size]


def pread_exact(path: str, offset: int, size: int, image: bytes | None = None, out=None) -> memoryview:
    """Read exactly ``size`` bytes at ``offset`` or raise :class:`ChunkDecodeError`.

    Without ``out`` the bytes land in this thread's reusable buffer: the view is
    valid until the thread's next read.  With ``out`` (a writable buffer of
    ``size`` bytes) they land there.
    """
    if image is not None:
        data = memoryview(image)[offset : offset + size]
        got = len(data)
        if out is not None and got == size:
            memoryview(out).cast("B")[:] = data
            data = memoryview(out).cast("B")
    else:
        fd, file_size = _fd(path)
        if offset + size > file_size:  # before a buffer of a size the index may invent
            data, got = memoryview(b""), 0
        else:
            data = memoryview(out).cast("B") if out is not None else _scratch(size)
            got = os.preadv(fd, [data], offset) if size else 0
    if got != size:
        raise ChunkDecodeError(
            f"{path} ends before byte {offset + size} (wanted {size} bytes at offset {offset}): "
            "the file is truncated, or its chunk index is damaged"
        )
    return data


def close_files() -> None:
    """Close every file descriptor, drop every in-memory image and idle block buffer."""
    from daskh5 import _buffers

    _buffers.release()
    with _lock:
        for fd, _dev, _ino in _fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        _fds.clear()
        _images.clear()
    for hook in _close_hooks:
        hook()


_close_hooks: list = []  # other modules' caches of open files (VLArray handles)


atexit.register(close_files)

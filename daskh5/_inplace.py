"""Append to a large EArray in place, rolled back on failure, instead of copying the whole file.

Copying a file per append (:func:`daskh5._safe_tables.atomic_target`) costs
its whole size; for files above ``daskh5.copy-on-write-limit`` (a dask config
key, default ``"256MiB"``) :func:`daskh5.append` writes into the file itself:

1. the file is locked as for a copy (``flock``; busy files are refused);
2. the EArray's committed length is recorded in its ``DASKH5_APPENDING``
   attribute and flushed, so readers show only those rows meanwhile;
3. the rows are written, the file flushed and fsynced, the new region checked
   (:func:`daskh5._verify.check_node`);
4. the attribute is deleted (the commit), flushed and fsynced.

HDF5 writes through :class:`_UndoFile` (h5py's file-object driver), which
keeps the original bytes of every page it overwrites below the file's old
end.  On any failure those pages are written back and the file cut to its old
size: the file is byte for byte as it was (overwriting existing pages needs no
new space, so this works on a full disk and past the file-size limit).  If
even that fails, the EArray is truncated back to its committed length and the
attribute deleted; if that fails too, the attribute stays: readers still show
the committed rows and the next append drops the rest.  A killed process
leaves the attribute (readers show the committed rows) and the rows it wrote.

Everything is written with h5py, which takes no lock through a file object
(daskh5 holds the file's ``flock``), so only nodes whose every filter h5py can write here
(hdf5plugin registers PyTables' blosc, blosc2 and bzip2) are appended in
place; others take the copy path.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np

from daskh5._nodes import ATTR_APPENDING, h5_key
from daskh5._safe_tables import _locked
from daskh5._verify import check_node, hdf5_errors
from daskh5.errors import FileBusyError

__all__ = ["copy_limit", "in_place_wanted", "append_in_place"]

CONFIG_KEY = "daskh5.copy-on-write-limit"


def copy_limit() -> int:
    """Bytes up to which an append copies the file (``daskh5.copy-on-write-limit``, default 256 MiB)."""
    import dask
    from dask.utils import parse_bytes

    value = dask.config.get(CONFIG_KEY, "256MiB")
    return int(parse_bytes(value)) if isinstance(value, str) else int(value)


def in_place_wanted(path: str) -> bool:
    """Whether the file at ``path`` is larger than :func:`copy_limit`."""
    try:
        return os.path.getsize(path) > copy_limit()
    except OSError:
        return False


def _writable(ds) -> bool:
    """Whether h5py can write every filter of ``ds`` in this process."""
    import h5py

    dcpl = ds.id.get_create_plist()
    return all(h5py.h5z.filter_avail(dcpl.get_filter(i)[0]) for i in range(dcpl.get_nfilters()))


def _forget(path: str) -> None:
    """Close every handle daskh5's readers cached for ``path`` (by either of its names)."""
    from daskh5._reader import drop_stale

    for name in {os.path.abspath(path), os.path.realpath(path)}:
        drop_stale(name, every=True)


def _fsync(fd: int, path: str, node: str) -> None:
    with hdf5_errors(path, node):
        os.fsync(fd)


_PAGE = 4096


class _UndoFile:
    """The file at ``real`` as a Python file object, keeping the first-seen bytes of each page overwritten.

    Only pages below ``size`` (the file's length before the append) are kept:
    :meth:`undo` writes them back and truncates to ``size``.
    """

    def __init__(self, real: str, size: int):
        self.fd = os.open(real, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        self.size, self.pos, self.saved = size, 0, {}
        self.failed: OSError | None = None

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: os.fstat(self.fd).st_size}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf) -> int:
        n = os.preadv(self.fd, [buf], self.pos)
        self.pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = max(0, os.fstat(self.fd).st_size - self.pos)
        data = os.pread(self.fd, n, self.pos)
        self.pos += len(data)
        return data

    def _keep(self, start: int, stop: int) -> None:
        for page in range(start // _PAGE, (min(stop, self.size) - 1) // _PAGE + 1):
            if page not in self.saved:
                at = page * _PAGE
                self.saved[page] = os.pread(self.fd, min(_PAGE, self.size - at), at)

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if self.failed is None:
            try:
                self._keep(self.pos, self.pos + len(data))
                done = 0
                while done < len(data):
                    done += os.pwrite(self.fd, data[done:], self.pos + done)
            except OSError as exc:  # kept for check(): h5py's driver crashes on an exception raised here
                self.failed = exc
        self.pos += len(data)
        return len(data)

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.failed is None:
            try:
                self._keep(size, self.size)
                os.ftruncate(self.fd, size)
            except OSError as exc:
                self.failed = exc
        return size

    def check(self) -> None:
        """Raise the first error writing met (after which nothing more was written)."""
        if self.failed is not None:
            raise self.failed

    def flush(self) -> None:
        pass

    def undo(self) -> None:
        """Put back every kept page and the old length, fsynced: the file is as it was."""
        for page, data in sorted(self.saved.items()):
            os.pwrite(self.fd, data, page * _PAGE)
        os.ftruncate(self.fd, self.size)
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


@contextlib.contextmanager
def _h5(undo: _UndoFile, path: str, node: str):
    """The file opened ``r+`` with h5py through ``undo`` (the caller holds the ``flock``)."""
    import h5py

    real = os.path.realpath(path)
    with hdf5_errors(path, node, real):
        undo.seek(0)
        f = h5py.File(undo, "r+")
    try:
        yield f
    except BaseException:
        with contextlib.suppress(Exception):
            f.close()
        raise
    with hdf5_errors(path, node, real):
        f.close()
        undo.check()


def _rollback(undo: _UndoFile, path: str, node: str, axis: int, before: int | None, fd: int) -> None:
    """The file as it was; else ``node`` truncated to ``before`` rows and the attribute dropped; else as is."""
    try:
        undo.undo()
        return
    except OSError:
        if before is None:
            return
    with contextlib.suppress(Exception), _h5(undo, path, node) as f:
        ds = f[h5_key(node)]
        if ds.shape[axis] != before:
            ds.resize(before, axis=axis)
        f.flush()
        if ATTR_APPENDING in ds.attrs:
            del ds.attrs[ATTR_APPENDING]
        f.flush()
    with contextlib.suppress(OSError):
        os.fsync(fd)


def append_in_place(
    xs: Any, path: str, node: str, axis: int, cs: tuple[int, ...], dtype, encoder, progress: bool
) -> bool:
    """Append ``xs`` (dask, extendable axis first, of ``dtype``) to ``node`` of ``path`` in place.

    ``cs``/``dtype``/``encoder``: what the caller read from the node with
    PyTables.  Returns ``False``, having changed nothing, when h5py cannot
    write the node's filters here (then copy the file instead).
    """
    from daskh5._reader import load_plugins

    load_plugins()
    real = os.path.realpath(path)
    with _locked(real, path) as (fd, st):
        if fd is None:
            raise FileBusyError(f"{path} was removed by another process while daskh5 waited to write it")
        with hdf5_errors(path, node, real):
            undo = _UndoFile(real, st.st_size)
        try:
            return _append(undo, fd, xs, path, node, axis, cs, dtype, encoder, progress)
        finally:
            undo.close()


def _append(undo: _UndoFile, fd: int, xs, path: str, node: str, axis, cs, dtype, encoder, progress) -> bool:
    """:func:`append_in_place` once the file is locked and ``undo`` open."""
    from daskh5.writer import _aligned, _write_blocks

    real = os.path.realpath(path)
    before = None
    try:
        with _h5(undo, path, node) as f:
            ds = f[h5_key(node)]
            if tuple(int(c) for c in ds.chunks or ()) != tuple(cs) or ds.dtype != dtype:
                raise FileBusyError(
                    f"{path}: {node} was changed by another process while daskh5 waited to append; append again"
                )
            if not _writable(ds):
                undo.undo()  # opening for writing may have touched the superblock
                return False
            before = int(ds.shape[axis])
            if ATTR_APPENDING in ds.attrs:  # an earlier append was killed: drop its partial rows
                before = min(before, int(ds.attrs[ATTR_APPENDING]))
            with hdf5_errors(path, node, real):
                if ds.shape[axis] != before:
                    ds.resize(before, axis=axis)
                ds.attrs[ATTR_APPENDING] = np.int64(before)
                f.flush()
                undo.check()
            shape = [int(s) for s in ds.shape]
        _fsync(fd, path, node)  # readers show only the committed rows from here on
        n = _write_rows(undo, path, node, xs, axis, cs, before, encoder, progress, _aligned, _write_blocks)
        _fsync(fd, path, node)
        shape[axis] = before + n
        region = [(0, s) for s in shape]
        region[axis] = (before, before + n)
        _forget(path)  # a cached reader's handle would show check_node the old metadata
        check_node(real, path, node, tuple(shape), tuple(region))
        with _h5(undo, path, node) as f, hdf5_errors(path, node, real):
            del f[h5_key(node)].attrs[ATTR_APPENDING]  # the commit
            f.flush()
        _fsync(fd, path, node)
    except BaseException:
        _rollback(undo, path, node, axis, before, fd)
        raise
    finally:
        _forget(path)  # the change may fall within one tick of the file's mtime
    return True


def _write_rows(undo, path, node, xs, axis, cs, before, encoder, progress, aligned, write_blocks) -> int:
    """Write ``xs`` after row ``before``: head rows into the partial last chunk, then whole chunks."""
    real = os.path.realpath(path)
    n = int(xs.shape[0])
    head = min(n, (-before) % cs[axis])
    block = np.asarray(xs[:head].compute()) if head else None  # the user's computation

    def guard():
        return hdf5_errors(path, node, real)

    with _h5(undo, path, node) as f:
        ds = f[h5_key(node)]
        with guard():
            ds.resize(before + n, axis=axis)
            if head:
                index = [slice(None)] * ds.ndim
                index[axis] = slice(before, before + head)
                ds[tuple(index)] = np.moveaxis(block, 0, axis) if axis else block
            f.flush()
            undo.check()
        rest = xs[head:]
        if rest.shape[0]:
            rest = aligned(np.moveaxis(rest, 0, axis) if axis else rest, cs)
            offset = [0] * rest.ndim
            offset[axis] = before + head

            def flushed(fn):
                def store(*args):
                    with guard():
                        fn(*args)
                        f.flush()
                        undo.check()  # the file's metadata on disk after every chunk: a kill loses only that chunk

                return store

            desc = f"appending to {node}"
            if encoder is not None:
                chunk = flushed(lambda coords, data: ds.id.write_direct_chunk(coords, data, 0))
                write_blocks(rest, encoder, tuple(offset), progress, desc, chunks=chunk, guard=guard)
            else:
                write_blocks(
                    rest, None, tuple(offset), progress, desc, leaf=_Flushed(ds, f, undo), guard=guard
                )
    return n


class _Flushed:
    """An h5py dataset whose every assignment is followed by a flush of its file."""

    def __init__(self, ds, f, undo: _UndoFile):
        self.ds, self.f, self.undo = ds, f, undo

    def __setitem__(self, region, value) -> None:
        self.ds[region] = value
        self.f.flush()
        self.undo.check()

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

On any failure the EArray is truncated back to its committed length and the
attribute deleted.  If even that fails (a full disk), the attribute stays:
readers still show the committed rows and the next append drops the rest.

Everything is written with h5py without HDF5's own lock (daskh5 holds the
file's ``flock``), so only nodes whose every filter h5py can write here
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


def _fsync(fd: int, path: str, node: str) -> None:
    with hdf5_errors(path, node):
        os.fsync(fd)


@contextlib.contextmanager
def _h5(real: str, path: str, node: str):
    """The file opened ``r+`` with h5py, HDF5's own lock off (the caller holds the ``flock``)."""
    import h5py

    with hdf5_errors(path, node, real):
        f = h5py.File(real, "r+", locking=False)
    try:
        yield f
    except BaseException:
        with contextlib.suppress(Exception):
            f.close()
        raise
    with hdf5_errors(path, node, real):
        f.close()


def _rollback(real: str, path: str, node: str, axis: int, before: int, fd: int) -> None:
    """Truncate ``node`` to ``before`` rows and drop the attribute; on failure leave the attribute."""
    with contextlib.suppress(Exception), _h5(real, path, node) as f:
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
    from daskh5.writer import _aligned, _write_blocks

    load_plugins()
    real = os.path.realpath(path)
    with _locked(real, path) as (fd, _st):
        if fd is None:
            raise FileBusyError(f"{path} was removed by another process while daskh5 waited to write it")
        with _h5(real, path, node) as f:
            ds = f[h5_key(node)]
            if tuple(int(c) for c in ds.chunks or ()) != tuple(cs) or ds.dtype != dtype:
                raise FileBusyError(
                    f"{path}: {node} was changed by another process while daskh5 waited to append; append again"
                )
            if not _writable(ds):
                return False
            before = int(ds.shape[axis])
            if ATTR_APPENDING in ds.attrs:  # an earlier append was killed: drop its partial rows
                before = min(before, int(ds.attrs[ATTR_APPENDING]))
            with hdf5_errors(path, node, real):
                if ds.shape[axis] != before:
                    ds.resize(before, axis=axis)
                ds.attrs[ATTR_APPENDING] = np.int64(before)
                f.flush()
            shape = [int(s) for s in ds.shape]
        _fsync(fd, path, node)
        try:
            n = _write_rows(real, path, node, xs, axis, cs, before, encoder, progress, _aligned, _write_blocks)
            _fsync(fd, path, node)
            shape[axis] = before + n
            region = [(0, s) for s in shape]
            region[axis] = (before, before + n)
            check_node(real, path, node, tuple(shape), tuple(region))
            with _h5(real, path, node) as f, hdf5_errors(path, node, real):
                del f[h5_key(node)].attrs[ATTR_APPENDING]  # the commit
                f.flush()
            _fsync(fd, path, node)
        except BaseException:
            _rollback(real, path, node, axis, before, fd)
            raise
    return True


def _write_rows(real, path, node, xs, axis, cs, before, encoder, progress, aligned, write_blocks) -> int:
    """Write ``xs`` after row ``before``: head rows into the partial last chunk, then whole chunks."""
    n = int(xs.shape[0])
    head = min(n, (-before) % cs[axis])
    block = np.asarray(xs[:head].compute()) if head else None  # the user's computation

    def guard():
        return hdf5_errors(path, node, real)

    with _h5(real, path, node) as f:
        ds = f[h5_key(node)]
        with guard():
            ds.resize(before + n, axis=axis)
            if head:
                index = [slice(None)] * ds.ndim
                index[axis] = slice(before, before + head)
                ds[tuple(index)] = np.moveaxis(block, 0, axis) if axis else block
            f.flush()
        rest = xs[head:]
        if rest.shape[0]:
            rest = aligned(np.moveaxis(rest, 0, axis) if axis else rest, cs)
            offset = [0] * rest.ndim
            offset[axis] = before + head

            def flushed(fn):
                def store(*args):
                    with guard():
                        fn(*args)
                        f.flush()  # the file's metadata on disk after every chunk: a kill loses only that chunk

                return store

            desc = f"appending to {node}"
            if encoder is not None:
                chunk = flushed(lambda coords, data: ds.id.write_direct_chunk(coords, data, 0))
                write_blocks(rest, encoder, tuple(offset), progress, desc, chunks=chunk, guard=guard)
            else:
                write_blocks(rest, None, tuple(offset), progress, desc, leaf=_Flushed(ds, f), guard=guard)
    return n


class _Flushed:
    """An h5py dataset whose every assignment is followed by a flush of its file."""

    def __init__(self, ds, f):
        self.ds, self.f = ds, f

    def __setitem__(self, region, value) -> None:
        self.ds[region] = value
        self.f.flush()

"""Lazy dask arrays over PyTables Array, CArray and EArray nodes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from daskh5._chunking import resolve_chunks
from daskh5._codecs import allowed_filters
from daskh5._inputs import resolve
from daskh5._nodes import describe_array
from daskh5._reader import NodeReader
from daskh5.errors import Daskh5Error, UnsupportedDtypeError

if TYPE_CHECKING:
    import dask.array as da

__all__ = ["from_pytables"]

_DRIVERS = {None: None, "H5FD_SEC2": None, "H5FD_STDIO": None, "H5FD_CORE": "H5FD_CORE"}


def _normalize_driver(driver: str | None) -> str | None:
    key = driver.upper() if isinstance(driver, str) else driver
    if isinstance(key, str) and not key.startswith("H5FD_"):
        key = "H5FD_" + key
    if key not in _DRIVERS:
        raise ValueError(
            f"driver={driver!r}: daskh5 reads files with H5FD_SEC2 (default), H5FD_STDIO or "
            "H5FD_CORE (keep the whole file in each process's memory)"
        )
    return _DRIVERS[key]


def _tables_driver(f, node: str) -> str | None:
    """The driver to read an open ``tables.File`` with, flushing its pending writes first."""
    if f.mode != "r":
        f.flush()
    driver = "H5FD_CORE" if f.params.get("DRIVER") == "H5FD_CORE" else None
    if driver and not f.params.get("DRIVER_CORE_BACKING_STORE", 1) and f.mode != "r":
        raise Daskh5Error(
            f"{f.filename}:{node} lives in an in-memory file with no backing store; "
            "workers cannot see it. Write the file to disk first"
        )
    return driver


def from_pytables(
    source: str | os.PathLike | Any,
    node: str | None = None,
    *,
    chunks: str | int | tuple | dict = "auto",
    driver: str | None = None,
    name: str | None = None,
    inline_array: bool = False,
    allow_external: bool = False,
    allow_filters=(),
) -> da.Array:
    """A lazy dask array over an Array, CArray or EArray node of an HDF5 file.

    Creating the array reads metadata only (node description and chunk index),
    never data.  Each task reads its block with ``os.pread`` and decodes it
    without PyTables or an HDF5 lock, so blocks decode in parallel on threads,
    processes or a ``dask.distributed`` cluster.  The file is never opened
    with PyTables, so nothing stored in it is unpickled.

    Parameters
    ----------
    source : path, tables.File, tables.Leaf, h5py.File, h5py.Group or h5py.Dataset
        The file. An open PyTables or h5py object gives its file name (and,
        for a leaf or dataset, the node); nothing is read through it, and a
        PyTables file's pending writes are flushed first.
    node : str
        Path of the node inside the file (or group), e.g. ``"/data"``;
        ``"data"`` means the same.
    chunks : "auto", str, int, tuple or dict
        ``"auto"`` (dask's ``array.chunk-size``), or a memory budget per block
        as a string (``"64MiB"``, ``"1 GB"``): blocks are then whole multiples
        of the node's HDF5 chunkshape, each within the budget (a single HDF5
        chunk bigger than the budget makes one block).  As in
        :func:`dask.array.from_array`, an int is a number of elements along
        every axis, and a tuple or dict gives explicit chunks, honoured as
        given.
    driver : str, optional
        ``"H5FD_CORE"`` loads the whole file into each process's memory once
        and reads from there; ``"H5FD_SEC2"`` / ``"H5FD_STDIO"`` (default)
        read from disk.
    name : str, optional
        Dask name; by default a deterministic token of the file path, node,
        file mtime and size, shape, dtype and chunks.
    inline_array : bool
        Passed to :func:`dask.array.from_array`.
    allow_external : bool
        Also read nodes whose values are stored outside the file: an external
        link (the node is read in its target file, found relative to this
        file's directory), EXTERNAL raw storage (files relative to this file's
        directory) and virtual datasets over other files or over such storage.
        Off by default, because a crafted file can point at any file the
        process can read: such nodes raise :class:`daskh5.ExternalDataError`
        (see :doc:`/user-guide/safety`).
    allow_filters : iterable of int or str, optional
        HDF5 filters to decode beyond daskh5's allowlist (zlib, shuffle,
        fletcher32, LZO, bzip2, blosc, LZ4, bitshuffle, zstd, blosc2), by id
        or name, e.g. ``["sz3"]`` or ``[32017]``.  Only for files you trust:
        some decoders (SZ, SZ3, SPERR) end or crash the process on a damaged
        chunk.  A node using any other filter raises
        :class:`~daskh5.UnsupportedFilterError` here, before any data is read.

    Returns
    -------
    dask.array.Array
        In native byte order; PyTables booleans come back as ``bool``.

    Raises
    ------
    FileNotFoundError, KeyError, TypeError, OSError
        As daskh5 subclasses (:mod:`daskh5.errors`) naming the file and node;
        :class:`daskh5.ExternalDataError` (a ``PermissionError``) for values
        stored outside the file without ``allow_external``;
        :class:`~daskh5.UnsupportedFilterError` for a filter outside the allowlist.

    Examples
    --------
    >>> import numpy as np, tables, tempfile, os, daskh5
    >>> path = os.path.join(tempfile.mkdtemp(), "data.h5")
    >>> with tables.open_file(path, "w") as f:
    ...     _ = f.create_carray("/", "data", obj=np.arange(10_000.0).reshape(-1, 2),
    ...                         filters=tables.Filters(5, "blosc:lz4"), chunkshape=(1000, 2))
    >>> x = daskh5.from_pytables(path, "/data", chunks="32KiB")
    >>> x.chunks
    ((2000, 2000, 1000), (2,))
    >>> float(x.sum().compute())
    49995000.0
    """
    import dask.array as da
    from dask.base import tokenize

    path, node, handle = resolve(source, node, need_node=False)
    if node is None:
        raise TypeError("from_pytables(path, node): give the node path, e.g. '/data'")
    if handle is not None:
        driver = driver or _tables_driver(handle, node)
    driver = _normalize_driver(driver)
    allowed = allowed_filters(allow_filters)
    try:
        info = describe_array(path, node, allow_external=allow_external)
        reader = NodeReader(info, driver=driver, allowed=allowed)
        where, chunkshape = f"{info.path}:{info.node}", info.chunkshape
    except UnsupportedDtypeError as refused:
        reader, where, chunkshape = _strings(path, node, allow_external, allowed, refused)
    chunks = resolve_chunks(
        chunks,
        reader.shape,
        chunkshape,
        np.dtype(object) if reader.dtype.kind == "O" else reader.dtype,
        where,
    )
    name = name or "from-pytables-" + tokenize(reader, chunks)
    meta = np.empty((0,) * len(reader.shape), dtype=reader.dtype)
    return da.from_array(
        reader,
        chunks=chunks,
        name=name,
        lock=False,
        asarray=False,
        fancy=True,
        meta=meta,
        inline_array=inline_array,
    )


def _strings(path: str, node: str, allow_external: bool, allowed, refused: UnsupportedDtypeError):
    """(reader, where, chunkshape) of a variable-length string dataset, read through h5py as ``str``.

    Any other node that :func:`describe_array` refused raises its error (``refused``) again.
    """
    import h5py

    from daskh5._h5types import LibraryReader, library_kind, vlen_str_dtype
    from daskh5._nodes import lookup, node_name, open_h5
    from daskh5._reader import check_dataset_filters

    with open_h5(path) as f:
        obj = lookup(f, node, allow_external=allow_external)
        if not isinstance(obj, h5py.Dataset) or library_kind(obj) != "str":
            raise refused
        real = os.path.abspath(obj.file.filename)
        check_dataset_filters(obj, real, obj.name, allowed)
        reader = LibraryReader(real, obj.name, "str", obj.shape, vlen_str_dtype())
        return reader, f"{real}:{node_name(obj.name)}", obj.chunks

"""What users pass where a file is expected: a path, or an object of PyTables or h5py that names one.

Every public entry point turns its ``source``/``node`` arguments into a plain
``(absolute path, "/node/path")`` here.  Open objects (``tables.File``,
``tables.Node``, ``h5py.File``, ``h5py.Group``, ``h5py.Dataset``) are used
only for their file name and node name: nothing is read through them, so the
same rules apply as for a path (h5py metadata only, nothing unpickled).
"""

from __future__ import annotations

import os
from typing import Any

from daskh5.errors import Daskh5Error, NodeNotFound

__all__ = ["normalize_node", "resolve"]


def normalize_node(node: str, where: str = "") -> str:
    """``"data"``, ``"/data"`` and ``"/data/"`` all mean ``"/data"``.

    >>> normalize_node("grp/data"), normalize_node("/data/"), normalize_node("/")
    ('/grp/data', '/data', '/')
    """
    if not isinstance(node, str) or (not node.strip("/") and node != "/"):
        raise NodeNotFound(f"{where}node must be a path like '/data', got {node!r}")
    if "\x00" in node:
        raise NodeNotFound(f"{where}node {node!r} has a NUL character, which HDF5 names cannot hold")
    return "/" + node.strip("/") if node != "/" else "/"


def _join(base: str, node: str | None) -> str:
    if node is None:
        return base
    if node.startswith("/"):
        return normalize_node(node)
    return normalize_node(base.rstrip("/") + "/" + node)


def _tables_input(source: Any, node: str | None) -> tuple[str, str, Any] | None:
    """``(filename, node, tables.File)`` for PyTables objects, else None."""
    try:
        import tables
    except ImportError:  # pragma: no cover - tables is a dependency
        return None
    if isinstance(source, tables.File):
        if not source.isopen:
            raise Daskh5Error(f"{source.filename}: the tables.File is closed; pass its path or reopen it")
        return source.filename, normalize_node(node) if node is not None else None, source
    if isinstance(source, tables.Node):
        try:
            f, name = source._v_file, source._v_pathname
            if not f.isopen:
                raise tables.ClosedNodeError("closed file")
        except (tables.ClosedNodeError, tables.ClosedFileError, AttributeError):
            raise Daskh5Error(
                "the PyTables node passed belongs to a file that is closed; pass the file's path "
                "and the node's name instead, or reopen the file"
            ) from None
        return f.filename, _join(name, node), f
    return None


def _h5py_input(source: Any, node: str | None) -> tuple[str, str] | None:
    """``(filename, node)`` for h5py objects, else None."""
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        return None
    if not isinstance(source, (h5py.File, h5py.Group, h5py.Dataset)):
        return None
    if not source.id.valid:
        raise Daskh5Error(
            "the h5py object passed belongs to a file that is closed; pass the file's path "
            "and the node's name instead, or reopen the file"
        )
    name = source.name or "/"
    return source.file.filename, _join(name, node)


def resolve(source: Any, node: str | None = None, *, need_node: bool = True) -> tuple[str, str | None, Any]:
    """``(absolute path, normalized node, open tables.File or None)`` for any accepted ``source``.

    ``source`` is a path (str or path-like), a ``tables.File`` (``node`` inside
    it), a ``tables.Node`` (itself, or ``node`` relative to a group), an
    ``h5py.File``/``h5py.Group`` (``node`` inside it) or an ``h5py.Dataset``.
    """
    found = _tables_input(source, node)
    handle = None
    if found is not None:
        path, node, handle = found
    else:
        found2 = _h5py_input(source, node)
        if found2 is not None:
            path, node = found2
        elif isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            if isinstance(node, (bytes, bytearray)):  # a name that is not UTF-8, as h5py hands it out
                node = bytes(node).decode("utf-8", "surrogateescape")
            if node is not None:
                node = normalize_node(node, f"{path}: ")
        else:
            raise TypeError(
                "expected a file path, a tables.File/Node or an h5py File/Group/Dataset, "
                f"got {type(source).__name__}"
            )
    if need_node and node is None:
        raise TypeError("give the node path too, e.g. (path, '/data')")
    return os.path.abspath(path), node, handle

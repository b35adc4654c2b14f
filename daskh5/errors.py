"""Exceptions raised by daskh5.

Every error daskh5 raises derives from :class:`Daskh5Error`.  The specific
classes also derive from the builtin a caller would naturally catch
(``KeyError`` for a missing node, ``FileNotFoundError`` for a missing file,
...), so ``except KeyError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "ChunkDecodeError",
    "Daskh5Error",
    "ExternalDataError",
    "FileBusyError",
    "FileNotFound",
    "NodeKindError",
    "IncompatibleArrayError",
    "NodeExistsError",
    "NodeNameError",
    "NodeNotFound",
    "NotHDF5Error",
    "RaggedLayoutError",
    "ResourceLimitError",
    "UnsupportedDtypeError",
    "UnsafePickleError",
    "UnsupportedFilterError",
    "WhereError",
    "WriteError",
]


class Daskh5Error(Exception):
    """Root of every exception daskh5 raises on purpose."""


class FileNotFound(Daskh5Error, FileNotFoundError):
    """The file does not exist (or is a directory)."""


class NotHDF5Error(Daskh5Error, OSError):
    """The path exists but is not a readable HDF5 file (wrong format or truncated)."""


class NodeNotFound(Daskh5Error, KeyError):
    """No node at the requested path."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class NodeKindError(Daskh5Error, TypeError):
    """The node exists but is of a kind this function does not read."""


class UnsupportedDtypeError(Daskh5Error, TypeError):
    """The node's HDF5 type has no numpy equivalent daskh5 can return."""


class UnsupportedFilterError(Daskh5Error, OSError):
    """No decoder is available for one of the node's HDF5 filters."""


class ChunkDecodeError(Daskh5Error, OSError):
    """A chunk's bytes are missing, truncated or corrupt."""


class RaggedLayoutError(Daskh5Error, ValueError):
    """A ragged layout's side columns disagree with each other or with the data."""


class ResourceLimitError(Daskh5Error, ValueError):
    """The file claims more than daskh5 will spend on it (dask blocks, rows of a side column,
    bytes of a read, objects of a pickle): refused before the memory or time is spent."""


class NodeExistsError(Daskh5Error, ValueError):
    """A writer was asked to create a node that already exists (pass ``overwrite=True``)."""


class IncompatibleArrayError(Daskh5Error, ValueError):
    """An array's dtype or shape does not fit the node it is appended to."""


class ExternalDataError(Daskh5Error, PermissionError):
    """The node's values live outside the file (external storage, virtual sources, external links).

    Refused unless the caller passes ``allow_external=True`` (``--allow-external`` on the
    command line): a crafted file could otherwise read any file the process can read.
    """


class FileBusyError(Daskh5Error, OSError):
    """The file is open elsewhere in a way that stops writing it (HDF5's file lock)."""


class UnsafePickleError(Daskh5Error, ValueError):
    """A pickle in the file asks for something daskh5 will not build (only plain values are rebuilt)."""


class NodeNameError(Daskh5Error, ValueError):
    """A writer was given a node path it cannot create (not absolute, or with a NUL character)."""


class WriteError(Daskh5Error, OSError):
    """A write did not reach the disk whole (disk full, file-size limit, I/O or HDF5 error).

    Raised before anything replaces the file: ``path`` is as it was before the call.
    """


class WhereError(Daskh5Error, ValueError):
    """A ``where=`` condition that does not parse, or names a column or value the table cannot have.

    The message quotes the condition with a caret under the bad term.
    """

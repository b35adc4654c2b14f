"""Write with PyTables safely: no code run from the file, no half-written new file.

PyTables unpickles string attributes ending in ``b"."`` when a file or node
is opened.  daskh5 writes with PyTables, and writing into an existing file
means opening it, so for the duration of daskh5's own PyTables session the
``pickle`` module PyTables' attribute code uses is replaced by one whose
``loads`` admits only plain builtins; anything else stays the raw bytes
PyTables falls back to.  Other threads using PyTables during such a session
see the same restriction.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import secrets
import threading
from collections.abc import Iterator

__all__ = ["atomic_target", "open_tables", "restricted_loads"]

_SAFE = {
    ("builtins", name)
    for name in [
        "list",
        "dict",
        "tuple",
        "set",
        "frozenset",
        "int",
        "float",
        "complex",
        "str",
        "bytes",
        "bool",
    ]
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"daskh5 does not load {module}.{name} from a file")


def restricted_loads(data: bytes, *, encoding: str = "ASCII", errors: str = "strict", **_ignored):
    """``pickle.loads`` that builds only plain builtins (lists, dicts, numbers, strings).

    >>> restricted_loads(pickle.dumps({"a": [1, 2.5]}))
    {'a': [1, 2.5]}
    >>> restricted_loads(pickle.dumps(io.BytesIO()))
    Traceback (most recent call last):
    ...
    _pickle.UnpicklingError: daskh5 does not load _io.BytesIO from a file
    """
    return _RestrictedUnpickler(io.BytesIO(data), encoding=encoding, errors=errors).load()


class Opaque:
    """Stand-in for an object a pickle names but daskh5 will not build (nothing of it runs).

    ``repr`` shows what the file asked for, e.g. ``pandas._libs.tslibs.offsets.Day(...)``.
    """

    _qualname = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        args = ", ".join(map(repr, getattr(self, "args", ())))
        return f"{self._qualname}({args})"


class _OpaqueUnpickler(_RestrictedUnpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE:
            return super().find_class(module, name)
        return type(name, (Opaque,), {"_qualname": f"{module}.{name}"})


def opaque_loads(data: bytes):
    """Like :func:`restricted_loads`, but anything else becomes an inert :class:`Opaque` stand-in.

    For reading the plain parts of metadata that also names library objects
    (pandas' ``info`` attribute holds offsets and time zones next to column names).

    >>> out = opaque_loads(pickle.dumps({"name": "when", "buf": io.BytesIO(b"x")}))
    >>> out["name"], isinstance(out["buf"], Opaque)
    ('when', True)
    """
    return _OpaqueUnpickler(io.BytesIO(data), encoding="latin1").load()


class _SafePickle:
    """Stands in for the ``pickle`` module inside ``tables.attributeset``."""

    UnpicklingError = pickle.UnpicklingError
    PicklingError = pickle.PicklingError
    HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL
    DEFAULT_PROTOCOL = pickle.DEFAULT_PROTOCOL
    dumps = staticmethod(pickle.dumps)
    dump = staticmethod(pickle.dump)
    loads = staticmethod(restricted_loads)


_lock = threading.Lock()
_depth = 0


@contextlib.contextmanager
def _no_unpickling() -> Iterator[None]:
    global _depth
    import tables.attributeset as attributeset

    with _lock:
        if _depth == 0:
            attributeset.pickle = _SafePickle
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                attributeset.pickle = pickle


@contextlib.contextmanager
def open_tables(path: str, mode: str, **kwargs) -> Iterator:
    """``tables.open_file`` with unpickling restricted to plain builtins while it is open.

    Names that are not Python identifiers are fine for daskh5 (it never uses
    PyTables' natural naming), so PyTables' warning about them is silenced.
    """
    import warnings

    import tables

    with _no_unpickling(), warnings.catch_warnings():
        warnings.simplefilter("ignore", tables.NaturalNameWarning)
        try:
            f = tables.open_file(path, mode, **kwargs)
        except (OSError, tables.HDF5ExtError) as exc:
            if mode != "r" and "unable to lock" in str(exc).lower():
                from daskh5.errors import FileBusyError

                raise FileBusyError(
                    f"{path} is open in another process (HDF5 locks it while it is open); close it "
                    "there before writing, or write to another file"
                ) from None
            raise
        try:
            yield f
        finally:
            f.close()


@contextlib.contextmanager
def atomic_target(path: str, mode: str) -> Iterator[tuple[str, bool]]:
    """``(target, fresh)``: where a writer should write ``path``.

    A new file (``mode="w"``, or ``path`` missing) is written under a temporary
    name next to ``path`` and renamed into place only if the block succeeds; if
    it fails the temporary file is removed, so ``path`` is absent or as it was.
    An existing file opened in ``"a"`` is written in place (``fresh`` is False:
    the writer undoes its own changes on failure).
    """
    if mode != "w" and os.path.exists(path):
        yield path, False
        return
    target = _new_file_beside(path)
    try:
        yield target, True
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(target)
        raise
    os.replace(target, path)


def _new_file_beside(path: str) -> str:
    """An empty, uniquely named temporary file next to ``path``.

    Created with mode 0o666 so the umask applies as for any new file
    (``tempfile.mkstemp`` would make it 0600, unreadable on a shared filesystem).
    """
    folder, base = os.path.split(path)
    while True:
        target = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return target
        except FileExistsError:
            continue

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
import pickletools
import secrets
import threading
from collections.abc import Iterator

__all__ = ["atomic_target", "open_tables", "restricted_loads"]

MAX_WEIGHT = 1 << 20
"""What one unpickled value may unfold to: objects, plus a string's or an int's length in 8-byte
words, counting an object as often as it is referenced (``repr`` walks it that many times)."""


class _Calls:
    """The builtins a restricted pickle may call, each checked before it builds anything.

    None of them takes a size: ``bytes(10**10)`` or ``list(bytes(N))`` (40 bytes of pickle, gigabytes
    of memory) are refused, and the items every call copies are charged to a per-load budget.
    """

    def __init__(self):
        self.left = MAX_WEIGHT

    def charge(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise pickle.UnpicklingError(f"daskh5 does not build pickles of more than {MAX_WEIGHT:,} items")

    def container(self, kind):
        def build(items=()):
            if not isinstance(items, (list, tuple, set, frozenset, dict, str, bytes)):
                raise pickle.UnpicklingError(
                    f"daskh5 does not build a {kind.__name__} from a {type(items).__name__}"
                )
            self.charge(len(items))
            return kind(items)

        return build

    def scalar(self, kind, first: tuple[type, ...]):
        """``kind(*args)`` whose first argument is one of ``first`` (never an int for ``bytes``
        or ``str``: a size) and whose others are texts or numbers (an encoding, a base)."""

        def build(*args):
            if args and not isinstance(args[0], first):
                raise pickle.UnpicklingError(
                    f"daskh5 does not call {kind.__name__}({type(args[0]).__name__})"
                )
            if not all(isinstance(a, (str, bytes, int, float, complex)) for a in args[1:]):
                raise pickle.UnpicklingError(f"daskh5 does not call {kind.__name__} with these arguments")
            self.charge(sum(len(a) // 8 + 1 for a in args if isinstance(a, (str, bytes, list, tuple))))
            return kind(*args)

        return build

    def table(self) -> dict[str, object]:
        numbers = (str, bytes, int, float, bool)
        return {
            "list": self.container(list),
            "tuple": self.container(tuple),
            "set": self.container(set),
            "frozenset": self.container(frozenset),
            "dict": self.container(dict),
            "int": self.scalar(int, numbers),
            "float": self.scalar(float, numbers),
            "complex": self.scalar(complex, (*numbers, complex)),
            "str": self.scalar(str, (str, bytes)),
            "bytes": self.scalar(bytes, (str, bytes, list, tuple)),
            "bool": self.scalar(bool, (int, float, bool, str)),
        }


_SAFE = {("builtins", name) for name in _Calls().table()} | {
    ("__builtin__", name) for name in _Calls().table()
}

_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}


def _check_opcodes(data: bytes) -> None:
    """Refuse a pickle whose opcodes claim more than its bytes hold, before the C unpickler
    allocates it: a 10-byte ``LONG_BINPUT 2**31`` makes it resize its memo to 16 GiB, and a
    ``BINBYTES8`` claiming 2**40 bytes allocates them before reading."""
    try:
        for ops, (op, arg, _pos) in enumerate(pickletools.genops(data), 1):
            if op.name in _MEMO_OPS and int(arg) > ops:
                raise pickle.UnpicklingError(
                    f"pickle memo index {arg} at opcode {ops}: daskh5 does not load it"
                )
    except (ValueError, KeyError, TypeError, OverflowError) as exc:  # genops' errors on lying lengths
        raise pickle.UnpicklingError(f"daskh5 does not load a malformed pickle: {exc}") from None


def _check_weight(value) -> None:
    """Refuse a value that unfolds to more than :data:`MAX_WEIGHT` (shared references counted each
    time they are referenced, "billion laughs"), or that contains itself; no recursion."""
    known: dict[int, int] = {}
    keep = []  # the objects whose ids are in ``known`` stay alive while it is used
    stack = [(value, False)]
    busy: set[int] = set()
    while stack:
        obj, done = stack.pop()
        key = id(obj)
        if done:
            busy.discard(key)
            size = 1 + sum(known[id(c)] for c in _children(obj))
            if size > MAX_WEIGHT:
                raise pickle.UnpicklingError(
                    f"the pickle unfolds to more than {MAX_WEIGHT:,} items: daskh5 does not load it"
                )
            known[key] = size
            continue
        if key in known:
            continue
        if key in busy:
            raise pickle.UnpicklingError("the pickle contains itself: daskh5 does not load it")
        children = _children(obj)
        if not children:
            known[key] = _leaf_weight(obj)
            keep.append(obj)
            continue
        busy.add(key)
        keep.append(obj)
        stack.append((obj, True))
        stack.extend((c, False) for c in children)
    del keep


def _children(obj) -> list:
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, dict):
        return [x for kv in obj.items() for x in kv]
    if isinstance(obj, Opaque):
        return [*getattr(obj, "args", ()), *([obj.state] if hasattr(obj, "state") else [])]
    return []


def _leaf_weight(obj) -> int:
    if isinstance(obj, (str, bytes, bytearray)):
        return 1 + len(obj) // 8
    if isinstance(obj, int):
        return 1 + obj.bit_length() // 64
    return 1


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._calls = _Calls().table()

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE:
            return self._calls[name]
        raise pickle.UnpicklingError(f"daskh5 does not load {module}.{name} from a file")


def _load(unpickler_class, data: bytes, **kwargs):
    _check_opcodes(data)
    try:
        value = unpickler_class(io.BytesIO(data), **kwargs).load()
    except pickle.UnpicklingError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, EOFError, OverflowError) as exc:
        # e.g. a stand-in called as a function: the pickle is not one daskh5 loads
        raise pickle.UnpicklingError(
            f"daskh5 could not load the pickle: {type(exc).__name__}: {exc}"
        ) from None
    _check_weight(value)
    return value


def restricted_loads(data: bytes, *, encoding: str = "ASCII", errors: str = "strict", **_ignored):
    r"""``pickle.loads`` that builds only plain builtins (lists, dicts, numbers, strings).

    Bounded: no call that takes a size (``bytes(10**9)``), at most :data:`MAX_WEIGHT` items
    however often they are shared, no memo index or length that the bytes do not hold.

    >>> restricted_loads(pickle.dumps({"a": [1, 2.5]}))
    {'a': [1, 2.5]}
    >>> restricted_loads(pickle.dumps(io.BytesIO()))
    Traceback (most recent call last):
    ...
    _pickle.UnpicklingError: daskh5 does not load _io.BytesIO from a file
    >>> restricted_loads(b"cbuiltins\nbytes\n(J\x00\xca\x9a;tR.")  # 16 bytes asking for bytes(10**9)
    Traceback (most recent call last):
    ...
    _pickle.UnpicklingError: daskh5 does not call bytes(int)
    """
    return _load(_RestrictedUnpickler, bytes(data), encoding=encoding, errors=errors)


class Opaque:
    """Stand-in for an object a pickle names but daskh5 will not build (nothing of it runs).

    ``repr`` shows what the file asked for, e.g. ``pandas._libs.tslibs.offsets.Day(...)``,
    at most :data:`REPR_CHARS` characters of it.
    """

    _qualname = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return bounded_repr(self)


REPR_CHARS = 200


def bounded_repr(value, limit: int = REPR_CHARS) -> str:
    """``repr`` of an unpickled value, cut at ``limit`` characters without walking the rest.

    >>> bounded_repr(list(range(1000)), 20)
    '[0, 1, 2, 3, 4, 5, 6...'
    """
    out: list[str] = []
    left = [limit]

    def emit(text: str) -> None:
        out.append(text[: max(0, left[0])])
        left[0] -= len(text)

    stack: list = [value]
    while stack and left[0] > 0:
        item = stack.pop()
        if isinstance(item, _Text):
            emit(item)
        elif isinstance(item, Opaque):
            stack.extend(_joined(f"{item._qualname}(", list(getattr(item, "args", ())), ")"))
        elif isinstance(item, (list, tuple, set, frozenset, dict)):
            opening, closing = {list: "[]", tuple: "()", dict: "{}"}.get(type(item), "{}")
            parts = [x for kv in item.items() for x in kv] if isinstance(item, dict) else list(item)
            stack.extend(_joined(opening, parts[:limit], closing, pairs=isinstance(item, dict)))
        elif isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > 256:
            emit(f"<{item.bit_length()}-bit int>")
        elif isinstance(item, (str, bytes)):
            emit(repr(item[:limit]))
        elif isinstance(item, (int, float, complex, bool, type(None))):
            emit(repr(item))
        else:
            emit(f"<{type(item).__name__}>")
    text = "".join(out)
    return text if left[0] >= 0 else text + "..."


class _Text(str):
    """A piece of punctuation on :func:`bounded_repr`'s stack."""


def _joined(opening: str, parts: list, closing: str, pairs: bool = False) -> list:
    """The stack entries (reversed) that print ``opening part, part, ... closing``."""
    seq: list = [_Text(opening)]
    for i, p in enumerate(parts):
        if i:
            seq.append(_Text(": " if pairs and i % 2 else ", "))
        seq.append(p)
    seq.append(_Text(closing))
    return seq[::-1]


class _OpaqueUnpickler(_RestrictedUnpickler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._opaque: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE:
            return super().find_class(module, name)
        key = (module, name)
        if key not in self._opaque:  # one stand-in class per name, however often the pickle names it
            self._opaque[key] = type(name, (Opaque,), {"_qualname": f"{module}.{name}"})
        return self._opaque[key]


def opaque_loads(data: bytes):
    """Like :func:`restricted_loads`, but anything else becomes an inert :class:`Opaque` stand-in.

    For reading the plain parts of metadata that also names library objects
    (pandas' ``info`` attribute holds offsets and time zones next to column names).

    >>> out = opaque_loads(pickle.dumps({"name": "when", "buf": io.BytesIO(b"x")}))
    >>> out["name"], isinstance(out["buf"], Opaque)
    ('when', True)
    """
    return _load(_OpaqueUnpickler, bytes(data), encoding="latin1")


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

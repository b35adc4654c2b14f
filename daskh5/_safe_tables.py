"""Write with PyTables safely: no code run from the file, no half-written file, no lost update.

PyTables unpickles string attributes ending in ``b"."`` when a file or node
is opened.  daskh5 writes with PyTables, and writing into an existing file
means opening it, so for the duration of daskh5's own PyTables session the
``pickle`` module PyTables' attribute code uses is replaced by one whose
``loads`` admits only plain builtins; anything else stays the raw bytes
PyTables falls back to.  Other threads using PyTables during such a session
see the same restriction.

Every write goes to a temporary file next to the target, a copy of it when
adding to an existing file (:func:`atomic_target`), which replaces the target
only once it is complete, checked (:mod:`daskh5._verify`) and fsynced; the
target is locked against other writers meanwhile.  A failure at any point
leaves the target byte for byte as it was.  (``daskh5.append`` to a file
above ``daskh5.copy-on-write-limit`` writes in place instead: see
:mod:`daskh5._inplace`.)
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import pickletools
import secrets
import stat
import sys
import threading
from collections.abc import Iterator

from daskh5._verify import hdf5_errors, hdf5_message, write_failed
from daskh5.errors import WriteError

__all__ = ["atomic_target", "open_tables", "restricted_loads", "shown"]

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
    Errors opening or closing (HDF5 flushes on close) for writing are daskh5
    errors naming the user's file (see :func:`shown`).
    """
    import warnings

    import tables

    from daskh5.errors import FileBusyError, NotHDF5Error

    where = shown(path)
    with _no_unpickling(), warnings.catch_warnings():
        warnings.simplefilter("ignore", tables.NaturalNameWarning)
        try:
            f = tables.open_file(path, mode, **kwargs)
        except (OSError, tables.HDF5ExtError) as exc:
            text = str(exc).lower()
            if "unable to lock" in text:
                raise FileBusyError(
                    f"{where} is open in another process (HDF5 locks it while it is open); close it "
                    "there before writing, or write to another file"
                ) from None
            if "signature" in text:
                raise NotHDF5Error(f"{where} is not an HDF5 file; daskh5 cannot add to it") from exc
            if mode == "r":
                raise NotHDF5Error(f"{where} could not be opened ({hdf5_message(exc)})") from exc
            raise write_failed(where, "", path, exc) from exc
        try:
            yield f
        except BaseException:
            with contextlib.suppress(Exception):
                f.close()
            raise
        if mode == "r":
            f.close()
        else:
            with hdf5_errors(where, "", path):
                f.close()


_active: dict[str, str] = {}  # temporary file this process is writing -> the path it will replace


def writer_node(node, fn: str, example: str = "/data") -> str:
    """A writer's node path: ``"data"`` means ``"/data"`` (as for readers), then :func:`check_node_path`.

    >>> writer_node("grp/data", "to_pytables")
    '/grp/data'
    """
    if isinstance(node, str) and node.strip("/"):
        node = "/" + node.strip("/")
    return check_node_path(node, fn, example)


def check_node_path(node, fn: str, example: str = "/data") -> str:
    """``node`` if a writer can create a node of that path, else :class:`~daskh5.errors.NodeNameError`.

    PyTables hands names to HDF5 as C strings, so a NUL would silently cut the
    name short (``"/a\\x00b"`` would write ``/a``).

    >>> check_node_path("/a/b", "to_pytables")
    '/a/b'
    >>> check_node_path("/a\\x00b", "to_pytables")
    Traceback (most recent call last):
    ...
    daskh5.errors.NodeNameError: to_pytables: node '/a\\x00b' holds a NUL character, ...
    """
    from daskh5.errors import NodeNameError

    if not isinstance(node, str) or not node.startswith("/") or node == "/":
        raise NodeNameError(f"{fn}: node must be an absolute node path like {example!r}, got {node!r}")
    if "\x00" in node:
        raise NodeNameError(
            f"{fn}: node {node!r} holds a NUL character, where HDF5 would cut the name short; "
            "choose a name without it"
        )
    if any(part in ("", ".", "..") for part in node[1:].split("/")):
        raise NodeNameError(f"{fn}: node {node!r} has an empty, '.' or '..' part; write it like {example!r}")
    try:
        node.encode("utf-8")
    except UnicodeEncodeError:
        raise NodeNameError(
            f"{fn}: node {node!r} is not valid Unicode (it holds surrogates for bytes that are not UTF-8); "
            "PyTables writes UTF-8 names only"
        ) from None
    return node


def shown(path: str) -> str:
    """The user's path for a temporary file daskh5 is writing in its place (else ``path``)."""
    return _active.get(path, path)


@contextlib.contextmanager
def atomic_target(path: str, mode: str) -> Iterator[tuple[str, bool]]:
    """``(target, fresh)``: the temporary file a writer writes instead of ``path``.

    ``fresh``: the target is a new, empty file (``mode="w"``, or no file at
    ``path``); otherwise it is a copy of the file at ``path`` (a reflink, where
    the filesystem has them).  While the block runs, the file at ``path`` is
    locked against other writers with ``flock``, as HDF5 locks the files it
    opens: a process holding it open makes this a
    :class:`~daskh5.errors.FileBusyError`.

    If the block succeeds, the target is fsynced and renamed over ``path``
    (symlinks followed, permission bits kept), unless another process replaced,
    changed or created ``path`` meanwhile (``FileBusyError``).  If the block
    fails, the target is removed: ``path`` is byte for byte as it was.  A
    ``path`` that is itself a target being written (one writer calling another)
    is written in place.
    """
    if path in _active:
        yield path, False
        return
    real = os.path.realpath(path)
    with _locked(real, path) as (fd, before):
        fresh = mode == "w" or before is None
        with hdf5_errors(path, ""):
            target = _new_file_beside(real)
        _active[target] = path
        try:
            with hdf5_errors(path, "", target):
                if before is not None:
                    os.chmod(target, stat.S_IMODE(before.st_mode))
                if not fresh:
                    _copy(fd, target, before.st_size)
            yield target, fresh
            _commit(target, real, before, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(target)
            raise
        finally:
            _active.pop(target, None)


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@contextlib.contextmanager
def _locked(real: str, path: str) -> Iterator[tuple[int | None, os.stat_result | None]]:
    """``(descriptor, stat)`` of the file at ``real``, locked for the block; ``(None, None)`` if none."""
    from daskh5.errors import FileBusyError

    try:
        st = os.stat(real)
    except FileNotFoundError:
        yield None, None
        return
    except OSError as exc:
        raise write_failed(path, "", real, exc) from exc
    if not stat.S_ISREG(st.st_mode):
        raise WriteError(
            f"{path} is not a regular file (a directory?); daskh5 writes HDF5 files: choose another path"
        )
    with hdf5_errors(path, ""):
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        _flock(fd, path)
        with hdf5_errors(path, ""):
            st, now = os.fstat(fd), os.stat(real)
        if _identity(now)[:2] != _identity(st)[:2]:
            raise FileBusyError(
                f"{path} was replaced by another process while daskh5 waited to write it; write again"
            )
        yield fd, st
    finally:
        os.close(fd)  # releases the lock


def _flock(fd: int, path: str) -> None:
    """Lock ``fd`` exclusively, or raise :class:`FileBusyError` (HDF5's own readers and writers hold it)."""
    from daskh5.errors import FileBusyError

    try:
        import fcntl
    except ImportError:  # Windows: HDF5 does not lock there either
        return
    if os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE":
        return  # the user turned HDF5's locks off (NFS, Lustre): then daskh5's too
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FileBusyError(
            f"{path} is open in another process (HDF5 locks it while it is open), or another daskh5 "
            "writer is writing it; close it there before writing, or write to another file"
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise write_failed(path, "", path, exc) from exc
        # this filesystem has no locks: go on, as HDF5 does with HDF5_USE_FILE_LOCKING=BEST_EFFORT


def _reflink(src: int, dst: int) -> bool:
    """Clone ``src`` into ``dst`` sharing its blocks (btrfs, XFS, ZFS 2.2+, APFS's clones aside)."""
    if not sys.platform.startswith("linux"):
        return False
    import fcntl

    try:
        fcntl.ioctl(dst, 0x40049409, src)  # FICLONE
    except OSError:
        return False
    return True


def _copy(src: int, target: str, size: int) -> None:
    """Copy ``size`` bytes of the open file ``src`` into ``target`` (in the kernel where it can)."""
    dst = os.open(target, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if _reflink(src, dst):
            return
        done = 0
        try:
            while done < size:
                n = os.copy_file_range(src, dst, size - done, done, done)
                if n == 0:
                    break
                done += n
        except (AttributeError, OSError) as exc:  # no copy_file_range here (or across these filesystems)
            if isinstance(exc, OSError) and exc.errno not in _NO_COPY_RANGE:
                raise
        while done < size:
            block = os.pread(src, min(size - done, 8 << 20), done)
            if not block:
                break
            done += os.pwrite(dst, block, done)
        if done != size:
            raise OSError(
                errno.EIO, f"copied {done:,} of {size:,} bytes: the file shrank while it was copied"
            )
    finally:
        os.close(dst)


_NO_COPY_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM)


def _commit(target: str, real: str, before: os.stat_result | None, path: str) -> None:
    """fsync ``target`` and put it at ``real``, unless another process changed ``real`` meanwhile."""
    from daskh5.errors import FileBusyError

    with hdf5_errors(path, "", target):
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)  # a write error the kernel kept (NFS, a full thin volume) surfaces here
        finally:
            os.close(fd)
    busy = f"{path} was changed by another process while daskh5 wrote its new version; nothing was written: write again"
    if before is None:
        try:
            os.link(target, real)  # creates real only if it still does not exist
        except FileExistsError:
            raise FileBusyError(busy.replace("was changed", "was created")) from None
        except OSError:  # no hard links on this filesystem
            if os.path.lexists(real):
                raise FileBusyError(busy.replace("was changed", "was created")) from None
            os.replace(target, real)
        else:
            os.unlink(target)
    else:
        try:
            now = _identity(os.stat(real))
        except FileNotFoundError:
            now = None
        if now != _identity(before):
            raise FileBusyError(busy)
        with hdf5_errors(path, "", target):
            os.replace(target, real)
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(os.path.dirname(real) or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


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

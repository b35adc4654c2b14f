"""The two unpicklers daskh5 reads pandas' pickles with; neither imports or calls what a pickle names.

:func:`inert_loads`
    pandas' metadata attributes (column lists, index names, time zones and
    frequencies): plain builtins are built, every other name a pickle mentions
    becomes an inert stand-in (a :class:`daskh5._safe_tables.Opaque`) that only
    remembers its name and arguments.
:func:`load_object_array`
    the object blocks of ``format="fixed"`` keys, each a pickled numpy object
    array: stand-ins collect the array's shape and values, which are checked
    (one array, at most ``limit`` elements, each ``str``, ``bytes``, ``int``,
    ``float``, ``bool`` or ``None``) before numpy builds anything.
"""

from __future__ import annotations

import io
import math
import pickle

import numpy as np

from daskh5._safe_tables import Opaque

__all__ = ["MAX_OBJECTS", "ObjectArrayUnpickler", "inert_loads", "load_object_array"]

MAX_OBJECTS = 1 << 26  # elements one pickled object block may hold (64 Mi)
MAX_METADATA_BYTES = 1 << 20  # a pandas metadata attribute longer than this is not read


# -- pandas' metadata ----------------------------------------------------------------------------


def _bytes(*args):
    """``bytes`` for metadata pickles, which only spell strings with it (never ``bytes(10**10)``)."""
    if args and not isinstance(args[0], (str, bytes)):
        raise pickle.UnpicklingError("bytes() of something other than a string")
    return bytes(*args)


def _latin1(text, encoding="latin1") -> bytes:
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode other than the pickle protocols' bytes")
    return text.encode("latin1")


_BUILTINS = {
    "list": list, "dict": dict, "tuple": tuple, "set": set, "frozenset": frozenset, "int": int, "float": float,
    "complex": complex, "str": str, "bool": bool, "bytes": _bytes,
}  # fmt: skip


class _Inert(Opaque):
    """A stand-in that can also be called (pickles call what they name: ``getattr(ZoneInfo, ...)(...)``)."""

    def __call__(self, *args, **kwargs):
        out = type(self)()
        out.args = args
        return out


class _MetadataUnpickler(pickle.Unpickler):
    """pandas' metadata pickles: plain builtins are built, any other name becomes an inert :class:`_Inert`."""

    def find_class(self, module: str, name: str):
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return _BUILTINS[name]
        if (module, name) == ("_codecs", "encode"):  # how protocols 0-2 spell bytes
            return _latin1
        return type(name, (_Inert,), {"_qualname": f"{module}.{name}"})

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not loaded")


def inert_loads(value):
    """A pandas metadata attribute: plain builtins, anything else an inert stand-in; None if unreadable."""
    if (
        isinstance(value, (bytes, np.bytes_))
        and bytes(value).endswith(b".")
        and len(value) <= MAX_METADATA_BYTES
    ):
        try:
            return _MetadataUnpickler(io.BytesIO(bytes(value)), encoding="latin1").load()
        except Exception:
            return None
    return value


# -- pandas' object blocks -----------------------------------------------------------------------


_PLAIN = (str, bytes, int, float, bool, type(None))


class _Sentinel:
    """Stands for ``numpy.ndarray`` inside one pickle: no attributes, so ``BUILD`` cannot alter it."""

    __slots__ = ()


class _DtypeStub:
    """Stands for ``numpy.dtype("O8")``; ignores the state the pickle gives it (it could alter numpy's)."""

    __slots__ = ()

    def __setstate__(self, state) -> None:
        pass


class _ArrayStub:
    """An object array being unpickled: built from its state only after every element is checked."""

    __slots__ = ("array", "limit")

    def __init__(self, limit: int):
        self.limit, self.array = limit, None

    def __setstate__(self, state) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError(
                "an array state that is not numpy's (version, shape, dtype, order, data)"
            )
        _version, shape, dtype, fortran, data = state
        if not (
            isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape) and len(shape) <= 2
        ):
            raise pickle.UnpicklingError(f"an array shape that is not 1 or 2 counts: {shape!r}")
        n = math.prod(shape)
        if n > self.limit:
            raise pickle.UnpicklingError(f"an array of {n} elements (at most {self.limit} expected here)")
        if not isinstance(dtype, _DtypeStub) or not isinstance(data, list) or len(data) != n:
            raise pickle.UnpicklingError(
                "an array that is not a numpy object array with one value per element"
            )
        odd = next((type(v) for v in data if type(v) not in _PLAIN), None)
        if odd is not None:
            raise pickle.UnpicklingError(f"an element of type {odd.__module__}.{odd.__qualname__}")
        out = np.empty(n, dtype=object)
        out[:] = data
        self.array = out.reshape(shape, order="F" if fortran is True else "C")


class ObjectArrayUnpickler(pickle.Unpickler):
    """Unpickles one numpy object array of plain values (``str``, ``bytes``, ``int``, ``float``, ``None``).

    The pickle may name only numpy's array reconstructor, ``numpy.ndarray`` and
    ``numpy.dtype("O8")`` (and ``_codecs.encode``, protocol 2's spelling of
    bytes), and none of them is called: stand-ins record the array's state, which
    is checked (one array, at most ``limit`` elements, each of a plain type)
    before numpy builds anything.  The stand-ins are bound methods and slot-only
    objects of this unpickler, so a pickle cannot change them for the next one.
    Anything else raises ``pickle.UnpicklingError``.
    """

    def __init__(self, file, limit: int = MAX_OBJECTS):
        super().__init__(file, encoding="latin1")
        self.limit = limit
        self.ndarray = _Sentinel()
        self.arrays: list[_ArrayStub] = []

    def find_class(self, module: str, name: str):
        if module in ("numpy._core.multiarray", "numpy.core.multiarray") and name == "_reconstruct":
            return self._reconstruct
        if module == "numpy" and name == "ndarray":
            return self.ndarray
        if module == "numpy" and name == "dtype":
            return self._dtype
        if module == "_codecs" and name == "encode":  # how protocol 2 spells bytes
            return self._latin1
        raise pickle.UnpicklingError(f"daskh5 does not load {module}.{name} from a file")

    def _reconstruct(self, cls, shape, typecode):
        if cls is not self.ndarray or self.arrays:
            raise pickle.UnpicklingError(
                "more than one array, or an array of a class other than numpy.ndarray"
            )
        stub = _ArrayStub(self.limit)
        self.arrays.append(stub)
        return stub

    def _latin1(self, text, encoding="latin1") -> bytes:  # a bound method: BUILD cannot alter it
        return _latin1(text, encoding)

    def _dtype(self, code, align=False, copy=True) -> _DtypeStub:
        if code != "O8":
            raise pickle.UnpicklingError(
                f"an array of dtype {code!r} (only object arrays are pickled by pandas)"
            )
        return _DtypeStub()

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not loaded")


def load_object_array(data: bytes, limit: int = MAX_OBJECTS) -> np.ndarray:
    """The numpy object array of plain values pickled in ``data``; ``pickle.UnpicklingError`` otherwise.

    >>> load_object_array(pickle.dumps(np.array(["a", None, 1.5], dtype=object))).tolist()
    ['a', None, 1.5]
    >>> load_object_array(pickle.dumps(np.array([io.BytesIO()], dtype=object)))
    Traceback (most recent call last):
    ...
    _pickle.UnpicklingError: daskh5 does not load _io.BytesIO from a file
    """
    unpickler = ObjectArrayUnpickler(io.BytesIO(data), limit)
    try:
        out = unpickler.load()
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # what a malformed pickle raises (AttributeError, EOFError, ...)
        raise pickle.UnpicklingError(f"a malformed pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(out, _ArrayStub) or out.array is None:
        raise pickle.UnpicklingError("the pickle is not a numpy object array")
    return out.array

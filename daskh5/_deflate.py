"""Deflate (HDF5 filter 1) and HDF5's byte shuffle (filter 2), at the speed the machine allows.

Three inflaters are known, fastest first (measured on the chunks of netCDF-4,
h5py and PyTables files; see ``docs/performance.rst``):

``libdeflate``
    The ``deflate`` package (0.9+: it releases the GIL).  Whole-buffer only: it
    is given the chunk size and fails, without writing past it, on a stream
    that inflates to more.
``isal``
    Intel's ISA-L through the ``isal`` package, with zlib's streaming API.
``zlib``
    Python's standard library: always there.

The fastest one installed is used unless the dask config value
``daskh5.deflate-decoder`` (environment: ``DASK_DASKH5__DEFLATE_DECODER``)
names another: ``"auto"`` (the default), ``"libdeflate"``, ``"isal"`` or
``"zlib"``.  Every inflater is held to the same contract: exactly ``nbytes``
out, a complete stream with a good checksum, never more memory than the chunk
needs, or a :class:`~daskh5.errors.ChunkDecodeError`.

Unshuffling uses c-blosc2's SIMD ``blosc2_unshuffle`` from the ``blosc2``
wheel's shared library (a daskh5 dependency) and falls back to one NumPy
strided copy per byte plane.  Writers compress with :func:`compress`:
libdeflate when installed (faster than zlib at every level, standard zlib
streams), else zlib.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import zlib
from functools import cache, lru_cache

import numpy as np

from daskh5.errors import ChunkDecodeError

__all__ = [
    "CONFIG_KEY",
    "DECODERS",
    "compress",
    "decoder_name",
    "inflate",
    "inflate_into",
    "shuffle",
    "stream_into",
    "unshuffle",
]

CONFIG_KEY = "daskh5.deflate-decoder"

#: the inflaters daskh5 knows, fastest first, with the module each needs
DECODERS = {"libdeflate": "deflate", "isal": "isal.isal_zlib", "zlib": "zlib"}

#: chunks larger than this are inflated piece by piece straight into the output (a whole-buffer
#: inflater would need the chunk's inflated copy as well); libdeflate cannot stream, so they use
#: the streaming inflater (ISA-L or zlib)
WHOLE_MAX = 64 << 20
_IN_PIECE = 4 << 20  # compressed bytes handed to a streaming inflater at a time
_OUT_PIECE = 16 << 20  # inflated bytes asked of it at a time


def _choice() -> str:
    import dask.config

    return str(dask.config.get(CONFIG_KEY, "auto") or "auto").strip().lower()


@cache
def _module(name: str):
    """The module of inflater ``name``, or None where it is not installed (or too old)."""
    try:
        mod = importlib.import_module(DECODERS[name])
    except ImportError:
        return None
    if name == "libdeflate":
        version = tuple(int(p) for p in getattr(mod, "__version__", "0.0").split(".")[:2] if p.isdigit())
        if version < (0, 9):  # before 0.9 it held the GIL while inflating
            return None
    return mod


@cache
def _resolve(choice: str) -> str:
    if choice == "auto":
        return next(name for name in DECODERS if _module(name) is not None)
    if choice not in DECODERS:
        raise ValueError(
            f"dask config {CONFIG_KEY}={choice!r}: give one of 'auto', " + ", ".join(map(repr, DECODERS))
        )
    if _module(choice) is None:
        raise ImportError(
            f"dask config {CONFIG_KEY}={choice!r}, but {DECODERS[choice].split('.')[0]} is not installed "
            '(pip install "daskh5[fast]"), or set it to "auto"'
        )
    return choice


def decoder_name() -> str:
    """The inflater deflate chunks are decoded with, as configured and installed.

    >>> decoder_name() in DECODERS
    True
    """
    return _resolve(_choice())


def _streaming_module(name: str):
    """zlib's streaming API: ISA-L's when it is the chosen or an installed fast inflater, else zlib."""
    if name != "zlib" and _module("isal") is not None:
        return _module("isal")
    return zlib


def inflate(data, nbytes: int):
    """Inflate the zlib stream ``data`` to exactly ``nbytes`` bytes (a ``bytes``-like buffer).

    >>> bytes(inflate(zlib.compress(b"abc" * 3), 9))
    b'abcabcabc'
    """
    name = decoder_name()
    if name == "libdeflate" and nbytes < 1 << 32:
        return _libdeflate(data, nbytes)
    lib = _streaming_module(name)
    d = lib.decompressobj()
    try:
        result = d.decompress(data, nbytes + 1)  # one byte more than allowed is enough to tell
    except lib.error as exc:
        raise ChunkDecodeError(f"zlib could not inflate the chunk: {exc}") from None
    if len(result) != nbytes or not d.eof:
        more = "+" if len(result) > nbytes or d.unconsumed_tail else ""
        raise ChunkDecodeError(
            f"the zlib stream inflates to {len(result)}{more} bytes"
            + ("" if d.eof or len(result) > nbytes else " and ends early")
            + f", the chunk needs {nbytes}"
        )
    return result


def _libdeflate(data, nbytes: int):
    mod = _module("libdeflate")
    if nbytes == 0:  # libdeflate returns nothing for nothing without reading the stream
        return _empty_stream(data)
    try:
        result = mod.zlib_decompress(data, nbytes)
    except mod.DeflateError:
        raise ChunkDecodeError(
            f"the zlib stream is damaged or inflates to more than the chunk's {nbytes} bytes"
        ) from None
    if len(result) != nbytes:
        raise ChunkDecodeError(f"the zlib stream inflates to {len(result)} bytes, the chunk needs {nbytes}")
    return result


def _empty_stream(data) -> bytes:
    d = zlib.decompressobj()
    try:
        extra = d.decompress(data, 1)
    except zlib.error as exc:
        raise ChunkDecodeError(f"zlib could not inflate the chunk: {exc}") from None
    if extra or not d.eof:
        raise ChunkDecodeError("the zlib stream of an empty chunk is not empty or ends early")
    return b""


def inflate_into(data, nbytes: int, out, itemsize: int = 1) -> None:
    """Inflate ``data`` into the writable buffer ``out`` of ``nbytes`` bytes, unshuffling
    ``itemsize``-byte items on the way when ``itemsize > 1`` (HDF5's shuffle then deflate)."""
    if nbytes <= WHOLE_MAX:
        whole = inflate(data, nbytes)
        if itemsize > 1:
            unshuffle(whole, itemsize, out)
        else:
            np.frombuffer(out, dtype=np.uint8)[:] = np.frombuffer(whole, dtype=np.uint8)
        return
    stream_into(data, nbytes, out, itemsize)


def stream_into(
    data, nbytes: int, out, itemsize: int = 1, pieces: tuple[int, int] = (_IN_PIECE, _OUT_PIECE)
) -> None:
    """:func:`inflate_into` piece by piece (``pieces``: compressed bytes in, inflated bytes out at a
    time), each piece written straight to its place in ``out``: no copy of the whole chunk is made."""
    target = np.frombuffer(out, dtype=np.uint8)
    if itemsize <= 1:

        def put(pos: int, piece: bytes) -> None:
            target[pos : pos + len(piece)] = np.frombuffer(piece, dtype=np.uint8)

    else:
        n = nbytes // itemsize
        body = n * itemsize
        columns = target[:body].reshape(n, itemsize)

        def put(pos: int, piece: bytes) -> None:
            # piece of byte stream k goes straight to byte k of its elements: no shuffled copy is kept
            raw = np.frombuffer(piece, dtype=np.uint8)
            while len(raw) and pos < body:
                k, i = divmod(pos, n)
                m = min(len(raw), n - i)
                columns[i : i + m, k] = raw[:m]
                raw, pos = raw[m:], pos + m
            if len(raw):  # the bytes after the last whole element are not shuffled
                target[pos : pos + len(raw)] = raw

    _stream(data, nbytes, put, _streaming_module(decoder_name()), *pieces)


def _stream(data, nbytes: int, put, lib, in_piece: int, out_piece: int) -> None:
    """Inflate ``data`` in pieces, ``put(position, piece)`` each; exactly ``nbytes`` or a ChunkDecodeError."""
    d = lib.decompressobj()
    view = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else memoryview(data)
    pos = 0

    def take(piece: bytes) -> None:
        nonlocal pos
        if pos + len(piece) > nbytes:
            raise ChunkDecodeError(
                f"the zlib stream inflates to {pos + len(piece)}+ bytes, the chunk needs {nbytes}"
            )
        put(pos, piece)
        pos += len(piece)

    try:
        for start in range(0, len(view), in_piece):
            pending = view[start : start + in_piece]
            while pending and not d.eof:
                take(d.decompress(pending, min(out_piece, nbytes - pos + 1)))
                pending = d.unconsumed_tail
            if d.eof:
                break
        while not d.eof:  # output the inflater still holds after the last input
            piece = d.decompress(b"", min(out_piece, nbytes - pos + 1))
            if not piece:
                break
            take(piece)
    except lib.error as exc:
        raise ChunkDecodeError(f"zlib could not inflate the chunk: {exc}") from None
    if pos != nbytes or not d.eof:
        raise ChunkDecodeError(
            f"the zlib stream inflates to {pos} bytes{'' if d.eof else ' and ends early'}, the chunk needs {nbytes}"
        )


def compress(data, level: int, zlib_only: bool | None = None) -> bytes:
    """A standard zlib stream of ``data`` at ``level`` (libdeflate's when installed: faster at every level).

    ``zlib_only``: use Python's zlib (default: when the dask config asks for it).

    >>> zlib.decompress(compress(b"abc" * 100, 4)) == b"abc" * 100
    True
    """
    mod = _module("libdeflate")
    zlib_only = _choice() == "zlib" if zlib_only is None else zlib_only
    if mod is not None and 1 <= level <= 9 and not zlib_only:
        return bytes(mod.zlib_compress(data, level))
    return zlib.compress(data, level)


# -- HDF5's byte shuffle -------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _blosc2_lib():
    """c-blosc2's ``(blosc2_shuffle, blosc2_unshuffle)`` from the blosc2 wheel, or None."""
    try:
        spec = importlib.util.find_spec("blosc2")
        roots = list(spec.submodule_search_locations or ()) if spec else []
        for root in roots:
            for name in ("libblosc2.so", "libblosc2.dylib", "libblosc2.dll", "blosc2.dll"):
                path = os.path.join(root, "lib", name)
                if os.path.exists(path):
                    lib = ctypes.CDLL(path)  # CDLL calls release the GIL
                    fns = lib.blosc2_shuffle, lib.blosc2_unshuffle
                    for fn in fns:
                        fn.argtypes = [ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p]
                        fn.restype = ctypes.c_int32
                    return fns
    except (OSError, AttributeError, ImportError, ValueError):
        pass
    return None


def _planes(nbytes: int, itemsize: int, src: np.ndarray, dst: np.ndarray, forward: bool) -> None:
    n = nbytes // itemsize
    body = n * itemsize
    grid = (src if forward else dst)[:body].reshape(n, itemsize)
    flat = dst if forward else src
    for k in range(itemsize):  # one strided copy per byte plane (3-8x numpy's 2-d transpose)
        if forward:
            flat[k * n : (k + 1) * n] = grid[:, k]
        else:
            grid[:, k] = flat[k * n : (k + 1) * n]
    dst[body:] = src[body:]  # the bytes after the last whole element are not shuffled


def _permute(data, itemsize: int, out, forward: bool):
    src = np.frombuffer(data, dtype=np.uint8)
    nbytes = src.size
    dst = np.empty(nbytes, np.uint8) if out is None else np.frombuffer(out, dtype=np.uint8)
    if dst.size != nbytes:
        raise ChunkDecodeError(f"shuffled chunk is {nbytes} bytes, expected {dst.size}")
    if itemsize <= 1 or nbytes < itemsize:
        dst[:] = src
        return dst if out is None else out
    fns = _blosc2_lib()
    if fns is not None and nbytes < 1 << 31:
        done = fns[0 if forward else 1](itemsize, nbytes, src.ctypes.data, dst.ctypes.data)
        if done == nbytes:
            return dst if out is None else out
    _planes(nbytes, itemsize, src, dst, forward)
    return dst if out is None else out


def unshuffle(data, itemsize: int, out=None):
    """Undo HDF5's byte shuffle of ``itemsize``-byte items (into ``out`` when given).

    >>> unshuffle(bytes([1, 3, 2, 4]), 2).tolist()
    [1, 2, 3, 4]
    """
    return _permute(data, itemsize, out, forward=False)


def shuffle(data, itemsize: int, out=None):
    """HDF5's byte shuffle of ``itemsize``-byte items: byte *k* of every item, then byte *k + 1*.

    >>> shuffle(bytes([1, 2, 3, 4]), 2).tolist()
    [1, 3, 2, 4]
    """
    return _permute(data, itemsize, out, forward=True)

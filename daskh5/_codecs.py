"""Decoders for HDF5 chunk filters, keyed by HDF5 filter id.

A chunk's filter pipeline is applied in order when writing, so it is undone in
reverse order when reading.  Every decoder validates what it is given against
the size it must produce *before* handing bytes to a C decompressor: a header
that claims more data than the chunk holds is a :class:`ChunkDecodeError`, not
a buffer overrun.

Decoders are plain functions ``decode(data, cd_values, nbytes, itemsize, out)``
returning a buffer of exactly ``nbytes`` bytes (``out`` when it was used).
Filters without an entry in :data:`DECODERS` are read through h5py instead
(see :mod:`daskh5._reader`), but only those in :data:`SAFE_FILTERS`: HDF5
runs any filter a plugin registered, and some (SZ, SZ3, SPERR) end the process
on garbage input.  Others need the caller's ``allow_filters`` (see
:func:`allowed_filters`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

import numpy as np

from daskh5 import _deflate
from daskh5.errors import ChunkDecodeError

__all__ = [
    "BLOSC2_ID",
    "DECODERS",
    "FILTER_NAMES",
    "SAFE_FILTERS",
    "allowed_filters",
    "decode_pipeline",
    "filter_name",
    "pipeline_supported",
    "refused_filters",
]

ZLIB_ID = 1
SHUFFLE_ID = 2
FLETCHER32_ID = 3
BLOSC_ID = 32001
BLOSC2_ID = 32026

Decoder = Callable[..., object]

#: HDF5 filter id -> the name daskh5 uses for it (HDF5's built-ins, PyTables' and hdf5plugin's).
FILTER_NAMES: dict[int, str] = {
    ZLIB_ID: "zlib",
    SHUFFLE_ID: "shuffle",
    FLETCHER32_ID: "fletcher32",
    4: "szip",
    5: "nbit",
    6: "scaleoffset",
    305: "lzo",
    307: "bzip2",
    32000: "lzf",
    BLOSC_ID: "blosc",
    32004: "lz4",
    32008: "bitshuffle",
    32013: "zfp",
    32015: "zstd",
    32017: "sz",
    32018: "fcidecomp",
    32024: "sz3",
    BLOSC2_ID: "blosc2",
    32028: "sperr",
    32033: "htj2k",
}

#: Filters daskh5 decodes in files it does not trust: its own decoders, and the lossless
#: codecs PyTables, h5py (LZF, 32000) and hdf5plugin write, which HDF5 decodes with bounds checks.  Lossy
#: scientific codecs (SZ, SZ3, SPERR, ZFP...), image codecs and HDF5's nbit/scaleoffset are left
#: out: on damaged input some of them end or crash the process.  SZIP (4, libaec, which netCDF-4
#: files use) is lossless and in.
SAFE_FILTERS: frozenset[int] = frozenset(
    {ZLIB_ID, SHUFFLE_ID, FLETCHER32_ID, 4, 305, 307, 32000, BLOSC_ID, 32004, 32008, 32015, BLOSC2_ID}
)


def filter_name(fid: int) -> str:
    """The name of HDF5 filter ``fid``.

    >>> filter_name(32017), filter_name(40000)
    ('sz', 'filter 40000')
    """
    return FILTER_NAMES.get(int(fid), f"filter {int(fid)}")


_NAME_IDS = {name: fid for fid, name in FILTER_NAMES.items()} | {
    "gzip": ZLIB_ID,
    "deflate": ZLIB_ID,
    "bshuf": 32008,
}


def allowed_filters(allow_filters=()) -> frozenset[int]:
    """:data:`SAFE_FILTERS` plus the filters a caller trusts, given by id or name.

    >>> sorted(allowed_filters(["sz", 32024]) - SAFE_FILTERS)
    [32017, 32024]
    """
    if isinstance(allow_filters, (str, int)):
        allow_filters = [allow_filters]
    extra = set()
    for item in allow_filters or ():
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise TypeError(f"allow_filters: give HDF5 filter ids or names, got {item!r}")
        if isinstance(item, str):
            key = item.strip().lower()
            if key.isdigit():
                extra.add(int(key))
            elif key in _NAME_IDS:
                extra.add(_NAME_IDS[key])
            else:
                raise ValueError(
                    f"allow_filters: unknown filter name {item!r}; give its HDF5 filter id or one of "
                    + ", ".join(sorted(_NAME_IDS))
                )
        else:
            extra.add(int(item))
    return SAFE_FILTERS | frozenset(extra)


def refused_filters(filters: Sequence[tuple], allowed: frozenset[int] = SAFE_FILTERS) -> list[int]:
    """Ids of a pipeline's filters that are not in ``allowed``, in pipeline order.

    >>> refused_filters([(32017, ()), (1, (5,))])
    [32017]
    """
    return [int(f[0]) for f in filters if int(f[0]) not in allowed]


_BLOSC_HEADER = struct.Struct("<BBBBIII")


def _decode_blosc(data, cd_values: Sequence[int], nbytes: int, itemsize: int, out):
    """Decode one blosc1 buffer (any codec, byte- or bit-shuffle)."""
    blosc = _numcodecs_blosc()
    view = data if isinstance(data, memoryview) and data.format == "B" else memoryview(data).cast("B")
    if len(view) < _BLOSC_HEADER.size:
        raise ChunkDecodeError(f"blosc chunk is {len(view)} bytes, shorter than its 16-byte header")
    version, _vlz, _flags, _typesize, hdr_nbytes, blocksize, cbytes = _BLOSC_HEADER.unpack_from(view)
    if version == 0 or version > 4:
        raise ChunkDecodeError(f"blosc header has unknown format version {version}")
    if hdr_nbytes != nbytes:
        raise ChunkDecodeError(
            f"blosc header says the chunk holds {hdr_nbytes} bytes, the chunk shape needs {nbytes}"
        )
    if cbytes > len(view) or cbytes < _BLOSC_HEADER.size:
        raise ChunkDecodeError(
            f"blosc header says the chunk is {cbytes} bytes compressed, {len(view)} are stored"
        )
    if nbytes and blocksize == 0:
        raise ChunkDecodeError("blosc header has a zero block size")
    stored = int(cd_values[2]) if len(cd_values) > 2 else 0
    if 0 < stored <= 255 and _typesize != stored:  # the filter wrote it with this item size
        raise ChunkDecodeError(
            f"blosc header says {_typesize}-byte items, the node's blosc filter was set up for {stored}"
        )
    if out is None:
        out = bytearray(nbytes)
    try:
        blosc.decompress(view[:cbytes], out)
    except Exception as exc:  # numcodecs raises RuntimeError on bad payloads
        raise ChunkDecodeError(f"blosc could not decode the chunk: {exc}") from exc
    return out


def _numcodecs_blosc():
    global _blosc
    if _blosc is None:
        from numcodecs import blosc

        _blosc = blosc
    return _blosc


_blosc = None


def _decode_zlib(data, cd_values: Sequence[int], nbytes: int, itemsize: int, out):
    """Inflate a deflate stream to exactly the chunk size (see :mod:`daskh5._deflate` for the inflater)."""
    if out is None:
        return _deflate.inflate(data, nbytes)
    _deflate.inflate_into(data, nbytes, out)
    return out


def _inflate_unshuffled(data, shuffle_cd: Sequence[int], nbytes: int, itemsize: int, out):
    """zlib then HDF5's byte shuffle, straight into ``out``."""
    size = int(shuffle_cd[0]) if shuffle_cd else itemsize
    _deflate.inflate_into(data, nbytes, out, size)
    return out


def _decode_shuffle(data, cd_values: Sequence[int], nbytes: int, itemsize: int, out):
    """Undo HDF5's byte shuffle (trailing bytes that do not fill an element stay as they are)."""
    size = int(cd_values[0]) if cd_values else itemsize
    got = np.frombuffer(data, dtype=np.uint8).size
    if got != nbytes:
        raise ChunkDecodeError(f"shuffled chunk is {got} bytes, expected {nbytes}")
    return _deflate.unshuffle(data, size, out)


def _into(result, out):
    if out is None:
        return result
    np.frombuffer(out, dtype=np.uint8)[:] = np.frombuffer(result, dtype=np.uint8)
    return out


DECODERS: dict[int, Decoder] = {
    BLOSC_ID: _decode_blosc,
    ZLIB_ID: _decode_zlib,
    SHUFFLE_ID: _decode_shuffle,
}
"""Filter id -> decoder.  Blosc2 is handled by region (see :func:`decode_blosc2_region`)."""


def pipeline_supported(filters: Sequence[tuple[int, tuple[int, ...]]]) -> bool:
    """Whether every filter of a pipeline can be decoded without HDF5.

    >>> pipeline_supported([(32001, (2, 2, 8, 65536, 5, 1, 1))])
    True
    >>> pipeline_supported([(32001, ()), (3, ())])  # fletcher32 goes through h5py
    False
    """
    if len(filters) == 1 and filters[0][0] == BLOSC2_ID:
        return True
    return all(fid in DECODERS for fid, _ in filters)


def decode_pipeline(raw, filters, filter_mask: int, nbytes: int, itemsize: int, out=None):
    """Undo a chunk's filter pipeline, returning exactly ``nbytes`` bytes.

    ``filter_mask`` bit *i* set means filter *i* was skipped for this chunk
    (e.g. blosc stores incompressible chunks as they are).  When ``out`` (a
    writable buffer of ``nbytes``) is given, the last step decodes straight
    into it.
    """
    if len(filters) == 1 and not filter_mask:  # the common case, once per chunk: keep it short
        fid, cd = filters[0]
        return DECODERS[fid](raw, cd, nbytes, itemsize, out)
    active = [(i, f) for i, f in enumerate(filters) if not filter_mask & (1 << i)]
    if out is not None and [f[1][0] for f in active] == [SHUFFLE_ID, ZLIB_ID]:  # PyTables' zlib default
        return _inflate_unshuffled(raw, active[0][1][1], nbytes, itemsize, out)
    data = raw
    for step, (_i, (fid, cd)) in enumerate(reversed(active)):
        last = step == len(active) - 1
        data = DECODERS[fid](data, cd, nbytes, itemsize, out if last else None)
    if not active:
        if len(raw) != nbytes:
            raise ChunkDecodeError(f"stored chunk is {len(raw)} bytes, the chunk shape needs {nbytes}")
        data = _into(raw, out)
    return data


def decode_blosc2_region(
    raw,
    chunkshape: tuple[int, ...],
    dtype: np.dtype,
    region: tuple[slice, ...],
    out: np.ndarray | None = None,
):
    """Decode only ``region`` of a PyTables blosc2 chunk (into ``out``, a C-contiguous array of the
    region's shape, when given: PyTables' blosc2 chunks are big, and a copy of one doubles it).

    PyTables gives blosc2 nodes very large chunks split in small internal
    blocks, stored as a b2nd frame (n-d nodes) or a plain super-chunk frame
    (1-d nodes); slicing either decodes just the blocks that are needed.
    """
    import blosc2

    data = bytes(raw)
    nbytes = int(np.prod(chunkshape, dtype=np.int64)) * dtype.itemsize
    try:
        arr = blosc2.ndarray_from_cframe(data)
    except Exception:
        arr = None
    try:
        if arr is not None:
            if tuple(arr.shape) != tuple(chunkshape) or arr.dtype.itemsize != dtype.itemsize:
                raise ChunkDecodeError(
                    f"blosc2 frame holds shape {tuple(arr.shape)} of {arr.dtype.itemsize}-byte items, "
                    f"the node's chunks are {tuple(chunkshape)} of {dtype.itemsize}-byte items"
                )
            if out is not None and hasattr(arr, "get_slice_numpy"):
                bounds = (tuple(r.start for r in region), tuple(r.stop for r in region))
                arr.get_slice_numpy(out.view(arr.dtype), bounds)
                return out
            return np.ascontiguousarray(arr[region]).view(dtype)
        if len(chunkshape) != 1:
            raise ChunkDecodeError("blosc2 chunk is neither a b2nd frame nor a 1-d super-chunk")
        schunk = blosc2.schunk_from_cframe(data)
        if schunk.typesize != dtype.itemsize or schunk.nbytes != nbytes:
            raise ChunkDecodeError(
                f"blosc2 super-chunk holds {schunk.nbytes} bytes of {schunk.typesize}-byte items, "
                f"the node's chunks are {nbytes} bytes of {dtype.itemsize}-byte items"
            )
        (r,) = region
        if out is not None:
            schunk.get_slice(r.start, r.stop, out=out)
            return out
        return np.frombuffer(schunk.get_slice(r.start, r.stop), dtype=dtype).copy()
    except ChunkDecodeError:
        raise
    except Exception as exc:
        raise ChunkDecodeError(f"blosc2 could not decode the chunk: {exc}") from exc

"""Compress blocks into HDF5 chunks exactly as PyTables' filters would, off the writer.

Where the node's filters allow it (none, blosc with any codec and shuffle or
bitshuffle, zlib with or without shuffle), each worker turns its block into
the bytes of every HDF5 chunk it covers; the single writer then stores them
with ``Leaf.write_chunk`` (PyTables >= 3.10) and never compresses anything
itself.  Other filters (blosc2, fletcher32, LZO, bzip2) are written by
PyTables in the writer.

Edge chunks are padded to the full chunkshape, as HDF5 stores them.  Deflate
is libdeflate's when it is installed (:func:`daskh5._deflate.compress`: a
standard zlib stream, faster than zlib at every level).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from daskh5 import _deflate

__all__ = ["ChunkEncoder", "encoder_for"]

_BLOSC_CODECS = {
    "blosc": "blosclz",
    "blosclz": "blosclz",
    "lz4": "lz4",
    "lz4hc": "lz4hc",
    "zlib": "zlib",
    "zstd": "zstd",
}


@dataclass(frozen=True)
class ChunkEncoder:
    """Plain data describing one node's filter pipeline; ``encode_block`` runs in dask tasks."""

    kind: str  # "raw", "blosc" or "zlib"
    chunkshape: tuple[int, ...]
    dtype: np.dtype
    clevel: int = 0
    cname: str = ""
    shuffle: int = 0  # 0 none, 1 byte shuffle, 2 bit shuffle (blosc only)
    # the deflate switch as configured where the graph is built (worker processes do not see
    # the caller's dask config)
    deflate: str = field(default_factory=lambda: _deflate._choice())

    def encode_chunk(self, chunk: np.ndarray) -> bytes:
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        if self.kind == "raw":
            return chunk.tobytes()
        if self.kind == "blosc":
            from numcodecs import blosc

            return blosc.compress(chunk, self.cname.encode(), self.clevel, self.shuffle, 0)
        raw = chunk.view(np.uint8).reshape(-1)
        if self.shuffle:
            raw = _deflate.shuffle(raw, self.dtype.itemsize)
        return _deflate.compress(raw, self.clevel, zlib_only=self.deflate == "zlib")

    def encode_block(self, block: np.ndarray, origin: tuple[int, ...]) -> list[tuple[tuple[int, ...], bytes]]:
        """``[(chunk start coordinates, stored bytes), ...]`` for every chunk of ``block``.

        ``block`` starts at ``origin`` (chunk-aligned) in the node.
        """
        cs = self.chunkshape
        out = []
        ranges = [range(0, n, c) for n, c in zip(block.shape, cs, strict=True)]
        for start in itertools.product(*ranges):
            region = tuple(slice(s, s + c) for s, c in zip(start, cs, strict=True))
            part = block[region]
            if part.shape != cs:  # edge chunk: stored full size, padded
                full = np.zeros(cs, dtype=self.dtype)
                full[tuple(slice(0, n) for n in part.shape)] = part
                part = full
            coords = tuple(o + s for o, s in zip(origin, start, strict=True))
            out.append((coords, self.encode_chunk(part)))
        return out


def encoder_for(filters, dtype: np.dtype, chunkshape: tuple[int, ...]) -> ChunkEncoder | None:
    """The encoder for a ``tables.Filters``, or ``None`` when PyTables must compress itself."""
    dtype = np.dtype(dtype)
    if filters is None or filters.fletcher32:
        return None if filters is not None else ChunkEncoder("raw", chunkshape, dtype)
    if not filters.complevel:
        return ChunkEncoder("raw", chunkshape, dtype)
    lib = filters.complib or "zlib"
    if lib.startswith("blosc") and not lib.startswith("blosc2"):
        codec = lib.split(":", 1)[1] if ":" in lib else "blosc"
        if codec not in _BLOSC_CODECS or dtype.itemsize > 255:
            return None
        shuffle = 2 if filters.bitshuffle else 1 if filters.shuffle else 0
        return ChunkEncoder("blosc", chunkshape, dtype, filters.complevel, _BLOSC_CODECS[codec], shuffle)
    if lib == "zlib":
        return ChunkEncoder("zlib", chunkshape, dtype, filters.complevel, "", 1 if filters.shuffle else 0)
    return None

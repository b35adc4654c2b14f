"""A corpus of hostile and damaged HDF5 files, and a checker that runs every daskh5 entry point on it.

Generating (deterministic: fixed seeds)::

    python -m tests.corpus OUTDIR            # write the corpus and OUTDIR/corpus.json
    python -m tests.corpus OUTDIR --check    # ... and run the matrix, print the summary

Base files are written by PyTables, one primary node each (blosc and zlib
CArrays, a contiguous Array, an unfiltered EArray, a Table, a flat ragged layout
written by :func:`daskh5.write_ragged`, a VLArray with a shape column).  Their
data and metadata byte ranges are located with h5py (chunk index, contiguous
data blocks, global heap collections); everything else in the file is
metadata.  Damaged variants of every base:

* truncated at several offsets (HDF5 knows its end of allocation, so a short
  file is always detectable);
* bytes flipped in chunk payloads (detectable only where the pipeline has a
  checksum: zlib's adler32; blosc1 chunks and unfiltered data have none, and
  PyTables writes no fletcher32);
* bytes flipped in metadata (superblock, object headers, B-trees, heaps);
* blosc headers claiming more (or fewer) bytes than the chunk holds, huge block
  sizes, block starts past the end, a "stored uncompressed" flag;
* blosc2 frame headers with flipped bytes;
* object header messages that lie (fill value, dataspace, datatype, layout and
  filter pipeline sizes, ranks and counts);
* chunk index entries (v1 B-tree children) and contiguous data addresses
  pointing past the end of the file, chunk sizes beyond the end or cut in half,
  and an index entry redirected to another chunk (undetectable: the other
  chunk is valid);

plus files that are not HDF5 at all: zero length, text named ``.h5``, a
directory named ``x.h5``, an HDF5 signature followed by garbage, random bytes,
and a missing file.

Every variant records its base, its kind, what was done, and whether the
damage is detectable in principle (``detectable``: ``True``; ``False`` with the
reason; or ``"hdf5"``: metadata damage in a format without checksums, see
:func:`classify`).

Checking runs each (variant, entry point) in worker subprocesses: a worker
imports everything once and forks a child per variant, so a segfault or an
abort (``PYTHONMALLOC=debug`` turns a heap overrun of a Python buffer into one)
costs a fork and is pinned to its check; a check that exceeds its time limit
is a hang (its worker is killed).  One JSON line per check; outcomes are
classified by :func:`classify`.

The pickle traps (:func:`build_trapped`) are a separate file whose attributes
(root, group, node, pandas metadata) and ObjectAtom rows create a marker file
when unpickled; :func:`hostile_steps` runs every entry point on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

ENTRY_POINTS = (
    "from_pytables",
    "read_ragged",
    "open_ragged",
    "xr.open_dataset",
    "xr.open_datatree",
    "info",
    "info --json",
)
OUTCOMES = ("ok-correct", "clear-error", "undetectable-damage", "WRONG", "other-exception", "crash", "hang")
BAD_OUTCOMES = ("WRONG", "other-exception", "crash", "hang")

METADATA_FLIPS = 12  # variants with one random metadata byte flipped, per base
HEADER_FLIPS = 5  # variants with one byte of a primary node's object header flipped, per node
BLOSC2_HEADER = 96  # bytes at the start of a blosc2 frame treated as its header

NO_CHECKSUM_META = (
    "PyTables writes a version-0 superblock and version-1 object headers, B-trees and heaps: "
    "none has a checksum"
)


# -- base files ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Base:
    name: str
    path: str
    array_node: str | None  # what from_pytables reads
    ragged_node: str | None  # what read_ragged / open_ragged read
    primary: tuple[str, ...]  # the nodes whose payload and index get damaged


def _samples_2d(rng, n: int, dtype) -> list[np.ndarray]:
    return [rng.normal(size=(int(a), int(b))).astype(dtype) for a, b in rng.integers(1, 9, size=(n, 2))]


def build_bases(outdir: str | os.PathLike) -> dict[str, Base]:
    """Write the undamaged base files into ``outdir`` (PyTables, fixed seeds)."""
    import tables

    import daskh5

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    bases: dict[str, Base] = {}

    def add(name, array_node, ragged_node, primary):
        bases[name] = Base(name, str(outdir / f"{name}.h5"), array_node, ragged_node, tuple(primary))
        return bases[name].path

    rng = np.random.default_rng(20240601)
    path = add("carray_blosc", "/data", None, ["/data"])
    with tables.open_file(path, "w") as f:
        f.create_carray(
            "/",
            "data",
            obj=rng.normal(size=(4000, 3)),
            chunkshape=(250, 3),
            filters=tables.Filters(5, "blosc:lz4", shuffle=True),
            track_times=False,
        )
    path = add("carray_zlib", "/data", None, ["/data"])
    with tables.open_file(path, "w") as f:
        f.create_carray(
            "/",
            "data",
            obj=rng.integers(0, 100, size=8000).astype("f8"),
            chunkshape=(500,),
            filters=tables.Filters(5, "zlib", shuffle=True),
            track_times=False,
        )
    path = add("carray_blosc2", "/data", None, ["/data"])  # chunks are b2nd frames
    with tables.open_file(path, "w") as f:
        f.create_carray(
            "/",
            "data",
            obj=rng.integers(0, 1000, size=(600, 40)).astype("f4"),
            chunkshape=(100, 40),
            filters=tables.Filters(5, "blosc2:zstd", shuffle=True),
            track_times=False,
        )
    path = add("earray_blosc2", "/data", None, ["/data"])  # 1-d: chunks are super-chunk frames
    with tables.open_file(path, "w") as f:
        e = f.create_earray(
            "/",
            "data",
            atom=tables.Int64Atom(),
            shape=(0,),
            chunkshape=(1000,),
            filters=tables.Filters(5, "blosc2:lz4"),
            track_times=False,
        )
        e.append(rng.integers(0, 10**6, size=5500))
    path = add("array_contig", "/data", None, ["/data"])
    with tables.open_file(path, "w") as f:
        f.create_array("/", "data", obj=rng.integers(-(10**9), 10**9, size=5000), track_times=False)
    path = add("earray", "/data", None, ["/data"])
    with tables.open_file(path, "w") as f:
        e = f.create_earray(
            "/", "data", atom=tables.Int32Atom(), shape=(0, 4), chunkshape=(256, 4), track_times=False
        )
        for _ in range(3):
            e.append(rng.integers(-1000, 1000, size=(1000, 4)).astype("i4"))
    path = add("table", None, None, ["/table"])
    with tables.open_file(path, "w") as f:
        rows = np.zeros(3000, dtype=[("x", "f8"), ("n", "i4"), ("s", "S4"), ("flag", "?")])
        rows["x"] = rng.normal(size=3000)
        rows["n"] = rng.integers(0, 50, size=3000)
        rows["s"] = [b"ab%02d" % (i % 100) for i in range(3000)]
        rows["flag"] = rng.integers(0, 2, size=3000).astype(bool)
        f.create_table(
            "/",
            "table",
            obj=rows,
            chunkshape=(400,),
            filters=tables.Filters(5, "blosc:zstd"),
            track_times=False,
        )
    path = add(
        "ragged_flat", "/samples", "/samples", ["/samples", "/samples_start_and_stop", "/samples_shape"]
    )
    daskh5.write_ragged(_samples_2d(rng, 300, "f4"), path, "/samples", mode="w", progress=False)
    _pin_times(path)  # write_ragged records modification times: make the bytes reproducible
    path = add("ragged_vl", None, "/samples", ["/samples", "/samples_shape"])
    with tables.open_file(path, "w") as f:
        vl = f.create_vlarray("/", "samples", atom=tables.Int16Atom(), track_times=False)
        shapes = []
        for s in _samples_2d(rng, 200, "f4"):
            vl.append((s * 1000).astype("i2").ravel())
            shapes.append(s.shape)
        f.create_array("/", "samples_shape", obj=np.array(shapes, dtype="i8"), track_times=False)
    return bases


# -- where the bytes are ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Extent:
    """One stored chunk (or contiguous block, or heap object) of a node."""

    node: str
    start: int
    size: int
    filters: tuple[int, ...]  # HDF5 filter ids applied to these bytes
    chunk: int | None = None  # chunk number (chunked layout)
    rank: int = 0


def data_extents(path: str) -> list[Extent]:
    """Every chunk and contiguous data block of every dataset in ``path``."""
    import h5py

    out: list[Extent] = []
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            dcpl = obj.id.get_create_plist()
            fids = tuple(dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters()))
            if obj.chunks:
                for i in range(obj.id.get_num_chunks()):
                    ci = obj.id.get_chunk_info(i)
                    active = tuple(fid for j, fid in enumerate(fids) if not ci.filter_mask & (1 << j))
                    out.append(Extent("/" + name, ci.byte_offset, ci.size, active, i, len(obj.shape)))
            elif dcpl.get_layout() == h5py.h5d.CONTIGUOUS and obj.id.get_storage_size():
                out.append(Extent("/" + name, obj.id.get_offset(), obj.id.get_storage_size(), (), None, 0))

        f.visititems(visit)
    return out


def heap_collections(data: bytes) -> list[tuple[int, int]]:
    """(start, size) of every global heap collection (where VLArray rows keep their values)."""
    out = []
    pos = data.find(b"GCOL")
    while pos >= 0:
        if pos + 16 <= len(data) and data[pos + 4] == 1:
            (csize,) = struct.unpack_from("<Q", data, pos + 8)
            out.append((pos, int(csize)))
        pos = data.find(b"GCOL", pos + 4)
    return out


def heap_objects(data: bytes) -> list[tuple[int, int]]:
    """(start, size) of the bytes of every object in every global heap collection."""
    out = []
    for pos, csize in heap_collections(data):
        p, end = pos + 16, min(len(data), pos + csize)
        while p + 16 <= end:
            index, _refs, _res, size = struct.unpack_from("<HHIQ", data, p)
            if index == 0:  # free space: the rest of the collection
                break
            out.append((p + 16, int(size)))
            p += 16 + (int(size) + 7) // 8 * 8
    return out


def metadata_positions(data: bytes, extents: list[Extent]) -> np.ndarray:
    """Offsets of every byte that is not chunk/contiguous data or a global heap collection."""
    meta = np.ones(len(data), dtype=bool)
    for e in extents:
        meta[e.start : e.start + e.size] = False
    for start, size in heap_collections(data):
        meta[start : start + size] = False
    return np.flatnonzero(meta)


def object_header(path: str, node: str) -> tuple[int, int]:
    """(address, size) of a node's object header."""
    import h5py

    with h5py.File(path, "r") as f:
        info = h5py.h5o.get_info(f[node].id)
        return int(info.addr), int(info.hdr.space.total) + 16


def header_messages(data: bytes, addr: int) -> dict[int, tuple[int, int]]:
    """``{message type: (offset of its data, size)}`` of a version-1 object header (continuations too)."""
    if addr + 16 > len(data) or data[addr] != 1:
        return {}
    out: dict[int, tuple[int, int]] = {}
    (size,) = struct.unpack_from("<I", data, addr + 8)
    blocks = [(addr + 16, size)]
    while blocks:
        p, size = blocks.pop(0)
        end = min(len(data), p + size)
        while p + 8 <= end:
            mtype, msize = struct.unpack_from("<HH", data, p)
            out.setdefault(mtype, (p + 8, msize))
            if mtype == 0x10 and msize >= 16:  # continuation: more messages elsewhere
                blocks.append(struct.unpack_from("<QQ", data, p + 8))
            p += 8 + msize
    return out


#: (message type, name, offset in the message, struct format, value): lies in an object header.
HEADER_LIES = (
    (0x05, "fillvalue-size-huge", 4, "<I", 0xED000000),  # the fill value's size
    (0x05, "fillvalue-size-256", 4, "<I", 256),
    (0x01, "dataspace-rank-255", 1, "<B", 255),
    (0x01, "dataspace-dim0-2e62", 8, "<Q", 1 << 62),
    (0x03, "datatype-size-0", 4, "<I", 0),
    (0x03, "datatype-size-2GiB", 4, "<I", 1 << 31),
    (0x08, "layout-rank-255", 2, "<B", 255),  # "layout-": chunked layout (version 3) only
    (0x08, "layout-dim0-0", 11, "<I", 0),
    (0x08, "layout-dim0-4G", 11, "<I", 0xFFFFFFFF),
    (0x08, "contiguous-size-2e62", 10, "<Q", 1 << 62),  # "contiguous-": contiguous layout only
    (0x0B, "filters-count-255", 1, "<B", 255),
    (0x0B, "filter-cd-count-huge", 14, "<H", 0xFFFF),
)


def _pin_times(path: str) -> None:
    """Set the modification time (message 0x12) of every object header of ``path`` to 0."""
    import h5py

    headers = []
    with h5py.File(path, "r") as f:
        f.visit(lambda name: headers.append(object_header(f.filename, "/" + name)[0]))
    data = bytearray(Path(path).read_bytes())
    for addr in headers:
        where = header_messages(bytes(data), addr).get(0x12)
        if where and where[1] >= 8:
            data[where[0] + 4 : where[0] + 8] = bytes(4)  # version(1), reserved(3), seconds(4)
    Path(path).write_bytes(bytes(data))


def btree_child(data: bytes, e: Extent) -> int | None:
    """Where the v1 B-tree stores the address of chunk ``e`` (its key precedes it), or None."""
    pat = struct.pack("<Q", e.start)
    keylen = 8 + 8 * (e.rank + 1)
    hits, p = [], data.find(pat)
    while p >= 0:
        k = p - keylen
        if k >= 0 and struct.unpack_from("<I", data, k)[0] == e.size and not e.start <= p < e.start + e.size:
            hits.append(p)
        p = data.find(pat, p + 1)
    return hits[0] if len(hits) == 1 else None


def layout_address(data: bytes, e: Extent) -> int | None:
    """Where a version-3 contiguous layout message stores the data address of ``e``, or None."""
    pat = bytes([3, 1]) + struct.pack("<QQ", e.start, e.size)
    p = data.find(pat)
    return p + 2 if p >= 0 and data.find(pat, p + 1) < 0 else None


# -- variants -----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Variant:
    id: str
    base: str  # base name, or "-" for files that are not HDF5 at all
    kind: str
    path: str
    detail: str
    detectable: bool | str  # True, False (see why), or "hdf5" (see module docstring)
    why: str = ""
    array_node: str | None = None
    ragged_node: str | None = None

    def entry_points(self) -> list[str]:
        eps = []
        if self.array_node:
            eps.append("from_pytables")
        if self.ragged_node:
            eps += ["read_ragged", "open_ragged"]
        return eps + ["xr.open_dataset", "xr.open_datatree", "info", "info --json"]


def _flip(data: bytearray, positions, rng) -> list[int]:
    done = []
    for p in positions:
        data[int(p)] ^= int(rng.integers(1, 256))
        done.append(int(p))
    return done


def _blosc_streams(raw: bytes) -> tuple[int, int] | None:
    """(first, end) of a blosc1 chunk's compressed streams (after header and block starts)."""
    if len(raw) < 16:
        return None
    _v, _vlz, flags, _ts, nbytes, blocksize, cbytes = struct.unpack_from("<BBBBIII", raw)
    if flags & 0x02 or not blocksize:  # stored uncompressed: no block starts
        return 16, min(cbytes, len(raw))
    nblocks = -(-nbytes // blocksize)
    return 16 + 4 * nblocks, min(cbytes, len(raw))


class _Maker:
    def __init__(self, outdir: Path, base: Base):
        self.outdir, self.base = outdir, base
        self.data = Path(base.path).read_bytes()
        self.extents = data_extents(base.path)
        self.primary = [e for e in self.extents if e.node in base.primary]
        self.variants: list[Variant] = []

    def write(self, kind: str, tag: str, data: bytes, detail: str, detectable, why: str = "") -> Variant:
        vid = f"{self.base.name}.{kind}.{tag}" if tag else f"{self.base.name}.{kind}"
        path = self.outdir / f"{vid}.h5"
        path.write_bytes(bytes(data))
        v = Variant(
            vid,
            self.base.name,
            kind,
            str(path),
            detail,
            detectable,
            why,
            self.base.array_node,
            self.base.ragged_node,
        )
        self.variants.append(v)
        return v

    def pristine(self):
        self.write("pristine", "", self.data, "the undamaged base file", True)

    def truncations(self):
        n = len(self.data)
        cuts = {"100B": 100, "quarter": n // 4, "half": n // 2, "three-quarters": 3 * n // 4, "minus1": n - 1}
        first = min(e.start for e in self.extents) if self.extents else None
        if first:
            cuts["first-data"] = first  # metadata before the data survives, every data byte is gone
        last = max(self.extents, key=lambda e: e.start) if self.extents else None
        if last:
            cuts["mid-last-data"] = last.start + last.size // 2
        for tag, cut in cuts.items():
            self.write(
                "truncate",
                tag,
                self.data[:cut],
                f"truncated to {cut} of {n} bytes",
                True,
            )

    def payload_flips(self, rng):
        vl = self.base.name == "ragged_vl"
        if vl:  # the values of a VLArray live in global heap objects
            objs = [o for o in heap_objects(self.data) if o[1] > 0]
            spans = [(s, s + n, "heap object", ()) for s, n in objs]
        else:
            spans = []
            for e in self.primary:
                lo, hi = e.start, e.start + e.size
                if 32001 in e.filters:
                    b = _blosc_streams(self.data[lo:hi])
                    if b:
                        lo, hi = e.start + b[0], e.start + b[1]
                elif 32026 in e.filters:  # past the frame header (see blosc2_frames)
                    lo = e.start + min(BLOSC2_HEADER, e.size // 2)
                spans.append((lo, hi, f"{e.node} chunk {e.chunk}", e.filters))
        spans = [s for s in spans if s[1] > s[0]]
        if not spans:
            return
        for tag, count, nspans in (("1byte", 1, 1), ("16bytes", 16, 4)):
            picked = [
                spans[int(i)] for i in rng.choice(len(spans), size=min(nspans, len(spans)), replace=False)
            ]
            data = bytearray(self.data)
            where = []
            for k in range(count):
                lo, hi, what, filters = picked[k % len(picked)]
                where += [(what, p) for p in _flip(data, [rng.integers(lo, hi)], rng)]
            filters = {f for s in picked for f in s[3]}
            if 1 in filters:
                detectable, why = True, ""
            else:
                detectable = False
                if 32001 in filters or 32026 in filters:
                    why = "blosc and blosc2 chunks carry no checksum, and PyTables writes no fletcher32"
                else:
                    why = "unfiltered data has no checksum in HDF5"
            detail = (
                "flipped " + ", ".join(f"{w}@{p}" for w, p in where[:6]) + ("..." if len(where) > 6 else "")
            )
            self.write("flip-payload", tag, data, detail, detectable, why)

    def metadata_flips(self, rng):
        meta = metadata_positions(self.data, self.extents)
        for seed in range(METADATA_FLIPS):
            data = bytearray(self.data)
            pos = _flip(data, [meta[rng.integers(len(meta))]], rng)
            self.write(
                "flip-metadata", f"s{seed}", data, f"flipped metadata byte {pos[0]}", "hdf5", NO_CHECKSUM_META
            )
        data = bytearray(self.data)
        pos = _flip(data, rng.choice(meta, size=32, replace=False), rng)
        self.write(
            "flip-metadata",
            "burst32",
            data,
            f"flipped 32 metadata bytes {pos[:4]}...",
            "hdf5",
            NO_CHECKSUM_META,
        )
        data = bytearray(self.data)
        pos = _flip(data, [rng.integers(8, 96)], rng)
        self.write("flip-superblock", "", data, f"flipped superblock byte {pos[0]}", "hdf5", NO_CHECKSUM_META)
        for node in self.base.primary[:2]:
            addr, size = object_header(self.base.path, node)
            for k in range(HEADER_FLIPS):
                data = bytearray(self.data)
                pos = _flip(data, [rng.integers(addr, addr + size)], rng)
                self.write(
                    "flip-header",
                    f"{node.strip('/')}.{k}",
                    data,
                    f"flipped byte {pos[0] - addr} of the object header of {node} (at {addr}, {size} bytes)",
                    "hdf5",
                    NO_CHECKSUM_META,
                )

    def header_lies(self):
        """Object header messages of the primary node that lie about sizes, ranks and counts."""
        node = self.base.primary[0]
        addr, _size = object_header(self.base.path, node)
        messages = header_messages(self.data, addr)
        for mtype, tag, off, fmt, value in HEADER_LIES:
            if mtype not in messages or off + struct.calcsize(fmt) > messages[mtype][1]:
                continue
            layout_class = self.data[messages[0x08][0] + 1] if 0x08 in messages else None
            if (tag.startswith("layout-") and layout_class != 2) or (
                tag.startswith("contiguous-") and layout_class != 1
            ):
                continue
            p = messages[mtype][0] + off
            data = bytearray(self.data)
            struct.pack_into(fmt, data, p, value)
            if data == self.data:
                continue
            self.write(
                "header-message",
                tag,
                data,
                f"object header message {mtype:#x} of {node}: {struct.calcsize(fmt)} bytes at {p} set to {value}",
                "hdf5",
                NO_CHECKSUM_META,
            )

    def blosc_headers(self):
        chunks = [e for e in self.primary if 32001 in e.filters and e.size >= 32]
        if not chunks:
            return
        e = chunks[min(1, len(chunks) - 1)]
        raw = self.data[e.start : e.start + e.size]
        _v, _vlz, flags, _typesize, nbytes, _blocksize, cbytes = struct.unpack_from("<BBBBIII", raw)
        where = f"{e.node} chunk {e.chunk} (blosc header at {e.start}: nbytes {nbytes}, cbytes {cbytes})"
        patches = {
            "nbytes-x4": (4, struct.pack("<I", nbytes * 4)),
            "nbytes-1GiB": (4, struct.pack("<I", 1 << 30)),
            "cbytes-past-chunk": (12, struct.pack("<I", e.size + 4096)),
            "cbytes-2GiB": (12, struct.pack("<I", 0x7FFFFFFF)),
            "cbytes-tiny": (12, struct.pack("<I", 20)),
            "blocksize-1GiB": (8, struct.pack("<I", 1 << 30)),
            "blocksize-1": (8, struct.pack("<I", 1)),
            "memcpyed-flag": (2, bytes([flags | 0x02])),
            "version-0": (0, b"\x00"),
            "typesize-0": (3, b"\x00"),
            "typesize-255": (3, b"\xff"),
            "bstart-past-end": (16, struct.pack("<I", e.size + 100000)),
        }
        for tag, (off, patch) in patches.items():
            data = bytearray(self.data)
            data[e.start + off : e.start + off + len(patch)] = patch
            self.write("blosc-header", tag, data, f"{tag} in {where}", True)

    def blosc2_frames(self, rng):
        """Flip bytes of a blosc2 frame's header (sizes, offsets, codec flags)."""
        chunks = [e for e in self.primary if 32026 in e.filters and e.size > BLOSC2_HEADER]
        if not chunks:
            return
        e = chunks[min(1, len(chunks) - 1)]
        for k in range(4):
            data = bytearray(self.data)
            pos = _flip(data, [e.start + int(rng.integers(BLOSC2_HEADER))], rng)
            self.write(
                "blosc2-frame-header",
                f"{k}",
                data,
                f"flipped byte {pos[0] - e.start} of the blosc2 frame of {e.node} chunk {e.chunk}",
                False,
                "a blosc2 frame header carries no checksum: a flipped flag can change how valid data decodes",
            )

    def index_entries(self):
        chunked = [e for e in self.primary if e.chunk is not None]
        for node in dict.fromkeys(e.node for e in chunked):
            mine = [x for x in chunked if x.node == node]
            e = mine[min(1, len(mine) - 1)]
            p = btree_child(self.data, e)
            if p is None:
                continue
            name = e.node.strip("/")
            far = len(self.data) + (1 << 20)
            data = bytearray(self.data)
            data[p : p + 8] = struct.pack("<Q", far)
            self.write(
                "index-past-eof",
                f"{name}.addr",
                data,
                f"B-tree entry of {e.node} chunk {e.chunk} points at {far} (file is {len(self.data)} bytes)",
                True,
            )
            keylen = 8 + 8 * (e.rank + 1)
            data = bytearray(self.data)
            data[p - keylen : p - keylen + 4] = struct.pack("<I", len(self.data) * 2)
            self.write(
                "index-past-eof",
                f"{name}.size",
                data,
                f"B-tree entry of {e.node} chunk {e.chunk} claims {len(self.data) * 2} stored bytes",
                True,
            )
            data = bytearray(self.data)
            data[p - keylen : p - keylen + 4] = struct.pack("<I", e.size // 2)
            self.write(
                "index-short",
                name,
                data,
                f"B-tree entry of {e.node} chunk {e.chunk} claims {e.size // 2} of its {e.size} stored bytes",
                True,
            )
            others = [x for x in chunked if x.node == e.node and x.chunk != e.chunk and x.size == e.size]
            if others:
                o = others[-1]
                data = bytearray(self.data)
                data[p : p + 8] = struct.pack("<Q", o.start)
                self.write(
                    "index-alias",
                    name,
                    data,
                    f"B-tree entry of {e.node} chunk {e.chunk} points at chunk {o.chunk} (same stored size)",
                    False,
                    "the redirected entry points at a valid chunk of the right size: nothing in the file "
                    "says it is the wrong one",
                )
        for e in self.primary:
            if e.chunk is None:
                p = layout_address(self.data, e)
                if p is None:
                    continue
                far = len(self.data) + (1 << 20)
                data = bytearray(self.data)
                data[p : p + 8] = struct.pack("<Q", far)
                self.write(
                    "index-past-eof",
                    f"{e.node.strip('/')}.contiguous",
                    data,
                    f"layout message of {e.node} puts its data at {far} (file is {len(self.data)} bytes)",
                    True,
                )

    def vlen_descriptors(self, rng):
        """Flip a byte of a row descriptor of the VLArray (16 bytes a row: length, heap collection, index)."""
        import h5py

        node = self.base.ragged_node
        own = [e for e in self.extents if e.node == node and e.chunk == 0]
        if self.base.name != "ragged_vl" or not own:
            return
        with h5py.File(self.base.path, "r") as f:
            rows = min(int(f[node].shape[0]), int(f[node].chunks[0]))
        for field, (lo, hi) in {"length": (0, 4), "collection": (4, 12), "index": (12, 16)}.items():
            row = int(rng.integers(rows))
            data = bytearray(self.data)
            pos = _flip(data, [own[0].start + 16 * row + int(rng.integers(lo, hi))], rng)
            self.write(
                "flip-vlen-descriptor",
                field,
                data,
                f"flipped byte {pos[0]}: the {field} field of row {row}'s descriptor in {node}",
                "hdf5",
                "row descriptors have no checksum; a flipped heap index can name another valid object",
            )


def special_variants(outdir: Path) -> list[Variant]:
    """Files that are not HDF5 at all."""
    rng = np.random.default_rng(7)
    out = []

    def add(name, kind, detail, make):
        path = outdir / name
        make(path)
        out.append(Variant(f"special.{kind}", "-", kind, str(path), detail, True, "", "/data", "/data"))

    add("empty.h5", "zero-length", "a zero-length file", lambda p: p.write_bytes(b""))
    add("text.h5", "text", "a text file named .h5", lambda p: p.write_text("this is not HDF5\n" * 200))
    add("x.h5", "directory", "a directory named x.h5", lambda p: p.mkdir())
    add(
        "signature.h5",
        "signature-then-garbage",
        "the HDF5 signature followed by 4 KiB of random bytes",
        lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + rng.bytes(4096)),
    )
    add("random.h5", "random-bytes", "64 KiB of random bytes", lambda p: p.write_bytes(rng.bytes(65536)))
    add("missing.h5", "missing", "a path that does not exist", lambda p: None)
    return out


def generate(outdir: str | os.PathLike) -> tuple[dict[str, Base], list[Variant]]:
    """Write the base files and every variant under ``outdir``; also ``outdir/corpus.json``."""
    outdir = Path(outdir)
    bases = build_bases(outdir / "bases")
    vdir = outdir / "variants"
    if vdir.exists():
        shutil.rmtree(vdir)
    vdir.mkdir(parents=True)
    variants: list[Variant] = []
    for base in bases.values():
        rng = np.random.default_rng(
            zlib.crc32(base.name.encode())
        )  # a base's variants do not depend on the others
        m = _Maker(vdir, base)
        m.pristine()
        m.truncations()
        m.payload_flips(rng)
        m.metadata_flips(rng)
        m.header_lies()
        m.blosc_headers()
        m.blosc2_frames(rng)
        m.index_entries()
        m.vlen_descriptors(rng)
        variants += m.variants
    variants += special_variants(vdir)
    (outdir / "corpus.json").write_text(
        json.dumps(
            {
                "bases": [dataclasses.asdict(b) for b in bases.values()],
                "variants": [dataclasses.asdict(v) for v in variants],
            },
            indent=1,
        )
    )
    return bases, variants


# -- pickled payloads ---------------------------------------------------------------------------------------
class Trap:
    """Unpickling this creates the marker file (pickling it does nothing)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


#: (location, node, attribute) of every pickled attribute trap of :func:`build_trapped`.
ATTR_TRAPS = (
    ("root-attr", "/", "trap"),
    ("group-attr", "/group", "trap"),
    ("carray-attr", "/data", "trap"),
    ("array-attr", "/group/contig", "trap"),
    ("earray-attr", "/earray", "trap"),
    ("table-attr", "/table", "trap"),
    ("vlarray-attr", "/vl", "trap"),
    ("objectatom-attr", "/objs", "trap"),
    ("ragged-attr", "/ragged", "trap"),
    ("ragged-start-stop-attr", "/ragged_start_and_stop", "trap"),
    ("ragged-shape-attr", "/ragged_shape", "trap"),
    ("pandas-info", "/frame", "info"),
    ("pandas-non-index-axes", "/frame", "non_index_axes"),
    ("pandas-data-columns", "/frame", "data_columns"),
    ("pandas-index-cols", "/frame", "index_cols"),
    ("pandas-values-cols", "/frame", "values_cols"),
    ("pandas-levels", "/frame", "levels"),
    ("pandas-nan-rep", "/frame", "nan_rep"),
    ("pandas-table-kind", "/frame/table", "values_block_0_kind"),
    ("pandas-data-column-kind", "/frame/table", "b_kind"),
    ("pandas-index-kind", "/frame/table", "index_kind"),
    ("pandas-series-info", "/series", "info"),
    ("pandas-series-kind", "/series/table", "x_kind"),
    ("pandas-fixed-freq", "/fixed/axis1", "freq"),
)
ROW_TRAPS = (("objectatom-row", "/objs"), ("objectatom-row-in-group", "/group/objs"))


def build_trapped(path: str | os.PathLike, marker_dir: str | os.PathLike) -> dict[str, str]:
    """A file whose attributes (root, group, nodes, pandas metadata) and ObjectAtom rows are traps.

    Returns ``{location: marker path}``; unpickling the trap at a location creates its marker.
    """
    import warnings

    import pandas as pd
    import tables

    import daskh5

    path, marker_dir = str(path), Path(marker_dir)
    markers = {loc: str(marker_dir / f"pwned-{loc}") for loc, *_ in ATTR_TRAPS + ROW_TRAPS}
    df = pd.DataFrame(
        {"a": np.arange(6.0), "b": np.arange(6), "s": list("abcdef")},
        index=pd.date_range("2020-01-01", periods=6, name="when"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df.to_hdf(path, key="frame", format="table", data_columns=["b"], mode="w")
        pd.Series(np.arange(4.0), name="x").to_hdf(path, key="series", format="table")
        df.to_hdf(path, key="fixed", format="fixed")
    rng = np.random.default_rng(5)
    daskh5.write_ragged(_samples_2d(rng, 20, "f4"), path, "/ragged", mode="a", progress=False)
    with tables.open_file(path, "a") as f:
        g = f.create_group("/", "group")
        f.create_carray(
            "/", "data", obj=np.arange(1000.0).reshape(500, 2), filters=tables.Filters(5, "blosc:lz4")
        )
        f.create_carray("/", "labels", obj=np.arange(500) % 3)
        f.create_array(g, "contig", obj=np.arange(10))
        e = f.create_earray("/", "earray", atom=tables.Float64Atom(), shape=(0, 2))
        e.append(np.ones((7, 2)))
        f.create_table("/", "table", obj=np.array([(1.5, 2), (2.5, 3)], dtype=[("x", "f8"), ("n", "i4")]))
        vl = f.create_vlarray("/", "vl", atom=tables.Int32Atom())
        for k in range(1, 6):
            vl.append(np.arange(k, dtype="i4"))
        for loc, node in ROW_TRAPS:
            where, name = node.rsplit("/", 1)
            objs = f.create_vlarray(where or "/", name, atom=tables.ObjectAtom())
            objs.append(Trap(markers[loc]))
        for loc, node, attr in ATTR_TRAPS:
            f.get_node(node)._v_attrs[attr] = Trap(markers[loc])
    leaked = [loc for loc, m in markers.items() if os.path.exists(m)]
    assert not leaked, f"building the trapped file ran traps: {leaked}"
    return markers


def spring_traps(path: str, markers: dict[str, str]) -> dict[str, bool]:
    """Read every trap location with plain PyTables/pandas (in a subprocess): which markers appear."""
    code = f"""
import tables, warnings
warnings.simplefilter("ignore")
with tables.open_file({path!r}) as f:
    for node, attr in {[(n, a) for _l, n, a in ATTR_TRAPS]!r}:
        try:
            f.get_node(node)._v_attrs[attr]
        except Exception:
            pass
    for _loc, node in {list(ROW_TRAPS)!r}:
        f.get_node(node).read()
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    return {loc: os.path.exists(m) for loc, m in markers.items()}


def hostile_steps(path: str, marker_dir: str, scratch: str) -> None:
    """Run every public entry point on the trapped file, one JSON line per step (in a subprocess).

    Each line: the step, its result (``"ok ..."`` or the exception), and the markers present
    after it, so a leak names the step that caused it.
    """
    import contextlib
    import io
    import traceback
    import warnings

    import dask.array as da
    import xarray as xr

    import daskh5
    from daskh5 import cli

    warnings.simplefilter("ignore")

    def markers():
        return sorted(p.name for p in Path(marker_dir).glob("pwned-*"))

    def copy() -> str:
        target = os.path.join(scratch, f"copy-{len(os.listdir(scratch))}.h5")
        shutil.copyfile(path, target)
        return target

    def run_cli(*argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(list(argv))
        if rc != 0:
            raise RuntimeError(f"exit {rc}: {err.getvalue().strip()}")
        return f"{len(out.getvalue())} chars of output"

    def load(ds):
        ds = ds.load()
        repr(ds), repr(ds.attrs), [repr(v.attrs) + repr(v.encoding) for v in ds.variables.values()]
        return f"{sorted(map(str, ds.variables))}"

    def tree(**kw):
        t = xr.open_datatree(path, engine="daskh5", **kw)
        return [load(n.to_dataset()) for n in t.subtree] and f"{len(list(t.subtree))} groups"

    def samples(bag_or_list):
        return f"{len(bag_or_list)} samples"

    steps = {}
    for node in [
        "/data",
        "/labels",
        "/group/contig",
        "/earray",
        "/ragged",
        "/ragged_start_and_stop",
        "/ragged_shape",
    ]:
        steps[f"from_pytables {node}"] = lambda n=node: daskh5.from_pytables(path, n).compute().tolist()[:2]
    steps["from_pytables /data H5FD_CORE"] = lambda: float(
        daskh5.from_pytables(path, "/data", driver="H5FD_CORE").sum().compute()
    )
    for node in ["/objs", "/group/objs", "/table", "/vl", "/group", "/frame", "/frame/table"]:
        steps[f"from_pytables {node}"] = lambda n=node: daskh5.from_pytables(path, n)
    for node in ["/ragged", "/vl", "/objs", "/group/objs"]:
        steps[f"read_ragged {node}"] = lambda n=node: samples(
            daskh5.read_ragged(path, n).compute(scheduler="threads")
        )
        steps[f"open_ragged {node}"] = lambda n=node: samples(daskh5.open_ragged(path, n)[:])
    steps["iter_batches array"] = lambda: len(
        list(daskh5.iter_batches(daskh5.from_pytables(path, "/data"), 100))
    )
    steps["iter_batches ragged"] = lambda: len(
        list(daskh5.iter_batches(daskh5.open_ragged(path, "/ragged"), 7))
    )
    steps["label_stats"] = lambda: daskh5.label_stats(
        daskh5.from_pytables(path, "/data"), daskh5.from_pytables(path, "/labels")
    ).count.tolist()
    for key in ["/frame", "/series", "/fixed", "/table", "/frame/table"]:
        steps[f"read_table {key}"] = lambda k=key: (
            daskh5.read_table(path, k).compute(scheduler="threads").shape
        )
    steps["read_table /frame where="] = lambda: len(
        daskh5.read_table(path, "/frame", where="b > 2").compute()
    )
    steps["label_stats read_table"] = lambda: (
        lambda t: daskh5.label_stats(t[["x"]], t["n"], scheduler="sync").count.tolist()
    )(daskh5.read_table(path, "/table"))
    for group in ["/", "/group", "/frame", "/series", "/fixed"]:
        for dp in (False, True):
            steps[f"xr.open_dataset group={group} decode_pickles={dp}"] = lambda g=group, d=dp: load(
                xr.open_dataset(path, engine="daskh5", group=g, decode_pickles=d)
            )
    steps["xr.open_datatree"] = lambda: tree()
    steps["xr.open_datatree decode_pickles=True"] = lambda: tree(decode_pickles=True)
    steps["info"] = lambda: run_cli("info", path)
    steps["info --json"] = lambda: run_cli("info", path, "--json")
    steps["info --all"] = lambda: run_cli("info", path, "--all")
    for node in ["/frame", "/objs", "/ragged", "/group"]:
        steps[f"info {node} --json"] = lambda n=node: run_cli("info", path, n, "--json")
    steps["stats"] = lambda: run_cli(
        "stats", path, "--data", "/data", "--labels", "/labels", "--scheduler", "sync", "--json"
    )
    steps["stats table columns"] = lambda: run_cli(
        "stats", path, "--data", "/table:x", "--labels", "/table:n", "--scheduler", "sync", "--json"
    )
    steps["to_pytables (append mode)"] = lambda: daskh5.to_pytables(
        da.arange(10.0, chunks=5), copy(), "/new", progress=False
    )
    steps["to_pytables xarray"] = lambda: daskh5.to_pytables(
        xr.Dataset({"v": ("x", np.arange(3.0))}), copy(), "/xr", progress=False
    )
    steps["append"] = lambda: daskh5.append(np.zeros((3, 2)), copy(), "/earray", progress=False)
    steps["write_ragged (append mode)"] = lambda: daskh5.write_ragged(
        [np.ones((2, 2), "f4")], copy(), "/ragged", mode="a", progress=False
    )
    for name, fn in steps.items():
        try:
            result = f"ok {str(fn())[:200]}"
            daskh5_error = None
        except Exception as exc:
            daskh5_error = isinstance(exc, daskh5.Daskh5Error)
            result = f"{type(exc).__module__}.{type(exc).__qualname__}: {str(exc)[:300]}"
            if not daskh5_error:
                result += "\n" + traceback.format_exc()[-1500:]
        print(
            json.dumps({"step": name, "result": result, "daskh5_error": daskh5_error, "markers": markers()}),
            flush=True,
        )


# -- one check (runs in a worker process) -----------------------------------------------------------------
def _digest_array(h, a) -> None:
    a = np.asarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    if a.dtype.kind == "O":
        h.update(repr(a.tolist()).encode())
    else:
        h.update(np.ascontiguousarray(a).tobytes())


def _digest_dataset(h, ds) -> None:
    for name in sorted(map(str, ds.variables)):
        v = ds.variables[name]
        h.update(f"|{name}{v.dims}".encode())
        _digest_array(h, v.values)


def _run_cli(argv: list[str], path: str) -> dict:
    import contextlib
    import io

    from daskh5 import cli

    seen = []
    one_line = cli._one_line

    def spy(exc):  # what the CLI turned into its one-line message
        seen.append(f"{type(exc).__module__}.{type(exc).__qualname__}")
        return one_line(exc)

    out, err = io.StringIO(), io.StringIO()
    cli._one_line = spy
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main(argv)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1
    finally:
        cli._one_line = one_line
    text = out.getvalue().replace(path, "<FILE>")
    main, ragged, flagged = _split_report(text, "--json" in argv) if rc == 0 else (text, "", False)
    return {
        "rc": rc,
        "digest": hashlib.sha256(main.encode()).hexdigest(),
        "ragged_digest": hashlib.sha256(ragged.encode()).hexdigest(),
        "flagged": flagged,
        "stderr": err.getvalue(),
        "underlying": seen[0] if seen else None,
    }


def _split_report(text: str, is_json: bool) -> tuple[str, str, bool]:
    """``info``'s report as (nodes without stored sizes, ragged section, whether it flags a layout).

    Stored sizes come from the chunk index, which ``info`` reports as the file states it
    without reading any chunk; ragged layouts are validated, and a damaged one is
    reported in the output ("NOT VALID: ...") rather than as an exit status.
    """
    import re

    if is_json:
        try:
            report = json.loads(text)
        except ValueError:
            return text, "", False
        for rec in report.get("nodes", []):
            rec.pop("stored_bytes", None)
            rec.pop("ratio", None)
            rec.pop("payload_bytes", None)  # a VLArray's values, from its row descriptors: like stored sizes
        ragged = report.pop("ragged", [])
        flagged = any("error" in g for g in ragged if isinstance(g, dict))
        return json.dumps(report, sort_keys=True), json.dumps(ragged, sort_keys=True), flagged
    head, sep, ragged = text.partition("ragged layouts")
    head = re.sub(r"-> \S+ \S+( \([\d.]+x\))?", "-> <stored>", head)
    head = re.sub(r"stored \S+ \S+", "stored <stored>", head)
    head = re.sub(r"values \S+ \S+ \(\+ \S+ \S+ of row descriptors\)", "stored <stored>", head)
    return head, sep + ragged, "NOT VALID" in ragged


def run_entry(entry: str, path: str, node: str | None) -> dict:
    """Run one entry point; ``{"status": "ok", "digest": ...}`` or ``{"status": "error", ...}``."""
    import traceback
    import warnings

    import daskh5

    h = hashlib.sha256()
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if entry == "from_pytables":
                _digest_array(h, daskh5.from_pytables(path, node).compute())
            elif entry == "read_ragged":
                for s in daskh5.read_ragged(path, node).compute(scheduler="threads"):
                    _digest_array(h, s)
            elif entry == "open_ragged":
                with daskh5.open_ragged(path, node) as r:
                    for s in r[:]:
                        _digest_array(h, s)
            elif entry == "xr.open_dataset":
                import xarray as xr

                with xr.open_dataset(path, engine="daskh5") as ds:
                    _digest_dataset(h, ds.load())
            elif entry == "xr.open_datatree":
                import xarray as xr

                tree = xr.open_datatree(path, engine="daskh5")
                for sub in tree.subtree:
                    h.update(f"||{sub.path}".encode())
                    _digest_dataset(h, sub.to_dataset().load())
            elif entry in ("info", "info --json"):
                argv = ["info", path] + (["--json"] if entry.endswith("--json") else [])
                rec = _run_cli(argv, path)
                return {"status": "cli", **rec}
            elif entry.startswith("_selftest-"):  # the harness must see these (tests/test_hostile.py)
                _selftest(entry)
            else:
                raise ValueError(entry)
    except Exception as exc:
        return {
            "status": "error",
            "etype": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "daskh5_error": isinstance(exc, daskh5.Daskh5Error),
            "message": str(exc),
            "traceback": "" if isinstance(exc, daskh5.Daskh5Error) else traceback.format_exc(),
        }
    notes = sorted(
        {str(w.message).replace(path, "<FILE>")[:500] for w in caught if "not opened as" in str(w.message)}
    )
    return {"status": "ok", "digest": h.hexdigest(), "warnings": notes}


def _selftest(entry: str) -> None:
    import ctypes

    if entry == "_selftest-segfault":
        ctypes.string_at(0)
    elif entry == "_selftest-hang":
        time.sleep(3600)
    elif entry == "_selftest-overrun":  # 8 bytes past a 100-byte buffer: caught when it is freed
        buf = bytearray(100)
        ctypes.memset(ctypes.addressof((ctypes.c_char * 100).from_buffer(buf)), 0x41, 108)
        del buf


def run_oracle(entry: str, path: str, node: str | None) -> dict:
    """What HDF5 itself (h5py, with hdf5plugin's filters) reads for ``entry``'s data, as a digest."""
    import h5py

    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        pass
    h = hashlib.sha256()
    try:
        with h5py.File(path, "r", locking=False) as f:
            if entry == "from_pytables":
                _digest_array(h, f[node][...])
            elif entry in ("read_ragged", "open_ragged"):
                data = f[node]
                shapes = f[node + "_shape"][...] if node + "_shape" in f else None
                if node + "_start_and_stop" in f:
                    ss = f[node + "_start_and_stop"][...]
                    n = int(data.attrs.get("DASKH5_NSAMPLES", len(ss)))
                    flat = data[...]
                    rows = [flat[a:b] for a, b in ss[:n]]
                else:
                    rows = list(data[...])
                for i, r in enumerate(rows):
                    r = np.asarray(r).astype(np.asarray(r).dtype.newbyteorder("="))
                    _digest_array(h, r.reshape(shapes[i]) if shapes is not None else r)
            else:
                return {"status": "n/a"}
    except Exception as exc:
        return {"status": "error", "etype": type(exc).__name__, "message": str(exc)[:300]}
    return {"status": "ok", "digest": h.hexdigest()}


def _close_caches() -> None:
    """Drop daskh5's per-process handles (each variant is another file)."""
    import daskh5

    daskh5.close_files()
    try:
        from daskh5 import _reader, ragged

        for cache in (_reader._h5_files, ragged._vl_files):
            for f in list(cache.values()):
                try:
                    f.close()
                except Exception:
                    pass
            cache.clear()
    except Exception:
        pass


def _run_task(t: dict, i: int) -> dict:
    t0 = time.perf_counter()
    if t.get("oracle"):
        rec = run_oracle(t["entry"], t["path"], t["node"])
    else:
        rec = run_entry(t["entry"], t["path"], t["node"])
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    rec["i"] = i
    return rec


def worker_main(task_file: str, start: int) -> None:
    """Run tasks ``start:`` of ``task_file``: one JSON line before (``{"start": i}``) and after each.

    The worker imports everything once, then forks a child per group of tasks (the
    entry points of one variant), so a child that crashes costs a fork, not a new
    interpreter: the worker reports the task the child died in (``"died"``, with the
    child's faulthandler dump) and forks another child for the rest of the group.
    """
    tasks = json.loads(Path(task_file).read_text())
    import dask
    import dask.bag
    import h5py  # noqa: F401
    import xarray  # noqa: F401

    import daskh5
    import daskh5.cli
    import daskh5.xarray_backend

    # Warm up (lazy imports, xarray's engine discovery) once, here, rather than in every child,
    # without starting a thread pool: a forked child would inherit the pool but not its threads.
    warm = f"{task_file}.warmup.h5"
    daskh5.write_ragged([np.ones((2, 2))], warm, "/data", mode="w", progress=False)
    with dask.config.set(scheduler="sync"):
        for entry in ENTRY_POINTS:
            if entry != "read_ragged":  # it asks for threads
                run_entry(entry, warm, "/data")
    _close_caches()
    out = sys.stdout
    i = start
    while i < len(tasks):
        group = tasks[i].get("group", tasks[i]["variant"])
        j = i
        while j < len(tasks) and tasks[j].get("group", tasks[j]["variant"]) == group:
            j += 1
        err_path = f"{task_file}.{i}.stderr"
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: run tasks i..j-1, then leave without any clean-up of the parent's
            code = 0
            try:
                os.close(r)
                err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(err, 2)  # faulthandler writes the crash report here
                with os.fdopen(w, "w") as pipe:
                    for k in range(i, j):
                        print(json.dumps({"start": k}), file=pipe, flush=True)
                        print(json.dumps(_run_task(tasks[k], k)), file=pipe, flush=True)
                        _close_caches()
            except BaseException:  # the harness itself failed (run_entry catches what entry points raise)
                import traceback

                traceback.print_exc()
                code = 3
            finally:
                os._exit(code)
        os.close(w)
        current, reported = None, set()
        with os.fdopen(r) as pipe:
            for line in pipe:
                msg = json.loads(line)
                if "start" in msg:
                    current = msg["start"]
                else:
                    reported.add(msg["i"])
                out.write(line)
                out.flush()
        rc = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if rc == 0 or current is None:
            i = j
            continue
        died = {"status": "died", "returncode": rc, "stderr": _crash_report(err_path)}
        died |= {
            "i": current,
            "after_result": current in reported,
        }  # died in it, or closing its file after it
        out.write(json.dumps(died) + "\n")
        out.flush()
        i = current + 1


# -- one entry point in a child with a time and memory limit -----------------------------------------------
GiB = 1 << 30


def _limits(memory: int | None, fsize: int | None):
    """A ``preexec_fn`` capping the child's address space (``RLIMIT_AS``) and file size (``RLIMIT_FSIZE``)."""
    import resource

    def apply() -> None:
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG

    return apply


_CHILD = """
import json, sys, traceback
sys.path.insert(0, {tests!r})
out = {{}}
try:
    import corpus
    ns = {{"corpus": corpus}}
    exec(compile({code!r}, "<limited>", "exec"), ns)
    out = {{"status": "ok", "result": ns.get("result")}}
except BaseException as exc:
    import daskh5
    out = {{
        "status": "error",
        "etype": f"{{type(exc).__module__}}.{{type(exc).__qualname__}}",
        "daskh5_error": isinstance(exc, daskh5.Daskh5Error),
        "message": str(exc),
        "traceback": traceback.format_exc(),
    }}
sys.stdout.flush()
print("\\n@@LIMITED@@" + json.dumps(out, default=repr), flush=True)
"""


def run_limited(
    code: str, *, timeout: float = 60.0, memory: int | None = 3 * GiB, fsize: int | None = None, cwd=None
) -> dict:
    """Run ``code`` in a fresh interpreter under ``RLIMIT_AS=memory`` and a wall-clock ``timeout``.

    ``code`` may set ``result`` (JSON-able) for the parent.  Returns ``{"status": "ok",
    "result": ...}``, ``{"status": "error", "etype", "daskh5_error", "message", ...}`` for an
    exception, ``{"status": "died", "returncode"}`` for a signal or an exit without a record
    (``exit(0)`` inside a C decoder is one), or ``{"status": "timeout"}``; ``stdout``/``stderr`` too.
    """
    env = worker_env(hardened=False)
    env["PYTHONPATH"] = str(Path(__file__).parent) + os.pathsep + env["PYTHONPATH"]
    child = _CHILD.format(tests=str(Path(__file__).parent), code=code)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", child],
            capture_output=True,
            text=True,
            env=env,
            cwd=str(cwd or REPO),
            timeout=timeout,
            preexec_fn=_limits(memory, fsize),
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        return {"status": "timeout", "timeout": timeout, "stdout": str(exc.stdout), "stderr": str(exc.stderr)}
    head, sep, tail = proc.stdout.rpartition("@@LIMITED@@")
    if not sep:
        return {"status": "died", "returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
    rec = json.loads(tail)
    rec.update(stdout=head, stderr=proc.stderr, returncode=proc.returncode)
    return rec


# -- running the matrix ---------------------------------------------------------------------------------------
def _node_for(v: Variant, entry: str) -> str | None:
    if entry == "from_pytables":
        return v.array_node
    if entry in ("read_ragged", "open_ragged"):
        return v.ragged_node
    return None


def make_tasks(variants: list[Variant]) -> list[dict]:
    tasks = []
    for v in variants:
        for entry in v.entry_points():
            tasks.append({"variant": v.id, "entry": entry, "path": v.path, "node": _node_for(v, entry)})
            if v.detectable == "hdf5" and entry in ("from_pytables", "read_ragged", "open_ragged"):
                tasks.append({**tasks[-1], "oracle": True})
    return tasks


def worker_env(hardened: bool = True) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("DASKH5_DEBUG", None)
    env["OMP_NUM_THREADS"] = env["BLOSC_NTHREADS"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"
    if hardened:
        # heap overruns: Python's debug allocator checks the guard bytes of every buffer it frees
        env["PYTHONMALLOC"] = "debug"
    return env


def _crash_report(err_path: str) -> str:
    """A dead worker's stderr: faulthandler's dump of the crashed thread, without the module list."""
    text = Path(err_path).read_text(errors="replace")
    if "Fatal Python error" in text:
        text = text[text.rindex("Fatal Python error") :].split("\nExtension modules")[0]
    return text[-6000:]


def _run_worker(task_file: str, start: int, err_path: str, env: dict, timeout: float) -> tuple[dict, int]:
    """One worker process from task ``start``: ``({task: record}, where the next worker starts)``.

    The worker prints ``{"start": i}`` before task ``i`` and the record after it; when it dies
    or stalls in task ``i``, that task gets a ``died``/``timeout`` record and the next worker
    starts at ``i + 1``.
    """
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", f"import corpus; corpus.worker_main({task_file!r}, {start})"],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            cwd=str(REPO),
            start_new_session=True,  # its own process group: killed as a whole on a hang
        )
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    records: dict[int, dict] = {}
    current, deadline = start, time.monotonic() + timeout + 30  # the first task also waits for imports
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            records[current] = {"status": "timeout", "timeout": timeout}
            return records, current + 1
        if line is None:  # the worker exited
            rc = proc.wait()
            if rc == 0:
                return records, 1 << 62  # finished every task
            records[current] = {  # died in the task, or closing its file after it (same culprit)
                "status": "died",
                "returncode": rc,
                "stderr": _crash_report(err_path),
                "after_result": current in records,
            }
            return records, current + 1
        try:
            msg = json.loads(line)
        except ValueError:
            continue  # something else printed to stdout
        if "start" in msg:
            current, deadline = msg["start"], time.monotonic() + timeout
        elif "i" in msg:
            records[msg["i"]] = msg


def run_tasks(
    tasks: list[dict], timeout: float = 60.0, workers: int = 2, hardened: bool = True
) -> list[dict]:
    """Run ``tasks`` on ``workers`` worker processes at a time; one raw record per task.

    A task during which its worker dies (a signal, an abort) gets ``{"status": "died",
    "returncode": ...}``; one that takes longer than ``timeout`` seconds gets ``{"status":
    "timeout"}`` (its worker is killed); either way a new worker goes on with the next task.
    """
    import tempfile

    results: list[dict | None] = [None] * len(tasks)
    by_variant: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        by_variant.setdefault(t["variant"], []).append(i)
    shares: list[list[int]] = [[] for _ in range(max(1, workers))]
    for k, idx in enumerate(by_variant.values()):  # whole variants, dealt out in turn
        shares[k % len(shares)] += idx
    tmp = tempfile.mkdtemp(prefix="daskh5-corpus-")
    env = worker_env(hardened)
    env["PYTHONPATH"] = str(Path(__file__).parent) + os.pathsep + env["PYTHONPATH"]

    def drive(share: list[int], n: int) -> None:
        task_file = os.path.join(tmp, f"tasks-{n}.json")
        Path(task_file).write_text(json.dumps([tasks[i] for i in share]))
        start = 0
        while start < len(share):
            err_path = os.path.join(tmp, f"stderr-{n}-{start}.txt")
            records, start = _run_worker(task_file, start, err_path, env, timeout)
            for i, rec in records.items():
                results[share[i]] = rec

    threads = [threading.Thread(target=drive, args=(s, n)) for n, s in enumerate(shares) if s]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shutil.rmtree(tmp, ignore_errors=True)
    return [r if r is not None else {"status": "lost"} for r in results]


def confirm_crashes(tasks: list[dict], raw: list[dict], timeout: float = 60.0) -> None:
    """Re-run every task that crashed or hung, each alone in a fresh process: is it that task?"""
    redo = [i for i, r in enumerate(raw) if r.get("status") in ("died", "timeout")]
    if not redo:
        return
    again = run_tasks([{**tasks[i], "group": f"alone-{i}"} for i in redo], timeout=timeout, workers=1)
    for i, rec in zip(redo, again):
        raw[i]["alone"] = rec.get("status")


# -- classification --------------------------------------------------------------------------------------------
def _one_line_error(stderr: str) -> bool:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    return len(lines) == 1 and lines[0].startswith("daskh5: error: ")


def classify(variant: Variant, entry: str, raw: dict, reference: dict | None, oracle: dict | None) -> str:
    """One of :data:`OUTCOMES` for a raw check record.

    * ``ok-correct``: the same data (or, for ``info``, the same report) as from the undamaged base;
    * ``clear-error``: a :class:`daskh5.Daskh5Error` (``info``: a non-zero exit with one line on
      stderr starting ``daskh5: error:``, or a report that marks the damaged ragged layout
      ``NOT VALID``; the xarray engine: the damaged node left out with a warning naming the
      damage, which is how it reports nodes it cannot read);
    * ``undetectable-damage``: different data, where nothing in the file can tell (``detectable``
      is False), or, for checksum-less metadata damage (``"hdf5"``), where HDF5 itself reads
      exactly the same values (``from_pytables``, ``read_ragged``, ``open_ragged``), or where what
      differs is metadata reported as the file now states it (names, kinds, dimensions: the
      xarray engine and ``info``);
    * ``WRONG``: different data where the damage is detectable;
    * ``other-exception``: any other exception (a bug); ``crash``: the worker died (signal, abort);
      ``hang``: the check exceeded its time limit.
    """
    status = raw.get("status")
    if status == "died":
        return "crash"
    if status == "timeout":
        return "hang"
    if status == "lost":  # never reported: its worker went away unnoticed
        return "crash"
    if status == "error":
        return "clear-error" if raw.get("daskh5_error") else "other-exception"
    if status == "cli":
        if raw["rc"] != 0:
            return "clear-error" if _one_line_error(raw["stderr"]) else "other-exception"
        if raw["stderr"].strip():
            return "other-exception"  # warnings or tracebacks on a success
    same = (
        reference is not None
        and reference.get("status") in ("ok", "cli")
        and raw["digest"] == reference["digest"]
    )
    if same and status == "cli" and raw["ragged_digest"] != reference["ragged_digest"]:
        if raw["flagged"] and not reference["flagged"]:
            return "clear-error"  # the report names the damaged ragged layout
        same = False
    if same:
        return "ok-correct"
    if status == "ok" and reference is not None and set(raw["warnings"]) - set(reference.get("warnings", [])):
        return "clear-error"  # xarray: the damaged node is left out, with a warning that names the damage
    if variant.detectable is False:
        return "undetectable-damage"
    if variant.detectable == "hdf5":
        if entry in ("info", "info --json", "xr.open_dataset", "xr.open_datatree"):
            # metadata as the damaged file states it: shapes, names, attributes have no checksum
            return "undetectable-damage"
        if oracle is not None and oracle.get("status") == "ok" and oracle["digest"] == raw["digest"]:
            return "undetectable-damage"
    return "WRONG"


@dataclasses.dataclass
class Matrix:
    variants: list[Variant]
    rows: list[dict]  # one per (variant, entry point): variant, entry, outcome, raw
    seconds: float

    def counts(self) -> Counter:
        return Counter(r["outcome"] for r in self.rows)

    def bad(self) -> list[dict]:
        return [r for r in self.rows if r["outcome"] in BAD_OUTCOMES]

    def summary(self) -> dict:
        by_entry: dict[str, Counter] = {}
        by_kind: dict[str, Counter] = {}
        kinds = {v.id: v.kind for v in self.variants}
        for r in self.rows:
            by_entry.setdefault(r["entry"], Counter())[r["outcome"]] += 1
            by_kind.setdefault(kinds[r["variant"]], Counter())[r["outcome"]] += 1
        masked = Counter(
            r["raw"].get("underlying")
            for r in self.rows
            if r["raw"].get("status") == "cli" and r["raw"].get("rc") and r["raw"].get("underlying")
        )
        paths = {v.id: v.path for v in self.variants}
        errors = [r for r in self.rows if r["raw"].get("daskh5_error")]
        naming = [r for r in errors if os.path.basename(paths[r["variant"]]) in r["raw"]["message"]]
        warned = [  # clear errors that come with a result: xarray's warnings, info's NOT VALID
            r
            for r in self.rows
            if r["outcome"] == "clear-error"
            and r["raw"].get("status") in ("ok", "cli")
            and r["raw"].get("rc", 0) == 0
        ]
        return {
            "variants": len(self.variants),
            "entry_points": sorted({r["entry"] for r in self.rows}, key=ENTRY_POINTS.index),
            "checks": len(self.rows),
            "outcomes": {k: self.counts().get(k, 0) for k in OUTCOMES},
            "by_entry_point": {k: dict(v) for k, v in by_entry.items()},
            "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
            "cli_errors_by_underlying_exception": dict(masked),
            "daskh5_errors": len(errors),
            "daskh5_errors_naming_the_file": len(naming),
            "clear_errors_reported_in_band": len(warned),  # xarray warnings, info's NOT VALID
            "seconds": round(self.seconds, 1),
            "root_causes": root_causes(self.bad()),
            "bad": [
                {k: r[k] for k in ("variant", "entry", "outcome")}
                | {"detail": _short(r["raw"]), "what": self._detail(r["variant"])}
                for r in self.bad()
            ],
        }

    def _detail(self, vid: str) -> str:
        return next(v.detail for v in self.variants if v.id == vid)

    def table(self) -> str:
        s = self.summary()
        cols = list(OUTCOMES)
        width = max(len(k) for k in list(s["by_kind"]) + list(s["by_entry_point"]) + ["entry point"]) + 2
        short = {"undetectable-damage": "undetectable", "other-exception": "other-exc"}
        head = "".join(f"{short.get(c, c):>13}" for c in cols)
        lines = [
            f"daskh5 hostile corpus: {s['variants']} variants x entry points = {s['checks']} checks "
            f"in {s['seconds']} s",
            f"{'entry point':<{width}}{head}",
        ]
        for k, c in s["by_entry_point"].items():
            lines.append(f"{k:<{width}}" + "".join(f"{c.get(o, 0):>13}" for o in cols))
        lines.append(f"{'damage kind':<{width}}{head}")
        for k, c in s["by_kind"].items():
            lines.append(f"{k:<{width}}" + "".join(f"{c.get(o, 0):>13}" for o in cols))
        lines.append(f"{'TOTAL':<{width}}" + "".join(f"{s['outcomes'][o]:>13}" for o in cols))
        lines.append(
            f"daskh5 errors raised: {s['daskh5_errors']} ({s['daskh5_errors_naming_the_file']} name the file); "
            f"reported in-band: {s['clear_errors_reported_in_band']} (xarray warnings, info's NOT VALID); "
            f"info's error lines by underlying exception: {s['cli_errors_by_underlying_exception']}"
        )
        if s["root_causes"]:
            lines.append("bad outcomes by root cause (checks, outcome, what, where; an example):")
        for g in s["root_causes"]:
            lines.append(f"  {g['checks']:>3} {g['outcome']}: {g['what']} at {g['where'] or '?'}")
            lines.append(f"      e.g. {g['example']}: {g['detail']}")
        return "\n".join(lines)


def _frames(text: str) -> list[tuple[str, str, str]]:
    """(file, line, function) of every frame of a traceback, or of the crashed thread in a
    faulthandler dump; innermost last."""
    import re

    if "Current thread" in text:  # faulthandler: most recent call first
        block = text[text.index("Current thread") :].split("\n\n")[0]
        return re.findall(r'File "([^"]+)", line (\d+),? in (\S+)', block)[::-1]
    return re.findall(r'File "([^"]+)", line (\d+),? in (\S+)', text)


def where(raw: dict) -> str:
    """Where a failure happened: the innermost frame, and the innermost daskh5 frame leading to it."""
    frames = _frames(raw.get("traceback") or raw.get("stderr") or "")
    if not frames:
        return ""

    def fmt(f):
        parts = f[0].split("/")
        short = "/".join(parts[parts.index("daskh5") :]) if "daskh5" in parts else "/".join(parts[-2:])
        return f"{short}:{f[1]} {f[2]}"

    ours = [f for f in frames if "/daskh5/" in f[0]]
    inner = fmt(frames[-1])
    if ours and ours[-1] != frames[-1]:
        return f"{inner} <- {fmt(ours[-1])}"
    return inner


def _short(raw: dict) -> str:
    st = raw.get("status")
    if st == "error":
        return f"{raw['etype']}: {raw['message'][:300]} [at {where(raw)}]"
    if st == "cli":
        return f"rc {raw['rc']}: {raw['stderr'][-400:]!r} (underlying {raw.get('underlying')})"
    if st == "died":
        return f"worker died, returncode {raw.get('returncode')}, also when run alone: {raw.get('alone') == 'died'}; at {where(raw)}"
    if st == "timeout":
        return (
            f"no result within {raw.get('timeout')} s; also when run alone: {raw.get('alone') == 'timeout'}"
        )
    return json.dumps(raw)[:300]


def root_causes(rows: list[dict]) -> list[dict]:
    """Bad outcomes grouped by (outcome, exception type, where), largest group first."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        raw = r["raw"]
        if r["outcome"] == "crash":
            what = f"signal {-raw.get('returncode', 0)}"
        elif r["outcome"] == "hang":
            what = "timeout"
        elif r["outcome"] == "WRONG":
            what = "different data, no error"
        else:
            what = raw.get("etype") or raw.get("underlying") or raw.get("status")
        groups.setdefault((r["outcome"], what, where(raw)), []).append(r)
    out = [
        {
            "outcome": k[0],
            "what": k[1],
            "where": k[2],
            "checks": len(v),
            "example": f"{v[0]['variant']} x {v[0]['entry']}",
            "detail": _short(v[0]["raw"]),
        }
        for k, v in groups.items()
    ]
    return sorted(out, key=lambda g: -g["checks"])


def check(variants: list[Variant], timeout: float = 60.0, workers: int = 2, hardened: bool = True) -> Matrix:
    """Run every entry point on every variant and classify the outcomes."""
    t0 = time.perf_counter()
    tasks = make_tasks(variants)
    raw = run_tasks(tasks, timeout=timeout, workers=workers, hardened=hardened)
    confirm_crashes(tasks, raw, timeout=timeout)
    byid = {v.id: v for v in variants}
    results: dict[tuple[str, str, bool], dict] = {}
    for t, r in zip(tasks, raw):
        results[(t["variant"], t["entry"], bool(t.get("oracle")))] = r
    rows = []
    for v in variants:
        ref_id = f"{v.base}.pristine"
        for entry in v.entry_points():
            r = results[(v.id, entry, False)]
            ref = results.get((ref_id, entry, False)) if ref_id in byid else None
            oracle = results.get((v.id, entry, True))
            rows.append(
                {"variant": v.id, "entry": entry, "outcome": classify(v, entry, r, ref, oracle), "raw": r}
            )
    return Matrix(variants, rows, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tests.corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("outdir")
    p.add_argument("--check", action="store_true", help="also run every entry point on every variant")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    _bases, variants = generate(args.outdir)
    markers = Path(args.outdir, "markers")
    markers.mkdir(exist_ok=True)
    build_trapped(Path(args.outdir, "trapped.h5"), markers)
    print(
        f"wrote {len(variants)} variants and trapped.h5 (pickle traps, markers in {markers}) under {args.outdir}"
    )
    if args.check:
        m = check(variants, timeout=args.timeout, workers=args.workers)
        print(m.table())
        Path(args.outdir, "summary.json").write_text(json.dumps(m.summary(), indent=1))
        return 1 if m.bad() else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

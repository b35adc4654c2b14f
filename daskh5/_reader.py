"""Read any selection of an array node without PyTables and without HDF5 locks.

:class:`NodeReader` is a small picklable array-like (``shape``, ``dtype``,
``__getitem__``) holding plain data: a :class:`~daskh5._nodes.NodeInfo` and, for
chunked nodes, the :class:`~daskh5._storage.ChunkIndex`.  Reading a selection:

* chunked nodes whose filters all have a decoder in :mod:`daskh5._codecs`:
  the needed chunks' bytes are read with ``os.pread`` (neighbouring chunks in
  one call) and decoded by GIL-releasing decoders, straight into the output
  where the chunk maps onto a contiguous part of it;
* contiguous nodes: ``os.pread`` of the rows a selection needs, straight into
  the output for boxes of whole rows, in bounded pieces otherwise (never a
  memory map: a file truncated while mapped kills the process with SIGBUS, a
  short read is an error);
* EXTERNAL raw storage (only with ``allow_external``): ``pread`` of the
  external files (:mod:`daskh5._external`);
* virtual datasets of boxes: each source through its own reader
  (:mod:`daskh5._virtual`);
* anything else (fletcher32, LZ4/zstd HDF5 plugins, compact layouts, other
  virtual datasets, types HDF5 must convert): h5py (with hdf5plugin when
  installed), which is correct but serialised behind h5py's global lock.

Only filters in the caller's allowlist (:func:`daskh5._codecs.allowed_filters`,
by default :data:`~daskh5._codecs.SAFE_FILTERS`) are ever decoded: a node using
another is refused when the reader is made, and every h5py read checks the
dataset's pipeline again just before it reads.

Selections follow outer-indexing rules (one integer array per axis is applied
independently), like PyTables and h5py.
"""

from __future__ import annotations

import itertools
import operator
import os
import threading
from functools import partial

import numpy as np

from daskh5 import _buffers
from daskh5._codecs import (
    BLOSC2_ID,
    FILTER_NAMES,
    SAFE_FILTERS,
    decode_blosc2_region,
    decode_pipeline,
    filter_name,
    pipeline_supported,
    refused_filters,
)
from daskh5._containment import check_storage, with_origin
from daskh5._external import read_external
from daskh5._files import file_image, pread_exact
from daskh5._nodes import NodeInfo, describe_array, lookup, open_file
from daskh5._storage import ChunkIndex, current_index, read_chunk_index
from daskh5._virtual import NeedsLibrary, open_source, read_virtual
from daskh5.errors import ChunkDecodeError, Daskh5Error, NotHDF5Error, UnsupportedFilterError

__all__ = ["NodeReader"]

_SPAN_GAP = 64 * 1024  # read neighbouring chunks in one pread if at most this many bytes apart
_SPAN_MAX = 4 * 1024 * 1024  # ... and the span stays below this size


def _normalize(key, shape: tuple[int, ...]):
    """Per-axis selection: ``(start, stop)`` for unit-step slices, else an index array.

    Returns the per-axis list and the axes an integer index drops.
    """
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1 :]
    if len(key) > len(shape):
        raise IndexError(f"too many indices: {len(key)} for an array of {len(shape)} dimensions")
    key = key + (slice(None),) * (len(shape) - len(key))
    sel, drop = [], []
    for axis, (k, n) in enumerate(zip(key, shape)):
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step == 1:
                sel.append((start, max(start, stop)))
            else:
                sel.append(np.arange(start, stop, step, dtype=np.int64))
        elif k is None:
            raise IndexError("daskh5 readers do not take np.newaxis; index the dask array instead")
        elif isinstance(k, (int, np.integer)):
            i = operator.index(k)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for axis {axis} with size {n}")
            sel.append(np.array([i % n], dtype=np.int64))
            drop.append(axis)
        else:
            arr = np.asarray(k)
            if arr.dtype == bool:
                if arr.shape != (n,):
                    raise IndexError(
                        f"boolean index of shape {arr.shape} does not match axis {axis} of size {n}"
                    )
                arr = np.flatnonzero(arr)
            if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
                raise IndexError(
                    f"axis {axis}: index arrays must be 1-d integers, got {arr.dtype} {arr.shape}"
                )
            arr = arr.astype(np.int64)
            if arr.size and (arr.min() < -n or arr.max() >= n):
                raise IndexError(f"index out of bounds for axis {axis} with size {n}")
            sel.append(np.where(arr < 0, arr + n, arr))
    return sel, tuple(drop)


def _length(s) -> int:
    return s[1] - s[0] if isinstance(s, tuple) else len(s)


def _positions(s) -> np.ndarray:
    return np.arange(s[0], s[1], dtype=np.int64) if isinstance(s, tuple) else s


def _finish(out: np.ndarray, info: NodeInfo, drop: tuple[int, ...]) -> np.ndarray:
    if info.time:
        from daskh5._h5types import to_datetimes

        out = to_datetimes(out, info.dtype)
    out = out.astype(info.dtype, copy=False)  # native byte order; PyTables' bitfield bools as bool
    if drop:
        out = out.reshape([n for i, n in enumerate(out.shape) if i not in drop])
    return out


class NodeReader:
    """A picklable, lazily reading array-like over one array node.

    Parameters
    ----------
    info : NodeInfo
        The node's description (from :func:`daskh5._nodes.describe_array`).
    index : ChunkIndex, optional
        The chunk index; read now when not given.
    driver : str, optional
        ``"H5FD_CORE"`` keeps a copy of the whole file in each process's memory.
    f : h5py.File, optional
        An open handle to the file, to read the chunk index without reopening it.
    allowed : frozenset of int, optional
        HDF5 filter ids this reader may decode (:func:`daskh5._codecs.allowed_filters`);
        a node using any other is refused with :class:`UnsupportedFilterError`.
    """

    def __init__(
        self,
        info: NodeInfo,
        index: ChunkIndex | None = None,
        driver: str | None = None,
        f=None,
        allowed: frozenset[int] = SAFE_FILTERS,
    ):
        self.info = info
        self.index = index
        self.driver = driver
        self.allowed = frozenset(allowed)
        self.shape = info.shape
        self.dtype = info.dtype
        self.ndim = len(info.shape)
        check_filters_allowed(info.path, info.node, info.filters, self.allowed)
        self.fast = info.conversion is None and (
            info.layout == "contiguous" or (info.layout == "chunked" and pipeline_supported(info.filters))
        )
        if info.layout == "chunked" and self.fast and index is None:
            self.index = read_chunk_index(info, f=f)
        if not self.fast:
            check_filters_available(info.path, info.node, info.filters, self.allowed)

    # -- dask / numpy protocol ------------------------------------------------------
    @property
    def chunks(self) -> tuple[int, ...] | None:
        return self.info.chunkshape

    def __dask_tokenize__(self):
        i = self.info
        return (
            "daskh5.NodeReader",
            i.path,
            i.node,
            i.mtime_ns,
            i.file_size,
            i.shape,
            str(i.dtype),
            self.driver,
        )

    def __repr__(self) -> str:
        return f"NodeReader({self.info.path!r}, {self.info.node!r}, shape={self.shape}, dtype={self.dtype})"

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        sel, drop = _normalize(key, self.shape)
        info = self.info
        if any(_length(s) == 0 for s in sel) or (info.offset is None and info.layout == "contiguous"):
            out = np.empty([_length(s) for s in sel], dtype=info.disk_dtype)
            if out.size:
                out[...] = np.frombuffer(info.fillvalue, dtype=info.disk_dtype)[0]
            return _finish(out, info, drop)
        try:
            if info.layout == "external":
                out = read_external(info, sel)
            elif info.virtual:
                out = self._read_virtual(sel)
            elif not self.fast:
                out = self._read_library(sel)
            elif info.layout == "contiguous":
                out = self._read_contiguous(sel)
            else:
                out = self._read_chunked(sel)
        except Daskh5Error:
            raise
        except OSError as exc:
            raise ChunkDecodeError(f"{info.path}:{info.node}: reading failed: {exc}") from exc
        return _finish(out, info, drop)

    # -- the file as it is now -------------------------------------------------------
    def _mtime(self) -> int:
        try:
            return os.stat(self.info.path).st_mtime_ns
        except FileNotFoundError:
            from daskh5.errors import FileNotFound

            raise FileNotFound(
                f"{self.info.path}: the file disappeared after the dask array was created"
            ) from None

    def _image(self, mtime: int) -> bytes | None:
        return file_image(self.info.path, mtime) if self.driver == "H5FD_CORE" else None

    # -- contiguous nodes ------------------------------------------------------------
    def _read_contiguous(self, sel) -> np.ndarray:
        info = self.info
        mtime = self._mtime()
        if mtime != info.mtime_ns:
            now = describe_array(info.path, info.node)
            if now.shape != info.shape or now.offset is None or now.disk_dtype != info.disk_dtype:
                raise NotHDF5Error(f"{info.path}:{info.node} changed shape after the dask array was created")
            info = now
        image = self._image(mtime)
        out = _buffers.empty(tuple(_length(s) for s in sel), info.disk_dtype)

        def read(offset: int, size: int, target=None):
            try:
                return pread_exact(info.path, offset, size, image, out=target)
            except ChunkDecodeError as exc:
                raise ChunkDecodeError(
                    f"{info.path}:{info.node} (contiguous data at bytes {info.offset}..."
                    f"{info.offset + int(np.prod(info.shape, dtype=np.int64)) * info.itemsize}): {exc}; "
                    "the file was cut short (maybe while it was read): re-copy it"
                ) from None

        _fill_contiguous(read, info.offset, info.shape, info.disk_dtype, sel, out)
        return out

    # -- chunked nodes ---------------------------------------------------------------
    def _raw_chunks(self, index: ChunkIndex, coords: list[tuple[int, ...]], image):
        """Yield ``(coords, raw bytes or None, filter mask)``, reading neighbours in one call."""
        stored, missing = [], []
        for c in coords:
            hit = index.chunk(c)
            if hit is None:
                missing.append(c)
            else:
                stored.append((c, *hit))
        for c in missing:
            yield c, None, 0
        stored.sort(key=operator.itemgetter(1))
        for c, mask, raw in self._spans(stored, image):
            yield c, raw, mask

    def _decode(self, raw, mask: int, coords, region=None, into=None) -> np.ndarray:
        """Decode one chunk (or, for blosc2, only ``region`` of it, straight ``into`` a C-contiguous
        array of its shape when given)."""
        info = self.info
        cs = info.chunkshape
        try:
            if len(info.filters) == 1 and info.filters[0][0] == BLOSC2_ID and not mask & 1:
                return decode_blosc2_region(
                    raw, cs, info.disk_dtype, region or tuple(slice(0, c) for c in cs), into
                )
            nbytes = int(np.prod(cs, dtype=np.int64)) * info.itemsize
            buf = decode_pipeline(raw, info.filters, mask, nbytes, info.itemsize)
            chunk = np.frombuffer(buf, dtype=info.disk_dtype).reshape(cs)
            return chunk if region is None else chunk[region]
        except ChunkDecodeError as exc:
            raise self._chunk_error(coords, exc) from None

    def _chunk_error(self, coords, exc) -> ChunkDecodeError:
        info = self.info
        origin = tuple(c * s for c, s in zip(coords, info.chunkshape))
        return ChunkDecodeError(
            f"{info.path}:{info.node}: chunk {coords} (starting at element {origin}) is corrupt: {exc}. "
            "The file is damaged (re-copy it or write the node again), or another process was "
            "writing it while it was read (read again when the writer is done)"
        )

    def _read_chunked(self, sel) -> np.ndarray:
        info = self.info
        mtime = self._mtime()
        index = current_index(info, self.index, mtime)
        image = self._image(mtime)
        if not all(isinstance(s, tuple) for s in sel):
            return self._read_points(sel, index, image)
        if self._whole_rows(sel):
            return self._read_rows(sel[0], index, image)
        return self._read_box(sel, index, image)

    def _whole_rows(self, sel) -> bool:
        """Whether the chunks hold whole rows and all of every row is wanted.

        Then each chunk is one contiguous run of the output, and the chunks a
        selection needs are a range of the chunk index: the common case
        (``(n, d)`` arrays chunked ``(rows, d)``), read without per-chunk
        index arithmetic in Python.
        """
        info = self.info
        return (
            info.chunkshape[1:] == info.shape[1:]
            and all(s == (0, n) for s, n in zip(sel[1:], info.shape[1:]))
            and not (len(info.filters) == 1 and info.filters[0][0] == BLOSC2_ID)
        )

    def _read_rows(self, rows_wanted: tuple[int, int], index, image) -> np.ndarray:
        info = self.info
        start, stop = rows_wanted
        rows = info.chunkshape[0]
        nbytes = int(np.prod(info.chunkshape, dtype=np.int64)) * info.itemsize
        row_bytes = nbytes // rows
        out = _buffers.empty((stop - start, *info.shape[1:]), info.disk_dtype)
        flat = out.reshape(-1).view(np.uint8)
        first, last = start // rows, -(-stop // rows)
        step = index.linear((1,) + (0,) * (len(info.shape) - 1))  # grid position of row-chunk 1
        written = index.between(first * step, (last - 1) * step + 1)
        ks = index.positions[written] // step  # the written row-chunks, in order
        if len(ks) < last - first:  # the rest were never written: the fill value, run by run
            fill = np.frombuffer(info.fillvalue, dtype=info.disk_dtype)[0]
            bounds = np.concatenate(([first - 1], ks, [last]))
            for g in np.flatnonzero(np.diff(bounds) > 1).tolist():
                lo, hi = (int(bounds[g]) + 1) * rows, int(bounds[g + 1]) * rows
                out[max(lo, start) - start : min(hi, stop) - start] = fill
        offsets = index.offsets[written]
        order = np.argsort(offsets, kind="stable")
        chunks = list(
            zip(
                ks[order].tolist(),
                offsets[order].tolist(),
                index.sizes[written][order].tolist(),
                index.masks[written][order].tolist(),
            )
        )

        def decode(part: list) -> None:
            for c, mask, raw in self._spans(part, image):
                lo = c * rows
                if lo >= start and lo + rows <= stop:  # the whole chunk: straight into the output
                    target = flat[(lo - start) * row_bytes : (lo - start + rows) * row_bytes]
                    try:
                        decode_pipeline(raw, info.filters, mask, nbytes, info.itemsize, target)
                    except ChunkDecodeError as exc:
                        raise self._chunk_error(self._coords(c), exc) from None
                else:
                    a, b = max(lo, start), min(lo + rows, stop)
                    part_rows = self._decode(raw, mask, self._coords(c), (slice(a - lo, b - lo),))
                    out[a - start : b - start] = part_rows

        if not info.filters:
            chunks = self._read_runs_in_place(chunks, rows_wanted, nbytes, flat, image)
        parallel = nbytes >= _PARALLEL_MIN_CHUNK
        _in_parallel(decode, chunks, out.nbytes if parallel else 0)
        return out

    def _read_runs_in_place(self, chunks: list, rows_wanted, nbytes: int, flat, image) -> list:
        """Read unfiltered whole chunks straight into the output, a run of neighbours per call.

        Returns the chunks left to decode (the cut ones at the ends).
        """
        start, stop = rows_wanted
        rows = self.info.chunkshape[0]
        row_bytes = nbytes // rows
        whole, rest = [], []
        for ch in chunks:
            c, _off, size, _mask = ch
            if size != nbytes:
                raise self._chunk_error(self._coords(c), f"stored size {size} != {nbytes} bytes")
            (whole if c * rows >= start and (c + 1) * rows <= stop else rest).append(ch)
        i = 0
        while i < len(whole):
            j = i + 1
            while (
                j < len(whole)
                and whole[j][0] == whole[j - 1][0] + 1
                and whole[j][1] == whole[j - 1][1] + nbytes
                and j - i < _SPAN_MAX // nbytes
            ):
                j += 1
            lo = (whole[i][0] * rows - start) * row_bytes
            self._read_in_place(
                self._coords(whole[i][0]), whole[i][1], flat[lo : lo + (j - i) * nbytes], image
            )
            i = j
        return rest

    def _coords(self, c) -> tuple[int, ...]:
        """Grid coordinates of a chunk key (a row-chunk number is the first coordinate)."""
        return c if isinstance(c, tuple) else (c,) + (0,) * (len(self.info.shape) - 1)

    def _spans(self, chunks: list, image):
        """Yield ``(key, mask, raw bytes)`` for ``(key, offset, size, mask)`` sorted by offset,
        reading neighbours in one call (``key``: grid coordinates, or the row-chunk number)."""
        info = self.info
        i, n = 0, len(chunks)
        while i < n:
            start = chunks[i][1]
            end = start + chunks[i][2]
            j = i + 1
            while j < n:
                off, size = chunks[j][1], chunks[j][2]
                if off - end > _SPAN_GAP or off + size - start > _SPAN_MAX or off < end:
                    break
                end = off + size
                j += 1
            try:
                span = pread_exact(info.path, start, end - start, image)
            except ChunkDecodeError as exc:
                raise ChunkDecodeError(
                    f"{info.path}:{info.node} chunk {self._coords(chunks[i][0])}: {exc}; re-copy the file"
                ) from None
            for c, off, size, mask in chunks[i:j]:
                yield c, mask, span[off - start : off - start + size]
            i = j

    def _read_box(self, sel, index, image) -> np.ndarray:
        info = self.info
        cs = info.chunkshape
        starts = [s[0] for s in sel]
        stops = [s[1] for s in sel]
        out = _buffers.empty(tuple(b - a for a, b in sel), info.disk_dtype)
        fill = np.frombuffer(info.fillvalue, dtype=info.disk_dtype)[0]
        ranges = [range(a // c, -(-b // c)) for a, b, c in zip(starts, stops, cs)]
        blosc2 = len(info.filters) == 1 and info.filters[0][0] == BLOSC2_ID
        nbytes = int(np.prod(cs, dtype=np.int64)) * info.itemsize
        regions = {}
        for coords in itertools.product(*ranges):
            lo = [c * n for c, n in zip(coords, cs)]
            a = [max(s, o) for s, o in zip(starts, lo)]
            b = [min(e, o + n) for e, o, n in zip(stops, lo, cs)]
            dst = tuple(slice(x - s, y - s) for x, y, s in zip(a, b, starts))
            src = tuple(slice(x - o, y - o) for x, y, o in zip(a, b, lo))
            whole = all(y - x == n for x, y, n in zip(a, b, cs)) and not blosc2
            target = out[dst]
            direct = target.reshape(-1).view(np.uint8) if whole and target.flags.c_contiguous else None
            hit = index.chunk(coords)
            if direct is not None and not info.filters and hit is not None:
                # unfiltered chunk that maps onto one contiguous run of the output: read it in place
                if hit[1] != nbytes:
                    raise self._chunk_error(coords, f"stored size {hit[1]} != {nbytes} bytes")
                self._read_in_place(coords, hit[0], direct, image)
                continue
            regions[coords] = (dst, src, direct, -1 if hit is None else hit[0])

        def decode(group: list) -> None:
            for coords, raw, mask in self._raw_chunks(index, group, image):
                dst, src, direct, _offset = regions[coords]
                if raw is None:
                    out[dst] = fill
                elif direct is not None:
                    try:
                        decode_pipeline(raw, info.filters, mask, nbytes, info.itemsize, direct)
                    except ChunkDecodeError as exc:
                        raise self._chunk_error(coords, exc) from None
                elif blosc2 and out[dst].flags.c_contiguous:  # the region decoded in place
                    self._decode(raw, mask, coords, src, into=out[dst])
                else:
                    out[dst] = self._decode(raw, mask, coords, src)

        _in_parallel(decode, sorted(regions, key=lambda c: regions[c][3]), out.nbytes)
        return out

    def _read_in_place(self, coords, offset: int, target, image) -> None:
        try:
            pread_exact(self.info.path, offset, len(target), image, out=target)
        except ChunkDecodeError as exc:
            raise ChunkDecodeError(
                f"{self.info.path}:{self.info.node} chunk {coords}: {exc}; re-copy the file"
            ) from None

    def _read_points(self, sel, index, image) -> np.ndarray:
        info = self.info
        cs = info.chunkshape
        pos = [_positions(s) for s in sel]
        out = np.empty([len(p) for p in pos], dtype=info.disk_dtype)
        fill = np.frombuffer(info.fillvalue, dtype=info.disk_dtype)[0]
        cids = [p // c for p, c in zip(pos, cs)]
        groups = [_group(c) for c in cids]  # per axis: chunk id -> positions in the output
        uniq = [list(g) for g in groups]
        for coords, raw, mask in self._raw_chunks(index, list(itertools.product(*uniq)), image):
            coords = tuple(int(c) for c in coords)
            hits = [g[u] for g, u in zip(groups, coords)]
            dst = np.ix_(*hits)
            if raw is None:
                out[dst] = fill
                continue
            local = [p[h] - u * n for p, h, u, n in zip(pos, hits, coords, cs)]
            region = tuple(slice(int(x.min()), int(x.max()) + 1) for x in local)
            part = self._decode(raw, mask, coords, region)
            out[dst] = part[np.ix_(*[x - r.start for x, r in zip(local, region)])]
        return out

    # -- virtual datasets of boxes: each source through its own reader ------------------
    def _read_virtual(self, sel) -> np.ndarray:
        sources = self.__dict__.setdefault("_sources", {})

        def source(i: int):
            if i not in sources:
                sources[i] = open_source(
                    self.info, i, describe_array, partial(NodeReader, allowed=self.allowed)
                )
            return sources[i]

        try:
            return read_virtual(self.info, sel, source)
        except NeedsLibrary:
            return self._read_library(sel)

    # -- everything else: h5py ---------------------------------------------------------
    def _read_library(self, sel) -> np.ndarray:
        info = self.info
        h5sel, after = [], []
        for s in sel:
            if isinstance(s, tuple):
                h5sel.append(slice(*s))
                after.append(slice(None))
                continue
            lo, hi = int(s.min()), int(s.max()) + 1
            steps = np.diff(s)
            if s.size > 1 and steps[0] > 0 and (steps == steps[0]).all():
                h5sel.append(slice(lo, hi, int(steps[0])))
                after.append(slice(None))
            else:
                h5sel.append(slice(lo, hi))
                after.append(s - lo)
        with _h5_lock:
            try:
                ds = _h5_dataset(info, self.driver)
                check_dataset_filters(ds, info.path, info.node, self.allowed)
                if info.conversion == "variable-length members":
                    from daskh5._vlen import check_dataset_claim

                    check_dataset_claim(info.path, ds, tuple(h5sel))
                out = np.asarray(ds[tuple(h5sel)])
            except Daskh5Error:
                raise
            except OSError as exc:
                raise ChunkDecodeError(
                    f"{info.path}:{info.node}: HDF5 could not read {tuple(h5sel)}: {exc}. If a filter "
                    "is missing, `pip install hdf5plugin`; otherwise the file is damaged"
                ) from exc
        for axis, a in enumerate(after):
            if not isinstance(a, slice):
                out = np.take(out, a, axis=axis)
        if info.dtype == bool:
            out = out != 0
        return out


_pool = None
_pool_lock = threading.Lock()
_PARALLEL_MIN_BYTES = 16 << 20  # blocks smaller than this decode in the calling thread
_PARALLEL_MIN_CHUNK = 64 << 10  # smaller chunks too: per chunk, Python holds the GIL as long as C decodes


def _in_parallel(fn, items: list, nbytes: int) -> None:
    """``fn(part)`` over contiguous parts of ``items``, on a per-process pool of one thread per core.

    A dask task holding a large block would otherwise decode it on one core while
    others idle (an array of one or two blocks); tasks of all threads share the one
    pool, so decoding never runs on more threads than there are cores.
    """
    global _pool
    ncpu = os.cpu_count() or 1
    if ncpu == 1 or nbytes < _PARALLEL_MIN_BYTES or len(items) < 2 * ncpu:
        fn(items)
        return
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(ncpu, thread_name_prefix="daskh5-decode")
    step = -(-len(items) // ncpu)
    futures = [_pool.submit(fn, items[i : i + step]) for i in range(0, len(items), step)]
    for f in futures:
        f.result()


def _group(ids: np.ndarray) -> dict[int, np.ndarray]:
    """Positions of each distinct value of ``ids`` (sorting once instead of one scan per value)."""
    order = np.argsort(ids, kind="stable")
    values, first = np.unique(ids[order], return_index=True)
    return {int(v): part for v, part in zip(values, np.split(order, first[1:]))}


_PIECE = _SPAN_MAX  # bytes of a contiguous read that is cut up afterwards (strided, points, sub-boxes)
_DIRECT_PIECE = 8 << 20  # bytes per pread straight into the output


def _fill_contiguous(read, base: int, shape: tuple[int, ...], dtype: np.dtype, sel, out: np.ndarray) -> None:
    """Fill ``out`` with the outer selection ``sel`` of the C-ordered array ``shape`` at byte ``base``.

    ``read(offset, size, target=None)`` returns exactly ``size`` bytes (into
    ``target`` when given).  Boxes of whole rows are read straight into
    ``out``; anything else reads runs of the rows it needs, at most
    :data:`_PIECE` bytes at a time, and cuts the wanted elements out.  Rows
    bigger than a piece are read row by row, one axis down.
    """
    if not sel:  # a scalar node
        _read_direct(read, base, out.reshape(-1).view(np.uint8))
        return
    first, inner = sel[0], sel[1:]
    row = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
    whole = all(isinstance(s, tuple) and s == (0, n) for s, n in zip(inner, shape[1:]))
    if isinstance(first, tuple) and whole and out.flags.c_contiguous:
        _read_direct(read, base + first[0] * row, out.reshape(-1).view(np.uint8))
        return
    rows = _Rows.of(first)
    dense = out if rows.inverse is None else np.empty((rows.n, *out.shape[1:]), dtype=out.dtype)
    if row > _PIECE:
        for k in range(rows.n):
            _fill_contiguous(read, base + rows.at(k) * row, shape[1:], dtype, list(inner), dense[k])
    else:

        def cut(spans: list) -> None:
            for i0, i1 in spans:
                lo, hi = rows.at(i0), rows.at(i1 - 1) + 1
                raw = read(base + lo * row, (hi - lo) * row)
                view = np.frombuffer(raw, dtype=dtype).reshape((hi - lo, *shape[1:]))
                dense[i0:i1] = _outer(rows.pick(view, i0, i1), inner)

        _in_parallel(cut, rows.spans(row), dense.nbytes)
    if rows.inverse is not None:
        np.take(dense, rows.inverse, axis=0, out=out)


class _Rows:
    """The distinct rows a selection wants along one axis, in increasing order.

    Evenly spaced rows (ranges, strided slices) are kept as ``start + k * step``,
    so a block of millions of them costs no per-row arithmetic; others as an
    array, with ``inverse`` mapping the wanted rows (any order, repeats) onto them.
    """

    __slots__ = ("array", "inverse", "n", "start", "step")

    def __init__(self, n: int, start: int = 0, step: int | None = 1, array=None, inverse=None):
        self.n, self.start, self.step, self.array, self.inverse = n, start, step, array, inverse

    @classmethod
    def of(cls, s) -> _Rows:
        if isinstance(s, tuple):
            return cls(s[1] - s[0], s[0])
        if s.size < 2:
            return cls(int(s.size), int(s[0]) if s.size else 0)
        d = np.diff(s)
        if (d > 0).all():
            step = int(d[0])
            return (
                cls(int(s.size), int(s[0]), step)
                if (d == step).all()
                else cls(int(s.size), step=None, array=s)
            )
        uniq, inverse = np.unique(s, return_inverse=True)
        return cls(int(uniq.size), step=None, array=uniq, inverse=inverse)

    def at(self, k: int) -> int:
        return self.start + k * self.step if self.step else int(self.array[k])

    def pick(self, view: np.ndarray, i0: int, i1: int) -> np.ndarray:
        """Rows ``i0:i1`` out of ``view``, which starts at row ``at(i0)``."""
        if self.step:
            return view[:: self.step]
        local = self.array[i0:i1] - self.array[i0]
        return view if int(local[-1]) + 1 == i1 - i0 else view[local]

    def spans(self, row: int) -> list[tuple[int, int]]:
        """Runs ``[i0, i1)`` read in one call each.

        A run ends where the gap to the next wanted row is over :data:`_SPAN_GAP`
        bytes or the run would pass :data:`_PIECE` bytes.
        """
        if self.n == 0:
            return []
        per_piece = max(1, _PIECE // row)
        if self.step:
            m = 1 if (self.step - 1) * row > _SPAN_GAP else max(1, (per_piece - 1) // self.step + 1)
            return [(i, min(i + m, self.n)) for i in range(0, self.n, m)]
        rows = self.array
        gap = (np.diff(rows) - 1) * row > _SPAN_GAP
        group = np.concatenate([[0], np.cumsum(gap)])
        group_start = rows[np.concatenate([[0], np.flatnonzero(gap) + 1])][group]
        piece = (rows - group_start) // per_piece
        bounds = [0, *(np.flatnonzero((np.diff(group) != 0) | (np.diff(piece) != 0)) + 1).tolist(), self.n]
        return list(itertools.pairwise(bounds))


def _read_direct(read, offset: int, target: memoryview) -> None:
    """Read ``len(target)`` bytes at ``offset`` into ``target``, in pieces spread over the pool."""
    pieces = [(a, min(a + _DIRECT_PIECE, len(target))) for a in range(0, len(target), _DIRECT_PIECE)]

    def fill(part: list) -> None:
        for a, b in part:
            read(offset + a, b - a, target[a:b])

    _in_parallel(fill, pieces, len(target))


def _outer(view: np.ndarray, inner) -> np.ndarray:
    """Outer selection ``inner`` of the axes after the first of ``view``."""
    boxes = (slice(None), *(slice(*s) if isinstance(s, tuple) else slice(None) for s in inner))
    view = view[boxes]
    for axis, s in enumerate(inner, start=1):
        if not isinstance(s, tuple):
            view = np.take(view, s, axis=axis)
    return view


_h5_lock = threading.RLock()  # reentrant: open_file drops stale handles, also when called under it
_h5_files: dict[tuple[str, int, str | None], object] = {}


def drop_stale(path: str, every: bool = False) -> None:
    """Close cached handles of ``path`` from before its last change (``every``: all of them).

    HDF5 shares one open file between handles of the same file: opening a file
    changed in place (an in-place :func:`daskh5.append`) while an old handle is
    cached would show the old metadata.
    """
    try:
        mtime = None if every else os.stat(path).st_mtime_ns
    except OSError:
        return
    with _h5_lock:
        for old in [k for k in _h5_files if k[0] == path and k[1] != mtime]:
            _h5_files.pop(old).close()


def load_plugins() -> None:
    """Import hdf5plugin if it is installed.

    It registers every filter it ships with HDF5 for the whole process, the
    allowed and the refused alike: every h5py read of node data must go
    through :func:`check_dataset_filters` first.
    """
    try:
        import hdf5plugin  # noqa: F401  registers LZ4, zstd, bzip2, blosc2... with h5py
    except ImportError:
        pass


def refusal(path: str, node: str, refused: list[int]) -> UnsupportedFilterError:
    """The error for a node whose pipeline uses filters outside the allowlist."""
    names = ", ".join(f"{fid} ({filter_name(fid)})" for fid in refused)
    opt_in = ", ".join(repr(FILTER_NAMES.get(fid, fid)) for fid in refused)
    return UnsupportedFilterError(
        f"{path}:{node} is compressed with HDF5 filter {names}, which daskh5 does not decode "
        "unless told to: decoders outside its allowlist can end or crash the process on a damaged or "
        f"crafted chunk. If you trust this file, pass allow_filters=[{opt_in}] (daskh5 stats: "
        f"--allow-filter {FILTER_NAMES.get(refused[0], refused[0])})"
    )


def check_filters_allowed(path: str, node: str, filters, allowed: frozenset[int] = SAFE_FILTERS) -> None:
    """Refuse a node whose filter pipeline uses a filter outside ``allowed``."""
    refused = refused_filters(filters, allowed)
    if refused:
        raise refusal(path, node, refused)


def dataset_filters(ds) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """The filter pipeline of an h5py dataset as stored now, ``((id, cd_values), ...)``."""
    dcpl = ds.id.get_create_plist()
    return tuple(
        (int(fid), tuple(int(c) for c in cd))
        for fid, _flags, cd, _name in (dcpl.get_filter(i) for i in range(dcpl.get_nfilters()))
    )


def check_dataset_filters(ds, path: str, node: str, allowed: frozenset[int] = SAFE_FILTERS) -> None:
    """Call right before h5py reads ``ds``'s data: the file may have been replaced since it was described.

    A virtual dataset's sources in the same file are checked too (HDF5 decodes
    their chunks when the virtual dataset is read).
    """
    check_filters_allowed(path, node, dataset_filters(ds), allowed)
    if ds.is_virtual:
        for source in ds.virtual_sources():
            if source.file_name == "." and source.dset_name in ds.file:
                where = f"{node} (its source {source.dset_name})"
                check_filters_allowed(path, where, dataset_filters(ds.file[source.dset_name]), allowed)


def check_filters_available(path: str, node: str, filters, allowed: frozenset[int] = SAFE_FILTERS) -> None:
    """Fail when the array is created, not when it is computed, if a filter is refused or missing."""
    import h5py

    check_filters_allowed(path, node, filters, allowed)
    load_plugins()
    missing = [fid for fid, _cd in filters if not h5py.h5z.filter_avail(fid)]
    if missing:
        raise UnsupportedFilterError(
            f"{path}:{node} is compressed with HDF5 filter id(s) {missing}, which neither daskh5 nor "
            "h5py can decode in this environment; `pip install hdf5plugin` adds LZ4, zstd, bzip2, bitshuffle, "
            "blosc2 and more (LZO, filter 305, is only readable where PyTables was built with it)"
        )


def _h5_dataset(info: NodeInfo, driver: str | None):
    """The h5py dataset for ``info`` from a per-process cache (call under ``_h5_lock``)."""
    load_plugins()
    mtime = os.stat(info.path).st_mtime_ns
    key = (info.path, mtime, driver)
    f = _h5_files.get(key)
    if f is None:
        for old in [k for k in _h5_files if k[0] == info.path]:
            _h5_files.pop(old).close()
        f = open_file(info.path, driver={"H5FD_CORE": "core"}.get(driver or ""))
        _h5_files[key] = f
    # checked again: the file may have been replaced since the node was described
    ds = lookup(f, info.node, allow_external=info.allow_external)
    layout = check_storage(ds, f"{info.path}:{info.node}", allow_external=info.allow_external)
    if layout != "virtual":
        return ds
    del ds
    return with_origin(f, info.node, layout)

"""Ragged collections: samples of different shapes as a dask bag or by random access.

See :mod:`daskh5._layout` for the three layouts.  Reads are bulk: a
partition, a slice or a list of samples is one read of the flat data (or of
the VLArray rows), split into reshaped samples in memory.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from daskh5 import _files, _vlen
from daskh5._chunking import resolve_budget
from daskh5._codecs import SAFE_FILTERS, allowed_filters
from daskh5._containment import check_storage, with_origin
from daskh5._inputs import resolve
from daskh5._layout import RaggedLayout, find_layout
from daskh5._nodes import describe_array, lookup, open_file
from daskh5._optional import require
from daskh5._reader import NodeReader, check_dataset_filters, load_plugins
from daskh5.errors import RaggedLayoutError

if TYPE_CHECKING:
    import dask.bag as db

__all__ = ["RaggedArray", "open_ragged", "read_ragged"]


# -- reading runs of samples (plain functions of plain data: they run in dask tasks) --------------
def _split_flat(flat: NodeReader, starts, stops, shapes, ndim: int) -> list[np.ndarray]:
    """Samples ``[starts[i], stops[i])`` of the flat data, from one read of their span."""
    if len(starts) == 0:
        return []
    lo, hi = int(starts.min()), int(stops.max())
    return _split(flat[lo:hi], starts - lo, stops - lo, shapes, ndim)


def _split(values: np.ndarray, starts, stops, shapes, ndim: int) -> list[np.ndarray]:
    """Views of ``values[starts[i]:stops[i]]`` reshaped to ``shapes[i]`` (the hot loop: plain ints)."""
    bounds = zip(starts.tolist(), stops.tolist())
    if shapes is not None:
        dims = zip(*(shapes[:, j].tolist() for j in range(shapes.shape[1]))) if shapes.shape[1] else None
        if dims is None:
            return [values[a:b].reshape(()) for a, b in bounds]
        return [values[a:b].reshape(s) for (a, b), s in zip(bounds, dims)]
    if ndim == 0:
        return [values[a:b].reshape(()) for a, b in bounds]
    return [values[a:b] for a, b in bounds]


_LONG_SAMPLE = 256  # elements: longer samples are taken by slices, shorter by positions

_vl_lock = threading.Lock()
_vl_files: dict[tuple[str, int, str | None], object] = {}
_vl_descriptors: dict[tuple[str, int, str | None, str], object] = {}  # -> NodeReader or None


def _close_vl_files() -> None:
    with _vl_lock:
        for f in _vl_files.values():
            with contextlib.suppress(Exception):
                f.close()
        _vl_files.clear()
        _vl_descriptors.clear()


_files._close_hooks.append(_close_vl_files)


def _vl_dataset(
    path: str,
    node: str,
    driver: str | None,
    allow_external: bool = False,
    allowed: frozenset[int] = SAFE_FILTERS,
):
    """(h5py dataset, descriptor reader or None, file size) from the per-process cache (under ``_vl_lock``).

    The node's links, storage and filters are checked again each time (the file
    may have been replaced since the layout was opened).
    """
    load_plugins()
    st = os.stat(path)
    key = (path, st.st_mtime_ns, driver)
    f = _vl_files.get(key)
    if f is None:
        for old in [k for k in _vl_files if k[0] == path]:
            _vl_files.pop(old).close()
        for old in [k for k in _vl_descriptors if k[0] == path]:
            del _vl_descriptors[old]
        h5driver = "core" if driver == "H5FD_CORE" else None
        f = _vl_files[key] = open_file(path, h5driver)
    ds = lookup(f, node, allow_external=allow_external)
    layout = check_storage(ds, f"{path}:{node}", allow_external=allow_external)
    check_dataset_filters(ds, path, node, allowed)
    if layout in ("external", "virtual"):  # HDF5 reads these itself (names relative to the file), row by row
        del ds
        return with_origin(f, node, layout), None, st.st_size
    if (*key, ds.name) not in _vl_descriptors:
        _vl_descriptors[(*key, ds.name)] = _vlen.descriptor_reader(path, ds, driver)
    return ds, _vl_descriptors[(*key, ds.name)], st.st_size


def _vl_rows(
    path: str,
    node: str,
    rows,
    driver: str | None = None,
    allow_external: bool = False,
    allowed: frozenset[int] = SAFE_FILTERS,
    raw: np.dtype | None = None,
) -> list[np.ndarray]:
    """VLArray rows ``rows`` (a slice or sorted index array), after checking their stored lengths.

    Their values must fit in the file (see :mod:`daskh5._vlen`); then they are read
    in one h5py call.  Without daskh5's own decoder for the row descriptors'
    chunks, rows are read one by one and the read stops as soon as they pass the
    file's size.
    """
    with _vl_lock:
        ds, descriptors, size = _vl_dataset(path, node, driver, allow_external, allowed)
        where = f"{path}:{ds.name}"
        what = f"rows {rows.start}..{rows.stop - 1}" if isinstance(rows, slice) else f"{len(rows)} rows"
        itemsize = _base_itemsize(ds)
        try:
            if raw is not None:  # rows h5py cannot read (right): daskh5 reads their heap objects itself
                return _heap_rows(ds, where, descriptors, rows, itemsize, size, raw)
            if descriptors is not None:
                _vlen.check_claim(where, what, _vlen.row_lengths(descriptors, rows), itemsize, size)
                return list(ds[rows])
            out, total = [], 0
            for i in range(*rows.indices(ds.shape[0])) if isinstance(rows, slice) else rows.tolist():
                out.append(ds[i])
                total += out[-1].nbytes
                if total > size:
                    _vlen.check_claim(where, what, np.array([total]), 1, size)
            return out
        except OSError as exc:
            raise RaggedLayoutError(f"{path}:{node}: could not read rows {rows}: {exc}") from exc


def _heap_rows(
    ds, where: str, descriptors, rows, itemsize: int, size: int, raw: np.dtype
) -> list[np.ndarray]:
    """VLArray rows of items ``raw`` (as stored) read from the file's heap (see :func:`_vlen.heap_rows`):
    PyTables Time atoms, which h5py cannot map, and non-native byte orders, which h5py reads unswapped."""
    import h5py

    if descriptors is None:
        raise RaggedLayoutError(
            f"{where}: rows of {raw} items are read by daskh5 itself, which needs the row descriptors "
            "in a chunked node with standard filters; read this VLArray with PyTables"
        )
    tid = ds.id.get_type().get_super()
    atom_shape = tuple(int(n) for n in tid.get_array_dims()) if tid.get_class() == h5py.h5t.ARRAY else ()
    desc = descriptors[rows]
    _vlen.check_claim(where, "the rows", desc["length"].astype(np.int64), itemsize, size)
    fcpl = ds.file.id.get_create_plist()
    got = _vlen.heap_rows(ds.file.filename, where, desc, itemsize, fcpl.get_sizes(), fcpl.get_userblock())
    return [np.frombuffer(r, dtype=raw).reshape(-1, *atom_shape) for r in got]


def _base_itemsize(ds) -> int:
    """Bytes of one item of a vlen dataset's base type (an atom: ``Float32Atom(shape=3)`` is 12)."""
    return ds.id.get_type().get_super().get_size()


def _vl_lengths(
    path: str,
    node: str,
    n: int,
    driver: str | None,
    per_item: int,
    allow_external=False,
    allowed=SAFE_FILTERS,
) -> np.ndarray | None:
    """Values in each of the first ``n`` VLArray rows, from their descriptors alone (None when
    they can only be learnt by reading the rows); rows claiming more bytes than the file are refused."""
    with _vl_lock:
        ds, descriptors, size = _vl_dataset(path, node, driver, allow_external, allowed)
        if descriptors is None:
            return None
        itemsize = _base_itemsize(ds)
        out = np.empty(n, dtype=np.int64)
        total, step = 0, 1 << 20
        for a in range(0, n, step):
            b = min(n, a + step)
            out[a:b] = _vlen.row_lengths(descriptors, slice(a, b))
            total += int(out[a:b].sum()) * itemsize
            _vlen.check_claim(f"{path}:{ds.name}", f"rows 0..{b - 1}", np.array([total]), 1, size)
    return out * per_item


def _fix_vl(rows, layout_dtype: np.dtype, shapes, atom_shape, first: int, path: str, node: str, text=None,
            time=None):  # fmt: skip
    if text is not None:
        return [_as_text(np.asarray(r), text, first + i, path, node) for i, r in enumerate(rows)]
    out = []
    for i, r in enumerate(rows):
        r = np.asarray(r)
        if time is not None:
            from daskh5._h5types import to_datetimes

            r = to_datetimes(r, time)
        elif layout_dtype.kind == "b":
            r = r != 0
        elif r.dtype != layout_dtype:
            r = r.astype(layout_dtype)
        if shapes is not None:
            want = tuple(shapes[i]) + tuple(atom_shape)
            if int(np.prod(want)) != r.size:  # the shape's values are data: not in the message
                raise RaggedLayoutError(
                    f"{path}:{node}: row {first + i} holds {r.size} values, another number than its "
                    "shape column gives"
                )
            r = r.reshape(want)
        out.append(r)
    return out


def _as_text(r: np.ndarray, text: str, row: int, path: str, node: str):
    """A VLStringAtom row as ``bytes`` or a VLUnicodeAtom row (UCS-4 code points) as ``str``, as PyTables
    reads them (trailing NULs of a unicode row dropped, as numpy's ``U`` type does)."""
    if text == "bytes":
        return r.tobytes()
    if r.size == 0:
        return ""
    try:
        return r.astype("=u4", copy=False).view(f"U{r.size}").item()
    except (ValueError, UnicodeError) as exc:
        raise RaggedLayoutError(f"{path}:{node}: row {row} is not valid UCS-4 text ({exc})") from exc


def _read_vl_run(
    path,
    node,
    dtype,
    i0: int,
    i1: int,
    shapes,
    atom_shape,
    driver=None,
    allow_external=False,
    allowed=SAFE_FILTERS,
    text=None,
    time=None,
    raw=None,
) -> list[np.ndarray]:
    rows = _vl_rows(path, node, slice(i0, i1), driver, allow_external, allowed, raw)
    return _fix_vl(rows, dtype, shapes, atom_shape, i0, path, node, text, time)


class RaggedArray(Sequence):
    """Random access to a ragged collection: ``r[i]``, ``r[a:b]``, ``r[[i, j]]``.

    Obtained from :func:`open_ragged`.  Holds plain data only (paths, the side
    columns), so it pickles; reading goes through the same lock-free chunk
    reader as :func:`daskh5.from_pytables` (flat layout) or one h5py read per
    request (VLArray layouts).

    Attributes
    ----------
    shapes : numpy.ndarray
        ``(N, k)`` shape of every sample (``(N, 1)`` lengths for 1-d samples).
    lengths : numpy.ndarray
        Number of values of every sample.
    dtype : numpy.dtype
    """

    def __init__(self, layout: RaggedLayout):
        self.layout = layout
        self.dtype = {"bytes": np.dtype(bytes), "str": np.dtype(str)}.get(
            layout.text, layout.time or layout.dtype
        )
        self._flat = (
            NodeReader(
                describe_array(layout.path, layout.node, allow_external=layout.allow_external),
                driver=layout.driver,
                allowed=layout.allowed,
            )
            if layout.kind == "flat"
            else None
        )
        self._lengths = None if layout.kind == "vlarray" and layout.shapes is None else self._known_lengths()

    # -- context manager: nothing is held open, but users write `with` ------------------------
    def __enter__(self) -> RaggedArray:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Drop cached file handles of this process (reading again reopens them)."""
        with _vl_lock:
            for key in [k for k in _vl_files if k[0] == self.layout.path]:
                _vl_files.pop(key).close()

    def __repr__(self) -> str:
        lay = self.layout
        return (
            f"<RaggedArray {lay.path}:{lay.node} {lay.kind} n={len(self)} ndim={lay.ndim} dtype={self.dtype}>"
        )

    def __len__(self) -> int:
        return self.layout.nsamples

    @property
    def ndim(self) -> int:
        """Rank of every sample."""
        return self.layout.ndim

    def _known_lengths(self) -> np.ndarray:
        lay = self.layout
        if lay.kind == "flat":
            return lay.stops - lay.starts
        per_atom = int(np.prod(lay.atom_shape)) if lay.atom_shape else 1
        return np.prod(lay.shapes, axis=1, dtype=np.int64) * per_atom

    @property
    def lengths(self) -> np.ndarray:
        """Number of values in every sample (a plain VLArray is read once, in bulk, to learn them)."""
        if self._lengths is None:
            self._lengths = self._stored_lengths()
        if self._lengths is None:
            sizes = []
            for batch in self.iter_batches(65536):
                sizes.extend(len(v) if isinstance(v, (str, bytes)) else v.size for v in batch)
            self._lengths = np.asarray(sizes, dtype=np.int64)
        return self._lengths

    def _stored_lengths(self) -> np.ndarray | None:
        lay = self.layout
        per_atom = int(np.prod(lay.atom_shape)) if lay.atom_shape else 1
        return _vl_lengths(
            lay.path, lay.node, len(self), lay.driver, per_atom, lay.allow_external, lay.allowed
        )

    @property
    def shapes(self) -> np.ndarray:
        """``(N, k)`` array of sample shapes."""
        lay = self.layout
        if lay.shapes is not None:
            base = lay.shapes
        elif lay.ndim - len(lay.atom_shape) == 0:
            base = np.zeros((len(self), 0), dtype=np.int64)
        else:
            per_atom = int(np.prod(lay.atom_shape)) if lay.atom_shape else 1
            base = (self.lengths // per_atom)[:, None]
        if lay.atom_shape:
            base = np.hstack([base, np.tile(np.asarray(lay.atom_shape, np.int64), (len(base), 1))])
        return base

    # -- reading ---------------------------------------------------------------------------------
    def _run(self, i0: int, i1: int) -> list[np.ndarray]:
        lay = self.layout
        shapes = None if lay.shapes is None else lay.shapes[i0:i1]
        if lay.kind == "flat":
            return _split_flat(self._flat, lay.starts[i0:i1], lay.stops[i0:i1], shapes, lay.ndim)
        return _read_vl_run(*self._vl_args(i0, i1, shapes))

    def _vl_args(self, i0: int, i1: int, shapes) -> tuple:
        """The arguments of :func:`_read_vl_run` for samples ``i0:i1`` (plain data: a task can carry them)."""
        lay = self.layout
        return (lay.path, lay.node, lay.dtype, i0, i1, shapes, lay.atom_shape, lay.driver, lay.allow_external,
                lay.allowed, lay.text, lay.time, lay.raw)  # fmt: skip

    def _take(self, idx: np.ndarray) -> list[np.ndarray]:
        """Samples at ``idx`` (any order, repeats allowed) in one bulk read."""
        lay = self.layout
        if idx.size == 0:
            return []
        if lay.kind == "flat":
            starts, stops = lay.starts[idx], lay.stops[idx]
            lengths = stops - starts
            if lengths.mean() >= _LONG_SAMPLE:  # long samples: slices of runs beat per-value positions
                return self._take_spans(idx)
            positions = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
            values = self._flat[positions] if positions.size else np.empty(0, self.dtype)
            ends = np.cumsum(lengths)
            shapes = None if lay.shapes is None else lay.shapes[idx]
            return _split(values, ends - lengths, ends, shapes, lay.ndim)
        order = np.unique(idx)
        rows = _vl_rows(lay.path, lay.node, order, lay.driver, lay.allow_external, lay.allowed, lay.raw)
        shapes = None if lay.shapes is None else lay.shapes[order]
        fixed = _fix_vl(rows, lay.dtype, shapes, lay.atom_shape, 0, lay.path, lay.node, lay.text, lay.time)
        where = np.searchsorted(order, idx)
        return [fixed[w] for w in where]

    def _take_spans(self, idx: np.ndarray) -> list[np.ndarray]:
        """Samples at ``idx`` read as slices: one read per run of nearby samples, gaps bounded."""
        lay = self.layout
        order = np.unique(idx)
        starts, stops = lay.starts[order], lay.stops[order]
        shapes = None if lay.shapes is None else lay.shapes[order]
        # a new read wherever the gap to the next sample is bigger than that sample
        gaps = starts[1:] - stops[:-1]
        cut = np.flatnonzero(gaps > np.maximum(stops[1:] - starts[1:], _LONG_SAMPLE)) + 1
        found: list[np.ndarray] = []
        for a, b in zip(np.concatenate(([0], cut)), np.concatenate((cut, [order.size]))):
            part = None if shapes is None else shapes[a:b]
            found += _split_flat(self._flat, starts[a:b], stops[a:b], part, lay.ndim)
        where = np.searchsorted(order, idx)
        return [found[w] for w in where]

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if not -n <= i < n:
                raise IndexError(f"sample {i} is out of range for {n} samples")
            i %= n
            return self._run(i, i + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                return self._run(start, max(start, stop))
            return self._take(np.arange(start, stop, step))
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean index of shape {idx.shape} for {n} samples")
            idx = np.flatnonzero(idx)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise IndexError("index with an int, a slice, or a 1-d list of ints")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"sample index out of range for {n} samples")
        return self._take(np.where(idx < 0, idx + n, idx))

    def __iter__(self) -> Iterator[np.ndarray]:
        for batch in self.iter_batches():
            yield from batch

    def iter_batches(self, batch_size: int | str = "16MiB") -> Iterator[list[np.ndarray]]:
        """Yield lists of consecutive samples, one bulk read each.

        ``batch_size`` is a number of samples (int) or a byte budget (str).
        """
        n = len(self)
        if isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool):
            if batch_size <= 0:
                raise ValueError(f"batch size must be positive, got {batch_size}")
            runs = [(i, min(n, i + int(batch_size))) for i in range(0, n, int(batch_size))]
        else:
            runs = self._runs(batch_size)
        for i0, i1 in runs:
            yield self._run(i0, i1)

    def _runs(self, size: int | str | None) -> list[tuple[int, int]]:
        """Runs of consecutive samples within a byte budget (a str, or an int number of bytes)."""
        n = len(self)
        budget = resolve_budget(size)
        if self._lengths is None:
            self._lengths = self._stored_lengths()
        if self._lengths is None:  # a plain VLArray whose descriptors need HDF5: estimate from the first rows
            head = self._run(0, min(n, 1000))
            nbytes = [
                len(v) * self.layout.dtype.itemsize if isinstance(v, (str, bytes)) else v.nbytes for v in head
            ]
            avg = max(1, int(np.mean(nbytes)) if head else 1)
            step = max(1, budget // avg)
            return [(i, min(n, i + step)) for i in range(0, n, step)]
        return _runs_by_bytes(self._lengths * self.layout.dtype.itemsize, budget)

    # -- conversions -----------------------------------------------------------------------------
    def to_bag(self, partition_size: int | str | None = None) -> db.Bag:
        """A dask bag of the samples, partitions of consecutive samples within ``partition_size``.

        ``partition_size`` is a byte budget (``"64MiB"``; ``None``/``"auto"``
        for dask's ``array.chunk-size``; a sample bigger than the budget makes
        a partition of its own) or an int number of samples per partition, as
        for :func:`daskh5.iter_batches`.  The bag runs on dask's threaded
        scheduler by default (see :class:`daskh5.SampleBag`).
        """
        from dask.base import tokenize
        from dask.highlevelgraph import HighLevelGraph

        lay = self.layout
        runs = self._partitions(partition_size)
        name = "read-ragged-" + tokenize(lay.path, lay.node, os.stat(lay.path).st_mtime_ns, runs)
        layer = {}
        for p, (i0, i1) in enumerate(runs):
            shapes = None if lay.shapes is None else lay.shapes[i0:i1]
            if lay.kind == "flat":
                layer[(name, p)] = (
                    _split_flat,
                    self._flat,
                    lay.starts[i0:i1],
                    lay.stops[i0:i1],
                    shapes,
                    lay.ndim,
                )
            else:
                layer[(name, p)] = (_read_vl_run, *self._vl_args(i0, i1, shapes))
        if not runs:
            layer[(name, 0)] = (list, ())
        graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
        from daskh5._bag import SampleBag

        return SampleBag(graph, name, max(1, len(runs)))

    def _partitions(self, size: int | str | None) -> list[tuple[int, int]]:
        """Runs of samples: ``size`` samples each (an int), or within a byte budget (a str)."""
        if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
            if size <= 0:
                raise ValueError(f"partition_size must be a positive number of samples, got {size}")
            n = len(self)
            return [(i, min(n, i + int(size))) for i in range(0, n, int(size))]
        return self._runs(size)

    def pad(self, fill_value=0, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Every sample in one dense ``(N, *shape)`` array, padded with ``fill_value``.

        ``shape`` defaults to the largest extent along each axis; samples larger
        than a given ``shape`` raise ``ValueError``.
        """
        if self.layout.text is not None:
            raise TypeError(
                f"{self.layout.path}:{self.layout.node} holds one string per row: there is nothing to pad; "
                "np.array(list(r)) gives them as one array"
            )
        shapes = self.shapes
        target = tuple(shapes.max(axis=0)) if shape is None and len(shapes) else tuple(shape or ())
        if len(shapes) and (shapes > np.asarray(target)).any():
            row = int(np.flatnonzero((shapes > np.asarray(target)).any(axis=1))[0])
            raise ValueError(f"sample {row} is larger than {target} along some axis; pass a bigger shape")
        out = np.full(
            (len(self), *target), fill_value, dtype=np.result_type(self.dtype, np.min_scalar_type(fill_value))
        )
        i = 0
        for batch in self.iter_batches():
            for v in batch:
                out[(i, *(slice(0, s) for s in v.shape))] = v
                i += 1
        return out

    def to_awkward(self):
        """An awkward array of the samples (nested lists over one flat buffer).

        When the samples are stored back to back (the layout daskh5 writes),
        the flat data is read once and wrapped without per-sample copies.
        """
        ak = require("awkward", "RaggedArray.to_awkward")
        lay = self.layout
        n = len(self)
        if lay.text is not None:  # strings (or bytestrings) in awkward's own string type
            return ak.Array([v for batch in self.iter_batches() for v in batch])
        contiguous = lay.kind == "flat" and (n == 0 or (np.array_equal(lay.starts[1:], lay.stops[:-1])))
        if contiguous:
            lo = int(lay.starts[0]) if n else 0
            values = self._flat[lo : int(lay.stops[-1])] if n else np.empty(0, self.dtype)
        else:
            parts = [v.reshape(-1) for batch in self.iter_batches() for v in batch]
            values = np.concatenate(parts) if parts else np.empty(0, self.dtype)
        layout = ak.contents.NumpyArray(values)
        shapes = self.shapes
        for level in reversed(range(shapes.shape[1])):
            counts = np.repeat(shapes[:, level], np.prod(shapes[:, :level], axis=1, dtype=np.int64))
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            layout = ak.contents.ListOffsetArray(ak.index.Index64(offsets), layout)
        return ak.Array(layout)


def _runs_by_bytes(nbytes: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive runs of samples whose bytes add up to at most ``budget`` (at least one each)."""
    n = len(nbytes)
    cum = np.concatenate([[0], np.cumsum(nbytes, dtype=np.int64)])
    runs, i = [], 0
    while i < n:
        j = int(np.searchsorted(cum, cum[i] + budget, side="right")) - 1
        j = max(j, i + 1)
        runs.append((i, min(j, n)))
        i = j
    return runs


def open_ragged(
    path: str | os.PathLike,
    node: str,
    *,
    start_stop: str | None = None,
    shape: str | None = None,
    driver: str | None = None,
    allow_external: bool = False,
    allow_filters=(),
) -> RaggedArray:
    """Open a ragged collection for random access.

    Parameters
    ----------
    path : str or path-like
    node : str
        The data node: a 1-d array (flat layout) or a VLArray.
    start_stop, shape : str, optional
        Side columns, when they are not ``<node>_start_and_stop`` / ``<node>_shape``.
    driver : str, optional
        ``"H5FD_CORE"`` reads the whole file into memory once per process (as
        for :func:`daskh5.from_pytables`); default: read what is needed.
    allow_external : bool
        Read the data node and side columns even when their values are stored
        outside the file (external links, EXTERNAL storage, virtual datasets
        over other files), relative to the file's directory. Off by default:
        :class:`daskh5.ExternalDataError` (see :doc:`/user-guide/safety`).
    allow_filters : iterable of int or str, optional
        HDF5 filters to decode beyond daskh5's allowlist, by id or name
        (``["sz3"]``), for files you trust (as for :func:`daskh5.from_pytables`).

    Examples
    --------
    >>> import numpy as np, os, tempfile, daskh5
    >>> path = os.path.join(tempfile.mkdtemp(), "ragged.h5")
    >>> samples = [np.arange(6).reshape(2, 3), np.arange(4).reshape(1, 4)]
    >>> daskh5.write_ragged(samples, path, "/data", progress=False)
    >>> with daskh5.open_ragged(path, "/data") as r:
    ...     print(len(r), r[-1].shape, r.shapes.tolist())
    2 (1, 4) [[2, 3], [1, 4]]
    """
    from daskh5.array import _normalize_driver

    driver = _normalize_driver(driver)
    allowed = allowed_filters(allow_filters)
    path, node, _ = resolve(path, node)
    return RaggedArray(
        find_layout(path, node, start_stop, shape, driver, allow_external=allow_external, allowed=allowed)
    )


def read_ragged(
    path: str | os.PathLike,
    node: str,
    *,
    partition_size: int | str | None = None,
    start_stop: str | None = None,
    shape: str | None = None,
    driver: str | None = None,
    allow_external: bool = False,
    allow_filters=(),
) -> db.Bag:
    """A dask bag of the samples of a ragged collection, reshaped to their true shapes.

    Each partition is a run of consecutive samples within ``partition_size``
    (a byte budget such as ``"64MiB"``, dask's ``array.chunk-size`` by
    default, or an int number of samples) and is read in one bulk read, then
    split in memory.  The bag and every bag or result derived from it run on
    dask's threaded scheduler unless a scheduler is given (``scheduler=``,
    ``dask.config``, a ``distributed`` client): samples are NumPy arrays, so
    threads run in parallel, and a script needs no ``__main__`` guard.
    ``start_stop``, ``shape``, ``driver``, ``allow_external`` and
    ``allow_filters`` are as for :func:`open_ragged`.

    Examples
    --------
    >>> import numpy as np, os, tempfile, daskh5
    >>> path = os.path.join(tempfile.mkdtemp(), "ragged.h5")
    >>> daskh5.write_ragged([np.ones(n) for n in range(1, 6)], path, "/tokens", progress=False)
    >>> daskh5.read_ragged(path, "/tokens").map(len).compute()
    [1, 2, 3, 4, 5]
    """
    ragged = open_ragged(
        path, node, start_stop=start_stop, shape=shape, driver=driver, allow_external=allow_external,
        allow_filters=allow_filters,
    )  # fmt: skip
    return ragged.to_bag(partition_size)

"""Write ragged samples as the flat layout, in bulk, never leaving a half-written file.

The file is written under a temporary name next to the target (appending: a
copy of the existing file), checked and renamed into place when complete (see
:func:`daskh5._safe_tables.atomic_target`): if anything fails, the target is
as it was.  The number of committed samples is stored last
(``DASKH5_NSAMPLES``); rows past it (an append by an earlier daskh5 that was
killed midway) are ignored by readers and dropped by the next append.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np

from daskh5._chunking import resolve_budget
from daskh5._inputs import resolve
from daskh5._layout import ATTR_KIND, ATTR_NDIM, ATTR_NSAMPLES, ATTR_SHAPE, ATTR_START_STOP
from daskh5._safe_tables import atomic_target, open_tables, shown, writer_node
from daskh5._verify import check_node, hdf5_errors
from daskh5.errors import NodeKindError, RaggedLayoutError

__all__ = ["write_ragged"]


def _default_filters():
    import tables

    return tables.Filters(complevel=5, complib="blosc:lz4", shuffle=True)


def _iter_samples(samples) -> Iterator:
    """Samples one by one; a dask bag is computed a few partitions at a time, in order."""
    import dask.bag as db

    if isinstance(samples, db.Bag):
        import dask

        parts = samples.to_delayed()
        window = max(2, 2 * (os.cpu_count() or 1))
        for i in range(0, len(parts), window):
            for part in dask.compute(*parts[i : i + window]):
                yield from part
        return
    yield from samples


class _Writer:
    """Appends batches of samples to the three EArrays of one flat layout."""

    def __init__(self, f, node: str, dtype: np.dtype, ndim: int, filters, expectedrows: int, guard):
        self.f = f
        self.node = node
        self.guard = guard  # turns HDF5's errors into a WriteError (see _verify.hdf5_errors)
        with guard():
            self._open_or_create(dtype, ndim, filters, expectedrows)
        self.before = (self.flat.nrows, self.ss.nrows, None if self.shape is None else self.shape.nrows)
        self.paths = [a._v_pathname for a in (self.flat, self.ss, self.shape) if a is not None]
        self.offset = int(self.ss[-1, 1]) if self.ss.nrows else 0
        self.count = self.ss.nrows

    def _open_or_create(self, dtype: np.dtype, ndim: int, filters, expectedrows: int) -> None:
        import tables

        f, node = self.f, self.node
        parent, name = node.rsplit("/", 1)
        parent = parent or "/"
        if node in f:
            self._open_existing(dtype, ndim)
        else:
            if dtype.kind not in "biufcS":
                raise TypeError(
                    f"write_ragged: samples of dtype {dtype} cannot be stored (numbers, bool, bytes only)"
                )
            atom = tables.Atom.from_dtype(np.dtype(dtype).newbyteorder("="))
            self.flat = f.create_earray(
                parent,
                name,
                atom=atom,
                shape=(0,),
                filters=filters,
                expectedrows=expectedrows,
                createparents=True,
            )
            self.ss = f.create_earray(
                parent, name + "_start_and_stop", atom=tables.Int64Atom(), shape=(0, 2), filters=filters
            )
            self.shape = None
            if ndim >= 2:
                self.shape = f.create_earray(
                    parent, name + "_shape", atom=tables.Int64Atom(), shape=(0, ndim), filters=filters
                )
            attrs = self.flat.attrs
            attrs[ATTR_KIND] = "flat"
            attrs[ATTR_START_STOP] = self.ss._v_pathname
            if self.shape is not None:
                attrs[ATTR_SHAPE] = self.shape._v_pathname
            attrs[ATTR_NDIM] = ndim
            attrs[ATTR_NSAMPLES] = 0
            self.dtype, self.ndim = dtype, ndim

    def _open_existing(self, dtype: np.dtype, ndim: int) -> None:
        f, node = self.f, self.node
        self.flat, self.ss, self.shape, stored_ndim = _existing_layout(f, node, dtype, ndim)
        flat = self.flat
        n = int(flat.attrs[ATTR_NSAMPLES]) if ATTR_NSAMPLES in flat.attrs else self.ss.nrows
        if n != self.ss.nrows:  # rows of an append that was killed midway: drop them first
            self.ss.truncate(n)
            if self.shape is not None:
                self.shape.truncate(n)
            self.flat.truncate(int(self.ss[-1, 1]) if n else 0)
        self.dtype, self.ndim = flat.atom.dtype, stored_ndim

    def append(self, batch: list[np.ndarray]) -> None:
        sizes = np.fromiter((a.size for a in batch), dtype=np.int64, count=len(batch))
        ends = self.offset + np.cumsum(sizes)
        ss = np.stack([ends - sizes, ends], axis=1)
        with self.guard():
            if sizes.sum():
                self.flat.append(np.concatenate([a.reshape(-1) for a in batch]))
            self.ss.append(ss)
            if self.shape is not None:
                self.shape.append(
                    np.array([a.shape for a in batch], dtype=np.int64).reshape(len(batch), self.ndim)
                )
        self.offset = int(ends[-1])
        self.count += len(batch)

    def commit(self) -> None:
        with self.guard():
            self.flat.attrs[ATTR_NSAMPLES] = self.count
            self.f.flush()

    def written(self) -> list[tuple[str, tuple[int, ...], tuple[tuple[int, int], ...]]]:
        """``(node, shape, region written)`` of each array, for :func:`daskh5._verify.check_node`."""
        flat_rows, rows, _ = self.before
        out = [
            (self.paths[0], (self.offset,), ((flat_rows, self.offset),)),
            (self.paths[1], (self.count, 2), ((rows, self.count), (0, 2))),
        ]
        if len(self.paths) > 2:
            out.append((self.paths[2], (self.count, self.ndim), ((rows, self.count), (0, self.ndim))))
        return out


def _existing_layout(f, node: str, dtype: np.dtype, ndim: int):
    """``(flat, start_stop, shape or None, sample ndim)`` of the layout at ``node``, or why it does not fit."""
    import tables

    flat = f.get_node(node)
    ss_path = flat.attrs[ATTR_START_STOP] if ATTR_START_STOP in flat.attrs else node + "_start_and_stop"
    shape_path = flat.attrs[ATTR_SHAPE] if ATTR_SHAPE in flat.attrs else node + "_shape"
    if not isinstance(flat, tables.EArray) or flat.ndim != 1 or ss_path not in f:
        raise NodeKindError(
            f"{f.filename}:{node} exists but is not a flat ragged layout (a 1-d EArray with "
            f"{ss_path}); choose another node or mode='w' for a new file"
        )
    shape = f.get_node(shape_path) if shape_path in f else None
    stored_ndim = (
        shape.shape[1] if shape is not None else int(flat.attrs[ATTR_NDIM]) if ATTR_NDIM in flat.attrs else 1
    )
    stored = flat.atom.dtype
    if np.dtype(dtype) != stored or ndim != stored_ndim:
        raise RaggedLayoutError(
            f"{f.filename}:{node} holds {stored_ndim}-d samples of {stored}; cannot append {ndim}-d "
            f"samples of {dtype}"
        )
    return flat, f.get_node(ss_path), shape, stored_ndim


def _check(sample, dtype: np.dtype, ndim: int, index: int) -> np.ndarray:
    a = np.asarray(sample)
    if a.dtype != dtype or a.ndim != ndim:
        raise RaggedLayoutError(
            f"write_ragged: sample {index} is {a.ndim}-d {a.dtype}; every sample must be {ndim}-d {dtype} "
            "(convert with .astype first)"
        )
    return a


def write_ragged(
    samples: Iterable | object,
    path: str | os.PathLike,
    node: str,
    *,
    filters=None,
    mode: str = "a",
    dtype=None,
    batch_size: int | str = "16MiB",
    progress: bool = True,
    expectedrows: int = 1_000_000,
) -> None:
    """Write samples of varying shape as the flat ragged layout.

    Parameters
    ----------
    samples : list, iterable, generator or dask.bag.Bag
        numpy arrays (or array-likes) of one dtype and rank.  Iterables are
        streamed with bounded memory; a bag is computed a few partitions at a
        time and written in order by this one writer.
    path : str or path-like
    node : str
        The data node, e.g. ``"/data"``; side columns are written next to it as
        ``<node>_start_and_stop`` and, for samples that are not 1-d,
        ``<node>_shape``.
    filters : tables.Filters, optional
        Default blosc:lz4 with shuffle, complevel 5.
    mode : {"a", "w"}
        ``"w"`` writes a new file (replacing any file at ``path`` only once
        the new one is complete).  ``"a"`` creates the file if needed and,
        when the layout exists, appends to it (offsets continue; dtype and
        sample rank must match).  Either way the result is written to a
        temporary file (to add to a file, a copy of it), checked and fsynced,
        and only then renamed over ``path``: if anything fails (a bad sample,
        a full disk: :class:`~daskh5.WriteError`), ``path`` is byte for byte
        as it was.
    dtype : numpy dtype, optional
        Needed only to create an empty layout from zero samples.
    batch_size : int or str
        Samples are appended in bulk, this many bytes (str) or samples (int)
        at a time.
    progress : bool
        Show a progress bar (tqdm) while writing.
    expectedrows : int
        Passed to PyTables to size the flat array's chunks.

    Examples
    --------
    >>> import numpy as np, os, tempfile, daskh5
    >>> path = os.path.join(tempfile.mkdtemp(), "ragged.h5")
    >>> daskh5.write_ragged([np.zeros((2, 2)), np.ones((3, 1))], path, "/img", progress=False)
    >>> daskh5.write_ragged([np.ones((1, 5))], path, "/img", progress=False)  # appends
    >>> [a.shape for a in daskh5.open_ragged(path, "/img")]
    [(2, 2), (3, 1), (1, 5)]
    """
    if mode not in ("a", "w"):
        raise ValueError(f"write_ragged: mode must be 'a' or 'w', got {mode!r}")
    node = writer_node(node, "write_ragged", "/data")  # "data" means "/data"
    path, node, _ = resolve(path, node)  # open files give their name
    filters = _default_filters() if filters is None else filters
    total = len(samples) if hasattr(samples, "__len__") and not hasattr(samples, "to_delayed") else None
    stream = _iter_samples(samples)
    first = next(stream, None)
    if first is None:
        if dtype is None:
            raise ValueError(
                "write_ragged: no samples; pass dtype= (and they will be 1-d) to create an empty layout"
            )
        first_arr = None
        dtype, ndim = np.dtype(dtype), 1
    else:
        first_arr = np.asarray(first)
        dtype, ndim = first_arr.dtype, first_arr.ndim
        if first_arr.dtype.kind == "O":
            raise TypeError("write_ragged: samples must be numeric, bool or bytes arrays, not objects")
    if mode == "a" and os.path.isfile(path):  # refuse before the file is copied for nothing
        with open_tables(path, "r") as f:
            if node in f:
                _existing_layout(f, node, dtype, ndim)
    limit = resolve_budget_or_count(batch_size)
    with atomic_target(path, mode) as (target, fresh):
        where = shown(target)

        def guard():
            return hdf5_errors(where, node, target)

        with open_tables(target, "w" if fresh else "a") as f:  # the samples are the user's code: not guarded
            writer = _Writer(f, node, dtype, ndim, filters, expectedrows, guard)
            _stream_into(writer, first_arr, stream, limit, progress, total)
            writer.commit()
        for leaf, shape, region in writer.written():
            check_node(target, where, leaf, shape, region)


def resolve_budget_or_count(batch_size) -> tuple[str, int]:
    if isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return ("count", int(batch_size))
    return ("bytes", resolve_budget(batch_size))


def _stream_into(writer: _Writer, first, stream, limit, progress: bool, total: int | None) -> None:
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="sample", unit_scale=True, desc=f"writing {writer.node}")
        except ImportError:  # progress is a nicety; tqdm is a dependency, but do not fail without it
            bar = None
    kind, size = limit
    batch: list[np.ndarray] = []
    nbytes = 0
    index = writer.count
    try:
        if first is not None:
            batch.append(_check(first, writer.dtype, writer.ndim, index))
            nbytes = batch[0].nbytes
            index += 1
        for sample in stream:
            a = _check(sample, writer.dtype, writer.ndim, index)
            index += 1
            batch.append(a)
            nbytes += a.nbytes
            if (kind == "count" and len(batch) >= size) or (kind == "bytes" and nbytes >= size):
                writer.append(batch)
                if bar is not None:
                    bar.update(len(batch))
                batch, nbytes = [], 0
        if batch:
            writer.append(batch)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()

"""Write numpy and dask arrays to PyTables CArrays and EArrays, in parallel, never corrupting a file.

Blocks are computed (and, where the filters allow, compressed) wherever the
scheduler runs them; one writer in the calling process stores them in order
with a bounded number of blocks in flight.  See :mod:`daskh5._encode`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from daskh5._chunking import budget_chunks
from daskh5._encode import encoder_for
from daskh5._inplace import append_in_place, in_place_wanted
from daskh5._inputs import resolve
from daskh5._nodes import ATTR_APPENDING
from daskh5._safe_tables import atomic_target, open_tables, shown, writer_node
from daskh5._table_write import append_frame, is_frame
from daskh5._table_write import frame_writer as _frame_writer
from daskh5._verify import check_node, hdf5_errors
from daskh5.errors import (
    Daskh5Error,
    IncompatibleArrayError,
    NodeExistsError,
    NodeKindError,
    NodeNotFound,
    UnsupportedDtypeError,
)

__all__ = ["append", "to_pytables"]


def _default_filters():
    import tables

    return tables.Filters(complevel=5, complib="blosc:lz4", shuffle=True)


def _is_xarray(x) -> bool:
    return type(x).__module__.startswith("xarray.") and type(x).__name__ in ("Dataset", "DataArray")


def _as_dask(x):
    import dask.array as da

    if isinstance(x, da.Array):
        return x
    arr = np.asarray(x)
    return da.from_array(arr, chunks=budget_chunks(arr.shape, None, arr.dtype.itemsize, 64 << 20) or ())


def _check_dtype(dtype: np.dtype, where: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind not in "biufcS" or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsupportedDtypeError(
            f"{where}: cannot store dtype {dtype} (numbers, bool and fixed bytes only)"
        )
    return dtype.newbyteorder("=")


def _refuse_if_open(path: str) -> None:
    import tables

    registry = tables.file._open_files
    modes = (
        sorted({h.mode for h in registry.get_handlers_by_name(path)}) if path in registry.filenames else []
    )
    if modes:
        raise Daskh5Error(
            f"{path} is open in this process (mode {', '.join(modes)}); close it before writing to it with daskh5"
        )


def _aligned(x, chunkshape: tuple[int, ...]):
    """``x`` itself if its blocks are whole HDF5 chunks, else rechunked to be (about as big as before)."""
    if all(all(c % cs == 0 for c in chunks[:-1]) for chunks, cs in zip(x.chunks, chunkshape, strict=True)):
        return x
    itemsize = x.dtype.itemsize
    block_bytes = int(np.prod([max(c) if c else 0 for c in x.chunks], dtype=np.int64)) * itemsize
    return x.rechunk(budget_chunks(x.shape, chunkshape, itemsize, max(block_bytes, 1)))


def _block_origins(x) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """``(block index, element origin)`` of every block, in C order."""
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int).tolist() for c in x.chunks]
    return [(idx, tuple(starts[a][i] for a, i in enumerate(idx))) for idx in np.ndindex(*x.numblocks)]


# -- running blocks through the scheduler, writing them in order --------------------------------
def _block_submitter(client, tasks: list) -> Callable:
    """``submit(i)``: a future of ``tasks[i]`` sent with only the part of the graph it needs.

    ``client.compute(task)`` would ship (and the scheduler process) the whole
    graph for every block: quadratic in the number of blocks. The graph is
    optimised once here and each block's dependency closure is sent alone.
    """
    import dask
    from dask.core import get_dependencies

    optimized = dask.optimize(*tasks)
    dsk: dict = {}
    seen: set = set()
    for t in optimized:  # usually one graph shared by all
        graph = t.__dask_graph__()
        if id(graph) not in seen:
            seen.add(id(graph))
            dsk.update(graph)
    keys = [t.key for t in optimized]

    def submit(i: int):
        need, stack = {}, [keys[i]]
        while stack:
            k = stack.pop()
            if k in need:
                continue
            need[k] = dsk[k]
            stack.extend(d for d in get_dependencies(dsk, k) if d not in need)
        return client.get(need, keys[i], sync=False)

    return submit


def _ordered_results(tasks: list, window: int) -> Iterator:
    """Results of delayed ``tasks`` in order, at most ``window`` in flight, computed meanwhile."""
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        client = None
    if client is not None:
        submit = _block_submitter(client, tasks)
        futures: list = []
        nxt = 0
        for i in range(len(tasks)):
            while nxt < len(tasks) and nxt < i + window:
                futures.append(submit(nxt))
                nxt += 1
            fut = futures[i]
            futures[i] = None
            yield fut.result()
        return
    import dask

    results: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for i in range(0, len(tasks), window):
                if stop.is_set():
                    return
                results.put(("ok", dask.compute(*tasks[i : i + window])))
        except BaseException as exc:  # handed to the writer, raised there
            results.put(("error", exc))
        results.put(("done", None))

    worker = threading.Thread(target=produce, name="daskh5-writer-producer", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = results.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield from value
    finally:
        stop.set()
        while worker.is_alive():  # unblock the producer if it waits on a full queue
            with contextlib.suppress(queue.Empty):
                results.get(timeout=0.05)


def _window() -> int:
    import dask

    workers = dask.config.get("num_workers", None)
    if workers is None:
        try:  # on a distributed cluster: its threads, not this machine's cores
            from distributed import default_client

            workers = sum(default_client().nthreads().values())
        except (ImportError, ValueError):
            workers = None
    return max(2, 2 * int(workers or os.cpu_count() or 1))


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="block", desc=desc)


class _ChunkSink:
    """Stores finished blocks in the node: the one writer (one store at a time).

    ``chunks`` writes one already-compressed chunk (``write_direct_chunk`` of an
    h5py dataset); ``leaf`` takes whole blocks that PyTables compresses itself.
    """

    def __init__(self, offset: tuple[int, ...], bar, chunks=None, leaf=None, guard=contextlib.nullcontext):
        self.offset, self.bar, self.chunks, self.leaf = offset, bar, chunks, leaf
        self.guard = guard  # turns HDF5's errors into a WriteError (see _verify.hdf5_errors)
        self.lock = threading.Lock()

    def store(self, origin: tuple[int, ...], result) -> None:
        with self.lock:
            if self.chunks is not None:
                for coords, data in result:
                    self.chunks(coords, data)
            else:
                start = tuple(o + s for o, s in zip(origin, self.offset, strict=True))
                region = tuple(slice(s, s + n) for s, n in zip(start, result.shape, strict=True))
                with self.guard():
                    self.leaf[region] = result
            if self.bar is not None:
                self.bar.update(1)


def _in_process_scheduler(x) -> bool:
    """Whether tasks run in this process (threads or sync), so a graph task may write."""
    import dask.local
    import dask.threaded
    from dask.base import get_scheduler

    return get_scheduler(collections=[x]) in (dask.threaded.get, dask.local.get_sync)


def _write_blocks(
    x, encoder, offset: tuple[int, ...], progress: bool, desc: str, chunks=None, leaf=None, guard=None
) -> None:
    """Write dask array ``x`` at ``offset`` (chunk-aligned), block by block.

    With an ``encoder`` blocks are compressed by the tasks and stored with
    ``chunks(coords, bytes)``; without, blocks are assigned to the PyTables ``leaf``.
    """
    import dask

    if x.size == 0:
        return
    origins = _block_origins(x)
    blocks = x.to_delayed()
    if encoder is not None:
        encode = dask.delayed(encoder.encode_block, pure=True)
        tasks = [
            encode(blocks[idx], tuple(o + s for o, s in zip(origin, offset, strict=True)))
            for idx, origin in origins
        ]
    else:
        tasks = [blocks[idx] for idx, _origin in origins]
    with _progress(len(tasks), desc, progress) as bar:
        sink = _ChunkSink(offset, bar, chunks=chunks, leaf=leaf, guard=guard or contextlib.nullcontext)
        if _in_process_scheduler(x):
            # One graph, as da.store builds it: each block is stored as soon as it is ready, one store
            # at a time (the sink's lock), so the scheduler's depth-first order bounds memory and
            # intermediates shared by blocks (a cumsum's running totals) are computed once.
            store = dask.delayed(sink.store, pure=False)
            dask.compute(*[store(origin, task) for (_idx, origin), task in zip(origins, tasks, strict=True)])
        else:  # processes or a cluster: results come back here, a bounded window at a time
            for (_idx, origin), result in zip(origins, _ordered_results(tasks, _window()), strict=True):
                sink.store(origin, result)


@contextlib.contextmanager
def _direct_chunks(path: str, node: str, guard) -> Iterator[Callable]:
    """``write(coords, data)`` storing compressed chunks through h5py (about twice PyTables' speed).

    Only used while no PyTables handle to ``path`` is open; h5py never unpickles.
    HDF5's errors (opening, writing, flushing on close) come out of ``guard`` as daskh5 errors.
    """
    import h5py

    with guard():
        f = h5py.File(path, "r+")
    try:
        ds = f[node]

        def write(coords, data) -> None:
            with guard():
                ds.id.write_direct_chunk(coords, data, 0)

        yield write
    except BaseException:
        with contextlib.suppress(Exception):
            f.close()
        raise
    with guard():
        f.close()


def _fill(path: str, leaf_path: str, x, encoder, offset, progress: bool, desc: str, node: str) -> None:
    """Write ``x`` into the existing node (PyTables closed): h5py direct chunks, or PyTables.

    ``node``: the node's name for messages (``leaf_path`` may be a temporary name).
    """

    def guard():
        return hdf5_errors(shown(path), node, path)

    if encoder is not None:
        with _direct_chunks(path, leaf_path, guard) as chunks:
            _write_blocks(x, encoder, offset, progress, desc, chunks=chunks, guard=guard)
        return
    with open_tables(path, "a") as f:
        _write_blocks(x, None, offset, progress, desc, leaf=f.get_node(leaf_path), guard=guard)


# -- public API ----------------------------------------------------------------------------------
class _Job:
    """Holds the arguments of a deferred write opaquely, so dask does not compute ``x`` up front."""

    def __init__(self, fn: Callable, args: tuple, kwargs: dict):
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def __call__(self):
        return self.fn(*self.args, **self.kwargs)


def _deferred(fn: Callable, *args, **kwargs):
    import dask

    return dask.delayed(_Job(fn, args, kwargs), pure=False)()


def to_pytables(
    x: Any,
    path: str | os.PathLike,
    node: str | None = None,
    *,
    kind: str = "carray",
    filters=None,
    chunkshape: tuple[int, ...] | None = None,
    title: str = "",
    attrs: dict | None = None,
    dims: tuple[str, ...] | None = None,
    mode: str = "a",
    overwrite: bool = False,
    progress: bool = True,
    compute: bool = True,
    format: str | None = None,
    data_columns=None,
    group: str | None = None,
    encoding: dict | None = None,
    unlimited_dims=None,
    append_dim: str | None = None,
):
    """Write a numpy or dask array to a new CArray or EArray that PyTables users can open.

    Blocks are computed where the scheduler puts them (threads, processes or a
    ``dask.distributed`` cluster); where the filters allow it they are also
    compressed there, and one writer in this process stores the compressed
    chunks in order, with a bounded number of blocks in flight.

    Parameters
    ----------
    x : numpy.ndarray, dask.array.Array, xarray.Dataset or xarray.DataArray
        An xarray object is written as ``Dataset.to_netcdf`` writes it: a
        netCDF-4 layout that opens identically with ``engine="daskh5"``,
        ``"h5netcdf"`` and ``"netcdf4"``, into the group ``node`` (or
        ``group``); see :doc:`/user-guide/xarray` ("Writing Datasets back").
    path : str or path-like
    node : str
        Absolute node path, e.g. ``"/result"``; missing parent groups are
        created.  For xarray objects, the group to write into.
    kind : {"carray", "earray"}
        An EArray's first axis is its extendable one.
    filters : tables.Filters, optional
        Default blosc:lz4 with shuffle, complevel 5.
    chunkshape : tuple of int, optional
        Default: PyTables' choice for the shape.  Dask blocks are rechunked to
        whole HDF5 chunks if needed.
    title : str
    attrs : dict, optional
        Attributes to set on the node (plain values: numbers, strings, arrays).
    dims : tuple of str, optional
        Dimension names, one per axis, stored (``DASKH5_DIMS``) for
        ``xr.open_dataset(path, engine="daskh5")``: arrays of a file that share
        a name share a dimension.
    mode : {"a", "w"}
        ``"w"`` writes a new file; ``"a"`` creates the file if needed or adds
        the node to it.
    overwrite : bool
        Replace an existing node, only once the new one is complete.
        Without it an existing node is an error.
    progress : bool
        Show a progress bar (one step per block).
    compute : bool
        ``False`` returns a ``dask.delayed`` object that writes when computed.
    format : {None, "table"}
        A pandas or dask DataFrame is written as a pandas ``HDFStore`` ``format="table"`` key
        ``node`` (``pd.read_hdf`` and ``HDFStore.select(where=...)`` read it; see
        :doc:`/user-guide/tables`). Arrays ignore it.
    data_columns : list of str or True, optional
        For a DataFrame: the columns pandas can query in ``where=`` (also given per-chunk
        minima and maxima, so :func:`daskh5.read_table` skips chunks that cannot match).
    group, encoding, unlimited_dims : optional
        For xarray objects, as ``Dataset.to_netcdf`` takes them (``group`` is
        ``node``'s other name); ``encoding`` also takes daskh5's keys
        (``complib``, ``complevel``, ``shuffle``, ``bitshuffle``).
    append_dim : str, optional
        For xarray objects: grow this unlimited dimension of the variables
        already in the file, as ``Dataset.to_zarr(append_dim=...)`` does.

    Notes
    -----
    The file is written under a temporary name next to ``path`` (for
    ``mode="a"`` on an existing file, a copy of it) and renamed into place only
    once the new node is complete, checked (every chunk stored, inside the
    file) and fsynced.  If anything fails (the computation, a full disk, the
    file-size limit: :class:`~daskh5.WriteError`) the file at ``path`` is byte
    for byte as it was.  While it writes, the file is locked against other
    writers: another process holding it open, or writing it, makes this a
    :class:`~daskh5.FileBusyError`.  See :doc:`/user-guide/writing`.

    Examples
    --------
    >>> import numpy as np, dask.array as da, os, tempfile, tables, daskh5
    >>> path = os.path.join(tempfile.mkdtemp(), "out.h5")
    >>> x = da.arange(1_000_000, chunks=100_000).reshape(-1, 2) * 0.5
    >>> daskh5.to_pytables(x, path, "/result", progress=False)
    >>> with tables.open_file(path) as f:
    ...     print(f.root.result.shape == (500000, 2), f.root.result.filters.complib, float(f.root.result[-1, 1]))
    True blosc:lz4 499999.5
    """
    if format == "table" or is_frame(x):  # a DataFrame: a pandas HDFStore key (daskh5._table_write)
        return _frame_writer(x, path, node, format, data_columns, filters, mode, overwrite, progress, compute)
    if _is_xarray(x):
        from daskh5._xarray_write import to_pytables_xarray

        return to_pytables_xarray(
            x, path, group if group is not None else node, filters=filters or _default_filters(), mode=mode,
            progress=progress, compute=compute, encoding=encoding, unlimited_dims=unlimited_dims,
            append_dim=append_dim,
        )  # fmt: skip
    if node is None:
        raise TypeError("to_pytables(x, path, node): give the node path for an array, e.g. '/result'")
    node = writer_node(node, "to_pytables", "/result")  # "result" means "/result"
    path, node, _ = resolve(path, node)  # open files give their name
    if not compute:
        return _deferred(
            to_pytables, x, path, node, kind=kind, filters=filters, chunkshape=chunkshape, title=title,
            attrs=attrs, dims=dims, mode=mode, overwrite=overwrite, progress=progress, compute=True,
        )  # fmt: skip
    if kind not in ("carray", "earray"):
        raise ValueError(f"to_pytables: kind must be 'carray' or 'earray', got {kind!r}")
    if mode not in ("a", "w"):
        raise ValueError(f"to_pytables: mode must be 'a' or 'w', got {mode!r}")
    path = os.path.abspath(os.fspath(path))
    x = _as_dask(x)
    dtype = _check_dtype(x.dtype, f"{path}:{node}")
    if x.dtype != dtype:
        x = x.astype(dtype)
    if x.ndim == 0:
        raise ValueError(
            f"{path}:{node}: a 0-d value is not a chunked array; store it with tables' create_array"
        )
    filters = _default_filters() if filters is None else filters
    if dims is not None:
        dims = (dims,) if isinstance(dims, str) else tuple(dims)
        if len(dims) != x.ndim or not all(isinstance(d, str) and d and "," not in d for d in dims):
            raise ValueError(
                f"{path}:{node}: dims must be {x.ndim} non-empty names without commas (one per axis), got {dims!r}"
            )
        from daskh5._xarray_store import ATTR_DIMS

        attrs = {**(attrs or {}), ATTR_DIMS: ",".join(dims)}
    _refuse_if_open(path)
    if mode == "a" and not overwrite:
        _refuse_existing(path, node)  # before the file is copied for nothing
    with atomic_target(path, mode) as (target, fresh):
        where = shown(target)
        with hdf5_errors(where, node, target), open_tables(target, "w" if fresh else "a") as f:
            leaf_path, exists, cs = _create_node(
                f, x, node, kind, filters, chunkshape, title, attrs or {}, overwrite
            )
        encoder = encoder_for(filters, x.dtype, cs)
        _fill(target, leaf_path, _aligned(x, cs), encoder, (0,) * x.ndim, progress, f"writing {node}", node)
        if exists:  # the new node is complete: only now replace the old one
            with hdf5_errors(where, node, target), open_tables(target, "a") as f:
                f.remove_node(node, recursive=True)
                f.rename_node(leaf_path, node.rsplit("/", 1)[1])
        check_node(target, where, node, x.shape)


def _refuse_existing(path: str, node: str) -> None:
    """:class:`NodeExistsError` if ``node`` is in the file at ``path`` (read with h5py)."""
    if not os.path.isfile(path):
        return
    from daskh5._nodes import has_node, open_h5

    with open_h5(path) as f:
        if has_node(f, node):
            raise NodeExistsError(
                f"{path}:{node} already exists; pass overwrite=True to replace it, or choose another node"
            )


def _create_node(
    f, x, node, kind, filters, chunkshape, title, attrs, overwrite
) -> tuple[str, bool, tuple[int, ...]]:
    """Create the (empty) node, under a temporary name if it replaces one: (path, replaces, chunkshape)."""
    import tables

    where = f"{f.filename}:{node}"
    exists = node in f
    if exists and not overwrite:
        raise NodeExistsError(
            f"{where} already exists; pass overwrite=True to replace it, or choose another node"
        )
    parent, name = node.rsplit("/", 1)
    parent = parent or "/"
    atom = tables.Atom.from_dtype(x.dtype)
    common = dict(atom=atom, title=title, filters=filters, chunkshape=chunkshape, createparents=True)
    name = f"_daskh5_tmp_{name}" if exists else name
    if kind == "carray":
        leaf = f.create_carray(parent, name, shape=x.shape, **common)
    else:
        leaf = f.create_earray(
            parent, name, shape=(0, *x.shape[1:]), expectedrows=max(x.shape[0], 1), **common
        )
    try:
        for key, value in attrs.items():
            leaf.attrs[key] = value
        if kind == "earray":
            leaf.truncate(x.shape[0])  # grows without writing: the chunks are written next
    except BaseException:
        f.remove_node(leaf)
        raise
    return leaf._v_pathname, exists, tuple(int(c) for c in leaf.chunkshape)


def append(
    x: Any,
    path: str | os.PathLike,
    node: str,
    *,
    casting: str = "same_kind",
    progress: bool = True,
    compute: bool = True,
):
    """Append a numpy or dask array to an existing EArray along its extendable axis.

    Every non-extendable dimension must match the EArray. Values are cast to
    the EArray's dtype when numpy allows it under ``casting`` (numpy's
    meaning; ``"same_kind"`` by default, as for ufuncs: float64 into a float32
    EArray is cast, float into an int EArray is refused); a cast that may
    lose information is reported with a ``UserWarning``.

    A file of at most ``daskh5.copy-on-write-limit`` bytes (a dask config
    key, default ``"256MiB"``) gets the rows in a copy that replaces it once
    they are all written, checked and fsynced (see :func:`to_pytables`).  A
    larger file is appended in place, so an append costs the rows, not the
    file: under the file's lock, the EArray's committed length is recorded
    in its ``DASKH5_APPENDING`` attribute (daskh5's readers show only those
    rows meanwhile), the rows are written, fsynced and checked, and the
    attribute is deleted.  Either way, if anything fails in this process
    the call raises and the file is byte for byte as it was (in place: the
    pages HDF5 overwrote are put back).  If the process is killed while
    appending in place, daskh5 readers show the earlier rows, PyTables and
    h5py show the EArray grown, and the next ``append`` drops the partial
    rows.  Set the key with ``dask.config.set({"daskh5.copy-on-write-limit":
    "4GiB"})``; ``0`` appends every file in place.

    Examples
    --------
    >>> import numpy as np, os, tempfile, tables, daskh5
    >>> path = os.path.join(tempfile.mkdtemp(), "log.h5")
    >>> daskh5.to_pytables(np.zeros((3, 4)), path, "/log", kind="earray", progress=False)
    >>> daskh5.append(np.ones((5, 4)), path, "/log", progress=False)
    >>> with tables.open_file(path) as f:
    ...     print(f.root.log.shape == (8, 4), f.root.log[:, 0].tolist())
    True [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    if is_frame(x):  # rows of a pandas format="table" key, same schema (daskh5._table_write)
        path, node, _ = resolve(path, node)
        return append_frame(x, os.fspath(path), node, progress=progress)
    if not compute:
        return _deferred(append, x, path, node, casting=casting, progress=progress, compute=True)
    node = writer_node(node, "append", "/log")
    path, node, _ = resolve(path, node)
    if not os.path.exists(path):
        raise NodeNotFound(
            f"{path}: no such file to append to; create the EArray with to_pytables(kind='earray')"
        )
    _refuse_if_open(path)
    x = _as_dask(x)
    with open_tables(path, "r") as f:  # refuse before the file is copied for nothing
        axis, _before, cs = _append_plan(f, node, x, path, casting)
        leaf = f.get_node(node)
        encoder, dtype = encoder_for(leaf.filters, leaf.atom.dtype, cs), leaf.atom.dtype
    if x.shape[axis] == 0:
        return
    if in_place_wanted(path):
        xs = x.astype(dtype) if x.dtype != dtype else x
        xs = np.moveaxis(xs, axis, 0) if axis else xs
        if append_in_place(xs, path, node, axis, cs, dtype, encoder, progress):
            return
    with atomic_target(path, "a") as (target, _fresh):
        with hdf5_errors(path, node, target), open_tables(target, "a") as f:
            leaf = f.get_node(node)
            axis, before, cs = _append_plan(f, node, x, path, casting, warn=False)
            if leaf.nrows != before:  # an append by an earlier daskh5 was killed: drop its partial rows
                leaf.truncate(before)
            if ATTR_APPENDING in leaf.attrs:
                del leaf.attrs[ATTR_APPENDING]
            encoder = encoder_for(leaf.filters, leaf.atom.dtype, cs)
            dtype, shape = leaf.atom.dtype, [int(n) for n in leaf.shape]
        xs = x.astype(dtype) if x.dtype != dtype else x
        xs = np.moveaxis(xs, axis, 0) if axis else xs
        n = xs.shape[0]
        head = min(n, (-before) % cs[axis])  # rows that fill the partly written last chunk
        block = np.asarray(xs[:head].compute()) if head else None  # the user's computation: no file open
        with hdf5_errors(path, node, target), open_tables(target, "a") as f:
            leaf = f.get_node(node)
            leaf.truncate(before + n)  # grows without writing: the chunks are written next
            if head:
                index = [slice(None)] * leaf.ndim
                index[axis] = slice(before, before + head)
                leaf[tuple(index)] = np.moveaxis(block, 0, axis) if axis else block
        rest = xs[head:]
        if rest.shape[0]:
            rest = _aligned(np.moveaxis(rest, 0, axis) if axis else rest, cs)
            offset = [0] * rest.ndim
            offset[axis] = before + head
            _fill(target, node, rest, encoder, tuple(offset), progress, f"appending to {node}", node)
        shape[axis] = before + n
        region = [(0, s) for s in shape]
        region[axis] = (before, before + n)
        check_node(target, path, node, tuple(shape), tuple(region))


def _append_plan(
    f, node: str, x, path: str, casting: str = "same_kind", warn: bool = True
) -> tuple[int, int, tuple[int, ...]]:
    """``(extendable axis, committed rows, chunkshape)`` of the EArray ``node``, or why not."""
    import tables

    where = f"{path}:{node}"
    if node not in f:
        raise NodeNotFound(f"{path}: no node {node!r} to append to")
    leaf = f.get_node(node)
    if not isinstance(leaf, tables.EArray):
        raise NodeKindError(f"{where} is a {type(leaf).__name__}, not an EArray; only EArrays can grow")
    _check_append(leaf, x, where, casting, warn)
    before = leaf.nrows
    if ATTR_APPENDING in leaf.attrs:  # an earlier daskh5 append was killed: these rows are committed
        before = min(before, int(leaf.attrs[ATTR_APPENDING]))
    return leaf.extdim, before, tuple(int(c) for c in leaf.chunkshape)


def _check_append(leaf, x, where: str, casting: str = "same_kind", warn: bool = True) -> None:
    stored = leaf.atom.dtype
    given = np.dtype(x.dtype)
    if given.newbyteorder("=") != stored.newbyteorder("="):
        if not np.can_cast(given, stored, casting=casting):
            raise IncompatibleArrayError(
                f"{where} holds {stored}; cannot append {given} with casting={casting!r} "
                "(convert with .astype first, or pass casting='unsafe')"
            )
        if warn and not np.can_cast(given, stored, casting="safe"):
            warnings.warn(
                f"{where}: appending {given} values cast to the EArray's {stored} (casting={casting!r})",
                UserWarning,
                stacklevel=4,
            )
    axis = leaf.extdim
    want = [int(n) for n in leaf.shape]
    if x.ndim != len(want) or any(
        a != b for i, (a, b) in enumerate(zip(x.shape, want, strict=False)) if i != axis
    ):
        want[axis] = "n"
        raise IncompatibleArrayError(f"{where} is {tuple(want)}; cannot append an array of shape {x.shape}")

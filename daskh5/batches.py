"""Minibatches of arrays bigger than memory, read ahead in the background.

:func:`iter_batches` is the "memory swapper" scientists hand-roll around
PyTables, done with dask.  In order (the default), batches are consecutive
rows, at most ``prefetch`` of them read ahead while the caller works on the
current one.  With ``shuffle=True`` every epoch visits every row exactly once
in a new order, drawn from a window of whole storage-aligned blocks: the
order of the blocks is shuffled, a window of them is read with one large read
per block, and rows are shuffled inside the window (see :func:`iter_batches`).

>>> import dask.array as da
>>> x = da.arange(10, chunks=4)
>>> [b.tolist() for b in iter_batches(x, 4)]
[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from daskh5 import _buffers
from daskh5._chunking import resolve_budget

__all__ = ["iter_batches"]

_BLOCKS_PER_HALF_WINDOW = 32  # default block size: a half window holds about this many blocks
# How the window's bytes are shared: two windows of rows with their shuffled order (13/32 each), the
# group of blocks being read before it is copied into a window (1/32), and the rest (5/32) for what
# reading a group needs besides its result (compressed bytes, decoder and allocator overhead).
_WINDOW_SHARE = 13 / 32
_GROUP_SHARE = 1 / 32


# -- the arrays being batched ---------------------------------------------------------------------------
@dataclass
class _Column:
    """One of the arrays batched together: how to read a run of rows and pick rows of what was read."""

    x: Any
    kind: str  # "reader" (a plain from_pytables read), "dask", "numpy" or "ragged"
    storage_rows: int = 1  # rows of one HDF5 chunk ("reader"): blocks are multiples of it
    reader: Any = None

    @property
    def ragged(self) -> bool:
        return self.kind == "ragged"

    @property
    def n(self) -> int:
        return len(self.x) if self.ragged else int(self.x.shape[0])

    def row_bytes(self) -> int:
        """Bytes of one row (the mean sample size of a ragged array)."""
        if not self.ragged:
            return max(1, math.prod(int(s) for s in self.x.shape[1:]) * np.dtype(self.x.dtype).itemsize)
        n = self.n
        if n == 0:
            return 1
        lay = self.x.layout
        if lay.kind == "flat" or lay.shapes is not None:
            total = int(self.x._known_lengths().sum()) * self.x.dtype.itemsize
            return max(1, total // n)
        head = self.x._run(0, min(n, 1000))  # a plain VLArray: estimate from the first rows
        return max(1, int(np.mean([v.nbytes for v in head])))

    def cuts(self) -> np.ndarray | None:
        """Row boundaries blocks must respect: a dask array's chunks (a chunk is computed whole)."""
        if self.kind != "dask":
            return None
        return np.cumsum((0,) + tuple(self.x.chunks[0]))

    def lazy(self, i0: int, i1: int):
        """Rows ``i0:i1`` as something :func:`_materialize` computes (a dask object or a thunk)."""
        if self.kind == "ragged":
            return _Thunk(self.x._run, i0, i1)
        if self.kind == "reader":  # straight from the file: exactly the HDF5 chunks the rows need
            import dask

            return dask.delayed(self.reader.__getitem__, pure=True)((slice(i0, i1),))
        return self.x[i0:i1]


class _Thunk:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __call__(self):
        return self.fn(*self.args)


def _materialize(parts: list, compute_kwargs: dict) -> list:
    """Compute every lazy part: dask ones in one ``dask.compute`` (in parallel), the rest in turn."""
    import dask

    out: list = [None] * len(parts)
    lazy = [i for i, p in enumerate(parts) if dask.is_dask_collection(p)]
    if lazy:
        for i, value in zip(lazy, dask.compute(*[parts[i] for i in lazy], **compute_kwargs)):
            out[i] = np.asarray(value)
    for i, p in enumerate(parts):
        if i not in lazy:
            out[i] = p() if isinstance(p, _Thunk) else np.asarray(p)
    return out


def _trim_heap() -> None:
    """Give the C heap's free memory back to the system (glibc keeps freed reads of a few MiB)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _node_reader(x):
    """The :class:`NodeReader` of ``x`` when ``x`` is a plain :func:`daskh5.from_pytables` read."""
    from daskh5._reader import NodeReader

    graph, name = getattr(x, "dask", None), getattr(x, "name", None)
    layers = getattr(graph, "layers", {})
    if not layers or set(layers) - {name, f"original-{name}"}:  # anything computed on top of the read
        return None
    for value in layers.get(f"original-{name}", layers[name]).values():
        if isinstance(value, NodeReader):
            return value
    return None


def _column(x) -> _Column:
    import dask

    from daskh5.ragged import RaggedArray

    if isinstance(x, RaggedArray):
        return _Column(x, "ragged")
    if not hasattr(x, "shape") or len(x.shape) == 0:
        raise TypeError(f"iter_batches wants arrays with at least one axis, got {type(x).__name__}")
    if not dask.is_dask_collection(x):
        return _Column(x, "numpy")
    reader = _node_reader(x)
    if reader is None:
        return _Column(x, "dask")
    rows = int(reader.info.chunkshape[0]) if reader.info.chunkshape else 1
    return _Column(x, "reader", max(1, rows), reader)


def _columns(arrays) -> tuple[list[_Column], Any]:
    """The columns of ``arrays`` and a function packing one part per column as the caller gave them."""

    if isinstance(arrays, Mapping):
        keys, items = list(arrays), list(arrays.values())

        def pack(parts):
            return dict(zip(keys, parts))

    elif isinstance(arrays, (tuple, list)):
        items = list(arrays)

        def pack(parts):
            return tuple(parts)

    else:
        items = [arrays]

        def pack(parts):
            return parts[0]

    if not items:
        raise ValueError("iter_batches needs at least one array")
    cols = [_column(x) for x in items]
    lengths = {c.n for c in cols}
    if len(lengths) > 1:
        raise ValueError(
            f"iter_batches: the arrays have different numbers of rows ({[c.n for c in cols]}); "
            "batched arrays must be aligned row by row"
        )
    return cols, pack


def _rows_per_batch(cols: list[_Column], batch_size) -> int:
    if isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool):
        rows = int(batch_size)
    elif isinstance(batch_size, str):
        row_bytes = sum(c.row_bytes() for c in cols)
        rows = resolve_budget(batch_size) // row_bytes
        if rows < 1:
            raise ValueError(f"one row takes {row_bytes} bytes, more than batch_size={batch_size!r}")
    else:
        raise TypeError(
            f"batch_size is a number of rows (int) or a byte budget like '64MiB', not {batch_size!r}"
        )
    if rows <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    return rows


# -- in order ---------------------------------------------------------------------------------------------
def _ordered_runs(n: int, rows: int, drop_last: bool, epochs: int) -> Iterator[tuple[int, int]]:
    for _ in range(epochs):
        stops = range(rows, n + 1, rows) if drop_last else range(rows, n + rows, rows)
        for stop in stops:
            yield stop - rows, min(stop, n)


def _prefetched(jobs: Iterator, load, prefetch: int) -> Iterator:
    """``load(*job)`` for each job, by one background thread, at most ``prefetch`` ahead of the caller."""
    if prefetch == 0:
        for job in jobs:
            yield load(*job)
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="daskh5-prefetch")
    pending: deque[Future] = deque()

    def submit() -> None:
        job = next(jobs, None)
        if job is not None:
            pending.append(pool.submit(load, *job))

    try:
        for _ in range(1 + prefetch):
            submit()
        while pending:
            batch = pending.popleft().result()
            yield batch
            del batch  # the caller is done with it: only now start the next read
            submit()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


# -- shuffled ---------------------------------------------------------------------------------------------
def _blocks(n: int, block_rows: int, cuts: list[np.ndarray]) -> np.ndarray:
    """``(k, 2)`` start/stop rows of consecutive blocks covering ``0:n``, at most ``block_rows`` each.

    Blocks never straddle a row in ``cuts`` (the chunk boundaries of dask arrays).
    """
    bounds = np.unique(np.concatenate([[0, n], *cuts]).astype(np.int64))
    pieces = []
    for a, b in itertools.pairwise(bounds):
        starts = np.arange(a, b, block_rows, dtype=np.int64)
        pieces.append(np.stack([starts, np.minimum(starts + block_rows, b)], axis=1))
    return np.concatenate(pieces) if pieces else np.zeros((0, 2), np.int64)


def _windows(blocks: np.ndarray, order: np.ndarray, window_rows: int) -> list[np.ndarray]:
    """Blocks in ``order`` cut into consecutive windows of at most ``window_rows`` rows (>= 1 block each)."""
    sizes = blocks[order, 1] - blocks[order, 0]
    out, start, filled = [], 0, 0
    for i, size in enumerate(sizes):
        if filled and filled + size > window_rows:
            out.append(blocks[order[start:i]])
            start, filled = i, 0
        filled += size
    if start < len(order):
        out.append(blocks[order[start:]])
    return out


class _Window:
    """The rows of some blocks as they were read (one array or sample list per block and column)."""

    def __init__(self, parts: list[list], ragged: list[bool]):
        self.parts = parts  # parts[block][column]
        self.ragged = ragged
        first = [p[0] for p in parts]
        self.sizes = np.array([len(p) for p in first], dtype=np.int64)
        self.starts = np.concatenate(([0], np.cumsum(self.sizes)))

    @property
    def rows(self) -> int:
        return int(self.starts[-1])

    def take(self, idx: np.ndarray) -> list:
        """Rows ``idx`` (window positions) of every column, one gather per block they come from."""
        block = np.searchsorted(self.starts, idx, side="right") - 1
        local = idx - self.starts[block]
        order = np.argsort(block, kind="stable")
        bounds = np.searchsorted(block[order], np.arange(len(self.sizes) + 1))
        out = []
        for c, ragged in enumerate(self.ragged):
            if ragged:
                got: list = [None] * len(idx)
                for b in range(len(self.sizes)):
                    sel = order[bounds[b] : bounds[b + 1]]
                    samples = self.parts[b][c]
                    for i, j in zip(sel, local[sel]):
                        got[i] = samples[j]
                out.append(got)
                continue
            sample = self.parts[0][c]
            result = np.empty((len(idx),) + sample.shape[1:], dtype=sample.dtype)
            for b in range(len(self.sizes)):
                sel = order[bounds[b] : bounds[b + 1]]
                if sel.size:
                    result[sel] = self.parts[b][c][local[sel]]
            out.append(result)
        return out


def _shuffled_batches(cols, n, rows, *, drop_last, epochs, seed, window_rows, blocks, load_window):
    """Batches (one part per column) of every epoch, drawn window by window; runs in a background thread."""
    entropy = np.random.SeedSequence(seed).entropy
    ragged = [c.ragged for c in cols]
    with ThreadPoolExecutor(1, thread_name_prefix="daskh5-window") as reader:
        for epoch in range(epochs):
            rng = np.random.default_rng([entropy, epoch])
            windows = _windows(blocks, rng.permutation(len(blocks)), window_rows)
            nxt = reader.submit(load_window, windows[0]) if windows else None
            carry: _Window | None = None  # rows of the last window that did not fill a batch
            for w in range(len(windows)):
                win = nxt.result()
                nxt = reader.submit(load_window, windows[w + 1]) if w + 1 < len(windows) else None
                if carry is not None:
                    win = _Window(carry.parts + win.parts, ragged)
                perm = rng.permutation(win.rows)
                full = (win.rows // rows) * rows
                for k in range(0, full, rows):
                    yield win.take(perm[k : k + rows])
                rest = perm[full:]
                carry = _Window([win.take(rest)], ragged) if rest.size else None
                del win, perm, rest  # before the next window and its order exist
            if carry is not None and not drop_last:
                yield carry.parts[0]


def _threaded(gen: Iterator, prefetch: int) -> Iterator:
    """Run ``gen`` in a background thread, at most ``max(1, prefetch)`` items ahead of the caller."""
    q: queue.Queue = queue.Queue(max(1, prefetch))
    stop = threading.Event()
    done = object()

    def run() -> None:
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                del item
                if stop.is_set():
                    return
            q.put(("end", done))
        except BaseException as exc:  # handed to the caller's thread
            q.put(("error", exc))

    thread = threading.Thread(target=run, name="daskh5-shuffle", daemon=True)
    thread.start()
    try:
        while True:
            what, item = q.get()
            if what == "end":
                return
            if what == "error":
                raise item
            yield item
            del item
    finally:
        stop.set()
        while thread.is_alive():  # let the producer notice, dropping what it queued
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        gen.close()


def iter_batches(
    arrays,
    batch_size: int | str,
    *,
    shuffle: bool = False,
    seed: int | None = None,
    epochs: int = 1,
    window: int | str = "256MiB",
    block_size: int | None = None,
    prefetch: int = 1,
    drop_last: bool = False,
    **compute_kwargs,
) -> Iterator:
    """Yield batches of rows of one or several arrays, reading ahead in the background.

    Parameters
    ----------
    arrays : array, tuple/list of arrays, or dict of arrays
        Dask arrays (for example ``daskh5.from_pytables(path, "/data")``),
        numpy arrays or :class:`daskh5.RaggedArray`, all with the same number
        of rows. A single array yields arrays; a tuple yields tuples; a dict
        yields dicts with the same keys. A ragged array yields lists of samples.
    batch_size : int or str
        Rows (samples) per batch (int), or a byte budget (``"64MiB"``) for the
        rows of all arrays together.
    shuffle : bool
        Visit the rows in a new random order every epoch (see Notes). Without
        it, batches are consecutive rows in file order.
    seed : int, optional
        Makes the shuffled orders reproducible; epoch ``e`` uses the stream
        ``(seed, e)``. Without it, a fresh seed is drawn once per call.
    epochs : int
        Passes over the data; each shuffled epoch has its own order.
    window : str or int
        Memory for the shuffle, ``"256MiB"`` by default: the window being
        drawn from and the next one being read share it (see Notes). An int
        is a number of rows, shared the same way.
    block_size : int, optional
        Rows of a block, the unit whose order is shuffled and that is read in
        one piece. By default a window holds about 32 blocks, each a whole
        number of HDF5 chunks for :func:`daskh5.from_pytables` arrays; other
        dask arrays are computed a whole chunk at a time, so their blocks are
        their chunks along the first axis.
    prefetch : int
        Batches prepared ahead while the caller holds the current one (0: in
        order, read on demand).
    drop_last : bool
        Skip the final batch of an epoch when it is shorter than ``batch_size``.
    **compute_kwargs
        Passed to ``dask.compute`` (for example ``scheduler="threads"``); on a
        ``distributed.Client`` reads run on its cluster.

    Yields
    ------
    numpy.ndarray, list, tuple or dict
        One batch, shaped like ``arrays``.

    Notes
    -----
    In order, batches are read one by one (one slice of each array); at most
    ``1 + prefetch`` exist at once. Aligning ``batch_size`` with the chunks
    along the first axis avoids reading a chunk twice.

    Shuffled, the rows are cut into blocks of ``block_size`` rows. Each epoch
    shuffles the order of the blocks, groups consecutive blocks of that order
    into windows, reads each window (one read per block, several blocks in
    parallel, the next window while the current one is used) and draws
    batches from a random permutation of the window's rows. Rows left over at
    the end of a window join the next one. So every row is visited exactly
    once per epoch and a batch mixes rows of every block of its window.
    Memory stays within ``window`` plus ``prefetch`` batches by construction:
    the window being used and the one being read take 13/32 of ``window``
    each (their rows and their shuffled order, 8 bytes a row), the group of
    blocks read before it is copied into a window 1/32, and the rest is left
    for reading (compressed bytes, decoders).
    Unlike a full shuffle, two rows of one block always fall in the same
    window: with ``k`` blocks per window, a batch never mixes rows more than
    ``k`` blocks apart in the block order. Smaller blocks (or a larger window)
    bring it closer to a full shuffle, at the price of smaller reads.

    Closing the generator (``break``) stops what was being read ahead.

    Examples
    --------
    >>> import numpy as np, daskh5
    >>> x, y = np.arange(10) * 10, np.arange(10)
    >>> for xb, yb in daskh5.iter_batches((x, y), 4, shuffle=True, seed=0, block_size=2):
    ...     assert (xb == 10 * yb).all()
    >>> sorted(np.concatenate(list(daskh5.iter_batches(y, 3, shuffle=True, seed=1))).tolist())
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, got {prefetch}")
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    cols, pack = _columns(arrays)
    n = cols[0].n
    if not shuffle:
        if len(cols) == 1 and cols[0].ragged and isinstance(batch_size, str):
            runs = cols[0].x._runs(batch_size)  # runs of whole samples within the byte budget
            jobs = iter([r for _ in range(epochs) for r in runs])
        else:
            jobs = _ordered_runs(n, _rows_per_batch(cols, batch_size), drop_last, epochs)

        def load(i0: int, i1: int):
            return pack(_materialize([c.lazy(i0, i1) for c in cols], compute_kwargs))

        yield from _prefetched(jobs, load, prefetch)
        return

    rows = _rows_per_batch(cols, batch_size)
    row_bytes = sum(c.row_bytes() for c in cols)
    if isinstance(window, (int, np.integer)) and not isinstance(window, bool):
        if window < 2:
            raise ValueError(f"window: an int is a number of rows (at least 2), got {window}")
        window_rows, group_rows = int(window) // 2, max(1, int(window) // 26)
    elif isinstance(window, str):
        budget = resolve_budget(window)
        window_rows = int(budget * _WINDOW_SHARE) // (row_bytes + np.dtype(np.int64).itemsize)  # + its order
        group_rows = max(1, int(budget * _GROUP_SHARE) // row_bytes)
    else:
        raise TypeError(f"window is a memory budget like '256MiB' or a number of rows, not {window!r}")
    if window_rows < rows:
        raise ValueError(
            f"window={window!r} holds {2 * window_rows} rows of {row_bytes} bytes, fewer than two batches "
            f"of {rows}: give a larger window or a smaller batch_size"
        )
    cuts = [c.cuts() for c in cols if c.cuts() is not None]
    if block_size is not None:
        block_rows = int(block_size)
        if block_rows < 1:
            raise ValueError(f"block_size must be a positive number of rows, got {block_size!r}")
    elif cuts:  # dask arrays compute whole chunks: a block is a chunk (split only if over half the window)
        block_rows = int(max(np.diff(c).max(initial=1) for c in cuts))
    else:
        unit = max(c.storage_rows for c in cols)
        block_rows = max(unit, (window_rows // _BLOCKS_PER_HALF_WINDOW) // unit * unit)
    blocks = _blocks(n, min(block_rows, window_rows), cuts)

    ragged = [c.ragged for c in cols]

    def load_window(blocks: np.ndarray) -> _Window:
        """The rows of ``blocks`` in one buffer per column, read a group of blocks at a time.

        Each group's blocks are read in parallel and copied into the buffer at once, so
        memory is the buffer plus one group, and the buffer is one large allocation
        that goes back to the system when the window is done.
        """
        sizes = blocks[:, 1] - blocks[:, 0]
        total = int(sizes.sum())
        parts: list = [
            [] if c.ragged else _buffers.empty((total,) + tuple(c.x.shape[1:]), np.dtype(c.x.dtype))
            for c in cols
        ]
        pos, g0 = 0, 0
        while g0 < len(blocks):
            g1 = g0 + 1
            while g1 < len(blocks) and sizes[g0 : g1 + 1].sum() <= group_rows:
                g1 += 1
            got = _materialize(
                [c.lazy(int(a), int(b)) for a, b in blocks[g0:g1] for c in cols], compute_kwargs
            )
            for j, size in enumerate(sizes[g0:g1]):
                for k, c in enumerate(cols):
                    if c.ragged:
                        parts[k].extend(got[j * len(cols) + k])
                    else:
                        parts[k][pos : pos + size] = got[j * len(cols) + k]
                pos += int(size)
            del got  # before the next group is read
            g0 = g1
        _trim_heap()
        return _Window([parts], ragged)

    batches = _shuffled_batches(
        cols,
        n,
        rows,
        drop_last=drop_last,
        epochs=int(epochs),
        seed=seed,
        window_rows=window_rows,
        blocks=blocks,
        load_window=load_window,
    )
    for parts in _threaded(batches, prefetch):
        yield pack(parts)

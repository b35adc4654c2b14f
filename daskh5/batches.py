"""Minibatches of an array bigger than memory, read ahead in the background.

:func:`iter_batches` is the "memory swapper" scientists hand-roll around
PyTables, done with dask: batches come in order, at most ``prefetch`` of them
are read ahead while the caller works on the current one, and nothing else of
the array is held.

>>> import dask.array as da
>>> x = da.arange(10, chunks=4)
>>> [b.tolist() for b in iter_batches(x, 4)]
[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future

import numpy as np

from daskh5._chunking import resolve_budget

__all__ = ["iter_batches"]


def _rows_per_batch(x, batch_size) -> int:
    if isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool):
        rows = int(batch_size)
    elif isinstance(batch_size, str):
        row_bytes = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * np.dtype(x.dtype).itemsize)
        rows = resolve_budget(batch_size) // row_bytes
        if rows < 1:
            raise ValueError(
                f"one row of this array takes {row_bytes} bytes, more than batch_size={batch_size!r}"
            )
    else:
        raise TypeError(
            f"batch_size is a number of rows (int) or a byte budget like '64MiB', not {batch_size!r}"
        )
    if rows <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    return rows


def iter_batches(
    x, batch_size: int | str, *, prefetch: int = 1, drop_last: bool = False, **compute_kwargs
) -> Iterator[np.ndarray]:
    """Yield consecutive batches of rows of ``x`` as numpy arrays, reading ahead in the background.

    Parameters
    ----------
    x : dask array, numpy array, or :class:`daskh5.RaggedArray`
        For example ``daskh5.from_pytables(path, "/data")``. A ragged array
        yields lists of samples, read ahead the same way.
    batch_size : int or str
        Rows (samples) per batch (int), or a byte budget (``"64MiB"``): rows of
        an array, runs of whole samples of a ragged array.
    prefetch : int
        Batches read ahead while the caller holds the current one (0: read on
        demand). At most ``1 + prefetch`` batches exist at once.
    drop_last : bool
        Skip a final batch shorter than ``batch_size`` (for fixed-shape training steps).
    **compute_kwargs
        Passed to each batch's ``compute`` (for example ``scheduler="threads"``);
        on a ``distributed.Client`` batches are computed on its cluster.

    Notes
    -----
    Batches are read by one background thread, in order; ``x`` is sliced
    lazily, so a batch reads only the chunks it overlaps. Aligning
    ``batch_size`` with the chunks along the first axis avoids reading a chunk
    twice. Closing the generator (``break``) cancels what was read ahead.
    """
    from daskh5.ragged import RaggedArray

    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, got {prefetch}")
    if isinstance(x, RaggedArray):
        n = len(x)
        if isinstance(batch_size, str):
            bounds = x._runs(batch_size)  # runs of whole samples within the byte budget
        else:
            rows = _rows_per_batch(np.empty((0, 1)), batch_size)  # an int: samples per batch
            bounds = [(i, min(n, i + rows)) for i in range(0, n, rows)]
        if (
            drop_last
            and isinstance(batch_size, (int, np.integer))
            and bounds
            and bounds[-1][1] - bounds[-1][0] < batch_size
        ):
            bounds = bounds[:-1]

        def load(i0: int, i1: int) -> list:
            return x._run(i0, i1)

    else:
        if not hasattr(x, "shape") or len(x.shape) == 0:
            raise TypeError(f"iter_batches wants an array with at least one axis, got {type(x).__name__}")
        rows = _rows_per_batch(x, batch_size)
        n = x.shape[0]
        stops = range(rows, n + 1, rows) if drop_last else range(rows, n + rows, rows)
        bounds = [(stop - rows, min(stop, n)) for stop in stops]

        def load(i0: int, i1: int) -> np.ndarray:
            part = x[i0:i1]
            return np.asarray(part.compute(**compute_kwargs) if hasattr(part, "compute") else part)

    if prefetch == 0:
        for i0, i1 in bounds:
            yield load(i0, i1)
        return

    # One reader thread, in order; ``pending`` holds at most ``prefetch``
    # batches beyond the one the caller has.
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="daskh5-prefetch")
    pending: deque[Future] = deque()
    jobs = iter(bounds)

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

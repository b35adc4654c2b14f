"""Per-label statistics in one pass over data far bigger than memory.

:func:`label_stats` reduces a ``(n, d)`` array and its ``(n,)`` labels block by
block: every block yields, for each label it contains, the count, mean,
centred scatter matrix, minimum and maximum; partial results merge pairwise
(Chan et al.'s parallel update), so neither the labels nor their number need
to be known in advance and no block is read twice.

>>> import dask.array as da, numpy as np
>>> x = da.from_array(np.array([[0.0, 1.0], [2.0, 3.0], [10.0, 10.0], [4.0, 5.0]]), chunks=2)
>>> labels = da.from_array(np.array([1, 1, 7, 1]), chunks=2)
>>> s = label_stats(x, labels)
>>> s.labels.tolist(), s.count.tolist()
([1, 7], [3, 1])
>>> s.mean[0].tolist(), s.max[0].tolist()
([2.0, 3.0], [4.0, 5.0])
>>> s.cov[0].tolist()
[[4.0, 4.0], [4.0, 4.0]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daskh5._optional import require

__all__ = ["LabelStats", "label_stats"]


@dataclass(frozen=True)
class LabelStats:
    """Statistics of the rows of each label, in ascending label order.

    ``count`` has shape ``(k,)``; ``sum``, ``mean``, ``var``, ``std``, ``min``
    and ``max`` have shape ``(k, d)``; ``cov`` has shape ``(k, d, d)``. ``var``,
    ``std`` and ``cov`` use ``ddof`` (1 by default, like ``np.cov`` and pandas);
    a label with ``count <= ddof`` gets NaN there.
    """

    labels: np.ndarray
    count: np.ndarray
    sum: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    cov: np.ndarray
    ddof: int = 1

    def to_dataset(self):
        """The statistics as an :class:`xarray.Dataset` with a ``label`` dimension."""
        xr = require("xarray", "LabelStats.to_dataset")

        d = self.mean.shape[1]
        coords = {"label": self.labels, "dim": np.arange(d), "dim2": np.arange(d)}
        data = {
            "count": (("label",), self.count),
            **{k: (("label", "dim"), getattr(self, k)) for k in ("sum", "mean", "var", "std", "min", "max")},
            "cov": (("label", "dim", "dim2"), self.cov),
        }
        return xr.Dataset(data, coords=coords, attrs={"ddof": self.ddof})

    def to_frame(self):
        """The statistics as a :class:`pandas.DataFrame`, one row per label."""
        pd = require("pandas", "LabelStats.to_frame")

        d = self.mean.shape[1]
        cols = {"count": self.count}
        for k in ("mean", "std", "min", "max"):
            for j in range(d):
                cols[f"{k}_{j}"] = getattr(self, k)[:, j]
        for i in range(d):
            for j in range(i, d):
                cols[f"cov_{i}{j}"] = self.cov[:, i, j]
        return pd.DataFrame(cols, index=pd.Index(self.labels, name="label"))

    def table(self) -> str:
        """A fixed-width text table for terminals (what ``daskh5 stats`` prints)."""
        d = self.mean.shape[1]
        head = f"{'label':>8} {'count':>12}" + "".join(
            f" {f'{k}[{j}]':>10}" for k in ("mean", "std", "min", "max") for j in range(d)
        )
        head += "".join(f" {f'cov[{i},{j}]':>10}" for i in range(d) for j in range(i, d))
        rows = [head]
        for r, label in enumerate(self.labels.tolist()):
            line = f"{label!s:>8} {self.count[r]:>12,d}"
            line += "".join(
                f" {getattr(self, k)[r, j]:>10.4f}" for k in ("mean", "std", "min", "max") for j in range(d)
            )
            line += "".join(f" {self.cov[r, i, j]:>10.4f}" for i in range(d) for j in range(i, d))
            rows.append(line)
        return "\n".join(rows)


# A partial result: (labels, count, mean, m2, min, max), labels sorted and unique.
_Partial = tuple


_PIECE = 1 << 15  # rows per piece: a piece's temporaries stay in cache and in malloc's heap


def _block_stats(x, labels) -> _Partial:
    """The statistics of one block, for the labels it holds (in cache-sized pieces, merged).

    ``x`` is an array block, or a pandas partition holding the data columns and, when
    ``labels`` is a column name, the labels too (see :func:`_frame_arrays`).
    """
    if isinstance(labels, _Column):
        x, labels = _frame_arrays(x, str(labels))
    x = np.asarray(x)
    labels = np.asarray(labels).reshape(-1)
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[0] != labels.shape[0]:
        raise ValueError(f"a block of {x.shape[0]} rows came with {labels.shape[0]} labels")
    n = labels.shape[0]
    if n > _PIECE:
        return _merge_all(
            [_piece_stats(x[i : i + _PIECE], labels[i : i + _PIECE]) for i in range(0, n, _PIECE)]
        )
    return _piece_stats(x, labels)


class _Column(str):
    """The name of the labels column in a combined pandas partition (a marker, not a label value)."""


_LABEL = "__daskh5_label__"


def _frame_arrays(frame, label: str) -> tuple[np.ndarray, np.ndarray]:
    """(float64 data, labels) of a pandas partition; rows whose label is missing are dropped.

    pandas' ``groupby`` drops them too; missing data values are kept (NaN propagates, as in
    the array path).
    """
    import pandas as pd

    y = frame[label]
    data = frame.drop(columns=[label])
    keep = y.notna().to_numpy()
    if not keep.all():
        y, data = y[keep], data[keep]
    if isinstance(y.dtype, pd.CategoricalDtype):
        y = y.astype(y.dtype.categories.dtype)
    values = y.to_numpy()
    if values.dtype == object:
        values = np.asarray(values)
    x = data.to_numpy(dtype=np.float64, na_value=np.nan)
    return x, values


def _frame_partitions(data, labels) -> tuple[list, int]:
    """Delayed pandas partitions holding ``data``'s columns and ``labels`` (one read of each), and d."""
    import dask.dataframe as dd
    import pandas as pd

    if isinstance(data, dd.Series):
        data = data.to_frame()
    if not isinstance(labels, dd.Series):
        raise TypeError(
            "label_stats: with a dask DataFrame as data, pass the labels as a dask Series of the same "
            f"frame (for example ddf['label']), not {type(labels).__name__}"
        )
    for name, dtype in data.dtypes.items():
        if not pd.api.types.is_numeric_dtype(dtype):
            raise TypeError(
                f"label_stats: column {name!r} has dtype {dtype}, not numbers; pass only numeric "
                "columns as data (ddf[['x', 'y']])"
            )
    try:
        combined = data.assign(**{_LABEL: labels})
    except (ValueError, NotImplementedError) as exc:
        raise ValueError(
            "label_stats: data and labels must come from the same frame, or from frames with known "
            f"divisions that can be aligned ({exc})"
        ) from None
    return combined.to_delayed(), len(data.columns)


def _piece_stats(x: np.ndarray, labels: np.ndarray) -> _Partial:
    x = x.astype(np.float64, copy=False)
    d = x.shape[1]
    if labels.size == 0:
        empty = np.empty((0, d))
        return labels[:0], np.zeros(0, np.int64), empty, np.empty((0, d, d)), empty, empty
    uniq, inverse = _factorize(labels)
    k = uniq.size
    count = np.bincount(inverse, minlength=k)
    # Column by column, with 1-d bincounts: means first, then scatter of the
    # values centred on their own label's mean (two passes over the piece in
    # memory, none over the file).
    cols = [np.ascontiguousarray(x[:, j]) for j in range(d)]
    mean, lo, hi = np.empty((k, d)), np.empty((k, d)), np.empty((k, d))
    centred = []
    for j, col in enumerate(cols):
        mean[:, j] = np.bincount(inverse, weights=col, minlength=k) / count
        centred.append(col - mean[:, j][inverse])
    # Extremes: one stable sort by label (a radix sort for up to 65,536 labels),
    # then reduceat over each label's run, column by column. (ufunc.at was 30x
    # slower on clustered data; boolean masks per label cost k passes.)
    small = inverse.astype(np.uint8 if k <= 256 else np.uint16 if k <= 65536 else np.intp)
    order = np.argsort(small, kind="stable")
    starts = np.concatenate(([0], np.cumsum(count)[:-1]))
    for j, col in enumerate(cols):
        ordered = col[order]
        lo[:, j] = np.minimum.reduceat(ordered, starts)
        hi[:, j] = np.maximum.reduceat(ordered, starts)
    m2 = np.empty((k, d, d))
    for i in range(d):
        for j in range(i, d):
            m2[:, i, j] = m2[:, j, i] = np.bincount(inverse, weights=centred[i] * centred[j], minlength=k)
    return uniq, count.astype(np.int64), mean, m2, lo, hi


def _factorize(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct labels, position of each label among them), cheaply for small integer ranges."""
    if labels.dtype.kind in "iub":
        lo, hi = int(labels.min()), int(labels.max())
        if hi - lo <= 4 * labels.size + 1024:  # a dense range: counting beats sorting
            offset = labels.astype(np.int64) - lo
            present = np.bincount(offset, minlength=hi - lo + 1) > 0
            rank = np.cumsum(present) - 1
            values = np.flatnonzero(present) + lo
            return values.astype(labels.dtype), rank[offset]
    return np.unique(labels, return_inverse=True)


def _merge(a: _Partial, b: _Partial) -> _Partial:
    """Two partial results as one (Chan, Golub and LeVeque's pairwise update)."""
    la, lb = a[0], b[0]
    if la.size == 0:
        return b
    if lb.size == 0:
        return a
    labels = np.union1d(la, lb)
    k, d = labels.size, a[2].shape[1]
    ia, ib = np.searchsorted(labels, la), np.searchsorted(labels, lb)
    count = np.zeros(k, np.int64)
    count[ia] += a[1]
    count[ib] += b[1]
    na, nb = np.zeros(k), np.zeros(k)
    na[ia], nb[ib] = a[1], b[1]
    ma, mb = np.zeros((k, d)), np.zeros((k, d))
    ma[ia], mb[ib] = a[2], b[2]
    delta = mb - ma
    n = na + nb
    mean = ma + delta * (nb / n)[:, None]
    m2 = np.zeros((k, d, d))
    m2[ia] += a[3]
    m2[ib] += b[3]
    m2 += delta[:, :, None] * delta[:, None, :] * (na * nb / n)[:, None, None]
    lo = np.full((k, d), np.inf)
    hi = np.full((k, d), -np.inf)
    lo[ia], hi[ia] = a[4], a[5]
    lo[ib] = np.minimum(lo[ib], b[4])
    hi[ib] = np.maximum(hi[ib], b[5])
    return labels, count, mean, m2, lo, hi


def _merge_all(parts: list) -> _Partial:
    while len(parts) > 1:
        parts = [
            _merge(*parts[i : i + 2]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)
        ]
    return parts[0]


def _finish(part: _Partial, ddof: int) -> LabelStats:
    labels, count, mean, m2, lo, hi = part
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = (count - ddof).astype(np.float64)
        denom[denom <= 0] = np.nan
        cov = m2 / denom[:, None, None]
    var = np.diagonal(cov, axis1=1, axis2=2).copy()
    return LabelStats(
        labels=labels,
        count=count,
        sum=mean * count[:, None],
        mean=mean,
        var=var,
        std=np.sqrt(var),
        min=lo,
        max=hi,
        cov=cov,
        ddof=ddof,
    )


def label_stats(data, labels, *, ddof: int = 1, split_every: int = 8, compute: bool = True, **compute_kwargs):
    """Count, sum, mean, var/std, min, max and covariance of ``data``'s rows for each label.

    Parameters
    ----------
    data : dask or numpy array of shape ``(n, d)`` or ``(n,)``, or a dask DataFrame or Series
        For example ``daskh5.from_pytables(path, "/data", chunks="64MiB")``: the
        chunks are the memory budget, each is read once. Or numeric columns of a
        dask DataFrame, ``ddf[["x", "y"]]`` of :func:`daskh5.read_table`: column
        ``j`` of the result is ``data.columns[j]``.
    labels : dask or numpy array of shape ``(n,)``, or a dask Series
        Any integer, bool, float or string labels; the set of labels is found on
        the way (a dense integer range by counting, anything else by sorting).
        With DataFrame data, a Series of the same frame (``ddf["label"]``): data
        and labels are then read together, once per partition. Rows whose label is
        missing are left out, as pandas' ``groupby`` does; categorical labels count
        by their values.
    ddof : int
        Delta degrees of freedom of ``var``, ``std`` and ``cov`` (1: sample statistics).
    split_every : int
        How many partial results each merge task combines (the tree's fan-in).
    compute : bool
        False returns a :class:`dask.delayed.Delayed` of the :class:`LabelStats`.
    **compute_kwargs
        Passed to ``dask.compute`` (for example ``scheduler="processes"``); on a
        ``distributed.Client`` the work runs on its cluster by default.

    Returns
    -------
    LabelStats

    Examples
    --------
    >>> import dask.dataframe as dd, pandas as pd, daskh5
    >>> df = pd.DataFrame({"x": [0.0, 2.0, 10.0, 4.0], "label": [1, 1, 7, 1]})
    >>> ddf = dd.from_pandas(df, npartitions=2)
    >>> s = daskh5.label_stats(ddf[["x"]], ddf["label"])
    >>> s.labels.tolist(), s.mean[:, 0].tolist()
    ([1, 7], [2.0, 10.0])
    """
    import dask

    if _is_dask_frame(data):
        parts, d = _frame_partitions(data, labels)
        blocks = [dask.delayed(_block_stats, pure=True)(part, _Column(_LABEL)) for part in parts]
        return _reduce(blocks, d, np.dtype(object), ddof, split_every, compute, compute_kwargs)
    if _is_pandas(data) or _is_pandas(labels):
        data = np.asarray(data.to_numpy(dtype=np.float64) if _is_pandas(data) else data)
        labels = labels.to_numpy() if _is_pandas(labels) else labels
    blocks, d, dtype = _array_blocks(data, labels)
    return _reduce(blocks, d, dtype, ddof, split_every, compute, compute_kwargs)


def _is_dask_frame(obj) -> bool:
    import sys

    if "dask.dataframe" not in sys.modules:  # nothing can be a dask DataFrame yet
        return False
    import dask.dataframe as dd

    return isinstance(obj, (dd.DataFrame, dd.Series))


def _is_pandas(obj) -> bool:
    import sys

    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(obj, (pd.DataFrame, pd.Series))


def _array_blocks(data, labels) -> tuple[list, int, np.dtype]:
    import dask
    import dask.array as da

    data = (
        data
        if isinstance(data, da.Array)
        else da.from_array(np.asarray(data), chunks=(1 << 20,) + np.shape(data)[1:])
    )
    labels = (
        labels if isinstance(labels, da.Array) else da.from_array(np.asarray(labels), chunks=data.chunks[0])
    )
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2 or labels.ndim != 1:
        raise ValueError(
            f"label_stats wants data of shape (n, d) and labels of shape (n,), got {data.shape} and {labels.shape}"
        )
    if data.shape[0] != labels.shape[0]:
        raise ValueError(
            f"data has {data.shape[0]} rows but labels has {labels.shape[0]}: they must match row for row"
        )
    if data.numblocks[1] != 1:
        data = data.rechunk({1: -1})
    if labels.chunks[0] != data.chunks[0]:
        labels = labels.rechunk({0: data.chunks[0]})
    blocks = [
        dask.delayed(_block_stats, pure=True)(xb, lb)
        for xb, lb in zip(data.to_delayed().ravel(), labels.to_delayed().ravel(), strict=True)
    ]
    return blocks, data.shape[1], labels.dtype


def _reduce(blocks: list, d: int, dtype, ddof: int, split_every: int, compute: bool, compute_kwargs: dict):
    """The merge tree over the blocks' partial results, and the final statistics."""
    import dask

    if not blocks:
        blocks = [dask.delayed(_block_stats)(np.empty((0, d)), np.empty(0, dtype))]
    split_every = max(2, int(split_every))
    while len(blocks) > 1:
        blocks = [
            dask.delayed(_merge_all, pure=True)(blocks[i : i + split_every])
            for i in range(0, len(blocks), split_every)
        ]
    result = dask.delayed(_finish, pure=True)(blocks[0], ddof)
    return result.compute(**compute_kwargs) if compute else result

"""PyTables Tables and pandas ``HDFStore`` keys as dask DataFrames, read without locks.

:func:`read_table` is the DataFrame door: each partition is a contiguous run of
whole HDF5 chunks, read by :class:`~daskh5._reader.NodeReader` (``pread`` and
GIL-releasing decoders, no HDF5 or PyTables lock) and turned into the frame
``pd.read_hdf`` would give for those rows (:mod:`daskh5._table_source`).
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np

from daskh5._chunking import budget_chunks, resolve_budget
from daskh5._codecs import allowed_filters
from daskh5._inputs import resolve
from daskh5._optional import require_dataframe
from daskh5._table_source import TableSource, describe_source
from daskh5._where import Condition, parse

__all__ = ["read_table"]

STATS_GROUP = "meta/daskh5_stats"  # per-chunk min/max written by daskh5.to_pytables, under a pandas key


class ReadRows:
    """One partition's task: rows ``start..stop`` of a source, filtered by ``where``, as a frame."""

    def __init__(self, source: TableSource, where: Condition | None, columns: list[str]):
        self.source, self.where, self.default = source, where, list(columns)

    def __dask_tokenize__(self):
        from dask.base import tokenize

        return ("daskh5.ReadRows", tokenize(self.source), self.where and self.where.text, self.default)

    def __call__(self, rows, columns=None):
        start, stop = rows
        names = self.default if columns is None else list(columns)
        extra = [n for n in (self.where.columns if self.where else ()) if n not in names]
        frame = self.source.frame(start, stop, names, extra, condition=self.where)
        if extra:
            frame = frame[[c.label for c in map(self.source.column, names)]]
        return frame


class ReadSeries(ReadRows):
    """A pandas Series key's partition (no column projection: a series has one)."""

    def __call__(self, rows):
        frame = super().__call__(rows)
        out = frame.iloc[:, 0]
        out.name = self.source.series_name
        return out


def _partitions(source: TableSource, budget: int) -> list[tuple[int, int]]:
    if source.nrows == 0:
        return [(0, 0)]
    sizes = budget_chunks((source.nrows,), (source.chunk_rows,), source.row_bytes, budget)[0]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
    return list(itertools.pairwise(starts))


def _kinds(source: TableSource, meta) -> dict:
    import pandas as pd

    kinds = {c.name: meta[c.label].dtype for c in source.columns}
    index = meta.index
    levels = (
        [index.get_level_values(i) for i in range(index.nlevels)]
        if isinstance(index, pd.MultiIndex)
        else [index]
    )
    for i, lv in enumerate(levels):
        name = source.index_names[i] if i < len(source.index_names) else None
        if name is not None:
            kinds.setdefault(str(name), lv.dtype)
    if not isinstance(index, pd.MultiIndex):
        kinds.setdefault("index", index.dtype)
    return kinds


def _select(source: TableSource, columns) -> list[str]:
    import difflib

    from daskh5.errors import NodeNotFound

    if columns is None:
        return source.names()
    if isinstance(columns, str):
        columns = [columns]
    names = source.names()
    out = []
    for c in columns:
        if str(c) not in names:
            near = difflib.get_close_matches(str(c), names, n=3, cutoff=0.5)
            raise NodeNotFound(
                f"{source.where}: no column {c!r}; "
                + (f"did you mean {', '.join(map(repr, near))}?" if near else f"the columns are {names}")
            )
        out.append(str(c))
    return out


def read_table(
    path: str | os.PathLike,
    key: str | None = None,
    *,
    columns: list[str] | None = None,
    where: str | None = None,
    partition_size: int | str | None = None,
    check_index: bool = False,
    allow_external: bool = False,
    allow_filters=(),
) -> Any:
    """Read a PyTables Table or a pandas ``HDFStore`` key as a dask DataFrame.

    Parameters
    ----------
    path : str or path-like
        The HDF5 file (an open ``tables.File`` or ``pd.HDFStore`` gives its name).
    key : str
        A Table's node path (``"/obs"``), or a pandas key (``"df"`` or ``"/df"``) written by
        ``DataFrame.to_hdf``/``Series.to_hdf`` in either format, or by :func:`daskh5.to_pytables`.
    columns : list of str, optional
        Only these columns are decoded and kept (nested Table columns are named
        ``parent.child``). ``ddf[cols]`` on the result is pushed into this by dask's optimiser.
    where : str, optional
        A row condition in the syntax of ``pd.read_hdf(where=...)`` and PyTables conditions:
        comparisons of a column (or ``index``) with a value, ``&``, ``|``, ``~``, lists
        (``label in [1, 2]`` or ``label == [1, 2]``), strings, ``Timestamp('2020-01-01')``.
        Parsed and checked now (a :class:`~daskh5.WhereError` points at the bad term),
        evaluated per partition; partitions whose stored chunk minima and maxima (written by
        :func:`daskh5.to_pytables`) rule out any match are not read at all.
    partition_size : int or str, optional
        The byte budget of one partition (default: dask's ``array.chunk-size``); partitions are
        contiguous runs of whole HDF5 chunks.
    check_index : bool
        For a pandas key that daskh5 did not write: read its index once now and, if it is
        sorted, set the divisions from it (``ddf.loc[a:b]`` then reads only what it needs).
        PyTables Tables always have known divisions (row numbers), as do keys daskh5 wrote.
    allow_external : bool
        Follow values stored outside the file (see :doc:`/user-guide/safety`).
    allow_filters : iterable of int or str
        HDF5 filters to decode beyond daskh5's allowlist (for files you trust).

    Returns
    -------
    dask.dataframe.DataFrame or dask.dataframe.Series
        Computes to what ``pd.read_hdf(path, key)`` gives (for a PyTables Table:
        ``pd.DataFrame(table.read())`` with nested columns flattened, enums as
        categoricals, Time32/Time64 as datetimes and 1-d cells split into
        ``name[i]`` columns), with ``dask.config`` ``dataframe.convert-string``
        applied to string columns as for every dask reader.

    Examples
    --------
    >>> import os, tempfile, warnings, numpy as np, pandas as pd, daskh5
    >>> path = os.path.join(tempfile.mkdtemp(), "store.h5")
    >>> df = pd.DataFrame({"x": np.arange(6.0), "label": [0, 1, 2, 0, 1, 2]})
    >>> df.to_hdf(path, key="df", format="table", data_columns=["label"])
    >>> ddf = daskh5.read_table(path, "df", where="label == 2")
    >>> ddf.x.compute().tolist()
    [2.0, 5.0]
    """
    dd = require_dataframe("daskh5.read_table")
    path, key, _ = resolve(path, key)
    source = describe_source(
        os.path.abspath(os.fspath(path)),
        key,
        allow_external=allow_external,
        allowed=allowed_filters(allow_filters),
    )
    names = _select(source, columns)
    parts = _partitions(source, resolve_budget(partition_size))
    meta_fn = ReadSeries(source, None, names) if source.series else ReadRows(source, None, names)
    meta = meta_fn((0, 0))
    condition = None
    if where is not None:
        condition = parse(where)
        condition.check(_kinds(source, ReadRows(source, None, source.names())((0, 0))))
    divisions = _divisions(source, parts, check_index)
    if condition is not None:
        keep = _may_match(source, parts, condition)
        if keep is not None:
            if divisions is not None:
                divisions = _kept_divisions(divisions, keep)
            parts = [p for p, k in zip(parts, keep) if k] or [(0, 0)]
            if divisions is not None and len(divisions) != len(parts) + 1:
                divisions = None
    fn = ReadSeries(source, condition, names) if source.series else ReadRows(source, condition, names)
    kwargs = {} if source.series else {"columns": None}
    out = dd.from_map(fn, parts, meta=meta, divisions=divisions, label="read-table", enforce_metadata=False,
                      **kwargs)  # fmt: skip
    return out


def _kept_divisions(divisions: tuple, keep) -> tuple | None:
    """Divisions of the partitions kept (each keeps its own lower bound; the last its upper)."""
    kept = [i for i, k in enumerate(keep) if k]
    if not kept:
        return None
    lows = [divisions[i] for i in kept]
    last = kept[-1]
    high = divisions[last + 1]
    return (*lows, high)


def _divisions(source: TableSource, parts: list[tuple[int, int]], check_index: bool):
    """Known divisions: row numbers for a RangeIndex, sorted index values when known to be sorted."""
    if source.nrows == 0:
        return None
    if not source.index:
        return (*[a for a, _ in parts], parts[-1][1] - 1)
    if len(source.index) != 1:
        return None
    stats = source.extra.get("stats")
    firsts = None
    if stats is not None and stats.get("index_sorted"):
        firsts = _index_edges(source, parts)
    elif check_index:
        firsts = _checked_edges(source, parts)
    return firsts


def _index_values(source: TableSource, start: int, stop: int):
    c = source.index[0]
    block = source.read_blocks(start, stop, [c])
    import pandas as pd

    return pd.Index(c.values(block[c.source], source.where))


def _index_edges(source: TableSource, parts) -> tuple | None:
    """Divisions from the first row of every partition and the last row (the index is sorted)."""
    values = []
    for a, _b in parts:
        values.append(_index_values(source, a, a + 1)[0])
    values.append(_index_values(source, parts[-1][1] - 1, parts[-1][1])[0])
    return _valid(values)


def _checked_edges(source: TableSource, parts) -> tuple | None:
    import dask

    def piece(a: int, b: int):
        idx = _index_values(source, a, b)
        return (idx.is_monotonic_increasing and not idx.hasnans, idx[0], idx[-1])

    pieces = dask.compute(*[dask.delayed(piece)(a, b) for a, b in parts], scheduler="threads")
    if not all(p[0] for p in pieces):
        return None
    for (_, _, last), (_, first, _) in itertools.pairwise(pieces):
        if not last <= first:
            return None
    return _valid([p[1] for p in pieces] + [pieces[-1][2]])


def _valid(values: list) -> tuple | None:
    """Divisions must be strictly increasing except possibly the last two; else unknown."""
    try:
        if any(not a < b for a, b in itertools.pairwise(values[:-1])) or not values[-2] <= values[-1]:
            return None
    except TypeError:
        return None
    return tuple(values)


def _may_match(source: TableSource, parts, condition: Condition):
    """Per partition: whether it can match ``condition`` (from stored chunk statistics), or None."""
    from daskh5._table_stats import chunk_bounds

    bounds = chunk_bounds(source, condition.columns)
    if not bounds:
        return None
    chunks = condition.may_match(bounds["columns"])
    if chunks is None:
        return None
    rows, covered = source.chunk_rows, bounds["rows"]
    out = []
    for a, b in parts:
        first, last = a // rows, (b - 1) // rows
        if b > covered - (covered % rows) or last >= len(chunks):
            out.append(True)  # rows past the recorded statistics: always read
        else:
            out.append(bool(chunks[first : last + 1].any()))
    return out

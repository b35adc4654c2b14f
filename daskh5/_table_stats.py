"""Per-chunk minimum and maximum of a pandas key's data columns, as daskh5's table writer records them.

Stored beside pandas' own bookkeeping, in ``<key>/meta/daskh5_stats`` (pandas
and the xarray engine skip a key's ``meta`` group): one ``(chunks, 2)`` array
of stored values per data column (and ``index``), and attributes ``rows`` (the
rows they describe), ``chunk_rows`` and ``index_sorted``. Rows appended later by
another writer are past ``rows`` and are always read.
"""

from __future__ import annotations

import numpy as np

__all__ = ["STATS", "chunk_bounds", "load_stats"]

STATS = "meta/daskh5_stats"
MAX_STATS_CHUNKS = 1 << 24


def load_stats(group, table_rows: int, chunk_rows: int) -> dict | None:
    """``{"rows", "chunk_rows", "index_sorted", "arrays": {field: (chunks, 2) array}}`` or None."""
    import h5py

    from daskh5._attrs import small_attr

    if "meta" not in group or "daskh5_stats" not in group["meta"]:
        return None
    g = group[STATS]
    if not isinstance(g, h5py.Group):
        return None
    rows = small_attr(g, "rows")
    stored_chunk = small_attr(g, "chunk_rows")
    if rows is None or stored_chunk is None or int(stored_chunk) != chunk_rows or int(rows) > table_rows:
        return None  # not ours, or the table was rewritten since: no statistics
    arrays = {}
    nchunks = -(-int(rows) // chunk_rows)
    for name, ds in g.items():
        if isinstance(ds, h5py.Dataset) and ds.shape == (nchunks, 2) and nchunks <= MAX_STATS_CHUNKS:
            arrays[name] = ds[()]
    return {
        "rows": int(rows),
        "chunk_rows": chunk_rows,
        "index_sorted": bool(small_attr(g, "index_sorted", False)),
        "arrays": arrays,
    }


def _bound(column, raw: np.ndarray, where: str):
    import pandas as pd

    if column.kind == "str":
        strings = getattr(np, "strings", np.char)
        return pd.Series(strings.decode(raw, "utf-8", "replace").astype(object))
    if column.kind in ("cat", "enum"):
        return None
    return pd.Series(column.convert(raw, where))


def chunk_bounds(source, names) -> dict | None:
    """``{"rows": rows covered, "columns": {name: (min Series, max Series)}}`` for ``names``."""
    stats = source.extra.get("stats")
    if not stats:
        return None
    out = {}
    for name in names:
        column = source.column(name)
        field = column.field[0] if column is not None and column.field and len(column.field) == 1 else None
        if column is None:
            column = source.index_column(name)
            field = "index" if column is not None and len(source.index) == 1 else None
        if field is None or field not in stats["arrays"]:
            continue
        raw = stats["arrays"][field]
        lo, hi = _bound(column, raw[:, 0], source.where), _bound(column, raw[:, 1], source.where)
        if lo is not None:
            out[name] = (lo, hi)
    return {"rows": stats["rows"], "columns": out} if out else None

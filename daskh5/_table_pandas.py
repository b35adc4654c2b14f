"""pandas ``HDFStore`` keys (both formats) as a :class:`~daskh5._table_source.TableSource`.

The layout is found by :mod:`daskh5._pandas` (the xarray engine's reader of
pandas keys: metadata through the restricted unpickler, categories, nan_rep,
time zones); this module maps its entries to frame columns with pandas' dtypes.
"""

from __future__ import annotations

import numpy as np

from daskh5 import _pandas as P
from daskh5._pandas_pickles import inert_loads
from daskh5._table_source import Column, TableSource, check_rows
from daskh5._table_stats import load_stats
from daskh5.errors import Daskh5Error, NodeKindError, NotHDF5Error, UnsupportedDtypeError

__all__ = ["pandas_source"]


def pandas_source(path: str, group, pandas_type: str, allow_external: bool, allowed) -> TableSource:
    """The source of the pandas key ``group`` (an open h5py group) of ``path``."""
    where = f"{path}:{group.name}"
    token, filters = P._allow_external.set(allow_external), P._allowed.set(frozenset(allowed))
    try:
        if pandas_type in P._TABLE_TYPES and P._has(group, "table"):
            return _table_format(path, group, pandas_type)
        if pandas_type in P._FIXED_TYPES:
            return _fixed_format(path, group, pandas_type)
        raise NodeKindError(
            f"{where}: a pandas {pandas_type!r} key, which read_table does not read (it reads frames and "
            "series, format='table' or 'fixed'); read it with pd.read_hdf if you trust the file"
        )
    except Daskh5Error:
        raise
    except (KeyError, ValueError, TypeError, IndexError, OSError, AttributeError) as exc:
        raise NotHDF5Error(
            f"{where}: not a layout pandas writes ({type(exc).__name__}: {exc}); read it with pd.read_hdf "
            "if you trust the file"
        ) from None
    finally:
        P._allow_external.reset(token)
        P._allowed.reset(filters)


def _refuse_skipped(where: str, skipped: list[str]) -> None:
    if skipped:
        raise UnsupportedDtypeError(
            f"{where}: read_table cannot read " + "; ".join(skipped) + " (columns= does not help: the "
            "key is refused as a whole); copy the other columns out with pandas if you trust the file"
        )


def _column(e, source: int, label) -> Column:
    """The frame column of one :class:`~daskh5._xarray_store.Entry` of :mod:`daskh5._pandas`."""
    import pandas as pd

    tz = e.attrs.get("pandas_timezone") or e.encoding.get("pandas_timezone")
    if "pandas_categories" in e.encoding:
        cats = e.encoding["pandas_categories"]
        return Column(label, source, e.field, "cat", np.dtype(object), categories=pd.Index(cats),
                      ordered=bool(e.encoding.get("pandas_ordered", False)))  # fmt: skip
    if isinstance(getattr(e, "decode", None), P.StringDecoder):
        return Column(label, source, e.field, "str", np.dtype(object), e.decode)
    if e.dtype.kind in "mM":
        return Column(label, source, e.field, "view", e.dtype, tz=tz if e.dtype.kind == "M" else None)
    return Column(label, source, e.field, "plain", e.dtype)


def _labels(strings: list[str], originals) -> dict:
    """``{str(label): label}`` for the real column labels pandas stored (ints stay ints)."""
    out = {s: s for s in strings}
    for v in originals if isinstance(originals, (list, tuple, np.ndarray)) else ():
        v = v.item() if isinstance(v, np.generic) else v
        if isinstance(v, (str, int, float)) and str(v) in out:
            out[str(v)] = v
    return out


def _table_format(path: str, group, pandas_type: str) -> TableSource:
    key = P._TableKey(path, group)
    where = f"{path}:{group.name}"
    skipped: list[str] = []
    entries = []
    for name in key.info.dtype.names:
        if name != "index":
            entries += key.column_entries(name, skipped)
    _refuse_skipped(where, skipped)
    levels = [e for e in entries if "pandas_level" in e.encoding]
    data = [e for e in entries if "pandas_level" not in e.encoding]
    order = key.column_order()
    data.sort(key=lambda e: order.index(e.name) if e.name in order else len(order))
    axes = inert_loads(key.gattrs.get("non_index_axes")) if "non_index_axes" in key.gattrs else None
    labels = _labels([e.name for e in data], axes[0][1] if P._is_axes(axes) else None)
    columns = tuple(_column(e, 0, labels[e.name]) for e in data)
    if len(key.levels) > 1:
        levels.sort(key=lambda e: e.encoding["pandas_level"][1])
        index = tuple(_column(e, 0, e.name) for e in levels)
        names = tuple(_level_name(key, i, e.name) for i, e in enumerate(levels))
    else:
        index = (_column(key.index_entry(), 0, "index"),)
        name = key.index_info.get("index_name")
        names = (name if isinstance(name, (str, int, float)) and not isinstance(name, bool) else None,)
    series = pandas_type == "series_table"
    info = key.info
    chunk_rows = int(info.chunkshape[0]) if info.chunkshape else max(1, int(info.shape[0]))
    stats = load_stats(group, int(info.shape[0]), chunk_rows)
    return TableSource(
        path=info.path, node=group.name, nrows=int(info.shape[0]), readers=(key.reader,), columns=columns,
        index=index, index_names=names, series=series,
        series_name=_series_name(columns) if series else None,
        chunk_rows=chunk_rows, row_bytes=max(1, info.dtype.itemsize), table_reader=0,
        mtime_ns=info.mtime_ns, extra={"data_columns": _data_columns(key), "stats": stats},
    )  # fmt: skip


def _level_name(key, i: int, stored: str):
    info = key._info(stored)
    name = info.get("names", [None])[0] if isinstance(info.get("names"), list) else None
    if name is None and stored == f"level_{i}":
        return None
    return stored if name is None else name


def _series_name(columns) -> object:
    name = columns[0].label if columns else None
    return None if name == "values" else name


def _data_columns(key) -> list[str]:
    names = key.info.dtype.names
    return [n for n in names if n != "index" and not n.startswith("values_block_")]


def _fixed_format(path: str, group, pandas_type: str) -> TableSource:
    where = f"{path}:{group.name}"
    skipped: list[str] = []
    data, coords, _names = P._fixed_key(path, group, False, skipped)
    _refuse_skipped(where, skipped)
    gattrs = P._attrs(group)
    series = pandas_type == "series"
    readers: list = []
    ids: dict[int, int] = {}

    def source_of(reader) -> int:
        if id(reader) not in ids:
            ids[id(reader)] = len(readers)
            readers.append(reader)
        return ids[id(reader)]

    nrows = len(coords[0].reader) if coords else 0
    if series:
        labels = {e.name: P._plain_name(gattrs.get("name")) for e in data}
        index_key = "index"
    else:
        axis0 = P._fixed_array(path, group, "axis0", "utf-8", "strict", 1 << 20)
        labels = _labels([e.name for e in data], list(axis0))
        index_key = "axis1"
    columns = []
    for e in data:
        if e.reader.shape[0] != nrows:
            raise NotHDF5Error(
                f"{where}: column {e.name!r} has {e.reader.shape[0]} rows but the index has {nrows}: the pandas "
                "metadata is damaged; re-copy the file"
            )
        src = source_of(e.reader)
        if isinstance(e.reader, np.ndarray) and e.reader.dtype == object:
            columns.append(Column(labels[e.name], src, None, "plain", np.dtype(object)))
        else:
            columns.append(_column(e, src, labels[e.name]))
    index = tuple(_column(c, source_of(c.reader), c.name) for c in coords)
    categorical = _categorical_index(path, group, index_key)
    if categorical is not None:
        index = (Column("index", source_of(categorical[0]), None, "cat", np.dtype(object),
                        categories=categorical[1]),)  # fmt: skip
    names = tuple(_fixed_index_names(group, index_key, len(coords)))
    chunk, row_bytes = _fixed_layout(readers, nrows)
    source = TableSource(
        path=path, node=group.name, nrows=nrows, readers=tuple(readers), columns=tuple(columns), index=index,
        index_names=names, series=series,
        series_name=P._plain_name(gattrs.get("name")) if series else None,
        chunk_rows=chunk, row_bytes=row_bytes, mtime_ns=_mtime(path),
    )  # fmt: skip
    for c in index:
        check_rows(source, len(readers[c.source]), "the index")
    return source


def _categorical_index(path: str, group, key: str):
    """(codes, categories Index) of a fixed-format CategoricalIndex, else None."""
    import pandas as pd

    if P._text(P._attrs(group).get(f"{key}_variety"), "regular") != "regular":
        return None
    attrs = P._attrs(P._node(group, key))
    if P._text(attrs.get("kind")) != "category" or not P._has(group, f"{key}_categories"):
        return None
    codes = np.asarray(P._reader(P._describe(P._node(group, key)))[...])
    categories = P._fixed_array(path, group, f"{key}_categories", "utf-8", "strict", P.MAX_OBJECTS)
    return codes, pd.Index(categories)


def _fixed_index_names(group, key: str, n: int) -> list:
    gattrs = P._attrs(group)
    if P._text(gattrs.get(f"{key}_variety"), "regular") == "multi":
        return [P._plain_name(P._attrs(P._node(group, f"{key}_level{i}")).get("name")) for i in range(n)]
    return [P._plain_name(P._attrs(P._node(group, key)).get("name"))]


def _fixed_layout(readers: list, nrows: int) -> tuple[int, int]:
    """(rows of one HDF5 chunk of the largest chunked block, bytes of one row of all columns)."""
    chunk, row_bytes = 0, 0
    for r in readers:
        width = int(np.prod(r.shape[1:])) if isinstance(r, np.ndarray) and r.ndim > 1 else 1
        row_bytes += r.dtype.itemsize * width
        info = getattr(getattr(r, "reader", r), "info", None)
        if info is not None and info.chunkshape:
            axis = getattr(r, "axis", 0)
            chunk = max(chunk, int(info.chunkshape[axis]))
    return chunk or max(1, nrows), max(1, row_bytes)


def _mtime(path: str) -> int:
    import os

    return os.stat(path).st_mtime_ns

"""Write dask DataFrames as pandas ``HDFStore`` ``format="table"`` keys, in parallel, atomically.

How, so that pandas reads the result as if it had written it:

1. one pass computes every partition's length and the widest string of each
   text column (pandas sizes string columns once, when it creates the table);
2. pandas itself creates the key in the (temporary copy of the) file, from a
   one-row template: every attribute, the table's record dtype and chunk shape
   are pandas' own;
3. every partition is turned into pandas' records by pandas (an in-memory
   ``HDFStore``, so categoricals, time zones, ``nan_rep`` and values blocks are
   encoded exactly as pandas encodes them), rechunked to whole HDF5 chunks,
   compressed in the dask tasks, and stored in order by one writer
   (``write_direct_chunk``), with a progress bar;
4. per-chunk minima and maxima of the data columns and the index are recorded
   (:mod:`daskh5._table_stats`) for :func:`daskh5.read_table`'s skipping;
5. the file is checked and renamed into place (:func:`~daskh5._safe_tables.atomic_target`).

``append`` continues a key daskh5 or pandas wrote when the new rows have the
same schema (columns, dtypes, data columns; strings no wider than the table's).
"""

from __future__ import annotations

import os
import uuid
import warnings

import numpy as np

from daskh5._safe_tables import _no_unpickling, atomic_target, open_tables, shown
from daskh5._table_stats import STATS
from daskh5._verify import check_node, hdf5_errors
from daskh5.errors import IncompatibleArrayError, NodeExistsError, NodeKindError

__all__ = ["append_frame", "write_frame"]


def _as_ddf(df):
    from daskh5._optional import require_dataframe

    dd = require_dataframe("writing DataFrames (daskh5.to_pytables)")
    import pandas as pd

    if isinstance(df, pd.Series):
        df = df.to_frame()
    if isinstance(df, pd.DataFrame):
        return dd.from_pandas(df, npartitions=max(1, -(-int(df.memory_usage(deep=True).sum()) // (64 << 20))))
    if isinstance(df, dd.Series):
        return df.to_frame()
    if not isinstance(df, dd.DataFrame):
        raise TypeError(
            f"to_pytables(format='table') writes pandas or dask DataFrames, got {type(df).__name__}"
        )
    return df


def _text_columns(meta) -> list:
    import pandas as pd

    return [c for c, t in meta.dtypes.items() if t == np.dtype(object) or isinstance(t, pd.StringDtype)]


def _width(values) -> int:
    import pandas as pd

    s = pd.Series(values, copy=False).dropna()
    if not len(s):
        return 0
    return int(s.astype(str).str.encode("utf-8").str.len().max())


def _profile(part, text: list, index_text: bool) -> tuple:
    """``(rows, {column: widest value in bytes}, widest index value)`` of one partition."""
    widths = {c: _width(part[c]) for c in text}
    taken = {rep for rep in _NAN_REPS for c in text if (part[c] == rep).any()}
    return len(part), widths, _width(part.index) if index_text else 0, taken


_NAN_REPS = ("nan", "_nan_", "__nan__", "<missing>")


class _Records:
    """A partition -> pandas' records for the key (its own in-memory HDFStore), in dask tasks."""

    def __init__(self, data_columns, min_itemsize, nan_rep, dtype: np.dtype, categories: dict, where: str):
        self.data_columns, self.min_itemsize, self.nan_rep = data_columns, min_itemsize, nan_rep
        self.dtype, self.categories, self.where = dtype, categories, where

    def __call__(self, part) -> np.ndarray:
        if not len(part):
            return np.empty(0, dtype=self.dtype)
        return pandas_records(part, self.data_columns, self.min_itemsize, self.nan_rep, self.categories,
                              self.dtype, self.where)  # fmt: skip


def pandas_records(part, data_columns, min_itemsize, nan_rep, categories, dtype, where) -> np.ndarray:
    import pandas as pd

    for col, cats in categories.items():
        part = part.assign(**{col: part[col].cat.set_categories(cats)})
    name = f"daskh5-{uuid.uuid4().hex}.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pd.HDFStore(name, mode="w", driver="H5FD_CORE", driver_core_backing_store=0) as mem:
            mem.append("k", part, format="table", data_columns=data_columns, min_itemsize=min_itemsize,
                       nan_rep=nan_rep, index=False)  # fmt: skip
            rec = mem.get_storer("k").table.read()
    if dtype is not None and rec.dtype != dtype and _fits(rec, dtype):
        return rec.astype(
            dtype
        )  # pandas pads string widths by its own rules: same values, the table's widths
    if dtype is not None and rec.dtype != dtype:
        raise IncompatibleArrayError(
            f"{where}: a partition's records are {rec.dtype}, the table's are {dtype}: the partitions "
            "do not share one schema (dtypes or string widths differ)"
        )
    return rec


def _fits(rec: np.ndarray, dtype: np.dtype) -> bool:
    """Whether ``rec`` differs from ``dtype`` only in string widths, and its strings fit ``dtype``'s."""
    if rec.dtype.names != dtype.names:
        return False
    for name in dtype.names:
        a, b = rec.dtype.fields[name][0], dtype.fields[name][0]
        if a == b:
            continue
        base_a, base_b = (a.subdtype or (a, ()))[0], (b.subdtype or (b, ()))[0]
        if (
            base_a.kind != "S"
            or base_b.kind != "S"
            or (a.subdtype or (a, ()))[1] != (b.subdtype or (b, ()))[1]
        ):
            return False
        lengths = np.char.str_len(rec[name]) if rec[name].size else np.zeros(1, int)
        if int(lengths.max()) > base_b.itemsize:
            return False
    return True


def _stats_fields(dtype: np.dtype, data_columns: list[str]) -> list[str]:
    out = []
    for name in ["index", *data_columns]:
        if name in dtype.names:
            sub = dtype.fields[name][0]
            if sub.subdtype is None and sub.kind in "biufmMS":
                out.append(name)
    return out


def _chunk_min_max(col: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Minimum and maximum of every ``rows`` values of ``col`` (NaN and NaT ignored unless all are)."""
    n = -(-len(col) // rows)
    if col.dtype.kind == "S":
        ends = [np.sort(col[i * rows : (i + 1) * rows])[[0, -1]] for i in range(n)]
        return np.array([e[0] for e in ends], col.dtype), np.array([e[1] for e in ends], col.dtype)
    pad = n * rows - len(col)
    full = np.concatenate([col, np.repeat(col[-1:], pad)]) if pad else col
    full = full.reshape(n, rows)
    if col.dtype.kind in "fmM":
        return np.fmin.reduce(full, axis=1), np.fmax.reduce(full, axis=1)
    return full.min(axis=1), full.max(axis=1)


class _Encode:
    """Compress a block of records into its HDF5 chunks and note each chunk's min/max per field."""

    def __init__(self, encoder, fields: list[str]):
        self.encoder, self.fields = encoder, fields

    def __call__(self, block: np.ndarray, origin: tuple[int, ...]):
        rows = self.encoder.chunkshape[0]
        stats = {}
        for f in self.fields:
            col = block[f]
            lo, hi = _chunk_min_max(col, rows)
            sorted_ = (
                bool(np.all(col[1:] >= col[:-1])) if f == "index" and col.dtype.kind in "iufmM" else False
            )
            stats[f] = (lo, hi, sorted_, col[:1], col[-1:])
        return self.encoder.encode_block(block, origin), stats


def _records_array(ddf, lengths: list[int], fn: _Records, chunk_rows: int, head=None):
    """The dask array of every partition's records (after ``head``), rechunked to whole HDF5 chunks."""
    import dask
    import dask.array as da

    from daskh5.writer import _aligned

    parts = [
        da.from_delayed(dask.delayed(fn)(d), shape=(n,), dtype=fn.dtype)
        for d, n in zip(ddf.to_delayed(), lengths, strict=True)
        if n
    ]
    if head is not None and len(head):
        parts.insert(0, da.from_array(head, chunks=(len(head),)))
    x = da.concatenate(parts) if parts else da.empty((0,), dtype=fn.dtype)
    return _aligned(x, (chunk_rows,))


def _write_records(target: str, node: str, table: str, x, encode: _Encode, offset: int, progress, desc):
    """Store ``x`` from row ``offset`` (chunk-aligned) through the writer's machinery; return chunk stats."""
    import dask

    from daskh5.writer import _block_origins, _direct_chunks, _in_process_scheduler, _ordered_results, _window
    from daskh5.writer import _progress as bar_for

    def guard():
        return hdf5_errors(shown(target), node, target)

    stats: list = []
    if x.size == 0:
        return stats
    origins = _block_origins(x)
    blocks = x.to_delayed()
    tasks = [dask.delayed(encode, pure=True)(blocks[idx], (o[0] + offset,)) for idx, o in origins]
    with _direct_chunks(target, table, guard) as write, bar_for(len(tasks), desc, progress) as bar:

        def store(result, i):
            chunks, block_stats = result
            for coords, data in chunks:
                write(coords, data)
            stats.append((i, block_stats))
            if bar is not None:
                bar.update(1)

        if _in_process_scheduler(x):
            lock = dask.utils.SerializableLock()

            def locked(result, i):
                with lock:
                    store(result, i)

            dask.compute(*[dask.delayed(locked, pure=False)(t, i) for i, t in enumerate(tasks)])
        else:
            for i, result in enumerate(_ordered_results(tasks, _window())):
                store(result, i)
    return [s for _, s in sorted(stats, key=lambda t: t[0])]


def _merge_stats(pieces: list) -> dict:
    out: dict = {}
    for block in pieces:
        for f, (lo, hi, ok, first, last) in block.items():
            entry = out.setdefault(f, {"lo": [], "hi": [], "sorted": True, "prev": None})
            entry["lo"].append(lo)
            entry["hi"].append(hi)
            entry["sorted"] &= ok and (entry["prev"] is None or not len(first) or entry["prev"] <= first[0])
            if len(last):
                entry["prev"] = last[0]
    return out


def _save_stats(target: str, node: str, merged: dict, rows: int, chunk_rows: int, old: dict | None) -> None:
    import h5py

    with hdf5_errors(shown(target), node, target), h5py.File(target, "r+") as f:
        key = f[node]
        if STATS in key:
            del key[STATS]
        g = key.require_group(STATS)
        for field, entry in merged.items():
            lo, hi = np.concatenate(entry["lo"]), np.concatenate(entry["hi"])
            if old is not None:
                if field not in old["arrays"]:
                    continue
                prev = old["arrays"][field]
                lo, hi = np.concatenate([prev[:, 0], lo]), np.concatenate([prev[:, 1], hi])
            g.create_dataset(field, data=np.stack([lo, hi], axis=1))
        sorted_ = merged.get("index", {}).get("sorted", False)
        if old is not None:
            sorted_ = sorted_ and old["index_sorted"] and _continues(old, merged)
        g.attrs["rows"], g.attrs["chunk_rows"], g.attrs["index_sorted"] = rows, chunk_rows, bool(sorted_)


def _continues(old: dict, merged: dict) -> bool:
    prev = old["arrays"].get("index")
    first = merged.get("index", {}).get("lo")
    return prev is not None and bool(first) and len(first[0]) and prev[-1, 1] <= first[0][0]


def _plan(ddf, data_columns, min_itemsize):
    """(lengths, min_itemsize for pandas, categories) from one pass over the text columns."""
    import dask
    import pandas as pd

    meta = ddf._meta
    text = _text_columns(meta)
    index_text = meta.index.dtype == object or isinstance(meta.index.dtype, pd.StringDtype)
    cats = {c: list(t.categories) for c, t in meta.dtypes.items() if isinstance(t, pd.CategoricalDtype)}
    unknown = [c for c in cats if not ddf[c].cat.known]
    if unknown:
        ddf = ddf.categorize(columns=unknown)
        meta = ddf._meta
        cats = {c: list(t.categories) for c, t in meta.dtypes.items() if isinstance(t, pd.CategoricalDtype)}
    source = ddf[text] if text else ddf[list(meta.columns[:1])] if len(meta.columns) else ddf
    profiles = dask.compute(*[dask.delayed(_profile)(p, text, index_text) for p in source.to_delayed()])
    lengths = [p[0] for p in profiles]
    sizes = dict(min_itemsize or {})
    dc = set(data_columns)
    values_width = max([p[1][c] for p in profiles for c in text if c not in dc] or [0])
    for c in text:
        if c in dc:
            sizes[c] = max(sizes.get(c, 0), max(p[1][c] for p in profiles), 3)
    if values_width:
        sizes["values"] = max(sizes.get("values", 0), values_width, 3)
    if index_text:
        sizes["index"] = max(sizes.get("index", 0), max(p[2] for p in profiles), 3)
    taken = set().union(*[p[3] for p in profiles]) if profiles else set()
    nan_rep = next((r for r in _NAN_REPS if r not in taken), None)
    return ddf, lengths, sizes, cats, nan_rep


def _template(ddf, lengths: list[int]):
    """One real row (pandas sizes and encodes the key from it), or the empty meta for an empty frame."""
    first = next((i for i, n in enumerate(lengths) if n), None)
    return ddf._meta if first is None else ddf.partitions[first].head(1)


def write_frame(
    df, path: str, key: str, *, data_columns=None, complib="blosc:lz4", complevel=5, min_itemsize=None,
    nan_rep=None, mode="a", overwrite=False, progress=True,
) -> None:  # fmt: skip
    """:func:`daskh5.to_pytables` of a DataFrame with ``format="table"`` (see its docstring)."""
    import h5py
    import pandas as pd

    ddf = _as_ddf(df)
    meta = ddf._meta
    dc = list(meta.columns) if data_columns is True else list(data_columns or [])
    missing = [c for c in dc if c not in meta.columns]
    if missing:
        raise KeyError(
            f"to_pytables: data_columns {missing} are not columns of the frame ({list(meta.columns)})"
        )
    node = "/" + key.strip("/")
    ddf, lengths, sizes, cats, chosen = _plan(ddf, dc, min_itemsize)
    if nan_rep is None:  # one placeholder for every partition (pandas would pick one per write)
        if chosen is None:
            raise ValueError(
                f"to_pytables: every placeholder {_NAN_REPS} occurs as text in the frame; pass nan_rep="
            )
        nan_rep = chosen
    sizes = {k: max(v, len(nan_rep.encode())) for k, v in sizes.items()}
    total = sum(lengths)
    template = _template(ddf, lengths)
    for c, values in cats.items():
        template = template.assign(**{c: template[c].cat.set_categories(values)})
    with atomic_target(path, mode) as (target, fresh):
        where = f"{shown(target)}:{node}"
        if not fresh:
            with open_tables(target, "a") as f:
                if node in f:
                    if not overwrite:
                        raise NodeExistsError(
                            f"{where} exists; pass overwrite=True to replace it, or use daskh5.append"
                        )
                    f.remove_node(node, recursive=True)
        with hdf5_errors(shown(target), node, target), _no_unpickling(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pd.HDFStore(target, mode="a", complib=complib, complevel=complevel) as store:
                store.append(node, template, format="table", data_columns=dc, min_itemsize=sizes, nan_rep=nan_rep,
                          index=False, expectedrows=max(total, 1))  # fmt: skip
        table = f"{node}/table"
        with h5py.File(target, "r") as f:
            ds = f[table]
            dtype, chunk_rows = ds.dtype, int(ds.chunks[0])
            filters = _filters_of(ds)
        _fill(target, node, table, ddf, lengths, dc, sizes, nan_rep, cats, dtype, chunk_rows, filters, 0, progress,
              where, total, None)  # fmt: skip
        check_node(target, shown(target), table, (total,))


def _filters_of(ds):
    import tables

    dcpl = ds.id.get_create_plist()
    ids = {dcpl.get_filter(i)[0]: dcpl.get_filter(i)[2] for i in range(dcpl.get_nfilters())}
    if 32001 in ids:
        cd = ids[32001]
        names = {0: "blosclz", 1: "lz4", 2: "lz4hc", 3: "snappy", 4: "zlib", 5: "zstd"}
        lib = "blosc:" + names.get(cd[6], "blosclz") if len(cd) > 6 else "blosc"
        return tables.Filters(complevel=cd[4], complib=lib, shuffle=cd[5] == 1, bitshuffle=cd[5] == 2)
    if 1 in ids:
        return tables.Filters(complevel=ids[1][0] if ids[1] else 1, complib="zlib", shuffle=2 in ids)
    return None if ids else tables.Filters(0)


def _fill(target, node, table, ddf, lengths, dc, sizes, nan_rep, cats, dtype, chunk_rows, filters, offset,
          progress, where, total, old, head=None) -> None:  # fmt: skip
    import h5py

    from daskh5._encode import encoder_for

    encoder = encoder_for(filters, dtype, (chunk_rows,))
    if encoder is None:
        raise NodeKindError(
            f"{where}: daskh5 cannot compress this table's filters itself; use complib='blosc:lz4'"
        )
    with hdf5_errors(shown(target), node, target), h5py.File(target, "r+") as f:
        f[table].resize((total,))
        f[table].attrs["NROWS"] = np.int64(total)
    fn = _Records(dc, sizes, nan_rep, dtype, cats, where)
    x = _records_array(ddf, lengths, fn, chunk_rows, head)
    fields = _stats_fields(dtype, dc)
    pieces = _write_records(
        target, node, table, x, _Encode(encoder, fields), offset, progress, f"writing {node}"
    )
    _save_stats(target, node, _merge_stats(pieces), total, chunk_rows, old)


def append_frame(df, path: str, key: str, *, progress=True) -> None:
    """:func:`daskh5.append` of a DataFrame to a ``format="table"`` key (see its docstring)."""
    import h5py

    from daskh5._table_source import describe_source
    from daskh5._table_stats import load_stats

    ddf = _as_ddf(df)
    node = "/" + key.strip("/")
    existing = describe_source(os.path.abspath(path), node)
    where = existing.where
    if existing.extra.get("data_columns") is None:
        raise NodeKindError(f"{where} is not a pandas format='table' key; daskh5.append continues those")
    names = [str(c) for c in ddf._meta.columns]
    if names != existing.names():
        raise IncompatibleArrayError(
            f"{where}: the table has columns {existing.names()}, the new rows {names}"
        )
    ref = existing.frame(0, 0)
    for c in ddf._meta.columns:
        a, b = ddf._meta[c].dtype, ref[c].dtype
        if str(a) != str(b) and not (_text_columns(ddf._meta[[c]]) and _text_columns(ref[[c]])):
            raise IncompatibleArrayError(f"{where}: column {c!r} is {b} in the table, {a} in the new rows")
    with h5py.File(existing.path, "r") as f:
        ds = f[f"{node}/table"]
        dtype, chunk_rows, start = ds.dtype, int(ds.chunks[0]), int(ds.shape[0])
        filters = _filters_of(ds)
        old = load_stats(f[node], start, chunk_rows)
    base = start - start % chunk_rows  # the partly filled last chunk is written again, with the new rows
    head = (
        existing.readers[existing.table_reader][(slice(base, start),)].astype(dtype) if start > base else None
    )
    if old is not None:
        keep = base // chunk_rows
        old = {**old, "arrays": {k: v[:keep] for k, v in old["arrays"].items()}}
    gattrs = _attrs_of(existing)
    nan_rep = gattrs.get("nan_rep")
    dc = existing.extra["data_columns"]
    bases = {n: (dtype.fields[n][0].subdtype or (dtype.fields[n][0],))[0] for n in dtype.names}
    widths = {n: b.itemsize for n, b in bases.items() if b.kind == "S"}
    sizes = {c: widths[c] for c in dc if c in widths}
    blocks = [n for n in widths if n.startswith("values_block_")]
    if blocks:
        sizes["values"] = max(widths[b] for b in blocks)
    if "index" in widths:
        sizes["index"] = widths["index"]
    cats = {c.label: list(c.categories) for c in existing.columns if c.kind == "cat"}
    ddf, lengths, _plan_sizes, _, _ = _plan(ddf, dc, None)
    if nan_rep is None:
        raise IncompatibleArrayError(
            f"{where}: pandas wrote this key with a placeholder per column for missing strings; daskh5.append "
            "continues keys written with one nan_rep (as daskh5.to_pytables writes them): use HDFStore.append"
        )
    too_wide = {k: v for k, v in _plan_sizes.items() if v > sizes.get(k, v)}
    if too_wide:
        raise IncompatibleArrayError(
            f"{where}: strings wider than the table holds: {too_wide} bytes (table: {sizes})"
        )
    for c, values in cats.items():
        new = ddf._meta[c].cat.categories
        if list(new) != values:
            raise IncompatibleArrayError(
                f"{where}: column {c!r} has categories {list(new)}, the table {values}"
            )
    total = start + sum(lengths)
    with atomic_target(existing.path, "a") as (target, _fresh):
        where = f"{shown(target)}:{node}"
        _fill(target, node, f"{node}/table", ddf, lengths, dc, sizes, nan_rep, cats, dtype, chunk_rows, filters,
              base, progress, where, total, old, head)  # fmt: skip
        check_node(target, shown(target), f"{node}/table", (total,), region=((base, total),))


def _attrs_of(source) -> dict:
    """pandas' ``nan_rep`` of a key (read inertly), for encoding appended rows alike."""
    from daskh5 import _pandas as P
    from daskh5._nodes import open_h5
    from daskh5._pandas_pickles import inert_loads

    with open_h5(source.path) as f:
        attrs = P._attrs(f[source.node])
        value = inert_loads(attrs.get("nan_rep")) if "nan_rep" in attrs else None
        per_column = bool(attrs.get("data_col_nan_rep", False))
    text = P._text(value) if isinstance(value, (str, bytes, np.bytes_)) else None
    return {"nan_rep": text if text and not per_column else None}


def is_frame(x) -> bool:
    """Whether ``x`` is a pandas or dask DataFrame/Series (what ``format="table"`` writes)."""
    mod = type(x).__module__
    return mod.startswith(("pandas.", "dask.dataframe")) and type(x).__name__ in ("DataFrame", "Series")


def frame_writer(df, path, key, format, data_columns, filters, mode, overwrite, progress, compute):
    """``to_pytables`` of a DataFrame: checks its arguments, then :func:`write_frame` (now or delayed)."""
    from daskh5._inputs import resolve

    if format not in (None, "table"):
        raise ValueError(f"to_pytables: a DataFrame is written with format='table', got format={format!r}")
    if key is None:
        raise TypeError("to_pytables(df, path, key): give the pandas key, e.g. 'df'")
    path, key, _ = resolve(path, "/" + str(key).strip("/"))
    complib, complevel = "blosc:lz4", 5
    if filters is not None:
        complib, complevel = filters.complib or "zlib", filters.complevel
    kwargs = {"data_columns": data_columns, "complib": complib, "complevel": complevel, "mode": mode,
              "overwrite": overwrite, "progress": progress}  # fmt: skip
    if not compute:
        import dask

        return dask.delayed(write_frame, pure=False)(df, os.path.abspath(os.fspath(path)), key, **kwargs)
    return write_frame(df, os.path.abspath(os.fspath(path)), key, **kwargs)

"""What a PyTables Table or a pandas ``HDFStore`` key is as frame columns, and reading rows of it.

:func:`describe_source` turns a node into a :class:`TableSource`: plain,
picklable data (readers holding paths, never handles) that builds the pandas
frame of any contiguous row range (:meth:`TableSource.frame`) with the values
and dtypes ``pd.read_hdf`` gives (or, for a PyTables Table, ``Table.read()``
as a DataFrame: nested columns named ``parent.child``, enums as categoricals,
Time32/Time64 as datetimes, fixed-shape columns split into ``name[i]``).

pandas' metadata is found by :mod:`daskh5._pandas` (read with the restricted
unpickler, nothing in the file executes); this module only converts values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from daskh5._codecs import SAFE_FILTERS
from daskh5._h5types import compound_with_times, to_datetimes
from daskh5._nodes import describe_array, lookup, node_kind, node_name, open_h5
from daskh5._reader import NodeReader
from daskh5.errors import (
    ChunkDecodeError,
    NodeKindError,
    NotHDF5Error,
    UnsafePickleError,
    UnsupportedDtypeError,
)

__all__ = ["Column", "TableSource", "describe_source"]

_KINDS_ELSEWHERE = {
    "Array": "daskh5.from_pytables(path, node)",
    "CArray": "daskh5.from_pytables(path, node)",
    "EArray": "daskh5.from_pytables(path, node)",
    "VLArray": "daskh5.read_ragged(path, node)",
}


def string_dtype():
    """pandas' dtype for string columns here: its ``str`` dtype where it infers it (pandas 3), else object."""
    import pandas as pd

    if int(pd.__version__.split(".")[0]) >= 3:
        return pd.StringDtype(na_value=np.nan)
    try:
        infer = bool(pd.get_option("future.infer_string"))
    except (KeyError, pd.errors.OptionError):  # pragma: no cover - pandas < 2.1
        infer = False
    return pd.StringDtype(na_value=np.nan) if infer else np.dtype(object)


def arrow_strings(raw: np.ndarray, decoder):
    """Fixed-width UTF-8 bytes -> pandas' pyarrow-backed ``str`` array, without Python objects (or None).

    Used where pandas' ``str`` dtype is pyarrow-backed; trailing NULs are padding (as numpy reads
    them), the decoder's ``nan_rep`` becomes missing. Bytes that are not valid UTF-8 give None (the
    caller then decodes with the decoder's ``errors`` rule).
    """
    import pandas as pd

    dtype = string_dtype()
    if getattr(dtype, "storage", None) != "pyarrow" or decoder.encoding.lower().replace("-", "") != "utf8":
        return None
    import pyarrow as pa
    import pyarrow.compute as pc

    raw = np.ascontiguousarray(raw)
    if raw.dtype.kind != "S" or raw.ndim != 1 or raw.dtype.itemsize == 0:
        return None
    n, w = len(raw), raw.dtype.itemsize
    u = raw.view(np.uint8).reshape(n, w)
    lengths = w - np.argmax(u[:, ::-1] != 0, axis=1)
    lengths[~u.any(axis=1)] = 0
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = u[np.arange(w) < lengths[:, None]]
    arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        return None
    arr = arr.cast(pa.string())
    if decoder.nan_rep is not None:
        arr = pc.if_else(pc.equal(arr, decoder.nan_rep), pa.scalar(None, pa.string()), arr)
    return pd.array(arr, dtype=dtype)


# -- value conversions (picklable: they travel in dask tasks) ----------------------------------------
@dataclass(frozen=True)
class Column:
    """One frame column: where its values are and how they become pandas values.

    ``source`` indexes :attr:`TableSource.readers`; ``field`` is the path of the
    field in the records it gives (``None`` for a plain column), a trailing int
    picks one column of a sub-array field.  ``kind``: ``plain``, ``view`` (ints
    viewed as ``dtype``: pandas' datetimes and timedeltas), ``time`` (PyTables
    Time32/Time64), ``str`` (``decode`` makes objects of str), ``bytes``
    (PyTables strings, left as bytes objects as ``pd.DataFrame(table.read())``
    gives them), ``cat`` (codes of ``categories``), ``object`` (an in-memory
    object array).
    """

    label: object
    source: int
    field: tuple | None
    kind: str
    dtype: np.dtype
    decode: object = None
    categories: object = None  # a pandas Index, for kind "cat"
    ordered: bool = False
    tz: str | None = None

    @property
    def name(self) -> str:
        return str(self.label)

    def token(self) -> tuple:
        """Plain data identifying this column (for deterministic dask names)."""
        decode = (
            None
            if self.decode is None
            else (
                type(self.decode).__name__,
                sorted(
                    (k, v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(self.decode).items()
                ),
            )
        )
        cats = None if self.categories is None else [str(self.categories.dtype), *map(repr, self.categories)]
        return (repr(self.label), self.source, self.field, self.kind, str(self.dtype), repr(decode), cats,
                self.ordered, self.tz)  # fmt: skip

    def raw(self, block) -> np.ndarray:
        out = block
        for part in self.field or ():
            out = out[part] if isinstance(part, str) else out[:, part]
        return np.asarray(out)

    def values(self, block, where: str):
        """The pandas values (array, Categorical or DatetimeArray) of this column in ``block``."""
        return self.convert(self.raw(block), where)

    def convert(self, raw: np.ndarray, where: str):
        """Stored values of this column (already picked out of the records) as pandas values."""
        import pandas as pd

        if self.kind == "view":
            values = raw.astype("<i8", copy=False).view(self.dtype) if raw.dtype.kind in "iu" else raw
            values = values.astype(self.dtype, copy=False)
        elif self.kind == "time":
            values = to_datetimes(raw, self.dtype)
        elif self.kind == "str":
            values = arrow_strings(raw, self.decode)
            if values is None:
                values = pd.array(self.decode(raw), dtype=string_dtype())
        elif self.kind == "bytes":
            values = raw.astype(object)
        elif self.kind in ("cat", "enum"):
            codes = self.decode(raw) if self.kind == "enum" else raw.astype(np.int64, copy=False)
            bad = (codes < -1) | (codes >= len(self.categories))
            if bad.any():
                raise NotHDF5Error(
                    f"{where}: column {self.name!r} has category code {int(codes[bad][0])} but only "
                    f"{len(self.categories)} categories are stored: the pandas metadata is damaged; re-copy the file"
                )
            values = pd.Categorical.from_codes(codes, categories=self.categories, ordered=self.ordered)
        else:
            values = raw.astype(self.dtype, copy=False) if raw.dtype != self.dtype else raw
        if self.tz is not None:
            values = pd.DatetimeIndex(values).tz_localize("UTC").tz_convert(self.tz).array
        return values


@dataclass(frozen=True)
class TableSource:
    """A Table or pandas key as plain data: readers, columns, index and how to partition it."""

    path: str
    node: str
    nrows: int
    readers: tuple  # NodeReader / ColumnOf / in-memory arrays, indexed by Column.source
    columns: tuple[Column, ...]
    index: tuple[Column, ...] = ()  # empty: a RangeIndex of row numbers
    index_names: tuple = (None,)
    series: bool = False  # a pandas Series key
    series_name: object = None
    chunk_rows: int = 1  # rows of one HDF5 chunk of the main reader (partitions are multiples)
    row_bytes: int = 8
    table_reader: int | None = None  # the reader that is the pandas table (for statistics)
    mtime_ns: int = 0
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __dask_tokenize__(self):
        from dask.base import tokenize

        return ("daskh5.TableSource", self.path, self.node, self.mtime_ns, self.nrows,
                tokenize(self.readers), [c.token() for c in self.columns], [c.token() for c in self.index])  # fmt: skip

    @property
    def where(self) -> str:
        return f"{self.path}:{self.node}"

    def column(self, name: str) -> Column | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None

    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def index_column(self, name: str) -> Column | None:
        """The index (or a level of it) that ``where=`` calls ``name`` (``index`` for the index)."""
        for i, c in enumerate(self.index):
            if name == "index" and len(self.index) == 1:
                return c
            if self.index_names[i] is not None and str(self.index_names[i]) == name:
                return c
        return None

    def read_blocks(self, start: int, stop: int, columns) -> dict:
        """``{reader id: values of rows start..stop}`` of the readers ``columns`` need."""
        out = {}
        for c in columns:
            if c.source not in out:
                r = self.readers[c.source]
                try:
                    out[c.source] = r[start:stop] if isinstance(r, np.ndarray) else r[(slice(start, stop),)]
                except ChunkDecodeError as exc:
                    rows = self._chunk_rows(exc, start, stop)
                    raise ChunkDecodeError(
                        f"{self.where}: rows {rows[0]:,}..{rows[1]:,} (column {c.name!r}) cannot be read: {exc}"
                    ) from exc
        return out

    def _chunk_rows(self, exc: Exception, start: int, stop: int) -> tuple[int, int]:
        """The rows of the damaged chunk the reader names (``starting at element (i,``), else start..stop."""
        import re

        found = re.search(r"starting at element \((\d+)", str(exc))
        if found is None or self.chunk_rows <= 1:
            return start, stop
        first = int(found.group(1))
        return first, min(first + self.chunk_rows, self.nrows)

    def frame(self, start: int, stop: int, names=None, extra_names=(), condition=None):
        """The pandas frame of rows ``start..stop``: ``names`` (all if None) plus ``extra_names``."""
        import pandas as pd

        wanted = list(self.names() if names is None else names)
        cols = [self.column(n) for n in wanted + [n for n in extra_names if n not in wanted]]
        cols = [c for c in cols if c is not None]
        blocks = self.read_blocks(start, stop, cols + list(self.index))
        rows = None
        if condition is not None:  # the condition's columns first: the others only for matching rows
            first = [c for c in cols if c.name in condition.columns]
            probe = pd.DataFrame({c.label: c.values(blocks[c.source], self.where) for c in first},
                                 index=self._index(blocks, start, stop), copy=False)  # fmt: skip
            rows = np.flatnonzero(condition.mask(probe))
            blocks = {k: v[rows] for k, v in blocks.items()}
        data = {c.label: c.values(blocks[c.source], self.where) for c in cols}
        index = self._index(blocks, start, stop) if rows is None else self._index(blocks, start, stop, rows)
        frame = pd.DataFrame(data, index=index, copy=False)
        if len(frame.columns) != len(data):  # duplicate labels: rebuild positionally
            frame = pd.concat([pd.Series(v, index=index, name=k) for k, v in data.items()], axis=1)
        return frame

    def _index(self, blocks: dict, start: int, stop: int, rows=None):
        import pandas as pd

        if not self.index:
            index = pd.RangeIndex(start, stop)
            return index if rows is None else index[rows]
        levels = [c.values(blocks[c.source], self.where) for c in self.index]
        if len(levels) == 1:
            return pd.Index(levels[0], name=self.index_names[0], copy=False)
        return pd.MultiIndex.from_arrays(levels, names=list(self.index_names))


# -- describing a node -----------------------------------------------------------------------------
def describe_source(
    path: str, key: str, *, allow_external: bool = False, allowed: frozenset = SAFE_FILTERS
) -> TableSource:
    """The :class:`TableSource` of a PyTables Table or pandas key ``key`` of ``path``."""
    import h5py

    from daskh5._pandas import _attrs, _text

    with open_h5(path) as f:
        obj = lookup(f, key, allow_external=allow_external)
        name = node_name(obj.name)
        where = f"{f.filename}:{name}"
        kind = node_kind(obj)
        if isinstance(obj, h5py.Group):
            pandas_type = _text(_attrs(obj).get("pandas_type", b""))
            if pandas_type:
                from daskh5._table_pandas import pandas_source

                return pandas_source(f.filename, obj, pandas_type, allow_external, allowed)
            raise NodeKindError(
                f"{where} is a group, not a table; pass a Table inside it or a pandas key "
                "(daskh5 info lists them)"
            )
        if kind == "Table" or (kind == "Dataset" and obj.dtype.names is not None):
            return pytables_source(f.filename, obj, allow_external, allowed)
        use = _KINDS_ELSEWHERE.get(kind, "daskh5.from_pytables(path, node) for arrays")
        raise NodeKindError(f"{where} is a {kind}, not a Table; read it with {use}")


def _flat_fields(dtype: np.dtype, prefix=()):
    for name in dtype.names:
        sub = dtype.fields[name][0]
        base = sub.subdtype[0] if sub.subdtype else sub
        if base.fields is not None:
            if sub.subdtype:
                yield (*prefix, name), sub, True  # an array of records: refused
            else:
                yield from _flat_fields(base, (*prefix, name))
        else:
            yield (*prefix, name), sub, False


def _enum_categories(ds, field: tuple):
    """(categories Index, value -> code lookup) of an enum field of h5py dataset ``ds``, or None."""
    import h5py

    try:
        dtype = ds.dtype
    except TypeError:  # h5py has no numpy type for HDF5 time members: look the member up instead
        return _member_enum(ds.id.get_type(), field)
    for part in field:
        dtype = dtype.fields[part][0]
    mapping = h5py.check_enum_dtype(dtype.subdtype[0] if dtype.subdtype else dtype)
    if not mapping:
        return None
    items = sorted(mapping.items(), key=lambda kv: kv[1])
    return [k for k, _ in items], np.array([v for _, v in items])


def _member_enum(tid, field: tuple):
    import h5py

    for part in field:
        names = [tid.get_member_name(i).decode("utf-8", "replace") for i in range(tid.get_nmembers())]
        tid = tid.get_member_type(names.index(part))
    if tid.get_class() == h5py.h5t.ARRAY:
        tid = tid.get_super()
    if tid.get_class() != h5py.h5t.ENUM:
        return None
    items = sorted(
        (
            (tid.get_member_name(i).decode("utf-8", "replace"), int(tid.get_member_value(i)))
            for i in range(tid.get_nmembers())
        ),
        key=lambda kv: kv[1],
    )
    return [k for k, _ in items], np.array([v for _, v in items])


class EnumCodes:
    """Enum values -> positions in the sorted enum values (the categorical's codes), -1 if unknown."""

    def __init__(self, values: np.ndarray):
        self.values = np.asarray(values)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.values, raw)
        pos = np.clip(pos, 0, max(len(self.values) - 1, 0))
        ok = self.values[pos] == raw if len(self.values) else np.zeros(raw.shape, bool)
        return np.where(ok, pos, -1)


def pytables_source(path: str, ds, allow_external: bool, allowed) -> TableSource:
    """A plain PyTables Table (or compound dataset): one column per leaf field."""
    import pandas as pd

    name = node_name(ds.name)
    info = describe_array(path, name, allow_table=True, f=ds.file, allow_external=allow_external)
    reader = NodeReader(info, f=ds.file, allowed=allowed)
    mixed = compound_with_times(ds.id.get_type())
    times = mixed[1] if mixed is not None else {}
    columns = []
    for fpath, sub, nested_array in _flat_fields(info.dtype):
        label = ".".join(fpath)
        if nested_array:
            raise UnsupportedDtypeError(
                f"{path}:{name}: column {label!r} is an array of nested records, which no frame column "
                "can hold; read the table with tables' read() or pass columns= without it"
            )
        base, shape = sub.subdtype if sub.subdtype else (sub, ())
        if len(shape) > 1 or (shape and int(np.prod(shape)) > 1024):
            raise UnsupportedDtypeError(
                f"{path}:{name}: column {label!r} holds {shape}-shaped cells; read_table splits only "
                "1-d cells (up to 1024 values) into columns; read it with daskh5.from_pytables or pass "
                "columns= without it"
            )
        parts = [(label, fpath)] if not shape else [(f"{label}[{j}]", (*fpath, j)) for j in range(shape[0])]
        enum = _enum_categories(ds, fpath) if base.kind in "iu" and fpath not in times else None
        for col_label, col_field in parts:
            if fpath in times:
                columns.append(Column(col_label, 0, col_field, "time", times[fpath]))
            elif enum is not None:
                codes = EnumCodes(enum[1])
                columns.append(
                    Column(col_label, 0, col_field, "enum", np.dtype(object), codes, pd.Index(enum[0]))
                )
            elif base.kind == "S":
                columns.append(Column(col_label, 0, col_field, "bytes", np.dtype(object)))
            elif base.kind in "biufcmM":
                columns.append(Column(col_label, 0, col_field, "plain", base))
            else:
                raise UnsupportedDtypeError(
                    f"{path}:{name}: column {label!r} has dtype {base}, which no reader turns into a "
                    "frame column; pass columns= without it"
                )
    return TableSource(
        path=info.path,
        node=name,
        nrows=int(info.shape[0]) if info.shape else 0,
        readers=(reader,),
        columns=tuple(columns),
        chunk_rows=int(info.chunkshape[0]) if info.chunkshape else max(1, int(info.shape[0] or 1)),
        row_bytes=max(1, info.dtype.itemsize),
        table_reader=0,
        mtime_ns=info.mtime_ns,
    )


def check_rows(source: TableSource, length: int, what: str) -> None:
    """Refuse pandas metadata whose ``what`` (an index, a block) has more or fewer rows than the table."""
    if length != source.nrows:
        raise UnsafePickleError(
            f"{source.where}: {what} has {length} rows but the table has {source.nrows}: the pandas "
            "metadata is damaged; re-copy the file"
        )

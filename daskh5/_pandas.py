"""pandas ``HDFStore`` keys (``DataFrame.to_hdf``/``Series.to_hdf``) as xarray variables.

What a key gives, in both of pandas' formats (``format="table"`` and the default
``format="fixed"``): one variable per column under its real label, the index as
the dimension coordinate (named after the index, else ``index``), and values as
``pd.read_hdf`` gives them, with these representations where numpy has no
pandas dtype:

- strings: object arrays of ``str``; pandas' missing-value placeholder (the
  ``nan_rep`` it stored) becomes ``NaN``, as ``pd.read_hdf`` gives it;
- categoricals: the category values (``Categorical.astype(object)``: object
  arrays, ``NaN`` where the code is -1; float and datetime categories keep their
  dtype), the categories in ``encoding["pandas_categories"]``;
- time-zone aware columns: UTC values (naive ``datetime64``) with the zone name
  in ``attrs["pandas_timezone"]``; a time-zone aware index is an aware pandas
  index (the backend rebuilds it from ``encoding["pandas_timezone"]``);
- a MultiIndex: one coordinate per level, made an xarray MultiIndex by the
  backend (levels are marked by ``encoding["pandas_level"]``).

Nothing is unpickled with :mod:`pickle`'s defaults (:mod:`daskh5._pandas_pickles`):
pandas' metadata pickles are read with :func:`~daskh5._pandas_pickles.inert_loads`
(plain builtins, anything else an inert stand-in), and the object blocks of
``format="fixed"`` (pickled numpy object arrays) with
:func:`~daskh5._pandas_pickles.load_object_array`, which builds only a numpy object
array of ``str``/``bytes``/``int``/``float``/``bool``/``None``; a block whose pickle
asks for anything else is skipped with a warning naming it.
"""

from __future__ import annotations

import contextvars
import warnings

import numpy as np

from daskh5._attrs import small_attr
from daskh5._codecs import SAFE_FILTERS
from daskh5._containment import follow
from daskh5._nodes import describe_array
from daskh5._pandas_pickles import MAX_OBJECTS, inert_loads, load_object_array
from daskh5._reader import NodeReader, check_dataset_filters
from daskh5._safe_tables import Opaque
from daskh5.errors import (
    Daskh5Error,
    ExternalDataError,
    NodeKindError,
    NodeNotFound,
    UnsafePickleError,
    UnsupportedFilterError,
)

_allow_external: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "daskh5_pandas_external", default=False
)
_allowed: contextvars.ContextVar[frozenset] = contextvars.ContextVar(
    "daskh5_pandas_filters", default=SAFE_FILTERS
)


def _reader(info, f=None) -> NodeReader:
    """A :class:`NodeReader` that decodes only the filters the caller allowed."""
    return NodeReader(info, f=f, allowed=_allowed.get())


class _Attrs:
    """An h5py object's attributes, each read only if it is at most :data:`_ATTR_LIMIT` bytes.

    pandas' metadata attributes are small; one that claims more (a crafted 2 GiB
    ``info``) reads as missing instead of being loaded.
    """

    def __init__(self, obj):
        self._obj = obj

    def __contains__(self, name) -> bool:
        return name in self._obj.attrs

    def get(self, name, default=None):
        return small_attr(self._obj, name, default, _ATTR_LIMIT)

    def __getitem__(self, name):
        missing = object()
        value = self.get(name, missing)
        if value is missing:
            raise KeyError(name)
        return value


_ATTR_LIMIT = 1 << 20


def _attrs(obj) -> _Attrs:
    return _Attrs(obj)


def _node(group, name: str):
    """``group[name]`` checked link by link, never leaving the file unless the caller opted in."""
    return follow(group.file, f"{group.name.rstrip('/')}/{name}", allow_external=_allow_external.get())


def _has(group, name: str) -> bool:
    """``name in group`` without opening a file an external link names (that raises unless opted in)."""
    try:
        _node(group, name)
    except NodeNotFound:
        return False
    return True


def _describe(ds, **kwargs):
    """:func:`describe_array` of an h5py dataset in the file it is in (an opted-in link's target too)."""
    return describe_array(
        ds.file.filename, ds.name, f=ds.file, allow_external=_allow_external.get(), **kwargs
    )


__all__ = ["describe_key", "is_bookkeeping", "pandas_entries", "tz_name"]

_TABLE_TYPES = ("frame_table", "series_table")
_FIXED_TYPES = ("frame", "series")
MAX_CATEGORIES = 1 << 24
_UNSUPPORTED = ("period",)  # pandas dtypes numpy cannot hold: left out with a warning, never given as ints


# -- small helpers -------------------------------------------------------------------------------


def _text(v, default: str = "") -> str:
    if v is None:
        return default
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8", "replace")
    if type(v).__name__ == "Empty":
        return default
    return str(v)


def _plain_name(value):
    """An index/series name pandas stored (a plain string, or ``N.``: None)."""
    value = inert_loads(value)
    if isinstance(value, (bytes, np.bytes_)):
        value = _text(value)
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


def tz_name(tz) -> str | None:
    """The name of a time zone pandas stored (a string, or a pickled zone object read inertly).

    >>> tz_name("Europe/Paris"), tz_name(None)
    ('Europe/Paris', None)
    """
    tz = inert_loads(tz)
    if tz is None or type(tz).__name__ == "Empty":
        return None
    if isinstance(tz, (bytes, np.bytes_, str)):
        return _text(tz) or None
    if isinstance(tz, Opaque):
        args = [a for a in getattr(tz, "args", ()) if isinstance(a, str)]
        if args:  # zoneinfo.ZoneInfo._unpickle("Europe/Paris", 1), pytz._p("Europe/Paris", ...)
            return args[0]
        name = tz._qualname
        if name.endswith(("_UTC", ".utc", ".UTC")):
            return "UTC"
        inner = [a for a in getattr(tz, "args", ()) if isinstance(a, Opaque)]
        if name == "datetime.timezone" and inner:  # timezone(timedelta(days, seconds, us))
            parts = [a for a in getattr(inner[0], "args", ()) if isinstance(a, int)]
            seconds = parts[0] * 86400 + parts[1] if len(parts) >= 2 else 0
            if seconds == 0:
                return "UTC"
            sign, seconds = ("+" if seconds > 0 else "-"), abs(seconds)
            return f"{sign}{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"
    return None


def _time_dtype(kind: str) -> np.dtype | None:
    """``datetime64[us]``/``timedelta64`` (pandas' note of a column's unit) as a numpy dtype."""
    for prefix in ("datetime64", "timedelta64"):
        if kind.startswith(prefix):
            try:
                return np.dtype(kind if "[" in kind else f"{prefix}[ns]")
            except TypeError:
                return None
    return None


# -- decoders applied to values after they are read (picklable: they travel in dask tasks) --------


class StringDecoder:
    """Fixed-width bytes -> object array of ``str``, pandas' ``nan_rep`` placeholder -> NaN."""

    def __init__(self, encoding: str = "utf-8", errors: str = "strict", nan_rep: str | None = None):
        self.encoding, self.errors, self.nan_rep = encoding, errors, nan_rep

    def __call__(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        if values.dtype.kind != "S":
            values = values.astype("S")
        strings = getattr(np, "strings", np.char)  # numpy 2's vectorized string functions, else np.char
        out = strings.decode(values, self.encoding, self.errors).astype(object)
        if self.nan_rep is not None:  # compared as stored: fixed-width bytes drop trailing NULs alike
            out[values == self.nan_rep.encode(self.encoding, self.errors)] = np.nan
        return out


class CategoryDecoder:
    """Category codes -> the category values (-1, pandas' missing code, -> the dtype's missing value)."""

    def __init__(self, categories: np.ndarray, dtype: np.dtype):
        self.categories, self.dtype = categories, np.dtype(dtype)

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes).astype(np.intp)
        cats = self.categories.astype(self.dtype)
        bad = (codes < 0) | (codes >= len(cats))
        out = np.empty(codes.shape, dtype=self.dtype)
        if len(cats):
            out[...] = cats[np.where(bad, 0, codes)]
        if bad.any():
            out[bad] = np.datetime64("NaT") if self.dtype.kind == "M" else (
                np.timedelta64("NaT") if self.dtype.kind == "m" else np.nan
            )  # fmt: skip
        return out


def category_dtype(categories: np.ndarray) -> np.dtype:
    """What a categorical column becomes: float and datetime categories keep their dtype, else object."""
    return categories.dtype if categories.dtype.kind in "fmM" else np.dtype(object)


class ColumnOf:
    """Column ``j`` of a 2-D node whose rows run along ``axis`` (pandas' fixed-format blocks)."""

    def __init__(self, reader, j: int, nrows: int, axis: int = 0):
        self.reader, self.j, self.axis = reader, j, axis
        self.shape, self.dtype = (nrows,), reader.dtype

    def __getitem__(self, key) -> np.ndarray:
        rows = (key if isinstance(key, tuple) else (key,))[0]
        return np.asarray(self.reader[(rows, self.j) if self.axis == 0 else (self.j, rows)])

    def __dask_tokenize__(self):
        from dask.base import tokenize

        return ("daskh5.ColumnOf", tokenize(self.reader), self.j, self.axis)


def _read_object_node(ds, limit: int) -> np.ndarray:
    """The object array pandas pickled into a one-row VLArray of ObjectAtom (fixed format)."""
    where = f"{ds.file.filename}:{ds.name}"
    if ds.shape != (1,):
        raise UnsafePickleError(
            f"{where}: a pandas object block is one pickled row, this has shape {ds.shape}"
        )
    check_dataset_filters(ds, ds.file.filename, ds.name, _allowed.get())  # h5py decodes it
    try:
        raw = np.asarray(ds[0], dtype=np.uint8).tobytes()
    except Exception as exc:
        raise UnsafePickleError(f"{where}: could not read the pickled object block: {exc}") from None
    try:
        return load_object_array(raw, limit)
    except Exception as exc:
        raise UnsafePickleError(
            f"{where}: refused the pickled object block ({exc}); daskh5 rebuilds only numpy arrays of "
            "str/bytes/int/float/None. Read this key with pandas only if you trust the file"
        ) from None


# -- format="table" --------------------------------------------------------------------------------


def _meta_nan_rep(gattrs, tattrs, column: str) -> str | None:
    """The placeholder pandas wrote for a missing string in ``column`` (its rules, GH#9604 included)."""
    levels = inert_loads(gattrs.get("levels")) if "levels" in gattrs else None
    levels = levels if isinstance(levels, list) else []
    per_column = bool(gattrs.get("data_col_nan_rep", False)) or (
        column in levels and bool(gattrs.get("mi_level_nan_rep", False))
    )
    if per_column:
        return _text(tattrs[f"{column}_nan_rep"]) if f"{column}_nan_rep" in tattrs else None
    nan_rep = inert_loads(gattrs.get("nan_rep")) if "nan_rep" in gattrs else None
    return _text(nan_rep) if isinstance(nan_rep, (str, bytes, np.bytes_)) else "nan"


def _index_nan_rep(tattrs, name: str) -> str | None:
    return (_text(tattrs[f"{name}_nan_rep"]) or None) if f"{name}_nan_rep" in tattrs else "nan"


def _categories(path: str, group, column: str) -> np.ndarray:
    """The categories pandas stored for ``column`` (a series table under ``meta/<column>/meta``).

    None stored (an all-missing categorical): no categories, as pandas reads it.
    """
    where = f"meta/{column}/meta"
    if not _has(group, where):
        return np.array([], dtype=np.float64)
    out = _table_key(path, _node(group, where), decode_pickles=False, skipped=[])
    values = [e for e in out[0] if e.name != "index"]
    if len(values) != 1 or values[0].shape[0] > MAX_CATEGORIES:
        raise NodeKindError(
            f"{group.file.filename}:{group.name}/{where}: not the categories table pandas writes"
        )
    e = values[0]
    cats = np.asarray(e.reader[:][e.field[0]] if e.field else e.reader[:])
    if cats.ndim > 1:
        cats = cats[:, 0]
    decode = getattr(e, "decode", None)
    return decode(cats) if decode is not None else cats.view(e.dtype) if e.dtype.kind in "mM" else cats


def _is_axes(axes) -> bool:
    """Whether ``non_index_axes`` has pandas' shape: ``[(axis, [labels...])]``."""
    return (
        isinstance(axes, list)
        and len(axes) == 1
        and isinstance(axes[0], tuple)
        and len(axes[0]) == 2
        and (isinstance(axes[0][1], list))
    )


def _as_categorical(e, categories: np.ndarray) -> None:
    """Make ``e`` give the category values of its codes."""
    e.dtype = category_dtype(categories)
    e.decode = CategoryDecoder(categories, e.dtype)
    e.encoding["pandas_categories"] = categories


class _TableKey:
    """One ``format="table"`` key being described: its table, pandas' metadata, the index dimension."""

    def __init__(self, path: str, group):
        from daskh5._xarray_store import decode_attr

        self.path, self.group, self.gattrs = path, group, _attrs(group)
        self.table = _node(group, "table")
        self.tattrs = _attrs(self.table)
        self.info = _describe(self.table, allow_table=True)
        self.reader = _reader(self.info, f=self.table.file)
        self.encoding = _text(inert_loads(self.gattrs.get("encoding")), "utf-8") or "utf-8"
        self.errors = _text(self.gattrs.get("errors"), "strict") or "strict"
        ginfo = inert_loads(self.gattrs.get("info", b"")) if "info" in self.gattrs else None
        self.ginfo = ginfo if isinstance(ginfo, dict) else {}
        self.index_info = self._info("index")
        index_name = self.index_info.get("index_name")
        self.dim = str(index_name) if isinstance(index_name, str) and index_name else "index"
        levels = decode_attr(self.gattrs["levels"], True) if "levels" in self.gattrs else None
        self.levels = [v for v in levels if isinstance(v, str)] if isinstance(levels, list) else []

    def _info(self, name: str) -> dict:
        value = self.ginfo.get(name)
        return value if isinstance(value, dict) else {}

    def _attr_text(self, name: str) -> str:
        return _text(inert_loads(self.tattrs.get(name))) if name in self.tattrs else ""

    def index_entry(self):
        from daskh5._xarray_store import Entry

        kind = self._attr_text("index_kind")
        dtype = _time_dtype(kind) or self.info.dtype.fields["index"][0]
        e = Entry(self.dim, self.reader, ("index",), (self.dim,), {}, {"pandas_index_kind": kind}, self.info.shape,
                  dtype, self.table.name)  # fmt: skip
        if self._attr_text("index_meta") == "category":  # a CategoricalIndex: its values, as for columns
            _as_categorical(e, _categories(self.path, self.group, "index"))
        elif kind == "string":
            nan_rep = _index_nan_rep(self.tattrs, "index")
            e.decode, e.dtype = StringDecoder(self.encoding, self.errors, nan_rep), np.dtype(object)
        tz = tz_name(self.index_info.get("tz"))
        if tz is not None and e.dtype.kind == "M":
            e.encoding["pandas_timezone"] = tz
        return e

    def column_entries(self, name: str, skipped: list) -> list:
        """The variables of one stored column (a values block holds several pandas columns)."""
        from daskh5._xarray_store import Entry, decode_attr

        sub = self.info.dtype.fields[name][0]
        labels = decode_attr(self.tattrs[f"{name}_kind"], True) if f"{name}_kind" in self.tattrs else [name]
        labels = labels if isinstance(labels, list) else [name]
        stored_kind = self._attr_text(f"{name}_dtype")
        if stored_kind.startswith(_UNSUPPORTED):
            skipped.append(
                f"{self.table.name} column(s) {labels} ({stored_kind}: read them with pd.read_hdf)"
            )
            return []
        try:
            categories = (
                _categories(self.path, self.group, name)
                if self._attr_text(f"{name}_meta") == "category"
                else None
            )
        except (ExternalDataError, UnsupportedFilterError):
            raise
        except (Daskh5Error, KeyError, ValueError, TypeError, IndexError) as exc:
            skipped.append(
                f"{self.table.name} column(s) {labels} (categorical whose categories are unreadable: {exc})"
            )
            return []
        base = _time_dtype(stored_kind) or (sub.subdtype[0] if sub.subdtype else sub)
        column_info = self._info(name)
        out = []
        for j, label in enumerate(labels):
            enc = {"source_node": self.table.name, **_row_chunks(self.info.chunkshape, 0)}
            column = (name, j) if sub.subdtype else (name,)
            e = Entry(
                str(label), self.reader, column, (self.dim,), {}, enc, self.info.shape, base, self.table.name
            )
            if categories is not None:
                _as_categorical(e, categories)
                e.encoding["pandas_ordered"] = bool(column_info.get("ordered", False))
            elif base.kind == "S":
                nan_rep = _meta_nan_rep(self.gattrs, self.tattrs, name)
                e.decode, e.dtype = StringDecoder(self.encoding, self.errors, nan_rep), np.dtype(object)
            tz = tz_name(column_info.get("tz"))
            if tz is not None:  # values are UTC; the zone is named, not rebuilt
                e.attrs["pandas_timezone"] = tz
            if str(label) in self.levels:
                e.encoding["pandas_level"] = (self.dim, self.levels.index(str(label)))
            out.append(e)
        return out

    def column_order(self) -> list[str]:
        axes = inert_loads(self.gattrs.get("non_index_axes")) if "non_index_axes" in self.gattrs else None
        return [str(v) for v in axes[0][1]] if _is_axes(axes) else []


def _table_key(path, group, decode_pickles, skipped) -> tuple[list, list, list[str]]:
    """(data variables, coordinates, extra coordinate names) of a ``format="table"`` key."""
    key = _TableKey(path, group)
    entries = [key.index_entry()]
    for name in key.info.dtype.names:
        if name != "index":
            entries += key.column_entries(name, skipped)
    is_coord = [("pandas_index_kind" in e.encoding or "pandas_level" in e.encoding) for e in entries]
    coords = [e for e, c in zip(entries, is_coord, strict=True) if c]
    data = [e for e, c in zip(entries, is_coord, strict=True) if not c]
    order = key.column_order()
    data.sort(key=lambda e: order.index(e.name) if e.name in order else len(order))  # pandas' column order
    if len(key.levels) > 1:  # a MultiIndex: the stored "index" column is a row counter
        coords = [c for c in coords if "pandas_level" in c.encoding]
    return data, coords, [c.name for c in coords if c.name != key.dim]


# -- format="fixed" --------------------------------------------------------------------------------


def _fixed_array(path, group, node: str, encoding: str, errors: str, limit: int) -> np.ndarray:
    """One fixed-format node read now (an index, the column labels, or an object block)."""
    ds = _node(group, node)
    attrs = _attrs(ds)
    shape = inert_loads(attrs.get("shape")) if "shape" in attrs else None
    value_type = _text(attrs.get("value_type"))
    if isinstance(shape, tuple) and all(type(n) is int for n in shape) and 0 in shape:  # an empty index
        try:
            dtype = _time_dtype(value_type) or np.dtype(value_type or "f8")
        except TypeError:
            dtype = np.dtype(object)
        return np.empty(shape, dtype=dtype if dtype.kind in "biufcmMO" and dtype.subdtype is None else object)
    if _text(attrs.get("PSEUDOATOM")) == "object":
        out = _strings_as_pandas_infers(_read_object_node(ds, limit), index=True)
    else:
        out = np.asarray(_reader(_describe(ds))[...])
    kind = _text(attrs.get("kind"))
    dtype = _time_dtype(value_type) or _time_dtype(kind)
    if dtype is not None and out.dtype.kind in "iu":
        out = out.astype("<i8", copy=False).view(dtype)
    elif kind == "string" and out.dtype.kind == "S":
        nan_rep = _text(attrs["nan_rep"]) or None if "nan_rep" in attrs else "nan"
        out = StringDecoder(encoding, errors, nan_rep)(out)
    elif kind == "date" and out.dtype.kind in "iuf":
        import datetime

        out = np.array([datetime.date.fromordinal(int(v)) for v in out], dtype=object)
    return out


def _fixed_index(
    path, group, key: str, encoding, errors, nrows_limit
) -> list[tuple[str | None, np.ndarray, str | None]]:
    """[(name, values, time zone)] of an index (one per level of a MultiIndex)."""
    gattrs = _attrs(group)
    variety = _text(gattrs.get(f"{key}_variety"), "regular")
    if variety == "multi":
        out = []
        for i in range(int(gattrs.get(f"{key}_nlevels", 0))):
            level = _fixed_array(path, group, f"{key}_level{i}", encoding, errors, nrows_limit)
            codes = np.asarray(_reader(_describe(_node(group, f"{key}_label{i}")))[...])
            attrs = _attrs(_node(group, f"{key}_level{i}"))
            values = CategoryDecoder(level, category_dtype(level) if level.dtype.kind not in "iub" or
                                     (codes < 0).any() else level.dtype)(codes)  # fmt: skip
            out.append((_plain_name(attrs.get("name")), values, tz_name(attrs.get("tz"))))
        return out
    if variety != "regular":
        raise NodeKindError(f"{group.file.filename}:{group.name}: unknown pandas index variety {variety!r}")
    attrs = _attrs(_node(group, key))
    values = _fixed_array(path, group, key, encoding, errors, nrows_limit)
    if _text(attrs.get("kind")) == "category" and _has(group, f"{key}_categories"):  # a CategoricalIndex
        categories = _fixed_array(path, group, f"{key}_categories", encoding, errors, nrows_limit)
        values = CategoryDecoder(categories, category_dtype(categories))(values)
    return [(_plain_name(attrs.get("name")), values, tz_name(attrs.get("tz")))]


def _index_entries(index, dim_default: str) -> tuple[str, list]:
    from daskh5._xarray_store import Entry

    if len(index) == 1:
        name, values, tz = index[0]
        dim = str(name) if name is not None else dim_default
        enc = {"pandas_index_kind": "fixed"}
        if tz is not None:
            enc["pandas_timezone"] = tz
        return dim, [Entry(dim, values, None, (dim,), {}, enc, values.shape, values.dtype, None)]
    dim = dim_default
    out = []
    for i, (name, values, tz) in enumerate(index):
        label = str(name) if name is not None else f"level_{i}"  # as pandas names them in tables
        enc = {"pandas_level": (dim, i)}
        if tz is not None:
            enc["pandas_timezone"] = tz
        out.append(Entry(label, values, None, (dim,), {}, enc, values.shape, values.dtype, None))
    return dim, out


def _fixed_key(path, group, decode_pickles, skipped) -> tuple[list, list, list[str]]:
    """(data variables, coordinates, extra coordinate names) of a ``format="fixed"`` frame or series."""

    gattrs = _attrs(group)
    encoding = _text(gattrs.get("encoding"), "utf-8") or "utf-8"
    errors = _text(gattrs.get("errors"), "strict") or "strict"
    if _text(gattrs.get("pandas_type")) == "series":
        index = _fixed_index(path, group, "index", encoding, errors, MAX_OBJECTS)
        dim, coords = _index_entries(index, "index")
        nrows = len(index[0][1])
        name = _plain_name(gattrs.get("name"))
        columns = [(str(name) if name is not None else "values", "values", None)]
    else:
        index = _fixed_index(path, group, "axis1", encoding, errors, MAX_OBJECTS)
        dim, coords = _index_entries(index, "index")
        nrows = len(index[0][1])
        labels = _fixed_index(path, group, "axis0", encoding, errors, MAX_OBJECTS)
        if len(labels) != 1:
            skipped.append(f"{group.name} (a MultiIndex of columns: read it with pd.read_hdf)")
            return [], coords, [c.name for c in coords if c.name != dim]
        order = {str(v): i for i, v in enumerate(labels[0][1].tolist())}
        columns = []
        for b in range(int(gattrs.get("nblocks", 0))):
            items = _fixed_array(path, group, f"block{b}_items", encoding, errors, MAX_OBJECTS)
            columns += [(str(v), f"block{b}_values", j) for j, v in enumerate(items.tolist())]
        columns.sort(key=lambda c: order.get(c[0], len(order)))
    data, blocks = [], {}
    for label, node, j in columns:
        ds = _node(group, node)
        value_type = _text(_attrs(ds).get("value_type"))
        if value_type.startswith(_UNSUPPORTED):
            skipped.append(f"{ds.name} (column {label!r}: {value_type}: read it with pd.read_hdf)")
            continue
        if node not in blocks:
            try:
                blocks[node] = _fixed_block(path, group, ds, nrows * max(1, len(columns)))
            except Daskh5Error as exc:
                skipped.append(f"{ds.name} (column {label!r}: {exc})")
                blocks[node] = None
        e = _block_column(blocks[node], ds, label, j, nrows, dim, skipped)
        if e is not None:
            data.append(e)
    return data, coords, [c.name for c in coords if c.name != dim]


def _fixed_block(path, group, ds, limit: int):
    """A fixed-format block: an array read now (``rows x columns``), or ``(reader, axis of the rows)``."""
    attrs = _attrs(ds)
    transposed = bool(attrs.get("transposed", 0))
    shape = inert_loads(attrs.get("shape")) if "shape" in attrs else None
    if isinstance(shape, tuple) and all(type(n) is int for n in shape) and 0 in shape:  # an empty block
        try:
            dtype = _time_dtype(_text(attrs.get("value_type"))) or np.dtype(_text(attrs.get("value_type")))
        except TypeError:
            dtype = np.dtype(object)
        dtype = dtype if dtype.kind in "biufcmMO" and dtype.subdtype is None else np.dtype(object)
        out = np.empty(shape, dtype=dtype)
        return out.T if out.ndim == 2 and not transposed else out
    if _text(attrs.get("PSEUDOATOM")) == "object":
        out = _read_object_node(ds, limit)
        return out.T if out.ndim == 2 and not transposed else out
    reader = _reader(_describe(ds))
    return reader, 0 if transposed or len(reader.shape) == 1 else 1


def _strings_as_pandas_infers(values: np.ndarray, index: bool = False) -> np.ndarray:
    """An object column of strings and missing values as pandas reads it: each missing value NaN.

    pandas infers its ``str`` dtype for such a column (``None`` becomes NaN),
    also when every value is missing; for an index, only when one is a string.
    Any other mix (bytes, numbers) stays as stored.
    """
    flat = values.reshape(-1)
    missing = np.array([v is None or (type(v) is float and v != v) for v in flat], dtype=bool)
    strings = all(missing[i] or type(v) is str for i, v in enumerate(flat))
    if strings and missing.any() and not (index and missing.all()):
        values = values.copy()
        values.reshape(-1)[missing] = np.nan
    return values


def _row_chunks(chunkshape, axis: int) -> dict:
    """``encoding["chunksizes"]`` of a column along its rows (so ``chunks={}`` follows storage)."""
    return {"chunksizes": (int(chunkshape[axis]),)} if chunkshape else {}


def _block_column(block, ds, label: str, j, nrows: int, dim: str, skipped: list):
    """The Entry of column ``j`` of a block (None, with a note in ``skipped``, if it does not fit)."""
    from daskh5._xarray_store import Entry

    if block is None:
        return None
    enc = {"source_node": ds.name}
    if isinstance(block, np.ndarray):
        values = block[:, j] if block.ndim == 2 and j is not None else block
        values = _strings_as_pandas_infers(values) if values.dtype == object else values
        if values.shape != (nrows,):
            skipped.append(f"{ds.name} (column {label!r}: {values.shape} values for {nrows} rows)")
            return None
        return Entry(label, values, None, (dim,), {}, enc, (nrows,), values.dtype, ds.name)
    reader, axis = block
    ncols = reader.shape[1 - axis] if len(reader.shape) == 2 else 1
    if len(reader.shape) not in (1, 2) or reader.shape[axis] != nrows or (j or 0) >= ncols:
        skipped.append(f"{ds.name} (column {label!r}: shape {reader.shape} for {nrows} rows)")
        return None
    column = reader if len(reader.shape) == 1 else ColumnOf(reader, j or 0, nrows, axis)
    enc.update(_row_chunks(reader.info.chunkshape, axis))
    dtype = _time_dtype(_text(_attrs(ds).get("value_type"))) or reader.dtype
    e = Entry(label, column, None, (dim,), {}, enc, (nrows,), dtype, ds.name)
    tz = tz_name(_attrs(ds).get("tz"))
    if tz is not None and dtype.kind == "M":
        e.attrs["pandas_timezone"] = tz
    return e


def pandas_entries(
    path: str, group, decode_pickles: bool = False, allow_external: bool = False, allowed=SAFE_FILTERS
):
    """(data variables, coordinates, extra coordinate names, skipped notes) of a pandas key, or None.

    ``group`` is an open h5py group; None when it is not a key pandas wrote, or
    when its layout is not one pandas writes (a warning says so, and the group's
    nodes are then opened as they are stored). Its nodes are looked up link by
    link; one stored outside the file raises
    :class:`~daskh5.errors.ExternalDataError` unless ``allow_external``.
    """
    token, filters = _allow_external.set(allow_external), _allowed.set(frozenset(allowed))
    try:
        return _pandas_entries(path, group, decode_pickles)
    finally:
        _allow_external.reset(token)
        _allowed.reset(filters)


def _pandas_entries(path: str, group, decode_pickles: bool):
    kind = _text(_attrs(group).get("pandas_type", b""))
    skipped: list[str] = []
    read = (
        _table_key
        if kind in _TABLE_TYPES and _has(group, "table")
        else _fixed_key
        if kind in _FIXED_TYPES
        else None
    )
    if read is None:
        return None
    try:
        out = read(path, group, decode_pickles, skipped)
    except (ExternalDataError, UnsupportedFilterError):
        raise
    except (Daskh5Error, KeyError, ValueError, TypeError, IndexError, OSError) as exc:
        warnings.warn(
            f"{path}:{group.name}: a pandas {kind!r} key daskh5 cannot read as pandas does ({exc}); its nodes "
            "are opened as stored. Read it with pd.read_hdf if you trust the file",
            UserWarning,
            stacklevel=6,
        )
        return None
    return (*out, skipped)


def is_bookkeeping(group) -> bool:
    """Whether ``group`` is inside the ``meta`` group of a pandas key (where pandas keeps categories)."""
    parts = group.name.strip("/").split("/")
    for i in range(1, len(parts)):
        if parts[i] == "meta" and "pandas_type" in group.file["/" + "/".join(parts[:i])].attrs:
            return True
    return False


def _fixed_rows(group, key: str) -> int | None:
    """Rows of a fixed-format key from its index node's shape (None for a pickled index)."""
    node = _node(group, key) if _has(group, key) else _node(group, f"{key}_label0")
    shape = inert_loads(_attrs(node).get("shape")) if "shape" in _attrs(node) else None
    if isinstance(shape, tuple) and 0 in shape:
        return 0
    return None if _text(_attrs(node).get("PSEUDOATOM")) == "object" else int(node.shape[0])


def describe_key(path: str, group) -> dict:
    """What ``daskh5 info`` says of a pandas key: its format, rows and column labels (read inertly).

    Reads only metadata and the (small) column-label node, never a data block.
    """
    gattrs = _attrs(group)
    kind = _text(gattrs.get("pandas_type", b""))
    out: dict = {
        "key": group.name,
        "pandas_type": kind,
        "format": "table" if kind in _TABLE_TYPES else "fixed",
    }
    encoding = _text(gattrs.get("encoding"), "utf-8") or "utf-8"
    try:
        if kind in _TABLE_TYPES:
            axes = inert_loads(gattrs.get("non_index_axes")) if "non_index_axes" in gattrs else None
            out["rows"] = int(_node(group, "table").shape[0])
            levels = inert_loads(gattrs.get("levels")) if "levels" in gattrs else None
            levels = {str(v) for v in levels} if isinstance(levels, list) else set()
            out["columns"] = [str(v) for v in axes[0][1] if str(v) not in levels] if _is_axes(axes) else []
        elif kind == "series":
            out["rows"] = _fixed_rows(group, "index")
            name = _plain_name(gattrs.get("name"))
            out["columns"] = [str(name) if name is not None else "values"]
        else:
            out["rows"] = _fixed_rows(group, "axis1")
            if _text(gattrs.get("axis0_variety"), "regular") == "regular":
                out["columns"] = [
                    str(v) for v in _fixed_array(path, group, "axis0", encoding, "strict", 1 << 20)
                ]
            else:
                out["columns"] = ["(a MultiIndex of columns)"]
    except (Daskh5Error, KeyError, ValueError, TypeError, IndexError, OSError) as exc:
        out["error"] = f"not a layout pandas writes: {exc}"
    return out

"""What a group of a PyTables file looks like as xarray variables (the store of the backend).

Everything is found and read through h5py and :class:`~daskh5._reader.NodeReader`:
nothing is unpickled unless the caller opts in (``decode_pickles=True``), and
then only plain builtins are rebuilt (:func:`daskh5._safe_tables.restricted_loads`).

Variables of a group
    every Array/CArray/EArray (and plain HDF5 dataset) of a supported dtype; one
    variable per column of every Table (nested columns are named
    ``parent.child``; when a group holds several Tables, or a column name
    clashes with another variable, the Table's name is prefixed:
    ``table.column``); pandas ``format="table"`` frames get their real column
    names and their index as a coordinate.  VLArrays are not variables: they
    are listed in a warning pointing to :func:`daskh5.read_ragged`.

Dimension names, first rule that applies
    1. ``dims={"/path/or/name": ("a", "b")}`` given by the caller;
    2. names daskh5's writer stored (``DASKH5_DIMS``);
    3. HDF5 dimension scales or labels (files written by h5py or netCDF);
    4. generated: the first axis is ``row_<length>`` (so arrays and Tables with
       as many rows share it, and names can never clash between groups), other
       axes ``<variable>_dim_<axis>``.
"""

from __future__ import annotations

import re
import warnings

import numpy as np

from daskh5._attrs import DEFAULT_MAX_ATTR_SIZE, AttrBudget, parse_limit, read_attrs, small_attr
from daskh5._nodes import damaged_metadata, describe_array, lookup, node_kind, open_h5
from daskh5._reader import NodeReader
from daskh5._safe_tables import bounded_repr, restricted_loads
from daskh5._walk import walk
from daskh5.errors import Daskh5Error, NodeNotFound

__all__ = ["ATTR_COORDS", "ATTR_DIMS", "group_variables", "list_groups"]

ATTR_DIMS = "DASKH5_DIMS"
ATTR_COORDS = "DASKH5_COORDS"  # on a group: its non-index coordinate variables
_SYSTEM = {
    "CLASS", "VERSION", "TITLE", "FLAVOR", "EXTDIM", "PYTABLES_FORMAT_VERSION", "NROWS", "AUTO_INDEX",
    "FILTERS", "DIRTY", "PSEUDOATOM", ATTR_DIMS, "DIMENSION_LIST", "REFERENCE_LIST", "NAME", "_Netcdf4Dimid",
    "_Netcdf4Coordinates", "_nc3_strict",
}  # fmt: skip
_SYSTEM_PATTERN = re.compile(r"^(FIELD_\d+_(NAME|FILL)|DASKH5_.*)$")
_GROUP_SKIP = {"_i_table"}  # PyTables' index containers
_MISSING = object()


class PickledAttribute(bytes):
    """An attribute value PyTables stored as a pickle, left undecoded (it may hold code)."""


def decode_attr(value, decode_pickles: bool = False):
    """An HDF5 attribute value as a plain Python/numpy value, never running code."""
    if isinstance(value, (bytes, np.bytes_)):
        raw = bytes(value)
        if raw.endswith(b".") and raw not in (b"0", b"0.") and (raw[:1] in (b"(", b"\x80") or b"\n" in raw):
            if decode_pickles:
                try:
                    return restricted_loads(raw)
                except Exception:
                    return PickledAttribute(raw)
            return PickledAttribute(raw)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    if isinstance(value, np.ndarray) and value.dtype.kind == "S":
        return np.char.decode(value, "utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item() if value.dtype.kind in "biufc" else value
    return value


def split_attrs(obj, decode_pickles: bool, budget: AttrBudget, where: str) -> tuple[dict, dict]:
    """(user attributes, PyTables/HDF5 bookkeeping) of an h5py object, within ``budget``
    (attributes it does not admit are left out with a warning, see :mod:`daskh5._attrs`)."""
    user, system = {}, {}
    for raw_key, value in read_attrs(obj, budget, where).items():
        # a name that is not UTF-8 (h5py gives bytes) is kept, readably
        key = raw_key.decode("utf-8", "backslashreplace") if isinstance(raw_key, bytes) else raw_key
        if type(value).__name__ == "Empty":
            value = ""
        target = system if key in _SYSTEM or _SYSTEM_PATTERN.match(key) else user
        target[key] = decode_attr(value, decode_pickles)
    return user, system


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, np.bytes_)) else str(v)


def list_groups(path: str, group: str | None = None) -> list[str]:
    """Every group path under ``group`` (itself first), sorted, skipping PyTables index containers."""
    with open_h5(path) as f:
        return [name for name, _g in walk_groups(path, f, group)]


def walk_groups(path: str, f, group: str | None = None) -> list[tuple[str, object]]:
    """``(path, h5py group)`` of ``group`` and every group under it, sorted by depth then path,
    skipping PyTables index containers; found in one walk, linear however deep the groups nest."""
    import h5py

    root = group or "/"
    start = lookup(f, root) if root != "/" else f
    if not isinstance(start, h5py.Group):
        raise NodeNotFound(f"{path}: {root!r} is not a group")
    base = start.name.rstrip("/")
    out = [(start.name, start)]
    for name, obj, skip in walk(start, hide=lambda link: link in _GROUP_SKIP):
        if isinstance(obj, h5py.Group) and not skip:
            out.append((f"{base}/{name}", obj))
    return sorted(out, key=lambda item: (item[0].count("/"), item[0]))


class Entry:
    """One variable before it becomes an ``xarray.Variable``."""

    def __init__(self, name, reader, field, dims_hint, attrs, encoding, shape, dtype, node, axis_names=None):
        self.name, self.reader, self.field = name, reader, field
        self.dims_hint, self.attrs, self.encoding = dims_hint, attrs, encoding
        self.shape, self.dtype, self.node = shape, dtype, node
        self.axis_names = axis_names  # dimension names found in the file, if any


def _scale_names(ds) -> tuple[str, ...] | None:
    """Dimension names from HDF5 dimension scales or labels, if every axis has one."""
    for name in ("DIMENSION_LIST", "DIMENSION_LABELS"):  # h5py reads both whole: they must be small
        if name in ds.attrs and small_attr(ds, name, _MISSING) is _MISSING:
            return None
    try:
        names = []
        for dim in ds.dims:
            if len(dim):
                names.append(dim[0].name.rsplit("/", 1)[-1])
            elif dim.label:
                names.append(dim.label)
            else:
                return None
        return tuple(names)
    except Exception:
        return None


def _array_encoding(info, system: dict) -> dict:
    enc = {"pytables_attrs": system, "source_node": info.node}
    if info.chunkshape:
        enc["chunksizes"] = tuple(info.chunkshape)
    codes = {32001: "blosc", 32026: "blosc2", 1: "zlib", 305: "lzo", 307: "bzip2"}
    ids = [fid for fid, _ in info.filters]
    enc["filters"] = tuple(codes.get(f, str(f)) for f in ids)
    for fid, cd in info.filters:
        if fid == 32001 and len(cd) >= 6:
            names = {0: "blosclz", 1: "lz4", 2: "lz4hc", 3: "snappy", 4: "zlib", 5: "zstd"}
            enc["complib"] = "blosc:" + names.get(cd[6], "blosclz") if len(cd) > 6 else "blosc"
            enc["complevel"], enc["shuffle"], enc["bitshuffle"] = cd[4], cd[5] == 1, cd[5] == 2
        elif fid == 1:
            enc["complib"], enc["complevel"] = "zlib", cd[0] if cd else 0
            enc["shuffle"] = 2 in ids
    enc["fletcher32"] = 3 in ids
    return enc


def _leaf_entries(path, obj, kind, decode_pickles, budget) -> list[Entry]:
    f = obj.file
    info = describe_array(path, obj.name, f=f)
    user, system = split_attrs(obj, decode_pickles, budget, f"{path}:{obj.name}")
    stored = system.get(ATTR_DIMS)
    hint = tuple(stored.split(",")) if isinstance(stored, str) and stored else None
    axis_names = hint or _scale_names(obj)
    name = obj.name.rsplit("/", 1)[-1]
    return [Entry(name, NodeReader(info, f=f), None, None, user, _array_encoding(info, system), info.shape, info.dtype,
                  obj.name, axis_names)]  # fmt: skip


def _flatten_fields(dtype: np.dtype, prefix=()) -> list[tuple[tuple[str, ...], np.dtype]]:
    out = []
    for name in dtype.names:
        sub = dtype.fields[name][0]
        base = sub.subdtype[0] if sub.subdtype else sub
        if base.fields is not None and not sub.subdtype:
            out += _flatten_fields(base, (*prefix, name))
        else:
            out.append(((*prefix, name), sub))
    return out


def _table_entries(path, obj, decode_pickles, prefix: str, budget) -> list[Entry]:
    info = describe_array(path, obj.name, allow_table=True, f=obj.file)
    user, system = split_attrs(obj, decode_pickles, budget, f"{path}:{obj.name}")
    reader = NodeReader(info, f=obj.file)
    enc = _array_encoding(info, system)
    out = []
    for field, sub in _flatten_fields(info.dtype):
        base, extra = sub.subdtype if sub.subdtype else (sub, ())
        name = prefix + ".".join(field)
        out.append(
            Entry(name, reader, field, None, dict(user), dict(enc), (*info.shape, *extra), base, obj.name)
        )
    return out


_PANDAS_TABLES = ("frame_table", "series_table")


def _pandas_dtype(stored: np.dtype, kind: str) -> np.dtype:
    """The dtype pandas meant for a column stored as ``stored`` with ``*_dtype``/``index_kind`` ``kind``.

    pandas keeps datetimes and timedeltas as int64 plus a note of their unit;
    the values are reinterpreted (a view), never parsed.
    """
    for prefix in ("datetime64", "timedelta64"):
        if kind.startswith(prefix) and stored == np.dtype("<i8"):
            try:
                return np.dtype(kind if "[" in kind else f"{prefix}[ns]")
            except TypeError:
                return stored
    return stored


def _opaque_attr(value):
    from daskh5._safe_tables import opaque_loads

    try:
        return opaque_loads(bytes(value))
    except Exception:
        return None


def _pandas_entries(path, group, budget) -> tuple[list[Entry], list[Entry], list[str]] | None:
    """(data variables, index coordinates, names of the extra coordinates) of a pandas table, or None.

    ``df.to_hdf(format="table")`` frames and series: columns under their real
    labels, the index as the dimension coordinate; a MultiIndex's levels
    become non-dimension coordinates along the row dimension (pandas stores
    them as data columns), so ``ds.set_index(index=[...])`` rebuilds it.
    """
    limit = budget.file_size if budget.limit is None else budget.limit

    def gattrs(name, default=b""):
        return small_attr(group, name, default, limit)

    if _text(gattrs("pandas_type")) not in _PANDAS_TABLES or "table" not in group:
        return None
    table = group["table"]
    info = describe_array(path, table.name, allow_table=True, f=group.file)
    reader = NodeReader(info, f=group.file)

    def tattrs(name, default=b""):
        return small_attr(table, name, default, limit)

    ginfo = _opaque_attr(gattrs("info"))
    ginfo = ginfo if isinstance(ginfo, dict) else {}
    index_info = ginfo.get("index") if isinstance(ginfo.get("index"), dict) else {}
    index_name = index_info.get("index_name")
    index_name = index_name if isinstance(index_name, str) and index_name else "index"
    levels = decode_attr(gattrs("levels", None), True)
    levels = [v for v in levels if isinstance(v, str)] if isinstance(levels, list) else []
    dim = str(index_name)
    data, coords = [], []
    for name in info.dtype.names:
        sub = info.dtype.fields[name][0]
        if name == "index":
            kind = _text(tattrs("index_kind"))
            coords.append(
                Entry(dim, reader, ("index",), (dim,), {}, {"pandas_index_kind": kind}, info.shape,
                      _pandas_dtype(sub, kind), table.name)
            )  # fmt: skip
            continue
        labels = decode_attr(tattrs(f"{name}_kind", None), True)
        labels = [name] if labels is None else labels
        meta = _text(tattrs(f"{name}_meta"))
        if not isinstance(labels, list):
            labels = [name]
        labels = labels[: sub.shape[0] if sub.subdtype and sub.shape else 1]  # one per column of the block
        base = sub.subdtype[0] if sub.subdtype else sub
        base = _pandas_dtype(base, _text(tattrs(f"{name}_dtype")))
        for j, label in enumerate(labels):
            attrs = {"_Encoding": "utf-8"} if meta == "str" and base.kind == "S" else {}
            column_info = ginfo.get(name) if isinstance(ginfo.get(name), dict) else {}
            if column_info.get("tz") is not None:  # values are UTC; the zone object is not rebuilt
                attrs["pandas_timezone"] = bounded_repr(column_info["tz"])
            column = (name, j) if sub.subdtype else (name,)
            entry = Entry(
                str(label),
                reader,
                column,
                (dim,),
                attrs,
                {"source_node": table.name},
                info.shape,
                base,
                table.name,
            )
            (coords if str(label) in levels else data).append(entry)
    return data, coords, [c.name for c in coords if c.name != dim]


def group_variables(
    path: str,
    group: str,
    decode_pickles: bool = False,
    max_attr_size: int | str | None = DEFAULT_MAX_ATTR_SIZE,
):
    """(entries, group attributes, skipped-node messages, stored coordinate names) of one group.

    Attributes bigger than ``max_attr_size`` bytes (or, together, than the file) are left out
    with a warning.
    """
    import h5py

    with open_h5(path) as f:
        g = lookup(f, group) if group not in ("/", "") else f
        if not isinstance(g, h5py.Group):
            raise NodeNotFound(f"{path}: {group!r} is a {node_kind(g)}, not a group")
        return _group_variables(path, f, g, decode_pickles, max_attr_size)


def _group_variables(path: str, f, g, decode_pickles: bool, max_attr_size):
    """:func:`group_variables` of the open h5py group ``g`` of the open file ``f``."""
    import h5py

    with damaged_metadata(path):
        budget = AttrBudget(f, parse_limit(max_attr_size))
        gattrs, gsystem = split_attrs(g, decode_pickles, budget, f"{path}:{g.name}")
        pandas = _pandas_entries(path, g, budget)
        if pandas is not None:  # pandas' bookkeeping (pickled column lists...) is not user metadata
            data, coords, coord_names = pandas
            for e in coords + data:
                e.encoding["pandas_attrs"] = gattrs
            return coords + data, {}, [], coord_names
        entries, skipped = [], []
        children = sorted(g.keys())
        tables = [c for c in children if isinstance(g[c], h5py.Dataset) and node_kind(g[c]) == "Table"]
        leaf_names = {c for c in children if c not in tables}
        for child in children:
            obj = g[child]
            if not isinstance(obj, h5py.Dataset):
                continue
            kind = node_kind(obj)
            try:
                if kind == "Table":
                    names = [".".join(fp) for fp, _ in _flatten_fields(obj.dtype)] if obj.dtype.names else []
                    clash = len(tables) > 1 or any(n in leaf_names for n in names)
                    entries += _table_entries(path, obj, decode_pickles, f"{child}." if clash else "", budget)
                elif kind == "VLArray":
                    skipped.append(f"{obj.name} (VLArray: read it with daskh5.read_ragged)")
                elif kind in ("Array", "CArray", "EArray", "Dataset"):
                    entries += _leaf_entries(path, obj, kind, decode_pickles, budget)
                else:
                    skipped.append(f"{obj.name} ({kind})")
            except Daskh5Error as exc:
                skipped.append(f"{obj.name} ({exc})")
        ragged = [e.node for e in entries if f"{e.node}_start_and_stop" in f]
        if ragged:
            skipped.append(
                "flat ragged layouts "
                + ", ".join(ragged)
                + " are exposed as flat arrays; daskh5.read_ragged "
                "gives their samples"
            )
        stored = gsystem.get(ATTR_COORDS)
        coord_names = [c for c in stored.split(",") if c] if isinstance(stored, str) else []
        return entries, gattrs, skipped, coord_names


def assign_dims(entries: list, overrides: dict | None) -> None:
    """Set ``entry.dims`` by the rules in the module docstring."""
    overrides = overrides or {}
    for e in entries:
        given = overrides.get(e.node if e.field is None else f"{e.node}/{'/'.join(map(str, e.field))}")
        given = given or overrides.get(e.name)
        if given is not None:
            dims = (given,) if isinstance(given, str) else tuple(given)
        elif e.dims_hint is not None:
            dims = e.dims_hint + tuple(f"{e.name}_dim_{i}" for i in range(len(e.dims_hint), len(e.shape)))
        elif e.axis_names is not None and len(e.axis_names) == len(e.shape):
            dims = tuple(e.axis_names)
        else:
            dims = tuple(f"row_{e.shape[0]}" if i == 0 else f"{e.name}_dim_{i}" for i in range(len(e.shape)))
        if len(dims) != len(e.shape):
            raise ValueError(
                f"dims for {e.node} ({e.name}): {dims} has {len(dims)} names for {len(e.shape)} axes"
            )
        e.dims = dims


def warn_skipped(path: str, group: str, skipped: list[str]) -> None:
    if skipped:
        warnings.warn(
            f"{path}:{group}: not opened as variables: " + "; ".join(skipped),
            UserWarning,
            stacklevel=4,
        )

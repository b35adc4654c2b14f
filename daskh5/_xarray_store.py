"""What a group of a PyTables file looks like as xarray variables (the store of the backend).

Everything is found and read through h5py and :class:`~daskh5._reader.NodeReader`:
nothing is unpickled unless the caller opts in (``decode_pickles=True``), and
then only plain builtins are rebuilt (:func:`daskh5._safe_tables.restricted_loads`).

Variables of a group
    every Array/CArray/EArray (and plain HDF5 dataset) of a supported dtype; one
    variable per column of every Table (nested columns are named
    ``parent.child``; when a group holds several Tables, or a column name
    clashes with another variable, the Table's name is prefixed:
    ``table.column``), and of every other compound dataset; a pandas key
    (``to_hdf``, either format) is read as ``pd.read_hdf`` reads it
    (:mod:`daskh5._pandas`).  VLArrays are not variables: they
    are listed in a warning pointing to :func:`daskh5.read_ragged`.

Dimension names, first rule that applies
    1. ``dims={"/path/or/name": ("a", "b")}`` given by the caller;
    2. names daskh5's writer stored (``DASKH5_DIMS``);
    3. HDF5 dimension scales or labels (files written by h5py or netCDF), as
       netCDF reads them (:mod:`daskh5._netcdf`);
    4. generated: the first axis is ``row_<length>`` (so arrays and Tables with
       as many rows share it, and names can never clash between groups), other
       axes ``<variable>_dim_<axis>``.
"""

from __future__ import annotations

import re
import warnings

import numpy as np

from daskh5._attrs import DEFAULT_MAX_ATTR_SIZE, AttrBudget, parse_limit, read_attrs, small_attr
from daskh5._codecs import SAFE_FILTERS, refused_filters
from daskh5._containment import walk
from daskh5._h5types import (
    LibraryReader,
    compound_with_times,
    library_kind,
    numpy_dtype,
    resolve_children,
    skip_reason,
    time_layout,
    vlen_str_dtype,
)
from daskh5._netcdf import (
    HIDDEN_ATTRS,
    GroupDims,
    attr_value,
    enum_dtype,
    group_dims,
    holds_references,
    storage_encoding,
    variable_name,
)
from daskh5._nodes import damaged_metadata, describe_array, lookup, node_kind, node_name, open_h5
from daskh5._pandas import is_bookkeeping, pandas_entries
from daskh5._reader import NodeReader, dataset_filters, refusal
from daskh5._safe_tables import restricted_loads
from daskh5.errors import Daskh5Error, ExternalDataError, FileNotFound, NodeNotFound

__all__ = ["ATTR_COORDS", "ATTR_DIMS", "group_variables", "list_groups"]

ATTR_DIMS = "DASKH5_DIMS"
ATTR_COORDS = "DASKH5_COORDS"  # on a group: its non-index coordinate variables
_SYSTEM = {
    "CLASS", "VERSION", "TITLE", "FLAVOR", "EXTDIM", "PYTABLES_FORMAT_VERSION", "NROWS", "AUTO_INDEX",
    "FILTERS", "DIRTY", "PSEUDOATOM", ATTR_DIMS, "DIMENSION_LIST", "REFERENCE_LIST", "NAME", "_Netcdf4Dimid",
    "_Netcdf4Coordinates", "_nc3_strict",
}  # fmt: skip
_SYSTEM_PATTERN = re.compile(r"^(FIELD_\d+_(NAME|FILL)|DASKH5_.*)$")
_RAW_ATTRS = {"_FillValue", "missing_value"}
_INDEX_PREFIX = "_i_"  # PyTables' index containers: _i_<table name>
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
        return raw.decode("utf-8", "replace")  # as netCDF4-python
    if isinstance(value, np.ndarray):
        return attr_value(value)
    return value


def split_attrs(obj, decode_pickles: bool, budget: AttrBudget, where: str) -> tuple[dict, dict]:
    """(user attributes, PyTables/HDF5 bookkeeping) of an h5py object, within ``budget``
    (attributes it does not admit are left out with a warning, see :mod:`daskh5._attrs`)."""
    user, system = {}, {}
    for raw_key, value in read_attrs(obj, budget, where).items():
        # a name that is not UTF-8 (h5py gives bytes) is kept, readably
        key = raw_key.decode("utf-8", "backslashreplace") if isinstance(raw_key, bytes) else raw_key
        if key in HIDDEN_ATTRS or holds_references(value):  # bookkeeping; references do not pickle
            continue
        if type(value).__name__ == "Empty":
            value = "" if getattr(value.dtype, "kind", "S") in "SOU" else np.array([], dtype=value.dtype)
        target = system if key in _SYSTEM or _SYSTEM_PATTERN.match(key) else user
        if key in _RAW_ATTRS:  # left as stored: xarray decodes them by the variable's dtype
            target[key] = attr_value(value)
            continue
        target[key] = decode_attr(value, decode_pickles)
    return user, system


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, np.bytes_)) else str(v)


def list_groups(path: str, group: str | None = None, allow_external: bool = False) -> list[str]:
    """Every group path under ``group`` (itself first), sorted, skipping PyTables index containers."""
    with open_h5(path) as f:
        return [name for name, _g in walk_groups(path, f, group, allow_external)]


def walk_groups(
    path: str, f, group: str | None = None, allow_external: bool = False
) -> list[tuple[str, object]]:
    """``(path, h5py group)`` of ``group`` and every group under it, sorted by depth then path.

    Found in one walk, each child opened from its parent (linear however deep the
    groups nest).  Only groups reached through hard links are listed (as
    ``H5Ovisit`` does), and, with ``allow_external``, groups that external links
    name (with the groups hard-linked under them, without following further
    external links); a link name containing ``/`` is not a group.  PyTables' index containers and pandas'
    bookkeeping groups (a key's ``meta``) are left out.
    """
    import h5py

    root = group or "/"
    start = lookup(f, root, allow_external=allow_external) if root != "/" else f
    if not isinstance(start, h5py.Group):
        raise NodeNotFound(f"{path}: {root!r} is not a group")
    top = "/" + "/".join(p for p in root.split("/") if p)  # as given: it may lead through links
    out = [(top, start)]
    skipped: set[str] = set()
    for name, kind, obj in walk(start):
        parent = name.rpartition("/")[0]
        if parent in skipped or (kind == "hard" and name.rpartition("/")[2].startswith(_INDEX_PREFIX)):
            skipped.add(name)
            continue
        if kind == "hard" and isinstance(obj, h5py.Group):
            if is_bookkeeping(obj):
                skipped.add(name)
                continue
            out.append((f"{top.rstrip('/')}/{name}", obj))
        elif kind == "external" and allow_external:  # opted in: the linked group and its hard-linked groups
            try:
                target = lookup(f, f"{top.rstrip('/')}/{name}", allow_external=True)
            except (FileNotFound, NodeNotFound):  # dangling: its group's Dataset lists it in its warning
                continue
            if isinstance(target, h5py.Group):
                here = f"{top.rstrip('/')}/{name}"
                out.append((here, target))
                out += [(f"{here}/{sub}", g) for sub, k, g in walk(target) if k == "hard" and isinstance(g, h5py.Group)
                        and not sub.rpartition("/")[2].startswith(_INDEX_PREFIX) and not is_bookkeeping(g)]  # fmt: skip
    return sorted(out, key=lambda item: (item[0].count("/"), item[0]))


class Entry:
    """One variable before it becomes an ``xarray.Variable``."""

    def __init__(self, name, reader, field, dims_hint, attrs, encoding, shape, dtype, node, axis_names=None):
        self.name, self.reader, self.field = name, reader, field
        self.dims_hint, self.attrs, self.encoding = dims_hint, attrs, encoding
        self.shape, self.dtype, self.node = shape, dtype, node
        self.axis_names = axis_names  # dimension names found in the file, if any
        self.netcdf_dims = False  # axis names came from netCDF/HDF5 dimension scales
        self.time = False  # the reader gives PyTables Time32/Time64 integers, ``dtype`` is datetime64


def _scale_names(ds) -> tuple[str, ...] | None:
    """Dimension names from HDF5 dimension scales or labels, if every axis has one."""
    for name in ("DIMENSION_LIST", "DIMENSION_LABELS"):  # h5py reads both whole: they must be small
        if name in ds.attrs and small_attr(ds, name, _MISSING) is _MISSING:
            return None
    try:
        names = []
        for dim in ds.dims:
            if len(dim):
                names.append(node_name(dim[0].name).rsplit("/", 1)[-1])
            elif dim.label:
                names.append(dim.label)
            else:
                return None
        return tuple(names)
    except Exception:
        return None


def _array_encoding(info, system: dict) -> dict:
    enc = {**storage_encoding(info), "pytables_attrs": system, "source_node": info.node}
    codes = {32001: "blosc", 32026: "blosc2", 1: "zlib", 305: "lzo", 307: "bzip2"}
    ids = [fid for fid, _ in info.filters]
    enc["filters"] = tuple(codes.get(f, str(f)) for f in ids)
    for fid, cd in info.filters:
        if fid == 32001 and len(cd) >= 6:
            names = {0: "blosclz", 1: "lz4", 2: "lz4hc", 3: "snappy", 4: "zlib", 5: "zstd"}
            enc["complib"] = "blosc:" + names.get(cd[6], "blosclz") if len(cd) > 6 else "blosc"
            enc["complevel"], enc["bitshuffle"] = cd[4], cd[5] == 2  # shuffle: encoding["blosc"]
        elif fid == 1:
            enc["complib"], enc["complevel"] = "zlib", cd[0] if cd else 0
    enc.setdefault("shuffle", 2 in ids)
    return enc


def _is_record(obj) -> bool:
    """A PyTables Table, or any other compound dataset (h5py, netCDF compound types, C, MATLAB)."""
    import h5py

    if not isinstance(obj, h5py.Dataset) or obj.shape is None:
        return False
    if node_kind(obj) == "Table":
        return True
    dtype = numpy_dtype(obj)
    return node_kind(obj) == "Dataset" and dtype is not None and dtype.names is not None


def _leaf_entries(
    path,
    obj,
    kind,
    decode_pickles,
    layout: GroupDims | None = None,
    key=None,
    allow_external=False,
    allowed=SAFE_FILTERS,
    budget=None,
) -> list[Entry]:
    f = obj.file
    path = f.filename  # an opted-in external link's node lives in its target file
    user, system = split_attrs(
        obj,
        decode_pickles,
        budget or AttrBudget(f, parse_limit(DEFAULT_MAX_ATTR_SIZE)),
        f"{path}:{node_name(obj.name)}",
    )
    stored = system.get(ATTR_DIMS)
    hint = tuple(stored.split(",")) if isinstance(stored, str) and stored else None
    key = key or obj.name.rsplit("/", 1)[-1]  # the link's name (a soft link names its own variable)
    from_scales = layout.var_dims.get(key) if layout is not None and not hint else None
    axis_names = hint or from_scales or _scale_names(obj)
    special = library_kind(obj)
    if special is not None:
        reader, encoding = _library_reader(path, obj, special), {"source": path, "source_node": obj.name}
        encoding.update({"dtype": str} if special == "str" else {"dtype": obj.dtype.subdtype[0]})
        encoding["original_shape"] = reader.shape
        encoding["chunksizes"] = tuple(obj.chunks) if obj.chunks else None
    else:
        info = describe_array(path, obj.name, allow_table=True, f=f, allow_external=allow_external)
        reader, encoding = NodeReader(info, f=f, allowed=allowed), _array_encoding(info, system)
    shape = reader.shape
    times = time_layout(obj.id.get_type())
    if from_scales is not None and len(from_scales) == len(shape):
        shape = layout.sizes(from_scales, shape)  # record variables shorter than their unlimited dim
        encoding["original_shape"] = shape
    if "dtype" in encoding and isinstance(encoding["dtype"], np.dtype):
        encoding["dtype"] = enum_dtype(obj, encoding["dtype"])
    dtype = reader.dtype if times is None else times[1]
    entry = Entry(
        variable_name(key), reader, None, None, user, encoding, shape, dtype, node_name(obj.name), axis_names
    )
    entry.netcdf_dims, entry.time = from_scales is not None, times is not None
    return [entry]


def _library_reader(path: str, obj, kind: str) -> LibraryReader:
    """A reader through h5py for variable-length strings and H5T_ARRAY element types."""
    if kind == "str":
        return LibraryReader(path, obj.name, kind, obj.shape, vlen_str_dtype())
    base, inner = obj.dtype.subdtype
    return LibraryReader(path, obj.name, kind, (*obj.shape, *inner), base.newbyteorder("="), inner)


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


def _table_entries(
    path,
    obj,
    decode_pickles,
    prefix: str,
    layout=None,
    key=None,
    allow_external=False,
    allowed=SAFE_FILTERS,
    budget=None,
    skipped: list[str] | None = None,
) -> list[Entry]:
    """One entry per (nested) field of a Table or compound dataset, along its axes.

    Variable-length string members become ``str`` variables; other object
    members (vlen sequences, references) are listed in ``skipped``.
    """
    path = obj.file.filename  # an opted-in external link's node lives in its target file
    info = describe_array(path, obj.name, allow_table=True, f=obj.file, allow_external=allow_external)
    user, system = split_attrs(
        obj,
        decode_pickles,
        budget or AttrBudget(obj.file, parse_limit(DEFAULT_MAX_ATTR_SIZE)),
        f"{path}:{node_name(obj.name)}",
    )
    reader = NodeReader(info, f=obj.file, allowed=allowed)
    enc = _array_encoding(info, system)
    mixed = compound_with_times(obj.id.get_type())
    times = mixed[1] if mixed is not None else {}
    axes = layout.var_dims.get(key or obj.name.rsplit("/", 1)[-1]) if layout is not None else None
    out = []
    for field, sub in _flatten_fields(info.dtype):
        base, extra = sub.subdtype if sub.subdtype else (sub, ())
        name = prefix + ".".join(field)
        text = base.kind == "O" and _vlen_text(base)
        if base.kind == "O" and not text:
            if skipped is not None:
                skipped.append(f"{node_name(obj.name)} column {'/'.join(field)!r} (variable-length "
                               "sequences or references, which have no array form)")  # fmt: skip
            continue
        names = (*axes, *(None,) * len(extra)) if axes is not None else None
        entry = Entry(name, reader, field, None, dict(user), dict(enc), (*info.shape, *extra),
                      vlen_str_dtype() if text else times.get(field, base), node_name(obj.name), names)  # fmt: skip
        entry.netcdf_dims, entry.time = axes is not None, field in times
        if text:
            entry.decode = _as_text
        out.append(entry)
    return out


def _vlen_text(dtype: np.dtype) -> bool:
    import h5py

    info = h5py.check_string_dtype(dtype)
    return info is not None and info.length is None


def _as_text(values: np.ndarray) -> np.ndarray:
    """h5py's bytes of variable-length string members as ``str`` (undecodable bytes escaped)."""
    values = np.asarray(values, dtype=object)
    out = np.empty(values.shape, dtype=object)
    flat = out.reshape(-1)
    for i, v in enumerate(values.reshape(-1)):
        flat[i] = (
            v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else ("" if v is None else str(v))
        )
    return out


def _refused(obj, path: str, allowed, names: list[str]) -> Daskh5Error | None:
    """The error for a dataset whose filters are outside ``allowed``, or None."""
    try:
        filters = dataset_filters(obj)
    except Exception:  # damaged metadata: describe_array says so, and the node is skipped
        return None
    refused = refused_filters(filters, allowed)
    if not refused:
        return None
    exc = refusal(path, obj.name, refused)
    return type(exc)(f"{exc}; or open the rest with drop_variables={names!r}")


def group_variables(
    path: str,
    group: str,
    decode_pickles: bool = False,
    allow_external: bool = False,
    allowed=SAFE_FILTERS,
    drop=frozenset(),
    max_attr_size: int | str | None = DEFAULT_MAX_ATTR_SIZE,
):
    """(entries, group attributes, skipped-node messages, stored coordinate names) of one group.

    A child whose values live outside the file raises
    :class:`~daskh5.errors.ExternalDataError` unless ``allow_external``; a link
    name containing ``/`` (it would alias another node) is skipped with a note.
    A node whose filters are outside ``allowed`` raises
    :class:`~daskh5.UnsupportedFilterError` (opting in is the caller's decision)
    unless all its variables are in ``drop``.
    """
    import h5py

    with open_h5(path) as f:
        g = lookup(f, group, allow_external=allow_external) if group not in ("/", "") else f
        if not isinstance(g, h5py.Group):
            raise NodeNotFound(f"{path}: {group!r} is a {node_kind(g)}, not a group")
        return _group_variables(
            path,
            f,
            g,
            decode_pickles,
            max_attr_size,
            allow_external=allow_external,
            allowed=allowed,
            drop=drop,
        )


def _group_variables(
    path: str,
    f,
    g,
    decode_pickles: bool,
    max_attr_size,
    *,
    allow_external=False,
    allowed=SAFE_FILTERS,
    drop=frozenset(),
):
    """:func:`group_variables` of the open h5py group ``g`` of the open file ``f``."""
    import h5py

    with damaged_metadata(path):
        budget = AttrBudget(f, parse_limit(max_attr_size))
        gattrs, gsystem = split_attrs(g, decode_pickles, budget, f"{path}:{node_name(g.name)}")
        pandas = pandas_entries(path, g, decode_pickles, allow_external, allowed)
        if pandas is not None:  # pandas' bookkeeping (pickled column lists...) is not user metadata
            data, coords, coord_names, skipped = pandas
            for e in coords + data:
                e.encoding["pandas_attrs"] = gattrs
            return coords + data, {}, skipped, coord_names
        layout = group_dims(g)
        members, skipped = resolve_children(
            g, allow_external
        )  # creation order if tracked; soft links followed
        children = {k: o for k, o in members.items() if k not in layout.dimension_only}
        tables = [c for c, o in children.items() if _is_record(o)]
        leaf_names = {c for c in children if c not in tables}
        entries = []
        for child, obj in children.items():
            if not isinstance(obj, h5py.Dataset):
                continue
            kind = node_kind(obj)
            reason = skip_reason(obj) if kind != "VLArray" else None
            names, prefix = [child], ""
            if child in tables and reason is None:
                fields = _flatten_fields(numpy_dtype(obj))
                names = [".".join(fp) for fp, _ in fields]
                if len(tables) > 1 or any(n in leaf_names for n in names):
                    prefix = f"{child}."
                    names = [prefix + n for n in names]
            if reason is None and kind in ("Table", "Array", "CArray", "EArray", "Dataset"):
                if names and all(n in drop for n in names):
                    continue
                refused = _refused(obj, path, allowed, names)
                if refused is not None:  # the caller's decision to make: an error, not a skipped node
                    raise refused
            try:
                if reason is not None:
                    skipped.append(f"{g.name.rstrip('/')}/{child} ({reason})")
                elif child in tables:
                    entries += _table_entries(
                        path,
                        obj,
                        decode_pickles,
                        prefix,
                        layout,
                        child,
                        allow_external,
                        allowed,
                        budget,
                        skipped,
                    )
                elif kind == "VLArray":
                    skipped.append(f"{node_name(obj.name)} (VLArray: read it with daskh5.read_ragged)")
                elif kind in ("Array", "CArray", "EArray", "Dataset"):
                    entries += _leaf_entries(
                        path, obj, kind, decode_pickles, layout, child, allow_external, allowed, budget
                    )
                else:
                    skipped.append(f"{node_name(obj.name)} ({kind})")
            except ExternalDataError:
                raise
            except Daskh5Error as exc:
                skipped.append(f"{node_name(obj.name)} ({exc})")
        ragged = [e.node for e in entries if f"{e.node.rsplit('/', 1)[-1]}_start_and_stop" in members]
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


def group_unlimited(path: str, group: str, allow_external: bool = False) -> set[str]:
    """The unlimited dimensions a group defines (dimension scales of unlimited maximum shape)."""
    import h5py

    with open_h5(path) as f:
        g = lookup(f, group, allow_external=allow_external) if group not in ("/", "") else f
        return group_dims(g).unlimited if isinstance(g, h5py.Group) else set()


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
        else:
            generated = tuple(
                f"row_{e.shape[0]}" if i == 0 else f"{e.name}_dim_{i}" for i in range(len(e.shape))
            )
            named = e.axis_names if e.axis_names is not None and len(e.axis_names) == len(e.shape) else ()
            dims = tuple(n if n is not None else g for n, g in zip(named, generated)) or generated
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

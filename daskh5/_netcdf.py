"""netCDF-4 and HDF5 dimension scales: which datasets are dimensions, and each variable's dims.

A netCDF-4 file is an HDF5 file whose dimensions are HDF5 dimension scales
(datasets with ``CLASS="DIMENSION_SCALE"``).  netCDF-C's conventions, as
netCDF4-python and h5netcdf read them:

* a scale names its own axis; a 1-D scale is a coordinate variable, unless its
  ``NAME`` says "This is a netCDF dimension but not a netCDF variable" (a
  dimension only, whose values are meaningless);
* a variable's dimensions are the scales attached to its axes
  (``DIMENSION_LIST``; when several are attached to one axis, the last one);
  a multi-dimensional coordinate variable lists its dimension ids in
  ``_Netcdf4Coordinates``;
* a variable called like a dimension but not its coordinate is stored as
  ``_nc4_non_coord_<name>``;
* a dimension of a group is visible in its child groups, unless a child
  defines one of the same name (which then shadows it);
* an unlimited dimension is a scale whose maximum shape is unlimited; its
  size is that of its longest variable, and shorter variables are padded
  with their fill value.

Nothing here reads data: only attributes and shapes, through h5py.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

__all__ = ["GroupDims", "HIDDEN_ATTRS", "NON_COORD_PREFIX", "attr_value", "group_dims", "variable_name"]

NON_COORD_PREFIX = "_nc4_non_coord_"
_NOT_A_VARIABLE = b"This is a netCDF dimension but not a netCDF variable"

#: netCDF-C's and HDF5's bookkeeping attributes: never user attributes, never in ``encoding``
#: (``DIMENSION_LIST`` and ``REFERENCE_LIST`` hold object references, which do not pickle).
HIDDEN_ATTRS = frozenset(
    {"_NCProperties", "_Netcdf4Dimid", "_Netcdf4Coordinates", "_nc3_strict", "_IsNetcdf4", "_SuperblockVersion",
     "DIMENSION_LIST", "REFERENCE_LIST", "DIMENSION_LABELS"}
)  # fmt: skip


@dataclass
class Dimension:
    """One dimension scale visible from a group."""

    name: str
    size: int
    unlimited: bool
    dimid: int | None
    node: str  # the scale's path in the file
    own: bool = True  # defined in the group itself, not an ancestor


@dataclass
class GroupDims:
    """The dimensions of one group and the dims of its datasets, as netCDF names them."""

    dims: dict[str, Dimension] = field(default_factory=dict)  # visible from the group, by name
    var_dims: dict[str, tuple[str | None, ...]] = field(default_factory=dict)  # by dataset name
    dimension_only: set[str] = field(default_factory=set)  # dataset names that are not variables

    @property
    def unlimited(self) -> set[str]:
        """Names of the group's own unlimited dimensions (as ``encoding["unlimited_dims"]``)."""
        return {d.name for d in self.dims.values() if d.unlimited and d.own}

    def sizes(self, dims: tuple[str | None, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
        """The netCDF shape of a variable: unlimited axes take their dimension's size."""
        out = []
        for name, n in zip(dims, shape):
            dim = self.dims.get(name) if name is not None else None
            out.append(max(n, dim.size) if dim is not None and dim.unlimited else n)
        return tuple(out)


def _text(value) -> str:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, np.bytes_)) else str(value)


def is_scale(obj) -> bool:
    """Whether an h5py dataset is an HDF5 dimension scale."""
    try:
        return "CLASS" in obj.attrs and _text(obj.attrs["CLASS"]) == "DIMENSION_SCALE"
    except Exception:  # an attribute h5py cannot read
        return False


def is_dimension_only(obj) -> bool:
    """Whether a dimension scale is netCDF's "dimension but not a variable"."""
    try:
        name = obj.attrs.get("NAME", b"")
    except Exception:
        return False
    raw = (
        name.encode()
        if isinstance(name, str)
        else bytes(name)
        if isinstance(name, (bytes, np.bytes_))
        else b""
    )
    return raw.startswith(_NOT_A_VARIABLE)


def variable_name(h5name: str) -> str:
    """A dataset's netCDF variable name (netCDF's ``_nc4_non_coord_`` prefix removed)."""
    return h5name[len(NON_COORD_PREFIX) :] if h5name.startswith(NON_COORD_PREFIX) else h5name


def _int_attr(obj, key: str):
    try:
        value = obj.attrs.get(key)
    except Exception:
        return None
    if value is None:
        return None
    arr = np.asarray(value).reshape(-1)
    return int(arr[0]) if arr.size and arr.dtype.kind in "iu" else None


def _scale_size(obj) -> int:
    """A scale's size; for an unlimited one, the longest axis referring to it (netCDF-C's rule)."""
    size = int(obj.shape[0]) if obj.shape else 0
    if obj.maxshape and obj.maxshape[0] is None:
        try:
            refs = obj.attrs.get("REFERENCE_LIST")
        except Exception:
            refs = None
        if refs is not None:
            for ref, axis in np.asarray(refs).reshape(-1).tolist():
                try:
                    size = max(size, int(obj.file[ref].shape[int(axis)]))
                except Exception:  # a dangling reference: the scale's own length stands
                    continue
    return size


def _members(group):
    """``(name, object)`` of the group's members inside this file: external links are never opened
    (a FIFO behind one blocks HDF5 forever), hard links are opened from the group itself (cheap
    however deep it is), soft links are followed link by link."""
    from daskh5._containment import child_names, follow
    from daskh5.errors import Daskh5Error

    base = group.name.rstrip("/")
    links = group.id.links
    for key in child_names(group)[0]:
        raw = key.encode("utf-8", "surrogateescape")
        try:
            kind = links.get_info(raw).type
            if kind == _HARD_LINK:
                yield key, group[raw]
            elif kind == _SOFT_LINK:
                yield key, follow(group.file, f"{base}/{key}", allow_external=False)
        except (Daskh5Error, KeyError, OSError, ValueError):
            continue


_HARD_LINK, _SOFT_LINK = 0, 1  # H5L_TYPE_HARD, H5L_TYPE_SOFT

_visible: contextvars.ContextVar[dict | None] = contextvars.ContextVar("daskh5_netcdf_visible", default=None)


@contextlib.contextmanager
def shared_dims() -> Iterator[None]:
    """Within the block, each group's visible dimensions are worked out once and reused by its
    children (a tree is opened parents first): a nest of ``n`` groups costs ``n``, not ``n**2``."""
    token = _visible.set({})
    try:
        yield
    finally:
        _visible.reset(token)


def _own_dims(group) -> dict[str, Dimension]:
    import h5py

    out = {}
    for key, obj in _members(group):
        if isinstance(obj, h5py.Dataset) and is_scale(obj) and obj.ndim >= 1:
            unlimited = bool(obj.maxshape) and obj.maxshape[0] is None
            out[key] = Dimension(key, _scale_size(obj), unlimited, _int_attr(obj, "_Netcdf4Dimid"), obj.name)
    return out


def _visible_dims(group) -> dict[str, Dimension]:
    """Dimensions of the group and its ancestors; a child's shadows its parent's of the same name."""
    cache = _visible.get()
    if cache is None:
        cache = {}
    key = lambda g: (g.file.id.id, g.name)  # noqa: E731
    chain = [group]
    while chain[-1].name != "/" and key(chain[-1]) not in cache:
        chain.append(chain[-1].parent)
    dims: dict[str, Dimension] = dict(cache.get(key(chain[-1]), {}))
    start = len(chain) - 1 if key(chain[-1]) in cache else len(chain)
    for g in reversed(chain[:start]):
        own = _own_dims(g)
        merged = {name: dataclasses.replace(d, own=False) for name, d in dims.items()}
        merged.update(own)
        dims = merged
        cache[key(g)] = dims
    return {name: dataclasses.replace(d, own=name in _own_names(group, dims)) for name, d in dims.items()}


def _own_names(group, dims: dict[str, Dimension]) -> set[str]:
    base = group.name.rstrip("/")
    return {name for name, d in dims.items() if d.node.rpartition("/")[0] == base}


def _attached(obj) -> tuple[str | None, ...] | None:
    """Dimension names from ``DIMENSION_LIST`` (the last scale on each axis), ``None`` for a bare axis."""
    try:
        dl = obj.attrs.get("DIMENSION_LIST")
    except Exception:
        return None
    if dl is None or len(dl) != obj.ndim:
        return None
    names = []
    for refs in dl:
        refs = [r for r in np.asarray(refs).reshape(-1) if r]
        try:
            names.append(obj.file[refs[-1]].name.rsplit("/", 1)[-1] if refs else None)
        except Exception:  # a reference to nothing: that axis has no name
            names.append(None)
    return tuple(names)


def _dims_of(obj, key: str, dims: dict[str, Dimension]) -> tuple[str | None, ...] | None:
    by_id = {d.dimid: d.name for d in dims.values() if d.dimid is not None}
    if is_scale(obj):
        ids = obj.attrs.get("_Netcdf4Coordinates") if "_Netcdf4Coordinates" in obj.attrs else None
        if ids is not None and len(ids) == obj.ndim and all(int(i) in by_id for i in ids):
            return tuple(by_id[int(i)] for i in ids)
        return (key,) + (None,) * (obj.ndim - 1) if obj.ndim else None
    attached = _attached(obj) or (None,) * obj.ndim
    if all(attached):
        return attached
    labels = _labels(obj)  # h5py's dims[i].label names an axis without a scale
    return tuple(a or b for a, b in zip(attached, labels))


def _labels(obj) -> tuple[str | None, ...]:
    try:
        raw = obj.attrs.get("DIMENSION_LABELS")
    except Exception:
        raw = None
    if raw is None or np.ndim(raw) != 1 or len(raw) != obj.ndim:
        return (None,) * obj.ndim
    return tuple(_text(v) or None for v in raw)


def group_dims(group) -> GroupDims:
    """netCDF's view of an h5py group: visible dimensions, dims of each dataset, dimension-only scales.

    Parameters
    ----------
    group : h5py.Group
        An open group (metadata only is read).

    Returns
    -------
    GroupDims
        ``var_dims`` maps a dataset's name to one name per axis (``None``
        where the file names none); datasets without dimension scales are
        left out.
    """
    import h5py

    out = GroupDims(dims=_visible_dims(group))
    for key, obj in _members(group):
        if not isinstance(obj, h5py.Dataset):
            continue
        if is_scale(obj) and is_dimension_only(obj):
            out.dimension_only.add(key)
            continue
        try:
            dims = _dims_of(obj, key, out.dims)
        except Exception:  # unreadable bookkeeping: the generic rules name the axes
            dims = None
        if dims is not None and any(d is not None for d in dims):
            out.var_dims[key] = dims
    return out


def attr_value(value):
    """An attribute value as netCDF readers give it (h5netcdf through xarray).

    Numeric scalars keep their numpy dtype (a float32 ``scale_factor`` unpacks
    to float32); arrays of one element become that element; fixed-width byte
    strings longer than one character are decoded as UTF-8 (undecodable bytes
    become U+FFFD, as netCDF4-python gives them); arrays of strings become lists; single characters
    (``S1``) stay bytes, as netCDF char attributes.
    """
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "S" and value.dtype.itemsize > 1:
            items = [_decoded(b) for b in value.reshape(-1).tolist()]
        elif value.dtype.kind in "SOU":
            items = [_decoded(b) if isinstance(b, bytes) and value.dtype.kind != "S" else b
                     for b in value.reshape(-1).tolist()]  # fmt: skip
        else:
            return value.reshape(-1)[0] if value.size == 1 else value
        return items[0] if len(items) == 1 else items
    return value


def _decoded(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


_COMPRESSION_FLAGS = {1: "zlib", 4: "szip", 307: "bzip2", 32001: "blosc", 32015: "zstd"}
_H5PY_COMPRESSION = {
    32000: ("lzf", lambda cd: None),
    4: ("szip", lambda cd: ("nn" if cd and cd[0] & 32 else "ec", int(cd[1]) if len(cd) > 1 else 0)),
}
_BLOSC_NAMES = {
    0: "blosc_lz",
    1: "blosc_lz4",
    2: "blosc_lz4hc",
    3: "blosc_snappy",
    4: "blosc_zlib",
    5: "blosc_zstd",
}


def storage_encoding(info) -> dict:
    """The ``encoding`` keys xarray's netCDF backends report for a dataset's storage.

    ``dtype`` (as stored, byte order included), ``chunksizes`` (``None`` when
    not chunked), ``contiguous``, ``zlib``/``szip``/``bzip2``/``blosc``/``zstd``
    flags (``szip`` and ``blosc`` as netCDF4-python's dicts of their settings),
    ``complevel`` (zlib), ``compression``/``compression_opts`` (h5py's names for
    LZF and SZIP), ``fletcher32``, ``source`` and ``original_shape``.
    """
    ids = {fid: cd for fid, cd in info.filters}
    chunked = info.layout == "chunked"
    enc = {"dtype": info.disk_dtype, "contiguous": not chunked,
           "chunksizes": tuple(info.chunkshape) if chunked and info.chunkshape else None}  # fmt: skip
    enc.update({flag: fid in ids for fid, flag in _COMPRESSION_FLAGS.items()})
    if 1 in ids:
        enc["complevel"] = ids[1][0] if ids[1] else 0
    for fid, (name, opts) in _H5PY_COMPRESSION.items():  # h5py's spelling, as h5netcdf reports it
        if fid in ids:
            enc["compression"], enc["compression_opts"] = name, opts(ids[fid])
    if 4 in ids and len(ids[4]) >= 2:  # netCDF4-python's spelling
        enc["szip"] = {"coding": "nn" if ids[4][0] & 32 else "ec", "pixels_per_block": int(ids[4][1])}
    if 32001 in ids and len(ids[32001]) >= 6:
        cd = ids[32001]
        code = cd[6] if len(cd) > 6 else 0
        enc["blosc"] = {"compressor": _BLOSC_NAMES.get(code, f"blosc_{code}"), "shuffle": int(cd[5])}
    enc["fletcher32"] = 3 in ids
    enc["source"], enc["original_shape"] = info.path, tuple(info.shape)
    return enc


def enum_dtype(obj, dtype: np.dtype) -> np.dtype:
    """``dtype`` of an enum dataset with netCDF's ``enum_name`` (the named datatype it uses) added.

    netCDF enum types are named datatypes in the variable's group or an
    ancestor; the dataset's type is a copy of one, found by comparing types.
    """
    import h5py

    meta = dict(dtype.metadata or {})
    if "enum" not in meta:
        return dtype
    tid, group = obj.id.get_type(), obj.parent
    while True:
        for name, member in _members(group):
            if isinstance(member, h5py.Datatype) and member.id.equal(tid):
                return np.dtype(dtype, metadata={**meta, "enum_name": name})
        if group.name == "/":
            return dtype
        group = group.parent


def holds_references(value) -> bool:
    """Whether an attribute value is or holds HDF5 object/region references (they do not pickle)."""
    import h5py

    if isinstance(value, (h5py.Reference, h5py.RegionReference)):
        return True
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return False
    if h5py.check_ref_dtype(dtype) is not None:
        return True
    return dtype.kind == "O" and any(
        isinstance(v, (h5py.Reference, h5py.RegionReference)) for v in np.ravel(value)
    )

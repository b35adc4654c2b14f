"""HDF5 types beyond plain numbers: read through h5py, converted, or skipped with a reason.

:class:`LibraryReader` is a small picklable array-like (path, node, shape,
dtype) for datasets whose elements live outside the chunk bytes
(variable-length strings, in HDF5's global heap) or that HDF5 must convert
(H5T_ARRAY element types, read with their extra axes).  It opens the file
for each read and closes it, so no handle outlives the read (an open handle
without HDF5 file locking keeps locking readers such as h5netcdf out).

:func:`padded` gives a selection of a variable that is shorter than its
netCDF (unlimited) dimension: the stored part, then its fill value.

PyTables' ``Time32``/``Time64`` atoms are HDF5 UNIX time types, which numpy
(and so h5py) cannot represent: their bytes are read as integers and
converted to ``datetime64`` (:func:`to_datetimes`).  :func:`skip_reason`
says why a dataset cannot be a variable at all.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = [
    "LibraryReader", "compound_with_times", "library_kind", "padded", "resolve_children", "skip_reason",
    "time_layout", "to_datetimes", "vlen_str_dtype",
]  # fmt: skip


def vlen_str_dtype() -> np.dtype:
    """The object dtype xarray's netCDF backends use for variable-length strings."""
    return np.dtype("O", metadata={"element_type": str})


def library_kind(obj) -> str | None:
    """``"str"`` (variable-length strings) or ``"array"`` (an H5T_ARRAY element type), else None."""
    import h5py

    try:
        dtype = obj.dtype
    except (TypeError, ValueError):
        return None
    info = h5py.check_string_dtype(dtype)
    if info is not None and info.length is None:
        return "str"
    if dtype.subdtype is not None and dtype.subdtype[0].kind in "biufcS" and dtype.subdtype[0].fields is None:
        return "array"
    return None


class LibraryReader:
    """A picklable reader of one dataset through h5py (outer indexing, one vector per axis).

    Parameters
    ----------
    path, node : str
        The file and the dataset's path in it.
    kind : str
        ``"str"``: variable-length strings, read as ``str`` objects
        (undecodable bytes kept with ``surrogateescape``); ``"array"``: an
        H5T_ARRAY element type, whose axes trail the dataset's.
    shape : tuple of int
        The shape as read (the dataset's, plus the element type's for ``"array"``).
    dtype : numpy.dtype
        The dtype as read.
    """

    def __init__(self, path: str, node: str, kind: str, shape: tuple[int, ...], dtype: np.dtype, inner=()):
        self.path, self.node, self.kind = path, node, kind
        self.shape, self.dtype, self.inner = tuple(shape), np.dtype(dtype), tuple(inner)
        self.ndim = len(self.shape)
        self.fill = "" if kind == "str" else np.zeros((), self.dtype)[()]

    def __dask_tokenize__(self):
        import os

        return ("daskh5.LibraryReader", self.path, self.node, os.stat(self.path).st_mtime_ns, self.shape)

    def __getitem__(self, key) -> np.ndarray:
        from daskh5._nodes import lookup, open_h5
        from daskh5._reader import _normalize

        sel, drop = _normalize(key, self.shape)
        h5sel, after = [], []
        for s in sel:
            if isinstance(s, tuple):
                h5sel.append(slice(*s))
                after.append(slice(None))
            elif s.size == 0:
                h5sel.append(slice(0, 0))
                after.append(slice(None))
            else:
                lo = int(s.min())
                h5sel.append(slice(lo, int(s.max()) + 1))
                after.append(s - lo)
        outer = self.ndim - len(self.inner)
        with open_h5(self.path) as f:  # opened per read: no handle is left to clash with HDF5's locking
            ds = lookup(f, self.node)
            if self.kind == "str":
                from daskh5._vlen import check_dataset_claim

                check_dataset_claim(self.path, ds, tuple(h5sel))
                out = np.asarray(ds.asstr(errors="surrogateescape")[tuple(h5sel)], dtype=object)
            else:
                out = np.asarray(ds[tuple(h5sel[:outer])] if outer else ds[()])
                out = out[(slice(None),) * outer + tuple(h5sel[outer:])]
        for axis, a in enumerate(after):
            if not isinstance(a, slice):
                out = np.take(out, a, axis=axis)
        if drop:
            out = out.reshape([m for i, m in enumerate(out.shape) if i not in drop])
        return out


def _positions(k, n: int) -> np.ndarray:
    if isinstance(k, slice):
        return np.arange(*k.indices(n))
    if isinstance(k, (int, np.integer)):
        return np.array([int(k) % n])
    arr = np.asarray(k)
    return np.flatnonzero(arr) if arr.dtype == bool else arr.astype(np.int64) % max(n, 1)


def padded(read, stored: tuple[int, ...], shape: tuple[int, ...], key: tuple, fill) -> np.ndarray:
    """``key`` of a variable of ``shape`` whose file holds only ``stored``: the rest is ``fill``.

    ``read`` takes an outer-indexing key within ``stored``; ``key`` holds slices,
    integers or one integer array per axis.
    """
    key = tuple(key) + (slice(None),) * (len(shape) - len(key))
    positions = [_positions(k, n) for k, n in zip(key, shape)]
    inside = [p < s for p, s in zip(positions, stored)]
    part_key = tuple(p[m] for p, m in zip(positions, inside))
    sizes = [len(p) for p in positions]
    probe = read(tuple(slice(0, 0) for _ in stored))
    out = np.full(sizes, fill, dtype=probe.dtype)
    if all(len(p) for p in part_key):
        out[np.ix_(*inside)] = read(tuple(_compact(p) for p in part_key))
    drop = [i for i, k in enumerate(key) if isinstance(k, (int, np.integer))]
    return out.reshape([m for i, m in enumerate(sizes) if i not in drop]) if drop else out


def _compact(p: np.ndarray):
    """A run of consecutive positions as a slice, else the array."""
    if len(p) and (np.diff(p) == 1).all():
        return slice(int(p[0]), int(p[-1]) + 1)
    return p


# -- PyTables Time32/Time64 atoms ----------------------------------------------------------------
#: HDF5's UNIX time types -> (how the bytes are laid out, the datetime64 daskh5 gives).
#: Time32 is whole seconds; Time64 (PyTables' timeval) packs seconds in the high and
#: microseconds in the low 32 bits of a 64-bit integer.
_TIMES = {
    "UNIX_D32LE": ("<i4", "datetime64[s]"),
    "UNIX_D32BE": (">i4", "datetime64[s]"),
    "UNIX_D64LE": ("<i8", "datetime64[us]"),
    "UNIX_D64BE": (">i8", "datetime64[us]"),
}


def time_layout(tid) -> tuple[np.dtype, np.dtype] | None:
    """(on-disk integer dtype, datetime64 dtype) of an HDF5 UNIX time type, else None."""
    import h5py

    if tid.get_class() != h5py.h5t.TIME:
        return None
    for name, (disk, dt) in _TIMES.items():
        if tid.equal(getattr(h5py.h5t, name)):
            return np.dtype(disk), np.dtype(dt)
    return None


def time_array_layout(tid) -> tuple[tuple[np.dtype, np.dtype] | None, tuple[int, ...]]:
    """(:func:`time_layout` of the element, its shape) of an H5T_ARRAY of a UNIX time type, else (None, ())."""
    import h5py

    if tid.get_class() != h5py.h5t.ARRAY:
        return None, ()
    layout = time_layout(tid.get_super())
    return layout, (tuple(int(n) for n in tid.get_array_dims()) if layout is not None else ())


def compound_with_times(tid) -> tuple[np.dtype, dict[tuple[str, ...], np.dtype]] | None:
    """A compound type with time members as numpy: (dtype, {field path: datetime64 dtype}), or None.

    h5py cannot map HDF5 time members to numpy; their bytes are integers.
    """
    import h5py

    if tid.get_class() != h5py.h5t.COMPOUND:
        return None
    names, formats, offsets, times = [], [], [], {}
    for i in range(tid.get_nmembers()):
        name = tid.get_member_name(i).decode("utf-8", "replace")
        member = tid.get_member_type(i)
        shape = ()
        if member.get_class() == h5py.h5t.ARRAY:
            shape, member = tuple(member.get_array_dims()), member.get_super()
        layout = time_layout(member)
        nested = compound_with_times(member) if layout is None else None
        if layout is not None:
            base = layout[0]
            times[(name,)] = layout[1]
        elif nested is not None:
            base = nested[0]
            times.update({(name, *k): v for k, v in nested[1].items()})
        else:
            base = member.dtype
        names.append(name)
        formats.append((base, shape) if shape else base)
        offsets.append(tid.get_member_offset(i))
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": tid.get_size()})
    return dtype, times


def to_datetimes(raw: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Time32 seconds or Time64 packed timevals as ``dtype`` (datetime64[s] or [us]).

    Values that are datetime64 already (a reader converted them) are only cast.
    """
    if raw.dtype.kind == "M":
        return raw.astype(dtype, copy=False)
    if raw.dtype.itemsize == 4:
        return raw.astype("int64").view("datetime64[s]").astype(dtype)
    packed = raw.astype("int64")
    usec = ((packed & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000  # a signed 32-bit field: -1.5 s is (-1, -500000)
    micros = (packed >> 32) * 1_000_000 + usec
    return micros.view("datetime64[us]").astype(dtype)


# -- what the xarray engine skips, with a reason ---------------------------------------------------
def skip_reason(obj) -> str | None:
    """Why a dataset cannot be a variable (it is listed in a warning), or None.

    Null dataspaces (``h5py.Empty``), opaque elements, object and region
    references, variable-length sequences other than strings, and floats
    wider than float64 that are not this machine's ``long double``.
    """
    import h5py

    if obj.shape is None:
        return "an empty dataset (HDF5 null dataspace): it holds no values"
    tid = obj.id.get_type()
    cls = tid.get_class()
    if cls == h5py.h5t.OPAQUE:
        return "opaque data (HDF5 OPAQUE type), which has no numeric meaning; read its bytes with h5py"
    if cls == h5py.h5t.REFERENCE:
        return "object references, which point at other nodes rather than hold values"
    if cls == h5py.h5t.VLEN and library_kind(obj) != "str":
        return "variable-length sequences; daskh5.read_ragged reads PyTables VLArrays"
    if cls == h5py.h5t.FLOAT and tid.get_size() > 8 and not tid.equal(h5py.h5t.NATIVE_LDOUBLE):
        return (
            f"{8 * tid.get_size()}-bit floats in a format numpy has no type for here (e.g. IEEE quad "
            "precision); convert the node to float64 where it was written"
        )
    return None


def resolve_children(group, allow_external: bool = False) -> tuple[dict, list[str]]:
    """The group's members by link name (soft links followed), and what was not resolved.

    Every member is looked up link by link (:func:`daskh5._containment.follow`):
    one stored behind an external link raises
    :class:`~daskh5.errors.ExternalDataError` unless ``allow_external``.  A soft
    link to nothing and a named (committed) datatype are listed, not opened; in
    netCDF-4 files named datatypes are netCDF's user types (compound, enum,
    vlen), described by the variables that use them, and are not listed.  Link
    names containing ``/`` (they would alias another node) are listed too.
    """
    import h5py

    from daskh5._containment import child_names, follow
    from daskh5.errors import FileNotFound, NodeNotFound

    out, skipped = {}, []
    netcdf = "_NCProperties" in group.file.attrs
    base = group.name.rstrip("/")
    names, bad = child_names(group)
    skipped += [
        f"a link named {b!r} in {group.name} (a '/' in a link name would alias another node)" for b in bad
    ]
    links = group.id.links
    for name in names:
        try:
            raw = name.encode("utf-8", "surrogateescape")
            if links.get_info(raw).type == 0:  # a hard link: opened from the group, cheap however deep it is
                obj = group[raw]
            else:  # soft and external links: checked link by link
                obj = follow(group.file, f"{base}/{name}", allow_external=allow_external)
        except NodeNotFound:
            link = group.get(name, getlink=True)
            what = f"a soft link to {link.path}" if isinstance(link, h5py.SoftLink) else "a link"
            skipped.append(f"{base}/{name} ({what}, which does not exist)")
            continue
        except FileNotFound:  # an opted-in external link into a file that is not there
            file_name, target = group.id.links.get_val(raw)
            skipped.append(
                f"{base}/{name} (an external link to {target.decode('utf-8', 'replace')!r} in "
                f"{os.fsdecode(file_name)!r}, a file that does not exist)"
            )
            continue
        if isinstance(obj, h5py.Datatype):
            if not netcdf:
                skipped.append(f"{base}/{name} (a named datatype: it describes data, it holds none)")
            continue
        out[name] = obj
    return out, skipped


def numpy_dtype(obj) -> np.dtype | None:
    """An h5py dataset's numpy dtype, time members as their integers; None if numpy has none."""
    try:
        return obj.dtype
    except (TypeError, ValueError):
        tid = obj.id.get_type()
        layout = time_layout(tid)
        if layout is not None:
            return layout[0]
        layout, dims = time_array_layout(tid)
        if layout is not None:  # a shaped Time atom: an array of the time type
            return np.dtype((layout[0], dims))
        mixed = compound_with_times(tid)
        return None if mixed is None else mixed[0]


def _close_library_files() -> None:
    """Close the h5py handles the readers cached (``daskh5.close_files()`` calls this)."""
    from daskh5 import _reader

    with _reader._h5_lock:
        while _reader._h5_files:
            _reader._h5_files.popitem()[1].close()


def _register() -> None:
    from daskh5 import _files

    if _close_library_files not in _files._close_hooks:
        _files._close_hooks.append(_close_library_files)


_register()

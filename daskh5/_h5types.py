"""HDF5 types the byte reader does not decode itself, read through h5py, and netCDF's padding.

:class:`LibraryReader` is a small picklable array-like (path, node, shape,
dtype) for datasets whose elements live outside the chunk bytes
(variable-length strings, in HDF5's global heap) or that HDF5 must convert
(H5T_ARRAY element types, read with their extra axes).  It reads through the
per-process h5py handle cache of :mod:`daskh5._reader`, under its lock.

:func:`padded` gives a selection of a variable that is shorter than its
netCDF (unlimited) dimension: the stored part, then its fill value.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LibraryReader", "library_kind", "padded", "vlen_str_dtype"]


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
        from daskh5._reader import _h5_dataset, _h5_lock, _normalize

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
        with _h5_lock:
            ds = _h5_dataset(self, None)
            if self.kind == "str":
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

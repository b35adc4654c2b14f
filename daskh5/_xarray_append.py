"""``to_pytables(ds, path, append_dim="time")``: grow a file's unlimited dimension, as ``to_zarr`` does.

Variables along ``append_dim`` are CF-encoded with the encoding they already
have in the file (units, dtype, scale and offset, fill value) and written
after its last element; their other dimensions must match the file's.
Variables without ``append_dim`` that the file holds, with the same shape, are
overwritten.  Everything is checked before the file is copied, and written
into the copy (:func:`daskh5._safe_tables.atomic_target`).
"""

from __future__ import annotations

import os

import numpy as np

from daskh5._safe_tables import atomic_target, shown
from daskh5._verify import hdf5_errors

__all__ = ["append_xarray"]

_KEPT = (
    "units",
    "calendar",
    "dtype",
    "scale_factor",
    "add_offset",
    "_FillValue",
    "missing_value",
    "_Unsigned",
)


def _existing(path: str, group: str):
    import xarray as xr

    with xr.open_dataset(path, engine="daskh5", group=group or "/") as old:
        return {k: (v.dims, v.shape, dict(v.encoding)) for k, v in old.variables.items()}, old.encoding


def _h5_name(f, group: str, name: str) -> str:
    from daskh5._netcdf import NON_COORD_PREFIX

    base = group.rstrip("/")
    return f"{base}/{name}" if f"{base}/{name}" in f else f"{base}/{NON_COORD_PREFIX}{name}"


def _encoded(var, name: str, old_encoding: dict):
    """``var`` encoded as the file's variable ``name`` is (CF, then netCDF-4's strings)."""
    import xarray as xr
    from xarray.backends.netCDF4_ import _encode_nc4_variable

    var = var.copy(deep=False)
    var.encoding = {k: old_encoding[k] for k in _KEPT if k in old_encoding}
    encoded = xr.conventions.encode_cf_variable(var, name=name)
    return _encode_nc4_variable(encoded, name=name)


def _plan(ds, old: dict, unlimited: set, append_dim: str, where: str) -> tuple[list, list]:
    """``(variables to append, variables to overwrite)``, or why not."""
    if append_dim not in ds.dims:
        raise ValueError(f"append_dim={append_dim!r} is not a dimension of the Dataset ({list(ds.dims)})")
    if append_dim not in unlimited:
        raise ValueError(
            f"{where}: dimension {append_dim!r} is not unlimited in the file; only unlimited dimensions grow "
            f"(write the file with unlimited_dims=[{append_dim!r}])"
        )
    grow, replace = [], []
    for name, var in ds.variables.items():
        if name not in old:
            raise ValueError(
                f"{where}: variable {name!r} is not in the file; append only variables it has "
                "(add new ones with mode='a' and no append_dim)"
            )
        dims, shape, _enc = old[name]
        if tuple(var.dims) != tuple(dims):
            raise ValueError(f"{where}: variable {name!r} has dims {var.dims} here and {dims} in the file")
        other = [(d, a, b) for d, a, b in zip(dims, var.shape, shape, strict=True) if d != append_dim]
        bad = [(d, a, b) for d, a, b in other if a != b]
        if bad:
            d, a, b = bad[0]
            raise ValueError(
                f"{where}: variable {name!r} has {a} elements along {d!r}, the file {b}; "
                f"only {append_dim!r} may differ when appending"
            )
        (grow if append_dim in dims else replace).append(name)
    return grow, replace


def append_xarray(obj, path, group: str, *, append_dim: str, progress: bool, encoding=None) -> None:
    """Append ``obj`` along ``append_dim`` to ``group`` of ``path`` (see :func:`daskh5.to_pytables`)."""
    import dask.array as da
    import h5py

    from daskh5._netcdf_write import strip_back_references
    from daskh5._xarray_write import as_dataset, validate, write_blocks, write_xarray

    path = os.path.abspath(os.fspath(path))
    ds = as_dataset(obj)
    validate(ds, None, None)
    if encoding:
        raise ValueError(
            "to_pytables: encoding= cannot be combined with append_dim (the file's encoding is used)"
        )
    if not os.path.isfile(path):  # nothing to append to: a new file whose append_dim can grow
        return write_xarray(ds, path, group, filters=None, mode="w", overwrite=False, progress=progress,
                            unlimited_dims=[append_dim])  # fmt: skip
    group = "/" + group.strip("/") if group.strip("/") else "/"
    where = f"{path}:{group}"
    old, old_ds_encoding = _existing(path, group)
    grow, replace = _plan(ds, old, set(old_ds_encoding.get("unlimited_dims", ())), append_dim, where)
    encoded = {name: _encoded(ds.variables[name], name, old[name][2]) for name in grow + replace}
    with atomic_target(path, "a") as (target, _fresh):
        todo, offsets, heads = [], {}, []
        with hdf5_errors(shown(target), group, target), h5py.File(target, "r+") as f:
            for name in grow:
                node = _h5_name(f, group, name)
                h5 = f[node]
                axis = old[name][0].index(append_dim)
                before, n = int(h5.shape[axis]), int(encoded[name].shape[axis])
                if h5.maxshape[axis] is not None:
                    raise ValueError(
                        f"{where}: variable {name!r} cannot grow along {append_dim!r} (it was written with a fixed "
                        "size: h5netcdf, which lays out netCDF-4 files for daskh5, makes enum variables fixed)"
                    )
                h5.resize(before + n, axis=axis)
                data = encoded[name].data
                data = data if isinstance(data, da.Array) else da.from_array(np.asarray(data), chunks="auto")
                head = min(n, (-before) % h5.chunks[axis]) if h5.chunks else 0
                if head:  # fills the partly written last chunk: written whole, not as direct chunks
                    heads.append((node, axis, before, data[(slice(None),) * axis + (slice(0, head),)]))
                rest = data[(slice(None),) * axis + (slice(head, None),)]
                if rest.shape[axis]:
                    todo.append((node, rest))
                    offsets[node] = tuple(before + head if i == axis else 0 for i in range(rest.ndim))
            scale = f"{group.rstrip('/')}/{append_dim}"
            if append_dim not in grow and scale in f:  # a dimension without a coordinate: its scale grows too
                f[scale].resize(f[scale].shape[0] + ds.sizes[append_dim], axis=0)
            for node, axis, before, data in heads:
                region = (slice(None),) * axis + (slice(before, before + data.shape[axis]),)
                f[node][region] = np.asarray(data.compute())
            for name in replace:
                f[_h5_name(f, group, name)][...] = np.asarray(encoded[name].values)
        write_blocks(target, todo, progress, offsets)
        with hdf5_errors(shown(target), group, target):
            strip_back_references(target)
    return None

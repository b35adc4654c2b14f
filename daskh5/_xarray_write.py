"""Write xarray Datasets and DataArrays the way ``Dataset.to_netcdf`` does, with daskh5's parallel writer.

The layout is netCDF-4 (see :mod:`daskh5._netcdf_write`): the file opens
identically with ``engine="daskh5"``, ``"h5netcdf"`` and ``"netcdf4"``, and
in plain PyTables as CArrays/EArrays.  Everything the contract refuses
(names, attributes, encodings, dimension sizes) is refused before any file is
touched; everything is written into a temporary file that replaces the target
only when complete (:func:`daskh5._safe_tables.atomic_target`).  Dask-backed
variables (and large in-memory ones) are written block by block by
:func:`daskh5.writer._write_blocks`: compressed in the tasks where the filters
allow, stored in order by one writer.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from daskh5._optional import require
from daskh5._safe_tables import atomic_target, check_node_path, shown
from daskh5._verify import hdf5_errors

__all__ = ["filters_from_encoding", "write_xarray"]

_IN_MEMORY_BLOCKS = 16 << 20  # in-memory variables above this many bytes are written in parallel blocks


def filters_from_encoding(encoding: dict, default):
    """``tables.Filters`` from daskh5's encoding keys (``complib``, ``complevel``, ``shuffle``...)."""
    import tables

    lib = encoding.get("complib")
    if not lib:
        return default
    return tables.Filters(
        complevel=int(encoding.get("complevel", 5)),
        complib=lib,
        shuffle=bool(encoding.get("shuffle", True)) or (encoding.get("blosc") or {}).get("shuffle") == 1,
        bitshuffle=bool(encoding.get("bitshuffle", False)),
        fletcher32=bool(encoding.get("fletcher32", False)),
    )


def as_dataset(obj):
    """A Dataset as ``to_netcdf`` writes it (a DataArray as ``DataArray.to_netcdf`` stores it)."""
    xr = require("xarray", "writing xarray objects")
    if not isinstance(obj, xr.DataArray):
        return obj
    from xarray.backends.api import DATAARRAY_NAME, DATAARRAY_VARIABLE

    if obj.name is None:
        return obj.to_dataset(name=DATAARRAY_VARIABLE)
    if obj.name in obj.coords or obj.name in obj.dims:
        ds = obj.to_dataset(name=DATAARRAY_VARIABLE)
        ds.attrs[DATAARRAY_NAME] = obj.name
        return ds
    return obj.to_dataset()


def validate(ds, encoding: dict | None, unlimited_dims):
    """``(encoding, unlimited dims)`` once ``ds`` passes ``to_netcdf``'s checks; raises what it raises."""
    from xarray.backends.netCDF4_ import _ensure_no_forward_slash_in_name
    from xarray.backends.writers import _sanitize_unlimited_dims, _validate_attrs, _validate_dataset_names
    from xarray.conventions import encode_dataset_coordinates

    from daskh5._netcdf_write import DASKH5_KEYS, NETCDF_KEYS

    _validate_dataset_names(ds)
    _validate_attrs(ds, "h5netcdf")
    for name in [*ds.variables, *ds.dims]:
        if name is not None:
            _ensure_no_forward_slash_in_name(name)
    unlimited = _sanitize_unlimited_dims(ds, unlimited_dims)
    encoding = dict(encoding or {})
    variables, _ = encode_dataset_coordinates(ds)
    for key, enc in encoding.items():
        var = variables[key]  # KeyError for a variable the Dataset does not have, as to_netcdf
        var.encoding = enc  # "encoding must be castable to a dictionary"
        unknown = sorted(set(var.encoding) - NETCDF_KEYS - DASKH5_KEYS)
        if unknown:
            raise ValueError(
                f"unexpected encoding parameters for daskh5.to_pytables: {unknown!r} (variable {key!r}); "
                f"valid encodings are: {sorted(NETCDF_KEYS | DASKH5_KEYS)!r}"
            )
    return encoding, unlimited


def check_sizes(path: str, group: str, ds) -> None:
    """Refuse dimensions whose size differs from the same dimension in the existing file (as to_netcdf)."""
    if not os.path.isfile(path):
        return
    from daskh5._netcdf import group_dims
    from daskh5._nodes import has_node, open_h5

    with open_h5(path) as f:
        if group and not has_node(f, group):
            return
        existing = group_dims(f[group] if group else f).dims
    for dim, size in ds.sizes.items():
        have = existing.get(dim)
        if have is not None and have.size != size and not have.unlimited:
            raise ValueError(
                f"Unable to update size for existing dimension {dim!r} ({have.size} -> {size}) in {path}:"
                f"{group or '/'}; write to another file or group, or use mode='w'"
            )


class _Blocks:
    """Stands in for xarray's ``ArrayWriter``: numpy data is written at once, dask data kept for later."""

    def __init__(self):
        self.todo: list[tuple[str, object]] = []  # (h5py path of the dataset, dask array)

    def add(self, source, target, region=None) -> None:
        import dask.array as da

        if region:
            raise NotImplementedError("daskh5.to_pytables does not write regions")
        if not isinstance(source, da.Array):
            arr = np.asarray(source)
            if arr.dtype.kind not in "biufc" or arr.nbytes <= _IN_MEMORY_BLOCKS:
                target[...] = arr
                return
            source = da.from_array(arr, chunks="auto")
        self.todo.append((target.get_array()._h5ds.name, source))


def write_xarray(
    obj, path, group: str, *, filters, mode: str, overwrite: bool, progress: bool, encoding=None,
    unlimited_dims=None,
) -> None:  # fmt: skip
    """Write ``obj`` into ``group`` of ``path`` (see :func:`daskh5.to_pytables`)."""
    from xarray.backends.writers import dump_to_store

    from daskh5._netcdf_write import open_store, strip_back_references

    if mode not in ("a", "w"):
        raise ValueError(f"to_pytables: mode must be 'a' or 'w', got {mode!r}")
    path = os.path.abspath(os.fspath(path))
    group = check_node_path("/" + group.strip("/"), "to_pytables", "/group") if group.strip("/") else ""
    ds = as_dataset(obj)
    encoding, unlimited = validate(ds, encoding, unlimited_dims)
    if mode == "a":
        check_sizes(path, group, ds)
    del overwrite  # mode="a" replaces the variables it writes, as to_netcdf does
    with atomic_target(path, mode) as (target, fresh):
        where = shown(target)
        blocks = _Blocks()
        with hdf5_errors(where, group or "/", target):
            store = open_store(
                target, "w" if fresh else "a", group.lstrip("/") or None, filters, _enums(ds, encoding)
            )
            try:
                with warnings.catch_warnings():  # every element is written: the fill value never shows
                    warnings.filterwarnings(
                        "ignore", "Creating variable with default fill_value", UserWarning
                    )
                    dump_to_store(ds, store, blocks, encoding=encoding, unlimited_dims=unlimited)
            finally:
                store.close()
        write_blocks(target, blocks.todo, progress)
        with hdf5_errors(where, group or "/", target):
            strip_back_references(target)


def _enums(ds, encoding: dict) -> dict:
    """``{variable name: enum dtype}`` from the encodings given."""
    out = {}
    for name, var in ds.variables.items():
        dtype = {**var.encoding, **encoding.get(name, {})}.get("dtype")
        if isinstance(dtype, np.dtype) and (dtype.metadata or {}).get("enum"):
            out[name] = dtype
    return out


def write_blocks(target: str, todo: list, progress: bool, offsets: dict | None = None) -> None:
    """Write each ``(dataset path, dask array)`` of ``todo`` into the file ``target``, block by block."""
    import h5py

    from daskh5._netcdf_write import encoder_of
    from daskh5.writer import _aligned, _write_blocks

    if not todo:
        return
    where = shown(target)
    with hdf5_errors(where, "/", target):
        f = h5py.File(target, "r+")
    try:
        for node, x in todo:
            ds = f[node]
            offset = (offsets or {}).get(node, (0,) * x.ndim)

            def guard(node=node):
                return hdf5_errors(where, node, target)

            if ds.dtype.kind in "biufc" and x.dtype != ds.dtype:
                x = x.astype(ds.dtype.newbyteorder("="))
            if ds.chunks is not None and x.ndim:
                x = _aligned(x, tuple(int(c) for c in ds.chunks))
            encoder = encoder_of(ds)
            desc = f"writing {node}"
            if encoder is not None:
                chunk = lambda coords, data, ds=ds: ds.id.write_direct_chunk(coords, data, 0)  # noqa: E731
                _write_blocks(x, encoder, offset, progress, desc, chunks=chunk, guard=guard)
            else:
                _write_blocks(x, None, offset, progress, desc, leaf=ds, guard=guard)
    finally:
        with hdf5_errors(where, "/", target):
            f.close()


def to_pytables_xarray(
    obj, path, group, *, filters, mode, progress, compute, encoding, unlimited_dims, append_dim
):  # fmt: skip
    """:func:`daskh5.to_pytables` for a Dataset or DataArray: checks first, then writes (or a Delayed)."""
    from daskh5._inputs import resolve

    path, group, _ = resolve(path, group or "/", need_node=False)
    group = group or "/"
    kwargs = dict(filters=filters, mode=mode, overwrite=False, progress=progress, encoding=encoding,
                  unlimited_dims=unlimited_dims)  # fmt: skip
    if append_dim is not None:
        from daskh5._xarray_append import append_xarray

        write, kwargs = append_xarray, {"append_dim": append_dim, "progress": progress, "encoding": encoding}
    else:
        write = write_xarray
        validate(as_dataset(obj), encoding, unlimited_dims)  # refused now, not when computed
    if compute:
        return write(obj, path, group, **kwargs)
    from daskh5.writer import _deferred

    return _deferred(write, obj, path, group, **kwargs)

"""Write xarray Datasets and DataArrays as PyTables CArrays that open back identically."""

from __future__ import annotations

import os

import numpy as np

from daskh5._optional import require
from daskh5._safe_tables import atomic_target, check_node_path, open_tables, shown
from daskh5._verify import hdf5_errors
from daskh5._xarray_store import ATTR_COORDS, ATTR_DIMS
from daskh5.errors import NodeExistsError

__all__ = ["write_xarray"]


def _filters_from_encoding(encoding: dict, default):
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


def _encoded(obj):
    """CF-encoded variables and attributes (datetimes -> numbers + units, unicode -> utf-8 bytes)."""
    xr = require("xarray", "writing xarray objects")

    ds = (
        obj.to_dataset(name=obj.name if obj.name is not None else "data")
        if isinstance(obj, xr.DataArray)
        else obj
    )
    variables, attrs = xr.conventions.cf_encoder(dict(ds.variables), dict(ds.attrs))
    out = {}
    for name, var in variables.items():
        if var.dtype.kind == "U":
            var = xr.Variable(
                var.dims,
                np.char.encode(np.asarray(var.values), "utf-8"),
                {**var.attrs, "_Encoding": "utf-8"},
                var.encoding,
            )
        out[name] = var
    return out, attrs, ds


def write_xarray(obj, path, group: str, *, filters, mode: str, overwrite: bool, progress: bool) -> None:
    """Every variable of ``obj`` as a node of ``group`` (see :func:`daskh5.to_pytables`)."""
    path = os.path.abspath(os.fspath(path))
    group = "/" + group.strip("/") if group and group != "/" else ""
    variables, attrs, ds = _encoded(obj)
    extra_coords = [str(c) for c in ds.coords if c not in ds.dims]
    for var in variables.values():  # our own record of coordinates replaces CF's attribute
        var.attrs.pop("coordinates", None)
    attrs.pop("coordinates", None)
    if group:
        check_node_path(group, "to_pytables", "/group")
    # one temporary file (a copy of an existing one) for all variables: if any fails, path is unchanged
    with atomic_target(path, mode) as (target, fresh):
        if fresh:
            with open_tables(target, "w"):
                pass
        _write_variables(target, path, group, variables, filters, overwrite, progress)
        with hdf5_errors(path, group or "/", target), open_tables(target, "a") as f:
            where = f.get_node(group or "/")
            for key, value in attrs.items():
                where._v_attrs[key] = _plain(value)
            if extra_coords:
                where._v_attrs[ATTR_COORDS] = ",".join(extra_coords)


def _write_variables(target, path, group, variables, filters, overwrite, progress) -> None:
    """Each variable as a node of ``group`` in ``target`` (the temporary file written for ``path``)."""
    import dask.array as da

    from daskh5.writer import to_pytables

    with open_tables(target, "a") as f:
        for name in variables:
            node = f"{group}/{name}"
            if node in f and not overwrite:
                raise NodeExistsError(f"{path}:{node} already exists; pass overwrite=True to replace it")
    for name, var in variables.items():
        node = f"{group}/{name}"
        node_attrs = {
            **{k: _plain(v) for k, v in var.attrs.items()},
            ATTR_DIMS: ",".join(map(str, var.dims)),
        }
        if var.ndim == 0:
            _write_scalar(target, node, var, node_attrs, overwrite)
        else:
            data = var.data if isinstance(var.data, da.Array) else np.asarray(var.values)
            chunks = var.encoding.get("chunksizes")
            chunkshape = tuple(int(c) for c in chunks) if chunks and len(chunks) == var.ndim else None
            if chunkshape and any(c > max(s, 1) for c, s in zip(chunkshape, var.shape, strict=True)):
                chunkshape = None
            to_pytables(
                data, target, node, filters=_filters_from_encoding(var.encoding, filters), chunkshape=chunkshape,
                attrs=node_attrs, overwrite=overwrite, progress=progress,
            )  # fmt: skip


def _plain(value):
    """Attribute values PyTables stores natively (lists as arrays), so nothing needs pickling."""
    if isinstance(value, (list, tuple)):
        arr = np.asarray(value)
        return arr if arr.dtype.kind in "biufcSU" else value
    return value


def _write_scalar(path, node, var, attrs, overwrite) -> None:
    with hdf5_errors(shown(path), node, path), open_tables(path, "a") as f:
        if node in f and overwrite:
            f.remove_node(node)
        parent, name = node.rsplit("/", 1)
        arr = f.create_array(parent or "/", name, obj=np.asarray(var.values), createparents=True)
        for key, value in attrs.items():
            arr.attrs[key] = value

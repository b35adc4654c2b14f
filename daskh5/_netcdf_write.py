"""The netCDF-4 side of writing a Dataset: filters as HDF5 sees them, and the store that lays out the file.

xarray's h5netcdf store (``xarray.backends.H5NetCDFStore``) is the reference
for the layout: dimension scales, dimension-only scales, netCDF's attach
order, ``_nc4_non_coord_`` names, variable-length strings, enums, fill
values, groups.  daskh5 drives it through :class:`Daskh5Store`, which adds
daskh5's own encoding keys (``complib``... as ``tables.Filters`` spells them)
and its default filters, and leaves the data of dask-backed variables to
daskh5's parallel block writer.
"""

from __future__ import annotations

import numpy as np

from daskh5._encode import ChunkEncoder
from daskh5._optional import require

__all__ = ["DASKH5_KEYS", "encoder_of", "h5py_filters", "open_store", "strip_back_references"]

#: encoding keys daskh5's reader reports or its writer takes, beyond xarray's netCDF4 ones
DASKH5_KEYS = frozenset(
    {
        "complib",
        "bitshuffle",
        "filters",
        "pytables_attrs",
        "source_node",
        "preferred_chunks",
        "compression_opts",
    }
)
#: what xarray's netCDF4/h5netcdf writers accept in ``encoding=`` (xarray raises on anything else)
NETCDF_KEYS = frozenset(
    {"zlib", "szip", "bzip2", "blosc", "zstd", "complevel", "fletcher32", "contiguous", "chunksizes", "shuffle",
     "_FillValue", "dtype", "compression", "significant_digits", "quantize_mode", "blosc_shuffle", "szip_coding",
     "szip_pixels_per_block", "endian", "units", "calendar", "scale_factor", "add_offset", "_Unsigned",
     "_Encoding", "missing_value", "coordinates", "source", "original_shape"}
)  # fmt: skip

_BLOSC_CODES = {0: "blosclz", 1: "lz4", 2: "lz4hc", 3: "snappy", 4: "zlib", 5: "zstd"}


def h5py_filters(filters) -> dict:
    """``tables.Filters`` as h5py's ``create_dataset`` keywords (blosc, blosc2, bzip2 through hdf5plugin).

    >>> import tables
    >>> h5py_filters(tables.Filters(complevel=4, complib="zlib", shuffle=True))
    {'compression': 'gzip', 'compression_opts': 4, 'shuffle': True}
    """
    out: dict = {"fletcher32": True} if filters.fletcher32 else {}
    if not filters.complevel:
        return out
    lib = filters.complib or "zlib"
    if lib == "zlib":
        return {**out, "compression": "gzip", "compression_opts": int(filters.complevel),
                "shuffle": bool(filters.shuffle)}  # fmt: skip
    if lib == "lzo":
        raise ValueError(
            "complib='lzo' is a PyTables-only filter no netCDF reader has; choose 'zlib' or a blosc codec"
        )
    plugin = require("hdf5plugin", f"writing a Dataset with complib={lib!r}")
    shuffle = 2 if filters.bitshuffle else 1 if filters.shuffle else 0
    if lib.startswith("blosc2"):
        codec = lib.split(":", 1)[1] if ":" in lib else "blosclz"
        made = plugin.Blosc2(cname=codec, clevel=int(filters.complevel), filters=shuffle)
    elif lib.startswith("blosc"):
        codec = lib.split(":", 1)[1] if ":" in lib else "blosclz"
        made = plugin.Blosc(cname=codec, clevel=int(filters.complevel), shuffle=shuffle)
    elif lib == "bzip2":
        made = plugin.BZip2(blocksize=max(1, min(9, int(filters.complevel))))
    else:
        raise ValueError(f"complib={lib!r} is not a filter daskh5 writes; choose 'zlib' or a blosc codec")
    _registered(plugin, made.filter_id)
    return {**out, "compression": made.filter_id, "compression_opts": tuple(made.filter_options)}


_REGISTERED: set[int] = set()


def _registered(plugin, filter_id: int) -> None:
    """Make hdf5plugin's own build of the filter the one h5py uses.

    netCDF4-python points ``HDF5_PLUGIN_PATH`` at its bundled plugins when it
    is imported; HDF5 then loads its blosc filter, linked to netCDF4's copy of
    HDF5, which fails when h5py creates a dataset with it.
    """
    if filter_id not in _REGISTERED:
        name = {32001: "blosc", 32026: "blosc2", 307: "bzip2"}[filter_id]
        plugin.register((name,), force=True)
        _REGISTERED.add(filter_id)


def _stated_compression(enc: dict) -> bool:
    """Whether an encoding names its own compression (netCDF's or h5py's keys), or none at all."""
    return "zlib" in enc or enc.get("compression") not in (None, False) or bool(enc.get("contiguous"))


def translated(enc: dict, default) -> dict:
    """``enc`` with daskh5's keys (``complib``...) or the default filters turned into h5py's keys."""
    from daskh5._xarray_write import filters_from_encoding

    enc = dict(enc)
    given = enc.get("complib")
    if given or not _stated_compression(enc):
        filters = filters_from_encoding(enc, default) if given else default
        for key in ("zlib", "complevel", "compression", "compression_opts", "shuffle", "fletcher32"):
            enc.pop(key, None)
        if filters is not None:
            enc.update(h5py_filters(filters))
    if isinstance(enc.get("blosc"), dict):  # as daskh5's reader reports it: the settings, not a request
        enc.pop("blosc")
    for key in DASKH5_KEYS - {"compression_opts"}:
        enc.pop(key, None)
    return enc


def _store_class():
    xr = require("xarray", "writing xarray objects")
    require("h5netcdf", "writing xarray Datasets (daskh5 lays them out as netCDF-4)")
    del xr
    from xarray.backends import H5NetCDFStore

    class Daskh5Store(H5NetCDFStore):
        """xarray's h5netcdf store, with daskh5's encoding keys and default filters."""

        __slots__ = ()
        default_filters = None
        enums = None  # {variable name: its enum dtype} (from the encodings given)

        def prepare_variable(self, name, variable, check_encoding=False, unlimited_dims=None):
            import xarray as xr

            dtype = np.dtype(variable.dtype) if not isinstance(variable.dtype, type) else None
            plain = dtype is not None and dtype.kind in "biufc" and variable.ndim
            enc = translated(variable.encoding, type(self).default_filters if plain else None)
            data = original = variable.data
            enum = (type(self).enums or {}).get(name)
            if enum is not None and dtype == enum and not (dtype.metadata or {}).get("enum"):
                # a dask array's astype drops the enum metadata; the layout needs only the dtype
                data = np.broadcast_to(np.zeros((), dtype=enum), variable.shape)
            variable = xr.Variable(variable.dims, data, variable.attrs, enc, fastpath=True)
            target, _source = super().prepare_variable(name, variable, check_encoding, unlimited_dims)
            return target, original

    return Daskh5Store


def open_store(path: str, mode: str, group: str | None, default_filters, enums: dict | None = None):
    """A :class:`Daskh5Store` writing ``group`` of the file at ``path``."""
    import h5netcdf

    from daskh5._reader import load_plugins

    load_plugins()  # blosc, blosc2, bzip2 for h5py
    cls = _store_class()
    cls.default_filters, cls.enums = default_filters, dict(enums or {})
    store = cls(h5netcdf.File(path, mode, phony_dims="access"), mode=mode)
    return store.get_child_store(group) if group else store


def encoder_of(ds) -> ChunkEncoder | None:
    """The chunk encoder for an h5py dataset's filter pipeline, or ``None`` when h5py must compress."""
    dtype = ds.dtype
    if (
        ds.chunks is None
        or dtype.kind not in "biufc"
        or dtype.fields is not None
        or dtype.subdtype is not None
    ):
        return None
    dcpl = ds.id.get_create_plist()
    pipeline = [dcpl.get_filter(i)[::2] for i in range(dcpl.get_nfilters())]  # (id, cd values)
    ids = [fid for fid, _ in pipeline]
    cs = tuple(int(c) for c in ds.chunks)
    dtype = dtype.newbyteorder("=") if dtype.byteorder in "<>" and dtype.isnative else dtype
    if not ids:
        return ChunkEncoder("raw", cs, dtype)
    if ids in ([1], [2, 1]):
        level = int(pipeline[-1][1][0]) if pipeline[-1][1] else 0
        return ChunkEncoder("zlib", cs, dtype, level, "", 1 if ids[0] == 2 else 0)
    if ids == [32001] and len(pipeline[0][1]) >= 7 and dtype.itemsize <= 255:
        cd = pipeline[0][1]
        cname = _BLOSC_CODES.get(int(cd[6]))
        if cname in (None, "snappy") or int(cd[5]) not in (0, 1, 2):
            return None
        return ChunkEncoder("blosc", cs, dtype, int(cd[4]), cname, int(cd[5]))
    return None


def strip_back_references(path: str) -> None:
    """Delete the ``REFERENCE_LIST`` attributes of every dimension scale in the file.

    They are HDF5's back references from a scale to the variables attached to
    it; netCDF-C, netCDF4-python, h5netcdf and h5py read a file's dimensions
    from the variables' ``DIMENSION_LIST`` and never need them, but PyTables
    cannot load a node holding one (its attribute type has object references
    inside a compound).  Without them, plain PyTables opens every node.
    """
    import h5py

    from daskh5._netcdf import is_scale

    with h5py.File(path, "r+") as f:
        scales = []
        f.visititems(
            lambda name, obj: scales.append(name) if isinstance(obj, h5py.Dataset) and is_scale(obj) else None
        )
        for name in scales:
            if "REFERENCE_LIST" in f[name].attrs:
                del f[name].attrs["REFERENCE_LIST"]

"""The ``engine="daskh5"`` xarray backend: lazy, safe Datasets and DataTrees from PyTables files.

>>> import xarray as xr, numpy as np, tables, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "clusters.h5")
>>> with tables.open_file(path, "w") as f:
...     _ = f.create_carray("/", "data", obj=np.ones((6, 2)))
...     _ = f.create_carray("/", "clusters", obj=np.array([0, 1, 0, 1, 1, 0]))
>>> ds = xr.open_dataset(path, engine="daskh5")
>>> ds.data.dims, ds.clusters.dims
(('row_6', 'data_dim_1'), ('row_6',))
>>> ds.data.groupby(ds.clusters).sum().values.tolist()
[[3.0, 3.0], [3.0, 3.0]]
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from daskh5._attrs import DEFAULT_MAX_ATTR_SIZE
from daskh5._chunking import preferred_chunks
from daskh5._codecs import SAFE_FILTERS, allowed_filters
from daskh5._h5types import padded, to_datetimes
from daskh5._inputs import resolve
from daskh5._nodes import open_h5
from daskh5._xarray_store import (
    _group_variables,
    assign_dims,
    group_unlimited,
    group_variables,
    walk_groups,
    warn_skipped,
)
from daskh5.errors import Daskh5Error, ResourceLimitError

__all__ = ["PyTablesBackendEntrypoint"]

try:  # xarray is optional for daskh5 as a whole, required here
    import xarray as xr
    from xarray.backends import BackendArray, BackendEntrypoint
    from xarray.backends.common import AbstractDataStore
    from xarray.backends.store import StoreBackendEntrypoint
    from xarray.core import indexing
except ImportError as exc:  # pragma: no cover - exercised only without xarray
    raise ImportError('the daskh5 xarray backend needs xarray: pip install "daskh5[xarray]"') from exc


class PyTablesArray(BackendArray):
    """A lazily read node, or one column of a Table, with outer indexing (one vector at a time)."""

    def __init__(self, reader, field, shape, dtype, time: bool = False, decode=None):
        self.reader, self.field, self.decode = reader, field, decode
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.time = time  # the file holds PyTables Time32/Time64 integers

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER_1VECTOR, self._raw_indexing_method
        )

    def _raw_indexing_method(self, key: tuple):
        out = self._read(key)
        if self.time:
            return to_datetimes(out, self.dtype)
        if self.decode is not None:  # pandas' strings and categoricals (daskh5._pandas)
            return np.asarray(self.decode(out), dtype=self.dtype)
        if out.dtype != self.dtype and self.dtype.kind in "mM":  # pandas' int64 datetimes
            out = out.view(self.dtype)
        return out

    def _read(self, key: tuple) -> np.ndarray:
        if self.field is None and tuple(self.reader.shape) != self.shape:  # netCDF: pad to the dimension
            return padded(
                lambda k: np.asarray(self.reader[k]), self.reader.shape, self.shape, key, self._fill()
            )
        if self.field is None:
            return np.asarray(self.reader[key])
        rows, rest = key[0], key[1:]
        scalar = isinstance(rows, (int, np.integer))  # a string column with chunks={} is read row by row
        if scalar:
            rows = slice(int(rows), int(rows) + 1)
        out = None
        for where, part in _row_pieces(rows, self.shape[0], self._piece_rows()):
            column = self._column(self.reader[(part,)], rest)
            if out is None:
                out = np.empty((_count(rows, self.shape[0]), *column.shape[1:]), dtype=column.dtype)
            out[where] = column
        if out is None:  # no rows
            out = self._column(self.reader[(rows,)], rest)
        return out[0] if scalar else out

    def _piece_rows(self) -> int:
        """Rows of whole records read at a time: a column keeps only its field of each piece."""
        chunk = (self.reader.chunks or (1,))[0]
        rows = max(1, _PIECE_BYTES // max(1, self.reader.dtype.itemsize))
        return max(chunk, rows // chunk * chunk)

    def _column(self, records: np.ndarray, rest: tuple) -> np.ndarray:
        for part in self.field:
            records = records[part] if isinstance(part, str) else records[:, part]
        column = records[(slice(None), *rest)] if rest else records
        return np.array(column)  # a copy: a view would keep every field of the records alive

    def _fill(self):
        """The dataset's HDF5 fill value (netCDF-C sets it to ``_FillValue`` or netCDF's default)."""
        info = getattr(self.reader, "info", None)
        if info is None:
            return getattr(self.reader, "fill", 0)
        return np.frombuffer(info.fillvalue, dtype=info.disk_dtype)[0].astype(info.dtype)


_PIECE_BYTES = 16 << 20


def _count(rows, n: int) -> int:
    return len(range(*rows.indices(n))) if isinstance(rows, slice) else len(rows)


def _row_pieces(rows, n: int, step: int):
    """``(where in the output, rows to read)`` for consecutive pieces of a row selection."""
    if isinstance(rows, slice) and rows.indices(n)[2] == 1:
        start, stop, _ = rows.indices(n)
        for a in range(start, stop, step):
            b = min(stop, a + step)
            yield slice(a - start, b - start), slice(a, b)
        return
    index = np.arange(*rows.indices(n)) if isinstance(rows, slice) else np.asarray(rows)
    for a in range(0, len(index), step):
        yield slice(a, a + step), index[a : a + step]


class PyTablesStore(AbstractDataStore):
    """One group of a PyTables file, as xarray's store protocol wants it."""

    def __init__(
        self,
        path: str,
        group: str = "/",
        dims: dict | None = None,
        decode_pickles: bool = False,
        allow_external: bool = False,
        allowed: frozenset[int] = SAFE_FILTERS,
        drop: frozenset[str] = frozenset(),
        max_attr_size: int | str | None = DEFAULT_MAX_ATTR_SIZE,
        opened=None,
    ):
        self.path, self.group = path, group or "/"
        if opened is None:
            found = group_variables(
                path, self.group, decode_pickles, allow_external, allowed, drop, max_attr_size
            )
        else:  # (h5py file, h5py group) already open: a tree of groups is walked once
            found = _group_variables(
                path, *opened, decode_pickles, max_attr_size, allow_external=allow_external, allowed=allowed,
                drop=drop,
            )  # fmt: skip
        entries, self.attrs, skipped, self.coord_names = found
        warn_skipped(path, self.group, skipped)
        assign_dims(entries, dims)
        self.entries = entries
        if opened is None:
            self.unlimited = group_unlimited(path, self.group, allow_external)
        else:
            from daskh5._netcdf import group_dims

            self.unlimited = group_dims(opened[1]).unlimited

    def get_variables(self):
        out = {}
        for e in self.entries:
            array = PyTablesArray(e.reader, e.field, e.shape, e.dtype, e.time, getattr(e, "decode", None))
            data = indexing.LazilyIndexedArray(array)
            encoding = dict(e.encoding)
            chunks = encoding.get("chunksizes")
            # the node's chunks, or whole multiples of them: chunks={} must not make 2**27 blocks
            if chunks and e.field is None:
                preferred = preferred_chunks(e.shape, chunks, np.dtype(e.dtype).itemsize)
                encoding["preferred_chunks"] = dict(zip(e.dims, preferred, strict=False))
            elif chunks:
                row = int(np.prod(e.shape[1:], dtype=np.int64)) * np.dtype(e.dtype).itemsize
                encoding["preferred_chunks"] = {e.dims[0]: preferred_chunks(e.shape[:1], chunks[:1], row)[0]}
            out[e.name] = xr.Variable(e.dims, data, attrs=e.attrs, encoding=encoding)
        return out

    def get_attrs(self):
        return dict(self.attrs)

    def get_dimensions(self):
        return {d: n for e in self.entries for d, n in zip(e.dims, e.shape, strict=True)}

    def get_encoding(self):
        return {"unlimited_dims": set(self.unlimited)}

    def close(self):
        pass


class PyTablesBackendEntrypoint(BackendEntrypoint):
    """``xr.open_dataset(path, engine="daskh5")``: PyTables Arrays, CArrays, EArrays and Tables.

    Extra parameters: ``group`` (a group path), ``dims`` (``{"/node" or
    "name": ("dim", ...)}``), ``decode_pickles`` (rebuild pickled attributes that
    hold only plain builtins; off by default: they stay undecoded bytes),
    ``allow_external`` (read variables whose values are stored outside the file:
    external links, EXTERNAL storage, virtual datasets over other files; off by
    default: :class:`daskh5.ExternalDataError`), ``allow_filters`` (HDF5 filters
    to decode beyond daskh5's allowlist, by id or name, for files you trust, as
    for :func:`daskh5.from_pytables`; a node using another filter raises
    :class:`~daskh5.UnsupportedFilterError` unless ``drop_variables`` names all
    its variables), ``max_attr_size`` (attributes bigger than this many bytes,
    ``"1MiB"`` by default, are left out with a warning; ``None``: no limit but
    the file's size). ``auto_complex`` is accepted for netCDF4-engine
    compatibility: complex numbers (HDF5 compounds of ``r`` and ``i``) are
    always read as complex.
    """

    description = (
        "Lazy, safe PyTables/HDF5 files (Arrays, CArrays, EArrays, Tables, pandas frames) via daskh5"
    )
    url = "https://github.com/daskh5/daskh5"
    supports_groups = True
    open_dataset_parameters = (
        "filename_or_obj", "drop_variables", "mask_and_scale", "decode_times", "concat_characters",
        "decode_coords", "use_cftime", "decode_timedelta", "group", "dims", "decode_pickles", "allow_external",
        "allow_filters", "auto_complex", "max_attr_size",
    )  # fmt: skip

    def guess_can_open(self, filename_or_obj) -> bool:
        if _handle_name(filename_or_obj) is not None:
            return True
        if not isinstance(filename_or_obj, (str, os.PathLike)):
            return False
        path = os.fspath(filename_or_obj)
        if os.path.splitext(path)[1].lower() in (".h5", ".hdf5", ".hdf", ".pytables", ".h5py"):
            return True
        try:
            with open(path, "rb") as fh:
                return fh.read(8) == b"\x89HDF\r\n\x1a\n"
        except OSError:
            return False

    def open_dataset(
        self,
        filename_or_obj,
        *,
        drop_variables: str | Iterable[str] | None = None,
        mask_and_scale=True,
        decode_times=True,
        concat_characters=True,
        decode_coords=True,
        use_cftime=None,
        decode_timedelta=None,
        group: str | None = None,
        dims: dict | None = None,
        decode_pickles: bool = False,
        allow_external: bool = False,
        allow_filters=(),
        auto_complex: bool | None = None,
        max_attr_size: int | str | None = DEFAULT_MAX_ATTR_SIZE,
        _opened=None,
    ) -> xr.Dataset:
        path, group, _ = resolve(filename_or_obj, group, need_node=False)
        drop = {drop_variables} if isinstance(drop_variables, str) else set(drop_variables or ())
        store = PyTablesStore(
            path, group or "/", dims, decode_pickles, allow_external, allowed_filters(allow_filters), drop,
            max_attr_size, _opened,
        )  # fmt: skip
        ds = StoreBackendEntrypoint().open_dataset(
            store,
            mask_and_scale=mask_and_scale,
            decode_times=decode_times,
            concat_characters=_no_char_stacking(store, concat_characters),
            decode_coords=decode_coords,
            drop_variables=drop_variables,
            use_cftime=use_cftime,
            decode_timedelta=decode_timedelta,
        )
        coords = [c for c in store.coord_names if c in ds.variables and c not in ds.coords]
        return _pandas_index(ds.set_coords(coords) if coords else ds, store)

    def open_groups_as_dict(
        self,
        filename_or_obj,
        *,
        drop_variables: str | Iterable[str] | None = None,
        mask_and_scale=True,
        decode_times=True,
        concat_characters=True,
        decode_coords=True,
        use_cftime=None,
        decode_timedelta=None,
        group: str | None = None,
        dims: dict | None = None,
        decode_pickles: bool = False,
        allow_external: bool = False,
        allow_filters=(),
        auto_complex: bool | None = None,
        max_attr_size: int | str | None = DEFAULT_MAX_ATTR_SIZE,
    ) -> dict[str, xr.Dataset]:
        path, group, _ = resolve(filename_or_obj, group, need_node=False)
        kwargs = dict(
            drop_variables=drop_variables, mask_and_scale=mask_and_scale, decode_times=decode_times,
            concat_characters=concat_characters, decode_coords=decode_coords, use_cftime=use_cftime,
            decode_timedelta=decode_timedelta, dims=dims, decode_pickles=decode_pickles,
            allow_external=allow_external, allow_filters=allow_filters, max_attr_size=max_attr_size,
        )  # fmt: skip
        return self._groups(path, group, kwargs, allow_external=allow_external)

    def _groups(
        self, path: str, group: str | None, kwargs: dict, max_depth: int | None = None, allow_external=False
    ) -> dict:
        """Every group under ``group`` opened from one walk of the file (parents before children)."""
        from daskh5._netcdf import shared_dims

        with open_h5(path) as f, shared_dims():
            groups = walk_groups(path, f, group, allow_external)
            root = groups[0][0]
            rel = {g: "/" + g[len(root) :].strip("/") if g != root else "/" for g, _obj in groups}
            depth = {r: r.count("/") if r != "/" else 0 for r in rel.values()}
            deepest = max(depth, key=depth.get)
            if max_depth is not None and depth[deepest] > max_depth:
                raise ResourceLimitError(
                    f"{path}:{root}: groups nest {depth[deepest]:,} deep (under {root}), more than daskh5 opens "
                    f"as one DataTree ({max_depth}; xarray's DataTree takes time growing with the square of the "
                    "depth); open a subtree with group=..., or groups one by one with xr.open_dataset(group=...)"
                )
            datasets = {
                rel[g]: self.open_dataset(path, group=g, _opened=(f, obj), **kwargs) for g, obj in groups
            }
        return _unclash_all(datasets)

    def open_datatree(self, filename_or_obj, **kwargs) -> xr.DataTree:
        path, group, _ = resolve(filename_or_obj, kwargs.pop("group", None), need_node=False)
        allow = kwargs.get("allow_external", False)
        return xr.DataTree.from_dict(self._groups(path, group, kwargs, MAX_TREE_DEPTH, allow_external=allow))


def _handle_name(obj) -> str | None:
    """The file name of an open PyTables or h5py object (read only by name), else None."""
    if isinstance(obj, (str, bytes, os.PathLike)):
        return None
    try:
        return resolve(obj, None, need_node=False)[0]
    except (TypeError, Daskh5Error):
        return None


MAX_TREE_DEPTH = 100
"""Deepest nest of groups :func:`xarray.open_datatree` opens (a small file can nest thousands)."""


def _unclash_all(datasets: dict[str, xr.Dataset]) -> dict[str, xr.Dataset]:
    """Rename dims that an ancestor group uses with another size (a DataTree would reject them).

    Groups are visited depth first keeping, for every dim, the sizes its ancestors give it
    (a stack per dim), so each group costs its own dims, however deep it is.
    """
    children: dict[str, list[str]] = {p: [] for p in datasets}
    for p in datasets:
        if p != "/":
            children[p.rsplit("/", 1)[0] or "/"].append(p)
    out: dict[str, xr.Dataset] = {}
    active: dict = {}  # dim -> sizes the groups above the current one give it, innermost last
    todo: list = [("enter", "/")] if "/" in datasets else []
    while todo:
        step, p = todo.pop()
        if step == "leave":
            for d in out[p].sizes:
                active[d].pop()
            continue
        ds = datasets[p]
        renames = {d: f"{d}_{n}" for d, n in ds.sizes.items() if active.get(d) and active[d][-1] != n}
        out[p] = ds.rename_dims(renames) if renames else ds
        for d, n in out[p].sizes.items():
            active.setdefault(d, []).append(n)
        todo.append(("leave", p))
        todo.extend(("enter", c) for c in reversed(children[p]))
    return {p: out[p] for p in datasets}  # in the order they were given


def _no_char_stacking(store: PyTablesStore, concat_characters):
    """``concat_characters`` per variable: join the letters of netCDF char arrays only.

    xarray's character-array decoding joins the last axis of an ``S1`` variable.
    That axis is a string length only in netCDF char arrays, whose last axis is a
    netCDF dimension; a PyTables string array, a pandas column or an h5py ``S1``
    array is a list of one-letter strings, as PyTables, pandas and h5py read it.
    """
    own = {e.name: False for e in store.entries if e.dtype == np.dtype("S1") and not e.netcdf_dims}
    if not own or concat_characters is False:
        return concat_characters
    if isinstance(concat_characters, dict):
        return {**{e.name: True for e in store.entries}, **own, **concat_characters}
    return {**{e.name: concat_characters for e in store.entries}, **own}


def _pandas_index(ds: xr.Dataset, store: PyTablesStore) -> xr.Dataset:
    """A pandas key's index as pandas reads it: a coordinate, a MultiIndex, time-zone aware."""
    import pandas as pd

    entries = [e for e in store.entries if e.name in ds.variables]
    names = [e.name for e in entries if "pandas_index_kind" in e.encoding or "pandas_level" in e.encoding]
    ds = ds.set_coords([n for n in names if n not in ds.coords]) if names else ds
    zones = {e.name: e.encoding["pandas_timezone"] for e in entries if "pandas_timezone" in e.encoding}
    for name, tz in zones.items():
        values = pd.DatetimeIndex(ds[name].values).tz_localize("UTC").tz_convert(tz)
        var = ds[name].variable
        ds = ds.assign_coords({name: xr.Variable(var.dims, values, var.attrs, var.encoding)})
    levels: dict = {}
    for e in entries:
        if "pandas_level" in e.encoding:
            dim, position = e.encoding["pandas_level"]
            levels.setdefault(dim, []).append((position, e.name))
    for dim, named in levels.items():
        if len(named) > 1:
            ds = ds.set_index({dim: [n for _, n in sorted(named)]})
    return ds

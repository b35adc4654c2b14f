"""Find and validate the ragged layouts users keep in PyTables files.

1. ``flat``: a 1-d array node of every sample's values, concatenated, with an
   ``(N, 2)`` ``<name>_start_and_stop`` column of ``[start, stop)`` offsets and
   an optional ``(N, k)`` ``<name>_shape`` column;
2. ``vlarray`` with a ``<name>_shape`` column: rows are flattened samples;
3. ``vlarray`` alone: 1-d rows as they are.

Everything is read through h5py and :class:`~daskh5._reader.NodeReader`, so
nothing is unpickled; an ObjectAtom VLArray is refused outright.  Side
columns are validated when the layout is opened (they are small): the first
bad row is named in the error.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

import numpy as np

from daskh5._attrs import small_attr
from daskh5._codecs import SAFE_FILTERS
from daskh5._containment import check_storage
from daskh5._nodes import NodeInfo, describe_array, lookup, node_kind, node_name, open_h5
from daskh5._reader import NodeReader, check_filters_available
from daskh5._storage import unwritten_chunks
from daskh5.errors import NodeKindError, NodeNotFound, RaggedLayoutError, UnsupportedDtypeError

__all__ = ["ATTR_KIND", "ATTR_NSAMPLES", "ATTR_SHAPE", "ATTR_START_STOP", "RaggedLayout", "find_layout"]

# Attributes daskh5's writer puts on the data node, so readers need no guessing.
ATTR_KIND = "DASKH5_RAGGED"
ATTR_START_STOP = "DASKH5_START_STOP"
ATTR_SHAPE = "DASKH5_SHAPE"
ATTR_NSAMPLES = "DASKH5_NSAMPLES"  # samples committed; rows past it are an interrupted append
ATTR_NDIM = "DASKH5_NDIM"  # sample rank when there is no shape column (0-d samples)


@dataclass(frozen=True)
class RaggedLayout:
    """A validated ragged layout: where the samples are and what shape each has."""

    path: str
    node: str
    kind: str  # "flat" or "vlarray"
    dtype: np.dtype
    starts: np.ndarray | None  # flat only
    stops: np.ndarray | None
    shapes: np.ndarray | None  # (N, k), or None for 1-d samples (or 0-d, see ndim)
    ndim: int
    atom_shape: tuple[int, ...]  # trailing shape of a VLArray atom, e.g. (3,) for Float32Atom(shape=3)
    nsamples: int
    start_stop_node: str | None
    shape_node: str | None
    driver: str | None = None  # "H5FD_CORE": each process reads the file into memory once
    allow_external: bool = False  # the caller allowed values from outside the file
    allowed: frozenset[int] = SAFE_FILTERS  # HDF5 filters the readers may decode
    text: str | None = None  # PyTables VLStringAtom ("bytes") / VLUnicodeAtom ("str"): each row one string
    time: np.dtype | None = None  # Time32/Time64 atoms: rows of these datetime64 (the file holds integers)
    raw: np.dtype | None = None  # items as stored, when daskh5 reads the rows' heap objects itself


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8", "replace")
    return str(value)


def _sibling(node: str, suffix: str) -> str:
    return posixpath.join(posixpath.dirname(node) or "/", posixpath.basename(node) + suffix)


def _column(f, name: str, allow_external: bool) -> tuple[str, str] | None:
    """``(file, node)`` where the side column ``name`` of ``f`` really is, or None if there is none."""
    try:
        obj = lookup(f, name, allow_external=allow_external)
    except NodeNotFound:
        return None
    return os.path.abspath(obj.file.filename), obj.name


_PIECE_BYTES = 16 << 20  # side columns are read in pieces of about this many bytes


def _column_info(
    where: tuple[str, str], role: str, width: int | None = None, allow_external: bool = False
) -> NodeInfo:
    """A side column's description (nothing is read): integers, ``(N, width)`` or ``(N, k)``."""
    path, node = where
    info = describe_array(path, node, allow_external=allow_external)
    if info.dtype.kind not in "iu":
        raise RaggedLayoutError(f"{path}:{node}: the {role} column holds {info.dtype}, not integers")
    if len(info.shape) != 2 or (width is not None and info.shape[1] != width):
        want = f"(N, {width})" if width is not None else "(N, k)"
        raise RaggedLayoutError(f"{path}:{node}: a {role} column is {want}, this one is {info.shape}")
    return info


def check_written(ds, rows: int, where: str, role: str) -> None:
    """Refuse a node whose first ``rows`` rows lie in chunks that were never written.

    A file of a few KB can claim 10**9 rows of a side column (or a VLArray) and
    store none of them: they would read as fill values, after allocating what
    the claim needs.  daskh5 writes (and PyTables appends) every chunk, so a
    missing one means the node is damaged or was cut short.
    """
    missing = unwritten_chunks(ds, rows, where)
    if missing:
        raise RaggedLayoutError(
            f"{where}: the {role} claims {rows:,} rows, but {missing:,} of the chunks that hold them were "
            "never written (they would read as fill values); the file is damaged or was not written "
            "to the end: write the layout again"
        )


def _read_column(
    info: NodeInfo, rows: int, driver: str | None = None, allowed=SAFE_FILTERS, order: str = "C"
) -> np.ndarray:
    """Rows ``[0, rows)`` of a side column as int64, read in bounded pieces into one array
    (``order="F"``: each column of it contiguous)."""
    reader = NodeReader(info, driver=driver, allowed=allowed)
    width = info.shape[1]
    out = np.empty((rows, width), dtype=np.int64, order=order)
    step = max(1, _PIECE_BYTES // max(1, width * info.itemsize))
    for a in range(0, rows, step):
        b = min(rows, a + step)
        out[a:b] = reader[a:b]
    return out


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


# The messages below name rows and counts, never values: a side column's values are data of
# the file (and, with allow_external, of other files), which an error line must not echo.
def _check_rows(path: str, node: str, rows: int, n: int, committed: bool) -> None:
    """The shape column has one row per sample (at least ``n`` when fewer were committed)."""
    if rows < n or (rows != n and not committed):
        raise RaggedLayoutError(
            f"{path}:{node}: the shape column has {rows} rows but there are {n} samples; "
            "the columns must have one row per sample"
        )


def _check_shapes(path: str, node: str, shapes: np.ndarray) -> None:
    if (shapes < 0).any():
        row = _first_bad((shapes < 0).any(axis=1))
        raise RaggedLayoutError(f"{path}:{node}: row {row} has a negative extent")


def _validate_flat(path, node, ss_node, shape_node, starts, stops, shapes, flat_len) -> None:
    where = f"{path}:{ss_node}"
    if (stops < starts).any():
        row = _first_bad(stops < starts)
        raise RaggedLayoutError(f"{where}: row {row} stops before it starts")
    if (starts < 0).any():
        row = _first_bad(starts < 0)
        raise RaggedLayoutError(f"{where}: row {row} has a negative start")
    if (stops > flat_len).any():
        row = _first_bad(stops > flat_len)
        raise RaggedLayoutError(
            f"{where}: row {row} stops beyond the {flat_len} values of {node}; "
            "the offsets and the data do not belong together"
        )
    if shapes is not None:
        sizes = np.prod(shapes, axis=1, dtype=np.int64) if shapes.shape[1] else np.ones(len(shapes), np.int64)
        bad = sizes != stops - starts
        if bad.any():
            row = _first_bad(bad)
            raise RaggedLayoutError(
                f"{path}:{shape_node}: row {row} gives the sample another number of values than {ss_node} does"
            )


def find_layout(
    path: str,
    node: str,
    start_stop: str | None = None,
    shape: str | None = None,
    driver: str | None = None,
    *,
    allow_external: bool = False,
    allowed: frozenset[int] = SAFE_FILTERS,
) -> RaggedLayout:
    """Detect, read and validate the ragged layout whose data node is ``node``.

    ``start_stop``/``shape`` given here are paths in ``path``; names stored on the
    data node, and the default ``<node>_start_and_stop``/``<node>_shape``, are in the
    file that really holds the data node (another file only through an external link,
    with ``allow_external``).  Any of them stored outside the file raises
    :class:`~daskh5.errors.ExternalDataError` unless ``allow_external``.
    ``allowed``: the HDF5 filters its nodes may use (:func:`daskh5._codecs.allowed_filters`).
    """
    import h5py

    with open_h5(path) as given:
        asked = {role: (name, _column(given, name, allow_external)) for role, name in
                 (("start_stop", start_stop), ("shape", shape)) if name}  # fmt: skip
        obj = lookup(given, node, allow_external=allow_external)
        node = node_name(obj.name)
        path = os.path.abspath(obj.file.filename)
        f = obj.file
        kind = node_kind(obj)
        n_committed = small_attr(obj, ATTR_NSAMPLES)
        n_committed = None if n_committed is None else int(n_committed)
        ndim_attr = small_attr(obj, ATTR_NDIM)
        ndim_attr = None if ndim_attr is None else int(ndim_attr)
        start_stop = start_stop or _text(small_attr(obj, ATTR_START_STOP))
        shape = shape or _text(small_attr(obj, ATTR_SHAPE))
        text = time = None
        if kind == "VLArray":
            pseudo = _text(small_attr(obj, "PSEUDOATOM"))
            if pseudo == "object":
                raise NodeKindError(
                    f"{path}:{node} is an ObjectAtom VLArray: its rows are pickles, which daskh5 never "
                    "loads (unpickling runs code from the file). Store samples as numeric arrays instead"
                )
            text = {"vlstring": "bytes", "vlunicode": "str"}.get(pseudo)
            base, atom_shape, time = _vl_base(obj, path, node)
            if text is not None and (
                atom_shape or base.kind != "u" or base.itemsize != (1, 4)[text == "str"]
            ):
                raise RaggedLayoutError(
                    f"{path}:{node} says it holds {pseudo} strings but its rows are {base} values; "
                    "the file is damaged or was not written by PyTables"
                )
            check_storage(obj, f"{path}:{node}", allow_external=allow_external)
            n = int(obj.shape[0])
            if n_committed is not None and n_committed > n:
                raise RaggedLayoutError(
                    f"{path}:{node} says {n_committed} samples were written but has only {n}"
                )
            n = n if n_committed is None else n_committed
            check_written(obj, n, f"{path}:{node}", "VLArray")
            layout_kind = "vlarray"
            dcpl = obj.id.get_create_plist()
            filters = [dcpl.get_filter(i)[::2] for i in range(dcpl.get_nfilters())]
            check_filters_available(path, node, filters, allowed)
            if start_stop:
                raise RaggedLayoutError(f"{path}:{node} is a VLArray; start_stop= applies to flat layouts")
        elif isinstance(obj, h5py.Dataset) and kind in ("Array", "CArray", "EArray", "Dataset"):
            if len(obj.shape) != 1:
                raise NodeKindError(
                    f"{path}:{node} is a {len(obj.shape)}-d {kind}; the flat ragged layout needs a 1-d data "
                    "node (use daskh5.from_pytables for regular arrays)"
                )
            start_stop = start_stop or _sibling(node, "_start_and_stop")
            base, atom_shape, layout_kind, n = None, (), "flat", None
        else:
            raise NodeKindError(
                f"{path}:{node} is a {kind}; ragged data is a VLArray or a 1-d array with side columns"
            )

        def where(role: str, name: str | None):
            if role in asked:
                return asked[role][1]
            return _column(f, name, allow_external) if name else None

        ss_at = where("start_stop", start_stop) if layout_kind == "flat" else None
        if layout_kind == "flat" and ss_at is None:
            raise NodeNotFound(
                f"{path}: {node} is a {kind} without a start/stop column: no node {start_stop!r}. "
                "Pass start_stop='/path/to/offsets' if it has another name"
            )
        shape_default = _sibling(node, "_shape")
        if shape is None and _column(f, shape_default, allow_external) is not None:
            shape = shape_default
        shape_at = where("shape", shape)
        if shape is not None and shape_at is None:
            raise NodeNotFound(f"{path}: no shape column {shape!r} for {node}")

    if layout_kind == "flat":
        info = describe_array(path, node, allow_external=allow_external)
        base = info.dtype
        ss_info = _column_info(ss_at, "start/stop", width=2, allow_external=allow_external)
        n = ss_info.shape[0]
        if n_committed is not None and n_committed > n:
            raise RaggedLayoutError(f"{path}:{node} says {n_committed} samples were written but has only {n}")
        n = n if n_committed is None else n_committed
    # nothing is allocated before the columns are known to hold every row they claim
    shape_info = _column_info(shape_at, "shape", allow_external=allow_external) if shape else None
    if shape_info is not None:
        _check_rows(shape_info.path, shape_info.node, shape_info.shape[0], n, n_committed is not None)
    for col, role in (
        (ss_info if layout_kind == "flat" else None, "start/stop column"),
        (shape_info, "shape column"),
    ):
        if col is not None:
            with open_h5(col.path) as cf:
                check_written(lookup(cf, col.node), n, f"{col.path}:{col.node}", role)
    shapes = _read_column(shape_info, n, driver, allowed) if shape_info is not None else None
    if shapes is not None:
        _check_shapes(path, shape, shapes)
    starts = stops = None
    if layout_kind == "flat":
        ss = _read_column(ss_info, n, driver, allowed, order="F")
        starts, stops = ss[:, 0], ss[:, 1]
        _validate_flat(path, node, start_stop, shape, starts, stops, shapes, info.shape[0])
    ndim = shapes.shape[1] if shapes is not None else (ndim_attr if ndim_attr is not None else 1)
    if layout_kind == "vlarray" and text is not None:
        if shapes is not None:
            raise RaggedLayoutError(f"{path}:{shape}: a VLArray of strings has no sample shapes")
        ndim = 0  # one string per row
    return RaggedLayout(
        path=path,
        node=node,
        kind=layout_kind,
        dtype=np.dtype(base).newbyteorder("="),
        starts=starts,
        stops=stops,
        shapes=shapes,
        ndim=ndim + len(atom_shape),
        atom_shape=tuple(int(a) for a in atom_shape),
        nsamples=int(n),
        start_stop_node=start_stop if layout_kind == "flat" else None,
        shape_node=shape,
        driver=driver,
        allow_external=allow_external,
        allowed=frozenset(allowed),
        text=text if layout_kind == "vlarray" else None,
        time=time if layout_kind == "vlarray" else None,
        raw=_heap_dtype(np.dtype(base), atom_shape, time) if layout_kind == "vlarray" else None,
    )


def _heap_dtype(base: np.dtype, atom_shape: tuple, time) -> np.dtype | None:
    """How to read a VLArray's items from the heap ourselves, or None when h5py reads them right.

    h5py cannot read PyTables' Time atoms, and returns the items of a
    non-native byte order without swapping them.  PyTables itself converts
    only atoms without a shape: a shaped atom's items are written and read
    as they are in memory (the writer's order), whatever the type says.
    """
    if time is not None:
        return base
    if base.isnative:
        return None
    return base.newbyteorder("=") if atom_shape else base


def _vl_base(obj, path: str, node: str) -> tuple[np.dtype, tuple[int, ...], np.dtype | None]:
    """(base dtype as stored, atom shape, datetime64 dtype of Time atoms or None) of a VLArray's rows."""
    import h5py

    from daskh5._h5types import time_layout

    tid = obj.id.get_type()
    if tid.get_class() != h5py.h5t.VLEN:
        raise NodeKindError(f"{path}:{node}: a VLArray whose rows are not variable-length arrays")
    tid = tid.get_super()
    atom_shape: tuple[int, ...] = ()
    if tid.get_class() == h5py.h5t.ARRAY:
        atom_shape, tid = tuple(int(n) for n in tid.get_array_dims()), tid.get_super()
    times = time_layout(tid)
    if times is not None:  # h5py has no numpy type for these: daskh5 reads their integers itself
        return times[0], atom_shape, times[1]
    try:
        base = tid.dtype
    except (TypeError, ValueError) as exc:
        raise UnsupportedDtypeError(
            f"{path}:{node}: a VLArray of an HDF5 type numpy cannot represent ({exc}); read it with PyTables"
        ) from exc
    if base.kind not in "biufcS" or base.fields is not None or base.subdtype is not None:
        raise UnsupportedDtypeError(f"{path}:{node}: a VLArray of {base} rows, which daskh5 does not read")
    if tid.get_class() == h5py.h5t.BITFIELD and base.itemsize == 1:
        base = np.dtype(bool)
    return base, atom_shape, None

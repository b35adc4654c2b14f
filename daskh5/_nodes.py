"""Find and describe nodes of an HDF5 file without trusting it.

Everything here goes through h5py, which never unpickles: PyTables would
unpickle string attributes ending in ``b"."`` as soon as a file or node is
opened, so a crafted file could run code.  The result of
:func:`describe_array` is a :class:`NodeInfo`, plain picklable data that the
readers and dask graphs carry instead of open handles.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from daskh5._containment import check_storage, follow
from daskh5._external import external_segments
from daskh5._virtual import virtual_boxes
from daskh5.errors import (
    Daskh5Error,
    FileNotFound,
    NodeKindError,
    NodeNotFound,
    NotHDF5Error,
    UnsupportedDtypeError,
)

__all__ = [
    "NodeInfo",
    "describe_array",
    "h5_key",
    "has_node",
    "lookup",
    "maybe_open",
    "node_kind",
    "node_name",
    "open_file",
    "open_h5",
]

#: PyTables' ``CLASS`` attribute -> the name users know.
_PYTABLES_CLASSES = {
    "ARRAY": "Array",
    "CARRAY": "CArray",
    "EARRAY": "EArray",
    "TABLE": "Table",
    "VLARRAY": "VLArray",
    "GROUP": "Group",
    "UNIMPLEMENTED": "Unimplemented",
}

#: Where to go for node kinds :func:`daskh5.from_pytables` does not read.
_ELSEWHERE = {
    "Table": 'xr.open_dataset(path, engine="daskh5", group=...) (one variable per column)',
    "VLArray": "daskh5.read_ragged(path, node) (a dask bag of samples)",
    "Group": "daskh5.from_pytables(path, '<group>/<leaf>') on one of its leaves",
}


@dataclass(frozen=True)
class NodeInfo:
    """Everything a reader needs to know about one array node, as plain data."""

    path: str
    node: str
    kind: str
    shape: tuple[int, ...]
    dtype: np.dtype  # what daskh5 returns (native byte order)
    disk_dtype: np.dtype  # how elements are laid out in the file
    layout: str
    chunkshape: tuple[int, ...] | None
    filters: tuple[tuple[int, tuple[int, ...]], ...]
    fillvalue: bytes
    offset: int | None  # contiguous layout only
    extdim: int | None
    mtime_ns: int
    file_size: int
    external: tuple[tuple[str, int, int], ...] = ()  # EXTERNAL storage: (file, offset, size) segments
    virtual: tuple = ()  # a VDS of boxes: (start, shape, source file, source node, source start) each
    allow_external: bool = False  # the caller allowed values from outside the file
    conversion: str | None = None  # why HDF5 must convert the stored values (odd precision...), or None
    time: bool = False  # PyTables Time32/Time64: the file's integers become ``dtype`` (datetime64)

    @property
    def itemsize(self) -> int:
        return self.disk_dtype.itemsize


def _absolute(path: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(path))


def open_file(path: str | os.PathLike, driver: str | None = None):
    """Open ``path`` read-only with h5py, turning failures into daskh5 errors."""
    import h5py

    path = _absolute(path)
    if not os.path.exists(path):
        raise FileNotFound(f"{path}: no such file")
    if os.path.isdir(path):
        raise NotHDF5Error(f"{path} is a directory, not an HDF5 file")
    from daskh5._reader import drop_stale

    drop_stale(path)
    kwargs = {"driver": driver} if driver else {}
    try:
        try:
            return h5py.File(path, "r", locking=False, **kwargs)
        except OSError as exc:
            # only a lock problem is retried: HDF5's message for a truncated file also
            # contains "lock" (sblock), and must keep its own explanation
            if not any(m in str(exc).lower() for m in ("unable to lock", "locking flag")):
                raise
            # this process already has the file open through h5py with locking on: match it
            return h5py.File(path, "r", **kwargs)
    except OSError as exc:
        msg = str(exc)
        if "signature" in msg:
            why = "is not an HDF5 file (no HDF5 signature)"
        elif "truncated" in msg.lower() or "eof" in msg.lower():
            why = "is a truncated HDF5 file (it ends before its metadata says it should)"
        else:
            why = f"could not be opened as HDF5 ({msg})"
        raise NotHDF5Error(
            f"{path} {why}; {being_written(path) or 'check the path, or re-copy the file if it was cut short'}"
        ) from exc


@contextlib.contextmanager
def open_h5(path: str | os.PathLike, driver: str | None = None) -> Iterator:
    """:func:`open_file` as a context manager that closes the file.

    An exception raised inside h5py while the block reads metadata (damaged
    object headers, links, attributes) becomes a :class:`NotHDF5Error` naming the file.
    """
    f = open_file(path, driver)
    try:
        with damaged_metadata(f.filename):
            yield f
    finally:
        with contextlib.suppress(Exception):
            f.close()


def _from_h5py(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside h5py (its innermost frame is h5py code)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return False
    name = last.tb_frame.f_code.co_filename.replace(os.sep, "/")
    return "/h5py/" in name or name.startswith("h5py/")  # h5py's .py files, or its compiled .pyx


def being_written(path: str) -> str:
    """Advice when another open handle holds HDF5's write lock on ``path`` (a writer has it open), else "".

    HDF5 writers lock the whole file (``flock``) while they have it open; a reader
    can then see metadata the writer has not flushed yet, which looks damaged.
    """
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return ""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return (
            "the file is being written right now (a writer holds HDF5's lock on it): retry once the writer "
            "has flushed or closed it, or write it with daskh5.append, whose readers see only committed rows"
        )
    except OSError:  # no locking on this file system: nothing to learn
        return ""
    finally:
        os.close(fd)  # closing the descriptor releases the probe's shared lock
    return ""


@contextlib.contextmanager
def damaged_metadata(path: str) -> Iterator[None]:
    """Turn h5py's errors on damaged metadata inside the block into a daskh5 error."""
    try:
        yield
    except Daskh5Error:
        raise
    except (
        RuntimeError,
        KeyError,
        TypeError,
        ValueError,
        OSError,
        OverflowError,
        SystemError,
    ) as exc:
        if not _from_h5py(exc):
            raise
        raise NotHDF5Error(
            f"{path}: its metadata is damaged, HDF5 could not read it ({type(exc).__name__}: {exc}); "
            f"{being_written(path) or 're-copy the file'}"
        ) from exc


def node_kind(obj) -> str:
    """The PyTables kind of an h5py object, or ``"Dataset"``/``"Group"`` for plain HDF5."""
    import h5py

    from daskh5._attrs import small_attr

    cls = small_attr(obj, "CLASS")
    if isinstance(cls, (bytes, np.bytes_)):
        cls = cls.decode("ascii", "replace")
    if isinstance(cls, str) and cls in _PYTABLES_CLASSES:
        return _PYTABLES_CLASSES[cls]
    return "Group" if isinstance(obj, h5py.Group) else "Dataset"


def _nearest(f, node: str, n: int = 5) -> list[str]:
    from itertools import islice

    from daskh5._walk import walk

    names = ["/" + name for name, _obj, _hidden in islice(walk(f), 100_000)]  # linear, however deep
    close = difflib.get_close_matches(node, names, n=n, cutoff=0.3)
    return close or sorted(names)[:n]


def node_name(name: str | bytes) -> str:
    r"""An HDF5 name as text; bytes that are not UTF-8 become surrogates, as :func:`os.fsdecode` does.

    h5py hands out a link name that is not valid UTF-8 as ``bytes``.

    >>> node_name(b"/caf\xc3\xa9"), node_name(b"/x\xff")
    ('/café', '/x\udcff')
    """
    if isinstance(name, (bytes, np.bytes_)):
        return bytes(name).decode("utf-8", "surrogateescape")
    return name


def h5_key(node: str) -> str | bytes:
    r"""What to give h5py for the name ``node``: the original bytes if it holds surrogates.

    >>> h5_key("/data"), h5_key("/x\udcff")
    ('/data', b'/x\xff')
    """
    if not isinstance(node, str):
        return node
    try:
        node.encode("utf-8")
    except UnicodeEncodeError:
        return node.encode("utf-8", "surrogateescape")
    return node


def has_node(f, node: str) -> bool:
    """``node in f`` (a link by that name exists), for any name.

    h5py's ``in`` decodes the name, which fails for one that is not UTF-8:
    such names are checked link by link.
    """
    import h5py

    key = h5_key(node)
    if isinstance(key, str):
        return key in f
    group = f["/"] if key.startswith(b"/") else f
    parts = [p for p in key.split(b"/") if p]
    for i, part in enumerate(parts):
        if not group.id.links.exists(part):
            return False
        if i < len(parts) - 1:
            try:
                group = group[part]
            except (KeyError, UnicodeDecodeError):
                return False
            if not isinstance(group, h5py.Group):
                return False
    return True


def lookup(f, node: str, *, allow_external: bool = False):
    """The h5py object at ``node`` or a :class:`NodeNotFound` naming the nearest nodes.

    Links are checked one path component at a time and never followed out of
    the file unless ``allow_external`` (:func:`daskh5._containment.follow`): an
    external link raises :class:`~daskh5.errors.ExternalDataError`. ``node``
    may hold surrogates for bytes of a name that is not UTF-8 (see
    :func:`node_name`), or be those bytes.
    """
    if isinstance(node, (bytes, np.bytes_)):
        node = node_name(node)
    if not isinstance(node, str) or not node:
        raise NodeNotFound(f"{f.filename}: node must be a path like '/data', got {node!r}")
    key = node if node.startswith("/") else "/" + node
    try:
        return follow(f, key, allow_external=allow_external)
    except NodeNotFound:
        try:
            near = _nearest(f, key)
        except Exception:  # a damaged file may not even be walkable: no hints then
            near = []
        hint = f"; nearest existing nodes: {', '.join(near)}" if near else "; the file has no nodes"
        busy = being_written(f.filename)
        hint += f". Nodes a writer has not flushed yet are not visible: {busy}" if busy else ""
        raise NodeNotFound(f"{f.filename}: no node {key!r}{hint}") from None
    except Daskh5Error:
        raise
    except Exception as exc:  # damaged metadata surfaces here
        raise NotHDF5Error(f"{f.filename}: could not read node {key!r}: {exc}") from exc


def _dtypes(
    ds, where: str, allow_compound: bool = False, allow_time: bool = False
) -> tuple[np.dtype, np.dtype]:
    """(returned dtype, on-disk dtype) of an h5py dataset (compound only for Tables).

    ``allow_time``: PyTables Time32/Time64 atoms (also as Table columns) are
    described by their integers, for a reader that converts them.
    """
    import h5py

    from daskh5._h5types import numpy_dtype

    tid = ds.id.get_type()
    cls = tid.get_class()
    try:
        disk = ds.dtype
    except (TypeError, ValueError) as exc:
        disk = numpy_dtype(ds) if allow_time else None
        if disk is None:
            hint = (
                'xr.open_dataset(path, engine="daskh5") reads PyTables Time32/Time64 values as datetime64'
                if numpy_dtype(ds) is not None
                else "numpy has no equivalent"
            )
            raise UnsupportedDtypeError(
                f"{where} has an HDF5 type numpy cannot represent ({exc}); {hint}"
            ) from exc
    if cls == h5py.h5t.BITFIELD and disk.itemsize == 1:
        # PyTables stores BoolAtom as an 8-bit bitfield; h5py reports uint8.
        return np.dtype(bool), np.dtype(bool)
    if disk.kind in "biufcS" and disk.subdtype is None and disk.fields is None:
        return disk.newbyteorder("="), disk
    base = disk.subdtype[0] if disk.subdtype is not None else None
    if base is not None and base.kind in "biufcS" and base.fields is None and base.subdtype is None:
        # an H5T_ARRAY element type (a PyTables shaped atom): its axes trail the node's
        tbase = tid.get_super()
        if tbase.get_class() == h5py.h5t.BITFIELD and base.itemsize == 1:
            return np.dtype((bool, disk.subdtype[1])), np.dtype((bool, disk.subdtype[1]))
        return np.dtype((base.newbyteorder("="), disk.subdtype[1])), disk
    if disk.fields is not None and allow_compound:
        return _compound_bools(tid, disk), disk
    if disk.fields is not None:
        raise UnsupportedDtypeError(
            f"{where} has a compound dtype {disk}; read record data as a Table with "
            f'xr.open_dataset(path, engine="daskh5")'
        )
    raise UnsupportedDtypeError(
        f"{where} has dtype {disk} (HDF5 class {cls}), which daskh5 does not read as an array; "
        "variable-length data is read with daskh5.read_ragged"
    )


def _extdim(obj, where: str) -> int | None:
    """An EArray's extendable axis: ``EXTDIM`` is a scalar, or a 1-element array in PyTables 1.x files."""
    from daskh5._attrs import small_attr

    value = small_attr(obj, "EXTDIM")
    if value is None:
        return None
    value = np.asarray(value)
    if (
        value.size != 1
        or value.dtype.kind not in "iu"
        or not 0 <= int(value.reshape(-1)[0]) < max(1, obj.ndim)
    ):
        raise NotHDF5Error(
            f"{where}: its EXTDIM attribute ({value.dtype}, shape {value.shape}) does not name one of its "
            f"{obj.ndim} axes; the node is damaged (h5py or PyTables may still read its values)"
        )
    return int(value.reshape(-1)[0])


def _has_objects(dtype: np.dtype) -> bool:
    """Whether a (compound) dtype has object members (variable-length data, references)."""
    base = dtype.subdtype[0] if dtype.subdtype else dtype
    if base.fields is None:
        return base.kind == "O"
    return any(_has_objects(base.fields[n][0]) for n in base.names)


def _compound_bools(tid, dtype: np.dtype) -> np.dtype:
    """``dtype`` with PyTables' 8-bit bitfield members (bool columns) typed as bool."""
    import h5py

    fields = []
    for i, name in enumerate(dtype.names):
        sub, offset = dtype.fields[name][:2]
        member = tid.get_member_type(i)
        cls = member.get_class()
        if cls == h5py.h5t.ARRAY:
            member, cls = member.get_super(), member.get_super().get_class()
        base = sub.subdtype[0] if sub.subdtype else sub
        if cls == h5py.h5t.BITFIELD and base.itemsize == 1:
            sub = np.dtype((bool, sub.subdtype[1])) if sub.subdtype else np.dtype(bool)
        elif cls == h5py.h5t.COMPOUND and base.fields is not None:
            nested = _compound_bools(member, base)
            sub = np.dtype((nested, sub.subdtype[1])) if sub.subdtype else nested
        fields.append((name, sub, offset))
    return np.dtype(
        {"names": [f[0] for f in fields], "formats": [f[1] for f in fields], "offsets": [f[2] for f in fields],
         "itemsize": dtype.itemsize}
    )  # fmt: skip


#: (precision, bit offset, (sign, exponent position, exponent bits, mantissa position, mantissa bits),
#: exponent bias, normalisation) of the IEEE floats numpy reads as they are stored, by byte size.
_IEEE = {
    2: (16, 0, (15, 10, 5, 0, 10), 15),
    4: (32, 0, (31, 23, 8, 0, 23), 127),
    8: (64, 0, (63, 52, 11, 0, 52), 1023),
}


def _float_layout(tid) -> tuple:
    return (tid.get_precision(), tid.get_offset(), tuple(tid.get_fields()), tid.get_ebias())


@functools.cache
def _native_floats() -> dict[int, tuple]:
    import h5py

    layouts = {size: (*std, h5py.h5t.NORM_IMPLIED) for size, std in _IEEE.items()}
    ld = h5py.h5t.NATIVE_LDOUBLE  # x87 extended precision on x86: its size, layout and explicit bit
    layouts.setdefault(ld.get_size(), (*_float_layout(ld), ld.get_norm()))
    return layouts


def conversion_needed(tid, where: str) -> str | None:
    """Why the stored values of HDF5 type ``tid`` are not numpy's bytes as they are, or None.

    HDF5 integers may use fewer bits than their size (``precision``) at a bit
    ``offset``, floats any sign/exponent/mantissa layout and exponent bias;
    h5py converts those (HDF5 does the arithmetic), while reinterpreting their
    bytes gives wrong numbers.  Bitfields HDF5 cannot convert raise
    :class:`UnsupportedDtypeError`.
    """
    import h5py

    cls = tid.get_class()
    if cls == h5py.h5t.INTEGER:
        bits = 8 * tid.get_size()
        if (tid.get_precision(), tid.get_offset()) != (bits, 0):
            return f"{tid.get_precision()}-bit integers at bit {tid.get_offset()} of {bits}-bit words"
    elif cls == h5py.h5t.FLOAT:
        have = (*_float_layout(tid), tid.get_norm())
        if have != _native_floats().get(tid.get_size()):
            prec, off, (sign, epos, ebits, mpos, mbits), ebias, _norm = have
            return (
                f"{8 * tid.get_size()}-bit floats with {prec} bits at bit {off}: sign bit {sign}, {ebits} "
                f"exponent bits at {epos} (bias {ebias}), {mbits} mantissa bits at {mpos}, "
                "not the IEEE layout numpy reads"
            )
    elif cls == h5py.h5t.BITFIELD:
        size = tid.get_size()
        std = [getattr(h5py.h5t, f"STD_B{8 * size}{order}", None) for order in ("LE", "BE")]
        if not any(t is not None and tid == t for t in std):
            raise UnsupportedDtypeError(
                f"{where} stores a {8 * size}-bit bitfield with unused bits, which HDF5 cannot convert "
                "to numbers; rewrite the node with a plain integer or boolean type"
            )
    elif cls in (h5py.h5t.ENUM, h5py.h5t.ARRAY):
        return conversion_needed(tid.get_super(), where)
    elif cls == h5py.h5t.COMPOUND:
        for i in range(tid.get_nmembers()):
            why = conversion_needed(tid.get_member_type(i), where)
            if why:
                name = tid.get_member_name(i).decode("utf-8", "backslashreplace")
                return f"column {name!r}: {why}"
    return None


@contextlib.contextmanager
def maybe_open(path: str, f=None) -> Iterator:
    """``f`` if the caller has the file open already, else the file opened for the block."""
    if f is not None:
        with damaged_metadata(path):
            yield f
    else:
        with open_h5(path) as opened:
            yield opened


MAX_NODE_BYTES = 1 << 50
"""Largest node daskh5 takes (a pebibyte: damaged dataspaces claim 2**62 rows).  Chunks that were
never written cost nothing in the chunk index, so the number of chunks is not limited; the dask
arrays made from a node are (:data:`daskh5._chunking.MAX_BLOCKS`)."""


def size_problem(shape, chunks, itemsize: int) -> str | None:
    """Why daskh5 cannot take a node of this shape, or None: more bytes than any file holds."""
    nbytes = itemsize
    for s in shape:
        nbytes *= int(s)
    if nbytes > MAX_NODE_BYTES:
        return f"shape {tuple(shape)} is {nbytes:,} bytes, more than any file holds: the shape is damaged"
    return None


def _check_size(where, shape, chunks, itemsize: int, layout: str, offset, file_size: int) -> None:
    """Refuse shapes no file could hold, and contiguous data that ends past the end of the file."""
    problem = size_problem(shape, chunks, itemsize)
    if problem:
        raise NotHDF5Error(f"{where}: {problem}")
    if layout == "contiguous" and offset is not None:
        nbytes = itemsize
        for s in shape:
            nbytes *= s
        if offset + nbytes > file_size:
            raise NotHDF5Error(
                f"{where}: its {nbytes:,} bytes would end past the end of the {file_size:,}-byte file; "
                f"{being_written(where.rsplit(':', 1)[0]) or 'the file is truncated or damaged: re-copy it'}"
            )


ATTR_APPENDING = "DASKH5_APPENDING"  # on an EArray while daskh5.append writes: the committed length


def describe_array(
    path: str | os.PathLike,
    node: str,
    driver: str | None = None,
    *,
    allow_table: bool = False,
    f=None,
    allow_external: bool = False,
) -> NodeInfo:
    """Describe the array node ``node`` of ``path`` (metadata only, never data).

    Raises a daskh5 error naming the file and node when the file is missing or
    not HDF5, the node does not exist, or it is not an array node.  ``f``: an
    h5py handle to ``path`` that is already open (e.g. when describing many nodes).
    Values stored outside the file (external links, EXTERNAL storage, virtual
    sources elsewhere) raise :class:`~daskh5.errors.ExternalDataError` unless
    ``allow_external``; then the result describes the node where it really is
    (``info.path`` is the target file of an external link).
    """
    import h5py

    from daskh5._attrs import small_attr

    path = _absolute(path)
    st = os.stat(path) if os.path.exists(path) else None
    with maybe_open(path, f) as f:
        obj = lookup(f, node, allow_external=allow_external)
        name = node_name(obj.name)
        if os.path.abspath(obj.file.filename) != path:  # reached through an external link
            path = os.path.abspath(obj.file.filename)
            st = os.stat(path)
        where = f"{path}:{name}"
        kind = node_kind(obj)
        table_ok = allow_table and kind in ("Table", "Dataset") and isinstance(obj, h5py.Dataset)
        if (kind in _ELSEWHERE and not table_ok) or not isinstance(obj, h5py.Dataset):
            raise NodeKindError(
                f"{where} is a {kind}; daskh5.from_pytables reads Array, CArray and EArray nodes. "
                f"Use {_ELSEWHERE.get(kind, 'a node that holds an array')}."
            )
        if kind == "Unimplemented":
            raise NodeKindError(f"{where} is a node PyTables cannot map to an array")
        if obj.shape is None:
            raise NodeKindError(f"{where} is an empty dataset (HDF5 null dataspace): it holds no values")
        dtype, disk = _dtypes(obj, where, allow_compound=table_ok, allow_time=True)
        from daskh5._h5types import time_array_layout, time_layout

        times = time_layout(obj.id.get_type()) or time_array_layout(obj.id.get_type())[0]
        if times is not None:  # PyTables Time32/Time64: read as their integers, returned as datetime64
            dtype = np.dtype((times[1], disk.subdtype[1])) if disk.subdtype else times[1]
        layout = check_storage(obj, where, allow_external=allow_external)
        stored_type = obj.id.get_type()
        conversion = conversion_needed(stored_type, where)
        if conversion is None and disk.fields is not None and _has_objects(disk):
            conversion = "variable-length members"  # stored as heap descriptors: h5py reads them
        try:
            dcpl = obj.id.get_create_plist()
            external = external_segments(dcpl, path) if layout == "external" else ()
            virtual = (virtual_boxes(dcpl, path, obj.ndim) or ()) if layout == "virtual" else ()
            filters = tuple(
                (int(fid), tuple(int(c) for c in cd))
                for fid, _flags, cd, _name in (dcpl.get_filter(i) for i in range(dcpl.get_nfilters()))
            )
            offset = obj.id.get_offset() if layout == "contiguous" else None
            fill = np.zeros((), dtype=disk)
            # Ask the property list first: h5py's ``fillvalue`` crashes the process on a
            # fill-value message that lies about its size, this call raises instead.
            if dcpl.fill_value_defined() != h5py.h5d.FILL_VALUE_UNDEFINED and times is None:
                try:  # HDF5 has no conversion to read a time type's: 0, as PyTables'
                    dcpl.get_fill_value(fill)
                except RuntimeError:  # nor for some Tables mixing time and enum members:
                    fill = np.zeros((), dtype=disk)  # PyTables' default fill, used for unwritten chunks only
        except Exception as exc:
            raise NotHDF5Error(f"{where}: could not read the node's storage metadata: {exc}") from exc
        extdim = _extdim(obj, where) if kind == "EArray" else None
        shape = [int(s) for s in obj.shape]
        _check_size(where, shape, obj.chunks, stored_type.get_size(), layout, offset, st.st_size if st else 0)
        committed = small_attr(obj, ATTR_APPENDING) if extdim is not None else None
        if committed is not None and 0 <= int(committed) < shape[int(extdim)]:
            shape[int(extdim)] = int(committed)  # rows of an unfinished daskh5.append are not shown
        chunkshape = tuple(int(c) for c in obj.chunks) if obj.chunks else None
        if disk.subdtype is not None:  # an H5T_ARRAY element: the same bytes as trailing axes of its base
            inner = tuple(int(n) for n in disk.subdtype[1])
            shape, dtype, disk = [*shape, *inner], dtype.subdtype[0], disk.subdtype[0]
            chunkshape = None if chunkshape is None else (*chunkshape, *inner)
        return NodeInfo(
            path=path,
            node=name,
            kind=kind,
            shape=tuple(shape),
            dtype=dtype,
            disk_dtype=disk,
            layout=layout,
            chunkshape=chunkshape,
            filters=filters,
            fillvalue=fill.tobytes(),
            offset=None if offset is None else int(offset),
            extdim=None if extdim is None else int(extdim),
            mtime_ns=st.st_mtime_ns,
            file_size=st.st_size,
            external=external,
            virtual=virtual,
            allow_external=allow_external,
            conversion=conversion,
            time=times is not None,
        )

"""Read a virtual dataset (VDS) box by box through daskh5's own readers.

A VDS maps blocks of its element space onto blocks of source datasets.  When
every mapping is one rectangular box onto one rectangular box of a named
dataset (what ``h5py.VirtualLayout`` writes for unit-step slices), daskh5 reads
each source with its own reader: without HDF5's global lock, with the
containment checks of :func:`daskh5._nodes.describe_array` applied to every
source, and with relative names resolved next to the VDS file (source files)
and next to each source's file (its EXTERNAL storage), where HDF5 would use
the current directory for the latter.  Other mappings (strided, point,
``%b`` patterns, unlimited) leave :func:`virtual_boxes` returning None, and
the VDS is read through h5py.  As in HDF5, what no mapping covers, and a
source that does not exist, read as the fill value.
"""

from __future__ import annotations

import os
import stat
import threading

import numpy as np

from daskh5.errors import FileNotFound, NodeNotFound, NotHDF5Error

__all__ = ["NeedsLibrary", "open_source", "read_virtual", "virtual_boxes"]

MAX_DEPTH = 8  # virtual datasets over virtual datasets read at once (a loop otherwise recurses forever)
_SEL_ALL, _SEL_HYPERSLABS = 3, 2  # h5py.h5s.SEL_ALL, SEL_HYPERSLABS

Box = tuple[
    tuple[int, ...], tuple[int, ...], str, str, tuple[int, ...]
]  # (start, shape, file, node, src start)


def _box(space) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """``(start, shape)`` of a selection that is one rectangular box, else None."""
    kind = space.get_select_type()
    if kind == _SEL_ALL:
        return (0,) * len(space.shape), tuple(int(n) for n in space.shape)
    if kind != _SEL_HYPERSLABS or not space.is_regular_hyperslab():
        return None
    start, stride, count, block = space.get_regular_hyperslab()
    shape = []
    for st, c, b in zip(stride, count, block):
        if c != 1 and st != b:  # separate blocks along this axis
            return None
        shape.append(int(c) * int(b))
    if any(n >= 1 << 62 for n in shape):  # H5S_UNLIMITED
        return None
    return tuple(int(s) for s in start), tuple(shape)


def virtual_boxes(dcpl, path: str, ndim: int) -> tuple[Box, ...] | None:
    """Every mapping of a VDS as a box onto a box of a source, or None if one is not."""
    out = []
    base = os.path.dirname(path)
    for i in range(dcpl.get_virtual_count()):
        file_name, source = dcpl.get_virtual_filename(i), dcpl.get_virtual_dsetname(i)
        if "%" in file_name or "%" in source:
            return None
        vbox, srcspace = _box(dcpl.get_virtual_vspace(i)), dcpl.get_virtual_srcspace(i)
        if vbox is None or len(vbox[0]) != ndim:
            return None
        if srcspace.get_select_type() == _SEL_ALL:  # the whole source, whose extent HDF5 learns on opening
            sbox = (None, vbox[1])
        else:
            sbox = _box(srcspace)
            if sbox is None or vbox[1] != sbox[1]:
                return None
        if file_name == ".":
            src = path
        else:
            src = os.path.abspath(file_name if os.path.isabs(file_name) else os.path.join(base, file_name))
        out.append((vbox[0], vbox[1], src, source if source.startswith("/") else "/" + source, sbox[0]))
    return tuple(out)


class NeedsLibrary(Exception):
    """This read needs HDF5's own VDS code (a source's dtype differs: HDF5 converts it)."""


_depth = threading.local()


def read_virtual(info, sel, source) -> np.ndarray:
    """The bounding box of ``sel`` assembled from the sources, then ``sel`` applied to it.

    ``source(i)`` is the reader of mapping ``i`` (None when its source does not exist).
    """
    lo = [s[0] if isinstance(s, tuple) else int(s.min()) for s in sel]
    hi = [s[1] if isinstance(s, tuple) else int(s.max()) + 1 for s in sel]
    fill = np.frombuffer(info.fillvalue, dtype=info.disk_dtype)[0]
    out = np.full([b - a for a, b in zip(lo, hi)], fill, dtype=info.disk_dtype).astype(info.dtype)
    level = getattr(_depth, "level", 0)
    if level >= MAX_DEPTH:
        raise NotHDF5Error(
            f"{info.path}:{info.node}: virtual datasets nested more than {MAX_DEPTH} deep (a loop?); "
            "the file is damaged"
        )
    _depth.level = level + 1
    try:
        for i, (vstart, shape, _file, _node, sstart) in enumerate(info.virtual):
            a = [max(x, v) for x, v in zip(lo, vstart)]
            b = [min(y, v + n) for y, v, n in zip(hi, vstart, shape)]
            reader = source(i) if all(x < y for x, y in zip(a, b)) else None
            if reader is None:
                continue
            whole = sstart is None
            if (
                reader.dtype != info.dtype
                or len(reader.shape) != len(shape)
                or (whole and reader.shape != shape)
            ):
                raise NeedsLibrary(i)  # HDF5 converts types and maps other shapes element by element
            src = [s + x - v for s, x, v in zip(sstart or (0,) * len(shape), a, vstart)]
            end = [min(s + y - x, n) for s, x, y, n in zip(src, a, b, reader.shape)]  # a short source
            if any(s >= e for s, e in zip(src, end)):
                continue
            part = reader[tuple(slice(s, e) for s, e in zip(src, end))]
            out[tuple(slice(x - o, x - o + (e - s)) for x, o, s, e in zip(a, lo, src, end))] = part
    finally:
        _depth.level = level
    for axis, (s, first) in enumerate(zip(sel, lo)):
        if not isinstance(s, tuple):
            out = np.take(out, s - first, axis=axis)
    return out


def open_source(info, i: int, describe, reader_class):
    """The reader of mapping ``i``'s source, or None when the source does not exist (fill value)."""
    _vstart, _shape, path, node, _sstart = info.virtual[i]
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block HDF5's open forever
            raise NotHDF5Error(f"{info.path}:{info.node}: its source file {path} is not a regular file")
    except FileNotFoundError:
        return None
    try:
        src = describe(path, node, allow_external=info.allow_external)
    except (NodeNotFound, FileNotFound):
        return None
    return reader_class(src)

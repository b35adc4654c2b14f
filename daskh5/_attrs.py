"""Read HDF5 attributes of untrusted files without letting them claim unbounded memory.

Reading an attribute costs what its type and dataspace say, and for
variable-length types (strings, sequences) what its heap descriptors say: a
few descriptors naming one big heap object again and again, or a 2 GiB
attribute, are loaded whole by h5py.  So before an attribute is read its cost
is worked out from metadata alone:

* fixed-size types: elements x type size;
* variable-length elements: the lengths in their descriptors, which h5py does
  not expose; they are found in the attribute message of the object header
  (``compact`` storage, what PyTables and h5py write).  Attributes in dense
  storage (more than 8 attributes of a ``libver="latest"`` or netCDF-4 file)
  have no descriptors daskh5 can read: a single element is one heap object,
  at most the file, so it is read and then measured; several are read only
  when that many file sizes fit within the limit.

Attributes above a size limit are left out with a warning naming them; the
attributes of one object together never take more bytes than the file has
(an honest file stores each attribute's values once).
"""

from __future__ import annotations

import os
import struct
import warnings

import numpy as np

__all__ = [
    "DEFAULT_MAX_ATTR_SIZE",
    "MAX_ATTRS",
    "AttrBudget",
    "attr_size",
    "parse_limit",
    "read_attrs",
    "small_attr",
]

DEFAULT_MAX_ATTR_SIZE = 1 << 20
"""Attributes bigger than this (1 MiB) are left out of xarray's ``attrs`` (``max_attr_size=``)."""

SYSTEM_MAX = 64 << 10  # bookkeeping attributes daskh5 reads by name (CLASS, EXTDIM, ...) are tiny
_ELEMENT_OVERHEAD = 64  # bytes of Python object per decoded variable-length element (a str, an array)


def parse_limit(limit) -> int | None:
    """``max_attr_size`` as bytes: an int, a string like ``"16MiB"``, or None (no limit).

    >>> parse_limit("1KiB"), parse_limit(None)
    (1024, None)
    """
    if limit is None:
        return None
    from dask.utils import parse_bytes

    value = parse_bytes(limit) if isinstance(limit, str) else int(limit)
    if value < 0:
        raise ValueError(f"max_attr_size must be a size in bytes or None, got {limit!r}")
    return value


def _has_vlen(tid) -> bool:
    import h5py

    cls = tid.get_class()
    if cls == h5py.h5t.VLEN or (cls == h5py.h5t.STRING and tid.is_variable_str()):
        return True
    if cls == h5py.h5t.COMPOUND:
        return any(_has_vlen(tid.get_member_type(i)) for i in range(tid.get_nmembers()))
    if cls == h5py.h5t.ARRAY:
        return _has_vlen(tid.get_super())
    return False


class _Headers:
    """Raw attribute data from the object headers of one file, parsed once per object."""

    def __init__(self, f):
        self.path = f.filename
        self.sizeof_addr, self.sizeof_size = f.id.get_create_plist().get_sizes()
        self.parsed: dict[int, dict[bytes, bytes]] = {}

    def data(self, obj, name: bytes) -> bytes | None:
        import h5py

        addr = int(h5py.h5o.get_info(obj.id).addr)
        if addr not in self.parsed:
            try:
                self.parsed[addr] = _attribute_messages(self.path, addr, self.sizeof_addr, self.sizeof_size)
            except (OSError, struct.error, ValueError):
                self.parsed[addr] = {}
        return self.parsed[addr].get(name)


def _read(path: str, offset: int, size: int) -> bytes:
    from daskh5._files import pread_exact

    return bytes(pread_exact(path, offset, size))


def _attribute_messages(path: str, addr: int, sa: int, ss: int) -> dict[bytes, bytes]:
    """``{name: raw data}`` of the attribute messages (type 0x0C) of the object header at ``addr``."""
    out: dict[bytes, bytes] = {}
    head = _read(path, addr, 16)
    if head[:4] == b"OHDR":  # version 2
        flags = head[5]
        p = 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
        width = 1 << (flags & 3)
        prefix = _read(path, addr, p + width)
        size = int.from_bytes(prefix[p : p + width], "little")
        blocks, v2 = [(addr + p + width, size - 0)], True
        order = bool(flags & 0x04)
    elif head[0] == 1:
        (size,) = struct.unpack_from("<I", head, 8)
        blocks, v2, order = [(addr + 16, size)], False, False
    else:
        return out
    seen = 0
    while blocks and seen < 1 << 16:  # a damaged header may loop through its continuations
        start, size = blocks.pop(0)
        seen += 1
        if size <= 0 or size > 1 << 28:
            continue
        block = _read(path, start, size)
        p, end = 0, len(block)
        if v2 and block[:4] == b"OCHK":
            p, end = 4, len(block) - 4
        elif v2:
            end = len(block) - 4  # the first chunk ends with its checksum
        while p + (4 if v2 else 8) <= end:
            if v2:
                mtype, msize, mflags = block[p], int.from_bytes(block[p + 1 : p + 3], "little"), block[p + 3]
                p += 4 + (2 if order else 0)
            else:
                mtype, msize, mflags = struct.unpack_from("<HHB", block, p)
                p += 8
            body = block[p : p + msize]
            p += msize
            if mtype == 0x10 and len(body) >= sa + ss:
                blocks.append(
                    (int.from_bytes(body[:sa], "little"), int.from_bytes(body[sa : sa + ss], "little"))
                )
            elif mtype == 0x0C and not mflags & 0x02:  # not a shared message
                parsed = _attribute_message(body)
                if parsed is not None:
                    out.setdefault(parsed[0], parsed[1])
    return out


def _attribute_message(body: bytes) -> tuple[bytes, bytes] | None:
    """(name, raw data) of one attribute message."""
    if len(body) < 8:
        return None
    version = body[0]
    name_size, dt_size, ds_size = struct.unpack_from("<HHH", body, 2)
    if version == 1:
        pad = lambda n: (n + 7) // 8 * 8  # noqa: E731
        p = 8
        name = body[p : p + name_size]
        p += pad(name_size) + pad(dt_size) + pad(ds_size)
    elif version in (2, 3):
        p = 8 + (1 if version == 3 else 0)
        name = body[p : p + name_size]
        p += name_size + dt_size + ds_size
    else:
        return None
    return name.rstrip(b"\0"), body[p:]


def attr_size(
    obj, name: str | bytes, headers: _Headers | None = None, file_size: int | None = None
) -> int | None:
    """Bytes reading attribute ``name`` of the h5py object ``obj`` would allocate, from metadata alone;
    None when that cannot be known before reading (variable-length elements in dense storage)."""
    import h5py

    raw_name = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else bytes(name)
    aid = h5py.h5a.open(obj.id, raw_name)
    tid, space = aid.get_type(), aid.get_space()
    n = 0 if space.get_simple_extent_type() == h5py.h5s.NULL else int(space.get_simple_extent_npoints())
    if not _has_vlen(tid):
        return n * int(tid.get_size())
    cls = tid.get_class()
    if cls == h5py.h5t.VLEN or cls == h5py.h5t.STRING:
        headers = headers or _Headers(obj.file)
        data = headers.data(obj, raw_name)
        step = 8 + headers.sizeof_addr
        if data is not None and len(data) >= n * step:
            lengths = np.frombuffer(
                data[: n * step], dtype=np.dtype([("n", "<u4"), ("rest", f"V{step - 4}")])
            )
            base = 1 if cls == h5py.h5t.STRING else int(tid.get_super().get_size())
            return int(lengths["n"].astype(np.int64).sum()) * base + n * _ELEMENT_OVERHEAD
    if n <= 1:  # one element is one heap object: at most the file; measured once read
        return ONE_OBJECT
    return None if file_size is None or n * file_size > 1 << 26 else n * file_size


ONE_OBJECT = -1  # what attr_size says of one variable-length element it cannot size before reading


def _decoded_size(value) -> int:
    """Bytes an attribute value read by h5py takes (variable-length elements counted by their data)."""
    if isinstance(value, (bytes, str)):
        return len(value) + _ELEMENT_OVERHEAD
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "O":
            return sum(_decoded_size(v) for v in value.reshape(-1).tolist()) + value.nbytes
        return value.nbytes
    return _ELEMENT_OVERHEAD


class AttrBudget:
    """What the attributes read for one store may take: ``limit`` each, the file's size in all."""

    def __init__(self, f, limit: int | None):
        self.limit = limit
        self.left = self.file_size = os.path.getsize(f.filename)
        self.headers = _Headers(f)

    def refuse(self, size: int | None) -> str | None:
        """Why an attribute of ``size`` bytes is left out, or None (it is then charged to the budget)."""
        if size is None:
            return (
                "variable-length elements whose size daskh5 cannot check before reading them "
                "(dense attribute storage)"
            )
        if self.limit is not None and size > self.limit:
            return f"{size:,} bytes, more than max_attr_size={self.limit:,}"
        if size > self.left:
            return (
                f"{size:,} bytes, which with the attributes before it is more than the whole "
                f"{self.file_size:,}-byte file holds (its heap descriptors alias other values)"
            )
        self.left -= size
        return None


MAX_ATTRS = 10_000
"""Objects with more attributes have none read: HDF5 finds an attribute of an object header
(compact storage) by scanning all of them, so reading n of them costs n**2 (10**6 took hours)."""


def read_attrs(obj, budget: AttrBudget, where: str) -> dict:
    """``{name: value}`` of the attributes of ``obj`` the budget admits; the rest are named in a warning."""
    import h5py

    count = int(h5py.h5o.get_info(obj.id).num_attrs)
    if count > MAX_ATTRS:
        warnings.warn(
            f"{where}: attributes left out: all {count:,} of them, more than daskh5 reads for one object "
            f"({MAX_ATTRS:,}); read the ones you need with h5py",
            UserWarning,
            stacklevel=3,
        )
        return {}
    out, left_out = {}, []
    for key in obj.attrs:
        try:
            size = attr_size(obj, key, budget.headers, budget.file_size)
        except Exception:  # a type or name h5py cannot read: as if it were absent
            continue
        why = None if size == ONE_OBJECT else budget.refuse(size)
        if why is None:
            try:
                value = obj.attrs[key]
            except Exception:
                continue
            if size == ONE_OBJECT:  # one heap object of unknown size: measured now, kept if it fits
                why = budget.refuse(_decoded_size(value))
        if why is not None:
            left_out.append(f"{key!r} ({why})")
            continue
        out[key] = value
    if left_out:
        warnings.warn(f"{where}: attributes left out: " + "; ".join(left_out), UserWarning, stacklevel=3)
    return out


def small_attr(obj, name: str, default=None, limit: int = SYSTEM_MAX):
    """Attribute ``name`` of ``obj`` if it exists and is at most ``limit`` bytes, else ``default``.

    For the bookkeeping attributes daskh5 reads by name (``CLASS``, ``EXTDIM``, ...).
    """
    if name not in obj.attrs:
        return default
    try:
        size = attr_size(obj, name)
    except Exception:
        return default
    if size is None or size > limit:
        return default
    value = obj.attrs[name]
    return default if size == ONE_OBJECT and _decoded_size(value) > limit else value

"""How big variable-length data is, learnt before it is read.

A variable-length row (a VLArray row, an element of a vlen attribute) is
stored as a small *descriptor*: its length, then the global heap object that
holds its values (the heap collection's address and the object's index).
HDF5 reads a row by allocating ``length x item size`` bytes and copying the
object into it, so a file of a few MB whose descriptors all name one 4 MB
object asks for gigabytes.  The values of every row are bytes of the file
(heap objects are never compressed), so the rows of one read can never hold
more bytes than the file has; daskh5 reads the descriptors first (with its
own chunk reader: no heap access) and refuses a read that claims more.
"""

from __future__ import annotations

import os

import numpy as np

from daskh5._codecs import pipeline_supported
from daskh5._nodes import NodeInfo, node_kind
from daskh5.errors import RaggedLayoutError

__all__ = [
    "check_claim",
    "check_dataset_claim",
    "descriptor_dtype",
    "descriptor_reader",
    "heap_rows",
    "row_lengths",
]


def descriptor_dtype(sizeof_addr: int) -> np.dtype:
    """One stored descriptor: 4-byte length, heap collection address, 4-byte object index.

    >>> descriptor_dtype(8).itemsize
    16
    """
    return np.dtype([("length", "<u4"), ("collection", f"V{sizeof_addr}"), ("index", "<u4")])


def descriptor_reader(path: str, ds, driver: str | None = None):
    """A :class:`~daskh5._reader.NodeReader` of the raw descriptors of the chunked 1-d vlen dataset
    ``ds``, or None when its filters need HDF5 (then HDF5 would read the heap too)."""
    if ds.chunks is None or len(ds.shape) != 1:
        return None
    dtype = descriptor_dtype(ds.file.id.get_create_plist().get_sizes()[0])
    return _raw_reader(path, ds, dtype, os.stat(path), driver)


def row_lengths(reader, rows) -> np.ndarray:
    """Stored lengths (in items of the vlen base type) of ``rows`` (a slice or an index array)."""
    return reader[rows]["length"].astype(np.int64)


def check_claim(where: str, what: str, lengths: np.ndarray, itemsize: int, file_size: int) -> int:
    """The bytes ``lengths`` items of ``itemsize`` bytes take, or a RaggedLayoutError if the file
    cannot hold them."""
    total = int(lengths.sum(dtype=np.int64)) * int(itemsize)
    if total > file_size:
        raise RaggedLayoutError(
            f"{where}: {what} claim {total:,} bytes of values, more than the whole {file_size:,}-byte file "
            "holds: their heap descriptors name the same objects again and again, or the file is damaged"
        )
    return total


def heap_rows(
    path: str, where: str, descriptors: np.ndarray, itemsize: int, sizes: tuple[int, int], base: int = 0
) -> list[bytes]:
    """The stored bytes of variable-length rows, read from the file's global heap without HDF5.

    For element types h5py cannot map to numpy (PyTables' Time atoms), whose
    rows HDF5 cannot convert.  ``descriptors``: the rows' raw descriptors
    (:func:`descriptor_dtype`); ``itemsize``: bytes of one item; ``sizes``:
    the file's (sizeof_addr, sizeof_length); ``base``: the file's base address
    (its user block's size), which heap addresses are relative to.  Every collection and object is
    checked against the file before its bytes are used.
    """
    from daskh5._files import pread_exact

    _sizeof_addr, sizeof_length = sizes
    file_size = os.path.getsize(path)
    collections: dict[int, dict[int, bytes]] = {}
    read = 0  # real collections never overlap: together they are never bigger than the file
    out = []
    for row, d in enumerate(descriptors):
        want = int(d["length"]) * itemsize
        if want == 0:
            out.append(b"")
            continue
        addr = base + int.from_bytes(bytes(d["collection"]), "little")
        if addr not in collections:
            collections[addr], size = _collection(
                path, where, addr, sizeof_length, file_size, pread_exact, budget=file_size - read
            )
            read += size
        data = collections[addr].get(int(d["index"]))
        if data is None or len(data) < want:
            raise RaggedLayoutError(
                f"{where}: row {row} names heap object {int(d['index'])} of the collection at byte {addr}, "
                "which does not hold its values: the file is damaged"
            )
        out.append(data[:want])
    return out


def _collection(
    path: str, where: str, addr: int, sizeof_length: int, file_size: int, pread, budget: int
) -> tuple[dict[int, bytes], int]:
    """The objects of the global heap collection at ``addr`` ({index: bytes}) and its size.

    ``budget``: bytes the collections of this read may still take; real collections never
    overlap, so together they never hold more than the file (crafted ones would be read again
    and again).
    """
    head = 8 + sizeof_length
    if addr < 0 or addr + head > file_size:
        raise RaggedLayoutError(f"{where}: a row's heap collection at byte {addr} is outside the file")
    header = bytes(pread(path, addr, head))
    size = int.from_bytes(header[8:head], "little")
    if header[:4] != b"GCOL" or size < head or addr + size > file_size:
        raise RaggedLayoutError(
            f"{where}: no valid global heap collection at byte {addr}: the file is damaged"
        )
    if size > budget:
        raise RaggedLayoutError(
            f"{where}: the rows name heap collections that together hold more bytes than the whole file: "
            "they overlap, so the file is damaged or crafted"
        )
    raw = bytes(pread(path, addr, size))
    objects, pos = {}, head
    while pos + 8 + sizeof_length <= size:
        index = int.from_bytes(raw[pos : pos + 2], "little")
        length = int.from_bytes(raw[pos + 8 : pos + 8 + sizeof_length], "little")
        if index == 0:  # the free space: the last object
            break
        start = pos + 8 + sizeof_length
        if start + length > size:
            raise RaggedLayoutError(
                f"{where}: heap object {index} at byte {addr + pos} runs past its collection"
            )
        objects[index] = raw[start : start + length]
        pos = start + (length + 7) // 8 * 8
    return objects, size


# -- datasets whose elements hold variable-length data (strings, compound members) ------------------
_claim_readers: dict[tuple[str, int, str], object] = {}


def claim_layout(tid, sizeof_addr: int) -> tuple[np.dtype, list[tuple[str | None, int]]] | None:
    """How an element of HDF5 type ``tid`` holds its vlen descriptors, or None if it holds none.

    (raw element dtype, [(field or None for the whole element, bytes per item)]): a vlen type
    is one descriptor; a compound names its vlen members (scalar or arrays of them) at their
    offsets, the rest of the record as padding.
    """
    import h5py

    desc = descriptor_dtype(sizeof_addr)

    def vlen_base(t) -> int | None:
        if t.get_class() == h5py.h5t.STRING and t.is_variable_str():
            return 1
        if t.get_class() == h5py.h5t.VLEN:
            return t.get_super().get_size()
        return None

    whole = vlen_base(tid)
    if whole is not None:
        return desc, [(None, whole)]
    if tid.get_class() != h5py.h5t.COMPOUND:
        return None
    # The type describes records in memory, where a vlen string is a pointer and a vlen sequence a
    # (length, pointer) pair; on disk each is a descriptor, and HDF5 shifts later members by the
    # difference (H5T_LOC_DISK).
    names, formats, offsets, items = [], [], [], []
    shift = 0
    for i in sorted(range(tid.get_nmembers()), key=tid.get_member_offset):
        member, shape = tid.get_member_type(i), ()
        if member.get_class() == h5py.h5t.ARRAY:
            shape, member = tuple(int(n) for n in member.get_array_dims()), member.get_super()
        size = vlen_base(member)
        if size is None:
            continue
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        name = f"m{i}"
        names.append(name)
        formats.append((desc, shape) if shape else desc)
        offsets.append(tid.get_member_offset(i) + shift)
        items.append((name, size))
        shift += count * (desc.itemsize - member.get_size())
    if not names:
        return None
    raw = {"names": names, "formats": formats, "offsets": offsets, "itemsize": tid.get_size() + shift}
    return np.dtype(raw), items


def check_dataset_claim(path: str, ds, key: tuple) -> None:
    """Refuse a read of ``ds[key]`` (slices) whose variable-length values claim more bytes than the file.

    The elements' stored descriptors are read first with daskh5's own chunk reader (no heap
    access); HDF5 would allocate what each one claims, so a few MB whose descriptors all name one
    big heap object could ask for terabytes.  Datasets whose descriptors daskh5 cannot read itself
    (compact layout, filters outside its pipeline) are read as they are.
    """
    layout = claim_layout(ds.id.get_type(), ds.file.id.get_create_plist().get_sizes()[0])
    if layout is None or ds.shape is None:
        return
    st = os.stat(path)
    cache_key = (path, st.st_mtime_ns, ds.name)
    reader = _claim_readers.get(cache_key)
    if reader is None:
        reader = _raw_reader(path, ds, layout[0], st)
        if reader is None:
            return
        if len(_claim_readers) > 64:
            _claim_readers.clear()
        _claim_readers[cache_key] = reader
    raw = reader[key]
    total = 0
    for field, size in layout[1]:
        lengths = (raw if field is None else raw[field])["length"]
        total += int(lengths.sum(dtype=np.int64)) * size
    if total > st.st_size:
        raise RaggedLayoutError(
            f"{path}:{ds.name}: the selected elements claim {total:,} bytes of variable-length values, more "
            f"than the whole {st.st_size:,}-byte file holds: their heap descriptors name the same objects "
            "again and again, or the file is damaged"
        )


def _raw_reader(path: str, ds, dtype: np.dtype, st, driver: str | None = None):
    """A NodeReader of ``ds``'s raw elements as ``dtype`` (chunked or contiguous), or None when
    they are compact or their filters need HDF5."""
    from daskh5._reader import NodeReader, dataset_filters

    dcpl = ds.id.get_create_plist()
    filters = dataset_filters(ds)
    layout = {0: "compact", 1: "contiguous", 2: "chunked"}.get(dcpl.get_layout(), "other")
    if layout not in ("contiguous", "chunked") or not pipeline_supported(filters):
        return None
    offset = ds.id.get_offset() if layout == "contiguous" else None
    if layout == "contiguous" and offset is None:  # never written: nothing is claimed
        return None
    info = NodeInfo(
        path=path,
        node=ds.name,
        kind=node_kind(ds),
        shape=tuple(int(n) for n in ds.shape),
        dtype=dtype,
        disk_dtype=dtype,
        layout=layout,
        chunkshape=tuple(int(c) for c in ds.chunks) if ds.chunks else None,
        filters=filters,
        fillvalue=bytes(dtype.itemsize),
        offset=None if offset is None else int(offset),
        extdim=None,
        mtime_ns=st.st_mtime_ns,
        file_size=st.st_size,
    )
    return NodeReader(info, driver=driver, f=ds.file)

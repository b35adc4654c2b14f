"""Check that what a writer stored is in the file, and say why a write failed.

PyTables swallows some HDF5 write errors: on a full disk (or past a file-size
limit) its chunk cache is flushed when the file is closed, the flush fails, and
``close`` returns.  The file is then shorter than its own metadata says, or its
nodes lack chunks, which read as zeros.  So every writer checks the file it
wrote before anything replaces the user's file (:func:`check_node`): the file
opens (HDF5 records where it ends, so a short file fails), the node has the
expected shape, and every chunk of the region written is in the node's chunk
index with a nonzero size, ends inside the file and, where the filesystem
reports holes of sparse files, is not one.  :func:`daskh5._safe_tables.atomic_target`
then fsyncs the file before it renames it into place.

:func:`hdf5_errors` turns what HDF5, PyTables and the OS raise while writing
into a :class:`~daskh5.errors.WriteError` that says what happened (the disk is
full, the file-size limit was reached, HDF5 refused) and names the user's file,
not the temporary one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator

from daskh5.errors import Daskh5Error, WriteError

__all__ = ["check_node", "hdf5_errors", "hdf5_message", "write_failed"]

_LOW_SPACE = 4 << 20  # free bytes under which a failed write is put down to a full disk


def _short(node: str, n: int = 120) -> str:
    return node if len(node) <= n else f"{node[: n // 2]}...{node[-n // 4 :]} ({len(node):,} characters)"


def _errno_of(exc: BaseException | None) -> int | None:
    """The OS error number behind ``exc`` (HDF5 quotes it as ``errno = 28`` in its messages)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno:
            return exc.errno
        found = re.search(r"errno = (\d+)", str(exc))
        if found:
            return int(found.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


def hdf5_message(exc: BaseException) -> str:
    """The innermost line of an HDF5 back trace and what PyTables added after it, in one line."""
    text = str(exc)
    if "End of HDF5 error back trace" not in text:
        return " ".join(text.split())[:300]
    trace, _, tail = text.partition("End of HDF5 error back trace")
    lines = [ln.strip() for ln in trace.splitlines() if ln.strip() and not ln.strip().startswith("File ")]
    inner = lines[-1] if len(lines) > 1 else ""
    tail = " ".join(tail.split())
    return (f"HDF5: {inner}" + (f" ({tail[:200]})" if tail else ""))[:400]


def _file_size_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def reason(target: str, exc: BaseException | None = None) -> tuple[str, str]:
    """``(what happened, what to do)`` for a write into ``target`` that failed with ``exc``.

    With no error number (PyTables swallowed the error) the free space and the
    file-size limit tell.
    """
    code = _errno_of(exc)
    limit = _file_size_limit()
    try:
        size = os.path.getsize(target)
    except OSError:
        size = 0
    try:
        vfs = os.statvfs(os.path.dirname(target) or ".")
        free = vfs.f_bavail * vfs.f_frsize
    except (OSError, AttributeError):
        free = None
    if code == errno.EFBIG or (code is None and limit is not None and size >= limit - _LOW_SPACE):
        return (
            f"the file reached the file-size limit of this process ({limit:,} bytes)"
            if limit is not None
            else "the file is larger than the filesystem allows",
            "raise the limit (ulimit -f) or write a smaller file",
        )
    if code in (errno.ENOSPC, errno.EDQUOT) or (code is None and free is not None and free < _LOW_SPACE):
        what = "the disk quota is used up" if code == errno.EDQUOT else "the disk is full"
        return what, "free some space and write again"
    if code is not None:
        return f"{os.strerror(code)} (errno {code})", "check the disk and write again"
    if exc is not None:
        return hdf5_message(exc), "check the disk and the node name, and write again"
    return "not every chunk reached the file", "check the disk and write again"


def write_failed(shown: str, node: str, target: str | None = None, exc=None, detail: str = "") -> WriteError:
    """The :class:`WriteError` for a failed write of ``node`` into ``shown`` (written as ``target``)."""
    what, todo = reason(target or shown, exc)
    if exc is not None and _errno_of(exc) is None and len(node.encode("utf-8", "replace")) > 4096:
        todo = (
            f"the node path is {len(node):,} characters long, and HDF5 keeps names and attributes in "
            "object headers of at most 64 KiB: use a shorter name"
        )
    writing = f"writing {_short(node)}" if node else "writing"
    return WriteError(
        f"{shown}: {writing} failed: {what}{detail}. Nothing replaced or changed {shown}; {todo}"
    )


@contextlib.contextmanager
def hdf5_errors(shown: str, node: str, target: str | None = None) -> Iterator[None]:
    """Raise what HDF5, PyTables or the OS raise inside the block as a :class:`WriteError`.

    Only for blocks that run nothing but daskh5's own writing: a user's
    computation raising ``OSError`` must not become a write error.
    """
    try:
        yield
    except (Daskh5Error, NotImplementedError):  # NotImplementedError: a library's refusal, not HDF5's
        raise
    except (OSError, RuntimeError) as exc:  # tables.HDF5ExtError is a RuntimeError
        raise write_failed(shown, node, target, exc) from exc


def _unopenable(exc: OSError) -> str:
    """What HDF5's refusal to open the file just written says, briefly."""
    cut = re.search(r"eof = (\d+).*stored_eof = (\d+)", str(exc))
    if cut:
        return (
            f" (PyTables returned without an error, but the file it wrote ends at byte {int(cut[1]):,} "
            f"of {int(cut[2]):,})"
        )
    return f" (the file it wrote does not open: {hdf5_message(exc)})"


def _holes(fd: int):
    """``in_hole(offset, size)``: whether the byte range touches a hole (never-written blocks)."""
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if seek_hole is None:
        return lambda offset, size: False

    def in_hole(offset: int, size: int) -> bool:
        try:
            return os.lseek(fd, offset, seek_hole) < offset + size
        except OSError:  # the filesystem does not say
            return False

    return in_hole


def _chunk_records(ds) -> Iterator[tuple[tuple[int, ...], int, int]]:
    """``(chunk offset, byte offset, size)`` of every stored chunk of an h5py dataset."""
    out: list = []
    if hasattr(ds.id, "chunk_iter"):
        ds.id.chunk_iter(lambda c: out.append((tuple(c.chunk_offset), c.byte_offset, c.size)))
        return iter(out)
    for i in range(ds.id.get_num_chunks()):
        c = ds.id.get_chunk_info(i)
        out.append((tuple(c.chunk_offset), c.byte_offset, c.size))
    return iter(out)


_CODING_FILTERS = {1, 307, 32001, 32026, 305}  # zlib, bzip2, blosc, blosc2, LZO: never all zero bytes


def check_node(
    target: str,
    shown: str,
    node: str,
    shape: tuple[int, ...],
    region: tuple[tuple[int, int], ...] | None = None,
) -> None:
    """Raise :class:`WriteError` unless ``node`` of ``target`` holds every chunk of ``region``.

    ``region``: ``(start, stop)`` per axis of the elements written (default:
    the whole node).  ``shape`` is the shape the node must have.  Run once
    PyTables and h5py have closed ``target``.
    """
    import h5py

    from daskh5._nodes import h5_key

    with hdf5_errors(shown, node, target):
        try:
            f = h5py.File(target, "r", locking=False)
        except OSError as exc:  # a file shorter than HDF5's end of allocation: the tail was lost
            raise write_failed(shown, node, target, exc, _unopenable(exc)) from exc
        with f:
            try:
                ds = f[h5_key(node)]
            except KeyError as exc:
                raise write_failed(
                    shown, node, target, detail=" (the node is missing from the file)"
                ) from exc
            if tuple(int(n) for n in ds.shape) != tuple(shape):
                raise write_failed(
                    shown, node, target, detail=f" (its shape is {ds.shape}, not {tuple(shape)})"
                )
            if ds.chunks is None or 0 in shape:
                return
            region = region or tuple((0, n) for n in shape)
            dcpl = ds.id.get_create_plist()
            coded = any(dcpl.get_filter(i)[0] in _CODING_FILTERS for i in range(dcpl.get_nfilters()))
            _check_chunks(target, shown, node, ds, region, coded)


def _check_chunks(target: str, shown: str, node: str, ds, region, coded: bool) -> None:
    cs = tuple(int(c) for c in ds.chunks)
    lo = [a // c for (a, _b), c in zip(region, cs, strict=True)]
    hi = [-(-b // c) for (_a, b), c in zip(region, cs, strict=True)]
    expected = 1
    for a, b in zip(lo, hi, strict=True):
        expected *= max(0, b - a)
    if expected == 0:
        return
    fd = os.open(target, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        in_hole = _holes(fd)
        found, bad = 0, None
        for offset, byte_offset, nbytes in _chunk_records(ds):
            index = [o // c for o, c in zip(offset, cs, strict=True)]
            if not all(a <= i < b for a, i, b in zip(lo, index, hi, strict=True)):
                continue
            found += 1
            if bad is None and (
                not nbytes or byte_offset + nbytes > size or (coded and in_hole(byte_offset, nbytes))
            ):
                bad = (offset, byte_offset, nbytes)
    finally:
        os.close(fd)
    if found != expected:
        raise write_failed(
            shown, node, target, detail=f" (only {found:,} of its {expected:,} chunks were stored)"
        )
    if bad is not None:
        offset, byte_offset, nbytes = bad
        raise write_failed(
            shown,
            node,
            target,
            detail=f" (the chunk at {offset} was not stored whole: {nbytes} bytes at byte {byte_offset} "
            f"of a {size:,}-byte file)",
        )

"""Keep every read inside the file that was opened.

HDF5 lets a file take a dataset's values from elsewhere on the local disk:

* **external raw storage** (``H5Pset_external``): the values are bytes of
  other files, any file the process can read;
* **virtual datasets** (VDS): the values are other datasets, in this file or
  in other files;
* **external links**: a name in this file opens an object of another file.

h5py follows all three without asking, and HDF5 has no "stay inside this
file" switch (the ``efile``/``virtual``/``elink`` prefixes only rewrite
relative names).  So a crafted upload whose ``/data`` is a virtual dataset
over external storage pointing at ``/etc/shadow`` returns that file's bytes as
data.  daskh5 therefore never lets h5py follow a link it has not checked:
:func:`follow` walks a path one component at a time, looking at each link
without traversing it, and :func:`check_storage` looks at a dataset's
creation property list before anything reads it.  Both refuse with
:class:`~daskh5.errors.ExternalDataError` unless the caller opted in with
``allow_external=True``; then external links are resolved by daskh5 itself,
relative to the linking file's directory, EXTERNAL storage is read by
:mod:`daskh5._external` and virtual datasets by :mod:`daskh5._virtual`, relative
names next to the dataset's file (h5py, where it still reads, is told the same
with ``${ORIGIN}``: :func:`with_origin`).

A virtual dataset whose every source is a dataset of the same file (``"."``)
with ordinary storage of its own is inside the file, and is allowed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from daskh5.errors import Daskh5Error, ExternalDataError, FileNotFound, NodeNotFound, NotHDF5Error

__all__ = [
    "check_storage",
    "child_names",
    "follow",
    "layout_name",
    "outside_reason",
    "valid_name",
    "walk",
    "with_origin",
]

MAX_LINK_HOPS = 16  # soft and external links followed for one path (HDF5's own default limit)
MAX_NAMED = 3  # external files named in one message

ADVICE = (
    "daskh5 reads only data stored inside the file it opens, because a crafted file can point at any "
    "file this process can read. If you trust this file, pass allow_external=True "
    "(daskh5 info / stats: --allow-external)"
)

_LAYOUTS = {0: "compact", 1: "contiguous", 2: "chunked", 3: "virtual"}
_HARD, _SOFT, _EXTERNAL = 0, 1, 64  # h5py.h5l.TYPE_HARD, TYPE_SOFT, TYPE_EXTERNAL


def valid_name(raw: bytes | str) -> bool:
    """Whether a link name read back from a group can be used as one path component.

    HDF5's API never creates a name with ``/`` (it would be a path), but a file
    can hold one: ``"grp/child"`` at the root would then open ``/grp/child``.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    return raw not in (b"", b".") and b"/" not in raw


def _parts(path: bytes) -> list[bytes]:
    return [p for p in path.split(b"/") if p not in (b"", b".")]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _link_file(linking: str, name: bytes, where: str) -> str:
    """The file an external link names, relative to the linking file's directory."""
    text = os.fsdecode(name)
    full = os.path.abspath(text if os.path.isabs(text) else os.path.join(os.path.dirname(linking), text))
    try:
        mode = os.stat(full).st_mode
    except OSError:
        raise FileNotFound(f"{where} is an external link to {text!r}, and {full} does not exist") from None
    if not stat.S_ISREG(mode):  # a FIFO or a device would block or stream forever
        raise NotHDF5Error(f"{where} is an external link to {full}, which is not a regular file")
    return full


def follow(f, node: str, *, allow_external: bool = False):
    """The h5py object at ``node``, reached through links daskh5 checked one by one.

    Every component is looked at with HDF5's link API (``H5Lget_info``, which
    does not traverse it) before it is entered: hard links are entered, soft
    links are replaced by their value, external links raise
    :class:`~daskh5.errors.ExternalDataError` unless ``allow_external``, in
    which case the target file (relative to the linking file's directory) is
    opened by daskh5 and the walk goes on there.  The object may therefore be
    in another file (``obj.file.filename``) only with ``allow_external``.

    Raises :class:`~daskh5.errors.NodeNotFound` when a component does not
    exist, :class:`~daskh5.errors.NotHDF5Error` for a link chain longer than
    HDF5's limit or a link HDF5 cannot open.
    """
    import h5py

    from daskh5._nodes import open_file

    root = f.file["/"]
    filename = os.path.abspath(f.file.filename)
    group, done = root, []
    todo = _parts(node.encode("utf-8", "surrogateescape"))
    hops = 0
    while todo:
        name = todo.pop(0)
        here = "/" + _text(b"/".join([*done, name]))
        where = f"{filename}:{here}"
        if not isinstance(group, h5py.Group) or not group.id.links.exists(name):
            raise NodeNotFound(f"{filename}: no node {node!r} ({here!r} does not exist)")
        kind = group.id.links.get_info(name).type
        if kind == _HARD:
            try:
                group = group[name]
            except KeyError as exc:
                raise NotHDF5Error(
                    f"{where} is listed but cannot be opened ({exc}); the file's metadata is damaged: re-copy it"
                ) from exc
            done.append(name)
            continue
        hops += 1
        if hops > MAX_LINK_HOPS:
            raise NotHDF5Error(
                f"{filename}: resolving {node!r} follows more than {MAX_LINK_HOPS} links (a loop?); "
                "the file's links are damaged"
            )
        if kind == _SOFT:
            value = group.id.links.get_val(name)
            if value.startswith(b"/"):
                group, done = root, []
            todo = _parts(value) + todo
        elif kind == _EXTERNAL:
            target_file, target = group.id.links.get_val(name)
            if not allow_external:
                raise ExternalDataError(
                    f"{where} is an external link to {_text(target)!r} in the file {os.fsdecode(target_file)!r}; "
                    f"{ADVICE}"
                )
            other = open_file(_link_file(filename, target_file, where))
            root, filename = other["/"], os.path.abspath(other.filename)
            group, done = root, []
            todo = _parts(target) + todo
        else:
            raise ExternalDataError(
                f"{where} is a user-defined link (class {kind}), which daskh5 does not follow"
            )
    if h5py.h5o.get_info(group.id).fileno != h5py.h5o.get_info(root.id).fileno:
        raise ExternalDataError(f"{filename}:{node} resolved into another file; {ADVICE}")
    return group


def layout_name(ds) -> str:
    """How a dataset's values are stored: compact, contiguous, chunked, virtual or external."""
    dcpl = ds.id.get_create_plist()
    if dcpl.get_external_count() > 0:
        return "external"
    return _LAYOUTS.get(dcpl.get_layout(), "unknown")


def _source_problem(ds, name: str) -> str | None:
    """Why a same-file virtual source ``name`` of ``ds`` takes values from outside, or None."""
    import h5py

    try:
        src = follow(ds.file, name if name.startswith("/") else "/" + name)
    except ExternalDataError:
        return "is reached through an external link"
    except NodeNotFound:
        return None  # HDF5 reads a missing source as the fill value
    if not isinstance(src, h5py.Dataset):
        return "is not a dataset"
    layout = layout_name(src)
    return f"has {layout} storage itself" if layout in ("external", "virtual", "unknown") else None


def outside_reason(ds) -> str | None:
    """Why ``ds``'s values would come from outside its file (a phrase), or None when they do not."""
    dcpl = ds.id.get_create_plist()
    n = dcpl.get_external_count()
    if n:
        names = ", ".join(repr(os.fsdecode(dcpl.get_external(i)[0])) for i in range(min(n, MAX_NAMED)))
        more = f" and {n - MAX_NAMED} more" if n > MAX_NAMED else ""
        return f"stores its values in external raw data file(s) {names}{more} (EXTERNAL storage)"
    if dcpl.get_layout() != 3:
        return None
    checked = set()
    for i in range(dcpl.get_virtual_count()):
        file_name, source = dcpl.get_virtual_filename(i), dcpl.get_virtual_dsetname(i)
        if file_name != ".":
            return f"is a virtual dataset whose source {source!r} is in the file {file_name!r}"
        if "%" in source:
            return f"is a virtual dataset whose source name {source!r} is a pattern HDF5 expands when reading"
        if source in checked:
            continue
        checked.add(source)
        why = _source_problem(ds, source)
        if why:
            return f"is a virtual dataset whose source {source!r} {why}"
    return None


def check_storage(ds, where: str, *, allow_external: bool = False) -> str:
    """``ds``'s layout name (see :func:`layout_name`); raises when its values live outside the file.

    ``where`` names the node in the message. With ``allow_external`` nothing is refused.
    """
    try:
        layout = layout_name(ds)
        why = None if allow_external else outside_reason(ds)
    except Daskh5Error:
        raise
    except Exception as exc:
        raise NotHDF5Error(f"{where}: could not read the node's storage metadata: {exc}") from exc
    if why:
        raise ExternalDataError(f"{where} {why}; {ADVICE}")
    return layout


def with_origin(f, node: str, layout: str):
    """The dataset at ``node`` (a hard path) opened so that HDF5 looks for files next to ``f``'s file.

    For a virtual dataset, relative source file names are taken relative to its
    file (``${ORIGIN}``); for ``layout="external"`` (a variable-length dataset
    HDF5 must read itself) relative external file names too, where HDF5 would
    otherwise use the current directory.  HDF5 refuses to open a dataset that is
    already open with another external-file prefix: the caller holds no handle to it.
    Only for datasets the caller allowed to read outside the file.
    """
    import h5py

    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_virtual_prefix(b"${ORIGIN}")
    if layout == "external":
        dapl.set_efile_prefix(b"${ORIGIN}")
    return h5py.Dataset(h5py.h5d.open(f.file.id, node.encode("utf-8", "surrogateescape"), dapl))


def child_names(group) -> tuple[list[str], list[str]]:
    """``(names usable as path components, names that are not)`` of ``group``'s links, in its order."""
    good, bad = [], []
    for raw in group.id:
        (good if valid_name(raw) else bad).append(raw.decode("utf-8", "surrogateescape"))
    return good, bad


def walk(group) -> Iterator[tuple[str, str, object]]:
    """Every link below ``group``, depth first, without following soft or external links.

    Yields ``(relative path, kind, value)``: ``"hard"`` with the object
    (an object reachable under several names is yielded once, and a group
    is entered once, as ``H5Ovisit`` does), ``"soft"`` with the link's value,
    ``"external"`` with ``(file, path)``, ``"invalid"`` (a name containing
    ``/``, which would alias another node) and ``"other"`` with None.
    """
    import h5py

    seen = {_identity(group)}
    stack: list[tuple[str, Iterator]] = [("", iter(list(group.id)))]
    groups = [group]
    while stack:
        rel, names = stack[-1]
        g = groups[-1]
        raw = next(names, None)
        if raw is None:
            stack.pop()
            groups.pop()
            continue
        path = f"{rel}/{_text(raw)}" if rel else _text(raw)
        if not valid_name(raw):
            yield path, "invalid", None
            continue
        kind = g.id.links.get_info(raw).type
        if kind == _SOFT:
            yield path, "soft", _text(g.id.links.get_val(raw))
        elif kind == _EXTERNAL:
            file_name, target = g.id.links.get_val(raw)
            yield path, "external", (os.fsdecode(file_name), _text(target))
        elif kind != _HARD:
            yield path, "other", None
        else:
            obj = g[raw]
            key = _identity(obj)
            if key in seen:
                continue
            seen.add(key)
            yield path, "hard", obj
            if isinstance(obj, h5py.Group):
                stack.append((path, iter(list(obj.id))))
                groups.append(obj)


def _identity(obj) -> tuple[int, int]:
    import h5py

    info = h5py.h5o.get_info(obj.id)
    return info.fileno, info.addr

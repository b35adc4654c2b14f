"""The ``daskh5`` command: ``info`` (what is in a file), ``demo`` (the main job), ``stats``.

Every command has ``--help``. Errors are one line on stderr starting with
``daskh5: error:`` and saying what to do; the exit code is 1 (2 for a bad
command line, as argparse does). Set ``DASKH5_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

from daskh5._codecs import filter_name, refused_filters
from daskh5._deflate import decoder_name
from daskh5._optional import require
from daskh5.errors import Daskh5Error

__all__ = ["main", "terminal_safe"]

_BLOSC_CODECS = {0: "blosclz", 1: "lz4", 2: "lz4hc", 3: "snappy", 4: "zlib", 5: "zstd"}
_SHUFFLES = {0: "", 1: "+shuffle", 2: "+bitshuffle"}


class CommandError(Exception):
    """A problem the user can fix, reported as one line."""


def _escapes() -> dict[int, str]:
    """What :func:`terminal_safe` writes for each character a terminal would act on."""
    table = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}  # C0, DEL, C1
    table.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"})
    bidi = (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))  # reorder what follows
    table.update({c: f"\\u{c:04x}" for c in bidi})
    table.update({c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)})  # lone surrogates cannot be printed
    table.update({c: f"\\x{c - 0xDC00:02x}" for c in range(0xDC80, 0xDD00)})  # a non-UTF-8 name's bytes
    return table


_ESCAPES = _escapes()


def terminal_safe(text: str) -> str:
    r"""``text`` with every character a terminal would act on written as an escape, like ``repr``.

    Control characters (C0 including newline and carriage return, DEL, C1), bidirectional
    overrides and the surrogates that stand for the bytes of a name that is not UTF-8 are
    escaped; other Unicode is kept.  Names and values from a file pass through here before
    ``daskh5`` prints them, so a file cannot move the cursor, set the clipboard (OSC 52) or
    forge lines of output.

    >>> print(terminal_safe("caf\u00e9 \x1b]52;c;aGk=\x07 a\r\nb \udcff"))
    café \x1b]52;c;aGk=\x07 a\r\nb \xff
    """
    return text.translate(_ESCAPES)


def _escaped(value):
    """Every string in a report (keys and values, nested) through :func:`terminal_safe`."""
    if isinstance(value, str):
        return terminal_safe(value)
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_escaped(v) for v in value)
    return value


# -- info ------------------------------------------------------------------------------------------


def describe_filters(filters) -> str:
    """A short human name for an HDF5 filter pipeline, e.g. ``blosc:lz4(5)+shuffle``.

    >>> describe_filters([(32001, (2, 2, 8, 131072, 5, 1, 1)), (3, ())])
    'blosc:lz4(5)+shuffle, fletcher32'
    >>> describe_filters([])
    'none'
    """
    names = []
    for fid, cd in filters:
        cd = tuple(int(v) for v in cd)
        if fid == 32001:
            codec = _BLOSC_CODECS.get(cd[6], f"codec{cd[6]}") if len(cd) > 6 else "blosclz"
            level = f"({cd[4]})" if len(cd) > 4 else ""
            names.append(f"blosc:{codec}{level}{_SHUFFLES.get(cd[5], '') if len(cd) > 5 else ''}")
        elif fid == 32026:
            names.append("blosc2")
        elif fid == 1:
            names.append(f"zlib({cd[0]})" if cd else "zlib")
        elif fid == 2:
            names.append("shuffle")
        elif fid == 3:
            names.append("fletcher32")
        else:
            names.append(filter_name(fid))
    return ", ".join(names) or "none"


def _size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _node_record(obj, budget: int, allow_external: bool = False) -> dict:
    import h5py

    from daskh5._chunking import budget_block, count_blocks
    from daskh5._containment import layout_name, outside_reason
    from daskh5._h5types import numpy_dtype, skip_reason, time_layout
    from daskh5._nodes import node_kind, node_name, size_problem

    kind = node_kind(obj)
    rec: dict = {"path": node_name(obj.name), "kind": kind}
    if isinstance(obj, h5py.Group):
        return rec
    if isinstance(obj, h5py.Datatype):
        return {**rec, "kind": "Datatype", "note": "a named datatype: it describes data, it holds none"}
    dtype, reason = numpy_dtype(obj), skip_reason(obj)
    if obj.shape is None or dtype is None:
        return {**rec, "note": reason or "an HDF5 type numpy has no equivalent for"}
    if reason:
        rec["note"] = reason
    elif time_layout(obj.id.get_type()) is not None:
        rec["note"] = "PyTables Time32/Time64 values (datetime64 in the xarray engine)"
    dcpl = obj.id.get_create_plist()
    filters = [dcpl.get_filter(i)[:3:2] for i in range(dcpl.get_nfilters())]
    stored = int(obj.id.get_storage_size())
    rec.update(
        shape=list(obj.shape),
        dtype=str(dtype) if dtype.names is None else "compound",
        chunkshape=list(obj.chunks) if obj.chunks else None,
        layout=layout_name(obj),
        filters=describe_filters(filters),
        stored_bytes=stored,
    )
    outside = outside_reason(obj)
    if outside:  # what it points to (names from the file's metadata), never its values
        rec.update(outside=outside, refused=not allow_external)
    refused = refused_filters(filters)
    if refused:  # shown, never decoded: reading it needs allow_filters (--allow-filter)
        rec["refused_filters"] = [{"id": fid, "name": filter_name(fid)} for fid in refused]
    if dtype.names is not None:
        rec["columns"] = list(dtype.names)
    if kind == "VLArray" or dtype.kind == "O":
        rec["raw_bytes"] = None  # variable-length: the heap holds the values
        if kind == "VLArray" and not outside and not refused:
            rec["payload_bytes"] = _vlarray_payload(obj)
        return rec
    raw = int(np.prod(obj.shape, dtype=np.int64)) * dtype.itemsize
    rec["raw_bytes"] = raw
    rec["ratio"] = raw / stored if stored else None
    too_big = size_problem(obj.shape, obj.chunks, dtype.itemsize)
    if too_big:
        rec["warning"] = too_big
    elif obj.shape and dtype.names is None:  # counted, not built: the shape may claim 2**40 blocks
        shape = tuple(int(s) for s in obj.shape)
        block = budget_block(shape, tuple(obj.chunks) if obj.chunks else None, dtype.itemsize, budget)
        block = [min(b, s) for b, s in zip(block, shape)]
        rec["dask"] = {
            "blocks": count_blocks(shape, block),
            "block_shape": block,
            "block_bytes": int(np.prod(block, dtype=np.int64)) * dtype.itemsize,
        }
    return rec


def _vlarray_payload(obj) -> int | None:
    """Bytes of a VLArray's values (its rows' lengths from their descriptors, nothing else read), or
    None when they cannot be learnt that way. ``get_storage_size`` counts only the 16-byte heap ids."""
    import h5py

    from daskh5.ragged import _vl_lengths

    try:
        base = h5py.check_vlen_dtype(obj.dtype)
        lengths = _vl_lengths(obj.file.filename, obj.name, int(obj.shape[0]), None, 1)
    except Exception:  # damaged or refused: the layout check reports why
        return None
    if base is None or lengths is None:
        return None
    return int(lengths.sum()) * np.dtype(base).itemsize


def _link_record(f, path: str, value: tuple[str, str], budget: int, allow_external: bool) -> dict:
    """An external link: where it points, and with ``allow_external`` what is there."""
    from daskh5._nodes import lookup

    file_name, target = value
    outside = f"is an external link to {target!r} in the file {file_name!r}"
    rec: dict = {"path": path, "kind": "ExternalLink"}
    dangling = None
    if allow_external:
        try:
            obj = lookup(f, path, allow_external=True)
        except Daskh5Error as exc:  # a file or node that is not there: listed, the rest still reported
            dangling = str(exc)
        else:
            rec = _node_record(obj, budget, allow_external) | {"path": path}
    rec.update(
        layout="external link", target=f"{file_name}:{target}", outside=outside, refused=not allow_external
    )
    if dangling is not None:
        rec["note"] = f"dangling: {dangling}"
    return rec


def _soft_record(f, path: str, target: str) -> dict:
    """A soft link: the path it names (relative to its group), and whether anything is there."""
    from daskh5._nodes import lookup

    rec = {"path": path, "kind": "SoftLink", "layout": "soft link", "target": target}
    where = target if target.startswith("/") else f"{path.rpartition('/')[0]}/{target}"
    try:
        lookup(f, where)
    except Daskh5Error:
        rec["note"] = "dangling: nothing is at the path it names"
    return rec


def _ragged_records(
    path: str, objects: dict, records: list[dict], allow_external: bool = False
) -> list[dict]:
    """Ragged layouts in the file: flat EArrays with side columns, and VLArrays (``objects``: the
    h5py object of every record's path, so no record is looked up again: a deep nest stays linear)."""
    from daskh5._attrs import small_attr
    from daskh5._layout import ATTR_KIND, find_layout

    found = []
    names = {r["path"] for r in records}
    for r in records:
        if r["kind"] in ("Group",) or r["path"].endswith(("_start_and_stop", "_shape")) or "target" in r:
            continue
        obj = objects.get(r["path"])
        if obj is None or "pandas_type" in obj.parent.attrs:  # a pandas key's object block: under "pandas"
            continue
        flat = f"{r['path']}_start_and_stop" in names or ATTR_KIND in obj.attrs
        vl = r["kind"] == "VLArray"
        if not (flat or vl):
            continue
        entry = {"node": r["path"], "kind": "flat" if flat else "vlarray"}
        pseudo = small_attr(obj, "PSEUDOATOM")
        if vl and isinstance(pseudo, (bytes, np.bytes_, str)) and np.char.decode(pseudo) == "object":
            entry["error"] = "ObjectAtom VLArray: its rows are pickles, which daskh5 never loads"
            found.append(entry)
            continue
        try:
            lay = find_layout(path, r["path"], allow_external=allow_external)
            if vl and not flat:  # the rows' descriptors must be readable (their chunks are in the file)
                from daskh5.ragged import _vl_lengths

                _vl_lengths(lay.path, lay.node, int(lay.nsamples), None, 1, lay.allow_external, lay.allowed)
            entry.update(samples=int(lay.nsamples), sample_ndim=int(lay.ndim), dtype=str(lay.dtype))
        except Daskh5Error as exc:
            entry["error"] = str(exc)
        found.append(entry)
    return found


def _pandas_records(path: str, objects: dict, records: list[dict]) -> list[dict]:
    """pandas keys (``to_hdf``) among the groups: format, rows and column labels."""
    from daskh5._pandas import describe_key, is_bookkeeping

    groups = [objects[r["path"]] for r in records if r["kind"] == "Group" and r["path"] in objects]
    return [describe_key(path, g) for g in groups if "pandas_type" in g.attrs and not is_bookkeeping(g)]


def info(
    path: str,
    node: str | None = None,
    budget: str = "64MiB",
    *,
    show_all: bool = False,
    allow_external: bool = False,
    raw: bool = False,
) -> dict:
    """What ``daskh5 info`` reports, as plain data (read with h5py only: nothing is unpickled).

    A pandas key (``to_hdf``) is reported by its columns under ``"pandas"``; the
    nodes pandas stores it in are listed too only with ``raw``.

    PyTables' index containers (``_i_<table>`` groups) are left out unless ``show_all``.
    Nodes whose values are stored outside the file are listed with their layout
    (``external``, ``virtual``, ``external link``) and what they point to; links are
    not followed out of the file unless ``allow_external``.
    """
    import h5py

    from daskh5._chunking import resolve_budget
    from daskh5._containment import walk
    from daskh5._nodes import lookup, open_h5

    nbytes = resolve_budget(budget)
    refused: list[str] = []
    hidden: list[str] = []
    with open_h5(path) as f:
        root = lookup(f, node, allow_external=allow_external) if node not in (None, "", "/") else f
        records = [_node_record(root, nbytes, allow_external)]
        objects = {records[0]["path"]: root}
        if isinstance(root, h5py.Group):  # one pass, each child opened from its parent: linear in a deep nest
            base = root.name.rstrip("/")
            for name, kind, value in walk(root):
                if any(part.startswith("_i_") for part in name.split("/")):
                    hidden.append(name)
                    if not show_all:
                        continue
                if kind == "hard":
                    records.append(_node_record(value, nbytes, allow_external))
                    objects[records[-1]["path"]] = value
                elif kind == "external":
                    records.append(_link_record(root.file, f"{base}/{name}", value, nbytes, allow_external))
                elif kind == "soft":
                    records.append(_soft_record(root.file, f"{base}/{name}", value))
                elif kind in ("invalid", "other"):
                    refused.append(f"{base}/{name}")
        ragged = _ragged_records(root.file.filename, objects, records, allow_external)
        pandas = _pandas_records(root.file.filename, objects, records)
        if not raw:
            inside = tuple(k["key"].rstrip("/") + "/" for k in pandas if "key" in k)
            records = [r for r in records if not r["path"].startswith(inside)] if inside else records
        filename = f.filename
    return {
        "file": filename,
        "file_bytes": os.path.getsize(filename),
        "budget": budget,
        "nodes": records,
        "ragged": ragged,
        "pandas": pandas,
        "hidden_index_nodes": 0 if show_all or not isinstance(root, h5py.Group) else len(hidden),
        "unreadable_links": refused,
        "deflate_decoder": decoder_name(),
    }


def format_info(report: dict) -> str:
    """``info``'s report as an indented tree for a terminal."""
    lines = [
        f"{report['file']}  ({_size(report['file_bytes'])} on disk; dask blocks for a {report['budget']} budget)"
    ]
    top = report["nodes"][0]["path"].rstrip("/").count("/") if report["nodes"] else 0
    for r in report["nodes"]:
        depth = r["path"].rstrip("/").count("/") - top
        name = (r["path"] if depth == 0 else r["path"].rsplit("/", 1)[-1]) or "/"
        head = f"{'  ' * depth}{name}"
        if r["kind"] == "Group" or "shape" not in r:  # a group, a link, a named datatype, nothing to read
            where = f" {r['layout']} -> {r['target']}" if "target" in r else ""
            note = f"  {r['note']}" if "note" in r else ""
            lines.append(f"{head:<32} {r['kind']}{where}{note}{_outside_note(r)}")
            continue
        shape = "(" + ", ".join(map(str, r["shape"])) + ("," if len(r["shape"]) == 1 else "") + ")"
        text = f"{head:<32} {r['kind']:<8} {shape:<18} {r['dtype']:<9}"
        if "target" in r:
            text += f" {r['layout']} -> {r['target']}"
        elif r["chunkshape"]:
            text += f" chunks {tuple(r['chunkshape'])}"
        else:
            text += f" {r.get('layout', 'contiguous')}"
        text += f"  {r['filters']}"
        if r.get("raw_bytes") is not None:
            ratio = f" ({r['ratio']:.3g}x)" if r.get("ratio") else ""
            text += f"  {_size(r['raw_bytes'])} -> {_size(r['stored_bytes'])}{ratio}"
        elif r.get("payload_bytes") is not None:  # a VLArray: its values, then the heap ids stored for them
            text += f"  values {_size(r['payload_bytes'])} (+ {_size(r['stored_bytes'])} of row descriptors)"
        else:
            text += f"  stored {_size(r['stored_bytes'])}"
        if "dask" in r:
            d = r["dask"]
            text += f"  dask: {d['blocks']} x {tuple(d['block_shape'])} ({_size(d['block_bytes'])})"
        if "columns" in r:
            text += f"  columns: {', '.join(r['columns'])}"
        if "refused_filters" in r:
            names = ", ".join(f"{x['id']} ({x['name']})" for x in r["refused_filters"])
            text += f"  REFUSED: filter {names} is not on daskh5's allowlist (see --allow-filter)"
        if "warning" in r:
            text += f"  WARNING: {r['warning']}"
        if "note" in r:
            text += f"  NOTE: {r['note']}"
        lines.append(text + _outside_note(r))
    if report.get("deflate_decoder") and any("zlib" in str(r.get("filters", "")) for r in report["nodes"]):
        lines.append(
            f"deflate chunks are inflated with {report['deflate_decoder']} "
            "(dask config daskh5.deflate-decoder; fletcher32 nodes are read through h5py)"
        )
    if report.get("hidden_index_nodes"):
        lines.append(
            f"({report['hidden_index_nodes']} nodes of PyTables' table indexes not shown; --all shows them)"
        )
    if report.get("unreadable_links"):
        lines.append(
            "links daskh5 does not follow (a '/' in a link name would alias another node; "
            "user-defined link classes): " + ", ".join(map(repr, report["unreadable_links"]))
        )
    if report.get("pandas"):
        lines.append(
            'pandas keys (read with xr.open_dataset(path, engine="daskh5", group=key) or pd.read_hdf):'
        )
        for k in report["pandas"]:
            if "error" in k:
                lines.append(f"  {k['key']} ({k['pandas_type']}): {k['error']}")
                continue
            cols = ", ".join(k["columns"][:12]) + (", ..." if len(k["columns"]) > 12 else "")
            lines.append(
                f"  {k['key']} ({k['pandas_type']}, format={k['format']}): "
                f"{'?' if k['rows'] is None else format(k['rows'], ',')} rows x "
                f"{len(k['columns'])} columns: {cols}"
            )
    if report["ragged"]:
        lines.append("ragged layouts (read with daskh5.read_ragged / open_ragged):")
        for g in report["ragged"]:
            if "error" in g:
                lines.append(f"  {g['node']} ({g['kind']}): NOT VALID: {g['error']}")
            else:
                lines.append(
                    f"  {g['node']} ({g['kind']}): {g['samples']:,} samples of {g['sample_ndim']}-d {g['dtype']}"
                )
    return "\n".join(lines)


def _outside_note(r: dict) -> str:
    """The note on a node whose values are stored outside the file: where, and whether it is read."""
    if "outside" not in r:
        return ""
    verdict = "refused (--allow-external reads it)" if r["refused"] else "read because of --allow-external"
    return f"  OUTSIDE THE FILE: {r['outside']}; {verdict}"


def _cmd_info(args) -> int:
    report = info(
        args.file, args.node, args.budget, show_all=args.all, allow_external=args.allow_external, raw=args.raw
    )
    # JSON escapes control characters itself; the text form is escaped before it is laid out
    print(json.dumps(report, indent=2) if args.json else format_info(_escaped(report)))
    return 0


# -- stats -----------------------------------------------------------------------------------------


def _scheduler(address: str | None, workers: int):
    """A context giving the ``compute`` keywords for ``--scheduler`` (and the client, if any)."""
    from contextlib import contextmanager

    @contextmanager
    def ctx():
        if address in (None, "threads", "sync", "processes"):
            yield {"scheduler": address or "threads"}, None
            return
        try:
            distributed = require("distributed", "a cluster (--scheduler local or an address)")
        except ImportError as exc:
            raise CommandError(str(exc)) from exc

        if address == "local":
            if workers < 1:
                raise CommandError(f"--workers must be at least 1 for a local cluster, got {workers}")
            with (
                distributed.LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",  # a free port: never clashes with a running dashboard
                    silence_logs=40,
                ) as cluster,
                distributed.Client(cluster) as client,
            ):
                yield {}, client
            return
        try:
            client = distributed.Client(address, timeout="10s")
        except OSError as exc:
            raise CommandError(
                f"cannot reach the dask scheduler at {address} ({exc}); start one with `dask scheduler` "
                "or use --scheduler local"
            ) from exc
        with client:
            yield {}, client

    return ctx()


def run_stats(
    path,
    data="/data",
    labels="/clusters",
    budget="64MiB",
    compute_kwargs=None,
    allow_external=False,
    allow_filters=(),
    *,
    client=None,
    progress=False,
):
    """Per-label statistics of ``data`` by ``labels`` in one file (what ``daskh5 stats`` prints).

    ``allow_external``: read nodes whose values are stored outside the file (see
    :func:`daskh5.from_pytables`). ``allow_filters``: HDF5 filters to decode
    beyond the allowlist (``--allow-filter``). ``progress``: a bar over the
    blocks as their partial statistics finish (on ``client``'s cluster when one
    is given).
    """
    from daskh5._progress import compute_with_progress
    from daskh5.stats import label_stats

    opts = {"allow_external": allow_external, "allow_filters": allow_filters}
    columns = _table_spec(path, data), _table_spec(path, labels)
    if columns != (None, None):
        x, y = _table_inputs(path, data, labels, columns, budget, opts)
    else:
        x, y = _array_inputs(path, data, labels, budget, opts)
    t0 = time.perf_counter()
    pending = label_stats(x, y, compute=False)
    stats = compute_with_progress(
        pending, "block_stats", "statistics", client=client, enabled=progress, **(compute_kwargs or {})
    )
    if hasattr(x, "columns"):  # table columns: the bytes of the rows read (their number known now)
        nbytes = int(stats.count.sum()) * sum(_item_bytes(t) for t in (*x.dtypes, y.dtype))
    else:
        nbytes = x.nbytes + y.nbytes
    return stats, time.perf_counter() - t0, nbytes, x


def _item_bytes(dtype) -> int:
    return int(getattr(dtype, "itemsize", 8) or 8)


def _table_spec(path: str, text: str) -> list[str] | None:
    """The columns of ``node:col,col`` (Table or pandas-key columns), or None for an array node
    (``text`` without a ``:``, or the name of a node of the file: HDF5 names may hold ``:``)."""
    node, sep, cols = text.rpartition(":")
    if not sep or _is_node(path, text):
        return None
    names = [c.strip() for c in cols.split(",") if c.strip()]
    if not node or not names:
        raise CommandError(f"{text!r}: name a table and its columns as NODE:COL[,COL...], e.g. /obs:x,y")
    return names


def _is_node(path: str, name: str) -> bool:
    from daskh5._nodes import lookup, open_h5

    try:
        with open_h5(path) as f:
            lookup(f, name)
    except Daskh5Error:
        return False
    return True


def _table_inputs(path, data: str, labels: str, columns, budget, opts):
    """(data columns as a dask DataFrame, labels as a dask Series) for ``--data NODE:COLS`` forms."""
    from daskh5.table import read_table

    (data_cols, label_cols), nodes = columns, (data.rpartition(":")[0], labels.rpartition(":")[0])
    if None in columns:
        array, other = (labels, data) if columns[1] is None else (data, labels)
        raise CommandError(
            f"{array} is an array node but {other} names table columns; name both as "
            "NODE:COLUMNS (e.g. --data /obs:x,y --labels /obs:label) or both as array nodes"
        )
    if len(label_cols) != 1:
        raise CommandError(f"--labels {labels}: name one column, e.g. {nodes[1]}:{label_cols[0]}")
    kw = {"partition_size": budget, **opts}
    if nodes[0] == nodes[1]:  # one read of the table's chunks for data and labels
        frame = read_table(path, nodes[0], columns=list(dict.fromkeys(data_cols + label_cols)), **kw)
        return frame[data_cols], frame[label_cols[0]]
    x = read_table(path, nodes[0], columns=data_cols, **kw)
    y = read_table(path, nodes[1], columns=label_cols, **kw)[label_cols[0]]
    if not (x.known_divisions and y.known_divisions) or (x.divisions[0], x.divisions[-1]) != (
        y.divisions[0],
        y.divisions[-1],
    ):
        raise CommandError(
            f"{path}: cannot match the rows of {nodes[0]} with those of {nodes[1]} (their indexes differ "
            "or are not known to be sorted); put data and labels in one table"
        )
    return x, y


def _array_inputs(path, data: str, labels: str, budget, opts):
    from daskh5.array import from_pytables

    x = from_pytables(path, data, chunks=budget, **opts)
    y = from_pytables(path, labels, chunks=budget, **opts)
    if y.ndim == 1 and y.shape[0] == x.shape[0]:  # row for row with the data blocks
        y = from_pytables(path, labels, chunks=(x.chunks[0],), **opts)
    if y.ndim != 1:
        raise CommandError(f"{path}:{labels} has shape {y.shape}; labels must be one value per row of {data}")
    if y.shape[0] != x.shape[0]:
        raise CommandError(
            f"{path}: {data} has {x.shape[0]:,} rows but {labels} has {y.shape[0]:,}; pick a labels node with one value per row"
        )
    return x, y


def _stats_json(stats, columns=None) -> dict:
    out = {
        k: getattr(stats, k).tolist()
        for k in ("labels", "count", "sum", "mean", "var", "std", "min", "max", "cov")
    } | {"ddof": stats.ddof}
    if columns is not None:
        out["columns"] = [str(c) for c in columns]
    return out


def _cmd_stats(args) -> int:
    if args.plot:
        _pyplot()  # a missing matplotlib fails before the statistics are computed
    with _scheduler(args.scheduler, args.workers) as (kwargs, client):
        stats, seconds, nbytes, x = run_stats(
            args.file,
            args.data,
            args.labels,
            args.budget,
            kwargs,
            allow_external=args.allow_external,
            allow_filters=args.allow_filter,
            client=client,
            progress=not args.no_progress,
        )
    columns = list(x.columns) if hasattr(x, "columns") else None
    rows = int(stats.count.sum()) if columns is not None else x.shape[0]
    if args.json:
        print(json.dumps(_stats_json(stats, columns), indent=2))
    else:
        print(f"{args.file}: {args.data} by {args.labels}, {len(stats.labels)} labels, {rows:,} rows")
        if columns is not None:
            print("columns: " + ", ".join(f"[{j}] {c}" for j, c in enumerate(columns)))
        print(stats.table())
        print(
            f"{nbytes / 1e9:.2f} GB in {seconds:.2f} s ({nbytes / 1e9 / seconds:.2f} GB/s), {x.npartitions} blocks of <= {args.budget}"
        )
    if args.plot:
        plot_stats(stats, args.plot, columns)
        print(f"wrote {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return 0


# -- pictures --------------------------------------------------------------------------------------


def _pyplot():
    try:
        require("matplotlib", "plots (--plot, daskh5 demo)").use("Agg")
        return require("matplotlib.pyplot", "plots (--plot, daskh5 demo)")
    except ImportError as exc:
        raise CommandError(str(exc)) from exc


def plot_stats(stats, out: str, columns=None) -> None:
    """Per-label means with 1- and 2-sigma covariance ellipses, and the counts, as a PNG.

    ``columns`` names the data columns on the axes (default ``column 0``, ``column 1``).
    """
    plt = _pyplot()
    names = [str(c) for c in columns] if columns is not None else ["column 0", "column 1"]
    from matplotlib.patches import Ellipse

    fig, (ax, bars) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [1.4, 1]})
    colours = plt.cm.tab10(np.arange(len(stats.labels)) % 10)
    for i, label in enumerate(stats.labels.tolist()):
        mean = stats.mean[i]
        if stats.mean.shape[1] >= 2 and np.all(np.isfinite(stats.cov[i][:2, :2])):
            values, vectors = np.linalg.eigh(stats.cov[i][:2, :2])
            angle = np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1]))
            for k in (1, 2):
                w, h = 2 * k * np.sqrt(np.maximum(values[::-1], 0))
                ax.add_patch(
                    Ellipse(mean[:2], w, h, angle=angle, fill=False, color=colours[i], alpha=1.2 - 0.4 * k)
                )
            ax.plot(*mean[:2], "+", color=colours[i], ms=12, mew=2, label=f"{label}")
        else:
            ax.errorbar([i], [mean[0]], yerr=[stats.std[i][0]], fmt="o", color=colours[i], label=f"{label}")
    ax.set_title("mean and 1-, 2-sigma ellipses per label")
    ax.set_xlabel(names[0] if stats.mean.shape[1] >= 2 else "label index")
    ax.set_ylabel(names[1] if stats.mean.shape[1] >= 2 else names[0])
    ax.autoscale_view()
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(title="label", fontsize="small")
    bars.bar([str(v) for v in stats.labels.tolist()], stats.count, color=colours)
    bars.set_title("rows per label")
    bars.set_xlabel("label")
    bars.set_ylabel("rows")
    _plain_counts(bars)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _plain_counts(ax) -> None:
    """Counts on the y axis as plain numbers with thousands separators (no offset or 1e7 notation)."""
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))


def plot_scatter(points: np.ndarray, labels: np.ndarray, out: str, total: int) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.6, 6))
    colours = plt.cm.tab10(np.arange(10))
    for i, label in enumerate(np.unique(labels).tolist()):
        mine = labels == label
        ax.scatter(
            points[mine, 0], points[mine, 1], color=colours[i % 10], s=2, alpha=0.5, linewidths=0,
            label=f"{label} ({int(mine.sum()):,})",
        )  # fmt: skip
    ax.set_title(f"{len(points):,} of {total:,} points, coloured by cluster")
    ax.set_xlabel("column 0 of /data")
    ax.set_ylabel("column 1 of /data")
    ax.legend(
        title="cluster\n(points shown)", markerscale=6, fontsize="small", loc="upper left",
        bbox_to_anchor=(1.02, 1), borderaxespad=0,
    )  # fmt: skip
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_lengths(lengths: np.ndarray, out: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(lengths, bins=60, color="tab:blue", label="token streams")
    ax.axvline(np.median(lengths), color="tab:red", linestyle="--", label="median")
    ax.set_xlabel("sample length (tokens)")
    ax.set_ylabel("samples")
    ax.legend()
    _plain_counts(ax)
    ax.set_title(f"lengths of {len(lengths):,} ragged samples (median {int(np.median(lengths))})")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# -- demo ------------------------------------------------------------------------------------------

CENTRES = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])


def write_clusters(path: str, n: int, *, budget="64MiB", seed=0, progress=True) -> None:
    """Four 2-d Gaussian clusters around (+-1, +-1), sigma 0.2: ``/data`` (n, 2) and ``/clusters`` (n,).

    Generated and written block by block (never all in memory): the labels
    first, then the points from the labels read back.
    """
    import dask.array as da
    import tables

    from daskh5.array import from_pytables
    from daskh5.writer import to_pytables

    rows = max(1, int(np.floor(_budget_bytes(budget) / 16)))
    filters = tables.Filters(complevel=5, complib="blosc:lz4", shuffle=True)
    rng = da.random.default_rng(seed)
    labels = rng.integers(0, len(CENTRES), size=n, chunks=rows, dtype=np.int8)
    to_pytables(labels, path, "/clusters", filters=filters, mode="w", progress=progress)
    stored = from_pytables(path, "/clusters", chunks={0: rows})
    noise = da.random.default_rng(seed + 1).normal(scale=0.2, size=(n, 2), chunks=(rows, 2))
    points = (
        stored.map_blocks(lambda b: CENTRES[b], new_axis=1, chunks=(stored.chunks[0], (2,)), dtype=float)
        + noise
    )
    to_pytables(points, path, "/data", filters=filters, progress=progress)


def _budget_bytes(budget) -> int:
    from daskh5._chunking import resolve_budget

    return resolve_budget(budget)


def write_tokens(path: str, n: int = 20_000, seed: int = 0) -> np.ndarray:
    """A small ragged dataset: ``n`` token streams with log-normal lengths."""
    from daskh5._ragged_write import write_ragged

    rng = np.random.default_rng(seed)
    lengths = np.maximum(1, rng.lognormal(4, 0.6, size=n).astype(int))
    samples = (rng.integers(0, 50_000, size=k, dtype=np.int32) for k in lengths)
    write_ragged(samples, path, "/tokens", mode="w", progress=False)
    return lengths


def _keep_open(client) -> None:
    """Wait for Ctrl-C (SIGINT) or SIGTERM with the cluster up, so its dashboard can be looked at."""
    import signal

    where = f"dashboard {client.dashboard_link}" if client is not None else "no cluster (--workers 0)"
    print(f"  keeping the cluster open: {where}; press Ctrl-C to stop", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("  stopping the cluster", flush=True)


def _cmd_demo(args) -> int:
    from daskh5.array import from_pytables
    from daskh5.ragged import open_ragged

    _pyplot()  # the demo draws pictures: a missing matplotlib fails before any work

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "clusters.h5")
    n = args.points
    print(
        f"daskh5 demo: {n:,} points in 4 clusters -> {path} ({n * 17 / 1e9:.2f} GB raw), budget {args.budget}"
    )
    with _scheduler("local" if args.workers > 0 else "threads", args.workers) as (kwargs, client):
        if client is not None:
            print(
                f"  cluster: {len(client.scheduler_info()['workers'])} worker processes, dashboard {client.dashboard_link}"
            )
        t0 = time.perf_counter()
        write_clusters(path, n, budget=args.budget, progress=not args.no_progress)
        print(f"  wrote in {time.perf_counter() - t0:.1f} s; file is {os.path.getsize(path) / 1e9:.2f} GB")
        stats, seconds, nbytes, x = run_stats(
            path, "/data", "/clusters", args.budget, kwargs, client=client, progress=not args.no_progress
        )
        if args.keep:
            _keep_open(client)
    print(
        f"per-cluster statistics ({x.npartitions} blocks of <= {args.budget}, {nbytes / 1e9 / seconds:.2f} GB/s):"
    )
    print(stats.table())
    step = max(1, n // 20_000)
    sample = from_pytables(path, "/data")[::step].compute(scheduler="threads")
    sample_labels = from_pytables(path, "/clusters")[::step].compute(scheduler="threads")
    pictures = [os.path.join(args.out, name) for name in ("scatter.png", "stats.png", "ragged_lengths.png")]
    plot_scatter(sample, sample_labels, pictures[0], n)
    plot_stats(stats, pictures[1])
    tokens = os.path.join(args.out, "tokens.h5")
    write_tokens(tokens, args.ragged)
    with open_ragged(tokens, "/tokens") as ragged:
        lengths = ragged.lengths
    plot_lengths(lengths, pictures[2])
    print(f"ragged: {len(lengths):,} token streams in {tokens}, lengths {lengths.min()}..{lengths.max()}")
    print("pictures: " + ", ".join(pictures))
    return 0


# -- entry point -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from daskh5 import __version__

    p = argparse.ArgumentParser(
        prog="daskh5", description="Lazy, out-of-core dask and xarray access to PyTables/HDF5 files."
    )
    p.add_argument("--version", action="version", version=f"daskh5 {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{info,demo,stats}")

    q = sub.add_parser("info", help="show a file's nodes, sizes, filters, ragged layouts and dask chunks")
    q.add_argument("file")
    q.add_argument("node", nargs="?", default=None, help="only this group or node (default: the whole file)")
    q.add_argument("--budget", default="64MiB", help="memory budget per dask block (default 64MiB)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.add_argument("--all", action="store_true", help="also list PyTables' table index nodes")
    q.add_argument("--raw", action="store_true", help="also list the nodes pandas stores its frames in")
    _external_flag(q)
    q.set_defaults(run=_cmd_info)

    q = sub.add_parser(
        "demo", help="write a four-cluster dataset and compute per-cluster statistics on a local cluster"
    )
    q.add_argument(
        "--points", type=_positive, default=50_000_000, help="number of 2-d points (default 50,000,000)"
    )
    q.add_argument("--out", default="daskh5-demo", help="output directory (default ./daskh5-demo)")
    q.add_argument(
        "--workers", type=_count, default=2, help="worker processes of the LocalCluster (0: threads only)"
    )
    q.add_argument("--budget", default="64MiB", help="memory budget per dask block (default 64MiB)")
    q.add_argument(
        "--ragged", type=_positive, default=20_000, help="samples in the ragged dataset (default 20,000)"
    )
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q.add_argument("--keep", action="store_true", help="keep the cluster and its dashboard open until Ctrl-C")
    q.set_defaults(run=_cmd_demo)

    q = sub.add_parser("stats", help="per-label count, mean, std, min, max and covariance of your own file")
    q.add_argument("file")
    q.add_argument(
        "--data",
        default="/data",
        help="the (n, d) data node (default /data), or columns of a Table or pandas key: /obs:x,y",
    )
    q.add_argument(
        "--labels",
        default="/clusters",
        help="the (n,) labels node (default /clusters), or a column of a Table or pandas key: /obs:label",
    )
    q.add_argument("--budget", default="64MiB", help="memory budget per dask block (default 64MiB)")
    q.add_argument(
        "--scheduler",
        default=None,
        help="a distributed scheduler ADDRESS (tcp://host:8786), 'local' for a new LocalCluster, "
        "or threads/processes/sync (default threads)",
    )
    q.add_argument("--workers", type=_positive, default=2, help="worker processes with --scheduler local")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.add_argument("--plot", metavar="PNG", help="also save a plot of the statistics")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    _external_flag(q)
    q.add_argument(
        "--allow-filter",
        action="append",
        default=[],
        metavar="FILTER",
        help="also decode this HDF5 filter (id or name, e.g. sz3; repeatable): only for files you trust, "
        "some decoders crash the process on a damaged chunk",
    )
    q.set_defaults(run=_cmd_stats)
    return p


def _external_flag(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--allow-external",
        action="store_true",
        help="follow external links and read data stored in other files (EXTERNAL storage, virtual "
        "datasets); only for files you trust: a crafted file can point at any file you can read",
    )


def _positive(text: str) -> int:
    value = int(text.replace("_", "").replace(",", ""))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _one_line(exc: BaseException) -> str:
    """The error as one printable line: control characters escaped (see :func:`terminal_safe`)."""
    text = " ".join(terminal_safe(str(exc)).split()) or type(exc).__name__
    if isinstance(exc, KeyError) and not isinstance(exc, Daskh5Error):
        text = f"no such node {text}"
    return text


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one escaped line each (they can quote names from the file)."""
    print(f"daskh5: warning: {_one_line(Exception(message))}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the ``daskh5`` command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.run(args)
    except BrokenPipeError:  # `daskh5 info --json | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (
        Daskh5Error,
        CommandError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        RuntimeError,
        MemoryError,
    ) as exc:
        if os.environ.get("DASKH5_DEBUG", "") not in ("", "0"):
            raise
        print(f"daskh5: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("daskh5: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

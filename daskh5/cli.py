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

import numpy as np

from daskh5.errors import Daskh5Error

__all__ = ["main"]

_BLOSC_CODECS = {0: "blosclz", 1: "lz4", 2: "lz4hc", 3: "snappy", 4: "zlib", 5: "zstd"}
_SHUFFLES = {0: "", 1: "+shuffle", 2: "+bitshuffle"}


class CommandError(Exception):
    """A problem the user can fix, reported as one line."""


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
            names.append(f"filter {fid}")
    return ", ".join(names) or "none"


def _size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _node_record(obj, budget: int) -> dict:
    import h5py

    from daskh5._chunking import budget_block, count_blocks
    from daskh5._nodes import node_kind, size_problem

    kind = node_kind(obj)
    rec: dict = {"path": obj.name, "kind": kind}
    if isinstance(obj, h5py.Group):
        return rec
    dcpl = obj.id.get_create_plist()
    filters = [dcpl.get_filter(i)[:3:2] for i in range(dcpl.get_nfilters())]
    stored = int(obj.id.get_storage_size())
    rec.update(
        shape=list(obj.shape),
        dtype=str(obj.dtype) if obj.dtype.names is None else "compound",
        chunkshape=list(obj.chunks) if obj.chunks else None,
        filters=describe_filters(filters),
        stored_bytes=stored,
    )
    if obj.dtype.names is not None:
        rec["columns"] = list(obj.dtype.names)
    if kind == "VLArray" or obj.dtype.kind == "O":
        rec["raw_bytes"] = None  # variable-length: the heap holds the values
        return rec
    raw = int(np.prod(obj.shape, dtype=np.int64)) * obj.dtype.itemsize
    rec["raw_bytes"] = raw
    rec["ratio"] = raw / stored if stored else None
    too_big = size_problem(obj.shape, obj.chunks, obj.dtype.itemsize)
    if too_big:
        rec["warning"] = too_big
    elif obj.shape and obj.dtype.names is None:  # counted, not built: the shape may claim 2**40 blocks
        shape = tuple(int(s) for s in obj.shape)
        block = budget_block(shape, tuple(obj.chunks) if obj.chunks else None, obj.dtype.itemsize, budget)
        block = [min(b, s) for b, s in zip(block, shape)]
        rec["dask"] = {
            "blocks": count_blocks(shape, block),
            "block_shape": block,
            "block_bytes": int(np.prod(block, dtype=np.int64)) * obj.dtype.itemsize,
        }
    return rec


def _ragged_records(path: str, objects: dict, records: list[dict]) -> list[dict]:
    """Ragged layouts in the file: flat EArrays with side columns, and VLArrays (``objects``: the
    h5py object of every record's path)."""
    from daskh5._attrs import small_attr
    from daskh5._layout import ATTR_KIND, find_layout

    found = []
    names = {r["path"] for r in records}
    for r in records:
        if r["kind"] in ("Group",) or r["path"].endswith(("_start_and_stop", "_shape")):
            continue
        obj = objects[r["path"]]
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
            lay = find_layout(path, r["path"])
            entry.update(samples=int(lay.nsamples), sample_ndim=int(lay.ndim), dtype=str(lay.dtype))
        except Daskh5Error as exc:
            entry["error"] = str(exc)
        found.append(entry)
    return found


def info(path: str, node: str | None = None, budget: str = "64MiB", *, show_all: bool = False) -> dict:
    """What ``daskh5 info`` reports, as plain data (read with h5py only: nothing is unpickled).

    PyTables' index containers (``_i_<table>`` groups) are left out unless ``show_all``.
    """
    import h5py

    from daskh5._chunking import resolve_budget
    from daskh5._nodes import lookup, open_h5
    from daskh5._walk import walk

    nbytes = resolve_budget(budget)
    hidden = 0
    with open_h5(path) as f:
        root = lookup(f, node) if node not in (None, "", "/") else f
        records = [_node_record(root, nbytes)]
        objects = {records[0]["path"]: root}
        if isinstance(root, h5py.Group):  # one pass, each child opened from its parent: linear in a deep nest
            for _name, obj, index_node in walk(root, hide=lambda name: name.startswith("_i_")):
                hidden += index_node
                if show_all or not index_node:
                    records.append(_node_record(obj, nbytes))
                    objects[records[-1]["path"]] = obj
        ragged = _ragged_records(f.filename, objects, records)
        filename = f.filename
    return {
        "file": filename,
        "file_bytes": os.path.getsize(filename),
        "budget": budget,
        "nodes": records,
        "ragged": ragged,
        "hidden_index_nodes": 0 if show_all or not isinstance(root, h5py.Group) else hidden,
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
        if r["kind"] == "Group":
            lines.append(f"{head:<32} Group")
            continue
        shape = "(" + ", ".join(map(str, r["shape"])) + ("," if len(r["shape"]) == 1 else "") + ")"
        text = f"{head:<32} {r['kind']:<8} {shape:<18} {r['dtype']:<9}"
        text += f" chunks {tuple(r['chunkshape'])}" if r["chunkshape"] else " contiguous"
        text += f"  {r['filters']}"
        if r.get("raw_bytes") is not None:
            ratio = f" ({r['ratio']:.3g}x)" if r.get("ratio") else ""
            text += f"  {_size(r['raw_bytes'])} -> {_size(r['stored_bytes'])}{ratio}"
        else:
            text += f"  stored {_size(r['stored_bytes'])}"
        if "dask" in r:
            d = r["dask"]
            text += f"  dask: {d['blocks']} x {tuple(d['block_shape'])} ({_size(d['block_bytes'])})"
        if "columns" in r:
            text += f"  columns: {', '.join(r['columns'])}"
        if "warning" in r:
            text += f"  WARNING: {r['warning']}"
        lines.append(text)
    if report.get("hidden_index_nodes"):
        lines.append(
            f"({report['hidden_index_nodes']} nodes of PyTables' table indexes not shown; --all shows them)"
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


def _cmd_info(args) -> int:
    report = info(args.file, args.node, args.budget, show_all=args.all)
    print(json.dumps(report, indent=2) if args.json else format_info(report))
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
            import distributed
        except ImportError as exc:
            raise CommandError("a cluster needs dask.distributed: pip install 'daskh5[demo]'") from exc

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


def run_stats(path, data="/data", labels="/clusters", budget="64MiB", compute_kwargs=None):
    """Per-label statistics of ``data`` by ``labels`` in one file (what ``daskh5 stats`` prints)."""
    from daskh5.array import from_pytables
    from daskh5.stats import label_stats

    x = from_pytables(path, data, chunks=budget)
    y = from_pytables(path, labels, chunks=budget)
    if y.ndim == 1 and y.shape[0] == x.shape[0]:
        y = from_pytables(path, labels, chunks=(x.chunks[0],))  # row for row with the data blocks
    if y.ndim != 1:
        raise CommandError(f"{path}:{labels} has shape {y.shape}; labels must be one value per row of {data}")
    if y.shape[0] != x.shape[0]:
        raise CommandError(
            f"{path}: {data} has {x.shape[0]:,} rows but {labels} has {y.shape[0]:,}; pick a labels node with one value per row"
        )
    t0 = time.perf_counter()
    stats = label_stats(x, y, **(compute_kwargs or {}))
    return stats, time.perf_counter() - t0, x.nbytes + y.nbytes, x


def _stats_json(stats) -> dict:
    return {
        k: getattr(stats, k).tolist()
        for k in ("labels", "count", "sum", "mean", "var", "std", "min", "max", "cov")
    } | {"ddof": stats.ddof}


def _cmd_stats(args) -> int:
    with _scheduler(args.scheduler, args.workers) as (kwargs, _client):
        stats, seconds, nbytes, x = run_stats(args.file, args.data, args.labels, args.budget, kwargs)
    if args.json:
        print(json.dumps(_stats_json(stats), indent=2))
    else:
        print(f"{args.file}: {args.data} by {args.labels}, {len(stats.labels)} labels, {x.shape[0]:,} rows")
        print(stats.table())
        print(
            f"{nbytes / 1e9:.2f} GB in {seconds:.2f} s ({nbytes / 1e9 / seconds:.2f} GB/s), {x.npartitions} blocks of <= {args.budget}"
        )
    if args.plot:
        plot_stats(stats, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return 0


# -- pictures --------------------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise CommandError("plots need matplotlib: pip install 'daskh5[demo]'") from exc
    return plt


def plot_stats(stats, out: str) -> None:
    """Per-label means with 1- and 2-sigma covariance ellipses, and the counts, as a PNG."""
    plt = _pyplot()
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
    ax.autoscale_view()
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(title="label", fontsize="small")
    bars.bar([str(v) for v in stats.labels.tolist()], stats.count, color=colours)
    bars.set_title("rows per label")
    bars.set_xlabel("label")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_scatter(points: np.ndarray, labels: np.ndarray, out: str, total: int) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(
        points[:, 0], points[:, 1], c=labels, cmap="tab10", vmin=0, vmax=9, s=2, alpha=0.5, linewidths=0
    )
    ax.set_title(f"{len(points):,} of {total:,} points, coloured by cluster")
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_lengths(lengths: np.ndarray, out: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(lengths, bins=60, color="tab:blue")
    ax.set_xlabel("sample length")
    ax.set_ylabel("samples")
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


def _cmd_demo(args) -> int:
    from daskh5.array import from_pytables
    from daskh5.ragged import open_ragged

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
        stats, seconds, nbytes, x = run_stats(path, "/data", "/clusters", args.budget, kwargs)
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
    q.set_defaults(run=_cmd_demo)

    q = sub.add_parser("stats", help="per-label count, mean, std, min, max and covariance of your own file")
    q.add_argument("file")
    q.add_argument("--data", default="/data", help="the (n, d) data node (default /data)")
    q.add_argument("--labels", default="/clusters", help="the (n,) labels node (default /clusters)")
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
    q.set_defaults(run=_cmd_stats)
    return p


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
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KeyError) and not isinstance(exc, Daskh5Error):
        text = f"no such node {text}"
    return text


def main(argv: list[str] | None = None) -> int:
    """Run the ``daskh5`` command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
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

"""Read benchmark: daskh5 against PyTables, h5py + hdf5plugin and dask-over-h5py.

Writes a float64 random walk of shape ``(N, 2)`` (800 MB by default) twice with
PyTables -- a blosc:lz4 compressed CArray (complevel 5, shuffle, PyTables'
default chunkshape) and an uncompressed CArray -- then times, side by side and
with a warm page cache, for each file:

* a full read to numpy,
* ``.sum()``,
* a strided row slice ``x[::7]``,

each with daskh5 (``from_pytables(...)`` computed on dask's threaded
scheduler), PyTables, h5py + hdf5plugin, and ``da.from_array(h5py dataset)``
using the same dask chunks as daskh5.  Reports the median of ``--repeat``
repetitions, GB/s and speed ratios against daskh5, checks the speed bars, and
measures the peak memory of ``daskh5 ... .sum()`` in a fresh subprocess.
Before each timed call the script touches and frees some memory (``--prefault``),
because on VMs that hand freed memory back to the host the first touch of
fresh memory would otherwise dominate the timings (see ``benchmarks/README.md``).

Run from the repository root::

    python benchmarks/bench_read.py --quick        # 80 MB, 2 repeats: smoke test
    python benchmarks/bench_read.py                # 800 MB, 5 repeats
    python benchmarks/bench_read.py --mb 2000 --repeat 7 --dir /scratch --keep
    python benchmarks/bench_read.py --no-prefault  # time fresh-memory page faults too

See ``python benchmarks/bench_read.py --help`` and ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from _common import kernel_peak_rss

NODE = "/data"
ROW_BYTES = 2 * 8  # two float64 columns
STRIDE = 7
BLOCK_ROWS = 1 << 20  # rows generated and written per step (16 MiB)
COMPRESSED_FILTERS = dict(complevel=5, complib="blosc:lz4", shuffle=True)

# The speed bars, on the compressed file (daskh5 must be this many times faster).
BAR_VS_PYTABLES = 2.5
BAR_VS_H5PY = 1.2
BAR_MEMORY_BUDGETS = 4  # peak - baseline < this many budgets


# -- small helpers ------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Call ``fn()`` once; return ``(seconds, result)``."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def prefault(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh memory, then free it.

    In a VM whose balloon reports free pages to the host, memory that was freed a
    second or more ago goes back to the host and the next first touch of it costs
    ~2 s/GB instead of ~0.2 s/GB.  Freeing a touched buffer right before a timed
    call lets the call's allocations reuse pages the host still backs, so every
    library is timed on decoding rather than on the hypervisor.
    """
    if nbytes > 0:
        buf = np.empty(nbytes, dtype=np.uint8)
        buf[::4096] = 1  # one write per page
        del buf


def prefault_size(mb: float | None, array_nbytes: int) -> int:
    """Bytes to prefault: ``mb`` MB if given, else 2.5 x the array, within 40% of free memory."""
    if mb is not None:
        return int(mb * 1e6)
    import psutil

    return int(min(2.5 * array_nbytes, 0.4 * psutil.virtual_memory().available))


def format_table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    """Plain-text table; columns in ``right`` are right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells):
        return "  ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# -- machine --------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def free_page_reporting() -> bool:
    """Whether a virtio balloon with free-page reporting is present (a VM that hands
    freed memory back to the host, making the next first touch of it slow)."""
    import glob

    for dev in glob.glob("/sys/bus/virtio/devices/*"):
        try:
            with open(os.path.join(dev, "device")) as fh:
                balloon = fh.read().strip() == "0x0005"
            with open(os.path.join(dev, "features")) as fh:
                features = fh.read().strip()
        except OSError:
            continue
        if balloon and len(features) > 5 and features[5] == "1":  # VIRTIO_BALLOON_F_REPORTING
            return True
    return False


def daskh5_revision() -> str:
    """Git commit of the daskh5 source being benchmarked, and whether it has local edits."""
    import daskh5

    root = os.path.dirname(os.path.dirname(os.path.abspath(daskh5.__file__)))
    try:
        rev = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "daskh5"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"{root} (not a git checkout)"
    return f"{root} at {rev}" + (" + uncommitted changes in daskh5/" if dirty else "")


def machine_report() -> str:
    """CPU, memory, platform and library versions, as printable lines."""
    import dask
    import h5py
    import hdf5plugin
    import numcodecs
    import numcodecs.blosc
    import psutil
    import tables

    import daskh5

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    lines = [
        f"cpu count        : {os.cpu_count()} (usable by this process: {usable})",
        f"cpu model        : {cpu_model()}",
        f"platform.processor(): {platform.processor() or '(empty)'}",
        f"memory           : {psutil.virtual_memory().total / 2**30:.1f} GiB"
        + (
            "; VM with virtio-balloon free-page reporting (see --no-prefault)"
            if free_page_reporting()
            else ""
        ),
        f"platform         : {platform.platform()}",
        f"python           : {platform.python_version()}",
        "versions         : "
        + ", ".join(
            [
                f"numpy {np.__version__}",
                f"tables {tables.__version__}",
                f"h5py {h5py.__version__}",
                f"hdf5plugin {hdf5plugin.version}",
                f"numcodecs {numcodecs.__version__}",
                f"dask {dask.__version__}",
                f"daskh5 {daskh5.__version__}",
            ]
        ),
        f"daskh5 source    : {daskh5_revision()}",
        f"HDF5             : h5py built with {h5py.version.hdf5_version}, tables with {tables.hdf5_version}",
        "blosc threads    : "
        f"PyTables MAX_BLOSC_THREADS={tables.parameters.MAX_BLOSC_THREADS}, "
        f"numcodecs {numcodecs.blosc.get_nthreads()}, "
        f"hdf5plugin BLOSC_NTHREADS={os.environ.get('BLOSC_NTHREADS', 'unset (1)')}",
        f"dask chunk-size  : {dask.config.get('array.chunk-size')}",
    ]
    return "\n".join(lines)


# -- writing the data -------------------------------------------------------------------------
@dataclass
class BenchFile:
    """One written file and what we know about it."""

    label: str
    path: str
    chunkshape: tuple[int, ...] = ()
    nbytes: int = 0  # uncompressed size of the node
    stored: int = 0  # bytes the node takes on disk
    file_size: int = 0

    @property
    def ratio(self) -> float:
        return self.nbytes / self.stored if self.stored else float("nan")


def file_paths(directory: str) -> list[tuple[str, str]]:
    """``(label, path)`` of the compressed and the uncompressed file."""
    return [
        ("blosc:lz4", os.path.join(directory, "walk_blosc_lz4.h5")),
        ("uncompressed", os.path.join(directory, "walk_uncompressed.h5")),
        ("blosc:lz4 EArray", os.path.join(directory, "walk_earray.h5")),
    ]


def write_files(directory: str, rows: int, seed: int = 0) -> list[BenchFile]:
    """Write the random walk to a compressed and an uncompressed CArray, and appended to a
    compressed EArray with PyTables' default (small) chunks, in one pass.

    The walk is generated ``BLOCK_ROWS`` rows at a time (``np.cumsum`` of normal
    steps, continued from the previous block's last row), so memory stays small
    whatever the size.
    """
    import tables

    files = [BenchFile(label, path) for label, path in file_paths(directory)]
    filters = [tables.Filters(**COMPRESSED_FILTERS), None]
    rng = np.random.default_rng(seed)
    handles = [tables.open_file(f.path, "w") for f in files]
    try:
        nodes = [
            h.create_carray("/", NODE.lstrip("/"), atom=tables.Float64Atom(), shape=(rows, 2), filters=flt)
            for h, flt in zip(handles, filters)
        ]
        nodes.append(
            handles[2].create_earray(
                "/", NODE.lstrip("/"), atom=tables.Float64Atom(), shape=(0, 2), filters=filters[0]
            )
        )
        last = np.zeros(2)
        for start in range(0, rows, BLOCK_ROWS):
            stop = min(rows, start + BLOCK_ROWS)
            walk = np.cumsum(rng.standard_normal((stop - start, 2)), axis=0)
            walk += last
            last = walk[-1].copy()
            for node in nodes:
                if isinstance(node, tables.EArray):
                    node.append(walk)
                else:
                    node[start:stop] = walk
        for f, node in zip(files, nodes):
            node.flush()
            f.chunkshape = tuple(int(c) for c in node.chunkshape)
            f.nbytes = int(node.size_in_memory)
            f.stored = int(node.size_on_disk)
    finally:
        for h in handles:
            h.close()
    for f in files:
        f.file_size = os.path.getsize(f.path)
    return files


def warm_page_cache(path: str, block: int = 16 << 20) -> int:
    """Read the whole file once (untimed) so every timed read finds it in the page cache."""
    n = 0
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(block):
            n += len(chunk)
    return n


# -- the timed cases --------------------------------------------------------------------------
METHODS = ["daskh5", "PyTables", "h5py", "dask+h5py", "dask floor"]
OPERATIONS = ["read", "sum", "x[::7]"]
METHOD_LABELS = {
    "read": {
        "daskh5": "from_pytables(...).compute()",
        "PyTables": "node.read()",
        "h5py": "ds[:]",
        "dask+h5py": "da.from_array(ds).compute()",
        # no file at all: the blocks are made from the in-memory reference, then dask joins them.
        # This is the least any dask .compute() of the whole array costs on this machine.
        "dask floor": "(da.from_array(ref) + 0).compute()",
    },
    "sum": {
        "daskh5": "x.sum().compute()",
        "PyTables": "node.read().sum()",
        "h5py": "ds[:].sum()",
        "dask+h5py": "da.from_array(ds).sum().compute()",
    },
    "x[::7]": {
        "daskh5": "x[::7].compute()",
        "PyTables": "node[::7]",
        "h5py": "ds[::7]",
        "dask+h5py": "da.from_array(ds)[::7].compute()",
    },
}


@dataclass
class Case:
    file: str
    op: str
    method: str
    fn: Callable[[], object]
    check: Callable[[object], bool]
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def make_cases(bf: BenchFile, node, ds, x, hx, reference: np.ndarray) -> list[Case]:
    """All (operation, method) cases of one file, with a correctness check each."""
    ref_sum = float(reference.sum())
    ref_strided = reference[::STRIDE]

    def same(a):
        return isinstance(a, np.ndarray) and a.shape == reference.shape and np.array_equal(a, reference)

    def close_sum(s):
        return bool(np.isclose(float(s), ref_sum, rtol=1e-9, atol=1e-6 * reference.size))

    def strided(a):
        return isinstance(a, np.ndarray) and np.array_equal(a, ref_strided)

    import dask.array as da

    th = "threads"
    floor = da.from_array(reference, chunks=x.chunks) + 0
    table = {
        "read": (
            same,
            {
                "daskh5": lambda: x.compute(scheduler=th),
                "PyTables": lambda: node.read(),
                "h5py": lambda: ds[:],
                "dask+h5py": lambda: hx.compute(scheduler=th),
                "dask floor": lambda: floor.compute(scheduler=th),
            },
        ),
        "sum": (
            close_sum,
            {
                "daskh5": lambda: x.sum().compute(scheduler=th),
                "PyTables": lambda: node.read().sum(),
                "h5py": lambda: ds[:].sum(),
                "dask+h5py": lambda: hx.sum().compute(scheduler=th),
            },
        ),
        "x[::7]": (
            strided,
            {
                "daskh5": lambda: x[::STRIDE].compute(scheduler=th),
                "PyTables": lambda: node[::STRIDE],
                "h5py": lambda: ds[::STRIDE],
                "dask+h5py": lambda: hx[::STRIDE].compute(scheduler=th),
            },
        ),
    }
    return [
        Case(bf.label, op, m, fns[m], check)
        for op in OPERATIONS
        for check, fns in [table[op]]
        for m in METHODS
        if m in fns
    ]


def bench_file(
    bf: BenchFile, repeat: int, chunks, log: Callable[[str], None], prefault_bytes: int = 0
) -> list[Case]:
    """Time every case on one file; repetitions go round-robin over the cases."""
    import dask.array as da
    import h5py
    import hdf5plugin  # noqa: F401  registers the blosc filter with h5py
    import tables

    import daskh5

    warm_page_cache(bf.path)
    # daskh5 opens the file through h5py with HDF5 file locking off, and HDF5 refuses to
    # open one file twice in a process with different locking flags: create the daskh5
    # array first, and open our own h5py handle with locking off too.
    t_setup, x = timed(lambda: daskh5.from_pytables(bf.path, NODE, chunks=chunks))
    with tables.open_file(bf.path, "r") as tf, h5py.File(bf.path, "r", locking=False) as hf:
        node, ds = tf.get_node(NODE), hf[NODE]
        t_ref, reference = timed(node.read)  # untimed warm-up read (and the reference data)
        hx = da.from_array(ds, chunks=x.chunks)
        log(
            f"  {bf.label}: warm-up read {t_ref:.2f} s; from_pytables() setup {t_setup * 1e3:.1f} ms; "
            f"dask chunks {x.numblocks[0]} blocks of <= {max(x.chunks[0]):,} rows "
            f"({mib(max(x.chunks[0]) * ROW_BYTES)}), HDF5 chunks of {bf.chunkshape[0]:,} rows "
            f"({mib(bf.chunkshape[0] * ROW_BYTES)})"
        )
        cases = make_cases(bf, node, ds, x, hx, reference)
        # Round 0 is an untimed warm-up of every case (lazy imports, dask's caches,
        # thread pools) whose results are checked against the reference.
        for rep in range(repeat + 1):
            for case in cases:
                gc.collect()
                prefault(prefault_bytes)
                seconds, out = timed(case.fn)
                if rep == 0:
                    if not case.check(out):
                        raise AssertionError(f"{case.file} {case.op} {case.method}: wrong result")
                else:
                    case.times.append(seconds)
                del out
            log(
                f"    {'warm-up round (untimed, results checked)' if rep == 0 else f'repetition {rep}/{repeat}'} done"
            )
        del reference
    return cases


# -- reporting ----------------------------------------------------------------------------------
def results_table(cases: list[Case], nbytes: int) -> str:
    """Median seconds, GB/s and time relative to daskh5, one row per case."""
    rows = []
    by_key = {(c.file, c.op, c.method): c for c in cases}
    for c in cases:
        base = by_key[(c.file, c.op, "daskh5")].median
        rows.append(
            [
                c.file if (c.op, c.method) == (OPERATIONS[0], METHODS[0]) else "",
                c.op if c.method == METHODS[0] else "",
                c.method,
                METHOD_LABELS[c.op][c.method],
                f"{c.median:.3f}",
                f"{min(c.times):.3f}",
                f"{max(c.times):.3f}",
                f"{nbytes / 1e9 / c.median:.2f}",
                f"{c.median / base:.2f}x",
            ]
        )
    headers = ["file", "op", "method", "call", "median s", "min s", "max s", "GB/s", "t / t(daskh5)"]
    return format_table(headers, rows, right={4, 5, 6, 7, 8})


def ratio_table(cases: list[Case]) -> str:
    """PyTables / daskh5, h5py / daskh5 and dask+h5py / daskh5 median-time ratios."""
    by_key = {(c.file, c.op, c.method): c.median for c in cases}
    rows = []
    for f in dict.fromkeys(c.file for c in cases):
        for op in OPERATIONS:
            d = by_key[(f, op, "daskh5")]
            rows.append(
                [
                    f,
                    op,
                    f"{by_key[(f, op, 'PyTables')] / d:.2f}",
                    f"{by_key[(f, op, 'h5py')] / d:.2f}",
                    f"{by_key[(f, op, 'dask+h5py')] / d:.2f}",
                ]
            )
    headers = ["file", "op", "PyTables / daskh5", "h5py / daskh5", "dask+h5py / daskh5"]
    return format_table(headers, rows, right={2, 3, 4})


def speed_bars(cases: list[Case], label: str) -> tuple[list[str], bool]:
    by_key = {(c.file, c.op, c.method): c.median for c in cases}
    d = by_key[(label, "read", "daskh5")]
    vs_pt = by_key[(label, "read", "PyTables")] / d
    vs_h5 = by_key[(label, "read", "h5py")] / d
    ok_pt, ok_h5 = vs_pt >= BAR_VS_PYTABLES, vs_h5 >= BAR_VS_H5PY
    lines = [
        f"{verdict(ok_pt)}  full read, {label}: daskh5 is {vs_pt:.2f}x faster than PyTables read() "
        f"(bar >= {BAR_VS_PYTABLES}x)",
        f"{verdict(ok_h5)}  full read, {label}: daskh5 is {vs_h5:.2f}x faster than h5py+hdf5plugin ds[:] "
        f"(bar >= {BAR_VS_H5PY}x)",
    ]
    return lines, ok_pt and ok_h5


# -- peak memory of .sum(), in a fresh process ---------------------------------------------------
def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) of this process; Linux >= 4.0 only."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def memory_child(path: str, node: str, budget: str, interval: float = 0.005) -> dict:
    """Run ``from_pytables(path, node, chunks=budget).sum()`` while sampling RSS (child side)."""
    import dask.array  # noqa: F401  imported before the baseline, like a user's session
    import psutil

    import daskh5

    proc = psutil.Process()
    x = daskh5.from_pytables(path, node, chunks=budget)
    gc.collect()
    baseline = proc.memory_info().rss
    peak = baseline
    samples = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, samples
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            samples += 1
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    hwm_reset = _reset_peak_rss()
    t0 = time.perf_counter()
    total = float(x.sum().compute(scheduler="threads"))
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    peak = max(peak, proc.memory_info().rss)
    return {
        "baseline": baseline,
        "peak": peak,
        "samples": samples,
        "vmhwm": kernel_peak_rss() if hwm_reset else None,
        "seconds": seconds,
        "sum": total,
        "numblocks": x.numblocks[0],
        "block_rows": max(x.chunks[0]),
    }


def measure_sum_memory(path: str, budget: str) -> dict:
    """Run :func:`memory_child` in a fresh interpreter and return its measurements."""
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", path, "--budget", budget]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory subprocess failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_report(label: str, m: dict, budget: str) -> tuple[str, bool]:
    from dask.utils import parse_bytes

    b = parse_bytes(budget)
    grown = m["peak"] - m["baseline"]
    ok = grown < BAR_MEMORY_BUDGETS * b
    text = "\n".join(
        [
            f"  {label}: chunks={budget!r} -> {m['numblocks']} blocks of <= {m['block_rows']:,} rows "
            f"({mib(m['block_rows'] * ROW_BYTES)}); sum {m['sum']:.6g} in {m['seconds']:.2f} s",
            f"    baseline RSS (after imports, before compute): {mib(m['baseline'])}",
            f"    peak RSS (sampled every 5 ms, {m['samples']} samples): {mib(m['peak'])}; kernel VmHWM "
            f"during compute: {mib(m['vmhwm']) if m['vmhwm'] else 'n/a'} (cross-check)",
            f"    peak - baseline = {mib(grown)} = {grown / b:.2f} x budget ({mib(b)})",
            f"  {verdict(ok)}  {label}: peak - baseline < {BAR_MEMORY_BUDGETS} x budget "
            f"({mib(grown)} < {mib(BAR_MEMORY_BUDGETS * b)})",
        ]
    )
    return text, ok


# -- main -------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=800, help="uncompressed size in MB (1e6 bytes); default 800")
    p.add_argument("--repeat", type=int, default=5, help="repetitions per case; the median is reported")
    p.add_argument("--quick", action="store_true", help="smoke test: 80 MB, 2 repetitions")
    p.add_argument("--dir", default=None, help="where to write the files (default: a new temp dir in /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the written files")
    p.add_argument("--budget", default="64MiB", help="chunks= memory budget for the .sum() memory test")
    p.add_argument(
        "--chunks",
        default="auto",
        help="chunks= for daskh5 in the timed cases (default 'auto': dask's chunk-size)",
    )
    p.add_argument(
        "--prefault",
        type=float,
        default=None,
        metavar="MB",
        help="touch and free this much memory before each timed call (default: 2.5 x the array size, "
        "capped at 40%% of available memory); see benchmarks/README.md",
    )
    p.add_argument("--no-prefault", action="store_true", help="same as --prefault 0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-child", metavar="PATH", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.mb, args.repeat = 80, 2
    if args.repeat < 1 or args.mb <= 0:
        p.error("--repeat must be >= 1 and --mb > 0")
    if args.no_prefault:
        args.prefault = 0
    if args.chunks.isdigit():
        args.chunks = int(args.chunks)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, NODE, args.budget)))
        return 0

    def log(msg: str) -> None:
        print(msg, flush=True)

    t_start = time.perf_counter()
    rows = int(args.mb * 1e6 // ROW_BYTES)
    made_dir = args.dir is None
    directory = tempfile.mkdtemp(prefix="daskh5-bench-", dir="/tmp") if made_dir else args.dir
    os.makedirs(directory, exist_ok=True)
    try:
        log("== machine")
        log(machine_report())
        log("")
        log(
            f"== writing a float64 random walk of shape ({rows:,}, 2) = {rows * ROW_BYTES / 1e6:,.0f} MB to {directory}"
        )
        t_write, files = timed(lambda: write_files(directory, rows, args.seed))
        log(f"written in {t_write:.1f} s")
        log(
            format_table(
                ["file", "filters", "chunkshape", "chunk size", "on disk", "compression ratio"],
                [
                    [
                        f.label,
                        "none" if f.label == "uncompressed" else "complevel=5 blosc:lz4 shuffle",
                        str(f.chunkshape),
                        mib(f.chunkshape[0] * ROW_BYTES),
                        mib(f.stored),
                        f"{f.ratio:.2f}",
                    ]
                    for f in files
                ],
                right={3, 4, 5},
            )
        )
        log("")
        prefault_bytes = prefault_size(args.prefault, files[0].nbytes)
        log(
            f"== timing: {args.repeat} repetitions, median reported; WARM page cache (the OS cache is "
            "not dropped; each file is read once, untimed, first)"
        )
        log(
            f"   before each timed call: gc.collect() and prefault {mib(prefault_bytes)} of memory"
            + (" (disabled)" if not prefault_bytes else "")
        )
        cases: list[Case] = []
        for f in files:
            cases += bench_file(f, args.repeat, args.chunks, log, prefault_bytes)
        nbytes = files[0].nbytes
        log("")
        log(
            f"== results (warm page cache; GB/s = uncompressed array size {nbytes / 1e9:.2f} GB / median time, "
            "since every operation touches every chunk)"
        )
        log(results_table(cases, nbytes))
        log("")
        log(
            "== speed ratios (median time of the other library / median time of daskh5; > 1 means daskh5 is faster)"
        )
        log(ratio_table(cases))
        log("")
        log("== speed bars")
        bar_lines, speed_ok = speed_bars(cases, files[0].label)
        log("\n".join(bar_lines))
        log("")
        log(f"== .sum() peak memory, fresh subprocess, from_pytables(path, {NODE!r}, chunks={args.budget!r})")
        mem_ok = True
        for f in files:
            text, ok = memory_report(f.label, measure_sum_memory(f.path, args.budget), args.budget)
            mem_ok &= ok
            log(text)
        log("")
        log(f"== overall: speed bars {verdict(speed_ok)}, memory bar {verdict(mem_ok)}")
        log(f"total wall time {time.perf_counter() - t_start:.1f} s")
    finally:
        if args.keep:
            log(f"files kept in {directory}")
        elif made_dir:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            for _label, path in file_paths(directory):
                try:
                    os.remove(path)
                except OSError:
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Larger-than-RAM scenario: write, reduce and group a four-cluster dataset bigger than the machine's RAM.

On a ``distributed.LocalCluster`` (``--workers`` worker processes, one thread
each) the scenario

1. **writes** ``/data`` (n, 2) float64 and ``/clusters`` (n,) int8 with
   daskh5's writer (``daskh5.cli.write_clusters``: four Gaussian clusters,
   blosc:lz4 + shuffle, generated and written ``--budget`` at a time); by
   default ``/data`` is 1.35 x the machine's total RAM;
2. computes the **per-cluster statistics**: ``daskh5.label_stats`` over
   ``from_pytables(path, "/data", chunks=budget)`` and the labels;
3. computes ``from_pytables(path, "/data", chunks=budget).sum()``;
4. computes ``xr.open_dataset(path, engine="daskh5", chunks=<budget rows>)``
   ``.groupby(clusters=UniqueGrouper(labels=...)).mean()`` (flox, lazily);
5. recomputes everything as the **reference**: a streaming numpy pass with
   h5py (+ hdf5plugin), about 4M rows at a time, in this process: per label
   counts, min/max, sums and cross products of the rows shifted by the label's
   first-chunk mean (so variances do not cancel), chunk partials summed with
   ``math.fsum``.

It prints, per phase, the wall time, the effective GB/s (uncompressed bytes
the phase covers / wall time), the bytes the processes read from (or wrote
to) storage, which tells a cold from a warm page cache, and the peak RSS of
every process involved: this one ("client": the client, the scheduler and,
in a LocalCluster, the nannies; it also runs the numpy reference), each
worker, and multiprocessing's resource tracker (a nanny running as a process
of its own would get a column too). Peaks are sampled every 0.2 s
in this process for the whole process tree, every 0.05 s by a thread inside
each worker (started with ``client.run``), and taken from the kernel's
``VmHWM`` (reset through ``/proc/<pid>/clear_refs`` at each phase start); the
largest of the three counts.

Workers get ``memory_limit`` = min(4 GiB, RAM / (workers + 1)) with spilling,
pausing and the memory target off: nothing frees or hides memory behind the
measurement, and the nanny only terminates a worker at 95 % of its limit, far
above the bar.

Bars (PASS/FAIL lines, exit code 1 on any FAIL): the scenario completes with
no worker restarted; every process stays under 1024 MiB peak RSS in every
phase; phases 2-4 match the reference (labels, counts, min and max exactly;
means and per-label sums to rtol 1e-9; covariances to 1e-6 x sigma_i sigma_j;
the total to rtol 1e-9 plus 1e-13 x sum|x|, the rounding a sum of values of
both signs allows).

The files are deleted at the end (``--keep`` keeps them). Do not run the full
size on a busy machine: it writes and reads the whole file four times.

Run from the repository root::

    python benchmarks/scenario_larger_than_ram.py              # /data = 1.35 x RAM (35 GB on 24 GiB)
    python benchmarks/scenario_larger_than_ram.py --gb 3       # a quick validation run (fits in RAM)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback

import numpy as np
from _common import kernel_peak_rss, machine_line

BAR_PEAK_MIB = 1024
RTOL_MEAN = 1e-9  # means, per-label sums, the total
ATOL_TOTAL = 1e-13  # x sum(|x|): the total of values of both signs cancels
RTOL_COV = 1e-6  # x sigma_i sigma_j
REF_ROWS = 4_000_000  # rows per read of the numpy reference (rounded to whole HDF5 chunks)
MiB = 2**20


# -- peak RSS of every process ---------------------------------------------------------------------
def _reset_hwm(pid: int) -> None:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := current RSS


class TreeSampler:
    """Peak RSS of this process and all its descendants (nannies, workers), sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.psutil = psutil
        self.root = psutil.Process()
        self.interval = interval
        self.lock = threading.Lock()
        self.peaks: dict[int, int] = {}
        self.io_start: dict[int, tuple[int, int]] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="scenario-rss-tree", daemon=True)
        self.thread.start()

    def processes(self) -> list:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except self.psutil.Error:
            return [self.root]

    def _io(self, proc) -> tuple[int, int]:
        try:
            c = proc.io_counters()
            return c.read_bytes, c.write_bytes
        except (self.psutil.Error, AttributeError):
            return 0, 0

    def sample(self) -> None:
        for proc in self.processes():
            try:
                rss = proc.memory_info().rss
            except self.psutil.Error:
                continue
            with self.lock:
                self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), rss)

    def _run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def start_phase(self) -> None:
        with self.lock:
            self.peaks = {}
        procs = self.processes()
        self.io_start = {p.pid: self._io(p) for p in procs}
        for p in procs:
            _reset_hwm(p.pid)
        self.sample()

    def end_phase(self) -> tuple[dict[int, dict], int, int]:
        """Per pid ``{"sampled", "hwm"}`` bytes, and the bytes the tree read from and wrote to storage."""
        self.sample()
        out, read, written = {}, 0, 0
        for p in self.processes():
            r, w = self._io(p)
            r0, w0 = self.io_start.get(p.pid, (0, 0))
            read, written = read + r - r0, written + w - w0
            with self.lock:
                sampled = self.peaks.get(p.pid, 0)
            out[p.pid] = {"sampled": sampled, "hwm": kernel_peak_rss(p.pid)}
        return out, read, written

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def _worker_rss(action: str, interval: float = 0.05, dask_worker=None):
    """Run in each worker by ``client.run``: a sampler thread keeping the worker's peak RSS.

    ``"start"`` starts it (once), ``"reset"`` restarts the peak from the current RSS,
    ``"stop"`` ends the thread; every call returns ``(pid, peak bytes)``.
    """
    import os
    import threading

    import psutil

    proc = psutil.Process()
    state = getattr(dask_worker, "_scenario_rss", None)
    if state is None:
        state = {"peak": proc.memory_info().rss, "done": threading.Event()}

        def run():
            while not state["done"].wait(interval):
                state["peak"] = max(state["peak"], proc.memory_info().rss)

        threading.Thread(target=run, name="scenario-rss", daemon=True).start()
        dask_worker._scenario_rss = state
    if action == "reset":
        state["peak"] = proc.memory_info().rss
    elif action == "stop":
        state["done"].set()
    return os.getpid(), max(state["peak"], proc.memory_info().rss)


# -- the streaming numpy reference -----------------------------------------------------------------
def numpy_reference(path: str) -> dict:
    """Per-label statistics and the total of ``/data``, reading ~4M rows at a time with h5py."""
    import h5py
    import hdf5plugin  # noqa: F401  (registers the blosc filter with h5py)

    acc: dict = {}
    totals, abs_totals = [], []
    with h5py.File(path, "r") as f:
        dset, cset = f["data"], f["clusters"]
        n, dim = dset.shape[0], (dset.shape[1] if dset.ndim == 2 else 1)
        step = max(1, REF_ROWS // dset.chunks[0]) * dset.chunks[0]
        for start in range(0, n, step):
            x = dset[start : start + step]
            lab = cset[start : start + step]
            totals.append(float(x.sum()))
            abs_totals.append(float(np.abs(x).sum()))
            for k in np.unique(lab).tolist():
                xk = x[lab == k]
                a = acc.get(k)
                if a is None:  # shift by this label's first-chunk mean: the sums below stay small
                    a = acc[k] = {"n": 0, "shift": xk.mean(axis=0), "s1": [], "s2": [],
                                  "lo": xk.min(axis=0), "hi": xk.max(axis=0)}  # fmt: skip
                d = xk - a["shift"]
                a["n"] += xk.shape[0]
                a["s1"].append(d.sum(axis=0))
                a["s2"].append(d.T @ d)
                a["lo"] = np.minimum(a["lo"], xk.min(axis=0))
                a["hi"] = np.maximum(a["hi"], xk.max(axis=0))
    labels = sorted(acc)
    ref = {"labels": np.array(labels), "count": np.array([acc[k]["n"] for k in labels], dtype=np.int64)}
    means, sums, covs = [], [], []
    for k in labels:
        a = acc[k]
        s1 = np.array([math.fsum(p[i] for p in a["s1"]) for i in range(dim)])
        s2 = np.array([[math.fsum(p[i, j] for p in a["s2"]) for j in range(dim)] for i in range(dim)])
        means.append(a["shift"] + s1 / a["n"])
        sums.append(a["shift"] * a["n"] + s1)
        covs.append((s2 - np.outer(s1, s1) / a["n"]) / (a["n"] - 1))
    ref.update(
        mean=np.array(means),
        sum=np.array(sums),
        cov=np.array(covs),
        min=np.array([acc[k]["lo"] for k in labels]),
        max=np.array([acc[k]["hi"] for k in labels]),
        total=math.fsum(totals),
        total_abs=math.fsum(abs_totals),
    )
    return ref


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), np.finfo(float).tiny)))


def _cov_diff(cov, ref_cov) -> float:
    """Largest covariance difference in units of sigma_i sigma_j (the reference's)."""
    sigma = np.sqrt(np.diagonal(ref_cov, axis1=1, axis2=2))
    return float(np.max(np.abs(cov - ref_cov) / (sigma[:, :, None] * sigma[:, None, :])))


# -- the scenario ----------------------------------------------------------------------------------
def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB"


def _status(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(argv: list[str] | None = None) -> int:
    import psutil

    total_ram = psutil.virtual_memory().total
    default_gb = math.ceil(1.35 * total_ram / 1e9)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=default_gb,
                   help=f"raw size of /data in GB (10^9 bytes); default 1.35 x total RAM = {default_gb}")  # fmt: skip
    p.add_argument("--budget", default="64MiB", help="memory budget per dask block (default 64MiB)")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the LocalCluster (default 2)")
    p.add_argument("--dir", default=None, help="where to write (default: the temp dir, usually /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the file (and its directory) at the end")
    p.add_argument("--progress", action="store_true", help="progress bars while writing")
    args = p.parse_args(argv)
    if args.workers < 1 or args.gb <= 0:
        p.error("--workers must be >= 1 and --gb > 0")

    n = int(args.gb * 1e9) // 16
    raw = n * 17  # /data float64 (n, 2) and /clusters int8 (n,)
    parent = os.path.abspath(args.dir or tempfile.gettempdir())
    free = shutil.disk_usage(parent).free
    need = int(raw * 1.1) + 2 * 10**9  # random normal data barely compresses; 2 GB margin
    if free < need:
        print(f"scenario_larger_than_ram: not enough disk space in {parent}: needs about {_gb(need)} "
              f"({args.gb:g} GB of /data + labels, x1.1, + 2 GB margin), {_gb(free)} free; "
              "pass --dir on a bigger disk or a smaller --gb", file=sys.stderr)  # fmt: skip
        return 2

    import dask
    import distributed
    import flox
    import h5py
    import hdf5plugin
    import tables
    import xarray as xr

    import daskh5
    from daskh5.array import from_pytables
    from daskh5.cli import write_clusters
    from daskh5.stats import label_stats

    print(machine_line())
    print(f"versions: daskh5 {daskh5.__version__}, dask {dask.__version__}, distributed {distributed.__version__}, "
          f"xarray {xr.__version__}, flox {flox.__version__}, numpy {np.__version__}, tables {tables.__version__}, "
          f"h5py {h5py.__version__}, hdf5plugin {hdf5plugin.version}, psutil {psutil.__version__}")  # fmt: skip
    vm = psutil.virtual_memory()
    print(f"RAM: {_gb(total_ram)} total ({total_ram / 2**30:.1f} GiB), {_gb(vm.available)} available; "
          f"disk: {_gb(free)} free in {parent}, about {_gb(need)} needed")  # fmt: skip
    bigger = args.gb * 1e9 > total_ram
    print(f"dataset: /data ({n:,}, 2) float64 = {_gb(n * 16)} raw, /clusters ({n:,},) int8, {_gb(raw)} in all: "
          + ("larger than RAM" if bigger else "NOT larger than RAM (a validation size; the default is "
             f"--gb {default_gb})"))  # fmt: skip

    folder = tempfile.mkdtemp(prefix="daskh5-larger-than-ram-", dir=parent)
    path = os.path.join(folder, "clusters.h5")
    limit = min(4 * 2**30, total_ram // (args.workers + 1))
    print(f"load average (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; times mean something "
          "only on a quiet machine")  # fmt: skip
    print(f"file: {path}")
    print(f"cluster: LocalCluster, {args.workers} worker processes x 1 thread, memory_limit "
          f"{limit / 2**30:.1f} GiB each (no spilling/pausing; the nanny terminates at 95 %), "
          f"budget {args.budget}; scheduler in this process")  # fmt: skip

    tree = TreeSampler(0.2)
    cluster = client = None
    records: list[dict] = []
    labels_of: dict[int, str] = {os.getpid(): "client"}
    order = ["client"]
    checks: list[tuple[str, bool, str]] = []
    error = None
    try:
        with dask.config.set({"distributed.worker.memory.target": False,
                              "distributed.worker.memory.spill": False,
                              "distributed.worker.memory.pause": False,
                              "distributed.worker.memory.terminate": 0.95}):  # fmt: skip
            cluster = distributed.LocalCluster(
                n_workers=args.workers, threads_per_worker=1, processes=True, memory_limit=limit,
                dashboard_address=":0", silence_logs=logging.ERROR,
            )  # fmt: skip
        client = distributed.Client(cluster)
        started = client.run(_worker_rss, "start")
        worker_pids = {addr: pid for addr, (pid, _) in started.items()}
        in_process_nannies = 0
        for i, addr in enumerate(sorted(worker_pids)):
            pid = worker_pids[addr]
            labels_of[pid] = f"worker-{i}"
            nanny = psutil.Process(pid).ppid()
            if nanny == os.getpid():  # LocalCluster: the nannies are objects in this process
                in_process_nannies += 1
            else:
                labels_of[nanny] = f"nanny-{i}"
                order.append(f"nanny-{i}")
            order.append(f"worker-{i}")
        for proc in tree.processes()[1:]:
            if proc.pid not in labels_of:
                with contextlib.suppress(psutil.Error):
                    cmd = " ".join(proc.cmdline())
                    labels_of[proc.pid] = (
                        "resource_tracker" if "resource_tracker" in cmd else f"pid {proc.pid}"
                    )
        print(
            "processes: client = this process (client, scheduler"
            + (", the nannies" if in_process_nannies else "")
            + ", later the numpy reference), "
            + ", ".join(f"{v} pid {k}" for k, v in labels_of.items() if k != os.getpid())
        )

        def run_phase(name: str, nbytes: int, fn):
            number = len(records) + 1
            tree.start_phase()
            client.run(_worker_rss, "reset")
            t0 = time.perf_counter()
            result = fn()
            seconds = time.perf_counter() - t0
            in_workers = client.run(_worker_rss, "peak")
            per_pid, read, written = tree.end_phase()
            for pid, peak in in_workers.values():
                per_pid.setdefault(pid, {"sampled": 0, "hwm": None})["worker"] = peak
            peaks: dict[str, int] = {}
            for pid, v in per_pid.items():
                label = labels_of.get(pid, f"pid {pid}")
                peak = max(v["sampled"], v["hwm"] or 0, v.get("worker", 0))
                peaks[label] = max(peaks.get(label, 0), peak)
            restarted = sorted(set(worker_pids.values()) - {pid for pid, _ in in_workers.values()})
            rec = {"name": name, "seconds": seconds, "bytes": nbytes, "read": read, "written": written,
                   "peaks": peaks, "restarted": restarted}  # fmt: skip
            records.append(rec)
            size = os.path.getsize(path) if os.path.exists(path) else 0
            if name == "write":
                io = f"wrote {_gb(written)} to storage"
            else:
                frac = read / size if size else 0.0
                cache = ("cold: mostly from disk" if frac > 0.5 else
                         "warm: from the page cache" if frac < 0.05 else "partly cached")  # fmt: skip
                io = f"read {_gb(read)} from storage of the {_gb(size)} file ({cache})"
            print(
                f"[{number}/5] {name}: {seconds:.1f} s, {_gb(nbytes)} raw, {nbytes / 1e9 / seconds:.2f} GB/s; {io}"
            )
            shown = [k for k in order if k in peaks] + sorted(set(peaks) - set(order))
            print("      peak RSS MiB: " + ", ".join(f"{k} {peaks[k] / MiB:.0f}" for k in shown))
            if restarted:
                print(f"      worker process(es) {restarted} disappeared (killed/restarted)")
            return result

        # 1. write
        print()
        run_phase("write", raw, lambda: write_clusters(path, n, budget=args.budget, progress=args.progress))
        size = os.path.getsize(path)
        print(f"      file: {_gb(size)} on disk, {raw / size:.2f}x compression; RAM {_gb(total_ram)}: the file "
              + ("does NOT fit in the page cache, reads come mostly from disk"
                 if size > vm.available else "fits in the page cache, reads below are mostly warm"))  # fmt: skip

        # 2. per-cluster statistics
        def stats_phase():
            x = from_pytables(path, "/data", chunks=args.budget)
            y = from_pytables(path, "/clusters", chunks=(x.chunks[0],))
            return label_stats(x, y), x.chunks[0][0], x.npartitions

        stats, block_rows, nblocks = run_phase("label_stats", raw, stats_phase)
        print(f"      {nblocks} blocks of {block_rows:,} rows ({block_rows * 16 / MiB:.0f} MiB); labels "
              f"{stats.labels.tolist()}, counts {stats.count.tolist()}")  # fmt: skip

        # 3. full sum
        total = run_phase(
            "sum", n * 16, lambda: float(from_pytables(path, "/data", chunks=args.budget).sum().compute())
        )

        # 4. xarray groupby mean (flox, lazily: the labels are given, here the ones label_stats found)
        def xarray_phase():
            with xr.open_dataset(path, engine="daskh5") as probe:
                row_dim = probe["data"].dims[0]
                assert probe["clusters"].dims == (row_dim,), probe
            ds = xr.open_dataset(path, engine="daskh5", chunks={row_dim: block_rows})
            grouped = ds.groupby(clusters=xr.groupers.UniqueGrouper(labels=stats.labels)).mean()
            return row_dim, ds["data"].data.npartitions, grouped.compute()

        row_dim, xr_blocks, means = run_phase("xarray groupby", raw, xarray_phase)
        print(f"      dims ({row_dim}, ...), {xr_blocks} blocks; result clusters "
              f"{means['clusters'].values.tolist()}")  # fmt: skip

        # 5. streaming numpy reference
        ref = run_phase("numpy check", raw, lambda: numpy_reference(path))

        same_labels = np.array_equal(stats.labels, ref["labels"])
        exact = same_labels and all(
            np.array_equal(getattr(stats, k), ref[k]) for k in ("count", "min", "max")
        )
        d_mean = _rel(stats.mean, ref["mean"]) if same_labels else math.inf
        d_sum = _rel(stats.sum, ref["sum"]) if same_labels else math.inf
        d_cov = _cov_diff(stats.cov, ref["cov"]) if same_labels else math.inf
        ok = exact and d_mean <= RTOL_MEAN and d_sum <= RTOL_MEAN and d_cov <= RTOL_COV
        checks.append(("label_stats matches", ok,
                       f"labels, counts, min, max identical: {exact}; max rel diff mean {d_mean:.1e}, "
                       f"sum {d_sum:.1e}; cov {d_cov:.1e} x sigma_i sigma_j"))  # fmt: skip
        d_total = abs(total - ref["total"])
        ok = d_total <= RTOL_MEAN * abs(ref["total"]) + ATOL_TOTAL * ref["total_abs"]
        checks.append((".sum() matches", ok,
                       f"{total!r} vs {ref['total']!r}: rel diff {d_total / max(abs(ref['total']), 1e-300):.1e}, "
                       f"diff / sum|x| {d_total / ref['total_abs']:.1e}"))  # fmt: skip
        xr_labels = means["clusters"].values
        d_xr = (
            _rel(means["data"].values, ref["mean"]) if np.array_equal(xr_labels, ref["labels"]) else math.inf
        )
        checks.append(("xarray groupby mean matches", d_xr <= RTOL_MEAN, f"max rel diff mean {d_xr:.1e}"))
        print("\nper-cluster statistics (label_stats):")
        print(stats.table())
    except Exception as exc:  # reported; the files are still cleaned up and what ran is summarized
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.run(_worker_rss, "stop")
            client.close()
        if cluster is not None:
            cluster.close()
        tree.stop()
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)

    # summary
    labels = order + sorted({k for r in records for k in r["peaks"]} - set(order))
    print(f"\n{'phase':<16}{'seconds':>9}{'raw GB':>8}{'GB/s':>7}{'disk GB':>9}"
          + "".join(f"{k:>18}" for k in labels))  # fmt: skip
    for r in records:
        disk = r["written"] if r["name"] == "write" else r["read"]
        print(f"{r['name']:<16}{r['seconds']:>9.1f}{r['bytes'] / 1e9:>8.2f}{r['bytes'] / 1e9 / r['seconds']:>7.2f}"
              f"{disk / 1e9:>9.2f}" + "".join(f"{r['peaks'].get(k, 0) / MiB:>18.0f}" for k in labels))  # fmt: skip
    print("(peak RSS in MiB; disk GB = bytes these processes wrote (write) or read from storage, "
          "not from the page cache)")  # fmt: skip
    elapsed = sum(r["seconds"] for r in records)
    print(
        f"total: {elapsed:.0f} s for {args.gb:g} GB of /data; load average (1 min) now {os.getloadavg()[0]:.1f}"
    )
    if not bigger and len(records) == 5:
        print(f"linear extrapolation to the default --gb {default_gb}: ~{elapsed * default_gb / args.gb / 60:.0f} min "
              "(warm-cache speeds; at that size reads come from disk and may be slower)")  # fmt: skip

    worst = max(((v, k, r["name"]) for r in records for k, v in r["peaks"].items()), default=(0, "", ""))
    mem_ok = worst[0] < BAR_PEAK_MIB * MiB
    restarted = any(r["restarted"] for r in records)
    done = error is None and len(records) == 5 and not restarted
    print()
    print(f"bar: completes, no worker restarted: {_status(done)}"
          + (f" ({error})" if error else " (a worker was restarted)" if restarted else ""))  # fmt: skip
    print(f"bar: peak RSS < {BAR_PEAK_MIB} MiB for every process in every phase: {_status(mem_ok)} "
          + (f"(largest {worst[0] / MiB:.0f} MiB: {worst[1]} in {worst[2]})" if records else "(no phase ran)"))  # fmt: skip
    if checks:
        print("(the results of phases 2-4 against the streaming numpy reference: h5py, whole HDF5 chunks of "
              "~4M rows at a time, chunk partials summed with math.fsum)")  # fmt: skip
    for name, ok, detail in checks:
        print(f"bar: {name}: {_status(ok)} ({detail})")
    return 0 if done and mem_ok and all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())

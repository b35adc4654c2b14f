"""Shuffled training minibatches: ``daskh5.iter_batches(shuffle=True)`` against the loops users write today.

Writes an 800 MB float64 ``(N, 2)`` blosc:lz4 CArray (PyTables' default chunks)
with an int8 label column, then, each in a fresh process so its peak memory is
its own:

* daskh5: ``iter_batches((x, y), B, shuffle=True, window="256MiB")``, one whole epoch;
* PyTables: the hand-written loop, random row indices per batch read with
  ``node[sorted indices, :]`` (a point selection per batch, as in the seed notebook);
* h5py: the same with fancy indexing ``ds[sorted indices]`` (hdf5plugin for blosc).

The two random-index loops are far too slow for a whole epoch, so they run for
``--seconds`` and are compared by rows per second.  Printed: rows/s, the ratio
to daskh5, and daskh5's peak memory above its baseline against the bound
``window + (1 + prefetch) batches``.

Run from the repository root::

    python benchmarks/bench_batches.py            # 800 MB
    python benchmarks/bench_batches.py --mb 100   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from _common import kernel_peak_rss, machine_line


def write(path: str, rows: int) -> None:
    import tables

    filters = tables.Filters(5, "blosc:lz4", shuffle=True)
    rng = np.random.default_rng(0)
    with tables.open_file(path, "w") as f:
        x = f.create_carray("/", "data", atom=tables.Float64Atom(), shape=(rows, 2), filters=filters)
        y = f.create_carray("/", "labels", atom=tables.Int8Atom(), shape=(rows,), filters=filters)
        for s in range(0, rows, 1 << 21):
            n = min(1 << 21, rows - s)
            labels = rng.integers(0, 4, n).astype(np.int8)
            x[s : s + n] = labels[:, None] + rng.normal(scale=0.3, size=(n, 2))
            y[s : s + n] = labels


def run_daskh5(path: str, batch: int, window: str, prefetch: int) -> dict:
    import daskh5

    x, y = daskh5.from_pytables(path, "/data"), daskh5.from_pytables(path, "/labels")
    for _ in daskh5.iter_batches((x[:100_000], y[:100_000]), batch, shuffle=True, window="4MiB"):
        pass  # imports, thread pools, decoders: the baseline the window adds to
    base = kernel_peak_rss()
    rows, checksum = 0, 0.0
    t0 = time.perf_counter()
    for xb, yb in daskh5.iter_batches((x, y), batch, shuffle=True, seed=0, window=window, prefetch=prefetch):
        rows += len(xb)
        checksum += float(xb[0, 0]) + int(yb[0])
    wall = time.perf_counter() - t0
    return {"rows": rows, "seconds": wall, "peak_above_baseline": kernel_peak_rss() - base}


def _random_loop(read, n: int, batch: int, seconds: float) -> dict:
    rng = np.random.default_rng(0)
    rows, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        idx = np.sort(rng.choice(n, batch, replace=False))
        xb, yb = read(idx)
        assert len(xb) == len(yb) == batch
        rows += batch
    return {"rows": rows, "seconds": time.perf_counter() - t0}


def run_pytables(path: str, batch: int, seconds: float) -> dict:
    import tables

    with tables.open_file(path, "r") as f:
        x, y = f.root.data, f.root.labels
        return _random_loop(lambda idx: (x[idx, :], y[idx]), x.nrows, batch, seconds)


def run_h5py(path: str, batch: int, seconds: float) -> dict:
    import h5py
    import hdf5plugin  # noqa: F401  (blosc)

    with h5py.File(path, "r") as f:
        x, y = f["data"], f["labels"]
        return _random_loop(lambda idx: (x[idx], y[idx]), x.shape[0], batch, seconds)


def child(argv: list[str]) -> None:
    what, path, batch = argv[0], argv[1], int(argv[2])
    if what == "daskh5":
        out = run_daskh5(path, batch, argv[3], int(argv[4]))
    elif what == "pytables":
        out = run_pytables(path, batch, float(argv[3]))
    else:
        out = run_h5py(path, batch, float(argv[3]))
    print(json.dumps(out))


def in_child(*args) -> dict:
    res = subprocess.run(
        [sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True, check=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from dask.utils import format_bytes, parse_bytes

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=800, help="MB of float64 points")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--window", default="256MiB")
    p.add_argument("--prefetch", type=int, default=1)
    p.add_argument("--seconds", type=float, default=15.0, help="time given to each random-index loop")
    p.add_argument("--repeat", type=int, default=3, help="daskh5 epochs timed (each in a fresh process)")
    p.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    rows = args.mb * 1_000_000 // 16
    folder = tempfile.mkdtemp(prefix="daskh5-batches-")
    path = os.path.join(folder, "points.h5")
    try:
        write(path, rows)
        print(machine_line())
        print(
            f"{rows:,} rows of (2 float64 + int8 label), {args.mb} MB of points, blosc:lz4, "
            f"{os.path.getsize(path) / 1e6:.0f} MB on disk; batches of {args.batch}; warm page cache"
        )
        runs = [in_child("daskh5", path, args.batch, args.window, args.prefetch) for _ in range(args.repeat)]
        assert all(r["rows"] == rows for r in runs)
        ours = statistics.median(r["rows"] / r["seconds"] for r in runs)
        peak = max(r["peak_above_baseline"] for r in runs)
        results = [("daskh5 iter_batches(shuffle=True), whole epoch", ours)]
        for name in ("pytables", "h5py"):
            r = in_child(name, path, args.batch, args.seconds)
            results.append(
                (f"{name}: random indices per batch, {args.seconds:.0f} s", r["rows"] / r["seconds"])
            )
        print(f"\n{'reader':<52}{'rows/s':>14}{'daskh5 / it':>14}")
        for name, speed in results:
            print(f"{name:<52}{speed:>14,.0f}{ours / speed:>13.1f}x")
        bound = parse_bytes(args.window) + (1 + args.prefetch) * args.batch * 17
        print(
            f"\ndaskh5 epoch: median {statistics.median(r['seconds'] for r in runs):.2f} s of {args.repeat}; "
            f"peak memory above baseline {format_bytes(peak)} "
            f"(window + {1 + args.prefetch} batches = {format_bytes(bound)})"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

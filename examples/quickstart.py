"""Quick start: write a four-cluster dataset to a PyTables file, then compute on it out of core.

Run ``python examples/quickstart.py`` (``--points`` to change the size).  The
points are generated and written block by block (``daskh5.to_pytables``), so
memory stays small whatever ``--points`` is; the statistics are computed by
dask, block by block, from a lazy ``daskh5.from_pytables`` array whose block
size is the memory budget.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import dask.array as da
import numpy as np
from dask.diagnostics import ProgressBar

import daskh5

CENTERS = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])


def _points(labels: np.ndarray, seed: int, block_info=None) -> np.ndarray:
    block = block_info[0]["chunk-location"][0]
    rng = np.random.default_rng([seed, block])
    return CENTERS[labels] + rng.normal(scale=0.2, size=(len(labels), 2))


def write_clusters(path: str, points: int, seed: int = 0, block: int = 1 << 21) -> None:
    """Write ``/data`` (points, 2) float64 and ``/clusters`` (points,) int8, in parallel, with progress bars.

    The points are generated block by block by dask and written by
    ``daskh5.to_pytables``: memory stays bounded whatever ``points`` is.
    """
    labels = da.random.default_rng(seed).integers(0, 4, size=points, chunks=block, dtype=np.int8)
    data = labels.map_blocks(_points, seed, new_axis=1, chunks=(labels.chunks[0], (2,)), dtype=np.float64)
    daskh5.to_pytables(data, path, "/data", mode="w")
    daskh5.to_pytables(labels, path, "/clusters")  # the same seed gives the same labels again


def cluster_stats(path: str, budget: str = "32MiB") -> dict[str, np.ndarray]:
    """Per-cluster count, mean and standard deviation, computed out of core."""
    x = daskh5.from_pytables(path, "/data", chunks=budget)
    labels = daskh5.from_pytables(path, "/clusters", chunks=(x.chunks[0],)).astype(np.intp)
    count = da.bincount(labels, minlength=4)
    sums = da.stack([da.bincount(labels, weights=x[:, j], minlength=4) for j in range(2)], axis=1)
    squares = da.stack([da.bincount(labels, weights=x[:, j] ** 2, minlength=4) for j in range(2)], axis=1)
    with ProgressBar():
        count, sums, squares = da.compute(count, sums, squares, scheduler="threads")
    mean = sums / count[:, None]
    std = np.sqrt(squares / count[:, None] - mean**2)
    return {"count": count, "mean": mean, "std": std}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000_000)
    parser.add_argument("--budget", default="32MiB", help="memory budget per dask block")
    parser.add_argument("--out", default=None, help="directory for the file (default: a temporary one)")
    args = parser.parse_args(argv)
    folder = args.out or tempfile.mkdtemp(prefix="daskh5-")
    path = os.path.join(folder, "clusters.h5")
    write_clusters(path, args.points)
    print(f"{path}: {os.path.getsize(path) / 1e6:.0f} MB on disk, {args.points * 17 / 1e6:.0f} MB raw")
    t0 = time.perf_counter()
    stats = cluster_stats(path, args.budget)
    print(f"per-cluster statistics in {time.perf_counter() - t0:.2f} s (budget {args.budget} per block)")
    print(f"{'cluster':>7} {'count':>10} {'mean x':>8} {'mean y':>8} {'std x':>7} {'std y':>7}")
    for k in range(4):
        m, s = stats["mean"][k], stats["std"][k]
        print(f"{k:>7} {stats['count'][k]:>10} {m[0]:>8.4f} {m[1]:>8.4f} {s[0]:>7.4f} {s[1]:>7.4f}")
    if args.out is None:
        os.remove(path)
        os.rmdir(folder)


if __name__ == "__main__":
    main()

"""Per-cluster statistics of points far bigger than memory, with ``daskh5.label_stats``.

Four 2-d clusters around (1, 1), (-1, 1), (-1, -1) and (1, -1), each with
standard deviation 0.2, are generated block by block by dask and written with
``daskh5.to_pytables`` (``/data``: (points, 2) float64, ``/clusters``:
(points,) int8).  ``daskh5.label_stats`` then reads every block once and
returns, for every label it finds, the count, mean, standard deviation,
minimum, maximum and covariance, printed with ``stats.table()``.

Run ``python examples/cluster_stats.py`` (10 million points, ~200 MB of
temporary files), ``--points N`` for another size, or
``python examples/cluster_stats.py --small --out /tmp/clusters`` for a tiny
run that keeps its file and checks every statistic against numpy.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import dask.array as da
import numpy as np

import daskh5

CENTERS = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
SIGMA = 0.2


def _points(labels: np.ndarray, seed: int, block_info=None) -> np.ndarray:
    """The points of one block of labels: its cluster's centre plus gaussian noise."""
    block = block_info[0]["chunk-location"][0]
    rng = np.random.default_rng([seed, block])  # one stream per block: reproducible, parallel
    return CENTERS[labels] + rng.normal(scale=SIGMA, size=(len(labels), 2))


def write_clusters(path: str, points: int, block: int, seed: int = 0, progress: bool = True) -> None:
    """``/data`` and ``/clusters``, generated and written block by block (memory stays small)."""
    labels = da.random.default_rng(seed).integers(0, 4, size=points, chunks=block, dtype=np.int8)
    data = labels.map_blocks(_points, seed, new_axis=1, chunks=(labels.chunks[0], (2,)), dtype=np.float64)
    # Each call computes its array again from the same seeds, so /data and
    # /clusters agree row for row without holding either in memory.
    daskh5.to_pytables(data, path, "/data", mode="w", attrs={"sigma": SIGMA}, progress=progress)
    daskh5.to_pytables(labels, path, "/clusters", progress=progress)


def check_against_numpy(path: str, stats: daskh5.LabelStats) -> None:
    """The same statistics the plain numpy way (the file is small enough to load)."""
    import tables

    with tables.open_file(path) as f:
        x, labels = f.root.data[:], f.root.clusters[:]
    assert stats.labels.tolist() == sorted(set(labels.tolist()))
    for k, label in enumerate(stats.labels):
        rows = x[labels == label]
        assert stats.count[k] == len(rows)
        np.testing.assert_allclose(stats.mean[k], rows.mean(axis=0), rtol=1e-10)
        np.testing.assert_allclose(stats.std[k], rows.std(axis=0, ddof=1), rtol=1e-10)
        np.testing.assert_array_equal(stats.min[k], rows.min(axis=0))
        np.testing.assert_array_equal(stats.max[k], rows.max(axis=0))
        np.testing.assert_allclose(stats.cov[k], np.cov(rows, rowvar=False), rtol=1e-8, atol=1e-12)
    print("checked against numpy: counts, means, stds, min, max and covariances agree")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="200 000 points, checked against numpy")
    parser.add_argument("--points", type=int, default=None, help="number of points (default 10 000 000)")
    parser.add_argument(
        "--budget", default=None, help="memory budget per dask block (32MiB; 256KiB with --small)"
    )
    parser.add_argument(
        "--out", default=None, help="directory for the file (default: a temporary one, removed)"
    )
    args = parser.parse_args(argv)
    points = args.points or (200_000 if args.small else 10_000_000)
    block = 50_000 if args.small else 1 << 21
    budget = args.budget or ("256KiB" if args.small else "32MiB")

    with tempfile.TemporaryDirectory(prefix="daskh5-clusters-") as tmp:
        folder = args.out or tmp
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "clusters.h5")
        t0 = time.perf_counter()
        write_clusters(path, points, block, progress=not args.small)
        print(f"wrote {points:,} points to {path} in {time.perf_counter() - t0:.2f} s")

        # The memory budget sets the block size; the labels follow the data's blocks.
        x = daskh5.from_pytables(path, "/data", chunks=budget)
        labels = daskh5.from_pytables(path, "/clusters", chunks=(x.chunks[0],))
        print(f"/data {x.shape} in {x.npartitions} blocks of <= {budget}")

        t0 = time.perf_counter()
        stats = daskh5.label_stats(x, labels)  # one pass; the labels need not be known
        print(f"per-cluster statistics in {time.perf_counter() - t0:.2f} s\n")
        print(stats.table())
        print()

        # The same numbers as a pandas DataFrame or an xarray Dataset:
        frame = stats.to_frame()
        print(frame[["count", "mean_0", "mean_1", "std_0", "std_1"]].round(4).to_string())

        # Sanity: the clusters are where they were put, with the spread they were given.
        np.testing.assert_allclose(stats.mean, CENTERS[stats.labels], atol=0.05)
        np.testing.assert_allclose(stats.std, SIGMA, rtol=0.1)
        assert int(stats.count.sum()) == points
        if points <= 2_000_000:
            check_against_numpy(path, stats)
        daskh5.close_files()


if __name__ == "__main__":
    main()

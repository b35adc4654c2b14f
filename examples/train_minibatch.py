"""Train mini-batch k-means from a PyTables file bigger than the shuffle window, NumPy only.

The seed notebook kept a hand-written "memory swapper" window to feed
minibatches to k-means.  Here ``daskh5.iter_batches`` does it: each epoch
visits every point once in a new order, drawn from a window of whole
storage-aligned blocks (``window=``), with the next window read while the
model trains on the current one.  The labels stored next to the points ride
along in the same batches, aligned row by row, to score the clustering.

Run ``python examples/train_minibatch.py`` (20 million points, 320 MB of
float64 against a 64 MiB window), or ``--small`` for a quick check.
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


def _points(labels: np.ndarray, seed: int, block_info=None) -> np.ndarray:
    rng = np.random.default_rng([seed, block_info[0]["chunk-location"][0]])
    return CENTERS[labels] + rng.normal(scale=0.3, size=(len(labels), 2))


def write_points(path: str, points: int, seed: int = 0) -> None:
    """``/data`` (points, 2) float64 around four centres and their ``/clusters`` labels, block by block."""
    labels = da.random.default_rng(seed).integers(0, 4, size=points, chunks=1 << 20, dtype=np.int8)
    data = labels.map_blocks(_points, seed, new_axis=1, chunks=(labels.chunks[0], (2,)), dtype=np.float64)
    daskh5.to_pytables(data, path, "/data", mode="w", progress=False)
    daskh5.to_pytables(labels, path, "/clusters", progress=False)


class MiniBatchKMeans:
    """Sculley's mini-batch k-means: each centre moves toward its batch mean at a shrinking rate."""

    def __init__(self, k: int, seed: int = 0):
        self.k, self.rng = k, np.random.default_rng(seed)
        self.centers: np.ndarray | None = None
        self.seen = np.zeros(k)

    def assign(self, xb: np.ndarray) -> np.ndarray:
        d = ((xb[:, None, :] - self.centers[None, :, :]) ** 2).sum(axis=2)
        return d.argmin(axis=1)

    def _seed(self, xb: np.ndarray, tries: int = 5, steps: int = 10) -> np.ndarray:
        """Best of a few k-means++ starts refined by Lloyd steps on the first batch."""
        best, best_cost = None, np.inf
        for _ in range(tries):
            centers = [xb[self.rng.integers(len(xb))]]
            for _ in range(1, self.k):
                d = ((xb[:, None, :] - np.array(centers)[None]) ** 2).sum(axis=2).min(axis=1)
                centers.append(xb[self.rng.choice(len(xb), p=d / d.sum())])
            self.centers = np.array(centers)
            for _ in range(steps):
                nearest = self.assign(xb)
                for j in range(self.k):
                    if (nearest == j).any():
                        self.centers[j] = xb[nearest == j].mean(axis=0)
            cost = ((xb - self.centers[self.assign(xb)]) ** 2).sum()
            if cost < best_cost:
                best, best_cost = self.centers.copy(), cost
        return best

    def partial_fit(self, xb: np.ndarray) -> None:
        if self.centers is None:
            self.centers = self._seed(xb)
        nearest = self.assign(xb)
        counts = np.bincount(nearest, minlength=self.k)
        sums = np.stack(
            [np.bincount(nearest, weights=xb[:, j], minlength=self.k) for j in range(xb.shape[1])], 1
        )
        self.seen += counts
        moved = counts > 0
        rate = counts[moved] / self.seen[moved]
        self.centers[moved] += rate[:, None] * (sums[moved] / counts[moved, None] - self.centers[moved])


def train(path: str, epochs: int, batch: int, window: str) -> tuple[MiniBatchKMeans, float]:
    """Fit on shuffled epochs; return the model and the purity of its clusters on the last epoch."""
    x = daskh5.from_pytables(path, "/data")
    y = daskh5.from_pytables(path, "/clusters")
    model = MiniBatchKMeans(4, seed=1)
    hits = np.zeros((4, 4), dtype=np.int64)  # (cluster found, label stored)
    for epoch in range(epochs):
        hits[:] = 0
        for xb, yb in daskh5.iter_batches((x, y), batch, shuffle=True, seed=epoch, window=window):
            model.partial_fit(xb)
            np.add.at(hits, (model.assign(xb), yb.astype(np.intp)), 1)
    purity = hits.max(axis=1).sum() / hits.sum()
    return model, float(purity)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="200 000 points and a 1 MiB window")
    parser.add_argument("--points", type=int, default=None, help="number of points (default 20 000 000)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--window", default=None, help="shuffle window (64MiB; 1MiB with --small)")
    parser.add_argument("--out", default=None, help="directory for the file (default: a temporary one)")
    args = parser.parse_args(argv)
    points = args.points or (200_000 if args.small else 20_000_000)
    window = args.window or ("1MiB" if args.small else "64MiB")
    folder = args.out or tempfile.mkdtemp(prefix="daskh5-")
    path = os.path.join(folder, "points.h5")
    write_points(path, points)
    print(f"{path}: {points * 16 / 2**20:.0f} MiB of points, shuffled through a {window} window")
    t0 = time.perf_counter()
    model, purity = train(path, args.epochs, args.batch, window)
    rows = args.epochs * points
    print(f"{args.epochs} epochs of {points} points in {time.perf_counter() - t0:.1f} s "
          f"({rows / (time.perf_counter() - t0) / 1e6:.1f} M points/s)")  # fmt: skip
    print(f"purity of the clusters against the stored labels: {purity:.4f}")
    print(f"{'centre':>6} {'x':>8} {'y':>8}")
    for k, (cx, cy) in enumerate(sorted(map(tuple, model.centers))):
        print(f"{k:>6} {cx:>8.4f} {cy:>8.4f}")
    if args.out is None:
        os.remove(path)
        os.rmdir(folder)


if __name__ == "__main__":
    main()

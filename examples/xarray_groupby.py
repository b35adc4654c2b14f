"""PyTables files as lazy xarray Datasets and DataTrees (``engine="daskh5"``), grouped by label.

1. A four-cluster file (``/data``: (points, 2) float64 points, ``/clusters``:
   their labels) opens with ``xr.open_dataset(path, engine="daskh5",
   chunks={})`` as a dask-backed Dataset whose chunks follow the HDF5 chunks;
   nothing is read yet.
2. ``ds.groupby(clusters=UniqueGrouper(labels=...))`` with flox computes the
   per-cluster mean, standard deviation and count block by block.  xarray
   needs the group labels up front when they live in a dask array, so they
   are first found out of core (``np.unique`` on the dask array).  The result
   is compared with ``daskh5.label_stats`` (one pass, labels found on the way).
3. A file with one group per run (written with plain PyTables) opens as a
   ``DataTree`` with ``xr.open_datatree(path, engine="daskh5")``; every run is
   grouped the same way.

Run ``python examples/xarray_groupby.py`` (2 million points), ``--points N``
for another size, or ``python examples/xarray_groupby.py --small --out
/tmp/xr`` for a tiny run that keeps its files.  Needs xarray and flox.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import dask.array as da
import numpy as np
import tables
import xarray as xr
from xarray.groupers import UniqueGrouper

import daskh5

CENTERS = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
SIGMA = 0.2


def _points(labels: np.ndarray, seed: int, block_info=None) -> np.ndarray:
    rng = np.random.default_rng([seed, block_info[0]["chunk-location"][0]])
    return CENTERS[labels] + rng.normal(scale=SIGMA, size=(len(labels), 2))


def write_clusters(path: str, points: int, block: int, seed: int = 0, progress: bool = True) -> None:
    """``/data`` and ``/clusters``, generated and written block by block with daskh5."""
    labels = da.random.default_rng(seed).integers(0, 4, size=points, chunks=block, dtype=np.int8)
    data = labels.map_blocks(_points, seed, new_axis=1, chunks=(labels.chunks[0], (2,)), dtype=np.float64)
    daskh5.to_pytables(data, path, "/data", mode="w", chunkshape=(block // 4, 2), progress=progress)
    daskh5.to_pytables(labels, path, "/clusters", chunkshape=(block // 4,), progress=progress)


def write_runs(path: str, points: int) -> None:
    """A file as users make them with PyTables: one group per run, each with its points and labels."""
    with tables.open_file(path, "w") as f:
        for run, n in (("run1", points), ("run2", points // 2)):
            rng = np.random.default_rng(len(run) + n)
            labels = rng.integers(0, 4, size=n).astype(np.int8)
            shift = 0.5 if run == "run2" else 0.0  # run2's clusters moved by +0.5 in x
            data = CENTERS[labels] + [shift, 0] + rng.normal(scale=SIGMA, size=(n, 2))
            group = f.create_group("/", run, title=f"acquisition {run}")
            group._v_attrs.operator = "ada" if run == "run1" else "grace"
            f.create_carray(group, "data", obj=data, filters=tables.Filters(5, "blosc:lz4"))
            f.create_carray(group, "clusters", obj=labels)


def grouped_stats(ds: xr.Dataset) -> xr.Dataset:
    """Per-cluster mean, std and count of ``ds.data``, lazily, with flox."""
    # Labels in a dask array: xarray wants them named up front.  Find them out
    # of core (a dask reduction over /clusters, read block by block).
    known = np.unique(ds.clusters.data).compute()
    with xr.set_options(use_flox=True):
        grouped = ds.groupby(clusters=UniqueGrouper(labels=known))
        out = xr.Dataset(
            {
                "mean": grouped.mean()["data"],
                "std": grouped.std(ddof=1)["data"],
                "count": grouped.count()["data"].isel({ds.data.dims[1]: 0}, drop=True),
            }
        )
    assert isinstance(out["mean"].data, da.Array)  # still lazy: nothing computed yet
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="100 000 points (a second or two)")
    parser.add_argument("--points", type=int, default=None, help="number of points (default 2 000 000)")
    parser.add_argument(
        "--out", default=None, help="directory for the files (default: a temporary one, removed)"
    )
    args = parser.parse_args(argv)
    points = args.points or (100_000 if args.small else 2_000_000)
    block = 16_384 if args.small else 1 << 19

    with tempfile.TemporaryDirectory(prefix="daskh5-xarray-") as tmp:
        folder = args.out or tmp
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "clusters.h5")
        write_clusters(path, points, block, progress=not args.small)

        # -- 1. open: lazy, chunks={} follows the HDF5 chunks -------------------------------------
        ds = xr.open_dataset(path, engine="daskh5", chunks={})
        print(f"generated dims: {dict(ds.sizes)}")
        # Generated names are row_<n> and <var>_dim_<axis>; dims= names them.
        ds = xr.open_dataset(
            path, engine="daskh5", chunks={}, dims={"data": ("point", "xy"), "clusters": ("point",)}
        )
        print(ds)
        print(
            f"data: {ds.data.data.numblocks[0]} dask blocks of {ds.data.chunks[0][0]} rows (the HDF5 chunks)"
        )

        # -- 2. groupby with flox, checked against label_stats and numpy ---------------------------
        t0 = time.perf_counter()
        stats = grouped_stats(ds).compute()
        print(f"\ngroupby(clusters) mean/std/count in {time.perf_counter() - t0:.2f} s:")
        for label in stats.clusters.values:
            s = stats.sel(clusters=label)
            m, sd = s["mean"].values, s["std"].values
            print(
                f"cluster {label}: n={int(s['count'])} mean=({m[0]:+.4f}, {m[1]:+.4f}) std=({sd[0]:.4f}, {sd[1]:.4f})"
            )
        ref = daskh5.label_stats(ds.data.data, ds.clusters.data)
        assert stats.clusters.values.tolist() == ref.labels.tolist()
        np.testing.assert_allclose(stats["mean"].values, ref.mean, rtol=1e-9)
        np.testing.assert_allclose(stats["std"].values, ref.std, rtol=1e-9)
        np.testing.assert_array_equal(stats["count"].values, ref.count)
        np.testing.assert_allclose(stats["mean"].values, CENTERS, atol=0.05)
        if points <= 1_000_000:  # small enough to check against plain numpy too
            x, labels = ds.data.values, ds.clusters.values
            for k, label in enumerate(stats.clusters.values):
                np.testing.assert_allclose(stats["mean"].values[k], x[labels == label].mean(axis=0))
        print("groupby agrees with daskh5.label_stats")

        # -- 3. a file with groups, as a DataTree ---------------------------------------------------
        runs = os.path.join(folder, "runs.h5")
        write_runs(runs, points // 4)
        tree = xr.open_datatree(runs, engine="daskh5", chunks={})
        print(f"\n{runs}: DataTree with children {sorted(tree.children)}")
        for name, node in sorted(tree.children.items()):
            run = node.to_dataset()
            stats = grouped_stats(run).compute()
            means = stats["mean"].values
            print(
                f"{name} (operator {run.attrs.get('operator')!s}): {run.sizes[run.data.dims[0]]} points, "
                f"cluster 0 mean=({means[0, 0]:+.3f}, {means[0, 1]:+.3f})"
            )
            shift = 0.5 if name == "run2" else 0.0
            np.testing.assert_allclose(means, CENTERS + [shift, 0], atol=0.05)
        print("datatree runs checked")
        daskh5.close_files()


if __name__ == "__main__":
    main()

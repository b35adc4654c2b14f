"""daskh5 on a ``dask.distributed`` cluster: reading, ragged bags, statistics and writing, on workers.

By default a ``distributed.LocalCluster`` of worker *processes* is started
(``--workers``, default 2, one thread each); ``--scheduler ADDRESS`` connects
to a running scheduler instead (``tcp://host:8786``; then ``--out`` must be a
directory every worker sees at the same path).  With a ``Client`` active,
every dask computation below runs on the cluster:

1. ``daskh5.to_pytables`` writes a four-cluster data set: the blocks are
   generated and compressed on the workers, and one writer in this process
   stores them in order;
2. ``daskh5.from_pytables(...).mean()``: every worker opens the file itself
   and reads its blocks with ``pread`` (no open file handle is ever pickled);
3. ``daskh5.read_ragged(...).map(...)``: a bag of variable-length samples,
   written with ``daskh5.write_ragged`` from a bag computed on the cluster;
4. ``daskh5.label_stats``: per-cluster statistics, one pass, on the workers;
5. ``daskh5.to_pytables`` of a derived array, checked against numpy.

Run ``python examples/distributed_cluster.py`` (4 million points),
``--workers 4``, ``--scheduler tcp://...`` or, for a tiny run that keeps its
files, ``python examples/distributed_cluster.py --small --out /tmp/dist``.
The top-level code is under ``if __name__ == "__main__":`` because worker
processes are started with *spawn* and import this file.

Files, locks and shared filesystems
-----------------------------------
* Every worker opens the files by path, so the path must mean the same file
  on every worker: a local disk for a LocalCluster, a shared filesystem (NFS,
  Lustre, GPFS, ...) for a multi-machine cluster.  daskh5 makes paths
  absolute before sending them.
* HDF5 (1.10 and later) locks a file when it opens it.  Many shared
  filesystems do not support those locks, and opening then fails with
  "unable to lock file" (errno 37 or 38).  Set ``HDF5_USE_FILE_LOCKING=FALSE``
  in the environment of this process *and of every worker* (in the job script
  that starts ``dask worker``, or ``distributed.nanny.pre-spawn-environ`` in
  dask's config) before any file is opened; ``--no-file-locking`` below does
  it for this process and a LocalCluster's workers, which inherit it.  daskh5's
  readers already open files for metadata with ``locking=False`` and read data
  with plain ``pread``, so readers need no lock at all; the lock matters for
  the PyTables writer (``to_pytables``, ``append``, ``write_ragged``), which
  runs in this client process only.
* Without locks nothing stops two programs from writing one file at once:
  keep one writer per file, and do not read a node while it is being written.
* Workers cache open descriptors (and ``driver="H5FD_CORE"`` images);
  ``client.run(daskh5.close_files)`` releases them, e.g. before deleting or
  replacing files.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter

import dask.array as da
import dask.bag as db
import numpy as np

CENTERS = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])


def _points(labels: np.ndarray, seed: int, block_info=None) -> np.ndarray:
    rng = np.random.default_rng([seed, block_info[0]["chunk-location"][0]])
    return CENTERS[labels] + rng.normal(scale=0.2, size=(len(labels), 2))


def _event(i: int) -> np.ndarray:
    """A variable-length 1-d sample (reproducible)."""
    rng = np.random.default_rng([7, i])
    return rng.exponential(size=int(rng.integers(1, 500)))


def _peaks(sample: np.ndarray) -> int:
    """A pure-Python per-sample function (holds the GIL: where worker processes pay off)."""
    count = 0
    for a, b, c in zip(sample, sample[1:], sample[2:]):
        if b > a and b > c and b > 2.0:
            count += 1
    return count


def _workers_used(stream) -> int:
    return len({task["worker"] for task in stream.data})


def run(client, folder: str, points: int, samples: int, budget: str, progress: bool) -> None:
    import distributed

    import daskh5

    data_path = os.path.join(folder, "clusters.h5")
    events_path = os.path.join(folder, "events.h5")
    out_path = os.path.join(folder, "derived.h5")
    block = max(1, points // 16)

    # -- 1. write: blocks generated and compressed on the workers ---------------------------------
    t0 = time.perf_counter()
    labels = da.random.default_rng(0).integers(0, 4, size=points, chunks=block, dtype=np.int8)
    data = labels.map_blocks(_points, 0, new_axis=1, chunks=(labels.chunks[0], (2,)), dtype=np.float64)
    with distributed.get_task_stream(client) as stream:
        daskh5.to_pytables(data, data_path, "/data", mode="w", progress=progress)
        daskh5.to_pytables(labels, data_path, "/clusters", progress=progress)
    print(f"1. wrote {points:,} points in {time.perf_counter() - t0:.2f} s ({_workers_used(stream)} workers)")

    # -- 2. a lazy array, reduced on the workers --------------------------------------------------
    x = daskh5.from_pytables(data_path, "/data", chunks=budget)
    with distributed.get_task_stream(client) as stream:
        mean = x.mean(axis=0).compute()  # the Client is the default scheduler now
    used = _workers_used(stream)
    print(f"2. mean of /data over {x.npartitions} blocks: {np.round(mean, 4).tolist()} ({used} workers)")

    # -- 3. ragged samples: written from a bag computed on the cluster, read back as a bag -------------
    events = db.range(samples, npartitions=8).map(_event)
    daskh5.write_ragged(events, events_path, "/events", mode="w", progress=progress)
    bag = daskh5.read_ragged(events_path, "/events", partition_size="64KiB" if samples < 1000 else "1MiB")
    with distributed.get_task_stream(client) as stream:
        peaks, lengths = db.compute(bag.map(_peaks), bag.map(len))
    used = _workers_used(stream)
    print(f"3. {len(peaks)} events in {bag.npartitions} partitions: {sum(peaks)} peaks, ", end="")
    print(f"{sum(lengths):,} values ({used} workers)")

    # -- 4. per-cluster statistics ----------------------------------------------------------------
    stored_labels = daskh5.from_pytables(data_path, "/clusters", chunks=(x.chunks[0],))
    stats = daskh5.label_stats(x, stored_labels)
    print("4. per-cluster statistics:")
    print(stats.table())

    # -- 5. write a derived array from the cluster --------------------------------------------------
    centre = da.from_array(CENTERS)[stored_labels]  # each point's own cluster centre
    distance = da.sqrt(((x - centre) ** 2).sum(axis=1))
    daskh5.to_pytables(distance, out_path, "/distance", mode="w", attrs={"of": "/data"}, progress=progress)
    d = daskh5.from_pytables(out_path, "/distance")
    print(
        f"5. wrote /distance {d.shape}: mean distance to the cluster centre {float(d.mean().compute()):.4f}"
    )

    # -- checks against numpy (the small run loads everything) ------------------------------------
    if points <= 1_000_000:
        import tables

        with tables.open_file(data_path) as f, tables.open_file(out_path) as g:
            xs, ls, ds = f.root.data[:], f.root.clusters[:], g.root.distance[:]
        np.testing.assert_allclose(mean, xs.mean(axis=0))
        np.testing.assert_allclose(ds, np.linalg.norm(xs - CENTERS[ls], axis=1))
        for k, label in enumerate(stats.labels):
            np.testing.assert_allclose(stats.mean[k], xs[ls == label].mean(axis=0))
        expected = [_event(i) for i in range(samples)]
        assert lengths == [len(e) for e in expected]
        assert peaks == [_peaks(e) for e in expected]
        print("checked against numpy")
    np.testing.assert_allclose(stats.mean, CENTERS, atol=0.05)
    assert Counter(stats.labels.tolist()) == Counter(range(4))

    # Release the descriptors the workers (and this process) keep open.
    client.run(daskh5.close_files)
    daskh5.close_files()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--small", action="store_true", help="200 000 points, 300 events, checked against numpy"
    )
    parser.add_argument("--points", type=int, default=None, help="number of points (default 4 000 000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the LocalCluster")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker")
    parser.add_argument("--scheduler", default=None, help="address of a running scheduler (tcp://host:8786)")
    parser.add_argument("--no-file-locking", action="store_true", help="set HDF5_USE_FILE_LOCKING=FALSE")
    parser.add_argument(
        "--out", default=None, help="directory for the files (default: a temporary one, removed)"
    )
    args = parser.parse_args(argv)
    if args.no_file_locking:
        # Before any HDF5 file is opened; LocalCluster workers inherit it.
        os.environ["HDF5_USE_FILE_LOCKING"] = "FALSE"
    if args.scheduler and not args.out:
        sys.exit("--scheduler needs --out: a directory every worker sees at the same path")
    points = args.points or (200_000 if args.small else 4_000_000)
    samples = 300 if args.small else 20_000
    budget = "512KiB" if args.small else "16MiB"

    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory(prefix="daskh5-distributed-") as tmp:
        folder = os.path.abspath(args.out or tmp)
        os.makedirs(folder, exist_ok=True)
        t0 = time.perf_counter()
        if args.scheduler:
            client = Client(args.scheduler)
            cluster = None
        else:
            cluster = LocalCluster(
                n_workers=args.workers,
                threads_per_worker=args.threads,
                processes=True,
                dashboard_address=None if args.small else ":0",
                silence_logs=40,
            )
            client = Client(cluster)
        try:
            n = len(client.scheduler_info()["workers"])
            print(f"cluster: {n} workers ({time.perf_counter() - t0:.1f} s to start)")
            if not args.small:
                print(f"dashboard: {client.dashboard_link}")
            run(client, folder, points, samples, budget, progress=not args.small)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


if __name__ == "__main__":
    main()

"""Write benchmark: daskh5.to_pytables against PyTables and da.to_hdf5, plus a memory bound.

Writes the 800 MB float64 random walk ``(50_000_000, 2)`` with blosc:lz4 +
shuffle, complevel 5, side by side in one run (median of ``--repeat``):

* daskh5 ``to_pytables(x)`` from a dask array over the in-memory array
  (threads; blocks compressed in parallel, raw chunks written by one writer);
* PyTables ``create_carray(obj=array)`` from memory;
* ``da.to_hdf5`` (h5py + hdf5plugin's Blosc lz4 + shuffle).

A Dataset row then writes an xarray Dataset backed by dask (``--dataset-mb``,
default 800 MB: the walk as ``(time, xy)`` float64 plus a time coordinate),
with the same compression and chunks, by ``daskh5.to_pytables(ds)`` and by
``ds.to_netcdf(engine="h5netcdf")`` (hdf5plugin's Blosc lz4 + shuffle); both
outputs are opened with the h5netcdf engine and compared.  Bar: daskh5 at
least 2x faster.

Every output is read back with PyTables and compared bit for bit, and
opened with h5py.  Then, in a fresh subprocess, a 4 GB lazily generated
array is written with 64 MiB blocks while the process RSS is sampled: the
bar is a peak under 1 GB.

Run from the repository root::

    python benchmarks/bench_write.py            # 800 MB, 3 repetitions, then the 4 GB memory run
    python benchmarks/bench_write.py --quick    # 80 MB, 2 repetitions, 400 MB memory run
    python benchmarks/bench_write.py --dataset-only --dataset-mb 800   # only the Dataset row
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
from _common import machine_line, median_time

BAR_VS_PYTABLES = 1.5
BAR_PEAK_MB = 1024
BAR_DATASET = 2.0


def random_walk(rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(size=(rows, 2)), axis=0)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import os, sys, threading, time, psutil, dask, dask.array as da, daskh5
    rows, path = int(sys.argv[1]), sys.argv[2]
    proc = psutil.Process()
    x = da.random.default_rng(0).standard_normal((rows, 2), chunks="64MiB").cumsum(axis=0)
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()
    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)
    t = threading.Thread(target=sample); t.start()
    with dask.config.set(scheduler="threads"):
        daskh5.to_pytables(x, path, "/data", progress=False)
    done.set(); t.join()
    print(base, peak[0], x.numblocks[0], x.chunks[0][0])
    """
)


def dataset_row(mb: int, repeat: int, folder: str) -> bool:
    """daskh5.to_pytables(ds) against ds.to_netcdf(engine="h5netcdf") on a dask-backed Dataset of ``mb`` MB."""
    import dask.array as da
    import hdf5plugin
    import pandas as pd
    import xarray as xr

    import daskh5

    rows = mb * 1_000_000 // 16
    data = random_walk(rows, seed=1)
    chunks = (1 << 16, 2)  # 1 MiB HDF5 chunks for both writers
    walk = da.from_array(data, chunks=(1 << 21, 2))  # 32 MiB dask blocks
    ds = xr.Dataset(
        {"walk": (("time", "xy"), walk, {"units": "m"})},
        coords={"time": pd.date_range("2024-01-01", periods=rows, freq="ms")},
    )
    blosc = dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    ours = {"walk": {"complib": "blosc:lz4", "complevel": 5, "shuffle": True, "chunksizes": chunks}}
    theirs = {"walk": {**blosc, "chunksizes": chunks}}
    paths = {
        "daskh5": os.path.join(folder, "ds-daskh5.h5"),
        "h5netcdf": os.path.join(folder, "ds-h5netcdf.nc"),
    }
    runs = {
        "daskh5 to_pytables(ds)": lambda: daskh5.to_pytables(
            ds, paths["daskh5"], mode="w", encoding=ours, progress=False
        ),
        'ds.to_netcdf(engine="h5netcdf")': lambda: ds.to_netcdf(
            paths["h5netcdf"], engine="h5netcdf", encoding=theirs
        ),
    }
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {}
    for _ in range(repeat):
        for (name, fn), out in zip(runs.items(), paths.values(), strict=True):
            os.remove(out)
            times.setdefault(name, []).append(median_time(fn, 1))
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = med["daskh5 to_pytables(ds)"]
    print(f"\nDataset: walk {data.shape} float64 ({data.nbytes / 1e6:.0f} MB, dask blocks of 32 MiB) + time "
          f"coordinate; blosc:lz4 + shuffle, complevel 5, chunks {chunks}")  # fmt: skip
    print(f"{'method':<34}{'median s':>10}{'GB/s':>8}{'t / t(daskh5)':>15}")
    for name, t in med.items():
        print(f"{name:<34}{t:>10.3f}{data.nbytes / 1e9 / t:>8.2f}{t / ref:>14.2f}x")
    daskh5.close_files()
    with (
        xr.open_dataset(paths["daskh5"], engine="h5netcdf") as a,
        xr.open_dataset(paths["h5netcdf"], engine="h5netcdf") as b,
    ):
        same = a.identical(b) and a.walk.values.tobytes() == data.tobytes()
    ratio = med['ds.to_netcdf(engine="h5netcdf")'] / ref
    print(f"both outputs open in the h5netcdf engine as identical Datasets, equal to the input: {same}")
    ok = same and ratio >= BAR_DATASET
    print(
        f"bar: >= {BAR_DATASET}x faster than to_netcdf(engine='h5netcdf'): {'PASS' if ok else 'FAIL'} ({ratio:.2f}x)"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    import dask.array as da
    import h5py
    import hdf5plugin
    import tables

    import daskh5

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=800)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--memory-gb", type=float, default=4.0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dir", default=None)
    p.add_argument("--dataset-mb", type=int, default=800)
    p.add_argument("--dataset-only", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.mb, args.repeat, args.memory_gb, args.dataset_mb = 80, 2, 0.4, 80
    if args.dataset_only:
        print(machine_line())
        folder = tempfile.mkdtemp(prefix="daskh5-write-", dir=args.dir)
        try:
            return 0 if dataset_row(args.dataset_mb, args.repeat, folder) else 1
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    rows = args.mb * 1_000_000 // 16
    folder = tempfile.mkdtemp(prefix="daskh5-write-", dir=args.dir)
    filters = tables.Filters(complevel=5, complib="blosc:lz4", shuffle=True)
    print(machine_line())
    print(
        f"versions: daskh5 {daskh5.__version__}, tables {tables.__version__}, h5py {h5py.__version__}, "
        f"hdf5plugin {hdf5plugin.version}, numpy {np.__version__}"
    )
    try:
        data = random_walk(rows)
        x = da.from_array(data, chunks=(1 << 21, 2))  # 32 MiB blocks over the in-memory array
        print(
            f"array: {data.shape} float64, {data.nbytes / 1e6:.0f} MB; blosc:lz4 + shuffle, complevel 5; warm page cache"
        )
        paths = {k: os.path.join(folder, f"{k}.h5") for k in ("daskh5", "pytables", "to_hdf5")}
        with tables.open_file(os.path.join(folder, "probe.h5"), "w") as f:
            chunkshape = f.create_carray(
                "/", "data", obj=data[:10], filters=filters, chunkshape=None
            ).chunkshape
            chunkshape = f.create_carray("/", "auto", atom=tables.Float64Atom(), shape=data.shape).chunkshape

        def run_daskh5():
            daskh5.to_pytables(x, paths["daskh5"], "/data", filters=filters, mode="w", progress=False)

        def run_pytables():
            with tables.open_file(paths["pytables"], "w") as f:
                f.create_carray("/", "data", obj=data, filters=filters)

        def run_to_hdf5():
            da.to_hdf5(
                paths["to_hdf5"], "/data", x.rechunk((chunkshape[0] * 64, 2)), chunks=chunkshape,
                **hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE),
            )  # fmt: skip

        runs = [("daskh5 to_pytables (threads)", run_daskh5), ("PyTables create_carray(obj=)", run_pytables),
                ("da.to_hdf5 (h5py + hdf5plugin)", run_to_hdf5)]  # fmt: skip
        for _, fn in runs:  # warm-up (each output is then removed before every timed write)
            fn()
        times = {}
        for _ in range(args.repeat):
            for (name, fn), out in zip(runs, paths.values(), strict=True):
                os.remove(out)  # untimed: every method writes a new file (freeing an old one costs ~0.4 s)
                times.setdefault(name, []).extend([median_time(fn, 1)])
        med = {k: statistics.median(v) for k, v in times.items()}
        ref = med["daskh5 to_pytables (threads)"]
        print(f"\n{'method':<34}{'median s':>10}{'GB/s':>8}{'t / t(daskh5)':>15}")
        for name, t in med.items():
            print(f"{name:<34}{t:>10.3f}{data.nbytes / 1e9 / t:>8.2f}{t / ref:>14.2f}x")
        with tables.open_file(paths["daskh5"]) as f:
            back = f.root.data.read()
            info = (f.root.data.chunkshape, f.root.data.filters.complib)
        identical = back.tobytes() == data.tobytes()
        with h5py.File(paths["daskh5"]) as f:
            h5_ok = f["data"][:100].tobytes() == data[:100].tobytes()
        size = {k: os.path.getsize(v) / 1e6 for k, v in paths.items()}
        print(f"\ndaskh5 output: chunkshape {info[0]}, {info[1]}, {size['daskh5']:.0f} MB on disk "
              f"(PyTables {size['pytables']:.0f} MB, to_hdf5 {size['to_hdf5']:.0f} MB)")  # fmt: skip
        print(f"read back with PyTables bit-identical: {identical}; opens in h5py with equal data: {h5_ok}")
        speed_ok = med["PyTables create_carray(obj=)"] / ref >= BAR_VS_PYTABLES
        print(f"bar: >= {BAR_VS_PYTABLES}x faster than PyTables: {'PASS' if speed_ok else 'FAIL'} "
              f"({med['PyTables create_carray(obj=)'] / ref:.2f}x)")  # fmt: skip
        for v in paths.values():
            os.remove(v)
        dataset_ok = dataset_row(args.dataset_mb, args.repeat, folder)

        mem_rows = int(args.memory_gb * 1e9 / 16)
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, str(mem_rows), os.path.join(folder, "mem.h5")],
            check=True, capture_output=True, text=True,
        ).stdout.split()  # fmt: skip
        base, peak, nblocks, block_rows = (int(v) for v in out)
        peak_mb = peak / 2**20
        print(f"\nmemory: {args.memory_gb:g} GB array, {nblocks} blocks of {block_rows * 16 / 2**20:.0f} MiB, "
              f"threads: baseline {base / 2**20:.0f} MiB, peak RSS {peak_mb:.0f} MiB")  # fmt: skip
        mem_ok = peak_mb < BAR_PEAK_MB
        print(f"bar: peak RSS < {BAR_PEAK_MB} MiB: {'PASS' if mem_ok else 'FAIL'}")
        return 0 if (speed_ok and identical and h5_ok and mem_ok and dataset_ok) else 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

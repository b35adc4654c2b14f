"""xarray benchmark: engine="daskh5" against engine="h5netcdf" (+ hdf5plugin) on PyTables files.

Side by side in one run, medians of ``--repeat``:

* ``xr.open_dataset`` on a PyTables file with 1,000 small compressed CArrays;
* ``ds.sum().compute()`` (threads, ``chunks="auto"`` for both engines) on the
  800 MB float64 random walk, blosc:lz4 + shuffle, PyTables' default chunks.

Bars: open no slower than h5netcdf; compute >= 1.2x faster.

Run from the repository root::

    python benchmarks/bench_xarray.py            # 800 MB
    python benchmarks/bench_xarray.py --quick    # 80 MB
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import warnings

import numpy as np
from _common import machine_line, median_time


def main(argv: list[str] | None = None) -> int:
    import hdf5plugin  # noqa: F401  (h5netcdf needs it to read blosc)
    import tables
    import xarray as xr

    import daskh5

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=800)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.mb, args.repeat = 80, 3
    folder = tempfile.mkdtemp(prefix="daskh5-xr-")
    filters = tables.Filters(5, "blosc:lz4", shuffle=True)
    print(machine_line())
    print(f"versions: daskh5 {daskh5.__version__}, xarray {xr.__version__}, tables {tables.__version__}")
    warnings.simplefilter("ignore")  # h5netcdf warns about phony dimensions on every open
    try:
        many = os.path.join(folder, "many.h5")
        with tables.open_file(many, "w") as f:
            for i in range(args.nodes):
                f.create_carray("/", f"v{i:04d}", obj=np.arange(100.0) + i, filters=filters)
        big = os.path.join(folder, "walk.h5")
        rows = args.mb * 1_000_000 // 16
        rng = np.random.default_rng(0)
        with tables.open_file(big, "w") as f:
            node = f.create_carray("/", "data", atom=tables.Float64Atom(), shape=(rows, 2), filters=filters)
            last = np.zeros(2)
            for s in range(0, rows, 1 << 20):
                n = min(1 << 20, rows - s)
                block = np.cumsum(rng.normal(size=(n, 2)), axis=0) + last
                node[s : s + n], last = block, block[-1]
        os.sync()  # let the kernel write the new files back now, not during the timings
        engines = {"daskh5": {}, "h5netcdf": {"phony_dims": "sort"}}

        def open_many(engine: str) -> None:
            xr.open_dataset(many, engine=engine, **engines[engine]).close()

        opens = {e: median_time(lambda e=e: open_many(e), args.repeat) for e in engines}
        sums, values, extra = {}, {}, {}
        for e, kw in engines.items():
            ds = xr.open_dataset(big, engine=e, chunks="auto", **kw)
            var = ds[next(iter(ds.data_vars))]
            values[e] = float(var.sum().compute(scheduler="threads"))  # warm-up and check
            sums[e] = median_time(lambda var=var: var.sum().compute(scheduler="threads"), args.repeat)
            # Where the time goes: the same read without xarray's NaN-skipping sum,
            # and the skipping sum on 8 MiB chunks (the NaN pass then runs in cache).
            extra[("skipna=False", e)] = median_time(
                lambda var=var: var.sum(skipna=False).compute(scheduler="threads"), args.repeat
            )
            small = xr.open_dataset(big, engine=e, chunks={var.dims[0]: (8 << 20) // 16}, **kw)
            svar = small[var.name]
            extra[("8 MiB chunks", e)] = median_time(
                lambda svar=svar: svar.sum().compute(scheduler="threads"), args.repeat
            )
        assert np.isclose(values["daskh5"], values["h5netcdf"]), values
        print(f"\n{'operation':<44}{'daskh5 s':>10}{'h5netcdf s':>12}{'h5netcdf/daskh5':>17}")
        print(
            f"{f'open_dataset, {args.nodes} nodes':<44}{opens['daskh5']:>10.3f}{opens['h5netcdf']:>12.3f}{opens['h5netcdf'] / opens['daskh5']:>16.2f}x"
        )
        label = f"ds.sum().compute(), {args.mb} MB blosc:lz4"
        print(
            f"{label:<44}{sums['daskh5']:>10.3f}{sums['h5netcdf']:>12.3f}{sums['h5netcdf'] / sums['daskh5']:>16.2f}x"
        )
        for what in ("skipna=False", "8 MiB chunks"):
            d, h = extra[(what, "daskh5")], extra[(what, "h5netcdf")]
            print(f"{f'  same, {what} (explains the row above)':<44}{d:>10.3f}{h:>12.3f}{h / d:>16.2f}x")
        open_ok = opens["daskh5"] <= opens["h5netcdf"]
        sum_ok = sums["h5netcdf"] / sums["daskh5"] >= 1.2
        print(f"bar: open no slower than h5netcdf: {'PASS' if open_ok else 'FAIL'}")
        print(f"bar: sum >= 1.2x faster than h5netcdf: {'PASS' if sum_ok else 'FAIL'}")
        return 0 if open_ok and sum_ok else 1
    finally:
        daskh5.close_files()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

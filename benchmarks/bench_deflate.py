"""Deflate benchmark: daskh5 against hidefix, h5py, pyfive and xarray's h5netcdf engine.

Writes a float64 random walk of shape ``(N, 2)`` (200 MB by default) twice:

* a netCDF-4 file, ``to_netcdf(engine="h5netcdf")`` with zlib level 4 + shuffle
  and chunks of 65,536 x 2 (what most netCDF-4 and h5py files look like);
* a PyTables CArray, ``Filters(4, "zlib", shuffle=True)``, PyTables' chunkshape;

then times, side by side in one run with a warm page cache, ``.sum()``, a full
read to NumPy and xarray's ``ds.sum()``:

* daskh5: ``from_pytables(p, n).sum().compute()`` / ``.compute()`` (threaded
  scheduler), and ``xr.open_dataset(p, engine="daskh5", chunks="auto")``;
* hidefix: its xarray engine (Rust, no dask), ``ds[v].values``;
* h5py: ``ds[:]``; pyfive: ``ds[:]``; PyTables: ``node.read()``;
* xarray's h5netcdf engine with ``chunks="auto"``;
* daskh5 with each inflater it can use (``daskh5.deflate-decoder``), to show
  what the inflater is worth.

Readers that are not installed (``pip install hidefix pyfive``) are skipped.
Prints the median of ``--repeat`` runs, GB/s of uncompressed data, the ratio of
each reader's time to daskh5's, checks the bars of issue 18 and prints the load
average (the machine is shared: re-run on a quiet one before quoting numbers).

Run from the repository root::

    python benchmarks/bench_deflate.py --quick    # 40 MB, 3 repeats
    python benchmarks/bench_deflate.py            # 200 MB, 5 repeats
    python benchmarks/bench_deflate.py --mb 800 --repeat 7
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
from _common import machine_line

BARS = [  # (what, faster one, slower one, factor)
    ("daskh5 .sum() vs hidefix", "daskh5 .sum()", "hidefix .sum()", 2.0),
    ("daskh5 .sum() vs h5py", "daskh5 .sum()", "h5py .sum()", 3.0),
    ("xarray daskh5 ds.sum() vs h5netcdf engine", "xarray daskh5 ds.sum()", "xarray h5netcdf ds.sum()", 2.0),
    ("daskh5 full read vs h5py", "daskh5 full read", "h5py full read", 1.2),
]


def write_files(where: str, mb: float) -> tuple[str, str]:
    import tables
    import xarray as xr

    n = int(mb * 1e6) // 16
    walk = np.cumsum(np.random.default_rng(0).standard_normal((n, 2)), axis=0)
    nc = os.path.join(where, "walk.nc")
    enc = {"x": {"zlib": True, "complevel": 4, "shuffle": True, "chunksizes": (min(65536, n), 2)}}
    xr.Dataset({"x": (("t", "c"), walk)}).to_netcdf(nc, engine="h5netcdf", encoding=enc)
    pt = os.path.join(where, "walk_tables.h5")
    with tables.open_file(pt, "w") as f:
        f.create_carray("/", "x", obj=walk, filters=tables.Filters(4, "zlib", shuffle=True))
    return nc, pt


def prefault(nbytes: int) -> None:
    """Touch and free ``nbytes`` of memory, so the timed call does not pay the VM's first touch of
    freed pages (see ``prefault`` in bench_read.py and benchmarks/README.md)."""
    if nbytes > 0:
        buf = np.empty(nbytes, dtype=np.uint8)
        buf[::4096] = 1
        del buf


def median(fn, repeat: int, touch: int = 0) -> float:
    fn()  # warm: page cache, imports, caches
    times = []
    for _ in range(repeat):
        prefault(touch)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cases(nc: str, pt: str) -> dict[str, dict[str, object]]:
    """file label -> {case name: callable}; names ending ``.sum()``, ``full read``, ``ds.sum()``."""
    import dask
    import h5py
    import xarray as xr

    import daskh5
    from daskh5 import _deflate

    out: dict[str, dict[str, object]] = {}
    opened = []
    out["_opened"] = opened  # closed by main
    for label, path in (
        ("netCDF-4 (h5netcdf, zlib 4 + shuffle, 65536 x 2)", nc),
        ("PyTables zlib CArray", pt),
    ):
        c: dict[str, object] = {}
        x = daskh5.from_pytables(path, "/x")
        c["daskh5 .sum()"] = lambda x=x: float(x.sum().compute())
        c["daskh5 full read"] = lambda x=x: x.compute()
        for name in _deflate.DECODERS:
            if _deflate._module(name) is None:
                continue

            def with_decoder(x=x, name=name):
                with dask.config.set({_deflate.CONFIG_KEY: name}):
                    return float(x.sum().compute())

            c[f"daskh5 .sum() [{name}]"] = with_decoder
        h5 = h5py.File(path, "r")
        c["h5py .sum()"] = lambda d=h5["x"]: float(d[:].sum())
        c["h5py full read"] = lambda d=h5["x"]: d[:]
        if importlib.util.find_spec("pyfive"):
            import pyfive

            pf = pyfive.File(path)
            c["pyfive .sum()"] = lambda d=pf["x"]: float(d[:].sum())
            c["pyfive full read"] = lambda d=pf["x"]: d[:]
        if importlib.util.find_spec("hidefix"):
            try:
                hx = xr.open_dataset(path, engine="hidefix", cache=False)
                c["hidefix .sum()"] = lambda v=hx["x"]: float(v.values.sum())
                c["hidefix full read"] = lambda v=hx["x"]: v.values
            except Exception as exc:  # hidefix's engine wants netCDF-style dimensions
                print(f"  hidefix cannot open {os.path.basename(path)}: {type(exc).__name__}: {exc}")
        if path == pt:
            import tables

            tf = tables.open_file(pt, "r")
            opened.append(tf)
            c["PyTables full read"] = lambda n=tf.root.x: n.read()
        for engine in ("daskh5", "h5netcdf"):
            try:
                extra = {"phony_dims": "sort"} if engine == "h5netcdf" else {}
                ds = xr.open_dataset(path, engine=engine, chunks="auto", **extra)
            except Exception as exc:
                print(f"  xarray {engine} engine cannot open {os.path.basename(path)}: {exc}")
                continue
            var = next(iter(ds.data_vars))
            c[f"xarray {engine} ds.sum()"] = lambda ds=ds, v=var: float(ds.sum()[v].values)
        out[label] = c
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=200, help="uncompressed size in MB (default 200)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per case; the median is reported")
    p.add_argument("--quick", action="store_true", help="40 MB, 3 repeats")
    p.add_argument("--dir", help="where to write the files (default: a new temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the files")
    p.add_argument("--no-prefault", action="store_true", help="do not touch 2.5x the array before each run")
    args = p.parse_args(argv)
    if args.quick:
        args.mb, args.repeat = 40, 3
    from daskh5._deflate import decoder_name

    where = args.dir or tempfile.mkdtemp(prefix="bench_deflate_")
    os.makedirs(where, exist_ok=True)
    print(machine_line())
    print(f"{args.mb:g} MB float64 (N, 2) random walk; median of {args.repeat}; inflater: {decoder_name()}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    try:
        nc, pt = write_files(where, args.mb)
        nbytes = int(args.mb * 1e6) // 16 * 16
        results = {}
        every = cases(nc, pt)
        opened = every.pop("_opened")
        for label, c in every.items():
            print(f"\n{label} ({os.path.getsize(nc if 'netCDF' in label else pt) / 1e6:.0f} MB on disk)")
            touch = 0 if args.no_prefault else int(2.5 * nbytes)
            times = {name: median(fn, args.repeat, touch) for name, fn in c.items()}
            results[label] = times
            for kind in (".sum()", "full read", "ds.sum()"):
                rows = {
                    n: t for n, t in times.items() if kind in n and (kind != ".sum()" or "ds.sum()" not in n)
                }
                base = rows.get("daskh5 " + kind) or rows.get("xarray daskh5 " + kind)
                print(f"  {'case':<34} {'time':>8} {'GB/s':>6} {'vs daskh5':>9}")
                for n, t in sorted(rows.items(), key=lambda kv: kv[1]):
                    ratio = f"{t / base:.2f}x" if base else ""
                    print(f"  {n:<34} {t:8.3f} {nbytes / t / 1e9:6.2f} {ratio:>9}")
        print("\nbars (2 cores):")
        for label, times in results.items():
            for what, fast, slow, factor in BARS:
                if fast in times and slow in times:
                    got = times[slow] / times[fast]
                    ok = "PASS" if got >= factor else "FAIL"
                    print(f"  {label[:24]:<24} {what:<44} {got:5.2f}x (bar {factor:g}x) {ok}")
        print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        for f in opened:
            f.close()
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(where, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

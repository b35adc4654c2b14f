"""read_table against dd.read_hdf and pd.read_hdf on a pandas format="table" frame (issue 16).

The frame: ``--rows`` rows (the issue's size is 20 million, about 1.6 GB; the default is smaller so
the run takes a few minutes on a 2-core machine) of 8 float64 columns, an int ``label`` (a data
column) and a string column, blosc:lz4, written once by pandas. Timed side by side, medians:

- ``groupby("label").mean()`` through ``daskh5.read_table``, ``dd.read_hdf`` and ``pd.read_hdf``;
- a selective ``where=`` (1% of rows, on the data column) against ``pd.read_hdf(where=...)``;
- the same groupby on a ``distributed.LocalCluster`` of 2 worker processes (daskh5 and dd.read_hdf);
- the peak memory of daskh5's groupby with a 64 MiB budget, in a fresh process.

Run: ``python benchmarks/bench_table.py [--rows N] [--repeat R] [--no-cluster]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine_line, median_time


def write(path: str, rows: int) -> None:
    rng = np.random.default_rng(0)
    step = 1_000_000
    with pd.HDFStore(path, "w", complib="blosc:lz4", complevel=5) as store:
        for start in range(0, rows, step):
            n = min(step, rows - start)
            df = pd.DataFrame(rng.normal(size=(n, 8)), columns=[f"f{i}" for i in range(8)],
                              index=pd.RangeIndex(start, start + n))  # fmt: skip
            df["label"] = rng.integers(0, 100, n)
            df["s"] = rng.choice(["alpha", "beta", "gamma", "delta"], n)
            store.append("df", df, data_columns=["label"], min_itemsize={"s": 8}, index=False)


_PEAK = """
import resource, sys, dask, daskh5
from _common import kernel_peak_rss
base = kernel_peak_rss()
daskh5.read_table(sys.argv[1], "df", partition_size="64MiB").groupby("label").mean(numeric_only=True).compute()
print(base, kernel_peak_rss())
"""


def main() -> None:
    import dask
    import dask.dataframe as dd

    import daskh5

    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=4_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-cluster", action="store_true")
    a = p.parse_args()
    warnings.simplefilter("ignore")
    print(machine_line())
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        path = os.path.join(tmp, "frame.h5")
        write(path, a.rows)
        print(f"{a.rows:,} rows, {os.path.getsize(path) / 1e9:.2f} GB on disk; medians of {a.repeat}")

        def ours():
            return daskh5.read_table(path, "df").groupby("label").mean(numeric_only=True).compute()

        def theirs():
            return dd.read_hdf(path, "df").groupby("label").mean(numeric_only=True).compute()

        def pandas():
            return pd.read_hdf(path, "df").groupby("label").mean(numeric_only=True)

        pd.testing.assert_frame_equal(ours().sort_index(), pandas().sort_index())
        t = {name: median_time(fn, a.repeat) for name, fn in [("daskh5", ours), ("dd.read_hdf", theirs),
                                                               ("pd.read_hdf", pandas)]}  # fmt: skip
        print(f"groupby mean  daskh5 {t['daskh5']:.2f}s  dd.read_hdf {t['dd.read_hdf']:.2f}s  "
              f"pd.read_hdf {t['pd.read_hdf']:.2f}s  ->  {t['dd.read_hdf'] / t['daskh5']:.1f}x vs dd, "
              f"{t['pd.read_hdf'] / t['daskh5']:.1f}x vs pandas")  # fmt: skip

        cond = "label == 7"

        def ours_where():
            return daskh5.read_table(path, "df", where=cond).compute()

        def pandas_where():
            return pd.read_hdf(path, "df", where=cond)

        with dask.config.set({"dataframe.convert-string": False}):
            pd.testing.assert_frame_equal(ours_where(), pandas_where())
            w = {"daskh5": median_time(ours_where, a.repeat), "pd": median_time(pandas_where, a.repeat)}
        print(f"where= (1%)   daskh5 {w['daskh5']:.2f}s  pd.read_hdf(where=) {w['pd']:.2f}s  ->  "
              f"{w['pd'] / w['daskh5']:.1f}x")  # fmt: skip

        if not a.no_cluster:
            from distributed import Client, LocalCluster

            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                              silence_logs=50) as cluster, Client(cluster):  # fmt: skip
                ours()
                c = {"daskh5": median_time(ours, a.repeat), "dd": median_time(theirs, a.repeat)}
            print(f"LocalCluster(2 processes) groupby  daskh5 {c['daskh5']:.2f}s  dd.read_hdf {c['dd']:.2f}s  ->  "
                  f"{c['dd'] / c['daskh5']:.1f}x")  # fmt: skip

        out = subprocess.run([sys.executable, "-c", _PEAK, path], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)), check=True)  # fmt: skip
        base, peak = map(int, out.stdout.split())
        budget = 64 << 20
        print(f"peak RSS of the groupby (64 MiB budget, threads on {os.cpu_count()} cores): {peak / 2**20:.0f} MiB, "
              f"interpreter baseline {base / 2**20:.0f} MiB -> {(peak - base) / budget:.1f}x the budget above it "
              f"(bar: < 4x per process)")  # fmt: skip


if __name__ == "__main__":
    main()

"""to_pytables on a distributed LocalCluster: time per block as the number of blocks grows.

Each block is sent to the cluster with only the graph it needs; sending the
whole graph per block made the writer quadratic (11, 33, 155 ms a block at
100, 400, 1,600 blocks before the fix). The printed ratio compares the
per-block cost at the largest and smallest size: ~1 means linear.

    python benchmarks/bench_write_cluster.py
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np
from _common import machine_line


def main() -> int:
    import dask.array as da
    import distributed

    import daskh5

    print(machine_line())
    folder = tempfile.mkdtemp(prefix="daskh5-wc-")
    per_block = {}
    try:
        with (
            distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, dashboard_address=":0", silence_logs=50
            ) as c,
            distributed.Client(c),
        ):
            for n in (100, 400, 1600):
                x = da.random.default_rng(0).random((n * 1000, 2), chunks=(1000, 2))
                path = os.path.join(folder, f"w{n}.h5")
                t = time.perf_counter()
                daskh5.to_pytables(x, path, "/x", progress=False)
                per_block[n] = (time.perf_counter() - t) / n
                assert np.array_equal(daskh5.from_pytables(path, "/x").compute(), x.compute())
                print(f"{n:>6} blocks of 16 KB: {per_block[n] * 1e3:6.1f} ms a block")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ratio = per_block[1600] / per_block[100]
    print(f"per-block cost at 1,600 blocks / at 100 blocks: {ratio:.2f} (quadratic would be ~16)")
    return 0 if ratio < 3 else 1


if __name__ == "__main__":
    raise SystemExit(main())

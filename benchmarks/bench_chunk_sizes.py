"""Per-chunk overhead: ``.sum()`` with daskh5 against dask over h5py, by HDF5 chunk size.

Writes the same float64 random walk of shape ``(N, 2)`` (400 MB by default)
as blosc:lz4 + shuffle CArrays with chunks of 16 KiB, 64 KiB (an EArray's
default) and 256 KiB (a large CArray's default), then times
``from_pytables(path).sum()`` and ``da.from_array(h5py dataset, same
blocks).sum()`` on dask's threaded scheduler, one after the other, and prints the
median of ``--repeat`` rounds and the ratio.  Small chunks are where Python
work per chunk shows: h5py's loop over chunks runs in C.

Run from the repository root::

    python benchmarks/bench_chunk_sizes.py            # 400 MB, 9 repeats
    python benchmarks/bench_chunk_sizes.py --mb 80    # quicker
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import numpy as np
from _common import machine_line, median_time


def main(argv: list[str] | None = None) -> int:
    import dask.array as da
    import h5py
    import hdf5plugin  # noqa: F401  (h5py needs it to read blosc)
    import tables

    import daskh5

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=400)
    p.add_argument("--repeat", type=int, default=9)
    args = p.parse_args(argv)
    rows = args.mb * 1_000_000 // 16
    folder = tempfile.mkdtemp(prefix="daskh5-chunks-")
    filters = tables.Filters(5, "blosc:lz4", shuffle=True)
    print(machine_line())
    print(f"{args.mb} MB float64 (N, 2), blosc:lz4 + shuffle; medians of {args.repeat}; warm page cache")
    print(f"\n{'chunk':>8}{'chunks':>10}{'daskh5 s':>11}{'dask+h5py s':>13}{'dask+h5py/daskh5':>19}")
    try:
        for kib in (16, 64, 256):
            path = os.path.join(folder, f"c{kib}.h5")
            rng = np.random.default_rng(0)
            with tables.open_file(path, "w") as f:
                node = f.create_carray(
                    "/", "data", atom=tables.Float64Atom(), shape=(rows, 2), filters=filters,
                    chunkshape=(kib * 1024 // 16, 2),
                )  # fmt: skip
                last = np.zeros(2)
                for s in range(0, rows, 1 << 20):
                    n = min(1 << 20, rows - s)
                    block = np.cumsum(rng.normal(size=(n, 2)), axis=0) + last
                    node[s : s + n], last = block, block[-1]
            x = daskh5.from_pytables(path, "/data")
            with h5py.File(path, "r") as f:
                d = da.from_array(f["data"], chunks=x.chunks)
                assert np.isclose(float(x.sum().compute()), float(d.sum().compute()))  # also warms up
                ours = median_time(lambda x=x: x.sum().compute(scheduler="threads"), args.repeat)
                theirs = median_time(lambda d=d: d.sum().compute(scheduler="threads"), args.repeat)
            print(
                f"{kib:>5} KiB{-(-rows // (kib * 64)):>10,}{ours:>11.3f}{theirs:>13.3f}{theirs / ours:>18.2f}x"
            )
            daskh5.close_files()
            os.remove(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

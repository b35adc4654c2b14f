"""Ragged benchmark: daskh5's ragged reader and writer against what users write today.

Writes 1,000,000 samples with random 2-d shapes (2..10 x 2..10), int32,
blosc:lz4, as the flat layout (``/data``, ``/data_start_and_stop``,
``/data_shape``) and times, side by side in one run (median of ``--repeat``):

reading every sample
    * daskh5 ``read_ragged(...).compute()`` (threads) and ``open_ragged(...)[:]``;
    * the per-sample getter users write today (``data[start:stop].reshape(shape)``
      for each row, PyTables);
    * the limit: one bulk PyTables read of the three nodes, then split in numpy.

writing
    * daskh5 ``write_ragged``;
    * PyTables, sample by sample (three ``append`` calls per sample);
    * PyTables, element by element (one ``append`` per value).

The two slow baselines are timed on a prefix of the samples (``--getter-samples``,
``--sample-writes``, ``--element-writes``) and reported per sample; their ratios
compare time per sample, which is what a full run would scale with.

Run from the repository root::

    python benchmarks/bench_ragged.py            # 1,000,000 samples
    python benchmarks/bench_ragged.py --quick    # 100,000 samples, 2 repeats
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import numpy as np
import tables
from _common import machine_line, median_time

import daskh5

FILTERS = tables.Filters(complevel=5, complib="blosc:lz4", shuffle=True)
BAR_VS_GETTER = 30.0
BAR_VS_LIMIT = 2.0
BAR_VS_ELEMENTS = 100.0


def make_samples(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = rng.integers(2, 11, size=(n, 2))
    values = rng.integers(-(2**31), 2**31 - 1, size=int(np.prod(shapes, axis=1).sum()), dtype=np.int32)
    ends = np.cumsum(np.prod(shapes, axis=1))
    return [v.reshape(s) for v, s in zip(np.split(values, ends[:-1]), shapes, strict=True)]


# -- readers -------------------------------------------------------------------------------
def per_sample_getter(path: str, n: int) -> list[np.ndarray]:
    with tables.open_file(path) as f:
        data, ss, shp = f.root.data, f.root.data_start_and_stop, f.root.data_shape
        return [data[ss[i, 0] : ss[i, 1]].reshape(shp[i]) for i in range(n)]


def bulk_limit(path: str) -> list[np.ndarray]:
    """One PyTables read per node, then the fastest numpy split we know (plain-int loop of views)."""
    with tables.open_file(path) as f:
        data, ss, shp = f.root.data.read(), f.root.data_start_and_stop.read(), f.root.data_shape.read()
    bounds = zip(ss[:, 0].tolist(), ss[:, 1].tolist(), shp[:, 0].tolist(), shp[:, 1].tolist(), strict=True)
    return [data[a:b].reshape(h, w) for a, b, h, w in bounds]


# -- writers -------------------------------------------------------------------------------
def _create(f):
    data = f.create_earray("/", "data", atom=tables.Int32Atom(), shape=(0,), filters=FILTERS)
    ss = f.create_earray("/", "data_start_and_stop", atom=tables.Int64Atom(), shape=(0, 2), filters=FILTERS)
    shp = f.create_earray("/", "data_shape", atom=tables.Int64Atom(), shape=(0, 2), filters=FILTERS)
    return data, ss, shp


def write_sample_by_sample(path: str, samples) -> None:
    with tables.open_file(path, "w") as f:
        data, ss, shp = _create(f)
        offset = 0
        for s in samples:
            data.append(s.reshape(-1))
            ss.append([[offset, offset + s.size]])
            shp.append([s.shape])
            offset += s.size


def write_element_by_element(path: str, samples) -> None:
    with tables.open_file(path, "w") as f:
        data, ss, shp = _create(f)
        offset = 0
        for s in samples:
            for v in s.reshape(-1):
                data.append([v])
            ss.append([[offset, offset + s.size]])
            shp.append([s.shape])
            offset += s.size


def check_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b), (len(a), len(b))
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape or not np.array_equal(x, y):
            raise AssertionError("readers disagree")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--getter-samples", type=int, default=50_000)
    p.add_argument("--sample-writes", type=int, default=50_000)
    p.add_argument("--element-writes", type=int, default=1_000)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dir", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.repeat = 100_000, 2
        args.getter_samples, args.sample_writes, args.element_writes = 10_000, 10_000, 200
    folder = tempfile.mkdtemp(prefix="daskh5-ragged-", dir=args.dir)
    path = os.path.join(folder, "ragged.h5")
    print(machine_line())
    print(f"versions: daskh5 {daskh5.__version__}, tables {tables.__version__}, numpy {np.__version__}")
    try:
        samples = make_samples(args.samples)
        n = len(samples)
        raw_mb = sum(s.nbytes for s in samples) / 1e6
        print(f"{n:,} samples, 2-d shapes 2..10 x 2..10, int32: {raw_mb:.0f} MB of values; warm page cache\n")

        # -- writing ------------------------------------------------------------------------
        t_write = median_time(
            lambda: daskh5.write_ragged(samples, path, "/data", mode="w", progress=False), args.repeat
        )
        other = os.path.join(folder, "other.h5")
        k_s = min(n, args.sample_writes)
        t_samples = median_time(lambda: write_sample_by_sample(other, samples[:k_s]), 1) / k_s
        k_e = min(n, args.element_writes)
        t_elements = median_time(lambda: write_element_by_element(other, samples[:k_e]), 1) / k_e
        per = t_write / n
        print("writing (seconds per 1,000,000 samples; * = measured on a prefix, per sample)")
        print(f"  {'daskh5 write_ragged':<34}{per * 1e6:>10.2f} s   1.0x")
        print(
            f"  {'PyTables sample by sample *':<34}{t_samples * 1e6:>10.2f} s   {t_samples / per:>6.1f}x slower"
        )
        print(
            f"  {'PyTables element by element *':<34}{t_elements * 1e6:>10.2f} s   {t_elements / per:>6.1f}x slower"
        )
        write_ok = t_elements / per >= BAR_VS_ELEMENTS
        print(
            f"  bar: >= {BAR_VS_ELEMENTS:.0f}x faster than element by element: {'PASS' if write_ok else 'FAIL'}\n"
        )

        # -- reading ------------------------------------------------------------------------
        check_same(daskh5.read_ragged(path, "/data").compute(scheduler="threads"), samples)
        check_same(bulk_limit(path), samples)
        check_same(per_sample_getter(path, 1000), samples[:1000])
        t_bag = median_time(
            lambda: daskh5.read_ragged(path, "/data").compute(scheduler="threads"), args.repeat
        )
        t_open = median_time(lambda: daskh5.open_ragged(path, "/data")[:], args.repeat)
        t_limit = median_time(lambda: bulk_limit(path), args.repeat)
        k_g = min(n, args.getter_samples)
        t_getter = median_time(lambda: per_sample_getter(path, k_g), 1) / k_g * n
        best = min(t_bag, t_open)
        print("reading every sample (seconds for all samples; * = per-sample rate on a prefix, scaled)")
        rows = [
            ("daskh5 read_ragged().compute()", t_bag),
            ("daskh5 open_ragged()[:]", t_open),
            ("bulk limit (3 reads + numpy split)", t_limit),
            ("per-sample getter *", t_getter),
        ]
        for name, t in rows:
            print(
                f"  {name:<36}{t:>9.3f} s   getter/this {t_getter / t:>7.1f}x   this/limit {t / t_limit:>5.2f}x"
            )
        getter_ok = t_getter / t_bag >= BAR_VS_GETTER and t_getter / t_open >= BAR_VS_GETTER
        limit_ok = t_bag / t_limit <= BAR_VS_LIMIT and t_open / t_limit <= BAR_VS_LIMIT
        print(
            f"  bar: >= {BAR_VS_GETTER:.0f}x faster than the per-sample getter: {'PASS' if getter_ok else 'FAIL'}"
        )
        print(f"  bar: within {BAR_VS_LIMIT:.0f}x of the bulk limit: {'PASS' if limit_ok else 'FAIL'}")
        print(f"  (fastest daskh5 path {best:.3f} s)")
        return 0 if (write_ok and getter_ok and limit_ok) else 1
    finally:
        daskh5.close_files()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

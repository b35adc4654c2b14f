"""The seed notebook's journey, redone with daskh5, section by section.

The notebook this project grew from did everything by hand with PyTables: it
created an Array, a compressed CArray, an EArray that was appended to, closed,
reopened and appended to again, VLArrays of variable-length samples, n-d
ragged samples (flattened in a VLArray next to a ``<name>_shape`` array, or
concatenated in one compressed EArray next to ``<name>_start_and_stop`` and
``<name>_shape`` arrays), opened files with ``driver="H5FD_CORE"``, sliced
everything by hand, monkey-patched ``__getitem__`` to reshape samples and kept
a budget-sized window of rows in RAM with a hand-written "memory swapper".

Each section below first makes the file the way the notebook did (with
PyTables: these are files users already have), then reads or extends it with
daskh5, and checks the result against numpy:

1. Array                      -> ``daskh5.from_pytables``
2. CArray with compression    -> ``from_pytables``, slicing reads only the chunks it needs
3. EArray, append, reopen     -> ``daskh5.to_pytables(kind="earray")`` + ``daskh5.append``
4. VLArray                    -> ``daskh5.read_ragged`` (a dask bag) / ``daskh5.open_ragged``
5. n-d ragged in a VLArray    -> ``open_ragged(...)[i]`` has its true shape: no patched ``__getitem__``
6. ragged in a compressed EArray (+ start/stop, shape) -> the same reader; ``daskh5.write_ragged`` writes it
7. the in-memory driver       -> ``from_pytables``/``open_ragged(..., driver="H5FD_CORE")``
8. the memory budget          -> ``chunks="64MiB"`` / ``partition_size=`` and ``daskh5.iter_batches``

Run ``python examples/journey.py`` (a few seconds; about 100 MB of files in a
temporary directory, removed at the end), or
``python examples/journey.py --small --out /tmp/journey`` for a tiny run that
keeps its files.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import dask
import dask.array as da
import numpy as np
import tables

import daskh5

# What the notebook used for every compressed node.
FILTERS = tables.Filters(complevel=5, complib="blosc:lz4", shuffle=True)

# The scheduler for the dask bags below (see section 4).
BAGS = "threads"

SIZES = {
    # rows of the regular arrays, ragged samples, rows of the "big" array of
    # section 8, the HDF5 chunk of that array (rows) and the default budget
    "small": dict(rows=20_000, samples=200, big_rows=40_000, big_chunk=1024, budget="64KiB"),
    "full": dict(rows=1_000_000, samples=10_000, big_rows=12_000_000, big_chunk=16_384, budget="64MiB"),
}


def header(title: str) -> None:
    print(f"\n== {title} ==")


def ok(section: str) -> None:
    """Every section ends with this line once its results matched numpy (the test looks for it)."""
    print(f"[ok] {section}")


# -- 1. Array ---------------------------------------------------------------------------------------
def section_array(folder: str, rows: int) -> None:
    header("1. Array")
    path = os.path.join(folder, "array.h5")
    data = np.random.default_rng(1).normal(size=(rows, 4))
    with tables.open_file(path, "w") as f:  # the notebook's file: a plain, contiguous Array
        f.create_array("/", "data", obj=data)

    # Before: ``f.root.data[i0:i1]`` in a loop, summing by hand.
    # After: one lazy dask array; creating it reads metadata only.
    x = daskh5.from_pytables(path, "/data")
    print(f"{x.shape} {x.dtype}, {x.numblocks[0]} block(s)")
    col_means = x.mean(axis=0).compute()
    print("column means:", np.round(col_means, 4))
    np.testing.assert_allclose(col_means, data.mean(axis=0))
    np.testing.assert_array_equal(x[10:13].compute(), data[10:13])
    ok("1. Array")


# -- 2. CArray with compression -------------------------------------------------------------------
def section_carray(folder: str, rows: int) -> None:
    header("2. CArray with blosc:lz4 compression")
    path = os.path.join(folder, "carray.h5")
    data = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    with tables.open_file(path, "w") as f:
        f.create_carray("/", "readings", obj=data, filters=FILTERS, chunkshape=(4096, 4))

    x = daskh5.from_pytables(path, "/readings")
    raw, stored = x.nbytes, os.path.getsize(path)
    print(f"{x.shape} {x.dtype}: {raw / 1e6:.1f} MB raw, {stored / 1e6:.2f} MB on disk")
    # Chunks are decompressed in the dask tasks, in parallel, without the HDF5 lock.
    # A slice reads (and decompresses) only the HDF5 chunks it overlaps:
    window = x[5_000:5_003, 1:3].compute()
    print("x[5000:5003, 1:3] =", window.tolist())
    np.testing.assert_array_equal(window, data[5_000:5_003, 1:3])
    # Fancy and strided indexing work too, as on a numpy array.
    picked = x[[0, rows // 2, rows - 1], 0].compute()
    np.testing.assert_array_equal(picked, data[[0, rows // 2, rows - 1], 0])
    total = float(x.sum(dtype=np.float64).compute())
    assert total == float(data.sum(dtype=np.float64)), total
    print(f"sum = {total:.6g}")
    ok("2. CArray")


# -- 3. EArray: append, close, reopen, append again ------------------------------------------------
def section_earray(folder: str, rows: int) -> None:
    header("3. EArray appended, reopened and appended again")
    path = os.path.join(folder, "earray.h5")
    rng = np.random.default_rng(3)
    parts = [rng.normal(size=(n, 4)) for n in (rows // 2, rows // 3, rows // 5)]

    # The notebook's way: create, append, close; later reopen with mode "a" and append.
    with tables.open_file(path, "w") as f:
        log = f.create_earray("/", "log", atom=tables.Float64Atom(), shape=(0, 4), filters=FILTERS)
        log.append(parts[0])
    with tables.open_file(path, "a") as f:
        f.root.log.append(parts[1])
    x = daskh5.from_pytables(path, "/log")
    print(f"PyTables-written EArray: {x.shape}")
    np.testing.assert_allclose(x.sum(axis=0).compute(), np.concatenate(parts[:2]).sum(axis=0))

    # The same with daskh5: the first part creates the EArray, later parts are
    # appended; each call opens and closes the file (the "reopen"), and the
    # blocks may come from any dask computation (here: lazy, block by block).
    chunks = (max(1, rows // 8), 4)
    daskh5.to_pytables(
        da.from_array(parts[0], chunks=chunks), path, "/log2", kind="earray", filters=FILTERS, progress=False
    )
    before = daskh5.from_pytables(path, "/log2")
    daskh5.append(da.from_array(parts[1], chunks=chunks), path, "/log2", progress=False)
    daskh5.append(parts[2], path, "/log2", progress=False)  # numpy arrays work too
    # A dask array has a fixed shape: ``before`` still covers the first part only;
    # from_pytables again to see the new rows.
    after = daskh5.from_pytables(path, "/log2")
    print(f"daskh5-written EArray: {before.shape} -> {after.shape} after two appends")
    assert before.shape[0] == len(parts[0])
    np.testing.assert_array_equal(before.compute(), parts[0])
    np.testing.assert_array_equal(after.compute(), np.concatenate(parts))
    with tables.open_file(path) as f:  # still an ordinary EArray for PyTables users
        assert isinstance(f.root.log2, tables.EArray) and f.root.log2.nrows == after.shape[0]
        print(f"PyTables sees /log2 as {type(f.root.log2).__name__} {tuple(map(int, f.root.log2.shape))}")
    ok("3. EArray")


# -- 4. VLArray -------------------------------------------------------------------------------------
def utterance(i: int) -> np.ndarray:
    """Sample ``i`` of a variable-length 1-d collection (reproducible, so it can be checked)."""
    rng = np.random.default_rng([4, i])
    return rng.normal(size=int(rng.integers(5, 200))).astype(np.float32)


def section_vlarray(folder: str, samples: int) -> None:
    header("4. VLArray of variable-length samples")
    path = os.path.join(folder, "vlarray.h5")
    with tables.open_file(path, "w") as f:
        vl = f.create_vlarray("/", "utterances", atom=tables.Float32Atom(), filters=FILTERS)
        for i in range(samples):
            vl.append(utterance(i))

    # Before: ``[vl[i] for i in range(len(vl))]``, one HDF5 read per sample.
    # After: a dask bag, each partition one bulk read of many rows.
    bag = daskh5.read_ragged(path, "/utterances", partition_size="256KiB")
    # dask bags run on worker *processes* by default (started with spawn, about a
    # second each time); for light per-sample work like this, threads are
    # faster.  daskh5 bags hold paths and offsets only, so either works.
    lengths, energy = dask.compute(
        bag.map(len), bag.map(lambda u: float(np.square(u, dtype=np.float64).sum())).sum(), scheduler=BAGS
    )
    expected = [utterance(i) for i in range(samples)]
    assert lengths == [len(u) for u in expected]
    np.testing.assert_allclose(energy, sum(float(np.square(u, dtype=np.float64).sum()) for u in expected))
    print(f"{len(lengths)} samples in {bag.npartitions} partition(s), lengths {min(lengths)}..{max(lengths)}")
    print(f"total energy {energy:.6g}")

    # Random access by index, slice or list: one bulk read per request.
    with daskh5.open_ragged(path, "/utterances") as r:
        print(repr(r))
        np.testing.assert_array_equal(r[7], expected[7])
        picked = r[[3, samples - 1, 0]]
        assert [len(p) for p in picked] == [len(expected[i]) for i in (3, samples - 1, 0)]
    ok("4. VLArray")


# -- 5. n-d ragged samples in a VLArray + <name>_shape ---------------------------------------------
def frame(i: int) -> np.ndarray:
    """An odd-sized 2-d "image" (reproducible)."""
    rng = np.random.default_rng([5, i])
    h, w = (int(n) for n in rng.integers(3, 40, size=2))
    return rng.integers(0, 256, size=(h, w)).astype(np.uint8)


def section_vlarray_nd(folder: str, samples: int) -> None:
    header("5. n-d ragged samples in a VLArray (+ frames_shape)")
    path = os.path.join(folder, "vlarray_nd.h5")
    frames = [frame(i) for i in range(samples)]
    # The notebook's layout: each sample flattened into a VLArray row, its
    # shape in a side array named <name>_shape.
    with tables.open_file(path, "w") as f:
        vl = f.create_vlarray("/", "frames", atom=tables.UInt8Atom(), filters=FILTERS)
        for im in frames:
            vl.append(im.ravel())
        f.create_array("/", "frames_shape", obj=np.array([im.shape for im in frames], dtype=np.int64))

    # Before, the notebook patched PyTables to reshape on read:
    #     shapes = f.root.frames_shape[:]
    #     original = tables.VLArray.__getitem__
    #     tables.VLArray.__getitem__ = lambda self, i: original(self, i).reshape(shapes[i])
    # After: daskh5 finds the side array by its name and reshapes every sample.
    r = daskh5.open_ragged(path, "/frames")
    print(repr(r))
    print("shapes of the first three frames:", [r[i].shape for i in range(3)])
    for i in (0, samples // 2, samples - 1):
        np.testing.assert_array_equal(r[i], frames[i])
    assert r.shapes.tolist() == [list(im.shape) for im in frames]
    # The same reshaped samples as a dask bag:
    sizes = (
        daskh5.read_ragged(path, "/frames").map(lambda im: im.shape[0] * im.shape[1]).compute(scheduler=BAGS)
    )
    assert sizes == [im.size for im in frames]
    # Or padded into one dense array (here: fine, it is small).
    dense = r.pad(fill_value=0)
    print(f"padded to {dense.shape}")
    np.testing.assert_array_equal(dense[1, : frames[1].shape[0], : frames[1].shape[1]], frames[1])
    ok("5. VLArray n-d")


# -- 6. ragged samples in one flat compressed EArray + start/stop + shape ----------------------------
def spectrogram(i: int) -> np.ndarray:
    """A (time, 8) float32 sample whose length varies (reproducible)."""
    rng = np.random.default_rng([6, i])
    return rng.normal(size=(int(rng.integers(1, 60)), 8)).astype(np.float32)


def section_flat_earray(folder: str, samples: int) -> None:
    header("6. ragged samples in a compressed EArray (+ start_and_stop, shape)")
    path = os.path.join(folder, "flat.h5")
    specs = [spectrogram(i) for i in range(samples)]
    # The notebook's hand-rolled writer: every sample flattened and appended to
    # one compressed EArray, its [start, stop) offsets and its shape kept in
    # side arrays.
    with tables.open_file(path, "w") as f:
        flat = f.create_earray("/", "spec", atom=tables.Float32Atom(), shape=(0,), filters=FILTERS)
        offsets, shapes, start = [], [], 0
        for s in specs:
            flat.append(s.ravel())
            offsets.append((start, start + s.size))
            shapes.append(s.shape)
            start += s.size
        f.create_array("/", "spec_start_and_stop", obj=np.array(offsets, dtype=np.int64))
        f.create_array("/", "spec_shape", obj=np.array(shapes, dtype=np.int64))

    r = daskh5.open_ragged(path, "/spec")
    print(repr(r))
    for i in (0, samples - 1):
        np.testing.assert_array_equal(r[i], specs[i])
    means = daskh5.read_ragged(path, "/spec").map(lambda s: s.mean(axis=0)).compute(scheduler=BAGS)
    np.testing.assert_allclose(np.array(means), [s.mean(axis=0) for s in specs], rtol=1e-5)

    # daskh5.write_ragged replaces that hand-rolled writer: same layout (three
    # EArrays any PyTables user can open), bulk appends, never a half-written
    # file, and appending again continues the offsets.
    path2 = os.path.join(folder, "flat_daskh5.h5")
    half = samples // 2
    daskh5.write_ragged(specs[:half], path2, "/spec", mode="w", progress=False)
    daskh5.write_ragged((s for s in specs[half:]), path2, "/spec", progress=False)  # a generator, appended
    r2 = daskh5.open_ragged(path2, "/spec")
    assert len(r2) == samples and r2.shapes.tolist() == r.shapes.tolist()
    for a, b in zip(r2[: min(samples, 20)], specs[:20]):
        np.testing.assert_array_equal(a, b)
    with tables.open_file(path2) as f:
        names = sorted(node._v_name for node in f.list_nodes("/"))
    print(f"write_ragged wrote {len(r2)} samples as {names}")
    ok("6. flat EArray")


# -- 7. the in-memory driver ------------------------------------------------------------------------
def section_core_driver(folder: str) -> None:
    header('7. the in-memory driver (driver="H5FD_CORE")')
    path = os.path.join(folder, "carray.h5")  # written in section 2

    # The notebook: ``tables.open_file(path, "r", driver="H5FD_CORE")`` to read
    # the whole file into RAM once.  daskh5: each process loads the file once,
    # the first time a task needs it, and reads every block from memory.
    x_disk = daskh5.from_pytables(path, "/readings")
    x_core = daskh5.from_pytables(path, "/readings", driver="H5FD_CORE")
    a = float(x_disk.sum(dtype=np.float64).compute())
    b = float(x_core.sum(dtype=np.float64).compute())
    assert a == b, (a, b)
    print(f"sum from disk {a:.6g} == sum from memory {b:.6g}")

    # Ragged collections take the same driver (section 6 wrote this file).
    ragged_path = os.path.join(folder, "flat_daskh5.h5")
    with daskh5.open_ragged(ragged_path, "/spec") as on_disk:
        first_disk = on_disk[0]
    with daskh5.open_ragged(ragged_path, "/spec", driver="H5FD_CORE") as in_ram:
        assert np.array_equal(in_ram[0], first_disk)
        print(f"ragged sample 0 from memory: shape {in_ram[0].shape}, same as from disk")

    # A node of a file PyTables opened with the core driver keeps that driver.
    with tables.open_file(path, "r", driver="H5FD_CORE") as f:
        x_leaf = daskh5.from_pytables(f.root.readings)
        assert float(x_leaf.sum(dtype=np.float64).compute()) == a

    # A purely in-memory PyTables file (no backing store) cannot be seen by
    # dask workers: daskh5 says so, and the fix is to put its image on disk.
    # (With driver_core_backing_store=0, nothing is ever written at this path.)
    in_memory = os.path.join(folder, "in-memory.h5")
    with tables.open_file(in_memory, "w", driver="H5FD_CORE", driver_core_backing_store=0) as f:
        f.create_array("/", "values", obj=np.arange(10.0))
        try:
            daskh5.from_pytables(f.root.values)
        except daskh5.Daskh5Error as err:
            print(f"in-memory file refused ({type(err).__name__}): {str(err).split('; ')[-1]}")
        else:
            raise AssertionError("an in-memory file with no backing store was accepted")
        image = f.get_file_image()
    saved = os.path.join(folder, "from-memory.h5")
    with open(saved, "wb") as fh:
        fh.write(image)
    assert float(daskh5.from_pytables(saved, "/values").sum().compute()) == 45.0
    ok("7. H5FD_CORE")


# -- 8. the memory budget --------------------------------------------------------------------------
PERIOD = 4096  # row i holds i % PERIOD + (0, 0.25, 0.5, 0.75): exact in float32, sums known


def _fill(block: np.ndarray, block_info=None) -> np.ndarray:
    start = block_info[None]["array-location"][0][0]
    rows = (np.arange(start, start + block.shape[0]) % PERIOD).astype(np.float32)[:, None]
    return rows + np.array([0, 0.25, 0.5, 0.75], dtype=np.float32)


def _expected_sums(rows: int) -> np.ndarray:
    q, r = divmod(rows, PERIOD)
    return q * PERIOD * (PERIOD - 1) / 2 + r * (r - 1) / 2 + rows * np.array([0, 0.25, 0.5, 0.75])


def section_budget(folder: str, big_rows: int, big_chunk: int, budget: str) -> None:
    header(f"8. the memory budget ({budget} per block)")
    path = os.path.join(folder, "big.h5")
    # A file bigger than the budget, written out of core: blocks are generated
    # and compressed by dask, one writer stores them.
    lazy = da.zeros((big_rows, 4), dtype=np.float32, chunks=(big_chunk * 8, 4)).map_blocks(
        _fill, dtype=np.float32
    )
    daskh5.to_pytables(lazy, path, "/big", chunkshape=(big_chunk, 4), mode="w", progress=False)

    # The budget is a memory size per block: blocks are whole HDF5 chunks, as
    # many as fit in the budget.
    from dask.utils import format_bytes, parse_bytes

    x = daskh5.from_pytables(path, "/big", chunks=budget)
    rows_per_block = x.chunks[0][0]
    block_bytes = rows_per_block * 4 * x.dtype.itemsize
    print(f"{x.shape} {x.dtype} = {format_bytes(x.nbytes)}, HDF5 chunks of {big_chunk} rows")
    print(
        f"chunks={budget!r} -> {x.npartitions} blocks of {rows_per_block} rows "
        f"({format_bytes(block_bytes)} each, {rows_per_block // big_chunk} HDF5 chunks)"
    )
    assert block_bytes <= parse_bytes(budget) and rows_per_block % big_chunk == 0
    assert all(c % big_chunk == 0 for c in x.chunks[0][:-1])
    assert x.npartitions == -(-big_rows // rows_per_block)
    # Peak memory of a computation is about the budget times the running tasks.
    col_sums = x.sum(axis=0, dtype=np.float64).compute()
    expected = _expected_sums(big_rows)
    np.testing.assert_allclose(col_sums, expected, rtol=1e-12)

    # The notebook's "memory swapper" kept one budget-sized window of rows in
    # RAM and loaded the next one by hand.  daskh5.iter_batches does that: it
    # yields consecutive batches of rows (a byte budget or a row count), reads
    # the next one in the background while you work on the current one, and
    # holds nothing else.  Batches that are whole blocks read each chunk once.
    t0 = time.perf_counter()
    running, n_batches = np.zeros(4), 0
    for batch in daskh5.iter_batches(x, budget, prefetch=1):
        assert batch.nbytes <= parse_bytes(budget)
        running += batch.sum(axis=0, dtype=np.float64)
        n_batches += 1
    print(f"iter_batches: {n_batches} batches of <= {budget} in {time.perf_counter() - t0:.2f} s")
    np.testing.assert_allclose(running, expected, rtol=1e-12)

    # Ragged data follows a budget too: bag partitions and ragged batches are
    # runs of consecutive samples within the budget.
    ragged_path = os.path.join(folder, "flat_daskh5.h5")  # written in section 6
    bag = daskh5.read_ragged(ragged_path, "/spec", partition_size="16KiB")
    part_bytes = bag.map_partitions(lambda part: [sum(s.nbytes for s in part)]).compute(scheduler=BAGS)
    print(f'read_ragged(partition_size="16KiB") -> {bag.npartitions} partitions, at most {max(part_bytes)} B')
    assert max(part_bytes) <= 16 * 1024 and len(part_bytes) == bag.npartitions
    with daskh5.open_ragged(ragged_path, "/spec") as r:
        assert sum(len(b) for b in daskh5.iter_batches(r, "16KiB")) == len(r)
    ok("8. memory budget")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny run (seconds), e.g. for tests")
    parser.add_argument(
        "--budget", default=None, help="memory budget per block (default 64MiB, 64KiB with --small)"
    )
    parser.add_argument(
        "--out", default=None, help="directory for the files (default: a temporary one, removed)"
    )
    args = parser.parse_args(argv)
    size = SIZES["small" if args.small else "full"]
    budget = args.budget or size["budget"]

    with tempfile.TemporaryDirectory(prefix="daskh5-journey-") as tmp:
        folder = args.out or tmp
        os.makedirs(folder, exist_ok=True)
        t0 = time.perf_counter()
        section_array(folder, size["rows"])
        section_carray(folder, size["rows"])
        section_earray(folder, size["rows"])
        section_vlarray(folder, size["samples"])
        section_vlarray_nd(folder, size["samples"])
        section_flat_earray(folder, size["samples"])
        section_core_driver(folder)
        section_budget(folder, size["big_rows"], size["big_chunk"], budget)
        daskh5.close_files()  # release cached descriptors (and in-memory copies) before cleaning up
        print(f"\njourney: 8 sections checked against numpy in {time.perf_counter() - t0:.1f} s ({folder})")


if __name__ == "__main__":
    main()

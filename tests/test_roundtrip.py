"""Every node kind x dtype x filter x chunk budget reads back what PyTables reads."""

from __future__ import annotations

import numpy as np
import pytest
import tables
from conftest import read_reference, write_node

import daskh5

DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "S7",
]

FILTERS = {
    "none": None,
    "blosc-lz4-shuffle": tables.Filters(5, "blosc:lz4", shuffle=True),
    "blosc-zstd-bitshuffle": tables.Filters(5, "blosc:zstd", bitshuffle=True),
    "blosc-blosclz": tables.Filters(1, "blosc", shuffle=False),
    "blosc2-lz4": tables.Filters(5, "blosc2:lz4"),
    "zlib-shuffle": tables.Filters(5, "zlib", shuffle=True),
    "zlib": tables.Filters(3, "zlib", shuffle=False),
    "fletcher32": tables.Filters(5, "blosc", fletcher32=True),  # falls back to h5py
}


def sample(dtype, shape, rng):
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    if dtype.kind == "b":
        return rng.random(shape) < 0.3
    if dtype.kind == "S":
        return np.array([b"w%d" % (i % 997) for i in range(n)], dtype=dtype).reshape(shape)
    if dtype.kind == "c":
        return (rng.normal(size=n) + 1j * rng.normal(size=n)).astype(dtype).reshape(shape)
    if dtype.kind == "f":
        return np.cumsum(rng.normal(size=n)).astype(dtype).reshape(shape)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=n, dtype=dtype, endpoint=True).reshape(shape)


def check(path, node="/data", **kw):
    ref = read_reference(path, node)
    x = daskh5.from_pytables(path, node, **kw)
    got = x.compute(scheduler="sync")
    assert x.dtype == ref.dtype.newbyteorder("=")
    assert got.dtype == x.dtype
    assert got.shape == ref.shape == x.shape
    np.testing.assert_array_equal(got, ref)
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["array", "carray", "earray"])
def test_dtypes_every_kind(h5path, kind, dtype, rng):
    data = sample(dtype, (1003, 3), rng)
    filters = FILTERS["blosc-lz4-shuffle"] if kind != "array" else None
    write_node(h5path, kind, data, filters=filters, chunkshape=None if kind == "array" else (64, 3))
    check(h5path, chunks="8KiB")


@pytest.mark.parametrize("filt", list(FILTERS))
@pytest.mark.parametrize("dtype", ["bool", "int16", "float64", "complex64", "S7"])
def test_filters(h5path, filt, dtype, rng):
    data = sample(dtype, (2500, 4), rng)
    write_node(h5path, "carray", data, filters=FILTERS[filt], chunkshape=(100, 3))
    check(h5path, chunks="16KiB")


@pytest.mark.parametrize("budget", ["auto", "1KiB", 10_000, "64KiB", "1 GB"])
@pytest.mark.parametrize("kind", ["array", "carray", "earray"])
def test_budgets(h5path, kind, budget, rng):
    data = sample("float64", (4099, 5), rng)
    write_node(h5path, kind, data, filters=FILTERS["blosc-lz4-shuffle"] if kind != "array" else None)
    check(h5path, chunks=budget)


RANKS = [(), (7,), (33, 5), (9, 7, 5), (5, 6, 7, 8)]


# PyTables has no 0-d CArray, so 0-d is an Array case only.
@pytest.mark.parametrize(
    ("kind", "shape"), [("array", s) for s in RANKS] + [("carray", s) for s in RANKS if s]
)
def test_ranks(h5path, kind, shape, rng):
    data = sample("int32", shape, rng)
    chunkshape = tuple(max(1, s // 2) for s in shape) if kind == "carray" else None
    write_node(h5path, kind, data, filters=FILTERS["zlib-shuffle"], chunkshape=chunkshape)
    check(h5path, chunks="256B")


@pytest.mark.parametrize("byteorder", ["big", "little"])
@pytest.mark.parametrize("kind", ["array", "carray", "earray"])
@pytest.mark.parametrize("dtype", ["int32", "float64", "complex128", "uint16"])
def test_byteorder(h5path, kind, byteorder, dtype, rng):
    data = sample(dtype, (500, 2), rng)
    filters = FILTERS["blosc-lz4-shuffle"] if kind != "array" else None
    write_node(h5path, kind, data, filters=filters, byteorder=byteorder)
    x = check(h5path, chunks="2KiB")
    assert x.dtype.isnative


@pytest.mark.parametrize("extdim", [0, 1, 2])
def test_earray_extendable_axis(h5path, extdim, rng):
    data = sample("float32", (40, 30, 20), rng)
    write_node(h5path, "earray", data, filters=FILTERS["blosc-lz4-shuffle"], extdim=extdim)
    check(h5path, chunks="4KiB")


def test_earray_empty(h5path):
    with tables.open_file(h5path, "w") as f:
        f.create_earray("/", "data", atom=tables.Float64Atom(), shape=(3, 0))
    x = daskh5.from_pytables(h5path, "/data")
    assert x.shape == (3, 0)
    assert x.compute().shape == (3, 0)


def test_earray_grown_after_reopen(h5path, rng):
    a, b = sample("int64", (1000, 2), rng), sample("int64", (777, 2), rng)
    write_node(h5path, "earray", a, filters=FILTERS["blosc-lz4-shuffle"], chunkshape=(128, 2))
    before = daskh5.from_pytables(h5path, "/data", chunks="4KiB")
    with tables.open_file(h5path, "a") as f:
        f.root.data.append(b)
    after = daskh5.from_pytables(h5path, "/data", chunks="4KiB")
    np.testing.assert_array_equal(after.compute(), np.concatenate([a, b]))
    # The array made before the append keeps its shape and still reads the right rows,
    # although the last chunk was rewritten (the worker re-reads the chunk index).
    np.testing.assert_array_equal(before.compute(), a)
    assert before.name != after.name


def test_chunks_never_written_read_as_fill_value(h5path):
    with tables.open_file(h5path, "w") as f:
        ca = f.create_carray(
            "/",
            "data",
            atom=tables.Int32Atom(dflt=-7),
            shape=(1000, 4),
            chunkshape=(100, 4),
            filters=FILTERS["blosc-lz4-shuffle"],
        )
        ca[250:420] = np.arange(170 * 4, dtype="int32").reshape(170, 4)
    x = check(h5path, chunks="4KiB")
    assert (x[:200].compute() == -7).all()


def test_edge_chunks(h5path, rng):
    data = sample("float64", (1001, 7), rng)
    write_node(h5path, "carray", data, filters=FILTERS["blosc-lz4-shuffle"], chunkshape=(100, 3))
    x = check(h5path, chunks=(333, 5))
    np.testing.assert_array_equal(x[-1, -1].compute(), data[-1, -1])


def test_open_leaf_is_accepted(h5path, rng):
    data = sample("float32", (300, 2), rng)
    write_node(h5path, "carray", data, filters=FILTERS["blosc-lz4-shuffle"])
    with tables.open_file(h5path, "r") as f:
        x = daskh5.from_pytables(f.root.data, chunks="1KiB")
    np.testing.assert_array_equal(x.compute(), data)


def test_open_leaf_with_pending_writes_is_flushed(h5path, rng):
    data = sample("int16", (300,), rng)
    with tables.open_file(h5path, "w") as f:
        e = f.create_earray("/", "data", atom=tables.Int16Atom(), shape=(0,))
        e.append(data)
        x = daskh5.from_pytables(e)
        np.testing.assert_array_equal(x.compute(), data)


@pytest.mark.parametrize("driver", ["H5FD_CORE", "H5FD_SEC2", "H5FD_STDIO", "core"])
@pytest.mark.parametrize("kind", ["array", "carray"])
def test_driver_passthrough(h5path, kind, driver, rng):
    data = sample("float64", (2000, 2), rng)
    write_node(h5path, kind, data, filters=FILTERS["blosc-lz4-shuffle"] if kind != "array" else None)
    x = daskh5.from_pytables(h5path, "/data", driver=driver, chunks="8KiB")
    np.testing.assert_array_equal(x.compute(scheduler="threads"), data)


def test_core_driver_leaf(h5path, rng):
    data = sample("float64", (2000, 2), rng)
    write_node(h5path, "carray", data, filters=FILTERS["blosc-lz4-shuffle"])
    with tables.open_file(h5path, "r", driver="H5FD_CORE") as f:
        x = daskh5.from_pytables(f.root.data)
    np.testing.assert_array_equal(x.compute(), data)


def test_unknown_driver_is_refused(h5path, rng):
    write_node(h5path, "carray", sample("int8", (10,), rng))
    with pytest.raises(ValueError, match="H5FD_CORE"):
        daskh5.from_pytables(h5path, "/data", driver="H5FD_FAMILY")


def test_h5py_written_dataset(h5path, rng):
    """Plain HDF5 (no PyTables CLASS attribute) reads too, with hdf5plugin filters."""
    import h5py
    import hdf5plugin

    data = sample("float32", (5000, 3), rng)
    with h5py.File(h5path, "w") as f:
        f.create_dataset("gz", data=data, chunks=(500, 3), compression="gzip", shuffle=True)
        f.create_dataset("lz4", data=data, chunks=(500, 3), **hdf5plugin.LZ4())
        f.create_dataset("plain", data=data)
    for node in ["/gz", "/lz4", "/plain"]:
        x = daskh5.from_pytables(h5path, node, chunks="20KiB")
        np.testing.assert_array_equal(x.compute(), data)


@pytest.mark.parametrize("shape", [(100_000,), (300, 7), (10, 20, 30)])
@pytest.mark.parametrize("codec", ["blosc2:zstd", "blosc2:lz4"])
def test_blosc2_every_rank(h5path, shape, codec, rng):
    """PyTables stores 1-d blosc2 chunks as super-chunk frames and n-d ones as b2nd frames."""
    data = sample("float64", shape, rng)
    write_node(h5path, "carray", data, filters=tables.Filters(5, codec))
    x = check(h5path, chunks="64KiB")
    np.testing.assert_array_equal(x[1::7].compute(), data[1::7])


def test_file_already_open_in_h5py(h5path, rng):
    """A user's own h5py handle (HDF5 file locking on) does not stop daskh5 from reading."""
    import h5py
    import hdf5plugin  # noqa: F401  (for the comparison read through h5py)

    data = sample("float64", (1000, 2), rng)
    write_node(h5path, "carray", data, filters=FILTERS["blosc-lz4-shuffle"])
    with h5py.File(h5path, "r") as f:
        np.testing.assert_array_equal(daskh5.from_pytables(h5path, "/data").compute(), f["data"][:])

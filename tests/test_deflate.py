"""Deflate (filter 1) and shuffle (filter 2) chunks: every inflater daskh5 can use, against h5py.

Files are written by h5py, PyTables and netCDF4/h5netcdf (through xarray); each
is read with every installed inflater, chosen with the dask config value
``daskh5.deflate-decoder``, and compared with what the writing library reads.
Damaged chunks are written with ``write_direct_chunk``: raw bytes where HDF5
expects a deflate stream.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
import zlib

import dask
import h5py
import numpy as np
import pytest
import tables

import daskh5
from daskh5 import _deflate
from daskh5.errors import ChunkDecodeError

INSTALLED = [name for name in _deflate.DECODERS if _deflate._module(name) is not None]


@pytest.fixture(params=INSTALLED)
def decoder(request):
    with dask.config.set({_deflate.CONFIG_KEY: request.param}):
        assert _deflate.decoder_name() == request.param
        yield request.param


def _data(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.cumsum(rng.standard_normal(shape), axis=0).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 1000), shape, endpoint=True).astype(dtype)


def _read(path, node):
    return daskh5.from_pytables(path, node).compute(scheduler="sync")


def test_the_fast_inflaters_are_installed_for_the_tests():
    """The test extra installs deflate and isal, so the fast path is what CI exercises."""
    assert INSTALLED == ["libdeflate", "isal", "zlib"]
    assert _deflate.decoder_name() == "libdeflate"


@pytest.mark.parametrize("level", range(1, 10))
@pytest.mark.parametrize("shuffle", [False, True])
def test_h5py_levels_and_shuffle(tmp_path, decoder, level, shuffle):
    path = str(tmp_path / "x.h5")
    data = _data("f8", (1003, 3))
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "x", data=data, chunks=(100, 2), compression="gzip", compression_opts=level, shuffle=shuffle
        )
    with h5py.File(path) as f:
        ref = f["x"][...]
    np.testing.assert_array_equal(_read(path, "/x"), ref)
    np.testing.assert_array_equal(daskh5.from_pytables(path, "/x")[17:911:3, 1:].compute(), ref[17:911:3, 1:])


@pytest.mark.parametrize("dtype", ["u1", "i2", "f4", "i8", "f8"])
@pytest.mark.parametrize("fletcher32", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_h5py_itemsizes_odd_edges_and_fletcher32(tmp_path, decoder, dtype, fletcher32, shuffle):
    path = str(tmp_path / "x.h5")
    data = _data(dtype, (997, 7), seed=1)
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "x", data=data, chunks=(64, 3), compression="gzip", shuffle=shuffle, fletcher32=fletcher32
        )
    with h5py.File(path) as f:
        ref = f["x"][...]
    np.testing.assert_array_equal(_read(path, "/x"), ref)


def test_big_rows_chunk_read_straight_into_the_output(tmp_path, decoder):
    """(n, d) chunked (rows, d): the whole-rows path decodes each chunk into the result."""
    path = str(tmp_path / "x.h5")
    data = _data("f8", (300_000, 2))
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "x", data=data, chunks=(65536, 2), compression="gzip", compression_opts=4, shuffle=True
        )
    x = daskh5.from_pytables(path, "/x", chunks=(150_001, 2))
    np.testing.assert_array_equal(x.compute(), data)
    assert float(x.sum().compute()) == pytest.approx(float(data.sum()))


@pytest.mark.parametrize("level", [1, 5, 9])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("fletcher32", [False, True])
def test_pytables_zlib_carrays(tmp_path, decoder, level, shuffle, fletcher32):
    path = str(tmp_path / "t.h5")
    data = _data("i4", (5001, 3), seed=2)
    filters = tables.Filters(complevel=level, complib="zlib", shuffle=shuffle, fletcher32=fletcher32)
    with tables.open_file(path, "w") as f:
        f.create_carray("/", "x", obj=data, filters=filters, chunkshape=(999, 2))
    with tables.open_file(path) as f:
        ref = f.root.x.read()
    np.testing.assert_array_equal(_read(path, "/x"), ref)


@pytest.mark.parametrize("engine", ["netcdf4", "h5netcdf"])
def test_netcdf4_files_through_the_xarray_engine(tmp_path, decoder, engine):
    xr = pytest.importorskip("xarray")
    path = str(tmp_path / "n.nc")
    ds = xr.Dataset(
        {
            "walk": (("t", "c"), _data("f8", (20001, 2))),
            "labels": (("t",), _data("i2", (20001,), seed=3)),
            "small": (("t",), _data("u1", (20001,), seed=4)),
        }
    )
    encoding = {
        "walk": {"zlib": True, "complevel": 4, "shuffle": True, "chunksizes": (4096, 2)},
        "labels": {"zlib": True, "complevel": 9, "shuffle": False, "chunksizes": (3000,)},
        "small": {"zlib": True, "complevel": 1, "shuffle": True, "chunksizes": (7001,)},
    }
    ds.to_netcdf(path, engine=engine, encoding=encoding)
    with xr.open_dataset(path, engine="h5netcdf") as ref, xr.open_dataset(path, engine="daskh5") as got:
        for name in ds.data_vars:
            np.testing.assert_array_equal(got[name].values, ref[name].values)
        assert float(got.walk.sum()) == pytest.approx(float(ref.walk.sum()))


# -- damaged chunks -------------------------------------------------------------------------------
CHUNK = (1000, 2)
NBYTES = 1000 * 2 * 8


def _damaged(tmp_path, stored: bytes, shuffle=True):
    """A gzip dataset whose chunk (1, 0) holds ``stored`` instead of its deflate stream."""
    path = str(tmp_path / "bad.h5")
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "x", data=_data("f8", (3000, 2)), chunks=CHUNK, compression="gzip", shuffle=shuffle
        )
        ds.id.write_direct_chunk((1000, 0), stored, 0)
    return path


def _stream(nbytes: int, level: int = 4) -> bytes:
    return zlib.compress(np.arange(nbytes // 8, dtype="f8").tobytes()[:nbytes], level)


DAMAGE = {
    "truncated": _stream(NBYTES)[:-9],
    "checksum": _stream(NBYTES)[:-1] + bytes([_stream(NBYTES)[-1] ^ 0xFF]),
    "short": _stream(NBYTES - 8),
    "long": _stream(NBYTES + 8),
    "garbage": np.random.default_rng(5).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
    "empty stream": zlib.compress(b""),
    "not even a header": b"\x78",
}


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_chunks_are_chunk_decode_errors(tmp_path, decoder, damage, shuffle):
    path = _damaged(tmp_path, DAMAGE[damage], shuffle)
    if damage not in ("short", "long"):  # HDF5 refuses the chunk too (a stream of the wrong size it reads)
        with h5py.File(path) as f, pytest.raises(OSError):
            f["x"][...]
    for read in (lambda: _read(path, "/x"), lambda: daskh5.from_pytables(path, "/x")[1500:1600].compute()):
        with pytest.raises(ChunkDecodeError) as err:
            read()
        message = str(err.value)
        assert path in message and "/x" in message and "chunk (1, 0)" in message, message
    # the chunks around it still read
    with h5py.File(path) as f:
        np.testing.assert_array_equal(daskh5.from_pytables(path, "/x")[:1000].compute(), f["x"][:1000])


def test_a_chunk_never_inflates_beyond_its_size(tmp_path, decoder):
    """A 16 KB chunk whose stream inflates to 256 MiB: refused, with memory bounded by the chunk."""
    bomb = zlib.compressobj(9)
    stream = b"".join(bomb.compress(bytes(1 << 20)) for _ in range(256)) + bomb.flush()
    assert len(stream) < 1 << 20
    path = _damaged(tmp_path, stream)
    tracemalloc.start()
    try:
        with pytest.raises(ChunkDecodeError, match="chunk \\(1, 0\\)"):
            _read(path, "/x")
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak


@pytest.mark.parametrize("nbytes", [0, 1, 4095, 1 << 20])
def test_inflate_contract(decoder, nbytes):
    data = np.random.default_rng(6).integers(0, 4, nbytes, dtype=np.uint8).tobytes()
    stream = _deflate.compress(data, 6)
    assert bytes(_deflate.inflate(stream, nbytes)) == data
    out = bytearray(nbytes)
    _deflate.inflate_into(stream, nbytes, out, 1)
    assert bytes(out) == data
    for wrong in {max(nbytes - 1, 0), nbytes + 1} - {nbytes}:
        with pytest.raises(ChunkDecodeError):
            _deflate.inflate(stream, wrong)


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8])
def test_streaming_path_of_large_chunks(decoder, itemsize):
    """Chunks above WHOLE_MAX are inflated piece by piece into the output; small pieces here, so the
    test stays small and every piece boundary case (mid-plane, mid-stream, trailer) is crossed."""
    data = _data("f8", (5000,)).view(np.uint8)[: 5000 * 8 - 8 + itemsize]
    stream = zlib.compress(_deflate.shuffle(data.tobytes(), itemsize).tobytes(), 6)
    out = bytearray(data.size)
    _deflate.stream_into(stream, data.size, out, itemsize, pieces=(333, 777))
    assert bytes(out) == data.tobytes()
    with pytest.raises(ChunkDecodeError):
        _deflate.stream_into(stream, data.size + 1, bytearray(data.size + 1), itemsize, pieces=(333, 777))
    with pytest.raises(ChunkDecodeError):
        _deflate.stream_into(stream[:-3], data.size, out, itemsize, pieces=(333, 777))
    with pytest.raises(ChunkDecodeError):
        _deflate.stream_into(stream, data.size - 1, bytearray(data.size - 1), itemsize, pieces=(333, 777))


@pytest.mark.parametrize("itemsize", [1, 2, 3, 4, 8, 16])
def test_unshuffle_blosc2_and_numpy_agree_with_hdf5s_layout(itemsize):
    raw = np.random.default_rng(7).integers(0, 256, 1000 * itemsize + itemsize - 1, dtype=np.uint8)
    n = raw.size // itemsize
    expected = raw.copy()
    expected[: n * itemsize].reshape(n, itemsize)[...] = raw[: n * itemsize].reshape(itemsize, n).T
    assert _deflate._blosc2_lib() is not None  # the blosc2 wheel's C routine is what reads use
    np.testing.assert_array_equal(_deflate.unshuffle(raw.tobytes(), itemsize), expected)
    np.testing.assert_array_equal(_deflate.shuffle(expected.tobytes(), itemsize), raw)
    got = np.empty_like(raw)
    _deflate._planes(raw.size, itemsize, raw, got, forward=False)
    np.testing.assert_array_equal(got, expected)
    _deflate._planes(expected.size, itemsize, expected, got, forward=True)
    np.testing.assert_array_equal(got, raw)


def test_unknown_or_missing_decoder_is_a_clear_error(tmp_path):
    path = _damaged(tmp_path, _stream(NBYTES))
    with dask.config.set({_deflate.CONFIG_KEY: "zstd"}), pytest.raises(ValueError, match="deflate-decoder"):
        _read(path, "/x")


_HIDDEN = """
import sys
sys.modules["deflate"] = None  # how Python itself marks a module as not importable
sys.modules["isal"] = None
import json, h5py, numpy as np, daskh5
from daskh5 import _deflate
from daskh5.cli import format_info, info
path = sys.argv[1]
got = daskh5.from_pytables(path, "/x").compute()
with h5py.File(path) as f:
    same = bool((got == f["x"][...]).all())
text = format_info(info(path))
print(json.dumps({"decoder": _deflate.decoder_name(), "same": same, "info": text}))
"""


def test_fallback_to_the_standard_library_when_the_fast_packages_are_missing(tmp_path):
    path = str(tmp_path / "x.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=_data("f8", (5000, 2)), chunks=(512, 2), compression="gzip", shuffle=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run(
        [sys.executable, "-c", _HIDDEN, path], capture_output=True, text=True, env=env, check=True
    )
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report == {"decoder": "zlib", "same": True, "info": report["info"]}
    assert "deflate chunks are inflated with zlib" in report["info"]
    # and asking for a missing one by name says what to install
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            _HIDDEN.replace(
                "got = ", "import dask; dask.config.set({'daskh5.deflate-decoder': 'libdeflate'}); got = "
            ),
            path,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode != 0 and "daskh5[fast]" in run.stderr


def test_info_names_the_inflater(tmp_path):
    from daskh5.cli import format_info, info

    path = _damaged(tmp_path, _stream(NBYTES))
    report = info(path)
    assert report["deflate_decoder"] == "libdeflate"
    assert "deflate chunks are inflated with libdeflate" in format_info(report)
    with dask.config.set({_deflate.CONFIG_KEY: "zlib"}):
        assert "inflated with zlib" in format_info(info(path))


# -- writers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", [1, 4, 9])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i2", "f8"])
def test_to_pytables_writes_standard_zlib_streams(tmp_path, level, shuffle, dtype):
    """Compressed by libdeflate in the tasks; h5py, PyTables and netCDF-C read the file."""
    netCDF4 = pytest.importorskip("netCDF4")
    da = pytest.importorskip("dask.array")
    path = str(tmp_path / "w.h5")
    data = _data(dtype, (3001, 3), seed=8)
    filters = tables.Filters(complevel=level, complib="zlib", shuffle=shuffle)
    daskh5.to_pytables(
        da.from_array(data, chunks=(1000, 3)), path, "/x", filters=filters, chunkshape=(256, 3)
    )
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["x"][...], data)
        _mask, stored = f["x"].id.read_direct_chunk((256, 0))
    chunk = np.ascontiguousarray(data[256:512]).view(np.uint8).reshape(-1)
    if shuffle:
        chunk = _deflate.shuffle(chunk, data.dtype.itemsize)
    assert stored == bytes(_deflate._module("libdeflate").zlib_compress(chunk, level))  # libdeflate wrote it
    with tables.open_file(path) as f:
        np.testing.assert_array_equal(f.root.x.read(), data)
    with netCDF4.Dataset(path) as nc:
        np.testing.assert_array_equal(nc["x"][...].data, data)
    np.testing.assert_array_equal(_read(path, "/x"), data)


def test_to_pytables_with_the_zlib_switch_writes_with_zlib(tmp_path):
    da = pytest.importorskip("dask.array")
    path = str(tmp_path / "w.h5")
    data = _data("f8", (2000, 2))
    with dask.config.set({_deflate.CONFIG_KEY: "zlib"}):
        daskh5.to_pytables(
            da.from_array(data, chunks=500),
            path,
            "/x",
            filters=tables.Filters(6, "zlib", shuffle=True),
            chunkshape=(256, 2),
        )
    with h5py.File(path) as f:
        cs = f["x"].chunks
        _mask, stored = f["x"].id.read_direct_chunk((0, 0))
    chunk = _deflate.shuffle(np.ascontiguousarray(data[: cs[0]]).view(np.uint8).reshape(-1), 8)
    assert stored == zlib.compress(chunk.tobytes(), 6)


def test_dataset_writer_output_opens_in_h5netcdf_and_netcdf4(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("netCDF4")
    path = str(tmp_path / "ds.h5")
    ds = xr.Dataset({"walk": (("t", "c"), _data("f8", (5000, 2))), "n": (("t",), _data("i2", (5000,)))})
    for name in ds.data_vars:
        ds[name].encoding.update({"complib": "zlib", "complevel": 5, "shuffle": True})
    daskh5.to_pytables(ds, path)
    with xr.open_dataset(path, engine="daskh5") as back:
        xr.testing.assert_identical(back.load(), ds)
    with h5py.File(path) as f:
        for name in ds.data_vars:
            assert f[name].compression == "gzip"
            np.testing.assert_array_equal(f[name][...], ds[name].values)

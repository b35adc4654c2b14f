"""to_pytables and append: round trips, every scheduler, refusals, and never losing data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import dask
import dask.array as da
import h5py
import hdf5plugin  # noqa: F401  (lets h5py read blosc chunks)
import numpy as np
import pytest
import tables

import daskh5

FILTERS = {
    "default": None,
    "blosc-zstd-bitshuffle": tables.Filters(5, "blosc:zstd", bitshuffle=True),
    "blosc-blosclz": tables.Filters(3, "blosc"),
    "zlib-shuffle": tables.Filters(4, "zlib", shuffle=True),
    "zlib": tables.Filters(1, "zlib", shuffle=False),
    "none": tables.Filters(0),
    "blosc2 (PyTables compresses)": tables.Filters(5, "blosc2:lz4"),
    "fletcher32 (PyTables compresses)": tables.Filters(5, "blosc", fletcher32=True),
}


def read_back(path, node):
    with tables.open_file(path) as f:
        leaf = f.get_node(node)
        return leaf.read(), leaf


@pytest.mark.parametrize("filt", list(FILTERS))
@pytest.mark.parametrize("kind", ["carray", "earray"])
def test_round_trip_filters(h5path, filt, kind):
    x = da.random.default_rng(3).standard_normal((10_007, 3), chunks=(1000, 3)).cumsum(axis=0)
    daskh5.to_pytables(x, h5path, "/r", kind=kind, filters=FILTERS[filt], chunkshape=(512, 3), progress=False)
    got, _ = read_back(h5path, "/r")
    np.testing.assert_array_equal(got, x.compute())
    with tables.open_file(h5path) as f:
        leaf = f.root.r
        assert type(leaf).__name__ == {"carray": "CArray", "earray": "EArray"}[kind]
        assert leaf.chunkshape == (512, 3)
        want = FILTERS[filt] or tables.Filters(5, "blosc:lz4", shuffle=True)
        assert leaf.filters.complevel == want.complevel
        if want.complevel:
            assert leaf.filters.complib == want.complib
    with h5py.File(h5path) as f:  # h5py opens it too
        np.testing.assert_array_equal(f["r"][:], got)
    np.testing.assert_array_equal(daskh5.from_pytables(h5path, "/r").compute(), got)


@pytest.mark.parametrize(
    "dtype", ["bool", "int8", "uint16", "int64", "float16", "float32", "complex128", "S5"]
)
def test_round_trip_dtypes(h5path, dtype, rng):
    data = (
        (rng.normal(size=(3001, 2)) * 50).astype(dtype)
        if dtype != "S5"
        else np.array([[b"ab", b"cdefg"]] * 3001)
    )
    daskh5.to_pytables(data, h5path, "/r", chunkshape=(256, 1), progress=False)
    got, _ = read_back(h5path, "/r")
    assert got.dtype == data.dtype
    np.testing.assert_array_equal(got, data)


@pytest.mark.parametrize("shape", [(7,), (33, 5), (9, 7, 5), (5, 6, 7, 8)])
def test_ranks_and_unaligned_dask_chunks(h5path, shape, rng):
    data = rng.integers(0, 1000, size=shape)
    x = da.from_array(data, chunks=tuple(max(1, s // 3) for s in shape))
    chunkshape = tuple(max(1, s // 2) for s in shape)
    daskh5.to_pytables(x, h5path, "/r", chunkshape=chunkshape, progress=False)
    got, _ = read_back(h5path, "/r")
    np.testing.assert_array_equal(got, data)


def test_default_chunkshape_is_pytables_choice(h5path):
    daskh5.to_pytables(np.zeros((100_000, 2)), h5path, "/r", progress=False)
    with tables.open_file(h5path, "w") as f:
        expected = f.create_carray("/", "c", atom=tables.Float64Atom(), shape=(100_000, 2)).chunkshape
    os.remove(h5path)
    daskh5.to_pytables(np.zeros((100_000, 2)), h5path, "/r", progress=False)
    with tables.open_file(h5path) as f:
        assert f.root.r.chunkshape == expected


def test_title_attrs_parents(h5path):
    daskh5.to_pytables(
        np.arange(10), h5path, "/a/b/r", title="result", attrs={"units": "m", "scale": 2.5}, progress=False
    )
    with tables.open_file(h5path) as f:
        leaf = f.root.a.b.r
        assert leaf.title == "result" and leaf.attrs.units == "m" and leaf.attrs.scale == 2.5


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_schedulers(h5path, scheduler):
    x = da.arange(200_000, chunks=10_000).reshape(-1, 4) ** 2
    with dask.config.set(scheduler=scheduler):
        daskh5.to_pytables(x, h5path, "/r", progress=False)
    got, _ = read_back(h5path, "/r")
    np.testing.assert_array_equal(got, x.compute())


@pytest.mark.cluster
def test_distributed(h5path, cluster_client):
    x = da.random.default_rng(5).random((300_000, 2), chunks=(20_000, 2))
    daskh5.to_pytables(x, h5path, "/r", chunkshape=(4096, 2), progress=False)
    got, _ = read_back(h5path, "/r")
    np.testing.assert_array_equal(got, x.compute(scheduler="sync"))
    daskh5.to_pytables(x, h5path, "/e", kind="earray", progress=False)
    daskh5.append(x[:77_777], h5path, "/e", progress=False)
    got, _ = read_back(h5path, "/e")
    np.testing.assert_array_equal(got, np.concatenate([x.compute(), x[:77_777].compute()]))


def test_compute_false_returns_delayed(h5path):
    x = da.ones((1000, 3), chunks=100)
    job = daskh5.to_pytables(x, h5path, "/r", progress=False, compute=False)
    assert not os.path.exists(h5path)
    job.compute()
    got, _ = read_back(h5path, "/r")
    assert got.sum() == 3000
    job = daskh5.append(x, h5path, "/r", progress=False, compute=False)
    with pytest.raises(daskh5.NodeKindError):  # a CArray cannot grow
        job.compute()


@pytest.mark.parametrize("extdim", [0, 1])
@pytest.mark.parametrize("first", [0, 1, 700, 1024])
def test_append_along_extendable_axis(h5path, extdim, first, rng):
    shape0 = (first, 3) if extdim == 0 else (3, first)
    with tables.open_file(h5path, "w") as f:
        e = f.create_earray(
            "/",
            "e",
            atom=tables.Float32Atom(),
            shape=(0, 3) if extdim == 0 else (3, 0),
            chunkshape=(256, 3) if extdim == 0 else (3, 256),
            filters=tables.Filters(5, "blosc:lz4"),
        )
        start = rng.normal(size=shape0).astype("f4")
        e.append(start)
    more = rng.normal(size=(2000, 3) if extdim == 0 else (3, 2000)).astype("f4")
    daskh5.append(da.from_array(more, chunks=333), h5path, "/e", progress=False)
    got, _ = read_back(h5path, "/e")
    np.testing.assert_array_equal(got, np.concatenate([start, more], axis=extdim))


def test_append_refusals(h5path):
    daskh5.to_pytables(np.zeros((10, 3), "f8"), h5path, "/e", kind="earray", progress=False)
    with pytest.raises(daskh5.IncompatibleArrayError, match="casting='same_kind'"):
        daskh5.append(np.zeros((2, 3), "c16"), h5path, "/e", progress=False)
    with pytest.raises(daskh5.IncompatibleArrayError, match=r"\('n', 3\)"):
        daskh5.append(np.zeros((2, 4)), h5path, "/e", progress=False)
    with pytest.raises(KeyError):
        daskh5.append(np.zeros((2, 3)), h5path, "/nope", progress=False)
    got, _ = read_back(h5path, "/e")
    assert got.shape == (10, 3)


def test_append_casts_as_numpy_does(h5path):
    """``casting=`` has numpy's meaning: same_kind by default, a lossy cast is reported, unsafe on request."""
    daskh5.to_pytables(np.zeros((2, 3), "f4"), h5path, "/f", kind="earray", progress=False)
    with pytest.warns(UserWarning, match="float64 values cast to the EArray's float32"):
        daskh5.append(np.full((2, 3), 1.5), h5path, "/f", progress=False)  # as PyTables would
    daskh5.append(np.full((1, 3), 2, "i2"), h5path, "/f", progress=False)  # safe: nothing said
    with pytest.raises(daskh5.IncompatibleArrayError, match="casting='safe'"):
        daskh5.append(np.ones((1, 3)), h5path, "/f", casting="safe", progress=False)
    daskh5.to_pytables(np.zeros((1, 3), "i4"), h5path, "/i", kind="earray", progress=False)
    with pytest.raises(daskh5.IncompatibleArrayError, match="same_kind"):
        daskh5.append(np.ones((1, 3)), h5path, "/i", progress=False)  # float into int: another kind
    with pytest.warns(UserWarning, match="cast"):
        daskh5.append(np.full((1, 3), 7.9), h5path, "/i", casting="unsafe", progress=False)
    got, _ = read_back(h5path, "/f")
    np.testing.assert_array_equal(got[:, 0], np.array([0, 0, 1.5, 1.5, 2], "f4"))
    assert read_back(h5path, "/i")[0][:, 0].tolist() == [0, 7]


def test_refuse_existing_node_and_replace_only_when_complete(h5path):
    daskh5.to_pytables(np.arange(10), h5path, "/r", progress=False)
    with pytest.raises(daskh5.NodeExistsError, match="overwrite=True"):
        daskh5.to_pytables(np.arange(5), h5path, "/r", progress=False)
    failing = da.from_array(np.arange(100), chunks=10).map_blocks(_fail_on_last_block, dtype=int)
    with pytest.raises(RuntimeError, match="block failed"):
        daskh5.to_pytables(failing, h5path, "/r", overwrite=True, progress=False)
    got, _ = read_back(h5path, "/r")
    np.testing.assert_array_equal(got, np.arange(10))  # the old node survives a failed overwrite
    daskh5.to_pytables(np.arange(5), h5path, "/r", overwrite=True, progress=False)
    got, _ = read_back(h5path, "/r")
    np.testing.assert_array_equal(got, np.arange(5))
    with h5py.File(h5path) as f:
        assert sorted(f) == ["r"]


def _fail_on_last_block(block, block_info=None):
    if block_info[0]["chunk-location"][0] == 9:
        raise RuntimeError("block failed")
    return block


def test_failed_write_into_existing_file_removes_node(h5path):
    daskh5.to_pytables(np.arange(10), h5path, "/keep", progress=False)
    failing = da.from_array(np.arange(100), chunks=10).map_blocks(_fail_on_last_block, dtype=int)
    with pytest.raises(RuntimeError):
        daskh5.to_pytables(failing, h5path, "/new", progress=False)
    with tables.open_file(h5path) as f:
        assert [n._v_name for n in f.walk_nodes("/", "Leaf")] == ["keep"]
        np.testing.assert_array_equal(f.root.keep[:], np.arange(10))


def test_failed_append_truncates_back(h5path):
    daskh5.to_pytables(np.arange(50), h5path, "/e", kind="earray", progress=False)
    failing = da.from_array(np.arange(100), chunks=10).map_blocks(_fail_on_last_block, dtype=int)
    with pytest.raises(RuntimeError):
        daskh5.append(failing, h5path, "/e", progress=False)
    got, _ = read_back(h5path, "/e")
    np.testing.assert_array_equal(got, np.arange(50))


def test_failed_new_file_leaves_nothing(tmp_path):
    failing = da.from_array(np.arange(100), chunks=10).map_blocks(_fail_on_last_block, dtype=int)
    with pytest.raises(RuntimeError):
        daskh5.to_pytables(failing, tmp_path / "new.h5", "/r", progress=False)
    assert os.listdir(tmp_path) == []


def test_refusals(h5path):
    daskh5.to_pytables(np.arange(3), h5path, "/r", progress=False)
    with tables.open_file(h5path) as f:
        with pytest.raises(daskh5.Daskh5Error, match="open in this process"):
            daskh5.to_pytables(np.arange(3), h5path, "/s", progress=False)
        assert f.root.r[:].tolist() == [0, 1, 2]
    with pytest.raises(daskh5.UnsupportedDtypeError, match="object"):
        daskh5.to_pytables(np.array([{}, []], dtype=object), h5path, "/o", progress=False)
    with pytest.raises(ValueError, match="kind"):
        daskh5.to_pytables(np.arange(3), h5path, "/k", kind="table", progress=False)
    with pytest.raises(ValueError, match="0-d"):
        daskh5.to_pytables(np.float64(1), h5path, "/z", progress=False)


def test_progress_bar(h5path, capsys):
    daskh5.to_pytables(da.ones(1000, chunks=100), h5path, "/r")
    assert "writing /r" in capsys.readouterr().err


def test_memory_bounded_by_window(h5path):
    """At most a window of blocks is alive in the writer, whatever the array size."""
    import weakref

    alive = {"now": 0, "max": 0}

    def make(block_id):
        a = np.full((1000, 2), float(block_id))
        alive["now"] += 1
        alive["max"] = max(alive["max"], alive["now"])
        weakref.finalize(a, lambda: alive.__setitem__("now", alive["now"] - 1))
        return a

    blocks = [da.from_delayed(dask.delayed(make)(i), shape=(1000, 2), dtype=float) for i in range(200)]
    x = da.concatenate(blocks)
    with dask.config.set(scheduler="threads", num_workers=2):
        daskh5.to_pytables(x, h5path, "/r", chunkshape=(1000, 2), progress=False)
    assert alive["max"] <= 2 * (2 * 2) + 4  # two windows of 2 x workers blocks, plus the ones in hand
    got, _ = read_back(h5path, "/r")
    np.testing.assert_array_equal(got[::1000, 0], np.arange(200.0))


KILLER = textwrap.dedent(
    """
    import itertools, sys, time, dask.array as da, numpy as np, daskh5

    made = itertools.count()

    def slow(block):
        if next(made) == 20:
            print("writing", flush=True)  # 20 blocks are made: written or in flight
        time.sleep(0.05)
        return block

    x = da.random.default_rng(0).random((40_000_000, 2), chunks=(100_000, 2)).map_blocks(slow, dtype=float)
    daskh5.{call}(x, sys.argv[1], "{node}", progress=False)
    print("finished", flush=True)
    """
)


@pytest.mark.parametrize(("call", "node"), [("to_pytables", "/big"), ("append", "/log")])
def test_sigkill_mid_write_keeps_earlier_data(h5path, call, node):
    keep = np.arange(1000.0)
    with tables.open_file(h5path, "w") as f:
        f.create_carray("/", "keep", obj=keep)
        f.create_earray("/", "log", obj=np.ones((500, 2)))
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLER.format(call=call, node=node), h5path], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-write (400 blocks take 20 s)
    with tables.open_file(h5path) as f:  # the file still opens, with its earlier data
        np.testing.assert_array_equal(f.root.keep[:], keep)
        assert f.root.log.shape[0] >= 500
        np.testing.assert_array_equal(f.root.log[:500], np.ones((500, 2)))
    with h5py.File(h5path) as f:
        np.testing.assert_array_equal(f["keep"][:], keep)
    if call == "append":  # daskh5 shows only the committed rows; the next append drops the partial ones
        np.testing.assert_array_equal(daskh5.from_pytables(h5path, "/log").compute(), np.ones((500, 2)))
        daskh5.append(np.full((10, 2), 7.0), h5path, "/log", progress=False)
        got = daskh5.from_pytables(h5path, "/log").compute()
        np.testing.assert_array_equal(got, np.concatenate([np.ones((500, 2)), np.full((10, 2), 7.0)]))
        with tables.open_file(h5path) as f:
            assert f.root.log.nrows == 510 and "DASKH5_APPENDING" not in f.root.log.attrs


def test_writing_a_file_another_process_holds_open(h5path):
    """HDF5 locks a file another process has open: a clear FileBusyError, the file untouched."""
    with tables.open_file(h5path, "w") as f:
        f.create_carray("/", "keep", obj=np.arange(10.0))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, tables, time; f = tables.open_file(sys.argv[1]); print('open', flush=True); time.sleep(60)",
            h5path,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(daskh5.FileBusyError, match="open in another process"):
            daskh5.to_pytables(np.ones(5), h5path, "/new", progress=False)
    finally:
        holder.kill()
        holder.wait()
    with tables.open_file(h5path) as f:
        assert "/new" not in f and f.root.keep[-1] == 9.0


def test_new_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        daskh5.to_pytables(np.ones(5), str(tmp_path / "a.h5"), "/x", progress=False)
        daskh5.write_ragged([np.ones(2)], str(tmp_path / "b.h5"), "/r", progress=False)
    finally:
        os.umask(old)
    for name in ("a.h5", "b.h5"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_close_files_closes_vlarray_handles(h5path):
    from daskh5 import ragged

    with tables.open_file(h5path, "w") as f:
        vl = f.create_vlarray("/", "vl", atom=tables.Int32Atom())
        vl.append(np.arange(3, dtype=np.int32))
    daskh5.open_ragged(h5path, "/vl")[0]
    assert ragged._vl_files
    daskh5.close_files()
    assert not ragged._vl_files

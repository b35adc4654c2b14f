"""Bad input gets a clear daskh5 error naming the file, the node and what to do."""

from __future__ import annotations

import os
import struct

import h5py
import numpy as np
import pytest
import tables
from conftest import write_node

import daskh5
from daskh5 import errors


@pytest.fixture
def sample_file(h5path):
    rng = np.random.default_rng(1)
    with tables.open_file(h5path, "w") as f:
        f.create_carray(
            "/",
            "data",
            obj=rng.normal(size=(20_000, 2)),
            filters=tables.Filters(5, "blosc:lz4"),
            chunkshape=(1000, 2),
        )
        f.create_carray(
            "/", "zdata", obj=np.arange(20_000.0), filters=tables.Filters(5, "zlib"), chunkshape=(1000,)
        )
        f.create_array("/", "contig", obj=np.arange(20_000.0))
        f.create_table("/", "table", obj=np.zeros(3, dtype=[("x", "f8")]))
        f.create_vlarray("/", "vl", atom=tables.Int32Atom())
        g = f.create_group("/", "group")
        f.create_array(g, "inner", obj=np.arange(3))
    return h5path


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file") as info:
        daskh5.from_pytables(tmp_path / "nope.h5", "/data")
    assert isinstance(info.value, daskh5.Daskh5Error)
    assert "nope.h5" in str(info.value)


@pytest.mark.parametrize("content", [b"", b"hello, I am text\n" * 50])
def test_not_hdf5(tmp_path, content):
    path = tmp_path / "text.h5"
    path.write_bytes(content)
    with pytest.raises(daskh5.NotHDF5Error, match="not an HDF5 file"):
        daskh5.from_pytables(path, "/data")


def test_directory(tmp_path):
    with pytest.raises(daskh5.NotHDF5Error, match="is a directory"):
        daskh5.from_pytables(tmp_path, "/data")


def test_missing_node_lists_nearest(sample_file):
    with pytest.raises(KeyError) as info:
        daskh5.from_pytables(sample_file, "/dtaa")
    msg = str(info.value)
    assert isinstance(info.value, daskh5.NodeNotFound)
    assert "'/dtaa'" in msg and "/data" in msg and sample_file in msg


@pytest.mark.parametrize(
    ("node", "kind", "hint"),
    [
        ("/table", "Table", 'engine="daskh5"'),
        ("/vl", "VLArray", "read_ragged"),
        ("/group", "Group", "leaves"),
    ],
)
def test_wrong_kind_names_the_right_function(sample_file, node, kind, hint):
    with pytest.raises(TypeError) as info:
        daskh5.from_pytables(sample_file, node)
    assert isinstance(info.value, daskh5.NodeKindError)
    msg = str(info.value)
    assert kind in msg and hint in msg and node in msg


def test_compound_dataset_is_refused(h5path):
    with h5py.File(h5path, "w") as f:
        f["rec"] = np.zeros(3, dtype=[("a", "i4"), ("b", "f8")])
        f["vlen"] = np.array([b"a", b"bc"], dtype=h5py.string_dtype("ascii"))
    with pytest.raises(daskh5.UnsupportedDtypeError, match=r"/rec.*compound.*engine"):
        daskh5.from_pytables(h5path, "/rec")
    # variable-length strings are not refused: they are str (issue 13)
    assert daskh5.from_pytables(h5path, "/vlen").compute().tolist() == ["a", "bc"]


def chunk_location(path, node, i=0):
    with h5py.File(path, "r") as f:
        info = f[node].id.get_chunk_info(i)
        return info.byte_offset, info.size


def patch(path, offset, data):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def test_blosc_header_claiming_more_bytes(sample_file):
    x = daskh5.from_pytables(sample_file, "/data", chunks="16KiB")
    off, _ = chunk_location(sample_file, "/data", 3)
    patch(sample_file, off + 4, struct.pack("<I", 1 << 30))  # nbytes in the blosc header
    with pytest.raises(daskh5.ChunkDecodeError) as info:
        x.compute(scheduler="sync")
    msg = str(info.value)
    assert sample_file in msg and "/data" in msg and "chunk (3, 0)" in msg and "blosc header" in msg


def test_blosc_header_claiming_more_compressed_bytes(sample_file):
    off, size = chunk_location(sample_file, "/data", 0)
    patch(sample_file, off + 12, struct.pack("<I", size + 1000))  # cbytes beyond the stored chunk
    with pytest.raises(daskh5.ChunkDecodeError, match="compressed"):
        daskh5.from_pytables(sample_file, "/data").compute()


def test_garbage_zlib_chunk(sample_file):
    off, size = chunk_location(sample_file, "/zdata", 2)
    patch(sample_file, off, os.urandom(size))
    with pytest.raises(daskh5.ChunkDecodeError, match=r"/zdata.*chunk \(2,\)"):
        daskh5.from_pytables(sample_file, "/zdata").compute()


@pytest.mark.parametrize("keep_mtime", [True, False])
def test_chunk_past_end_of_file(sample_file, keep_mtime):
    x = daskh5.from_pytables(sample_file, "/data", chunks="16KiB")
    last_chunk = max(chunk_location(sample_file, "/data", i)[0] for i in range(20))
    st = os.stat(sample_file)
    os.truncate(sample_file, last_chunk + 10)
    if keep_mtime:  # the chunk index the graph holds now points past the end of the file
        os.utime(sample_file, ns=(st.st_atime_ns, st.st_mtime_ns))
        with pytest.raises(daskh5.ChunkDecodeError, match=r"/data chunk \(19, 0\).*truncated"):
            x.compute(scheduler="sync")
    else:  # the worker sees a changed file, re-reads its metadata and finds it cut short
        with pytest.raises(daskh5.NotHDF5Error, match="truncated"):
            x.compute(scheduler="sync")


def test_chunk_index_claiming_a_huge_chunk(h5path):
    """A stored size no file could hold is an error naming the chunk, not a huge allocation."""
    from daskh5._nodes import describe_array
    from daskh5._reader import NodeReader

    write_node(
        h5path, "carray", np.arange(100_000.0), filters=tables.Filters(5, "blosc:lz4"), chunkshape=(1000,)
    )
    reader = NodeReader(describe_array(h5path, "/data"))
    reader.index.sizes[3] = 1 << 40  # what a damaged B-tree entry could say
    with pytest.raises(daskh5.ChunkDecodeError, match=r"/data chunk \(3,\).*chunk index is damaged"):
        reader[:]


def test_truncated_file_at_open(sample_file):
    os.truncate(sample_file, os.path.getsize(sample_file) // 2)
    with pytest.raises(daskh5.NotHDF5Error, match="is a truncated HDF5 file"):
        daskh5.from_pytables(sample_file, "/data")


@pytest.mark.parametrize("keep_mtime", [True, False])
def test_truncated_contiguous_array(sample_file, keep_mtime):
    x = daskh5.from_pytables(sample_file, "/contig")
    with h5py.File(sample_file) as f:
        end = f["contig"].id.get_offset() + 8 * 1000
    st = os.stat(sample_file)
    os.truncate(sample_file, end)
    if keep_mtime:
        os.utime(sample_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    expected = daskh5.ChunkDecodeError if keep_mtime else daskh5.NotHDF5Error
    with pytest.raises(expected, match=r"/contig.*truncated" if keep_mtime else "truncated"):
        x.compute()


def test_file_removed_after_graph_built(sample_file):
    x = daskh5.from_pytables(sample_file, "/data")
    os.remove(sample_file)
    with pytest.raises(FileNotFoundError, match="disappeared"):
        x.compute()


def test_errors_share_one_root():
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), daskh5.Daskh5Error)


def test_missing_node_argument(sample_file):
    with pytest.raises(TypeError, match="node"):
        daskh5.from_pytables(sample_file)


def test_array_not_written_yet_reads_fill(h5path):
    with h5py.File(h5path, "w") as f:
        f.create_dataset("empty", shape=(10, 3), dtype="f4", fillvalue=2.5)  # contiguous, never allocated
    np.testing.assert_array_equal(
        daskh5.from_pytables(h5path, "/empty").compute(), np.full((10, 3), 2.5, "f4")
    )


def test_write_node_helper_rejects_unknown_kind(h5path):
    with pytest.raises(ValueError):
        write_node(h5path, "table", np.zeros(3))


def test_filter_nobody_can_decode_fails_at_creation(h5path):
    """An HDF5 plugin filter with hdf5plugin unavailable: a clear error before any compute."""
    import hdf5plugin

    with h5py.File(h5path, "w") as f:
        f.create_dataset("lz4", data=np.arange(1000), chunks=(100,), **hdf5plugin.LZ4())
    code = f"""
import sys
sys.modules["hdf5plugin"] = None  # as if it were not installed
import daskh5
try:
    daskh5.from_pytables({h5path!r}, "/lz4")
except daskh5.UnsupportedFilterError as exc:
    assert "32004" in str(exc) and "hdf5plugin" in str(exc) and "/lz4" in str(exc), exc
    print("refused")
"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "refused"


def test_time_atoms_are_datetimes_even_unwritten(h5path):
    """Time atoms were refused; now datetime64 (tests/test_pytables_files.py), unwritten chunks the epoch."""
    with tables.open_file(h5path, "w") as f:
        f.create_carray("/", "t", atom=tables.Time64Atom(), shape=(10,))
    x = daskh5.from_pytables(h5path, "/t")
    assert x.dtype == np.dtype("datetime64[us]")
    assert (x.compute() == np.datetime64(0, "us")).all()

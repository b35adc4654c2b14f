"""Selections against numpy as the reference, on every read path."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import tables
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import daskh5
from daskh5._nodes import describe_array
from daskh5._reader import NodeReader

SHAPE = (97, 13, 5)


@pytest.fixture(scope="module")
def files():
    """One node per read path: blosc, blosc2, zlib (chunked), contiguous, and h5py fallback."""
    data = np.arange(np.prod(SHAPE), dtype="int32").reshape(SHAPE) * 3 - 1000
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "sel.h5")
    with tables.open_file(path, "w") as f:
        f.create_carray("/", "blosc", obj=data, filters=tables.Filters(5, "blosc:lz4"), chunkshape=(10, 4, 3))
        f.create_carray("/", "blosc2", obj=data, filters=tables.Filters(5, "blosc2:zstd"))
        f.create_carray("/", "zlib", obj=data, filters=tables.Filters(5, "zlib"), chunkshape=(7, 13, 2))
        f.create_array("/", "contig", obj=data)
        f.create_carray(
            "/", "fletcher", obj=data, filters=tables.Filters(fletcher32=True), chunkshape=(9, 9, 9)
        )
        # chunks of whole rows: the row path (a range of the chunk index, runs read in place)
        f.create_carray(
            "/",
            "rows_blosc",
            obj=data,
            filters=tables.Filters(5, "blosc:lz4", shuffle=True),
            chunkshape=(10, 13, 5),
        )
        f.create_carray(
            "/", "rows_zlib", obj=data, filters=tables.Filters(5, "zlib", shuffle=True), chunkshape=(8, 13, 5)
        )
        f.create_carray("/", "rows_plain", obj=data, chunkshape=(6, 13, 5))
    return path, data


NODES = ["/blosc", "/blosc2", "/zlib", "/contig", "/fletcher", "/rows_blosc", "/rows_zlib", "/rows_plain"]


def axis_index(n):
    """One axis of a selection: int (negative too), slice with any step, or an integer array."""
    return st.one_of(
        st.integers(-n, n - 1),
        st.builds(
            slice,
            st.one_of(st.none(), st.integers(-n - 3, n + 3)),
            st.one_of(st.none(), st.integers(-n - 3, n + 3)),
            st.one_of(st.none(), st.integers(-5, 5).filter(bool)),
        ),
        st.lists(st.integers(-n, n - 1), min_size=0, max_size=6).map(lambda v: np.array(v, dtype=np.int64)),
    )


selections = st.tuples(*(axis_index(n) for n in SHAPE)).flatmap(
    lambda t: st.integers(1, len(t)).map(lambda k: t[:k])
)


def outer(data, key):
    """numpy outer indexing: each axis applied independently (the PyTables/h5py rule)."""
    out = data
    axis = 0
    for k in key:
        if isinstance(k, (int, np.integer)):
            out = np.take(out, k, axis=axis)
            continue
        out = out[(slice(None),) * axis + (k,)]
        axis += 1
    return out


@pytest.mark.parametrize("node", NODES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=selections)
def test_reader_selections_match_numpy(files, node, key):
    path, data = files
    reader = NodeReader(describe_array(path, node))
    np.testing.assert_array_equal(reader[key], outer(data, key))


@pytest.mark.parametrize("node", NODES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=selections,
    chunks=st.sampled_from(["1KiB", "4KiB", (13, 5, 2), (50, -1, 1)]),
)
def test_dask_selections_match_numpy(files, node, key, chunks):
    path, data = files
    # dask 2026.8 itself gets x[-n-1::-1] wrong (numpy gives an empty result, dask the whole
    # axis reversed, for numpy-backed dask arrays too); our own reader is tested on it above.
    assume(
        not any(
            isinstance(k, slice)
            and (k.step or 1) < 0
            and any(v is not None and v < -n for v in (k.start, k.stop))
            for k, n in zip(key, SHAPE, strict=False)
        )
    )
    x = daskh5.from_pytables(path, node, chunks=chunks)
    # dask takes one integer array per indexing call, applied as an outer index
    arrays = [i for i, k in enumerate(key) if isinstance(k, np.ndarray)]
    if len(arrays) > 1:
        key = tuple(
            k if i == arrays[0] or not isinstance(k, np.ndarray) else slice(None) for i, k in enumerate(key)
        )
    np.testing.assert_array_equal(x[key].compute(scheduler="sync"), outer(data, key))


@pytest.mark.parametrize("node", NODES)
def test_ellipsis_bool_and_errors(files, node):
    path, data = files
    reader = NodeReader(describe_array(path, node))
    np.testing.assert_array_equal(reader[..., 1], data[..., 1])
    mask = np.arange(SHAPE[0]) % 3 == 0
    np.testing.assert_array_equal(reader[mask], data[mask])
    np.testing.assert_array_equal(np.asarray(reader), data)
    with pytest.raises(IndexError):
        reader[SHAPE[0]]
    with pytest.raises(IndexError):
        reader[0, 0, 0, 0]
    with pytest.raises(IndexError):
        reader[np.array([0.5])]


@pytest.mark.parametrize(
    "filters", [None, tables.Filters(5, "blosc:lz4", shuffle=True), tables.Filters(3, "zlib")]
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(0, 300),
    length=st.integers(0, 300),
    written=st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_row_path_matches_the_general_path(tmp_path, filters, start, length, written):
    """Row ranges over chunks of whole rows, some never written: same as numpy and as the box path."""
    path = str(tmp_path / "rows.h5")
    data = np.arange(300 * 4, dtype="f8").reshape(300, 4) / 7
    with tables.open_file(path, "w") as f:
        node = f.create_carray(
            "/", "d", atom=tables.Float64Atom(dflt=-1.5), shape=(300, 4), chunkshape=(10, 4), filters=filters
        )
        for k, w in enumerate(written):
            if w:
                node[10 * k : 10 * k + 10] = data[10 * k : 10 * k + 10]
    expected = data.copy()
    for k, w in enumerate(written):
        if not w:
            expected[10 * k : 10 * k + 10] = -1.5
    reader = NodeReader(describe_array(path, "/d"))
    stop = min(300, start + length)
    sel = ((start, max(start, stop)), (0, 4))
    assert reader._whole_rows(sel)
    got = reader[start:stop]
    np.testing.assert_array_equal(got, expected[start:stop])
    index = reader.index
    np.testing.assert_array_equal(reader._read_box(sel, index, None), got)


@pytest.mark.parametrize(
    "piece, direct, gap",
    [(100, 64, 0), (600, 1000, 40), (7, 3, 1 << 20)],
    ids=["rows-bigger-than-a-piece", "pieces-of-rows", "tiny-pieces-big-gaps"],
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=selections)
def test_contiguous_reads_in_bounded_pieces(files, monkeypatch, piece, direct, gap, key):
    """Contiguous nodes read in pieces (rows split one axis down when a row is bigger than a piece)."""
    from daskh5 import _reader

    path, data = files
    monkeypatch.setattr(_reader, "_PIECE", piece)
    monkeypatch.setattr(_reader, "_DIRECT_PIECE", direct)
    monkeypatch.setattr(_reader, "_SPAN_GAP", gap)
    sizes = []
    pread = _reader.pread_exact

    def recorded(path, offset, size, *args, **kwargs):
        sizes.append(size)
        return pread(path, offset, size, *args, **kwargs)

    monkeypatch.setattr(_reader, "pread_exact", recorded)
    reader = NodeReader(describe_array(path, "/contig"))
    np.testing.assert_array_equal(reader[key], outer(data, key))
    assert max(sizes, default=0) <= max(piece, direct, data.itemsize)

"""Per-label statistics (``label_stats``), the xarray/flox route, and ``iter_batches``."""

from __future__ import annotations

import threading
import time

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from conftest import write_node
from hypothesis import given, settings
from hypothesis import strategies as st

import daskh5


def reference(x, labels, ddof=1):
    """Statistics per label the plain numpy way."""
    x = x.reshape(len(x), -1).astype(np.float64)
    out = {k: [] for k in ("labels", "count", "mean", "std", "min", "max", "cov")}
    for label in np.unique(labels):
        rows = x[labels == label]
        out["labels"].append(label)
        out["count"].append(len(rows))
        out["mean"].append(rows.mean(axis=0))
        out["std"].append(rows.std(axis=0, ddof=ddof) if len(rows) > ddof else np.full(x.shape[1], np.nan))
        out["min"].append(rows.min(axis=0))
        out["max"].append(rows.max(axis=0))
        cov = (
            np.cov(rows, rowvar=False, ddof=ddof).reshape(x.shape[1], x.shape[1])
            if len(rows) > ddof
            else None
        )
        out["cov"].append(cov if cov is not None else np.full((x.shape[1],) * 2, np.nan))
    return {k: np.array(v) for k, v in out.items()}


def check(stats, ref):
    np.testing.assert_array_equal(stats.labels, ref["labels"])
    np.testing.assert_array_equal(stats.count, ref["count"])
    for key in ("mean", "std", "cov"):
        np.testing.assert_allclose(getattr(stats, key), ref[key], rtol=1e-9, atol=1e-9)
    for key in ("min", "max"):
        np.testing.assert_array_equal(getattr(stats, key), ref[key])


def clusters(n, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=n)
    centres = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=float)
    return centres[labels] + rng.normal(scale=0.2, size=(n, 2)), labels


def test_label_stats_matches_numpy_on_a_pytables_file(h5path):
    x, labels = clusters(20_000)
    write_node(h5path, "carray", x, chunkshape=(512, 2))
    write_node(h5path, "carray", labels, mode="a", name="clusters")
    data = daskh5.from_pytables(h5path, "/data", chunks="64KiB")  # many blocks
    lab = daskh5.from_pytables(h5path, "/clusters", chunks="16KiB")  # chunked differently
    assert data.numblocks[0] >= 5
    stats = daskh5.label_stats(data, lab, scheduler="threads")
    check(stats, reference(x, labels))
    np.testing.assert_allclose(stats.sum, np.array([x[labels == k].sum(axis=0) for k in range(4)]))
    assert stats.to_dataset()["mean"].shape == (4, 2) and len(stats.to_frame()) == 4
    assert stats.table().count("\n") == 4


def test_label_stats_is_lazy_and_one_pass(h5path):
    x, labels = clusters(5000)
    reads = []
    data = da.from_array(x, chunks=500).map_blocks(lambda b: reads.append(1) or b, meta=np.empty((0, 2)))
    result = daskh5.label_stats(data, labels, compute=False)
    assert reads == []
    stats = dask.compute(result, scheduler="sync")[0]
    assert len(reads) == 10  # every block exactly once
    check(stats, reference(x, labels))


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 300),
    d=st.integers(1, 3),
    chunk=st.integers(1, 120),
    kind=st.sampled_from(["small", "sparse", "negative", "float", "str", "bool"]),
    seed=st.integers(0, 2**16),
)
def test_label_stats_property(n, d, chunk, kind, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * 100 + 1e6  # a large offset: naive sums of squares would lose digits
    pools = {
        "small": np.arange(5),
        "sparse": np.array([3, 10**12, -7]),
        "negative": np.arange(-4, 0),
        "float": np.array([0.5, 2.25, -1.0]),
        "str": np.array(["a", "bb", "c"]),
        "bool": np.array([True, False]),
    }
    labels = rng.choice(pools[kind], size=n)
    stats = daskh5.label_stats(da.from_array(x, chunks=(chunk, d)), da.from_array(labels, chunks=chunk + 3))
    if n == 0:
        assert stats.labels.size == 0 and stats.count.size == 0
        return
    ref = reference(x, labels)
    np.testing.assert_array_equal(stats.labels, ref["labels"])
    np.testing.assert_array_equal(stats.count, ref["count"])
    np.testing.assert_allclose(stats.mean, ref["mean"], rtol=1e-12)
    np.testing.assert_allclose(stats.cov, ref["cov"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(stats.min, ref["min"])


def test_label_stats_bad_input():
    with pytest.raises(ValueError, match="row for row"):
        daskh5.label_stats(np.ones((4, 2)), np.ones(3))
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        daskh5.label_stats(np.ones((4, 2, 2)), np.ones(4))


def test_label_stats_on_a_distributed_cluster(h5path, cluster_client):
    x, labels = clusters(30_000, seed=3)
    write_node(h5path, "carray", x)
    write_node(h5path, "carray", labels.astype(np.int8), mode="a", name="clusters")
    stats = daskh5.label_stats(
        daskh5.from_pytables(h5path, "/data", chunks="100KiB"), daskh5.from_pytables(h5path, "/clusters")
    )
    check(stats, reference(x, labels))


def test_xarray_groupby_route_with_flox(h5path):
    """The documented alternative: the engine plus xarray's groupby (flox), checked against numpy."""
    x, labels = clusters(8000, seed=5)
    write_node(h5path, "carray", x, chunkshape=(256, 2))
    write_node(h5path, "carray", labels, mode="a", name="clusters")
    ds = xr.open_dataset(h5path, engine="daskh5", chunks={})
    known = np.unique(ds.clusters.data).compute()  # the labels, found out of core
    with xr.set_options(use_flox=True):
        grouped = ds.groupby(clusters=xr.groupers.UniqueGrouper(labels=known))
        mean = grouped.mean()["data"]
        assert isinstance(mean.data, da.Array)  # lazy: nothing loaded into memory
        mean, std = mean.compute(), grouped.std(ddof=1)["data"].compute()
        count = grouped.count()["data"].compute()
    ref = reference(x, labels)
    np.testing.assert_allclose(mean.values, ref["mean"])
    np.testing.assert_allclose(std.values, ref["std"])
    np.testing.assert_array_equal(count.values[:, 0], ref["count"])


# -- iter_batches ----------------------------------------------------------------------------------


def test_iter_batches_in_order_and_complete(h5path):
    x = np.arange(1000 * 3, dtype=np.float32).reshape(1000, 3)
    write_node(h5path, "carray", x, chunkshape=(64, 3))
    arr = daskh5.from_pytables(h5path, "/data")
    got = list(daskh5.iter_batches(arr, 128, scheduler="sync"))
    assert [len(b) for b in got] == [128] * 7 + [104]
    np.testing.assert_array_equal(np.concatenate(got), x)
    assert [len(b) for b in daskh5.iter_batches(arr, 128, drop_last=True)] == [128] * 7
    by_bytes = list(daskh5.iter_batches(arr, "1200B", prefetch=0))  # 12 bytes a row -> 100 rows
    assert len(by_bytes[0]) == 100 and len(by_bytes) == 10
    np.testing.assert_array_equal(np.concatenate(list(daskh5.iter_batches(x, 300))), x)  # numpy too


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_iter_batches_holds_at_most_one_plus_prefetch(prefetch):
    """Count batches read but not yet released by the caller: never more than 1 + prefetch."""
    lock = threading.Lock()
    state = {"read": 0, "done": 0, "peak": 0}

    def record(block):
        with lock:
            state["read"] += 1
            state["peak"] = max(state["peak"], state["read"] - state["done"])
        return block

    x = da.arange(40, chunks=4).map_blocks(record, meta=np.empty(0, int))
    seen = []
    for batch in daskh5.iter_batches(x, 4, prefetch=prefetch, scheduler="sync"):
        time.sleep(0.02)  # the caller's work: the reader gets ahead if it may
        seen.append(batch)
        with lock:
            state["done"] += 1
    assert np.concatenate(seen).tolist() == list(range(40))
    assert state["peak"] <= 1 + prefetch
    if prefetch:
        assert state["peak"] == 1 + prefetch  # and it does read ahead


def test_iter_batches_reads_ahead_in_the_background():
    started = []
    x = da.arange(12, chunks=3).map_blocks(
        lambda b: started.append(time.monotonic()) or b, meta=np.empty(0, int)
    )
    it = daskh5.iter_batches(x, 3, prefetch=2, scheduler="sync")
    next(it)
    deadline = time.monotonic() + 5
    while len(started) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(started) == 3  # batches 2 and 3 were read while the caller held batch 1
    it.close()


def test_iter_batches_errors_and_ragged(h5path):
    with pytest.raises(ValueError, match="positive"):
        list(daskh5.iter_batches(np.ones(4), 0))
    with pytest.raises(ValueError, match="more than batch_size"):
        list(daskh5.iter_batches(np.ones((4, 100)), "10B"))
    with pytest.raises(TypeError, match="rows"):
        list(daskh5.iter_batches(np.ones(4), 1.5))
    samples = [np.arange(i) for i in range(1, 30)]
    daskh5.write_ragged(samples, h5path, "/tokens", progress=False)
    batches = list(daskh5.iter_batches(daskh5.open_ragged(h5path, "/tokens"), 10))
    assert [len(b) for b in batches] == [10, 10, 9]
    assert all(np.array_equal(a, b) for a, b in zip([s for b in batches for s in b], samples, strict=True))


def test_label_stats_merges_pieces_within_a_block(monkeypatch):
    """Blocks are reduced in cache-sized pieces; make pieces tiny so every merge path runs."""
    monkeypatch.setattr(daskh5.stats, "_PIECE", 37)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(5000, 3)) * 10 + 1e5
    labels = rng.choice(np.array([2, 9, 40, 41]), size=5000, p=[0.7, 0.2, 0.09, 0.01])
    check(daskh5.label_stats(da.from_array(x, chunks=(2000, 3)), labels), reference(x, labels))


def test_iter_batches_ragged_reads_ahead(h5path):
    samples = [np.arange(i % 7 + 1) for i in range(50)]
    daskh5.write_ragged(samples, h5path, "/s", progress=False)
    r = daskh5.open_ragged(h5path, "/s")
    got = list(daskh5.iter_batches(r, 8, prefetch=2))
    assert [len(b) for b in got] == [8] * 6 + [2]
    assert all(np.array_equal(a, b) for a, b in zip([s for b in got for s in b], samples, strict=True))
    assert [len(b) for b in daskh5.iter_batches(r, 8, drop_last=True)] == [8] * 6
    by_bytes = list(daskh5.iter_batches(r, "64B", prefetch=1))  # whole samples within 64 bytes
    assert sum(len(b) for b in by_bytes) == 50 and len(by_bytes) > 3

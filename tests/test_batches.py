"""Training minibatches: several aligned arrays, shuffled epochs within a window, reads by blocks."""

from __future__ import annotations

import threading
import time
import weakref

import dask.array as da
import numpy as np
import pytest
from conftest import write_node

import daskh5
from daskh5._reader import NodeReader


@pytest.fixture
def carray(h5path):
    """A (6000, 3) float64 CArray in HDF5 chunks of 100 rows; column 0 is the row number."""
    x = np.arange(6000 * 3, dtype=np.float64).reshape(6000, 3) // 3
    write_node(h5path, "carray", x, chunkshape=(100, 3))
    return h5path, x


def _rows(batch) -> np.ndarray:
    return np.asarray(batch[:, 0], dtype=np.int64)


def test_every_row_once_per_epoch_in_a_new_order(carray):
    path, _x = carray
    x = daskh5.from_pytables(path, "/data", chunks=(1000, 3))
    # a 48 KB window: 609 rows of 24 bytes (+ 8 for their order) each, blocks of 100 rows (the HDF5 chunks)
    orders = []
    for epoch_batches in _split_epochs(
        daskh5.iter_batches(x, 64, shuffle=True, seed=3, epochs=3, window="48kB", scheduler="sync"), 6000
    ):
        order = np.concatenate([_rows(b) for b in epoch_batches])
        assert np.array_equal(np.sort(order), np.arange(6000))  # every row exactly once
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    again = np.concatenate(
        [_rows(b) for b in daskh5.iter_batches(x, 64, shuffle=True, seed=3, window="48kB")]
    )
    np.testing.assert_array_equal(again, orders[0])  # the seed makes it reproducible
    other = np.concatenate(
        [_rows(b) for b in daskh5.iter_batches(x, 64, shuffle=True, seed=4, window="48kB")]
    )
    assert not np.array_equal(other, orders[0])


def _split_epochs(batches, n: int):
    epoch, seen = [], 0
    for b in batches:
        epoch.append(b)
        seen += len(b)
        if seen == n:
            yield epoch
            epoch, seen = [], 0
    assert not epoch


def test_shuffle_statistics(carray):
    """Batches mix many blocks; positions in the epoch are unrelated to positions in the file."""
    path, _x = carray
    x = daskh5.from_pytables(path, "/data")
    batches = list(daskh5.iter_batches(x, 64, shuffle=True, seed=0, window="96kB", block_size=100))
    blocks_per_batch = [len(np.unique(_rows(b) // 100)) for b in batches[:-1]]
    # a window holds 1218 rows = 12 blocks: 64 rows drawn from it hit nearly all of them
    assert min(blocks_per_batch) >= 7 and np.mean(blocks_per_batch) > 10
    order = np.concatenate([_rows(b) for b in batches])
    small = np.concatenate(
        [_rows(b) for b in daskh5.iter_batches(x, 64, shuffle=True, seed=0, block_size=20)]
    )
    rank = np.argsort(small)  # where each row was visited: unrelated to where it is (1 in file order)
    assert abs(np.corrcoef(rank, np.arange(6000))[0, 1]) < 0.25  # 300 blocks: 4 standard deviations
    first_block = order[:1200] // 100  # the first window is 12 blocks taken from all over the file
    assert np.ptp(first_block) > 30


def test_shuffled_reads_are_whole_blocks(carray, monkeypatch):
    """One read per block per epoch, never one per row."""
    path, _x = carray
    calls = []
    original = NodeReader.__getitem__

    def counting(self, key):
        out = original(self, key)
        calls.append(len(out))
        return out

    monkeypatch.setattr(NodeReader, "__getitem__", counting)
    x = daskh5.from_pytables(path, "/data", chunks=(1000, 3))
    got = list(daskh5.iter_batches(x, 50, shuffle=True, seed=1, epochs=2, window="48kB", scheduler="sync"))
    assert sum(len(b) for b in got) == 12_000
    assert len(calls) == 2 * 60  # 60 blocks of 100 rows (its HDF5 chunks), each one read
    assert set(calls) == {100}


def test_several_arrays_stay_aligned_and_dicts_give_dicts(h5path):
    n = 500
    labels = np.arange(n) % 7
    samples = [np.full((i % 5 + 1, 2), i, dtype=np.int32) for i in range(n)]
    daskh5.write_ragged(samples, h5path, "/tokens", progress=False)
    r = daskh5.open_ragged(h5path, "/tokens")
    x = da.from_array(np.arange(n, dtype=np.float64) * 2, chunks=60)
    for xb, yb, rb in daskh5.iter_batches((x, labels, r), 32, shuffle=True, seed=5, window="20KiB"):
        rows = (xb / 2).astype(int)
        assert (yb == rows % 7).all()
        assert [int(s[0, 0]) for s in rb] == rows.tolist()
        assert all(s.shape == (row % 5 + 1, 2) for s, row in zip(rb, rows))
    seen = []
    for d in daskh5.iter_batches({"x": x, "y": labels}, 50, shuffle=False):
        assert set(d) == {"x", "y"} and ((d["x"] / 2).astype(int) % 7 == d["y"]).all()
        seen.append(d["y"])
    np.testing.assert_array_equal(np.concatenate(seen), labels)  # in order without shuffle
    ordered = list(daskh5.iter_batches((x, r), 64, epochs=2))
    assert len(ordered) == 16 and [int(s[0, 0]) for s in ordered[8][1][:3]] == [0, 1, 2]


def test_drop_last_and_epochs():
    y = np.arange(1000)
    full = list(daskh5.iter_batches(y, 64, shuffle=True, seed=0, epochs=2, drop_last=True, window=4000))
    assert [len(b) for b in full] == [64] * 30  # 15 full batches an epoch, the 40 left over dropped
    kept = list(daskh5.iter_batches(y, 64, shuffle=True, seed=0, epochs=2, window=4000))
    assert [len(b) for b in kept] == ([64] * 15 + [40]) * 2
    assert [len(b) for b in daskh5.iter_batches(y, 300, epochs=3, drop_last=True)] == [300] * 9


def test_memory_stays_within_the_window(monkeypatch):
    """Count rows held by windows and by reads not yet copied into one: bounded by the window."""
    lock = threading.Lock()
    live = {"window": 0, "window_peak": 0, "read": 0, "read_peak": 0}

    def hold(kind: str, obj, rows: int) -> None:
        with lock:
            live[kind] += rows
            live[f"{kind}_peak"] = max(live[f"{kind}_peak"], live[kind])

        def gone():
            with lock:
                live[kind] -= rows

        weakref.finalize(obj, gone)

    materialize, window_init = daskh5.batches._materialize, daskh5.batches._Window.__init__

    def tracked_materialize(parts, compute_kwargs):
        got = materialize(parts, compute_kwargs)
        for block in got:
            hold("read", block, len(block))
        return got

    def tracked_window(self, parts, ragged):
        window_init(self, parts, ragged)
        if len(parts) == 1:  # not a window joined with the rows carried over: it holds no new memory
            hold("window", self, self.rows)

    monkeypatch.setattr(daskh5.batches, "_materialize", tracked_materialize)
    monkeypatch.setattr(daskh5.batches._Window, "__init__", tracked_window)
    n = 20_000
    x = da.arange(n, chunks=100, dtype=np.int64)
    total = 0
    for batch in daskh5.iter_batches(
        x, 50, shuffle=True, seed=2, window="16kB", prefetch=2, scheduler="threads"
    ):
        time.sleep(0.0005)
        total += len(batch)
    assert total == n
    # two windows of 6500 // 16 = 406 rows of 8 bytes (and their order), and the rows carried over
    assert live["window_peak"] <= 2 * 406 + 50
    assert live["window_peak"] > 406  # and the next window is read while the current one is used
    assert live["read_peak"] <= 100  # reads are copied into the window a group (one block here) at a time


def test_reading_overlaps_the_callers_work():
    started = []
    x = da.arange(4000, chunks=100).map_blocks(lambda b: started.append(1) or b, meta=np.empty(0, int))
    it = daskh5.iter_batches(x, 100, shuffle=True, seed=0, window="16kB", block_size=100, scheduler="sync")
    next(it)  # the first window (4 blocks) was needed for it
    deadline = time.monotonic() + 5
    while len(started) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert len(started) == 8  # the second window was read while the caller held the first batch
    it.close()


def test_errors():
    with pytest.raises(ValueError, match="different numbers of rows"):
        list(daskh5.iter_batches((np.ones(4), np.ones(5)), 2))
    with pytest.raises(ValueError, match="larger window"):
        list(daskh5.iter_batches(np.ones((100, 100)), 50, shuffle=True, window="10KiB"))
    with pytest.raises(ValueError, match="epochs"):
        list(daskh5.iter_batches(np.ones(4), 2, epochs=0))
    with pytest.raises(ValueError, match="block_size"):
        list(daskh5.iter_batches(np.ones(4), 2, shuffle=True, block_size=0))
    with pytest.raises(ValueError, match="at least one array"):
        list(daskh5.iter_batches((), 2))


def test_an_error_in_a_read_reaches_the_caller():
    def boom(block):
        raise RuntimeError("disk on fire")

    x = da.arange(1000, chunks=100).map_blocks(boom, meta=np.empty(0, int))
    with pytest.raises(RuntimeError, match="disk on fire"):
        list(daskh5.iter_batches(x, 10, shuffle=True, window=4000))


@pytest.mark.cluster
def test_shuffled_epochs_on_a_cluster(carray, cluster_client):
    path, _x = carray
    x = daskh5.from_pytables(path, "/data")
    order = np.concatenate(
        [_rows(b) for b in daskh5.iter_batches(x, 128, shuffle=True, seed=9, window="48kB")]
    )
    assert np.array_equal(np.sort(order), np.arange(6000))


def test_an_int_window_is_rows():
    """As in dask, an int is a count: ``window=200`` rows are two windows of 100 (here 10 blocks each)."""
    y = np.arange(1000)
    order = np.concatenate(list(daskh5.iter_batches(y, 10, shuffle=True, seed=0, window=200, block_size=10)))
    assert len(np.unique(order[:100] // 10)) == 10  # the first 100 rows: whole blocks, ten of them
    assert len(np.unique(order[:110] // 10)) > 10
    with pytest.raises(TypeError, match="budget"):
        list(daskh5.iter_batches(y, 10, shuffle=True, window=2.5))

"""Recycled block memory (daskh5._buffers): reused only when nothing can see it, and given back."""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest
import tables
from conftest import write_node

import daskh5
from daskh5 import _buffers
from daskh5._nodes import describe_array
from daskh5._reader import NodeReader


@pytest.fixture
def small_pool(monkeypatch):
    """Pool blocks from 64 KiB, start and end empty; the idle timer never fires within a test (a loaded
    machine made a 0.2 s timer fire between a give-back and the check of it)."""
    monkeypatch.setattr(_buffers, "MIN_BYTES", 1 << 16)
    monkeypatch.setattr(_buffers, "IDLE_SECONDS", 60.0)
    _buffers.release()
    yield
    _buffers.release()


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_memory_is_reused_once_the_block_is_gone(small_pool):
    a = _buffers.empty((1 << 14, 2), np.dtype("f8"))
    where = _address(a)
    b = _buffers.empty((1 << 14, 2), np.dtype("f8"))
    assert _address(b) != where  # a is alive: never handed out twice
    del a
    gc.collect()
    assert _buffers.idle_bytes() == 1 << 18
    c = _buffers.empty((1 << 15,), np.dtype("i8"))  # same size, another shape and dtype
    assert _address(c) == where and _buffers.idle_bytes() == 0


def test_views_keep_the_memory_from_being_reused(small_pool):
    a = _buffers.empty((1 << 14, 2), np.dtype("f8"))
    a[...] = 7.0
    views = [a[5:], a.T, a.reshape(-1)[::3], np.asarray(memoryview(a[1:])), a.view(np.int64)]
    del a
    gc.collect()
    assert _buffers.idle_bytes() == 0  # the views still see it
    others = [_buffers.empty((1 << 14, 2), np.dtype("f8")) for _ in range(3)]
    for o in others:
        o[...] = -1.0
    assert all((np.asarray(v).view(np.float64) == 7.0).all() for v in views[:4])
    del views
    gc.collect()
    assert _buffers.idle_bytes() == 1 << 18


def test_read_blocks_stay_exact_while_memory_is_recycled(small_pool, h5path):
    """Keep every other block alive while reading many more: none is overwritten."""
    data = np.random.default_rng(0).normal(size=(200_000, 2))
    write_node(h5path, "carray", data, filters=tables.Filters(5, "blosc:lz4", shuffle=True))
    reader = NodeReader(describe_array(h5path, "/data"))
    kept = []
    for rep in range(3):
        for s in range(0, 200_000, 10_000):
            block = reader[s : s + 10_000]
            if (s // 10_000) % 2 == rep % 2:
                kept.append((s, block[::2]))  # a view: the block's memory stays in use
    for s, view in kept:
        np.testing.assert_array_equal(view, data[s : s + 10_000 : 2])
    x = daskh5.from_pytables(h5path, "/data", chunks=(10_000, 2))
    assert float(x.sum().compute()) == pytest.approx(data.sum())
    assert float(x.sum().compute()) == float(x.sum().compute())


def test_idle_memory_goes_back(small_pool, monkeypatch):
    monkeypatch.setattr(_buffers, "IDLE_SECONDS", 1.0)
    blocks = [_buffers.empty((1 << 15,), np.dtype("f8")) for _ in range(3)]
    del blocks
    gc.collect()
    assert _buffers.idle_bytes() == 3 << 18
    deadline = time.monotonic() + 10
    while _buffers.idle_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _buffers.idle_bytes() == 0  # the timer dropped them

    block = _buffers.empty((1 << 15,), np.dtype("f8"))
    del block
    gc.collect()
    assert _buffers.idle_bytes() == 1 << 18
    daskh5.close_files()
    assert _buffers.idle_bytes() == 0


def test_at_most_max_idle_buffers_are_kept(small_pool, monkeypatch):
    monkeypatch.setattr(_buffers, "MAX_IDLE", 2)
    blocks = [_buffers.empty((1 << 15,), np.dtype("f8")) for _ in range(5)]
    del blocks
    gc.collect()
    assert _buffers.idle_bytes() == 2 << 18


def test_small_blocks_use_plain_numpy(small_pool):
    a = _buffers.empty((10,), np.dtype("f4"))
    assert a.flags.owndata and a.dtype == np.float32


def test_a_smaller_block_reuses_a_larger_buffer_and_a_miss_drops_idle_memory(small_pool):
    a = _buffers.empty((1 << 15,), np.dtype("f8"))  # 256 KiB
    where = _address(a)
    del a
    gc.collect()
    b = _buffers.empty((3 << 13,), np.dtype("f8"))  # 192 KiB: fits in the idle 256 KiB buffer
    assert _address(b) == where and b.nbytes == 3 << 16
    del b
    gc.collect()
    assert _buffers.idle_bytes() == 1 << 18  # the whole buffer comes back
    c = _buffers.empty((1 << 17,), np.dtype("f8"))  # 1 MiB: no idle buffer holds it
    assert _buffers.idle_bytes() == 0  # dropped before new memory was mapped
    d = _buffers.empty((1 << 16,), np.dtype("f4"))  # 256 KiB, but c's buffer is in use
    assert _address(d) != _address(c)


def test_a_forked_child_does_not_write_into_the_parents_blocks(small_pool):
    a = _buffers.empty((1 << 15,), np.dtype("f8"))
    a[:] = 1.0
    pid = os.fork()
    if pid == 0:  # the child: its writes must stay its own (copy-on-write, not shared memory)
        a[:] = 2.0
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert (a == 1.0).all()


def test_a_buffer_given_back_while_the_pool_is_locked_does_not_deadlock(small_pool):
    """A collection inside a locked section can run a block's finalizer in the same thread."""
    import threading

    holder = [_buffers.empty((1 << 15,), np.dtype("f8"))]

    def body() -> None:
        with _buffers._lock:
            holder.clear()  # the last reference: the finalizer runs here, lock held
            gc.collect()

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "giving a buffer back under the pool's lock deadlocked"
    assert _buffers.idle_bytes() == 1 << 18


def test_no_memory_is_a_memory_error(small_pool, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(_buffers.mmap, "mmap", refuse)
    with pytest.raises(MemoryError, match="cannot allocate"):
        _buffers.empty((1 << 15,), np.dtype("f8"))


def test_an_array_rebuilt_from_base_keeps_the_memory(small_pool):
    """Walking ``.base`` down to the exporter and viewing it again still holds the memory."""
    a = _buffers.empty((1 << 14, 2), np.dtype("f8"))
    a[...] = 3.0
    root = a.base
    while isinstance(root, np.ndarray):
        root = root.base
    rebuilt = np.frombuffer(memoryview(root), np.float64)  # only the exporter, not any array
    del a, root
    gc.collect()
    assert _buffers.idle_bytes() == 0
    other = _buffers.empty((1 << 14, 2), np.dtype("f8"))
    other[...] = -1.0
    assert (rebuilt == 3.0).all()

"""Laziness, picklable graphs, deterministic names and every scheduler."""

from __future__ import annotations

import pickle

import dask
import dask.array as da
import numpy as np
import pytest
import tables

import daskh5
from daskh5 import _reader


@pytest.fixture
def seed_file(h5path):
    """The seed's layout: /data (N, 2) float64 random walk and /clusters (N,) labels."""
    rng = np.random.default_rng(0)
    data = np.cumsum(rng.normal(size=(200_000, 2)), axis=0)
    with tables.open_file(h5path, "w") as f:
        f.create_carray("/", "data", obj=data, filters=tables.Filters(5, "blosc:lz4", shuffle=True))
        f.create_array("/", "contig", obj=data[:5000])
    return h5path, data


class ReadCounter:
    """Counts every way daskh5 touches node data: pread and h5py reads."""

    def __init__(self, monkeypatch):
        self.calls = 0
        for name in ["pread_exact", "_h5_dataset"]:
            original = getattr(_reader, name)
            monkeypatch.setattr(_reader, name, self._wrap(original))

    def _wrap(self, fn):
        def counted(*args, **kwargs):
            self.calls += 1
            return fn(*args, **kwargs)

        return counted


@pytest.mark.parametrize("node", ["/data", "/contig"])
def test_building_graphs_reads_no_data(seed_file, monkeypatch, node):
    path, data = seed_file
    counter = ReadCounter(monkeypatch)
    x = daskh5.from_pytables(path, node, chunks="64KiB")
    graphs = [x.sum(), x[::3] * 2 + 1, x[[5, 1, 9]], da.concatenate([x, x]).mean(axis=0), x.rechunk(1000)]
    for g in graphs:
        g.__dask_graph__()
        dask.optimize(g)
    assert counter.calls == 0
    expected = data if node == "/data" else data[:5000]
    np.testing.assert_allclose(x.sum(axis=0).compute(scheduler="sync"), expected.sum(axis=0))
    assert counter.calls > 0  # the counter does see reads, so zero above means none happened


def test_a_block_reads_only_its_chunks(seed_file, monkeypatch):
    path, data = seed_file
    x = daskh5.from_pytables(path, "/data", chunks="64KiB")
    counter = ReadCounter(monkeypatch)
    np.testing.assert_array_equal(
        x.blocks[3].compute(scheduler="sync"), data[x.chunks[0][0] * 3 :][: x.chunks[0][3]]
    )
    assert 1 <= counter.calls <= 2  # neighbouring chunks come in one pread


def test_graph_is_picklable_plain_data(seed_file):
    path, _ = seed_file
    x = daskh5.from_pytables(path, "/data", chunks="64KiB").sum()
    graph = dict(x.__dask_graph__())
    blob = pickle.dumps(graph)
    assert b"h5py" not in blob and b"tables.file" not in blob
    assert len(blob) < 200_000  # paths, selections and the chunk index, no data


def test_names_are_deterministic(seed_file):
    path, _ = seed_file
    a = daskh5.from_pytables(path, "/data", chunks="64KiB")
    b = daskh5.from_pytables(path, "/data", chunks="64KiB")
    c = daskh5.from_pytables(path, "/data", chunks="128KiB")
    assert a.name == b.name
    assert a.name != c.name
    with tables.open_file(path, "a") as f:
        f.root.data[0] = [1.0, 2.0]  # new mtime: new name
    d = daskh5.from_pytables(path, "/data", chunks="64KiB")
    assert d.name != a.name


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_local_schedulers_agree(seed_file, scheduler):
    path, data = seed_file
    x = daskh5.from_pytables(path, "/data", chunks="256KiB")
    np.testing.assert_array_equal(x.compute(scheduler=scheduler), data)
    np.testing.assert_allclose(x.sum(axis=0).compute(scheduler=scheduler), data.sum(axis=0))


@pytest.mark.cluster
def test_distributed_cluster_with_worker_processes(seed_file, cluster_client):
    path, data = seed_file
    x = daskh5.from_pytables(path, "/data", chunks="256KiB")
    np.testing.assert_array_equal(cluster_client.compute(x).result(), data)
    np.testing.assert_allclose(cluster_client.compute(x.std(axis=0)).result(), data.std(axis=0))
    y = daskh5.from_pytables(path, "/contig", chunks="16KiB")
    np.testing.assert_array_equal(cluster_client.compute(y[::7]).result(), data[:5000:7])
    pids = cluster_client.run(lambda: __import__("os").getpid())
    assert len(set(pids.values())) == 2


def test_tasks_read_in_parallel_threads(seed_file):
    """Threads give identical results when many blocks decode at once."""
    path, data = seed_file
    x = daskh5.from_pytables(path, "/data", chunks="32KiB")
    with dask.config.set(num_workers=8):
        np.testing.assert_array_equal(x.compute(scheduler="threads"), data)

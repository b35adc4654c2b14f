"""Shared fixtures: real files written by PyTables, and a real distributed cluster."""

from __future__ import annotations

import numpy as np
import pytest
import tables


@pytest.fixture
def h5path(tmp_path):
    """A fresh file path in the test's temporary directory."""
    return str(tmp_path / "data.h5")


def write_node(
    path, kind, data, filters=None, chunkshape=None, extdim=0, byteorder=None, mode="w", name="data"
):
    """Write ``data`` as a PyTables node of ``kind`` ("array", "carray", "earray")."""
    with tables.open_file(path, mode) as f:
        if kind == "array":
            f.create_array("/", name, obj=data, byteorder=byteorder)
        elif kind == "carray":
            f.create_carray("/", name, obj=data, filters=filters, chunkshape=chunkshape, byteorder=byteorder)
        elif kind == "earray":
            shape = list(data.shape)
            shape[extdim] = 0
            e = f.create_earray(
                "/",
                name,
                atom=tables.Atom.from_dtype(data.dtype.newbyteorder("=")),
                shape=tuple(shape),
                filters=filters,
                chunkshape=chunkshape,
                byteorder=byteorder,
            )
            e.append(data)
        else:
            raise ValueError(kind)
    return path


def read_reference(path, node="/data"):
    """What PyTables itself reads (the reference every daskh5 read is compared to)."""
    with tables.open_file(path, "r") as f:
        return f.get_node(node).read()


@pytest.fixture(scope="session")
def cluster_client():
    """A real ``distributed.LocalCluster`` with two worker processes."""
    import distributed

    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


#: Parametrized families whose first case runs by default and the rest with ``-m slow`` (each case
#: is a fresh interpreter under resource limits: together they took minutes of the default run).
SLOW_BUT_ONE = {
    "test_write_past_the_file_size_limit_fails_and_changes_nothing",
    "test_in_place_append_past_the_file_size_limit_rolls_back",
    "test_contiguous_node_truncated_under_the_reader",
    "test_names_that_are_not_utf8_read_or_fail_clearly",
}


@pytest.hookimpl(tryfirst=True)  # before pytest's -m selection sees the marks
def pytest_collection_modifyitems(config, items):
    seen = set()
    for item in items:
        name = getattr(item, "originalname", item.name)
        if name in SLOW_BUT_ONE:
            if name in seen:
                item.add_marker(pytest.mark.slow)
            seen.add(name)

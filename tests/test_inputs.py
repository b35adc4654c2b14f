"""Paths and the objects users already hold (PyTables, h5py) are accepted alike; "data" means "/data"."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tables
import xarray as xr
from conftest import write_node

import daskh5


@pytest.fixture
def nested(tmp_path):
    path = str(tmp_path / "f.h5")
    with tables.open_file(path, "w") as f:
        g = f.create_group("/", "grp")
        f.create_carray(g, "data", obj=np.arange(12.0).reshape(6, 2))
    daskh5.write_ragged([np.arange(n) for n in range(1, 5)], path, "/grp/tokens", progress=False)
    return path


def _same(x, expected):
    np.testing.assert_array_equal(x.compute(), expected)


def test_from_pytables_takes_tables_and_h5py_objects(nested):
    expected = np.arange(12.0).reshape(6, 2)
    with tables.open_file(nested) as f:
        _same(daskh5.from_pytables(f, "/grp/data"), expected)
        _same(daskh5.from_pytables(f.root.grp, "data"), expected)  # relative to a group
        _same(daskh5.from_pytables(f.root.grp.data), expected)
    with h5py.File(nested, "r") as f:
        _same(daskh5.from_pytables(f, "grp/data"), expected)
        _same(daskh5.from_pytables(f["grp"], "data"), expected)
        _same(daskh5.from_pytables(f["grp/data"]), expected)
    for node in ("grp/data", "/grp/data", "/grp/data/"):
        _same(daskh5.from_pytables(nested, node), expected)


@pytest.mark.filterwarnings("ignore:.*not opened as variables")
def test_ragged_readers_and_the_engine_take_them_too(nested):
    with h5py.File(nested, "r") as f:
        assert len(daskh5.open_ragged(f["grp"], "tokens")) == 4
        assert daskh5.read_ragged(f, "grp/tokens").map(len).compute() == [1, 2, 3, 4]
        ds = xr.open_dataset(f, engine="daskh5", group="grp")
        assert "data" in ds
    with tables.open_file(nested) as f:
        assert "data" in xr.open_dataset(f.root.grp, engine="daskh5")
    assert daskh5.read_ragged(nested, "grp/tokens").map(len).compute() == [1, 2, 3, 4]
    assert "data" in xr.open_datatree(nested, engine="daskh5", group="grp").to_dataset()


def test_writers_take_relative_node_names(tmp_path):
    path = str(tmp_path / "w.h5")
    daskh5.to_pytables(np.zeros((4, 2)), path, "out", kind="earray", progress=False)
    daskh5.append(np.ones((2, 2)), path, "out", progress=False)
    daskh5.write_ragged([np.arange(3)], path, "grp/tokens", progress=False)
    with tables.open_file(path) as f:
        assert f.root.out.shape == (6, 2) and "/grp/tokens" in f


def test_closed_objects_are_a_clear_error(nested):
    with tables.open_file(nested) as f:
        leaf = f.root.grp.data
    with pytest.raises(daskh5.Daskh5Error, match="closed"):
        daskh5.from_pytables(leaf)
    with h5py.File(nested, "r") as f:
        ds = f["grp/data"]
    with pytest.raises(daskh5.Daskh5Error, match="closed"):
        daskh5.from_pytables(ds)
    with pytest.raises(TypeError, match="expected a file path"):
        daskh5.from_pytables(3.5, "/x")


def test_a_node_of_a_file_being_written_is_flushed_first(h5path):
    write_node(h5path, "earray", np.zeros((3, 2)))
    with tables.open_file(h5path, "a") as f:
        f.root.data.append(np.ones((2, 2)))
        assert daskh5.from_pytables(f.root.data).shape == (5, 2)

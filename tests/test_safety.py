"""Files are data, not code: no daskh5 entry point unpickles anything from a file."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tables

import daskh5


class Trap:
    """Unpickling this creates the marker file (pickling it does nothing)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def hostile(tmp_path):
    path = str(tmp_path / "hostile.h5")
    marker = tmp_path / "pwned"
    with tables.open_file(path, "w") as f:
        f.root._v_attrs.trap = Trap(marker)
        g = f.create_group("/", "group")
        g._v_attrs.trap = Trap(marker)
        data = f.create_carray("/", "data", obj=np.arange(1000.0), filters=tables.Filters(5, "blosc:lz4"))
        data.attrs.trap = Trap(marker)
        arr = f.create_array(g, "contig", obj=np.arange(10))
        arr.attrs.trap = Trap(marker)
        objs = f.create_vlarray("/", "objs", atom=tables.ObjectAtom())
        objs.append(Trap(marker))
    assert not marker.exists()
    return path, marker


def test_the_trap_is_real(hostile):
    """Opening the same file with plain PyTables does run the payload: the test can fail."""
    path, marker = hostile
    code = f"import tables; tables.open_file({path!r}).close()"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert marker.exists()


def test_no_entry_point_unpickles(hostile):
    path, marker = hostile
    np.testing.assert_array_equal(daskh5.from_pytables(path, "/data").compute(), np.arange(1000.0))
    np.testing.assert_array_equal(daskh5.from_pytables(path, "/group/contig").compute(), np.arange(10))
    np.testing.assert_array_equal(
        daskh5.from_pytables(path, "/data", driver="H5FD_CORE").compute(scheduler="processes"),
        np.arange(1000.0),
    )
    for node, error in [
        ("/objs", daskh5.NodeKindError),
        ("/group", daskh5.NodeKindError),
        ("/dat", KeyError),
    ]:
        with pytest.raises(error):
            daskh5.from_pytables(path, node)
    assert not marker.exists()


def test_no_unpickling_in_a_fresh_process(hostile):
    """Nothing daskh5 imports has opened the file with PyTables behind our back."""
    path, marker = hostile
    code = textwrap.dedent(
        f"""
        import daskh5
        x = daskh5.from_pytables({path!r}, "/data", chunks="1KiB")
        assert float(x.sum().compute(scheduler="threads")) == 499500.0
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert not marker.exists()

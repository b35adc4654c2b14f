"""Every file PyTables ships in its own tests folder, and the PyTables formats they stand for (issue 13).

The reference reader of a PyTables file is PyTables: each leaf is read with
it first (into memory; the file is closed before daskh5 opens it), then
through every daskh5 entry point: ``from_pytables`` for arrays,
``open_ragged``/``read_ragged`` for VLArrays, the xarray engine for every
group (arrays and Table columns), ``open_datatree`` and ``daskh5 info``.  A
value daskh5 gives must equal PyTables'; where daskh5 gives none it must say
why in a daskh5 error (or, in a Dataset, a warning naming the node).  Nodes
PyTables itself reads as ``UnImplemented`` are compared with h5py.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import tables
import xarray as xr

import daskh5
from daskh5.cli import main as cli_main

SHIPPED = Path(tables.__file__).parent / "tests"
SHIPPED_FILES = sorted(p.name for p in SHIPPED.glob("*.h5"))

#: (file, node) -> the daskh5 error class expected instead of values, and why.
REFUSED = {
    # PyTables reads IEEE quad precision into x87 long doubles, losing bits; numpy has no quad type.
    ("float.h5", "/quadprecision"): daskh5.UnsupportedDtypeError,
    # an external link: refused by default (see test_external_link_file_with_opt_in)
    ("elink.h5", "/pep/pep2"): daskh5.ExternalDataError,
}

#: Files whose reference is h5py: PyTables itself corrupts its heap reading them (measured: reading
#: nested-type-with-gaps.h5's table a few times aborts the process with "corrupted double-linked list";
#: the table's compound type has gaps, and PyTables reads records into a packed buffer).
H5PY_REFERENCE = {"nested-type-with-gaps.h5"}


def _hidden(path: str) -> bool:
    return any(part.startswith("_i_") for part in path.split("/"))


def _numpy(leaf, value):
    """A leaf's value as numpy, whatever flavor (``python``, ``numeric``) it was stored with."""
    if isinstance(value, np.ndarray):
        return value
    return np.array(value, dtype=leaf.atom.dtype.base if leaf.atom.shape else leaf.atom.dtype)


def _references(path: str) -> tuple[dict, list[str]]:
    """{leaf path: (kind, value or the exception PyTables raised)}, and the group paths."""
    leaves, groups = {}, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTables' FlavorWarning, "UnImplemented" notes, old formats
        with tables.open_file(path) as f:
            for node in f.walk_nodes("/"):
                name = node._v_pathname
                if _hidden(name):
                    continue
                if isinstance(node, tables.Group):
                    groups.append(name)
                    continue
                if isinstance(node, tables.link.Link):
                    leaves[name] = ("Link", None)
                    continue
                try:
                    if isinstance(node, tables.UnImplemented) or os.path.basename(path) in H5PY_REFERENCE:
                        with h5py.File(path, "r", locking=False) as h:
                            value = h[name][()]
                    elif isinstance(node, tables.VLArray):
                        value = node.read()
                    elif isinstance(node, tables.Table):
                        value = node.read()
                    else:
                        value = _numpy(node, node.read())
                except Exception as exc:  # PyTables lacks a filter (szip, lzo): h5py, or nothing
                    value = _h5py_value(path, name, exc)
                leaves[name] = (type(node).__name__, value)
    return leaves, groups


def _h5py_value(path: str, name: str, exc: Exception):
    try:
        with h5py.File(path, "r", locking=False) as h:
            return h[name][()]
    except Exception:
        return exc


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    got, want = np.asarray(got), np.asarray(want)
    if got.dtype.kind == "M" and want.dtype.kind in "iuf":  # PyTables gives Time atoms as seconds
        micros = got.astype("datetime64[us]").astype(np.int64)
        return got.shape == want.shape and np.allclose(micros / 1e6, want, rtol=0, atol=1e-6)
    if got.dtype.kind in "OU" and want.dtype.kind in "OS":  # strings: h5py gives bytes, daskh5 str
        enc = [v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v for v in got.reshape(-1)]
        return got.shape == want.shape and enc == list(want.reshape(-1))
    if got.shape != want.shape or got.dtype != want.dtype.newbyteorder("="):
        return False
    return np.array_equal(got, want, equal_nan=got.dtype.kind in "fc")


def _check_arrays(path, name, kind, want):
    if kind not in ("Array", "CArray", "EArray", "UnImplemented"):
        return
    expected = REFUSED.get((os.path.basename(path), name))
    if isinstance(want, Exception) or expected is not None:
        with pytest.raises(expected or daskh5.Daskh5Error) as info:
            daskh5.from_pytables(path, name).compute()
        assert name in str(info.value) or path in str(info.value)
        return
    try:
        got = daskh5.from_pytables(path, name).compute()
    except daskh5.Daskh5Error as exc:
        assert kind == "UnImplemented", f"{name}: {exc}"  # PyTables cannot read it either
        return
    assert _same(got, want), f"{path}:{name}: {got!r} != {want!r}"


def _check_ragged(path, name, kind, want):
    if kind != "VLArray":
        return
    rows = list(daskh5.open_ragged(path, name))
    bag = daskh5.read_ragged(path, name).compute()
    assert len(rows) == len(bag) == len(want)
    for i, (a, b, w) in enumerate(zip(rows, bag, want)):
        if isinstance(w, (str, bytes)):
            assert a == b == w, (name, i)
        else:
            w = _numpy_row(w)
            assert _same(a, w) and _same(b, w), (name, i, a, w)


def _numpy_row(w):
    if isinstance(w, np.ndarray):
        return w
    return np.array(w)  # the python flavor: lists


def _check_group(path, group, leaves, dropped):
    """Every leaf of ``group`` is a variable equal to PyTables' values, or named in the warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = xr.open_dataset(path, engine="daskh5", group=group, decode_cf=False)
        except daskh5.ExternalDataError:
            assert any(k == "Link" for k, _ in leaves.values())
            return
        ds.load()
    notes = " ".join(str(w.message) for w in caught)
    seen = set()
    for var_name, var in ds.variables.items():
        # xarray replaces the encoding of variables it decodes eagerly (scalar strings): by name then
        source = var.encoding.get("source_node") or f"{group.rstrip('/')}/{var_name}"
        if source is None or source not in leaves:
            continue
        seen.add(source)
        kind, want = leaves[source]
        if not isinstance(want, Exception):
            want = np.asarray(want)
        if isinstance(want, Exception):
            raise AssertionError(f"{path}:{source}: PyTables cannot read it but daskh5 gave values")
        if want.dtype.names is not None:  # a Table, or a compound dataset PyTables left UnImplemented
            field = _field(var_name, source, want.dtype)
            want = want[field[0]]
            for part in field[1:]:
                want = want[part]
        assert _same(var.values, want), f"{path}:{source} ({var_name})"
    for name, (kind, _) in leaves.items():
        if (name.rsplit("/", 1)[0] or "/") != group or name in seen or kind == "Link":
            continue
        assert name in notes or name in dropped, f"{path}:{name} ({kind}) is neither a variable nor named"


def _field(var_name: str, source: str, dtype: np.dtype) -> tuple[str, ...]:
    """The (nested) field of a Table that the variable ``var_name`` holds."""
    parts = tuple(var_name.split("."))
    table = source.rsplit("/", 1)[-1]
    if parts[0] == table and parts[0] not in (dtype.names or ()):
        parts = parts[1:]
    return parts


def _objects(path: str, groups) -> set:
    with h5py.File(path, "r", locking=False) as h:
        return {h5py.h5o.get_info(h[g].id).addr for g in groups}


def _check_info(path, leaves):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = cli_main(["info", path])
    text = out.getvalue()
    assert rc == 0, text
    for name in leaves:
        assert name.rsplit("/", 1)[-1] in text, name
    assert "_i_" not in text


def check_file(path: str) -> None:
    leaves, groups = _references(path)
    for name, (kind, want) in leaves.items():
        _check_arrays(path, name, kind, want)
        _check_ragged(path, name, kind, want)
    unreadable = {n for n, (k, w) in leaves.items() if isinstance(w, Exception)}
    for group in groups:
        _check_group(path, group, leaves, unreadable)
    try:
        tree = xr.open_datatree(path, engine="daskh5")
    except daskh5.ExternalDataError:
        assert any(k == "Link" for k, _ in leaves.values())
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the same notes as the groups'
            tree.load()
        shown = {n.path for n in tree.subtree}
        assert shown <= set(groups)
        assert _objects(path, shown) == _objects(path, groups)  # hard links to one group: shown once
    _check_info(path, leaves)
    daskh5.close_files()


@pytest.mark.parametrize("name", SHIPPED_FILES)
def test_shipped_file(tmp_path, name):
    """Each .h5 file of the installed PyTables' tests folder, through every entry point."""
    shutil.copy(SHIPPED / name, tmp_path / name)
    if name == "elink.h5":
        shutil.copy(SHIPPED / "elink2.h5", tmp_path / "elink2.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the Dataset notes, checked in _check_group
        check_file(str(tmp_path / name))


def test_shipped_files_are_found():
    assert len(SHIPPED_FILES) >= 40  # the test above is not vacuous


def test_external_link_file_with_opt_in(tmp_path):
    shutil.copy(SHIPPED / "elink.h5", tmp_path / "elink.h5")
    shutil.copy(SHIPPED / "elink2.h5", tmp_path / "elink2.h5")
    path = str(tmp_path / "elink.h5")
    with pytest.raises(daskh5.ExternalDataError, match=r"elink2\.h5"):
        xr.open_dataset(path, engine="daskh5", group="/pep")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tree = xr.open_datatree(path, engine="daskh5", allow_external=True)
    assert "/pep/pep2" in {n.path for n in tree.subtree}


# -- PyTables atoms and layouts, one regression test each --------------------------------------------


@pytest.fixture
def atoms(tmp_path):
    path = str(tmp_path / "atoms.h5")
    rng = np.random.default_rng(0)
    with tables.open_file(path, "w") as f:
        ca = f.create_carray(
            "/", "ca", atom=tables.Float64Atom(shape=(2, 3)), shape=(1000,), chunkshape=(64,),
            filters=tables.Filters(5, "blosc:lz4"),
        )  # fmt: skip
        ca[:] = rng.standard_normal((1000, 2, 3))
        ea = f.create_earray("/", "ea", atom=tables.Int16Atom(shape=(4,)), shape=(0,), chunkshape=(100,),
                             filters=tables.Filters(1))  # fmt: skip
        ea.append(np.arange(4000, dtype="i2").reshape(-1, 4))
        ba = f.create_carray("/", "ba", atom=tables.BoolAtom(shape=(3,)), shape=(50,), chunkshape=(7,))
        ba[:] = rng.random((50, 3)) > 0.5
        arr = f.create_array("/", "contig", atom=tables.Float32Atom(shape=(3,)), shape=(20,))
        arr[:] = rng.standard_normal((20, 3)).astype("f4")
        t32 = f.create_earray("/", "t32", tables.Time32Atom(), shape=(0,), chunkshape=(4,))
        t32.append(np.array([0, 1, 1_700_000_000, -86400], "i4"))
        t64 = f.create_earray("/", "t64", tables.Time64Atom(shape=(2,)), shape=(0,), byteorder="big")
        t64.append(np.array([[0.5, 1.25], [1.7e9 + 0.000001, -1.5]]))
    return path


@pytest.mark.parametrize("node", ["/ca", "/ea", "/ba", "/contig"])
def test_shaped_atoms_are_trailing_axes(atoms, node):
    """An H5T_ARRAY element type reads as trailing axes, chunk by chunk (was: UnsupportedDtypeError)."""
    with tables.open_file(atoms) as f:
        want = f.get_node(node).read()
    x = daskh5.from_pytables(atoms, node, chunks="4KiB")
    assert x.shape == want.shape and x.dtype == want.dtype
    np.testing.assert_array_equal(x.compute(), want)
    np.testing.assert_array_equal(x[5:37:3, ..., 1].compute(), want[5:37:3, ..., 1])
    np.testing.assert_array_equal(x[[3, 1, 17]].compute(), want[[3, 1, 17]])


@pytest.mark.parametrize("node", ["/t32", "/t64"])
def test_time_atoms_are_datetimes(atoms, node):
    """Time32/Time64 arrays are datetime64 of the instants PyTables gives as seconds (was: refused)."""
    with tables.open_file(atoms) as f:
        seconds = f.get_node(node).read()
    x = daskh5.from_pytables(atoms, node)
    assert x.dtype == np.dtype("datetime64[s]" if node == "/t32" else "datetime64[us]")
    assert _same(x.compute(), seconds)
    ds = xr.open_dataset(atoms, engine="daskh5")
    assert _same(ds[node[1:]].values, seconds)


def test_vlstring_and_vlunicode_rows_are_strings(tmp_path):
    """VLStringAtom rows are bytes and VLUnicodeAtom rows str, as PyTables reads them (was: refused)."""
    path = str(tmp_path / "vlstr.h5")
    as_bytes = [b"", b"abc", "h\u00e9llo".encode(), b"\x00\xff raw", b"x" * 1000]
    as_text = ["", "abc", "h\u00e9llo \u210f", "\U0001f600 emoji", "y" * 500]
    with tables.open_file(path, "w") as f:
        vb = f.create_vlarray(
            "/", "vb", tables.VLStringAtom(), filters=tables.Filters(5, "blosc:lz4"), chunkshape=2
        )
        for row in as_bytes:
            vb.append(row)
        vu = f.create_vlarray("/", "vu", tables.VLUnicodeAtom(), chunkshape=3, byteorder="big")
        for row in as_text:
            vu.append(row)
    with tables.open_file(path) as f:
        assert f.root.vb.read() == as_bytes and f.root.vu.read() == as_text  # the reference agrees
    for node, want in (("/vb", as_bytes), ("/vu", as_text)):
        r = daskh5.open_ragged(path, node)
        assert r.dtype == np.dtype(type(want[0])) and r.ndim == 0
        assert list(r) == want and r[[4, 1, 1]] == [want[4], want[1], want[1]] and r[3] == want[3]
        assert r.lengths.tolist() == [len(w) for w in want]
        assert daskh5.read_ragged(path, node, partition_size=2).compute() == want
        assert r.to_awkward().tolist() == want
        with pytest.raises(TypeError, match="one string per row"):
            r.pad()


def test_time_and_big_endian_vlarrays(tmp_path):
    """Rows h5py cannot read (Time atoms) or reads unswapped (big-endian) equal PyTables'."""
    path = str(tmp_path / "vltime.h5")
    with tables.open_file(path, "w") as f:
        t64 = f.create_vlarray("/", "t64", tables.Time64Atom(), chunkshape=2, byteorder="big")
        for row in ([1.5e9, 1.6e9 + 0.25], [7.0], [0.0, -1.0, 2.000001]):
            t64.append(np.array(row))
        t32 = f.create_vlarray("/", "t32", tables.Time32Atom(shape=(2,)), filters=tables.Filters(1))
        t32.append(np.array([[1, 2], [3, 4]], "i4"))
        t32.append(np.zeros((0, 2), "i4"))
        t32.append(np.array([[2**31 - 1, -5]], "i4"))
        be = f.create_vlarray("/", "be", tables.Int32Atom(), byteorder="big", chunkshape=2)
        for row in ([1, 2, 3], [256], [], [-7]):
            be.append(np.array(row, "i4"))
        shaped = f.create_vlarray("/", "shaped", tables.Float64Atom(shape=(2,)), byteorder="big")
        shaped.append(np.array([[1.5, 2.0], [-3.0, 4.25]]))
    with tables.open_file(path) as f:
        want = {n: f.get_node("/" + n).read() for n in ("t64", "t32", "be", "shaped")}
    for node, rows in want.items():
        r = daskh5.open_ragged(path, "/" + node)
        got, bag = list(r), daskh5.read_ragged(path, "/" + node).compute()
        assert len(got) == len(bag) == len(rows)
        for a, b, w in zip(got, bag, rows):
            assert _same(a, w) and _same(b, w), (node, a, w)
        assert _same(r[[len(rows) - 1, 0]][1], rows[0])
    assert daskh5.open_ragged(path, "/t64").dtype == np.dtype("datetime64[us]")


def test_damaged_heap_is_a_clear_error(tmp_path):
    """A VLArray whose heap collection was overwritten: a daskh5 error naming file and node."""
    path = str(tmp_path / "heap.h5")
    with tables.open_file(path, "w") as f:
        v = f.create_vlarray("/", "t", tables.Time32Atom())
        v.append(np.array([1, 2, 3], "i4"))
    raw = bytearray(Path(path).read_bytes())
    at = raw.index(b"GCOL")
    raw[at : at + 4] = b"XXXX"
    Path(path).write_bytes(bytes(raw))
    with pytest.raises(daskh5.RaggedLayoutError, match=r"heap\.h5:/t.*global heap"):
        list(daskh5.open_ragged(path, "/t"))


def test_vlen_strings_as_dask_array(tmp_path):
    """An h5py variable-length string dataset is a dask array of str (was: UnsupportedDtypeError)."""
    path = str(tmp_path / "s.h5")
    names = np.array(["a", "h\u00e9llo", "", " x" * 50] * 100, dtype=object)
    with h5py.File(path, "w") as h:
        h.create_dataset("names", data=names, dtype=h5py.string_dtype(), chunks=(64,), compression="gzip")
        h.create_dataset("one", data="one", dtype=h5py.string_dtype())
    x = daskh5.from_pytables(path, "/names", chunks=100)
    assert x.dtype == object and x.chunks == ((100,) * 4,)
    assert x.compute().tolist() == names.tolist() and x[1:3].compute().tolist() == ["h\u00e9llo", ""]
    assert daskh5.from_pytables(path, "/one").compute() == "one"


def test_compound_with_vlen_members(tmp_path):
    """A compound dataset with a vlen string member (h5py, C): str column; other vlen members named."""
    path = str(tmp_path / "compound.h5")
    dt = np.dtype(
        [("id", "<i4"), ("name", h5py.string_dtype()), ("seq", h5py.vlen_dtype("i4")), ("x", "<f8")]
    )
    data = np.empty(5, dt)
    data["id"], data["x"] = np.arange(5), np.linspace(0, 1, 5)
    data["name"] = ["a", "bb", "", "d\u00e9", "e"]
    for i in range(5):
        data["seq"][i] = np.arange(i, dtype="i4")
    with h5py.File(path, "w") as h:
        h.create_dataset("c", data=data, chunks=(2,))
    with pytest.warns(UserWarning, match=r"/c column 'seq'"):
        ds = xr.open_dataset(path, engine="daskh5")
    assert sorted(ds.data_vars) == ["id", "name", "x"]
    assert ds.name.values.tolist() == ["a", "bb", "", "d\u00e9", "e"]
    np.testing.assert_array_equal(ds.x.values, data["x"])
    with pytest.warns(UserWarning):
        lazy = xr.open_dataset(path, engine="daskh5", chunks={})
    assert lazy.name[3].values == "d\u00e9"


def test_pytables_1x_extdim_array(tmp_path):
    """PyTables 1.x stored EXTDIM as a 1-element array (was: TypeError)."""
    path = str(tmp_path / "old.h5")
    with tables.open_file(path, "w") as f:
        e = f.create_earray("/", "e", tables.Float64Atom(), shape=(3, 0), chunkshape=(3, 4))
        e.append(np.arange(30.0).reshape(3, 10))
    with h5py.File(path, "a") as h:
        h["e"].attrs["EXTDIM"] = np.array([1], dtype="i4")
    with tables.open_file(path) as f:
        assert f.root.e.extdim == 1
        want = f.root.e.read()
    np.testing.assert_array_equal(daskh5.from_pytables(path, "/e").compute(), want)
    assert xr.open_dataset(path, engine="daskh5").e.shape == (3, 10)
    daskh5.append(np.ones((3, 2)), path, "/e")
    assert daskh5.from_pytables(path, "/e").shape == (3, 12)


_WRITER = """
import sys, time, numpy as np, tables
f = tables.open_file(sys.argv[1], "a")
f.root.e.append(np.ones((50_000, 4)))
f.create_array("/", "late", obj=np.arange(3))
open(sys.argv[1] + ".ready", "w").close()
time.sleep(60)
"""


def test_file_being_written_by_another_process(tmp_path):
    """A reader of a file another process is writing is told so, not "damaged, re-copy"."""
    path = str(tmp_path / "busy.h5")
    with tables.open_file(path, "w") as f:
        f.create_earray("/", "e", tables.Float64Atom(), shape=(0, 4), chunkshape=(256, 4)).append(
            np.zeros((10, 4))
        )
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, path])
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(path + ".ready"):
            assert writer.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(daskh5.NodeNotFound, match=r"being written right now.*daskh5\.append"):
            daskh5.from_pytables(path, "/late")
        os.truncate(path, 1000)  # what a reader may see mid-flush: metadata past the end
        with pytest.raises(daskh5.NotHDF5Error, match="being written right now") as info:
            daskh5.from_pytables(path, "/e")
        assert "re-copy" not in str(info.value)
    finally:
        writer.kill()
        writer.wait()
    daskh5.close_files()


def test_overlapping_heap_collections_are_refused(tmp_path):
    """Crafted rows naming thousands of overlapping heap collections: refused before the file is
    read again and again (each claims the rest of the file)."""
    from daskh5 import _vlen

    path = tmp_path / "heaps.bin"
    size, step = 1 << 16, 48  # each: a header, object 1 (4 bytes, padded to 8), then free space
    raw = bytearray(size)
    for at in range(0, size - 64, step):
        raw[at : at + 16] = b"GCOL\x01\x00\x00\x00" + (size - at).to_bytes(8, "little")
        raw[at + 16 : at + 40] = b"\x01\x00\x01\x00\x00\x00\x00\x00" + (4).to_bytes(8, "little") + b"\x07" * 8
    path.write_bytes(bytes(raw))
    desc = np.zeros(len(range(0, size - 64, step)), _vlen.descriptor_dtype(8))
    desc["length"], desc["index"] = 1, 1
    desc["collection"] = [at.to_bytes(8, "little") for at in range(0, size - 64, step)]
    assert _vlen.heap_rows(str(path), "heaps.bin:/v", desc[:1], 4, (8, 8)) == [b"\x07" * 4]  # one is fine
    with pytest.raises(daskh5.RaggedLayoutError, match="overlap"):
        _vlen.heap_rows(str(path), "heaps.bin:/v", desc, 4, (8, 8))


def test_dangling_external_link_with_opt_in_is_listed(tmp_path, capsys):
    """With allow_external, an external link into a missing file is named, the rest opens (was: FileNotFound)."""
    path = str(tmp_path / "dangling.h5")
    with h5py.File(path, "w") as f:
        f["a"] = np.arange(3)
        f["e"] = h5py.ExternalLink("nofile.h5", "/x")
        f["g/b"] = 1.5
        f["g/e2"] = h5py.ExternalLink("nofile.h5", "/grp")
    with pytest.warns(
        UserWarning, match=r"/e \(an external link to '/x' in 'nofile\.h5', a file that does not"
    ):
        ds = xr.open_dataset(path, engine="daskh5", allow_external=True)
    assert ds.a.values.tolist() == [0, 1, 2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tree = xr.open_datatree(path, engine="daskh5", allow_external=True)
    notes = " ".join(str(w.message) for w in caught)
    assert "/e (an external link" in notes and "/g/e2 (an external link" in notes
    assert {n.path for n in tree.subtree} == {"/", "/g"} and float(tree["g"].b) == 1.5
    with pytest.raises(daskh5.ExternalDataError):  # without the opt-in: refused, as every external link
        xr.open_dataset(path, engine="daskh5")
    assert cli_main(["info", path, "--allow-external"]) == 0
    out = capsys.readouterr().out
    assert "e2" in out and out.count("dangling: ") == 2

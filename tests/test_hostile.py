"""Hostile and damaged files: every entry point gives a clear daskh5 error or correct data, and runs no code.

The corpus (``tests/corpus.py``) damages real PyTables files in every way the
format allows (truncation, flipped payload and metadata bytes, lying blosc
headers, chunk index entries past the end of the file, files that are not HDF5
at all) and runs ``from_pytables``, ``read_ragged``, ``open_ragged``, the xarray
engine (``open_dataset`` and ``open_datatree``) and ``daskh5 info`` (text and
``--json``) on every variant in worker subprocesses, so a segfault or a hang is
an outcome, not the end of the test run.  ``pytest -s`` prints the outcome table;
it is also written to ``summary.json`` in the corpus directory.

Pickled payloads (attributes of the root, of groups and of nodes, ObjectAtom
rows, pandas metadata) are traps that create a marker file when unpickled: no
entry point (readers, the xarray engine with and without ``decode_pickles``,
the command line, the writers appending to such a file) may create one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import corpus
import numpy as np
import pytest
import tables

import daskh5


# -- the damaged corpus -------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def hostile_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile-corpus")
    bases, variants = corpus.generate(out)
    return out, bases, variants


@pytest.fixture(scope="session")
def matrix(hostile_corpus):
    out, _bases, variants = hostile_corpus
    m = corpus.check(variants, timeout=60.0, workers=2)
    summary = m.summary()
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "rows.json").write_text(json.dumps(m.rows, indent=1))
    print(f"\n{m.table()}\n(summary: {out / 'summary.json'}; every check: {out / 'rows.json'})")
    return m


def _listing(rows: list[dict]) -> str:
    """Bad checks grouped by root cause (with an example each), then every one of them."""
    causes = [
        f"  {g['checks']:>3} x {g['what']} at {g['where'] or '?'}\n        e.g. {g['example']}: {g['detail']}"
        for g in corpus.root_causes(rows)
    ]
    every = [f"  {r['outcome']}: {r['variant']} x {r['entry']}" for r in rows]
    return "by root cause:\n" + "\n".join(causes) + "\nevery check:\n" + "\n".join(every)


def test_harness_sees_crashes_overruns_and_hangs(tmp_path):
    """The checker is not blind: a segfault, a heap overrun and a hang are outcomes, and it goes on."""
    tasks = [
        {"variant": "selftest", "entry": f"_selftest-{what}", "path": str(tmp_path), "node": None}
        for what in ("segfault", "overrun", "hang", "nothing")
    ]
    raw = corpus.run_tasks(tasks, timeout=3.0, workers=1)
    assert [r["status"] for r in raw] == ["died", "died", "timeout", "ok"], raw
    assert raw[0]["returncode"] == -11 and "string_at" in corpus.where(raw[0])
    assert raw[1]["returncode"] == -6 and "bad trailing pad byte" in raw[1]["stderr"]  # PYTHONMALLOC=debug


def test_corpus_covers_every_kind_of_damage(hostile_corpus):
    _out, bases, variants = hostile_corpus
    kinds: dict[str, set[str]] = {}
    for v in variants:
        kinds.setdefault(v.base, set()).add(v.kind)
    for name in bases:
        assert {"pristine", "truncate", "flip-payload", "flip-metadata", "flip-header"} <= kinds[name], name
    for name in ("carray_blosc", "table", "ragged_flat"):
        assert "blosc-header" in kinds[name], name
    for name in ("carray_blosc", "carray_zlib", "array_contig", "earray", "table", "ragged_flat"):
        assert "index-past-eof" in kinds[name], name  # a chunk (or contiguous block) placed past the end
    assert {v.kind for v in variants if v.base == "-"} == {
        "zero-length", "text", "directory", "signature-then-garbage", "random-bytes", "missing"
    }  # fmt: skip
    assert len({v.id for v in variants}) == len(variants)
    for v in variants:  # the damage is real: every variant differs from its base
        if v.base != "-" and v.kind != "pristine":
            assert Path(v.path).read_bytes() != Path(bases[v.base].path).read_bytes(), v.id


def test_pristine_bases_read_what_was_written(hostile_corpus):
    """The references the damaged variants are compared to are themselves right."""
    _out, bases, _variants = hostile_corpus
    for base in bases.values():
        with tables.open_file(base.path) as f:
            if base.array_node:
                np.testing.assert_array_equal(
                    daskh5.from_pytables(base.path, base.array_node).compute(),
                    f.get_node(base.array_node).read(),
                )
            if base.ragged_node:
                shapes = f.get_node(base.ragged_node + "_shape").read()
                node = f.get_node(base.ragged_node)
                if isinstance(node, tables.VLArray):
                    expected = [r.reshape(s) for r, s in zip(node.read(), shapes)]
                else:
                    flat = node.read()
                    expected = [
                        flat[a:b].reshape(s)
                        for (a, b), s in zip(f.get_node(base.ragged_node + "_start_and_stop"), shapes)
                    ]
                got = daskh5.open_ragged(base.path, base.ragged_node)[:]
                assert len(got) == len(expected) > 0
                for g, e in zip(got, expected):
                    np.testing.assert_array_equal(g, e)
    table = bases["table"]
    with tables.open_file(table.path) as f:
        rows = f.root.table.read()
    import xarray as xr

    with xr.open_dataset(table.path, engine="daskh5") as ds:
        for name in rows.dtype.names:
            np.testing.assert_array_equal(ds[name].values, rows[name])


def test_summary(matrix, hostile_corpus):
    """Every variant met every entry point that applies to it; the outcome counts add up."""
    _out, _bases, variants = hostile_corpus
    s = matrix.summary()
    assert s["checks"] == sum(len(v.entry_points()) for v in variants) == len(matrix.rows)
    assert sum(s["outcomes"].values()) == s["checks"]
    assert set(s["entry_points"]) == set(corpus.ENTRY_POINTS)
    pristine = [r for r in matrix.rows if r["variant"].endswith(".pristine")]
    assert {r["outcome"] for r in pristine} == {"ok-correct"}, _listing(pristine)


def test_no_crash_and_no_hang(matrix):
    """A segfault, an abort (e.g. a heap overrun caught by the debug allocator) or a hang in any check."""
    bad = [r for r in matrix.rows if r["outcome"] in ("crash", "hang")]
    assert not bad, f"{len(bad)} checks crashed or hung:\n{_listing(bad)}"


def test_only_daskh5_errors(matrix):
    """Damage is reported as a daskh5 error (``daskh5 info``: one ``daskh5: error:`` line), nothing else."""
    bad = [r for r in matrix.rows if r["outcome"] == "other-exception"]
    assert not bad, f"{len(bad)} checks raised something other than a daskh5 error:\n{_listing(bad)}"


def test_no_silently_wrong_values(matrix):
    """Different data is acceptable only where nothing in the file can tell (see corpus.classify)."""
    bad = [r for r in matrix.rows if r["outcome"] == "WRONG"]
    assert not bad, f"{len(bad)} checks returned wrong data for detectable damage:\n{_listing(bad)}"


def test_truncated_and_non_hdf5_files_always_fail_clearly(matrix, hostile_corpus):
    """HDF5 records where a file ends: a short file, or one that is not HDF5, never yields data."""
    _out, _bases, variants = hostile_corpus
    kinds = {v.id: v.kind for v in variants}
    rows = [
        r for r in matrix.rows if kinds[r["variant"]] == "truncate" or r["variant"].startswith("special.")
    ]
    assert rows
    bad = [r for r in rows if r["outcome"] != "clear-error"]
    assert not bad, _listing(bad)
    paths = {v.id: v.path for v in variants}
    for r in rows:  # the message names the file
        message = r["raw"].get("message") or r["raw"].get("stderr")
        assert os.path.basename(paths[r["variant"]]) in message, (r["variant"], r["entry"], message)


def test_undetectable_damage_is_only_where_no_checksum_exists(matrix, hostile_corpus):
    """Wrong values came only from variants whose damage has no checksum to catch it."""
    _out, _bases, variants = hostile_corpus
    byid = {v.id: v for v in variants}
    for r in matrix.rows:
        if r["outcome"] == "undetectable-damage":
            v = byid[r["variant"]]
            assert v.detectable is not True and v.why, (v.id, r["entry"])


# -- pickled payloads ----------------------------------------------------------------------------------------------
@pytest.fixture
def trapped(tmp_path):
    markers_dir = tmp_path / "markers"
    markers_dir.mkdir()
    path = str(tmp_path / "trapped.h5")
    markers = corpus.build_trapped(path, markers_dir)
    return path, markers_dir, markers


def test_every_trap_is_real(trapped):
    """Reading each location with plain PyTables runs its payload: the traps can catch a leak."""
    path, _dir, markers = trapped
    sprung = corpus.spring_traps(path, markers)
    assert all(sprung.values()), [loc for loc, hit in sprung.items() if not hit]


def _hostile_run(path, markers_dir, scratch) -> list[dict]:
    code = f"import corpus; corpus.hostile_steps({str(path)!r}, {str(markers_dir)!r}, {str(scratch)!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **corpus.worker_env(hardened=False),
            "PYTHONPATH": f"{Path(__file__).parent}{os.pathsep}{corpus.REPO}",
        },
        cwd=str(corpus.REPO),
    )
    assert proc.returncode == 0, f"the entry points crashed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_no_entry_point_unpickles(trapped, tmp_path):
    """Readers, the xarray engine (``decode_pickles`` on and off), ``info``/``stats`` and the writers
    appending to the file: no marker appears, and what can be read is read."""
    path, markers_dir, _markers = trapped
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    steps = _hostile_run(path, markers_dir, scratch)
    assert len(steps) >= 50
    leaks = [(s["step"], s["markers"]) for s in steps if s["markers"]]
    assert not leaks, f"unpickled (step, markers present after it): {leaks}"
    assert not [p.name for p in markers_dir.iterdir()]
    results = {s["step"]: s for s in steps}
    bugs = [s for s in steps if s["daskh5_error"] is False]
    assert not bugs, "\n".join(f"{s['step']}: {s['result']}" for s in bugs)
    refused = {name for name, s in results.items() if s["daskh5_error"]}
    assert refused == {
        "from_pytables /objs", "from_pytables /group/objs", "from_pytables /table", "from_pytables /vl",
        "from_pytables /group", "from_pytables /frame", "from_pytables /frame/table",
        "read_ragged /objs", "open_ragged /objs", "read_ragged /group/objs", "open_ragged /group/objs",
    }  # fmt: skip
    assert "ObjectAtom" in results["read_ragged /objs"]["result"]
    assert results["from_pytables /data H5FD_CORE"]["result"] == "ok 499500.0"
    assert results["label_stats"]["result"] == "ok [167, 167, 166]"
    assert results["read_ragged /ragged"]["result"] == "ok 20 samples"
    assert "'b'" in results["xr.open_dataset group=/frame decode_pickles=True"]["result"]


@pytest.mark.parametrize("args", [[], ["--json", "--all"]])
def test_command_line_does_not_unpickle(trapped, args):
    """``python -m daskh5 info`` as a user runs it."""
    path, markers_dir, _markers = trapped
    proc = subprocess.run(
        [sys.executable, "-m", "daskh5", "info", path, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=corpus.worker_env(hardened=False),
        cwd=str(corpus.REPO),
    )
    assert proc.returncode == 0, proc.stderr
    assert path in proc.stdout
    assert not list(markers_dir.iterdir())


def test_command_line_on_damaged_files(hostile_corpus):
    """The real ``python -m daskh5 info`` on files that are not HDF5: one error line, exit 1."""
    _out, _bases, variants = hostile_corpus
    picked = [
        v for v in variants if v.kind in ("zero-length", "directory") or v.id == "carray_blosc.truncate.half"
    ]
    assert len(picked) == 3
    for v in picked:
        proc = subprocess.run(
            [sys.executable, "-m", "daskh5", "info", v.path],
            capture_output=True,
            text=True,
            timeout=120,
            env=corpus.worker_env(hardened=False),
            cwd=str(corpus.REPO),
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("daskh5: error: "), (
            v.id,
            proc,
        )


# -- the limited child runner -------------------------------------------------------------------------------------
def test_limited_runner_reports_every_outcome():
    """``run_limited`` tells a result, an exception, an exit inside C code, a hang and a memory cap apart."""
    assert corpus.run_limited("result = 1 + 1")["result"] == 2
    err = corpus.run_limited("raise daskh5.NodeNotFound('x')".replace("daskh5.", "__import__('daskh5')."))
    assert err["status"] == "error" and err["daskh5_error"]
    assert corpus.run_limited("import os; os._exit(0)")["status"] == "died"  # what SZ's exit(0) looks like
    assert corpus.run_limited("import time; time.sleep(30)", timeout=2)["status"] == "timeout"
    big = corpus.run_limited("b = bytearray(4 << 30)", memory=2 * corpus.GiB)
    assert big["status"] == "error" and big["etype"] == "builtins.MemoryError"


# -- small files cannot claim large resources (issue 12, section 3) -----------------------------------------------
# Each file below is a few KB or MB and claims gigabytes (rows, chunks, heap bytes, attribute bytes, pickled
# objects). Each entry point runs in a child under a tight RLIMIT_AS: the safe outcome is a result that costs what
# the real data costs, or a daskh5 error, never a MemoryError, a kill or a hang.
TIGHT = 1 * corpus.GiB  # the children below need about 300 MB of address space for what they really read


def _limited(code: str, *, memory: int = TIGHT, timeout: float = 120) -> dict:
    out = corpus.run_limited(code, memory=memory, timeout=timeout)
    assert out["status"] in ("ok", "error"), out
    return out


def test_unwritten_chunks_cost_nothing(tmp_path):
    """2**27 chunks of which two were written (a 4 KB file): the chunk index, a read, xarray's
    ``chunks={}`` and ``daskh5 info`` cost what the two chunks cost (a dense index was 1.1 GB)."""
    import h5py

    path = str(tmp_path / "sparse.h5")
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", shape=(1 << 27,), chunks=(1,), dtype="f8", fillvalue=0.5)
        ds[5], ds[1000] = 1.0, 2.0
    assert os.path.getsize(path) < 10_000
    out = _limited(f"""
import daskh5, xarray as xr
from daskh5 import _nodes, _storage, cli
x = daskh5.from_pytables({path!r}, "/data")
index = _storage.read_chunk_index(_nodes.describe_array({path!r}, "/data"))
ds = xr.open_dataset({path!r}, engine="daskh5", chunks={{}})
result = [float(x[:2000].sum().compute()), len(index.positions), ds.data.data.npartitions,
          float(ds.data[990:1010].sum().compute()), cli.main(["info", {path!r}])]
""")
    assert out["status"] == "ok", out
    assert out["result"] == [1998 * 0.5 + 3.0, 2, 8, 19 * 0.5 + 2.0, 0]


def test_a_node_claiming_2_40_chunks_makes_no_huge_dask_graph(tmp_path):
    """The chunk grid is not limited, the dask arrays made from it are: xarray's preferred chunks
    grow to whole multiples of the node's chunks, and too many blocks fail fast, before any tuple
    of block sizes is built."""
    import h5py

    path = str(tmp_path / "claims.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("data", shape=(1 << 40,), chunks=(1,), dtype="f8")[3] = 1.0
    out = _limited(f"""
import daskh5, xarray as xr
ds = xr.open_dataset({path!r}, engine="daskh5", chunks={{}})
blocks = ds.data.data.npartitions
head = float(ds.data[:10].sum().compute())
try:
    daskh5.from_pytables({path!r}, "/data", chunks=(1000,))
except daskh5.ResourceLimitError as exc:
    refused = str(exc)
result = [blocks, head, refused]
""")
    assert out["status"] == "ok", out
    blocks, head, refused = out["result"]
    from daskh5._chunking import MAX_BLOCKS

    assert blocks <= MAX_BLOCKS and head == 1.0
    assert path in refused and "/data" in refused and "dask blocks" in refused


def _claiming_layouts(path: str, which: str) -> str:
    """A ragged layout of two samples whose ``which`` node is grown to 10**9 rows, none of them written."""
    import h5py

    if which == "vlarray-shape":
        with tables.open_file(path, "w") as f:
            vl = f.create_vlarray("/", "samples", atom=tables.Float32Atom())
            vl.append(np.arange(6, dtype="f4"))
            vl.append(np.arange(2, dtype="f4"))
            f.create_earray("/", "samples_shape", obj=np.array([[2, 3], [1, 2]]), chunkshape=(512, 2))
        grow = ["/samples", "/samples_shape"]  # the VLArray is checked first
    elif which == "vlarray":
        with tables.open_file(path, "w") as f:
            vl = f.create_vlarray("/", "samples", atom=tables.Float32Atom(), chunkshape=(256,))
            vl.append(np.arange(6, dtype="f4"))
        grow = ["/samples"]
    else:
        daskh5.write_ragged([np.ones((2, 3), "f4"), np.ones((1, 2), "f4")], path, "/samples", progress=False)
        with h5py.File(path, "a") as f:
            for name in ("samples", "samples_start_and_stop", "samples_shape"):
                for key in [k for k in f[name].attrs if k.startswith("DASKH5_NSAMPLES")]:
                    del f[name].attrs[key]  # no committed count: the columns' length is the claim
            if which == "no-shape-column":
                del f["samples_shape"], f["samples"].attrs["DASKH5_SHAPE"]
        grow = {"start-stop": ["/samples_start_and_stop"], "shape": ["/samples_shape"],
                "both": ["/samples_start_and_stop", "/samples_shape"],
                "no-shape-column": ["/samples_start_and_stop"]}[which]  # fmt: skip
    with h5py.File(path, "a") as f:
        for name in grow:
            f[name].resize(10**9, axis=0)
    assert os.path.getsize(path) < 1 << 20


@pytest.mark.parametrize(
    "which, claimant, why",
    [
        ("start-stop", "/samples_shape", "one row per sample"),  # the columns disagree: nothing is read
        ("shape", "/samples_shape", "one row per sample"),
        ("both", "/samples_start_and_stop", "never written"),
        ("no-shape-column", "/samples_start_and_stop", "never written"),
        ("vlarray-shape", "/samples", "never written"),
        ("vlarray", "/samples", "never written"),
    ],
)
def test_side_columns_claiming_a_billion_rows(tmp_path, which, claimant, why):
    """A side column (or a VLArray) grown to 10**9 rows of which almost nothing is stored: ``open_ragged``,
    ``read_ragged`` and ``daskh5 info`` check the columns' lengths and stored chunks before allocating
    (16 GB before), and refuse with a RaggedLayoutError naming the node."""
    path = str(tmp_path / "claims.h5")
    _claiming_layouts(path, which)
    out = _limited(f"""
import contextlib, io, daskh5
from daskh5 import cli
result = []
for fn in (daskh5.open_ragged, daskh5.read_ragged):
    try:
        fn({path!r}, "/samples")
        result.append("opened")
    except daskh5.RaggedLayoutError as exc:
        result.append(str(exc))
with contextlib.redirect_stdout(io.StringIO()) as text:
    rc = cli.main(["info", {path!r}])
result.append([rc, text.getvalue()])
""")
    assert out["status"] == "ok", out
    opened, bag, (rc, text) = out["result"]
    for message in (opened, bag):
        assert f"{path}:{claimant}:" in message and why in message, message
    assert rc == 0 and "NOT VALID" in text and why in text, text


def test_side_columns_past_the_committed_samples_are_not_read(tmp_path):
    """Rows past ``DASKH5_NSAMPLES`` (an interrupted append) are neither checked nor read: a column grown
    to 10**9 rows after two committed samples opens with two samples."""
    import h5py

    path = str(tmp_path / "committed.h5")
    daskh5.write_ragged([np.ones((2, 3), "f4"), np.ones((1, 2), "f4")], path, "/samples", progress=False)
    with h5py.File(path, "a") as f:
        f["samples_start_and_stop"].resize(10**9, axis=0)
    out = _limited(f"""
import daskh5
r = daskh5.open_ragged({path!r}, "/samples")
result = [len(r), r.shapes.tolist()]
""")
    assert out["status"] == "ok" and out["result"] == [2, [[2, 3], [1, 2]]], out


def _aliasing_vlarray(path: str, rows: int, filters=None) -> int:
    """A VLArray whose row 0 holds 4 MiB and whose other ``rows - 1`` descriptors are copies of row 0's:
    a 5 MB file whose rows claim ``rows`` x 4 MiB. Returns the claimed bytes."""
    with tables.open_file(path, "w") as f:
        vl = f.create_vlarray("/", "samples", atom=tables.Float32Atom(), chunkshape=(512,), filters=filters)
        vl.append(np.arange(1 << 20, dtype="f4"))
        for _ in range(rows - 1):
            vl.append(np.zeros(1, "f4"))
    data = bytearray(Path(path).read_bytes())
    chunks = sorted((e for e in corpus.data_extents(path) if e.node == "/samples"), key=lambda e: e.chunk)
    assert all(not e.filters for e in chunks)  # raw descriptors: 16 bytes a row
    descriptor = bytes(data[chunks[0].start : chunks[0].start + 16])
    for e in chunks:
        data[e.start : e.start + e.size] = descriptor * (e.size // 16)
    Path(path).write_bytes(bytes(data))
    return rows << 22


def test_vlarray_rows_aliasing_one_heap_object(tmp_path):
    """2,000 row descriptors naming one 4 MiB heap object (8 GiB claimed by a 5 MB file): every read
    checks the rows' stored lengths against the file's size before HDF5 allocates anything."""
    path = str(tmp_path / "alias.h5")
    claimed = _aliasing_vlarray(path, 2000)
    assert os.path.getsize(path) < 6 << 20 and claimed > 7 * corpus.GiB
    out = _limited(f"""
import daskh5
r = daskh5.open_ragged({path!r}, "/samples")
steps = {{
    "lengths": lambda: r.lengths,
    "slice": lambda: r[0:5],
    "take": lambda: r[[1, 2, 3]],
    "iter_batches": lambda: list(r.iter_batches(100)),
    "read_ragged": lambda: daskh5.read_ragged({path!r}, "/samples").count().compute(),
}}
result = {{}}
for name, step in steps.items():
    try:
        step()
        result[name] = "read"
    except daskh5.RaggedLayoutError as exc:
        result[name] = str(exc)
result["one row"] = r[7].shape  # one row is one heap object: bounded by the file, read
""")
    assert out["status"] == "ok", out
    result = out["result"]
    assert result.pop("one row") == [1 << 20]
    for name, message in result.items():
        assert f"{path}:/samples" in message and "more than the whole" in message, (name, message)


def _alias_descriptors(path: str, wanted: bytes, items: int, target_length: int) -> None:
    """Point the heap descriptors of every heap object whose bytes are ``wanted`` (``items`` items) at
    the file's biggest heap object, claiming ``target_length`` items of it."""
    import struct

    data = bytearray(Path(path).read_bytes())
    collections = sorted(p for p, _ in corpus.heap_collections(bytes(data)))
    objects = corpus.heap_objects(bytes(data))

    def descriptor(start: int, length: int) -> bytes:
        gcol = max(p for p in collections if p < start)
        index = struct.unpack_from("<H", data, start - 16)[0]
        return struct.pack("<IQI", length, gcol, index)

    big = descriptor(*max(objects, key=lambda o: o[1]))
    big = struct.pack("<I", target_length) + big[4:]
    patched = 0
    for start, size in objects:
        if bytes(data[start : start + size]) == wanted:
            at = data.find(descriptor(start, items))
            assert at > 0
            data[at : at + 16] = big
            patched += 1
    assert patched
    Path(path).write_bytes(bytes(data))


def test_vlen_attributes_aliasing_one_heap_object(tmp_path):
    """A vlen attribute of 4,000 elements whose descriptors name one 4 MiB heap object (16 GiB claimed by
    a 4 MB file), and 20 scalar strings all naming it too: their sizes are read from the object header
    before h5py reads them; the array is over ``max_attr_size``, and even without a limit the strings
    together may not claim more than the file holds. Left out, with a warning naming them."""
    import h5py

    path = str(tmp_path / "alias-attrs.h5")
    with h5py.File(path, "w") as f:
        d = f.create_dataset("data", data=np.arange(10.0))
        values = np.empty(4000, dtype=object)
        values[0] = np.arange(1 << 20, dtype="i4")
        for i in range(1, 4000):
            values[i] = np.array([7], dtype="i4")
        d.attrs.create("alias", values, dtype=h5py.vlen_dtype(np.int32))
        for k in range(20):
            d.attrs[f"s{k:02d}"] = "y"
        d.attrs["units"] = "m"
    _alias_descriptors(path, np.array([7], "i4").tobytes(), 1, 1 << 20)
    _alias_descriptors(path, b"y", 1, 1 << 22)
    assert os.path.getsize(path) < 5 << 20
    out = _limited(f"""
import warnings, xarray as xr
result = {{}}
for limit in ("default", None):
    kwargs = {{}} if limit == "default" else {{"max_attr_size": limit}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = xr.open_dataset({path!r}, engine="daskh5", **kwargs)
        tree = xr.open_datatree({path!r}, engine="daskh5", **kwargs)
    assert sorted(tree["/"].ds["data"].attrs) == sorted(ds["data"].attrs)
    result[str(limit)] = [sorted(ds["data"].attrs), [str(w.message) for w in caught]]
""")
    assert out["status"] == "ok", out
    kept, warned = out["result"]["default"]
    assert kept == ["units"]  # the strings claim 4 MiB each: over the 1 MiB default too
    assert warned and all(f"{path}:/data: attributes left out: 'alias' (16,7" in w for w in warned), warned
    kept, warned = out["result"]["None"]
    assert "alias" not in kept and "units" in kept and 1 <= sum(k.startswith("s") for k in kept) <= 2
    assert "more than the whole" in warned[0] and "'s19'" in warned[0], warned


def test_attributes_over_max_attr_size_are_left_out_with_a_warning(tmp_path):
    """A 2 MiB attribute (dense storage) on a node and on the root: its size is known from its type and
    dataspace before it is read; over the 1 MiB default it is left out, named in a warning with its node.
    ``max_attr_size`` raises the limit (or lifts it with None)."""
    import h5py

    path = str(tmp_path / "big-attrs.h5")
    with h5py.File(path, "w", libver="latest") as f:
        d = f.create_dataset("data", data=np.arange(10.0))
        d.attrs["big"] = np.ones(1 << 18)  # 2 MiB
        d.attrs["units"] = "m"
        f.attrs["huge"] = np.ones((1 << 18) + 1)
        f.attrs["title"] = "run 1"
    with pytest.warns(UserWarning) as caught:
        ds = xr_open(path)
    messages = [str(w.message) for w in caught]
    assert sorted(ds["data"].attrs) == ["units"] and sorted(ds.attrs) == ["title"]
    assert any(f"{path}:/data: attributes left out: 'big' (2,097,152 bytes, more than max_attr_size=1,048,576)" in m
               for m in messages), messages  # fmt: skip
    assert any(f"{path}:/: attributes left out: 'huge' (2,097,160 bytes" in m for m in messages), messages
    assert sorted(xr_open(path, max_attr_size="4MiB")["data"].attrs) == ["big", "units"]
    assert sorted(xr_open(path, max_attr_size=None).attrs) == ["huge", "title"]


def xr_open(path, **kwargs):
    import xarray as xr

    return xr.open_dataset(path, engine="daskh5", **kwargs)


def test_a_wide_table_column_costs_the_column(tmp_path):
    """A 300-column Table of 800,000 rows (a 200 KB file: the rows are unwritten chunks, 1.9 GB of records):
    opening it reads no data, and a column keeps only its field of each piece of records it reads
    (every column used to hold the whole table)."""
    import h5py

    path = str(tmp_path / "wide.h5")
    dtype = np.dtype([(f"c{i}", "f8") for i in range(300)])
    with tables.open_file(path, "w") as f:
        f.create_table("/", "wide", description=dtype, chunkshape=(64,)).append(np.ones(10, dtype=dtype))
    with h5py.File(path, "a") as f:
        f["wide"].resize((800_000,))
    assert os.path.getsize(path) < 1 << 20
    out = _limited(f"""
import xarray as xr
from daskh5 import _reader
reads = []
real = _reader.NodeReader.__getitem__
_reader.NodeReader.__getitem__ = lambda self, key: reads.append(key) or real(self, key)
ds = xr.open_dataset({path!r}, engine="daskh5")
opened = len(reads)
total = float(ds["c3"].sum())
parts = [float(ds["c7"][5:20].sum()), float(ds["c7"][[1, 3, 700000]].sum()), float(ds["c9"][4]), float(ds["c9"][::1000].sum())]
result = [opened, len(ds.data_vars), total, parts, len(reads) > 1]
""")
    assert out["status"] == "ok", out
    assert out["result"] == [0, 300, 10.0, [5.0, 2.0, 1.0, 1.0], True]


def _laughs(levels: int = 30) -> list:
    """A list of lists, each level holding the one below twice: 2**levels leaves, 30 objects."""
    value: list = ["lol"]
    for _ in range(levels):
        value = [value, value]
    return value


def _pickle_bombs() -> dict[str, bytes]:
    """Small pickles that ask for gigabytes or hours (hand-written opcodes where pickle would not write them)."""
    import pickle

    big = b"I10000000000\n"
    many = list(range(10_000))
    amplify = b"\x80\x02cbuiltins\ntuple\nq\x00" + pickle.dumps(many, 2)[2:-1] + b"q\x01("
    amplify += b"h\x00h\x01\x85R" * 10_000 + b"l."  # tuple(many) 10,000 times: 10**8 items
    return {
        "list(bytes(10**10))": b"cbuiltins\nlist\n(cbuiltins\nbytes\n(" + big + b"tRtR.",
        "bytes(10**10)": b"cbuiltins\nbytes\n(" + big + b"tR.",
        "bytearray(10**10)": b"cbuiltins\nbytearray\n(" + big + b"tR.",
        "list(range(10**10))": b"cbuiltins\nlist\n(cbuiltins\nrange\n(" + big + b"tRtR.",
        "getattr('x', '__mul__')(10**10)": b"cbuiltins\ngetattr\n(S'x'\nS'__mul__'\ntR(" + big + b"tR.",
        "tuple(list) x 10,000": amplify,
        "billion laughs": pickle.dumps(_laughs(), 2),
        "memo index 2**31": b"\x80\x02Nr\xff\xff\xff\x7f.",
        "bytes8 of 2**40": b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"abc.",
    }


def test_pickle_bombs_are_refused_by_both_unpicklers(tmp_path):
    """Each of daskh5's unpicklers refuses every bomb quickly with an UnpicklingError (or, for a class it does
    not know, makes an inert stand-in): no MemoryError, no hang, nothing built that is big."""
    import pickle

    bombs = tmp_path / "bombs.pickle"
    bombs.write_bytes(pickle.dumps(_pickle_bombs()))
    out = _limited(
        f"""
import pickle
from daskh5 import _safe_tables as st
result = {{}}
with open({str(bombs)!r}, "rb") as fh:
    bombs = pickle.load(fh)  # the test's own file, written just now
for name, data in bombs.items():
    for fn in (st.restricted_loads, st.opaque_loads):
        try:
            value = fn(data)
            outcome = "inert" if isinstance(value, st.Opaque) else "loaded " + type(value).__name__
        except pickle.UnpicklingError:
            outcome = "refused"
        except BaseException as exc:
            outcome = type(exc).__name__
        result[f"{{fn.__name__}} {{name}}"] = outcome
""",
        timeout=60,
    )
    assert out["status"] == "ok", out
    inert = {"opaque_loads bytearray(10**10)"}  # an unknown class: a stand-in remembering its name, no bytes
    bad = {k: v for k, v in out["result"].items() if v != ("inert" if k in inert else "refused")}
    assert not bad, bad


def test_pickle_bombs_in_pandas_metadata(tmp_path):
    """The bombs stored where pandas keeps its pickled metadata (and as a user attribute read with
    ``decode_pickles=True``): the xarray engine opens the frame, every attribute stays undecoded or is
    left out, and printing the result is immediate (a shared-reference list used to hang ``repr``)."""
    import pickle
    import warnings

    import h5py
    import pandas as pd

    path = str(tmp_path / "frame.h5")
    df = pd.DataFrame({"a": np.arange(4.0), "t": pd.date_range("2020", periods=4, tz="UTC")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df.to_hdf(path, key="frame", format="table", mode="w")
    bombs = _pickle_bombs()
    laughs_info = pickle.dumps({"values_block_1": {"tz": _laughs()}, "index": {"index_name": _laughs()}}, 2)
    with h5py.File(path, "a") as f:
        frame, table = f["frame"], f["frame/table"]
        frame.attrs["info"] = np.bytes_(laughs_info)
        frame.attrs["levels"] = np.bytes_(bombs["billion laughs"])
        table.attrs["values_block_0_kind"] = np.bytes_(bombs["list(bytes(10**10))"])
        table.attrs["values_block_1_kind"] = np.bytes_(bombs["billion laughs"])
        for name, data in bombs.items():
            if len(data) < 60_000:  # what fits in an object header
                table.attrs[f"user {name}"] = np.bytes_(data)
    out = _limited(
        f"""
import warnings, xarray as xr
warnings.simplefilter("ignore")
ds = xr.open_dataset({path!r}, engine="daskh5", group="/frame", decode_pickles=True)
tree = xr.open_datatree({path!r}, engine="daskh5", decode_pickles=True)
text = repr(ds) + repr(tree) + repr(ds.attrs) + "".join(repr(v.attrs) + repr(v.encoding) for v in ds.variables.values())
result = [sorted(ds.data_vars), len(text) < 10**6, float(ds["values_block_0"].sum())]
""",
        timeout=90,
    )
    assert out["status"] == "ok", out
    assert out["result"] == [["values_block_0", "values_block_1"], True, 6.0]


def test_a_deep_nest_of_groups_is_walked_in_linear_time(tmp_path):
    """7,000 nested groups (a 7 MB file): ``daskh5 info`` and ``xr.open_groups`` walk them once, opening each
    group from its parent (h5py's visit and opening by full path grow with the cube of the depth: 100 s at
    5,000 before, several minutes here, against the 60 s this child gets); ``open_datatree`` refuses a nest
    deeper than xarray's DataTree can take, before opening anything."""
    import h5py

    path = str(tmp_path / "deep.h5")
    depth = 7000
    with h5py.File(path, "w") as f:
        g = f
        for _ in range(depth):
            g = g.create_group("g")
        g.create_dataset("x", data=np.arange(3.0))
    out = _limited(
        f"""
import contextlib, io, warnings
import xarray as xr, daskh5
from daskh5 import cli
warnings.simplefilter("ignore")
with contextlib.redirect_stdout(io.StringIO()) as text:
    rc = cli.main(["info", {path!r}])
lines = text.getvalue().splitlines()
groups = xr.open_groups({path!r}, engine="daskh5")
try:
    xr.open_datatree({path!r}, engine="daskh5")
    refused = None
except daskh5.ResourceLimitError as exc:
    refused = str(exc)
deepest = max(groups, key=len)
result = [rc, len(lines), lines[-1].split()[:2], len(groups), list(groups[deepest].data_vars), refused]
""",
        memory=2 * corpus.GiB,
        timeout=60,
    )
    assert out["status"] == "ok", out
    rc, nlines, last, ngroups, deepest_vars, refused = out["result"]
    assert rc == 0 and nlines == depth + 3 and last == ["x", "Dataset"]  # the header, /, the groups, x
    assert ngroups == depth + 1 and deepest_vars == ["x"]
    assert refused and f"{path}:/: groups nest 7,000 deep" in refused


def test_an_object_with_too_many_attributes_has_none_read(tmp_path):
    """20,000 attributes on one group (HDF5 finds each attribute of an object header by scanning all of
    them: reading 10**6 took hours): none is read, a warning says why, and opening costs no attribute read."""
    import h5py

    path = str(tmp_path / "attrs.h5")
    with h5py.File(path, "w", libver="latest") as f:
        g = f.create_group("many")
        for i in range(20_000):
            g.attrs[f"a{i}"] = i
        g.create_dataset("x", data=np.arange(3.0)).attrs["units"] = "m"
    out = _limited(f"""
import warnings, h5py, xarray as xr
reads = []
real = h5py.AttributeManager.__getitem__
h5py.AttributeManager.__getitem__ = lambda self, name: reads.append(name) or real(self, name)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ds = xr.open_dataset({path!r}, engine="daskh5", group="/many")
result = [len(ds.attrs), dict(ds["x"].attrs), sum(str(r).startswith("a") for r in reads), [str(w.message) for w in caught]]
""")
    assert out["status"] == "ok", out
    nattrs, xattrs, read, warned = out["result"]
    assert nattrs == 0 and xattrs == {"units": "m"} and read == 0
    assert any(f"{path}:/many: attributes left out: all 20,000 of them" in w for w in warned), warned


def _one_gib_chunk(path: str) -> None:
    """Two float64 nodes of one 1 GiB chunk each (zlib with and without shuffle), zeros with a 1.0 every
    4,096 values: written as precompressed chunks, streamed, so the test itself never holds 1 GiB."""
    import zlib

    import h5py

    n, piece = 1 << 27, 1 << 24
    with h5py.File(path, "w") as f:
        for name, shuffle in (("shuffled", True), ("plain", False)):
            ds = f.create_dataset(name, shape=(n,), chunks=(n,), dtype="<f8", compression="gzip",
                                  compression_opts=1, shuffle=shuffle)  # fmt: skip
            z, parts = zlib.compressobj(1), []
            if shuffle:  # byte stream k holds byte k of every value: only 6 and 7 are not zero
                for k in range(8):
                    for _ in range(0, n, piece):
                        stream = np.zeros(piece, np.uint8)
                        stream[::4096] = {6: 0xF0, 7: 0x3F}.get(k, 0)
                        parts.append(z.compress(stream))
            else:
                for _ in range(0, n, piece):
                    values = np.zeros(piece, "<f8")
                    values[::4096] = 1.0
                    parts.append(z.compress(values))
            parts.append(z.flush())
            ds.id.write_direct_chunk((0,), b"".join(parts))


def test_a_1_gib_chunk_decodes_within_one_chunk_of_memory(tmp_path):
    """A node of one 1 GiB zlib chunk (a 10 MB file, consistent with its node) is read in a child allowed
    1 GiB plus the interpreter's baseline: zlib inflates straight into the output block, unshuffling
    each piece as it comes (it used to inflate a copy, then unshuffle it into the block: 2 GiB)."""
    path = str(tmp_path / "big-chunk.h5")
    _one_gib_chunk(path)
    assert os.path.getsize(path) < 16 << 20
    out = _limited(
        f"""
import daskh5
result = []
for node in ("/shuffled", "/plain"):
    x = daskh5.from_pytables({path!r}, node)
    result.append([x.numblocks, float(x.sum().compute(scheduler="sync"))])  # no thread arenas in the count
    del x
    daskh5.close_files()
""",
        memory=corpus.GiB + (640 << 20),  # the interpreter, numpy, dask and h5py take about 400 MB
        timeout=120,
    )
    assert out["status"] == "ok", out
    assert out["result"] == [[[1], 32768.0], [[1], 32768.0]]

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
import time
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


# -- issue 12, items 4 and 5: terminal output is escaped; names that are not UTF-8 --------------------------------
ESC_NAME = "x\x1b]52;c;aGk=\x07\r\ndaskh5: error: forged"  # OSC 52 sets the clipboard; then a forged line


def _escapes_file(path) -> None:
    """Node, column and attribute texts with ESC, OSC 52, BEL, CR and LF in them."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset(ESC_NAME, data=np.arange(3))
        f[ESC_NAME].attrs["note"] = np.bytes_(b"\x1b[2J\x1b[H cleared \r\n")
        tid = h5py.h5t.create(h5py.h5t.COMPOUND, 12)
        tid.insert(b"c\x1b[31m", 0, h5py.h5t.NATIVE_DOUBLE)
        tid.insert(b"ok", 8, h5py.h5t.NATIVE_INT32)
        h5py.h5d.create(f.id, "tab\x9b2J".encode(), tid, h5py.h5s.create_simple((3,)))  # C1 CSI


def _non_utf8_file(path) -> None:
    """PyTables nodes renamed (with h5py's low-level API) to link names that are not valid UTF-8."""
    import h5py

    with tables.open_file(path, "w") as f:
        f.create_carray("/", "data", obj=np.arange(10.0), chunkshape=(5,))
        f.create_carray("/", "bad", obj=np.arange(10.0) * 2, chunkshape=(5,))
        f.create_table("/", "tab", obj=np.array([(1.5, 2)], dtype=[("a", "f8"), ("b", "i4")]))
        f.create_group("/", "grp")
        f.create_carray("/grp", "leaf", obj=np.arange(4.0))
        f.create_earray("/", "rag", obj=np.array([0.0, 1.0, 2.0, 0.0, 1.0]))  # a flat layout...
        f.create_earray("/", "rag_start_and_stop", obj=np.array([[0, 3], [3, 5]]))  # ...found by name
    with h5py.File(path, "a") as f:
        renames = [(b"bad", b"\xff\xfe"), (b"tab", b"t\xff"), (b"grp/leaf", b"grp/l\xff")]
        renames += [(b"rag", b"r\xff"), (b"rag_start_and_stop", b"r\xff_start_and_stop")]
        for old, new in renames:
            f.id.links.create_hard(new, f.id, old)
            f.id.unlink(old)
        aid = h5py.h5a.create(f["data"].id, b"a\xff", h5py.h5t.NATIVE_INT32, h5py.h5s.create(h5py.h5s.SCALAR))
        aid.write(np.array(5, dtype=np.int32))


_RUN_CLI = """
import contextlib, io
from daskh5 import cli
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    rc = cli.main({argv!r})
result = {{"rc": rc, "out": out.getvalue(), "err": err.getvalue()}}
"""

_TERMINAL = ("\x1b", "\x07", "\r", "\x9b", "\udcff")


def _assert_printable(text: str) -> None:
    bad = sorted({c for c in text if c in _TERMINAL or (ord(c) < 0x20 and c != "\n")})
    assert not bad, f"printed raw {bad!r}: {text!r}"


def test_info_text_escapes_names_and_columns(tmp_path):
    path = tmp_path / "escapes.h5"
    _escapes_file(path)
    got = corpus.run_limited(_RUN_CLI.format(argv=["info", str(path)]))
    assert got["status"] == "ok", got
    out = got["result"]["out"]
    _assert_printable(out)
    assert got["result"]["rc"] == 0
    assert r"x\x1b]52;c;aGk=\x07\r\ndaskh5: error: forged" in out  # shown, escaped like repr
    assert r"columns: c\x1b[31m, ok" in out and r"tab\x9b2J" in out
    assert not any(line.startswith("daskh5: error") for line in out.splitlines())  # no forged line
    assert len(out.splitlines()) == 4  # the header, "/", and one line per node


def test_info_json_escapes_control_characters(tmp_path):
    path = tmp_path / "escapes.h5"
    _escapes_file(path)
    got = corpus.run_limited(_RUN_CLI.format(argv=["info", "--json", str(path)]))
    assert got["status"] == "ok", got
    _assert_printable(got["result"]["out"])
    report = json.loads(got["result"]["out"])
    assert {r["path"] for r in report["nodes"]} == {"/", "/" + ESC_NAME, "/tab\x9b2J"}


@pytest.mark.parametrize(
    "argv",
    [["info", "{path}", "/nope" + ESC_NAME], ["stats", "{path}", "--data", "/" + ESC_NAME, "--labels", "/x"]],
    ids=["missing-node", "stats-labels"],
)
def test_error_lines_are_escaped(tmp_path, argv):
    """The ``daskh5: error:`` line quotes names (the user's and the file's) escaped, on one line."""
    path = tmp_path / "escapes.h5"
    _escapes_file(path)
    argv = [a.format(path=path) for a in argv]
    got = corpus.run_limited(_RUN_CLI.format(argv=argv))
    assert got["status"] == "ok", got
    err = got["result"]["err"]
    _assert_printable(err)
    assert got["result"]["rc"] == 1 and err.count("\n") == 1 and err.startswith("daskh5: error: "), err
    assert r"\x1b]52;c;aGk=\x07\r\n" in err


NON_UTF8_ENTRIES = {
    "from_pytables str": "result = daskh5.from_pytables(P, '/\\udcff\\udcfe').compute().tolist()",
    "from_pytables bytes": "result = daskh5.from_pytables(P, b'/\\xff\\xfe').compute().tolist()",
    "from_pytables in group": "result = daskh5.from_pytables(P, '/grp/l\\udcff').compute().tolist()",
    "from_pytables missing": "daskh5.from_pytables(P, '/n\\udcff')",
    "read_ragged": "result = [a.tolist() for a in daskh5.read_ragged(P, '/r\\udcff').compute(scheduler='sync')]",
    "open_ragged": "result = [a.tolist() for a in daskh5.open_ragged(P, '/r\\udcff')[:]]",
    "xr.open_dataset": (
        "import xarray as xr\n"
        "with xr.open_dataset(P, engine='daskh5') as ds:\n"
        "    result = {k: ds[k].values.tolist() for k in sorted(ds.data_vars) if 'r' not in k}"
    ),
    "xr.open_dataset group": (
        "import xarray as xr\n"
        "with xr.open_dataset(P, engine='daskh5', group='/grp') as ds:\n"
        "    result = sorted(ds.data_vars)"
    ),
    "xr.open_datatree": (
        "import xarray as xr\n"
        "tree = xr.open_datatree(P, engine='daskh5')\n"
        "result = {g: sorted(tree[g].data_vars) for g in tree.groups}"
    ),
}


@pytest.mark.parametrize("entry", sorted(NON_UTF8_ENTRIES))
def test_names_that_are_not_utf8_read_or_fail_clearly(tmp_path, entry):
    """h5py gives such names as bytes; daskh5 takes and gives them as str with surrogates (like os.fsdecode)."""
    path = str(tmp_path / "names.h5")
    _non_utf8_file(path)
    got = corpus.run_limited(
        f"import daskh5, warnings\nwarnings.simplefilter('ignore')\nP = {path!r}\n" + NON_UTF8_ENTRIES[entry]
    )
    want = {
        "from_pytables str": (np.arange(10.0) * 2).tolist(),
        "from_pytables bytes": (np.arange(10.0) * 2).tolist(),
        "from_pytables in group": np.arange(4.0).tolist(),
        "read_ragged": [[0.0, 1.0, 2.0], [0.0, 1.0]],
        "open_ragged": [[0.0, 1.0, 2.0], [0.0, 1.0]],
        "xr.open_dataset": {
            "a": [1.5],
            "b": [2],
            "data": np.arange(10.0).tolist(),
            "\udcff\udcfe": (np.arange(10.0) * 2).tolist(),
        },  # the Table t\xff gives columns a and b
        "xr.open_dataset group": ["l\udcff"],
        "xr.open_datatree": {
            "/": ["a", "b", "data", "r\udcff", "r\udcff_start_and_stop", "\udcff\udcfe"],
            "/grp": ["l\udcff"],
        },
    }
    if entry == "from_pytables missing":
        assert got["status"] == "error" and got["etype"] == "daskh5.errors.NodeNotFound", got
        assert "no node '/n\\udcff'" in got["message"]
        return
    assert got["status"] == "ok", got
    assert got["result"] == want[entry]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_info_lists_names_that_are_not_utf8(tmp_path, fmt):
    path = str(tmp_path / "names.h5")
    _non_utf8_file(path)
    argv = ["info", path] + (["--json"] if fmt == "json" else [])
    got = corpus.run_limited(_RUN_CLI.format(argv=argv))
    assert got["status"] == "ok" and got["result"]["rc"] == 0, got
    out = got["result"]["out"]
    if fmt == "json":
        report = json.loads(out)
        paths = {r["path"] for r in report["nodes"]}
        assert {"/\udcff\udcfe", "/t\udcff", "/grp/l\udcff", "/r\udcff"} <= paths
        assert [g["node"] for g in report["ragged"]] == ["/r\udcff"] and report["ragged"][0]["samples"] == 2
    else:
        _assert_printable(out)
        for shown in (r"\xff\xfe ", r"t\xff ", r"l\xff ", r"/r\xff (flat): 2 samples"):
            assert shown in out, out


# -- issue 12, item 5: writers never report success after losing data ---------------------------------------------
WRITE_FILTERS = {
    "blosc2": "tables.Filters(complevel=5, complib='blosc2:lz4', shuffle=True)",
    "fletcher32": "tables.Filters(complevel=5, complib='zlib', fletcher32=True)",
    "bzip2": "tables.Filters(complevel=5, complib='bzip2')",
    "blosc": "tables.Filters(complevel=5, complib='blosc:lz4', shuffle=True)",
    "zlib": "tables.Filters(complevel=5, complib='zlib', shuffle=True)",
}
_BIG = "np.random.default_rng(1).random((100_000, 10))"  # 8 MB that do not compress much
_BIG_SAMPLES = "(np.random.default_rng(i).random(1000) for i in range(1000))"
WRITE_MODES = {
    "to_pytables w": f"daskh5.to_pytables({_BIG}, P, '/x', kind='earray', filters=F, mode='w', progress=False)",
    "to_pytables a": f"daskh5.to_pytables({_BIG}, P, '/y', filters=F, progress=False)",
    "to_pytables overwrite": f"daskh5.to_pytables({_BIG}, P, '/x', filters=F, overwrite=True, progress=False)",
    "append": f"daskh5.append({_BIG}, P, '/x', progress=False)",
    "write_ragged w": f"daskh5.write_ragged({_BIG_SAMPLES}, P, '/r', filters=F, mode='w', progress=False)",
    "write_ragged a": f"daskh5.write_ragged({_BIG_SAMPLES}, P, '/r', filters=F, mode='a', progress=False)",
}


def _digest(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _good_file(path: str, filters) -> None:
    """What the failed write must leave alone: an EArray, a ragged layout and a CArray."""
    rng = np.random.default_rng(0)
    daskh5.to_pytables(
        rng.random((1000, 10)), path, "/x", kind="earray", filters=filters, mode="w", progress=False
    )
    daskh5.write_ragged([rng.random(100) for _ in range(10)], path, "/r", filters=filters, progress=False)


@pytest.mark.parametrize("mode", sorted(WRITE_MODES))
@pytest.mark.parametrize("filt", sorted(WRITE_FILTERS))
def test_write_past_the_file_size_limit_fails_and_changes_nothing(tmp_path, filt, mode):
    """RLIMIT_FSIZE (what a full disk looks like to a writer): a WriteError, and the file byte for byte as it was.

    PyTables swallows the error flushing blosc2, fletcher32 and bzip2 chunks on close; before, the
    call returned and a truncated file replaced the good one (or the EArray read as zeros).
    """
    path = str(tmp_path / "data.h5")
    _good_file(path, eval(WRITE_FILTERS[filt]))
    before = _digest(path)
    limit = os.path.getsize(path) + 200_000  # room for the copy of the file, not for the new data
    code = f"import numpy as np, tables, daskh5\nP = {path!r}\nF = {WRITE_FILTERS[filt]}\n{WRITE_MODES[mode]}"
    got = corpus.run_limited(code, fsize=limit, timeout=120)
    assert got["status"] == "error" and got["etype"] == "daskh5.errors.WriteError", got
    assert "file-size limit" in got["message"] and path in got["message"], got["message"]
    assert _digest(path) == before
    assert os.listdir(tmp_path) == ["data.h5"]  # no temporary file left


def test_write_without_a_limit_still_succeeds(tmp_path):
    """The same writes with room to spare: the checks pass and the data is there."""
    path = str(tmp_path / "data.h5")
    _good_file(path, eval(WRITE_FILTERS["blosc2"]))
    code = f"import numpy as np, tables, daskh5\nP = {path!r}\nF = {WRITE_FILTERS['blosc2']}\n"
    code += "\n".join(WRITE_MODES[m] for m in ("to_pytables a", "append", "write_ragged a"))
    got = corpus.run_limited(code, fsize=64 << 20, timeout=120)
    assert got["status"] == "ok", got
    big = np.random.default_rng(1).random((100_000, 10))
    np.testing.assert_array_equal(daskh5.from_pytables(path, "/y").compute(), big)
    np.testing.assert_array_equal(daskh5.from_pytables(path, "/x").compute()[1000:], big)
    assert len(daskh5.open_ragged(path, "/r")) == 1010
    assert os.listdir(tmp_path) == ["data.h5"]


_RACER = """
import os, sys, time
import dask.array as da, numpy as np, daskh5

path, go, value, mode = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
while not os.path.exists(go):
    time.sleep(0.001)

def slow(block):
    time.sleep(0.05)
    return block

x = da.full((40_000, 4), value, chunks=(1000, 4)).map_blocks(slow, dtype=float)  # 40 blocks: 2 s
try:
    daskh5.to_pytables(x, path, "/x", chunkshape=(1000, 4), mode=mode, progress=False)
except daskh5.FileBusyError as exc:
    print("busy", exc)
else:
    print("ok")
"""


@pytest.mark.parametrize("start", ["existing file", "new file"])
def test_two_processes_writing_one_file(tmp_path, start):
    """Started together: one writes, the other gets FileBusyError; the file holds exactly the winner's data.

    Before, for a new file both wrote and both reported success: the later rename silently threw
    away the other's complete file.  (For an existing file HDF5's own lock stopped the second writer,
    except in the gaps between the first one's PyTables and h5py sessions.)
    """
    path = str(tmp_path / "shared.h5")
    if start == "existing file":
        daskh5.to_pytables(np.arange(10.0), path, "/keep", progress=False)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, path, str(go), str(value), "a"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=corpus.worker_env(hardened=False),
        )
        for value in (1.0, 2.0)
    ]
    time.sleep(2.0)  # both interpreters up and polling
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    said = [out.split()[0] for out, _err in outs]
    assert sorted(said) == ["busy", "ok"], outs
    winner = (1.0, 2.0)[said.index("ok")]
    np.testing.assert_array_equal(daskh5.from_pytables(path, "/x").compute(), np.full((40_000, 4), winner))
    with tables.open_file(path) as f:
        nodes = sorted(n._v_pathname for n in f.walk_nodes("/", "Leaf"))
    assert nodes == (["/keep", "/x"] if start == "existing file" else ["/x"])
    assert sorted(os.listdir(tmp_path)) == ["go", "shared.h5"]


def _run_writer(code: str) -> dict:
    return corpus.run_limited("import numpy as np, tables, daskh5\n" + code, timeout=120)


@pytest.mark.parametrize(
    "call",
    [
        "daskh5.to_pytables(np.ones(3), P, '/a\\x00b', progress=False)",
        "daskh5.write_ragged([np.ones(3)], P, '/r\\x00evil', progress=False)",
        "daskh5.append(np.ones(3), P, '/e\\x00', progress=False)",
        "daskh5.to_pytables(np.ones(3), P, '/g\\x00/a', progress=False)",
    ],
)
def test_nul_in_a_node_name_is_refused(tmp_path, call):
    """PyTables hands names to HDF5 as C strings: ``/a\\x00b`` wrote ``/a``, and appending went to ``/e``."""
    path = str(tmp_path / "data.h5")
    daskh5.to_pytables(np.zeros(3), path, "/e", kind="earray", progress=False)
    before = _digest(path)
    got = _run_writer(f"P = {path!r}\n{call}")
    assert got["status"] == "error" and got["etype"] == "daskh5.errors.NodeNameError", got
    assert "NUL" in got["message"]
    assert _digest(path) == before


def test_node_name_errors_are_value_errors():
    assert issubclass(daskh5.NodeNameError, ValueError) and issubclass(daskh5.WriteError, OSError)


@pytest.mark.parametrize(
    "case",
    ["name too long for HDF5", "bad sample midway", "failing computation into a new group"],
)
def test_failed_write_leaves_no_half_layout_or_empty_group(tmp_path, case):
    """A failure after some nodes were created: the file is byte for byte as it was.

    Before, an over-long name made the flat EArray and its start/stop column, then failed setting the
    attribute naming them (a half layout, raw ``HDF5ExtError``); a failed write into ``/new/x`` left the
    empty group ``/new``.
    """
    path = str(tmp_path / "data.h5")
    _good_file(path, None)
    before = _digest(path)
    code = {
        "name too long for HDF5": "daskh5.write_ragged([np.ones(3)], P, '/' + 'a' * 70_000, progress=False)",
        "bad sample midway": (
            "daskh5.write_ragged([np.ones(3)] * 50 + [np.ones((2, 2))], P, '/r', batch_size=8, progress=False)"
        ),
        "failing computation into a new group": (
            "import dask.array as da\n"
            "def fail(b, block_info=None):\n"
            "    if block_info[0]['chunk-location'][0] == 5: raise ValueError('block failed')\n"
            "    return b\n"
            "x = da.ones(100, chunks=10).map_blocks(fail, dtype=float)\n"
            "daskh5.to_pytables(x, P, '/new/x', progress=False)"
        ),
    }[case]
    got = _run_writer(f"P = {path!r}\n{code}")
    assert got["status"] == "error", got
    want = {
        "name too long for HDF5": "daskh5.errors.WriteError",
        "bad sample midway": "daskh5.errors.RaggedLayoutError",
        "failing computation into a new group": "builtins.ValueError",  # the user's own error, as raised
    }[case]
    assert got["etype"] == want, got
    if case == "name too long for HDF5":
        assert "object header message is too large" in got["message"] and "shorter name" in got["message"]
        assert len(got["message"]) < 1000  # the 70,000-character name is not repeated whole
    assert _digest(path) == before
    assert os.listdir(tmp_path) == ["data.h5"]


@pytest.mark.parametrize(
    "call",
    [
        "daskh5.to_pytables(np.ones(3), P, '/x', mode='w', progress=False)",
        "daskh5.write_ragged([np.ones(3)], P, '/r', mode='w', progress=False)",
        "daskh5.append(np.ones((3, 10)), P, '/x', progress=False)",
        "daskh5.write_ragged([np.ones(100)], P, '/r', progress=False)",
    ],
    ids=["to_pytables w", "write_ragged w", "append", "write_ragged a"],
)
def test_rewriting_a_file_keeps_its_permission_bits(tmp_path, call):
    path = str(tmp_path / "private.h5")
    _good_file(path, None)
    os.chmod(path, 0o600)
    got = _run_writer(f"P = {path!r}\n{call}")
    assert got["status"] == "ok", got
    assert os.stat(path).st_mode & 0o7777 == 0o600


def test_writing_through_a_symlink_replaces_the_file_it_points_to(tmp_path):
    real = tmp_path / "real.h5"
    _good_file(str(real), None)
    link = tmp_path / "link.h5"
    link.symlink_to(real)
    daskh5.append(np.ones((3, 10)), str(link), "/x", progress=False)
    assert link.is_symlink() and daskh5.from_pytables(str(real), "/x").shape == (1003, 10)


@pytest.mark.parametrize(
    ("what", "call", "etype"),
    [
        ("text file", "daskh5.to_pytables(np.ones(3), P, '/x', progress=False)", "NotHDF5Error"),
        ("text file", "daskh5.write_ragged([np.ones(3)], P, '/r', progress=False)", "NotHDF5Error"),
        ("text file", "daskh5.append(np.ones(3), P, '/x', progress=False)", "NotHDF5Error"),
        ("directory", "daskh5.to_pytables(np.ones(3), P, '/x', mode='w', progress=False)", "WriteError"),
        ("directory", "daskh5.write_ragged([np.ones(3)], P, '/r', progress=False)", "WriteError"),
    ],
)
def test_hdf5_and_os_errors_of_writers_are_daskh5_errors(tmp_path, what, call, etype):
    """Before: raw ``tables.exceptions.HDF5ExtError`` (or ``IsADirectoryError``) from PyTables and the OS."""
    path = tmp_path / "target.h5"
    if what == "directory":
        path.mkdir()
    else:
        path.write_text("not HDF5\n")
    got = _run_writer(f"P = {str(path)!r}\n{call}")
    assert got["status"] == "error" and got["etype"] == f"daskh5.errors.{etype}", got
    assert str(path) in got["message"]
    assert sorted(os.listdir(tmp_path)) == ["target.h5"]


def test_a_reader_holding_the_file_open_makes_append_and_write_ragged_busy(tmp_path):
    """HDF5's lock (held by a PyTables reader in another process) stops every writer: FileBusyError."""
    path = str(tmp_path / "data.h5")
    _good_file(path, None)
    before = _digest(path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, tables, time; f = tables.open_file(sys.argv[1]); print('open', flush=True); time.sleep(60)",
            path,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        for call in (
            "daskh5.append(np.ones((3, 10)), P, '/x', progress=False)",
            "daskh5.write_ragged([np.ones(3)], P, '/r', progress=False)",
            "daskh5.to_pytables(np.ones(3), P, '/x', mode='w', progress=False)",
        ):
            got = _run_writer(f"P = {path!r}\n{call}")
            assert got["status"] == "error" and got["etype"] == "daskh5.errors.FileBusyError", (call, got)
    finally:
        holder.kill()
        holder.wait()
    assert _digest(path) == before


def _partly_written(path: str) -> list[int]:
    """A blosc CArray of 8 chunks of which only chunks 0, 1 and 3 were ever stored (what a full disk left).

    Returns the byte offsets of the stored chunks.
    """
    import h5py

    with tables.open_file(path, "w") as f:
        f.create_carray(
            "/", "x", atom=tables.Float64Atom(), shape=(8 * 4096,), chunkshape=(4096,),
            filters=tables.Filters(5, "blosc:lz4", shuffle=True),
        )  # fmt: skip
    with h5py.File(path, "r+") as f:
        from numcodecs import blosc

        for i in (0, 1, 3):
            chunk = np.random.default_rng(i).random(4096)
            f["x"].id.write_direct_chunk((i * 4096,), blosc.compress(chunk, b"lz4", 5, 1, 0), 0)
    offsets = []
    with h5py.File(path, "r") as f:
        f["x"].id.chunk_iter(lambda c: offsets.append((c.byte_offset, c.size)))
    return offsets


_CHECK = """
from daskh5._verify import check_node
check_node(P, P, "/x", (8 * 4096,), {region})
result = "passed"
"""


def test_verify_finds_chunks_that_never_reached_the_file(tmp_path):
    """On a full tmpfs PyTables "wrote" blosc2/bzip2/fletcher32 nodes whose index held 1 of 9 chunks."""
    path = str(tmp_path / "partial.h5")
    _partly_written(path)
    got = corpus.run_limited(f"P = {path!r}\n" + _CHECK.format(region=None))
    assert got["status"] == "error" and got["etype"] == "daskh5.errors.WriteError", got
    assert "only 3 of its 8 chunks were stored" in got["message"]
    region = ((0, 2 * 4096),)  # what an append of chunks 0 and 1 wrote: all there
    assert corpus.run_limited(f"P = {path!r}\n" + _CHECK.format(region=region))["result"] == "passed"


def test_verify_finds_a_chunk_left_as_a_hole(tmp_path):
    """A chunk in the index whose bytes were never written (a sparse file's hole) reads as zeros: refused."""
    import ctypes
    import ctypes.util

    path = str(tmp_path / "holes.h5")
    offset, size = _partly_written(path)[0]  # chunk 0: 32 KiB of random numbers, about as big compressed
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(path, os.O_RDWR)
    try:
        start = -(-offset // 4096) * 4096  # whole filesystem blocks inside the chunk
        if start + 4096 > offset + size or libc.fallocate(fd, 3, ctypes.c_long(start), ctypes.c_long(4096)):
            pytest.skip("cannot punch a hole here (chunk too small, or the filesystem has no holes)")
    finally:
        os.close(fd)  # 3: FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    got = corpus.run_limited(f"P = {path!r}\n" + _CHECK.format(region=((0, 2 * 4096),)))
    assert got["status"] == "error" and got["etype"] == "daskh5.errors.WriteError", got
    assert "the chunk at (0,) was not stored whole" in got["message"], got["message"]

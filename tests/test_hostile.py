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

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

import contextlib
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
    assert results["read_table /frame"]["result"] == "ok (6, 3)"
    assert results["read_table /fixed"]["result"] == "ok (6, 3)"
    assert results["read_table /frame where="]["result"] == "ok 3"
    assert results["label_stats read_table"]["result"] == "ok [1, 1]"
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


# -- issue 12, section 1: data lives in the file, or it is refused ------------------------------------------------
# A file can make HDF5 read other files: EXTERNAL raw storage, virtual datasets (VDS) and external links.
# Each case crafts its file in tmp_path next to a "secret" with known bytes and runs every entry point in a
# limited child: by default a daskh5 error naming the node and none of the secret's bytes anywhere; with
# allow_external=True (--allow-external) the values h5py reads (for an external link, the target's data).
SECRET = (b"QZXJ7741-private-key-material-" * 8)[:160]  # 20 int64 words, 160 uint8 values

ENTRIES = (
    "from_pytables", "read_ragged", "open_ragged", "xr.open_dataset", "xr.open_datatree",
    "daskh5 info", "daskh5 info --json", "daskh5 stats --json",
)  # fmt: skip

_ENTRY_CHILD = r"""
import contextlib, io, json, warnings
import numpy as np
import daskh5
import xarray as xr
from daskh5 import cli

path, node, labels, allow, entries = ARGS
kw = {"allow_external": True} if allow else {}


def values(a):
    a = np.asarray(a)
    return a.astype(float).tolist() if a.dtype.kind in "biuf" else a.astype(str).tolist()


def run(entry):
    if entry == "from_pytables":
        return values(daskh5.from_pytables(path, node, **kw).compute())
    if entry == "read_ragged":
        return [values(s) for s in daskh5.read_ragged(path, node, **kw).compute(scheduler="sync")]
    if entry == "open_ragged":
        with daskh5.open_ragged(path, node, **kw) as r:
            return [values(s) for s in r[:]]
    if entry == "xr.open_dataset":
        with xr.open_dataset(path, engine="daskh5", **kw) as ds:
            return {k: values(v.values) for k, v in ds.variables.items()}
    if entry == "xr.open_datatree":
        tree = xr.open_datatree(path, engine="daskh5", **kw)
        return {f"{t.path}:{k}": values(v.values) for t in tree.subtree for k, v in t.to_dataset().variables.items()}
    argv = entry.split()[1:2] + [path] + entry.split()[2:] + (["--allow-external"] if allow else [])
    if "stats" in entry:
        argv += ["--data", node, "--labels", labels]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}


result = {}
for entry in entries:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rec = {"ok": True, "value": run(entry)}
        except Exception as exc:
            rec = {"ok": False, "etype": type(exc).__name__, "daskh5_error": isinstance(exc, daskh5.Daskh5Error),
                   "message": str(exc)}
    rec["warnings"] = [str(w.message) for w in caught]
    result[entry] = rec
"""


def _run_entries(path, node, *, labels="/clusters", allow=False, entries=ENTRIES) -> dict:
    args = (str(path), node, labels, allow, list(entries))
    out = corpus.run_limited(_ENTRY_CHILD.replace("ARGS", repr(args)), timeout=240)
    assert out["status"] == "ok", out
    out["result"]["_streams"] = out["stdout"] + out["stderr"]
    return out["result"]


def _leak_patterns(secret: bytes) -> list[str]:
    """Ways the secret could show in text: itself, its words as int64/float64, its bytes as numbers."""
    words = np.frombuffer(secret, "<i8")
    floats = [repr(float(x)) for x in np.frombuffer(secret, "<f8") if np.isfinite(x) and abs(x) > 1e6]
    as_bytes = [", ".join(str(b) for b in secret[:6]), ", ".join(f"{float(b)}" for b in secret[:6])]
    as_rows = [json.dumps([[float(b)] for b in secret[:3]])[1:-1]]  # stats --json: one label per row
    return [secret[:12].decode("ascii"), *(str(int(w)) for w in words), *floats, *as_bytes, *as_rows]


def _assert_no_leak(results: dict, secret: bytes = SECRET) -> None:
    text = json.dumps(results)
    found = [p for p in _leak_patterns(secret) if p in text or p in results["_streams"]]
    assert not found, f"the secret's bytes appear in the output: {found[:3]}"
    for entry, rec in results.items():  # no entry returned the secret's bytes as values, in order
        if entry != "_streams" and rec.get("ok") and not entry.startswith("daskh5"):
            for run in _arrays(rec["value"]):
                for needle in (np.frombuffer(secret, "u1")[:16], np.frombuffer(secret, "<i8")[:4]):
                    windows = (
                        np.lib.stride_tricks.sliding_window_view(run, len(needle))
                        if len(run) >= len(needle)
                        else []
                    )
                    assert not any((w == needle.astype(float)).all() for w in windows), entry


def _arrays(value) -> list[np.ndarray]:
    """Every flat run of numbers in a returned value (nested dicts and lists)."""
    if isinstance(value, dict):
        return [a for v in value.values() for a in _arrays(v)]
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return [np.asarray(value, dtype=float)]
    if isinstance(value, list):
        return [a for v in value for a in _arrays(v)] + [np.asarray(_flat_numbers(value), dtype=float)]
    return []


def _flat_numbers(value) -> list:
    if isinstance(value, list):
        return [x for v in value for x in _flat_numbers(v)]
    return [value] if isinstance(value, (int, float)) else []


def _outside_files(tmp_path) -> dict:
    """The crafted files, ``{case: (path, node, nodes a refusal may name)}`` (the first: the one the node's
    own entry points name), next to ``tmp_path/secret.key``."""
    import h5py

    secret = tmp_path / "secret.key"
    secret.write_bytes(SECRET)
    with h5py.File(tmp_path / "other.h5", "w") as g:
        g["target"] = np.arange(160.0) * 3
        g.create_group("grp")["x"] = np.arange(160, dtype="i8") + 1000
    cases = {}

    def new(case, node, names):
        path = tmp_path / f"{case}.h5"
        cases[case] = (str(path), node, names)
        f = h5py.File(path, "w")
        f["clusters"] = np.arange(160)  # one label per row: per-label minima would be the values
        return f

    with new("external", "/data", ("/data",)) as f:  # EXTERNAL raw storage straight at the secret
        f.create_dataset("data", shape=(160,), dtype="u1", external=[(str(secret), 0, 160)])
    with new("vds", "/data", ("/data", "/raw")) as f:  # the exploit: a same-file VDS over EXTERNAL storage
        f.create_dataset("raw", shape=(160,), dtype="u1", external=[(str(secret), 0, 160)])
        layout = h5py.VirtualLayout(shape=(160,), dtype="u1")
        layout[:] = h5py.VirtualSource(".", "raw", shape=(160,))
        f.create_virtual_dataset("data", layout)
    with new("vds_relative", "/data", ("/data", "/raw")) as f:  # EXTERNAL by a relative name, under a VDS
        f.create_dataset("raw", shape=(160,), dtype="u1", external=[("secret.key", 0, 160)])
        layout = h5py.VirtualLayout(shape=(160,), dtype="u1")
        layout[:] = h5py.VirtualSource(".", "raw", shape=(160,))
        f.create_virtual_dataset("data", layout)
    with new("vds_other_file", "/data", ("/data",)) as f:  # a VDS whose source is another file
        layout = h5py.VirtualLayout(shape=(160,), dtype="f8")
        layout[:] = h5py.VirtualSource("other.h5", "target", shape=(160,))
        f.create_virtual_dataset("data", layout)
    with new("external_link", "/data", ("/data",)) as f:
        f["data"] = h5py.ExternalLink("other.h5", "/target")
    with new("link_chain", "/data", ("/ext",)) as f:  # soft link -> a path through an external link
        f["ext"] = h5py.ExternalLink("other.h5", "/grp")
        f["data"] = h5py.SoftLink("/ext/x")
    with new(
        "ragged_flat", "/tok", ("/tok_start_and_stop", "/raw_ss")
    ) as f:  # offsets from a VDS over the secret
        f["tok"] = np.arange(50, dtype="i8")
        f.create_dataset("raw_ss", shape=(10, 2), dtype="<i8", external=[(str(secret), 0, 160)])
        layout = h5py.VirtualLayout(shape=(10, 2), dtype="<i8")
        layout[:] = h5py.VirtualSource(".", "raw_ss", shape=(10, 2))
        f.create_virtual_dataset("tok_start_and_stop", layout)
    with new("ragged_vlarray", "/vl", ("/vl_shape",)) as f:  # a VLArray whose shape column is the secret
        vl = f.create_dataset("vl", shape=(20,), dtype=h5py.vlen_dtype("i4"))
        for i in range(20):
            vl[i] = np.arange(i + 1, dtype="i4")
        vl.attrs["CLASS"] = np.bytes_(b"VLARRAY")
        f.create_dataset("vl_shape", shape=(20, 1), dtype="<i8", external=[(str(secret), 0, 160)])
    return cases


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    return _outside_files(tmp_path_factory.mktemp("outside"))


OUTSIDE_CASES = (
    "external", "vds", "vds_relative", "vds_other_file", "external_link", "link_chain", "ragged_flat", "ragged_vlarray",
)  # fmt: skip
_LAYOUT_WORD = {"external": "external", "vds": "virtual", "vds_relative": "virtual", "vds_other_file": "virtual",
                "external_link": "external link", "link_chain": "external link"}  # fmt: skip


@pytest.mark.parametrize("case", OUTSIDE_CASES)
def test_data_outside_the_file_is_refused(outside, case):
    """Every entry point refuses, naming the node; no byte of the secret reaches any output."""
    path, node, names = outside[case]
    ragged = case.startswith("ragged")
    res = _run_entries(path, node)
    _assert_no_leak(res)
    api = ["read_ragged", "open_ragged"] if ragged else ["from_pytables"]
    for entry in [*api, "xr.open_dataset", "xr.open_datatree"]:
        rec = res[entry]
        assert not rec["ok"] and rec["etype"] == "ExternalDataError", (entry, rec)
        named = names[:1] if entry in api else names
        assert any(n in rec["message"] for n in named), (entry, rec["message"])
        assert "allow_external=True" in rec["message"], (entry, rec["message"])
    if not ragged:
        stats = res["daskh5 stats --json"]["value"]
        assert stats["rc"] == 1 and stats["stdout"] == "", stats
        assert stats["stderr"].startswith("daskh5: error: ") and names[0] in stats["stderr"], stats
    text = res["daskh5 info"]["value"]
    assert text["rc"] == 0 and "OUTSIDE THE FILE" in text["stdout"] and "refused" in text["stdout"], text
    report = json.loads(res["daskh5 info --json"]["value"]["stdout"])
    if ragged:  # the layout is NOT VALID, saying why without the side column's values
        (entry,) = [g for g in report["ragged"] if g["node"] == node]
        assert names[0] in entry["error"] and "allow_external=True" in entry["error"], entry
        assert f"{node} (" in text["stdout"] and "NOT VALID" in text["stdout"]
    else:
        (rec,) = [r for r in report["nodes"] if r["path"] == names[0]]
        assert rec["layout"] == _LAYOUT_WORD[case] and rec["refused"] is True, rec
        line = next(ln for ln in text["stdout"].splitlines() if ln.split()[:1] == [names[0].lstrip("/")])
        assert f" {_LAYOUT_WORD[case]} " in line and " contiguous" not in line, line


def _h5py_reference(outside, case):
    import h5py

    path, node, _names = outside[case]
    base = os.path.dirname(path)
    if case == "external_link":
        with h5py.File(os.path.join(base, "other.h5"), "r") as g:
            return g["/target"][()]
    if case == "link_chain":
        with h5py.File(os.path.join(base, "other.h5"), "r") as g:
            return g["/grp/x"][()]
    with contextlib.chdir(base), h5py.File(path, "r") as f:  # HDF5 takes relative EXTERNAL names from here
        return f[node][()]


@pytest.mark.parametrize(
    "case", ["external", "vds", "vds_relative", "vds_other_file", "external_link", "link_chain"]
)
def test_allow_external_reads_the_real_values(outside, case):
    """With the opt-in, the values are what h5py reads (an external link: the target file's data)."""
    path, node, names = outside[case]
    expected = _h5py_reference(outside, case).astype(float)
    res = _run_entries(path, node, allow=True, entries=[e for e in ENTRIES if "ragged" not in e])
    for entry in ("from_pytables", "xr.open_dataset", "xr.open_datatree"):
        assert res[entry]["ok"], (entry, res[entry])
    np.testing.assert_array_equal(res["from_pytables"]["value"], expected)
    np.testing.assert_array_equal(res["xr.open_dataset"]["value"]["data"], expected)
    np.testing.assert_array_equal(res["xr.open_datatree"]["value"]["/:data"], expected)
    stats = json.loads(res["daskh5 stats --json"]["value"]["stdout"])
    np.testing.assert_array_equal(np.asarray(stats["min"])[:, 0], expected)  # one label per row
    report = json.loads(res["daskh5 info --json"]["value"]["stdout"])
    (rec,) = [r for r in report["nodes"] if r["path"] == names[0]]
    assert rec["layout"] == _LAYOUT_WORD[case] and rec["refused"] is False, rec
    assert "read because of --allow-external" in res["daskh5 info"]["value"]["stdout"]


def test_allow_external_reads_ragged_side_columns(tmp_path):
    """Side columns in external files (relative names: next to the HDF5 file, not the current directory)."""
    import h5py

    samples = [np.arange(k, dtype="i8") * 10 + k for k in (3, 1, 4, 1, 5)]
    offsets = np.cumsum([0] + [len(s) for s in samples])
    ss = np.stack([offsets[:-1], offsets[1:]], axis=1).astype("<i8")
    (tmp_path / "offsets.bin").write_bytes(b"\0" * 16 + ss.tobytes())  # 16 bytes in: offsets are honoured
    (tmp_path / "shapes.bin").write_bytes(np.array([len(s) for s in samples], "<i8").tobytes())
    path = tmp_path / "ragged.h5"
    with h5py.File(path, "w") as f:
        f["tok"] = np.concatenate(samples)
        f.create_dataset(
            "tok_start_and_stop", shape=ss.shape, dtype="<i8", external=[("offsets.bin", 16, ss.nbytes)]
        )
        f.create_dataset("tok_shape", shape=(5, 1), dtype="<i8", external=[("shapes.bin", 0, 40)])
        vl = f.create_dataset("vl", shape=(5,), dtype=h5py.vlen_dtype("i8"))
        for i, s in enumerate(samples):
            vl[i] = s
        vl.attrs["CLASS"] = np.bytes_(b"VLARRAY")
        f["vl_shape"] = h5py.SoftLink("/tok_shape")  # a soft link inside the file is fine
    want = [s.astype(float).tolist() for s in samples]
    for node in ("/tok", "/vl"):
        refused = _run_entries(path, node, entries=["open_ragged"])["open_ragged"]
        assert refused["etype"] == "ExternalDataError" and "/tok_" in refused["message"], refused
        res = _run_entries(
            path, node, allow=True, entries=["read_ragged", "open_ragged", "daskh5 info --json"]
        )
        assert res["read_ragged"]["value"] == want and res["open_ragged"]["value"] == want, (node, res)
        report = json.loads(res["daskh5 info --json"]["value"]["stdout"])
        assert {g["node"]: g.get("samples") for g in report["ragged"]} == {"/tok": 5, "/vl": 5}, report


def test_same_file_virtual_dataset_over_internal_storage_is_read(tmp_path):
    """A VDS whose sources are ordinary datasets of the same file (even through a soft link) stays allowed."""
    import h5py

    path = tmp_path / "vds.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=np.arange(6.0), chunks=(2,))
        f["g/b"] = np.arange(6.0) + 100
        f["alias"] = h5py.SoftLink("/g/b")
        layout = h5py.VirtualLayout(shape=(2, 6), dtype="f8")
        layout[0] = h5py.VirtualSource(".", "a", shape=(6,))
        layout[1] = h5py.VirtualSource(".", "alias", shape=(6,))
        f.create_virtual_dataset("data", layout)
        expected = f["data"][()]
    res = _run_entries(path, "/data", entries=["from_pytables", "daskh5 info --json"])
    assert res["from_pytables"]["ok"], res
    np.testing.assert_array_equal(res["from_pytables"]["value"], expected)
    (rec,) = [
        r for r in json.loads(res["daskh5 info --json"]["value"]["stdout"])["nodes"] if r["path"] == "/data"
    ]
    assert rec["layout"] == "virtual" and "outside" not in rec, rec


def test_link_to_a_fifo_neither_hangs_nor_opens_it(tmp_path):
    """Following an external link to a FIFO blocks forever in HDF5; daskh5 refuses before opening anything."""
    import h5py

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    path = tmp_path / "fifo.h5"
    with h5py.File(path, "w") as f:
        f["data"] = h5py.ExternalLink(str(fifo), "/x")
    res = _run_entries(path, "/data", entries=["from_pytables", "xr.open_dataset", "daskh5 info"])
    assert (
        res["from_pytables"]["etype"] == "ExternalDataError"
        and res["xr.open_dataset"]["etype"] == "ExternalDataError"
    )
    opted = _run_entries(path, "/data", allow=True, entries=["from_pytables"])["from_pytables"]
    assert opted["etype"] == "NotHDF5Error" and "not a regular file" in opted["message"], opted


def test_soft_link_loops_are_an_error(tmp_path):
    import h5py

    path = tmp_path / "loop.h5"
    with h5py.File(path, "w") as f:
        f["a"] = h5py.SoftLink("/b")
        f["b"] = h5py.SoftLink("/a/x")
    rec = _run_entries(path, "/a", entries=["from_pytables"])["from_pytables"]
    assert rec["daskh5_error"] and "links" in rec["message"] and "/a" in rec["message"], rec


def test_link_name_with_a_slash_never_aliases_another_node(tmp_path):
    """A crafted link named ``grp/child`` at the root must not show ``/grp/child``'s data as a root variable."""
    import h5py

    path = tmp_path / "slash.h5"
    with h5py.File(path, "w", libver="earliest") as f:  # v1 groups: names in a local heap, no checksums
        f["grp/child"] = np.arange(5) + 500
        f["grpXchild"] = np.arange(3)
    data = path.read_bytes()
    assert data.count(b"grpXchild") == 1
    path.write_bytes(data.replace(b"grpXchild", b"grp/child"))
    with h5py.File(path, "r") as f:
        assert "grp/child" in list(f.keys())  # h5py lists the crafted name as it is
    res = _run_entries(
        path, "/grp/child", entries=["xr.open_dataset", "xr.open_datatree", "daskh5 info --json"]
    )
    root = res["xr.open_dataset"]
    assert root["ok"] and root["value"] == {}, root  # nothing at the root: /grp/child is not a root variable
    assert any("grp/child" in w and "alias" in w for w in root["warnings"]), root["warnings"]
    tree = res["xr.open_datatree"]["value"]
    assert [k for k in tree if k.endswith(":child")] == ["/grp:child"], tree
    report = json.loads(res["daskh5 info --json"]["value"]["stdout"])
    assert (
        report["unreadable_links"] == ["/grp/child"]
        and [r["path"] for r in report["nodes"]].count("/grp/child") == 1
    )


@pytest.mark.parametrize("seed", range(3))
def test_virtual_datasets_read_like_h5py(tmp_path, seed):
    """daskh5's own VDS reader (boxes onto boxes) and its h5py fallback agree with h5py on any selection:
    several sources, gaps and missing sources (fill value), a strided mapping, a converted dtype."""
    import h5py

    from daskh5._nodes import describe_array
    from daskh5._reader import NodeReader

    rng = np.random.default_rng(seed)
    path = tmp_path / "vds.h5"
    with h5py.File(path, "w") as f, h5py.File(tmp_path / "src.h5", "w") as g:
        f.create_dataset("a", data=rng.normal(size=(8, 6)), chunks=(3, 4))
        g["b"] = rng.normal(size=(5, 6))
        f["ints"] = rng.integers(0, 9, size=(3, 6)).astype("i2")
        boxes = h5py.VirtualLayout(shape=(20, 6), dtype="f8")
        boxes[0:8] = h5py.VirtualSource(".", "a", shape=(8, 6))
        boxes[10:13, 1:5] = h5py.VirtualSource("src.h5", "b", shape=(5, 6))[2:5, 0:4]
        boxes[14:16] = h5py.VirtualSource(".", "nothing", shape=(2, 6))  # sources that do not exist
        boxes[17:19] = h5py.VirtualSource("nosuch.h5", "x", shape=(2, 6))
        f.create_virtual_dataset("boxes", boxes, fillvalue=-7.0)
        strided = h5py.VirtualLayout(shape=(8, 6), dtype="f8")
        strided[::2] = h5py.VirtualSource(".", "a", shape=(8, 6))[0:4]
        f.create_virtual_dataset("strided", strided, fillvalue=-1.0)
        converted = h5py.VirtualLayout(shape=(3, 6), dtype="f8")
        converted[:] = h5py.VirtualSource(".", "ints", shape=(3, 6))
        f.create_virtual_dataset("converted", converted)
    with h5py.File(path, "r") as f:
        for node, own in (("boxes", True), ("strided", False), ("converted", True)):
            info = describe_array(str(path), node, allow_external=True)
            assert bool(info.virtual) is own, node
            reader, expected = NodeReader(info), f[node][()]
            np.testing.assert_array_equal(reader[...], expected)
            for _ in range(20):
                rows = np.sort(rng.choice(expected.shape[0], size=rng.integers(1, 4), replace=False))
                a, b = sorted(rng.integers(0, 7, size=2))
                np.testing.assert_array_equal(reader[rows, a:b], expected[rows, a:b], err_msg=node)
                np.testing.assert_array_equal(reader[a : b + 3], expected[a : b + 3], err_msg=node)
    refused = corpus.run_limited(
        f"import daskh5; daskh5.from_pytables({str(path)!r}, '/boxes')", timeout=120
    )  # the source in src.h5 is another file
    assert refused["etype"] == "daskh5.errors.ExternalDataError" and "src.h5" in refused["message"], refused


def test_pandas_key_whose_table_lives_elsewhere_is_refused(tmp_path):
    """A pandas key's nodes are looked up link by link too: a ``table`` that is an external link is refused."""
    import h5py
    import pandas as pd

    df = pd.DataFrame({"x": np.arange(5.0), "c": pd.Categorical(list("abcab"))})
    other = tmp_path / "other.h5"
    df.to_hdf(other, key="df", format="table")
    path = tmp_path / "upload.h5"
    df.iloc[:2].to_hdf(path, key="df", format="table")
    with h5py.File(path, "a") as f:
        del f["df/table"]
        f["df/table"] = h5py.ExternalLink("other.h5", "/df/table")
    code = (
        "import xarray as xr, json\n"
        f"path = {str(path)!r}\n"
        "try:\n"
        "    xr.open_dataset(path, engine='daskh5', group='df').load()\n"
        "    refused = None\n"
        "except Exception as e:\n"
        "    refused = [type(e).__name__, str(e)]\n"
        "ds = xr.open_dataset(path, engine='daskh5', group='df', allow_external=True)\n"
        "result = {'refused': refused, 'x': ds['x'].values.tolist()}\n"
    )
    rec = corpus.run_limited(code, memory=3 * corpus.GiB, timeout=120)
    assert rec["status"] == "ok", rec
    name, message = rec["result"]["refused"]
    assert name == "ExternalDataError" and "/df/table" in message and "other.h5" in message
    assert rec["result"]["x"] == df["x"].tolist()  # opted in: the target file's table, all 5 rows


# -- issue 12, section 2: decoders are an allowlist; contiguous nodes are read with pread, not a
# memory map; integer and float types HDF5 must convert are converted, never reinterpreted ---------------------
LOSSY = {  # hdf5plugin filters that end or crash the process on garbage chunks
    "sz": lambda h: h.SZ(absolute=0.01),  # calls exit(0)
    "sz3": lambda h: h.SZ3(absolute=0.01),  # aborts or segfaults
    "sperr": lambda h: h.Sperr(rate=8),  # segfaults
}
RAGGED_CODECS = {"sz", "sz3"}  # SPERR takes 2-d and 3-d floats only: no flat ragged layout


def _registered_lossy() -> list[str]:
    import hdf5plugin

    return [c for c in LOSSY if c in hdf5plugin.get_config().registered_filters]


def _write_lossy(path: Path, codec: str) -> None:
    """``/data`` (2-d float32) and, where the codec takes them, a flat ragged layout ``/samples``,
    every node compressed with ``codec``."""
    import h5py
    import hdf5plugin

    opts = LOSSY[codec](hdf5plugin)
    rng = np.random.default_rng(12)
    with h5py.File(path, "w") as f:
        data = np.linspace(0, 50, 64 * 64).reshape(64, 64) + rng.normal(size=(64, 64))
        f.create_dataset("data", data=data.astype("f4"), chunks=(32, 64), **opts)
        if codec in RAGGED_CODECS:
            lengths = rng.integers(1, 20, size=50)
            stops = np.cumsum(lengths)
            f.create_dataset(
                "samples", data=rng.normal(size=int(stops[-1])).astype("f4"), chunks=(100,), **opts
            )
            ss = np.stack([stops - lengths, stops], axis=1).astype("i8")
            f.create_dataset("samples_start_and_stop", data=ss, chunks=(25, 2), **opts)


def _garble_chunks(src: Path, dst: Path, seed: int = 0) -> None:
    """A copy of ``src`` with every stored chunk overwritten by random bytes (metadata intact)."""
    import h5py

    extents = []

    def visit(_name, obj):
        if isinstance(obj, h5py.Dataset) and obj.chunks:
            for i in range(obj.id.get_num_chunks()):
                info = obj.id.get_chunk_info(i)
                extents.append((info.byte_offset, info.size))

    with h5py.File(src, "r", locking=False) as f:
        f.visititems(visit)
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(seed)
    for offset, size in extents:
        data[offset : offset + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def lossy(tmp_path_factory):
    """codec -> (intact file, the same file with garbage chunks)."""
    out = {}
    for codec in _registered_lossy():
        d = tmp_path_factory.mktemp(codec)
        intact, garbled = d / "intact.h5", d / "garbled.h5"
        _write_lossy(intact, codec)
        _garble_chunks(intact, garbled)
        out[codec] = (str(intact), str(garbled))
    return out


@pytest.mark.parametrize("codec", _registered_lossy())
def test_garbled_lossy_chunks_do_kill_a_process(lossy, codec):
    """The hazard is real: HDF5 with hdf5plugin's decoder dies on the garbled file (so the test below can fail)."""
    _intact, garbled = lossy[codec]
    code = f"import h5py, hdf5plugin\nh5py.File({garbled!r}, 'r', locking=False)['/data'][...]"
    assert corpus.run_limited(code)["status"] == "died"


@pytest.mark.parametrize("entry", corpus.ENTRY_POINTS)
@pytest.mark.parametrize("codec", _registered_lossy())
def test_refused_filters_never_reach_a_decoder(lossy, codec, entry):
    """Every entry point on garbage SZ/SZ3/SPERR chunks: a daskh5 error naming the filter, or
    (``info``) a report that shows the filter as refused; the process never dies."""
    _intact, garbled = lossy[codec]
    node = {"from_pytables": "/data", "read_ragged": "/samples", "open_ragged": "/samples"}.get(entry)
    if node == "/samples" and codec not in RAGGED_CODECS:
        pytest.skip(f"{codec} cannot compress a flat ragged layout")
    if entry.startswith("info"):
        code = (
            "from daskh5 import cli\n"
            f"rep = cli.info({garbled!r})\n"
            f"cli.main([{', '.join(map(repr, entry.split()))}, {garbled!r}])\n"
            "result = {n['path']: n.get('refused_filters') for n in rep['nodes']}, "
            "[g.get('error', '') for g in rep['ragged']]"
        )
    else:
        code = f"result = corpus.run_entry({entry!r}, {garbled!r}, {node!r})"
    rec = corpus.run_limited(code)
    assert rec["status"] == "ok", rec
    fid = {"sz": 32017, "sz3": 32024, "sperr": 32028}[codec]
    if entry.startswith("info"):
        refused, ragged_errors = rec["result"]
        assert refused["/data"] == [{"id": fid, "name": codec}]
        assert f"REFUSED: filter {fid} ({codec})" in rec["stdout"] or "refused_filters" in rec["stdout"]
        if codec in RAGGED_CODECS:  # its side columns would have to be decoded to validate it
            assert ragged_errors and all(f"filter {fid} ({codec})" in e for e in ragged_errors), ragged_errors
        return
    result = rec["result"]
    assert result["status"] == "error" and result["daskh5_error"], result
    assert result["etype"] == "daskh5.errors.UnsupportedFilterError", result
    msg = result["message"]
    assert garbled in msg and f"{fid} ({codec})" in msg and f"allow_filters=[{codec!r}]" in msg, msg
    assert (node or "/data") in msg or "/samples" in msg, msg


@pytest.mark.parametrize("codec", _registered_lossy())
def test_trusted_filters_read_what_h5py_reads(lossy, codec):
    """``allow_filters=[codec]`` on an intact file: every entry point reads HDF5's (lossy) values."""
    intact, _garbled = lossy[codec]
    code = f"""
import h5py, hdf5plugin, numpy as np, xarray as xr, daskh5
path, codec = {intact!r}, {codec!r}
with h5py.File(path, "r", locking=False) as f:
    want = f["/data"][...]
    flat = f["/samples"][...] if "samples" in f else None
    ss = f["/samples_start_and_stop"][...] if "samples" in f else None
result = {{}}
result["from_pytables"] = bool(np.array_equal(daskh5.from_pytables(path, "/data", allow_filters=[codec]).compute(), want))
with xr.open_dataset(path, engine="daskh5", allow_filters=[codec]) as ds:
    result["xr.open_dataset"] = bool(np.array_equal(ds["data"].values, want))
tree = xr.open_datatree(path, engine="daskh5", allow_filters=[codec])
result["xr.open_datatree"] = bool(np.array_equal(tree["data"].values, want))
if flat is not None:
    samples = [flat[a:b] for a, b in ss]
    bag = daskh5.read_ragged(path, "/samples", allow_filters=[codec]).compute(scheduler="sync")
    result["read_ragged"] = len(bag) == len(samples) and all(np.array_equal(a, b) for a, b in zip(bag, samples))
    with daskh5.open_ragged(path, "/samples", allow_filters=[codec]) as r:
        result["open_ragged"] = all(np.array_equal(r[i], s) for i, s in enumerate(samples))
"""
    rec = corpus.run_limited(code)
    assert rec["status"] == "ok", rec
    expected = {"from_pytables", "xr.open_dataset", "xr.open_datatree"}
    if codec in RAGGED_CODECS:
        expected |= {"read_ragged", "open_ragged"}
    assert rec["result"] == dict.fromkeys(expected, True)


def test_allow_filters_takes_ids_and_names(tmp_path):
    from daskh5._codecs import SAFE_FILTERS, allowed_filters

    assert allowed_filters() == SAFE_FILTERS
    assert allowed_filters(["SZ3", 32017, "32028"]) - SAFE_FILTERS == {32017, 32024, 32028}
    with pytest.raises(ValueError, match="unknown filter name 'sz4'"):
        allowed_filters(["sz4"])
    with pytest.raises(TypeError):
        allowed_filters([1.5])


def test_stats_command_refuses_and_opts_in(tmp_path):
    """``daskh5 stats`` on SZ-compressed data: one error line naming ``--allow-filter``, exit 1;
    with ``--allow-filter sz`` it computes."""
    import h5py
    import hdf5plugin

    if "sz" not in hdf5plugin.get_config().registered_filters:
        pytest.skip("this hdf5plugin has no SZ")
    path = tmp_path / "stats.h5"
    rng = np.random.default_rng(5)
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "data", data=rng.normal(size=(2000, 2)), chunks=(500, 2), **hdf5plugin.SZ(absolute=1e-3)
        )
        f.create_dataset("clusters", data=rng.integers(0, 3, size=2000), chunks=(500,))
    runs = []
    for extra in ([], ["--allow-filter", "sz"]):
        proc = subprocess.run(
            [sys.executable, "-m", "daskh5", "stats", str(path), "--json", *extra],
            capture_output=True,
            text=True,
            timeout=120,
            env=corpus.worker_env(hardened=False),
            cwd=str(corpus.REPO),
        )
        runs.append(proc)
    refused, allowed = runs
    assert refused.returncode == 1 and refused.stderr.startswith("daskh5: error: "), refused
    assert "32017 (sz)" in refused.stderr and "--allow-filter sz" in refused.stderr
    assert allowed.returncode == 0, allowed.stderr
    assert sum(json.loads(allowed.stdout)["count"]) == 2000


def _write_vl_with_filter(path: Path, fid: int) -> list[np.ndarray]:
    """A PyTables-style VLArray whose pipeline has filter ``fid`` (optional: HDF5 writes it anyway)."""
    import h5py
    from h5py import h5d, h5p, h5s, h5t, h5z

    rows = [np.arange(i, dtype="f4") for i in range(1, 11)]
    with h5py.File(path, "w") as f:
        dcpl = h5p.create(h5p.DATASET_CREATE)
        dcpl.set_chunk((5,))
        dcpl.set_filter(fid, h5z.FLAG_OPTIONAL, ())
        h5d.create(f.id, b"vl", h5t.vlen_create(h5t.IEEE_F32LE), h5s.create_simple((len(rows),)), dcpl=dcpl)
        f["vl"][...] = np.array(rows, dtype=object)
        f["vl"].attrs["CLASS"] = np.bytes_(b"VLARRAY")
    return rows


def test_vlarray_with_a_refused_filter(tmp_path):
    """VLArray rows are read by h5py, so their pipeline is checked too (and opting in reads them)."""
    import hdf5plugin

    if "sz" not in hdf5plugin.get_config().registered_filters:
        pytest.skip("this hdf5plugin has no SZ")
    path = tmp_path / "vl.h5"
    rows = _write_vl_with_filter(path, 32017)
    code = f"""
import numpy as np, daskh5
out = []
for call in (lambda: daskh5.read_ragged({str(path)!r}, "/vl"), lambda: daskh5.open_ragged({str(path)!r}, "/vl")):
    try:
        call()
        out.append("opened")
    except daskh5.UnsupportedFilterError as exc:
        out.append(str(exc))
got = daskh5.read_ragged({str(path)!r}, "/vl", allow_filters=["sz"]).compute(scheduler="sync")
result = out, [r.tolist() for r in got]
"""
    rec = corpus.run_limited(code)
    assert rec["status"] == "ok", rec
    refusals, got = rec["result"]
    assert all("32017 (sz)" in r and "/vl" in r for r in refusals), refusals
    assert got == [r.tolist() for r in rows]


def test_a_file_replaced_after_open_is_checked_again(tmp_path):
    """The pipeline is checked again right before every h5py read: a file swapped for one whose
    node uses a refused filter, after the array or ragged reader was made, is refused then."""
    import h5py
    import hdf5plugin

    if "sz" not in hdf5plugin.get_config().registered_filters:
        pytest.skip("this hdf5plugin has no SZ")
    path, vl_path = tmp_path / "swap.h5", tmp_path / "vl.h5"
    data = np.arange(4096, dtype="f4").reshape(64, 64)
    with h5py.File(path, "w") as f:  # fletcher32: read through h5py, not by daskh5's decoders
        f.create_dataset("data", data=data, chunks=(32, 64), fletcher32=True)
    _write_vl_with_filter(vl_path, 1)
    swapped, vl_swapped = tmp_path / "swapped.h5", tmp_path / "vl_swapped.h5"
    with h5py.File(swapped, "w") as f:
        f.create_dataset("data", data=data, chunks=(32, 64), **hdf5plugin.SZ(absolute=0.01))
    _garble_chunks(swapped, swapped)
    _write_vl_with_filter(vl_swapped, 32017)
    code = f"""
import os, daskh5
x = daskh5.from_pytables({str(path)!r}, "/data")
r = daskh5.open_ragged({str(vl_path)!r}, "/vl")
os.replace({str(swapped)!r}, {str(path)!r})
os.replace({str(vl_swapped)!r}, {str(vl_path)!r})
result = []
for call in (lambda: x.compute(scheduler="sync"), lambda: r[0:3]):
    try:
        call()
        result.append("read")
    except daskh5.UnsupportedFilterError as exc:
        result.append(str(exc))
"""
    rec = corpus.run_limited(code)
    assert rec["status"] == "ok", rec
    assert all("32017 (sz)" in m for m in rec["result"]), rec["result"]


def test_virtual_dataset_over_a_refused_filter(tmp_path):
    """A virtual dataset whose source (in the same file) has garbage SZ chunks: a daskh5 error, not death."""
    import h5py
    import hdf5plugin

    if "sz" not in hdf5plugin.get_config().registered_filters:
        pytest.skip("this hdf5plugin has no SZ")
    path = tmp_path / "vds.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("src", data=np.ones((64, 64), "f4"), chunks=(32, 64), **hdf5plugin.SZ(absolute=0.1))
        layout = h5py.VirtualLayout(shape=(64, 64), dtype="f4")
        layout[...] = h5py.VirtualSource(".", "src", shape=(64, 64))
        f.create_virtual_dataset("v", layout)
    _garble_chunks(path, path)
    rec = corpus.run_limited(f"result = corpus.run_entry('from_pytables', {str(path)!r}, '/v')")
    assert rec["status"] == "ok", rec
    assert rec["result"]["status"] == "error" and rec["result"]["daskh5_error"], rec["result"]


def _contiguous_file(path: Path) -> np.ndarray:
    data = np.arange(1 << 18, dtype="f8").reshape(-1, 4)  # 2 MiB
    with tables.open_file(path, "w") as f:
        f.create_array("/", "data", obj=data)
    return data


_TRUNCATE = {
    # after the array is made, before compute: HDF5's metadata no longer fits the file
    "before-compute": "os.truncate(path, size // 2)",
    # ... with the modification time put back, so nothing but the size tells
    "before-compute-same-mtime": "os.truncate(path, size // 2); os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))",
}


@pytest.mark.parametrize("when", [*_TRUNCATE, "while-reading"])
@pytest.mark.parametrize("selection", ["[...]", "[::3]", "[[5, 60000, 9]]"])
def test_contiguous_node_truncated_under_the_reader(tmp_path, when, selection):
    """A contiguous node whose file is cut short after the array was made, even in the middle of
    a read: a daskh5 error, never SIGBUS (what a memory map of the file gives)."""
    path = tmp_path / "contig.h5"
    data = _contiguous_file(path)
    if when == "while-reading":  # the reader takes its output buffer, then the file is cut
        cut = (
            "from daskh5 import _buffers\n"
            "real_empty = _buffers.empty\n"
            "def empty(*args, **kwargs):\n"
            "    os.truncate(path, size // 2)\n"
            "    return real_empty(*args, **kwargs)\n"
            "_buffers.empty = empty\n"
        )
    else:
        cut = _TRUNCATE[when] + "\n"
    code = (
        f"import os, daskh5\npath = {str(path)!r}\nst = os.stat(path)\nsize = st.st_size\n"
        f"x = daskh5.from_pytables(path, '/data')\nfirst = x[:10].compute()\n{cut}"
        f"result = float(x{selection}.sum().compute(scheduler='sync'))"
    )
    rec = corpus.run_limited(code)
    assert rec["status"] == "error" and rec["daskh5_error"], rec
    assert rec["etype"] in ("daskh5.errors.ChunkDecodeError", "daskh5.errors.NotHDF5Error"), rec
    assert str(path) in rec["message"], rec["message"]
    if when != "before-compute":  # HDF5's metadata was read already: the short read is what tells
        assert rec["etype"] == "daskh5.errors.ChunkDecodeError", rec
        assert "/data" in rec["message"] and "cut short" in rec["message"], rec
    assert float(np.asarray(data).sum()) > 0


def test_contiguous_reads_hold_no_memory_map(tmp_path):
    """Reading a contiguous node leaves no mapping of the file in the process."""
    path = tmp_path / "contig.h5"
    data = _contiguous_file(path)
    code = (
        f"import daskh5\nx = daskh5.from_pytables({str(path)!r}, '/data')\n"
        "total = float(x.sum().compute()) + float(x[::5].sum().compute())\n"
        f"maps = [line for line in open('/proc/self/maps') if {str(path)!r} in line]\n"
        "result = total, maps"
    )
    rec = corpus.run_limited(code)
    assert rec["status"] == "ok", rec
    total, maps = rec["result"]
    assert total == float(data.sum() + data[::5].sum()) and maps == []


def _write_odd_numbers(path: Path) -> dict[str, object]:
    """Nodes whose HDF5 types are not numpy's bytes as they are; returns what h5py reads for each."""
    import h5py
    from h5py import h5d, h5p, h5s, h5t

    def create(f, name, ftype, values, mtype, chunks=None, kind=b"CARRAY"):
        dcpl = h5p.create(h5p.DATASET_CREATE)
        if chunks:
            dcpl.set_chunk(chunks)
            dcpl.set_deflate(4)
        ds = h5d.create(f.id, name.encode(), ftype, h5s.create_simple(values.shape), dcpl=dcpl)
        ds.write(h5s.ALL, h5s.ALL, np.ascontiguousarray(values), mtype=mtype)
        f[name].attrs["CLASS"] = np.bytes_(kind)

    def int_type(base, precision, offset):
        t = base.copy()
        t.set_precision(precision)
        t.set_offset(offset)
        return t

    i12 = int_type(h5t.STD_I32LE, 12, 4)  # 12-bit signed integers in bits 4..15 of 32-bit words
    fbias = h5t.IEEE_F32LE.copy()
    fbias.set_ebias(100)  # float32 layout, exponent bias 100 instead of 127
    fmant = h5t.IEEE_F32LE.copy()
    fmant.set_fields(31, 26, 5, 0, 26)  # 5 exponent bits, 26 mantissa bits
    fmant.set_ebias(15)
    fnorm = h5t.IEEE_F64LE.copy()
    fnorm.set_norm(h5t.NORM_NONE)  # the leading mantissa bit is stored, not implied
    rng = np.random.default_rng(3)
    ints = rng.integers(-2000, 2000, size=(300, 3)).astype("i4")
    floats = rng.normal(scale=3, size=300)
    with h5py.File(path, "w") as f:
        create(f, "i12", i12, ints, h5t.NATIVE_INT32)
        create(f, "i12_chunked", i12, ints, h5t.NATIVE_INT32, chunks=(50, 3))
        create(f, "u10", int_type(h5t.STD_U16BE, 10, 0), rng.integers(0, 1024, size=300).astype("u2"),
               h5t.NATIVE_UINT16, chunks=(64,))  # fmt: skip
        create(f, "fbias", fbias, floats.astype("f4"), h5t.NATIVE_FLOAT)
        create(f, "fmant", fmant, floats.astype("f4"), h5t.NATIVE_FLOAT, chunks=(100,))
        create(f, "fnorm", fnorm, floats, h5t.NATIVE_DOUBLE)
        # a Table with a 12-bit column next to a plain one
        row = h5t.create(h5t.COMPOUND, 12)
        row.insert(b"n", 0, i12)
        row.insert(b"x", 4, h5t.IEEE_F64LE)
        mem = h5t.create(h5t.COMPOUND, 12)
        mem.insert(b"n", 0, h5t.NATIVE_INT32)
        mem.insert(b"x", 4, h5t.NATIVE_DOUBLE)
        records = np.zeros(300, dtype=np.dtype({"names": ["n", "x"], "formats": ["<i4", "<f8"], "offsets": [0, 4],
                                                "itemsize": 12}))  # fmt: skip
        records["n"], records["x"] = ints[:, 0], floats
        create(f, "table", row, records, mem, chunks=(64,), kind=b"TABLE")
        # flat ragged layouts: 12-bit values, and 40-bit offsets
        lengths = rng.integers(1, 9, size=40)
        stops = np.cumsum(lengths)
        ss = np.stack([stops - lengths, stops], axis=1).astype("i8")
        create(f, "samples", i12, ints.reshape(-1)[: stops[-1]].copy(), h5t.NATIVE_INT32, chunks=(64,))
        create(f, "samples_start_and_stop", h5t.STD_I64LE, ss, h5t.NATIVE_INT64)
        create(f, "wide", h5t.IEEE_F64LE, floats, h5t.NATIVE_DOUBLE, chunks=(64,))
        create(f, "wide_start_and_stop", int_type(h5t.STD_I64LE, 40, 8), ss, h5t.NATIVE_INT64)
        # a bitfield with unused bits: HDF5 cannot convert it
        bits = h5t.STD_B8LE.copy()
        import ctypes

        lib = ctypes.CDLL(h5t.__file__)
        assert lib.H5Tset_precision(ctypes.c_int64(bits.id), ctypes.c_size_t(3)) >= 0
        assert lib.H5Tset_offset(ctypes.c_int64(bits.id), ctypes.c_size_t(2)) >= 0
        create(f, "bits", bits, np.arange(8, dtype="u1"), h5t.NATIVE_B8)
    with h5py.File(path, "r", locking=False) as f:
        return {name: f[name][...] for name in f if name != "bits"}


_ODD_ARRAYS = ["i12", "i12_chunked", "u10", "fbias", "fmant", "fnorm"]


def test_odd_number_types_are_what_the_test_thinks(tmp_path):
    """The crafted types really are non-native: their stored bytes, read as numpy would, are not h5py's values."""
    import h5py

    path = tmp_path / "odd.h5"
    want = _write_odd_numbers(path)
    raw = path.read_bytes()
    with h5py.File(path, "r", locking=False) as f:
        for name, stored in [("i12", "<i4"), ("fbias", "<f4"), ("fnorm", "<f8")]:
            offset = f[name].id.get_offset()
            as_is = np.frombuffer(raw, stored, count=want[name].size, offset=offset).reshape(want[name].shape)
            assert not np.allclose(as_is, want[name]), name


@pytest.mark.parametrize("entry", ["from_pytables", "read_ragged", "open_ragged", "xr.open_dataset", "info"])
def test_odd_number_types_read_as_h5py_converts_them(tmp_path, entry):
    """Integers with fewer bits than their size or a bit offset, floats with another exponent bias,
    mantissa or normalisation: every entry point reads h5py's values (or refuses the node clearly)."""
    path = tmp_path / "odd.h5"
    want = _write_odd_numbers(path)
    code = f"""
import numpy as np, warnings, daskh5, h5py
path = {str(path)!r}
with h5py.File(path, "r", locking=False) as f:
    want = {{name: f[name][...] for name in f if name != "bits"}}
result = {{}}
entry = {entry!r}
if entry == "from_pytables":
    for name in {_ODD_ARRAYS!r} + ["samples"]:
        x = daskh5.from_pytables(path, "/" + name, chunks="4KiB")
        got = x.compute(scheduler="sync")
        native = want[name].dtype.newbyteorder("=")  # daskh5 returns native byte order
        result[name] = bool(got.dtype == native and np.array_equal(got, want[name])
                            and np.array_equal(x[::7].compute(), want[name][::7]))
    try:
        daskh5.from_pytables(path, "/bits")
        result["bits"] = "read"
    except daskh5.UnsupportedDtypeError as exc:
        result["bits"] = "refused" if "/bits" in str(exc) else str(exc)
elif entry in ("read_ragged", "open_ragged"):
    for name in ("samples", "wide"):
        ss = want[name + "_start_and_stop"]
        samples = [want[name][a:b] for a, b in ss]
        if entry == "read_ragged":
            got = daskh5.read_ragged(path, "/" + name).compute(scheduler="sync")
        else:
            with daskh5.open_ragged(path, "/" + name) as r:
                got = list(r[:]) + [r[3], *r[[5, 2]]]
            samples = samples + [samples[3], samples[5], samples[2]]
        result[name] = len(got) == len(samples) and all(np.array_equal(a, b) for a, b in zip(got, samples))
elif entry == "xr.open_dataset":
    import xarray as xr
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = xr.open_dataset(path, engine="daskh5")
    for name in {_ODD_ARRAYS!r}:
        result[name] = bool(np.array_equal(ds[name].values, want[name]))
    result["table"] = bool(np.array_equal(ds["n"].values, want["table"]["n"]) and np.array_equal(ds["x"].values, want["table"]["x"]))
    result["bits"] = "refused" if "bits" not in ds and any("/bits" in str(w.message) for w in caught) else "read"
else:
    from daskh5 import cli
    rep = cli.info(path)
    result = {{n["path"]: n.get("dtype") for n in rep["nodes"]}}
"""
    rec = corpus.run_limited(code)
    assert rec["status"] == "ok", rec
    got = rec["result"]
    if entry == "info":
        assert got["/i12"] == "int32" and got["/fbias"] == str(want["fbias"].dtype), got
        return
    assert {k: v for k, v in got.items() if v is not True} == (
        {"bits": "refused"} if "bits" in got else {}
    ), got


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


@contextlib.contextmanager
def _held_open(path: str):
    """A PyTables reader in another process holding ``path`` open (HDF5 locks it) for the block."""
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
        yield
    finally:
        holder.kill()
        holder.wait()


def test_a_reader_holding_the_file_open_makes_append_and_write_ragged_busy(tmp_path):
    """HDF5's lock (held by a PyTables reader in another process) stops every writer: FileBusyError."""
    path = str(tmp_path / "data.h5")
    _good_file(path, None)
    before = _digest(path)
    with _held_open(path):
        for call in (
            "daskh5.append(np.ones((3, 10)), P, '/x', progress=False)",
            "daskh5.write_ragged([np.ones(3)], P, '/r', progress=False)",
            "daskh5.to_pytables(np.ones(3), P, '/x', mode='w', progress=False)",
        ):
            got = _run_writer(f"P = {path!r}\n{call}")
            assert got["status"] == "error" and got["etype"] == "daskh5.errors.FileBusyError", (call, got)
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


#: Child-process code: run each of ``steps`` (name -> callable), recording "read" or the daskh5 error.
_RUN_STEPS = """result = {}
for name, step in steps.items():
    try:
        step()
        result[name] = "read"
    except daskh5.Daskh5Error as exc:
        result[name] = str(exc)
"""


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
{_RUN_STEPS}result["one row"] = r[7].shape  # one row is one heap object: bounded by the file, read
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


@pytest.mark.parametrize("layout", ["chunked", "contiguous", "compound"])
def test_vlen_string_datasets_aliasing_one_heap_object(tmp_path, layout):
    """4,000 variable-length strings (an h5py/netCDF ``str`` variable, or a compound member) whose
    descriptors all name one 4 MiB heap object (16 GiB claimed by a 4 MB file): every entry point reads
    the descriptors with daskh5's own reader first and refuses, before HDF5 allocates."""
    import h5py

    path = str(tmp_path / "alias-str.h5")
    values = np.array(["x" * (1 << 22)] + ["y"] * 3999, dtype=object)
    with h5py.File(path, "w") as f:
        if layout == "compound":
            rec = np.empty(4000, dtype=[("id", "<i4"), ("s", h5py.string_dtype())])
            rec["id"], rec["s"] = np.arange(4000), values
            f.create_dataset("s", data=rec, chunks=(500,))
        else:
            chunks = (500,) if layout == "chunked" else None
            f.create_dataset("s", data=values, dtype=h5py.string_dtype(), chunks=chunks)
    _alias_descriptors(path, b"y", 1, 1 << 22)
    assert os.path.getsize(path) < 5 << 20
    out = _limited(f"""
import warnings, daskh5, xarray as xr
warnings.simplefilter("ignore")
var = "s"
steps = {{
    "from_pytables": lambda: daskh5.from_pytables({path!r}, "/s").compute(),
    "engine": lambda: xr.open_dataset({path!r}, engine="daskh5")[var].values,
    "engine chunks": lambda: xr.open_dataset({path!r}, engine="daskh5", chunks={{}})[var].compute(),
}}
if {layout!r} == "compound":
    del steps["from_pytables"]  # a compound dataset is a Table-like node: the engine reads it
{_RUN_STEPS}""")
    assert out["status"] == "ok", out
    for key, message in out["result"].items():
        assert f"{path}:/s" in message and "more than the whole" in message, (key, message)


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


@pytest.mark.slow
def test_a_deep_nest_of_groups_is_walked_in_linear_time(tmp_path):
    """7,000 nested groups (a 7 MB file): ``daskh5 info`` and ``xr.open_groups`` walk them once, opening each
    group from its parent (h5py's visit and opening by full path grow with the cube of the depth: 100 s at
    5,000 before, several minutes here, against the 180 s this child gets); ``open_datatree`` refuses a nest
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
        timeout=180,  # the old walks took several minutes at 7,000 levels; a loaded machine needs slack
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


@pytest.mark.slow
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


def test_pandas_metadata_attributes_are_sized_before_they_are_read(tmp_path, monkeypatch):
    """pandas' metadata attributes go through the same size check: one over the limit reads as missing."""
    import pandas as pd
    import xarray as xr

    from daskh5 import _pandas

    path = tmp_path / "frame.h5"
    pd.DataFrame({"x": np.arange(4.0)}).to_hdf(path, key="df", format="table")
    opened = []
    real = _pandas.small_attr

    def spy(obj, name, default=None, limit=None):
        opened.append((name, limit))
        return real(obj, name, default, limit)

    monkeypatch.setattr(_pandas, "small_attr", spy)
    ds = xr.open_dataset(path, engine="daskh5", group="df")
    assert ds["x"].values.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert ("pandas_type", _pandas._ATTR_LIMIT) in opened and ("info", _pandas._ATTR_LIMIT) in opened
    monkeypatch.setattr(_pandas, "_ATTR_LIMIT", 8)  # every attribute "too big": the key is opened as stored
    raw = xr.open_dataset(path, engine="daskh5", group="df")
    assert "x" not in raw and any(name.startswith("values_block") for name in raw.variables)


# -- issue 12: append writes large files in place, rolled back on failure (daskh5.copy-on-write-limit) -------------
# Files above the limit are not copied per append: the rows go into the file itself under the file's flock, with
# DASKH5_APPENDING marking the committed length, and any failure truncates back.  The limit is set to 1 KiB in
# the children so the files stay small.
_IN_PLACE = (
    "import dask\ndask.config.set({'daskh5.copy-on-write-limit': '1KiB'})\n"
    "import daskh5._safe_tables\n"
    "def _no_copy(*args):\n    raise AssertionError('the file was copied')\n"
    "daskh5._safe_tables._copy = _no_copy\n"  # every test below proves the path taken
)


def _earlier(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``/x`` as PyTables and as daskh5 read it."""
    with tables.open_file(path) as f:
        plain = f.root.x[:]
    return plain, daskh5.from_pytables(path, "/x").compute()


@pytest.mark.parametrize("filt", sorted(WRITE_FILTERS))
def test_in_place_append_equals_numpy(tmp_path, filt):
    """Above the limit the EArray grows in the file itself (same inode) and reads back as numpy's concatenation."""
    path = str(tmp_path / "data.h5")
    _good_file(path, eval(WRITE_FILTERS[filt]))
    earlier, _ = _earlier(path)
    inode = os.stat(path).st_ino
    new = "np.random.default_rng(2).random((2345, 10))"
    code = f"{_IN_PLACE}import numpy as np, dask.array as da, daskh5\n"
    code += f"daskh5.append(da.from_array({new}, chunks=(500, 10)), {path!r}, '/x', progress=False)"
    got = corpus.run_limited(code, timeout=120)
    assert got["status"] == "ok", got
    assert os.stat(path).st_ino == inode  # written in place, not a copy renamed over it
    want = np.concatenate([earlier, np.random.default_rng(2).random((2345, 10))])
    plain, ours = _earlier(path)
    np.testing.assert_array_equal(plain, want)
    np.testing.assert_array_equal(ours, want)
    with tables.open_file(path) as f:
        assert "DASKH5_APPENDING" not in f.root.x.attrs
    assert os.listdir(tmp_path) == ["data.h5"]


@pytest.mark.parametrize("filt", sorted(WRITE_FILTERS))
def test_in_place_append_past_the_file_size_limit_rolls_back(tmp_path, filt):
    """RLIMIT_FSIZE mid-append: a WriteError, and the file as it was (the pages HDF5 overwrote are put back).

    It reads exactly its earlier rows with PyTables and daskh5, and the next append works.
    """
    path = str(tmp_path / "data.h5")
    _good_file(path, eval(WRITE_FILTERS[filt]))
    earlier, _ = _earlier(path)
    inode, digest = os.stat(path).st_ino, _digest(path)
    limit = os.path.getsize(path) + 200_000  # room for a little of the 8 MB
    code = f"{_IN_PLACE}import numpy as np, daskh5\n{WRITE_MODES['append'].replace('P', repr(path), 1)}"
    got = corpus.run_limited(code, fsize=limit, timeout=120)
    assert got["status"] == "error" and got["etype"] == "daskh5.errors.WriteError", got
    assert "file-size limit" in got["message"] and path in got["message"], got["message"]
    assert os.stat(path).st_ino == inode and _digest(path) == digest
    plain, ours = _earlier(path)
    np.testing.assert_array_equal(plain, earlier)
    np.testing.assert_array_equal(ours, earlier)
    assert len(daskh5.open_ragged(path, "/r")) == 10
    assert os.listdir(tmp_path) == ["data.h5"]  # no temporary file
    with tables.open_file(path) as f:
        assert "DASKH5_APPENDING" not in f.root.x.attrs
    got = corpus.run_limited(
        f"{_IN_PLACE}import numpy as np, daskh5\ndaskh5.append(np.ones((7, 10)), {path!r}, '/x', progress=False)"
    )
    assert got["status"] == "ok", got
    np.testing.assert_array_equal(
        daskh5.from_pytables(path, "/x").compute(), np.concatenate([earlier, np.ones((7, 10))])
    )


def _fail_late(block, block_info=None):
    if block_info[0]["chunk-location"][0] >= 3:
        raise RuntimeError("the computation failed")
    return block


def test_in_place_append_rolls_back_a_failed_computation(tmp_path, monkeypatch):
    """A block raising after earlier blocks were stored: the user's error, and the file as it was."""
    import dask
    import dask.array as da

    import daskh5._safe_tables as safe_tables

    path = str(tmp_path / "data.h5")
    _good_file(path, eval(WRITE_FILTERS["blosc"]))
    monkeypatch.setattr(safe_tables, "_copy", None)  # the file is not copied
    earlier, _ = _earlier(path)
    digest = _digest(path)
    x = da.from_array(np.ones((5000, 10)), chunks=(500, 10)).map_blocks(_fail_late, dtype=float)
    with (
        dask.config.set({"daskh5.copy-on-write-limit": "1KiB"}),
        pytest.raises(RuntimeError, match="computation"),
    ):
        daskh5.append(x, path, "/x", progress=False)
    assert _digest(path) == digest
    plain, ours = _earlier(path)
    np.testing.assert_array_equal(plain, earlier)
    np.testing.assert_array_equal(ours, earlier)
    with tables.open_file(path) as f:
        assert "DASKH5_APPENDING" not in f.root.x.attrs
    assert os.listdir(tmp_path) == ["data.h5"]


@pytest.mark.slow
def test_a_killed_in_place_append_shows_the_earlier_rows_and_the_next_append_works(tmp_path):
    """SIGKILL after some chunks were stored: daskh5 readers show the committed rows; the next append drops the rest."""
    path = str(tmp_path / "data.h5")
    _good_file(path, eval(WRITE_FILTERS["zlib"]))
    earlier, _ = _earlier(path)
    code = f"""{_IN_PLACE}import time, numpy as np, dask.array as da, daskh5
def stall(block, block_info=None):
    if block_info[0]["chunk-location"][0] >= 4:
        time.sleep(600)
    return block
x = da.from_array(np.full((5000, 10), 7.0), chunks=(500, 10)).map_blocks(stall, dtype=float)
daskh5.append(x, {path!r}, '/x', progress=False)
"""
    got = corpus.run_limited(code, timeout=20)  # killed (SIGKILL) when the time is up
    assert got["status"] == "timeout", got
    with tables.open_file(path) as f:
        assert f.root.x.nrows == 6000  # the EArray was grown in place...
        assert int(f.root.x.attrs.DASKH5_APPENDING) == 1000
    np.testing.assert_array_equal(
        daskh5.from_pytables(path, "/x").compute(), earlier
    )  # ...readers show 1000 rows
    got = corpus.run_limited(
        f"{_IN_PLACE}import numpy as np, daskh5\ndaskh5.append(np.ones((7, 10)), {path!r}, '/x', progress=False)"
    )
    assert got["status"] == "ok", got
    want = np.concatenate([earlier, np.ones((7, 10))])
    plain, ours = _earlier(path)
    np.testing.assert_array_equal(plain, want)
    np.testing.assert_array_equal(ours, want)


def test_in_place_append_does_not_copy_the_file(tmp_path, monkeypatch):
    """Above the limit the file is never copied (a copy costs its whole size); at or below it, it is."""
    import dask

    import daskh5._safe_tables as safe_tables

    path = str(tmp_path / "data.h5")
    _good_file(path, None)

    def no_copy(*args):
        raise AssertionError("the file was copied")

    monkeypatch.setattr(safe_tables, "_copy", no_copy)
    size = os.path.getsize(path)
    with dask.config.set({"daskh5.copy-on-write-limit": size - 1}):
        daskh5.append(np.ones((3, 10)), path, "/x", progress=False)
    assert daskh5.from_pytables(path, "/x").shape == (1003, 10)
    with dask.config.set({"daskh5.copy-on-write-limit": f"{os.path.getsize(path)}B"}):
        with pytest.raises(AssertionError, match="copied"):
            daskh5.append(np.ones((3, 10)), path, "/x", progress=False)
    assert daskh5.from_pytables(path, "/x").shape == (1003, 10)


def test_in_place_append_along_a_middle_axis(tmp_path, monkeypatch):
    """An EArray extendable along axis 1 with a partly filled last chunk grows in place as numpy concatenates."""
    import dask
    import dask.array as da

    import daskh5._safe_tables as safe_tables

    path = str(tmp_path / "data.h5")
    old = np.arange(4 * 10 * 3, dtype="i4").reshape(4, 10, 3)
    with tables.open_file(path, "w") as f:
        f.create_earray("/", "x", tables.Int32Atom(), (4, 0, 3), chunkshape=(2, 7, 3)).append(old)
    monkeypatch.setattr(safe_tables, "_copy", None)  # the file is not copied
    new = np.arange(4 * 25 * 3, dtype="i4").reshape(4, 25, 3) + 1000
    with dask.config.set({"daskh5.copy-on-write-limit": "1KiB"}):
        daskh5.append(da.from_array(new, chunks=(4, 6, 3)), path, "/x", progress=False)
    want = np.concatenate([old, new], axis=1)
    with tables.open_file(path) as f:
        np.testing.assert_array_equal(f.root.x[:], want)
    np.testing.assert_array_equal(daskh5.from_pytables(path, "/x").compute(), want)


def test_in_place_append_after_a_read_in_the_same_process(tmp_path):
    """daskh5's reader caches an h5py handle (bzip2 is decoded by h5py); HDF5 shares it with later opens of
    the file, so the check after an in-place append saw the old shape (a WriteError), and reads the old rows."""
    import dask

    path = str(tmp_path / "data.h5")
    _good_file(path, eval(WRITE_FILTERS["bzip2"]))
    earlier = daskh5.from_pytables(path, "/x").compute()
    with dask.config.set({"daskh5.copy-on-write-limit": "1KiB"}):
        daskh5.append(np.ones((30, 10)), path, "/x", progress=False)
    np.testing.assert_array_equal(
        daskh5.from_pytables(path, "/x").compute(), np.concatenate([earlier, np.ones((30, 10))])
    )


def test_a_reader_holding_the_file_open_makes_an_in_place_append_busy(tmp_path):
    """The in-place path takes the same flock: a PyTables reader elsewhere makes it FileBusyError, nothing changed."""
    path = str(tmp_path / "data.h5")
    _good_file(path, None)
    before = _digest(path)
    with _held_open(path):
        got = corpus.run_limited(
            f"{_IN_PLACE}import numpy as np, daskh5\ndaskh5.append(np.ones((3, 10)), {path!r}, '/x', progress=False)"
        )
        assert got["status"] == "error" and got["etype"] == "daskh5.errors.FileBusyError", got
    assert _digest(path) == before

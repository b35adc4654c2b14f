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

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

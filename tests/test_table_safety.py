"""``read_table`` on hostile and damaged files: nothing in the file runs, bad input is a clear error.

Pickle traps are real (``corpus.Trap``: unpickling it creates a marker file, see
``test_hostile.test_every_trap_is_real``); reads of trapped files run in a fresh process
(``corpus.run_limited``) so a leak cannot hide behind an import cache.
"""

from __future__ import annotations

import json
import warnings

import corpus
import h5py
import numpy as np
import pandas as pd
import pytest
import tables
from test_pandas_files import _trap_block

import daskh5

pytestmark = pytest.mark.filterwarnings("ignore::tables.NaturalNameWarning")


def _to_hdf(obj, path, key, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj.to_hdf(path, key=key, mode="a", **kwargs)


# -- pickle traps --------------------------------------------------------------------------------------
READ_IN_CHILD = """
import json, warnings, daskh5
out = {{}}
for key, kw in {cases!r}:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = daskh5.read_table({path!r}, key, **kw).compute(scheduler="sync")
        out[key + repr(kw)] = {{"ok": got.reset_index(drop=True).to_dict(),
                               "warnings": [str(w.message) for w in caught]}}
    except Exception as exc:
        out[key + repr(kw)] = {{"error": type(exc).__name__, "daskh5": isinstance(exc, daskh5.Daskh5Error),
                               "message": str(exc)}}
result = json.loads(json.dumps(out, default=str))
"""


def _read_in_child(path: str, cases: list) -> dict:
    out = corpus.run_limited(READ_IN_CHILD.format(path=path, cases=cases), timeout=120)
    assert out["status"] == "ok", out
    return out["result"]


@pytest.mark.parametrize("fmt", ["fixed", "series"])
def test_trapped_object_block_runs_nothing_and_is_refused_naming_it(tmp_path, fmt):
    path, marker = str(tmp_path / "trap.h5"), tmp_path / "pwned"
    if fmt == "fixed":
        _to_hdf(pd.DataFrame({"s": ["a", "b", "c"], "v": [1.0, 2.0, 3.0]}), path, "k", format="fixed")
    else:
        _to_hdf(pd.Series(["a", "b"], name="s"), path, "k", format="fixed")
    _trap_block(path, "k", corpus.Trap(marker))
    res = _read_in_child(path, [("k", {}), ("k", {"columns": ["v"]} if fmt == "fixed" else {"where": None})])
    assert not marker.exists()
    for r in res.values():
        assert r["daskh5"] and r["error"] == "UnsupportedDtypeError", r
        assert "refused the pickled object block" in r["message"] and "io.open" in r["message"]
        assert ":/k" in r["message"] and "column 's'" in r["message"]


def test_trapped_pandas_metadata_runs_nothing_and_gives_the_stored_values(tmp_path):
    """Every pickled attribute of the table, series and fixed keys is a trap (``corpus.build_trapped``)."""
    markers_dir = tmp_path / "markers"
    markers_dir.mkdir()
    path = str(tmp_path / "trapped.h5")
    corpus.build_trapped(path, markers_dir)
    keys = ["/frame", "frame", "/series", "/fixed", "/table", "/frame/table"]
    res = _read_in_child(path, [(k, {}) for k in keys] + [("/frame", {"where": "b > 2"})])
    assert not list(markers_dir.iterdir()), "a trap ran"
    bugs = {k: r for k, r in res.items() if "error" in r and not r["daskh5"]}
    assert not bugs, bugs
    # with the labels' metadata refused the values are still the stored ones, never another's
    frame = res["/frame{}"]["ok"]
    assert list(frame["b"].values()) == [0, 1, 2, 3, 4, 5]
    assert list(frame["s"].values()) == list("abcdef")
    assert list(next(v for k, v in frame.items() if k not in ("b", "s")).values()) == [
        0.0,
        1.0,
        2.0,
        3.0,
        4.0,
        5.0,
    ]
    assert list(res["/frame{'where': 'b > 2'}"]["ok"]["b"].values()) == [3, 4, 5]
    assert list(res["/series{}"]["ok"].values()) == [0.0, 1.0, 2.0, 3.0]
    fixed = res["/fixed{}"]["ok"]
    assert list(fixed["a"].values()) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and list(fixed["s"].values()) == list(
        "abcdef"
    )
    assert res["/table{}"]["ok"] == {"x": {"0": 1.5, "1": 2.5}, "n": {"0": 2, "1": 3}}
    json.dumps(res)


# -- damaged chunks and lying metadata -----------------------------------------------------------------
def test_damaged_chunk_names_file_node_and_rows(tmp_path):
    path = str(tmp_path / "damaged.h5")
    rng = np.random.default_rng(1)
    rows = np.zeros(4000, dtype=[("x", "f8"), ("n", "i8")])
    rows["x"], rows["n"] = rng.normal(size=4000), np.arange(4000)
    with tables.open_file(path, "w") as f:
        f.create_table("/", "obs", obj=rows, filters=tables.Filters(5, "blosc:lz4"), chunkshape=(500,))
    with h5py.File(path) as f:
        chunk = f["/obs"].id.get_chunk_info(3)  # rows 1500..2000
    with open(path, "r+b") as fh:
        fh.seek(chunk.byte_offset + 16)  # past blosc's header: the compressed stream itself
        fh.write(b"\xff" * min(64, chunk.size - 16))
        fh.seek(chunk.byte_offset)
        fh.write(b"\x02\x01\x13\x10" + b"\xff" * 12)  # a header claiming impossible sizes
    ddf = daskh5.read_table(path, "/obs", partition_size="16KiB")
    with pytest.raises(daskh5.ChunkDecodeError) as info:
        ddf.compute(scheduler="sync")
    message = str(info.value)
    assert path in message and "/obs" in message
    assert "rows 1,500..2,000 (column 'x') cannot be read" in message, message
    # the partitions before the damaged chunk still read, and equal the file's rows
    first = daskh5.read_table(path, "/obs", partition_size="16KiB").partitions[0].compute()
    assert first["n"].tolist() == list(range(len(first)))


def test_fixed_index_longer_than_the_columns_is_refused(tmp_path):
    path = str(tmp_path / "lying.h5")
    _to_hdf(pd.DataFrame({"v": np.arange(5.0)}), path, "df", format="fixed")
    with h5py.File(path, "a") as f:
        g = f["/df"]
        attrs = dict(g["axis1"].attrs)
        del g["axis1"]
        g["axis1"] = np.arange(9)
        for k, v in attrs.items():
            g["axis1"].attrs[k] = v
    with pytest.raises(daskh5.Daskh5Error, match=r"lying.h5:/df.*column 'v'.*for 9 rows"):
        daskh5.read_table(path, "df")


def test_category_code_past_the_categories_is_refused(tmp_path):
    path = str(tmp_path / "codes.h5")
    df = pd.DataFrame({"c": pd.Categorical(["a", "b", "a", "b"] * 50), "v": np.arange(200.0)})
    _to_hdf(df, path, "df", format="table")
    with h5py.File(path, "a") as f:
        ds = f["/df/table"]
        rec = ds[...]
        field = next(n for n in rec.dtype.names if n.startswith("values_block") and rec[n].dtype.kind == "i")
        rec[field][7] = 42
        ds[...] = rec
    ddf = daskh5.read_table(path, "df")
    with pytest.raises(daskh5.Daskh5Error, match=r"codes.h5:/df.*column 'c'.*code 42.*2 categories"):
        ddf.compute(scheduler="sync")


def test_unsupported_column_types_name_the_column(tmp_path):
    path = str(tmp_path / "types.h5")
    with tables.open_file(path, "w") as f:
        f.create_table("/", "cells", obj=np.zeros(4, dtype=[("x", "f8"), ("m", "f4", (2, 2))]))
    with h5py.File(path, "a") as f:  # PyTables cannot write an array of records; HDF5 can
        f["nested"] = np.zeros(4, dtype=[("x", "f8"), ("r", [("a", "i4")], (2,))])
    with pytest.raises(daskh5.UnsupportedDtypeError, match=r"types.h5:/cells: column 'm' holds \(2, 2\)"):
        daskh5.read_table(path, "/cells")
    with pytest.raises(daskh5.UnsupportedDtypeError, match=r"types.h5:/nested: column 'r' is an array"):
        daskh5.read_table(path, "/nested")
    _to_hdf(pd.DataFrame({"p": pd.period_range("2020", periods=3, freq="M"), "v": [1.0, 2, 3]}), path,
            "periods", format="table")  # fmt: skip
    with pytest.raises(
        daskh5.UnsupportedDtypeError, match=r"types.h5:/periods: .*column\(s\) \['p'\] \(period\[M\]"
    ):
        daskh5.read_table(path, "periods")

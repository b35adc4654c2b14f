"""Ragged layouts: bags, random access, the writer, and bad layouts."""

from __future__ import annotations

import gc
import itertools
import os
import weakref

import dask.bag as db
import h5py
import numpy as np
import pytest
import tables

import daskh5
from daskh5._reader import NodeReader


def random_samples(n, rng, ndim=2, dtype="int32"):
    out = []
    for _ in range(n):
        shape = tuple(rng.integers(0, 6, size=ndim)) if ndim else ()
        out.append(rng.integers(-100, 100, size=shape).astype(dtype))
    return out


def write_by_hand(path, layout, samples, dtype="int32"):
    """The layouts exactly as users write them today with plain PyTables calls."""
    filters = tables.Filters(5, "blosc:lz4")
    with tables.open_file(path, "w") as f:
        if layout in ("flat", "flat-noshape"):
            flat = f.create_earray(
                "/", "data", atom=tables.Atom.from_dtype(np.dtype(dtype)), shape=(0,), filters=filters
            )
            ss = f.create_earray(
                "/", "data_start_and_stop", atom=tables.Int64Atom(), shape=(0, 2), filters=filters
            )
            if layout == "flat":
                k = samples[0].ndim
                shp = f.create_earray(
                    "/", "data_shape", atom=tables.Int32Atom(), shape=(0, k), filters=filters
                )
            offset = 0
            for s in samples:  # how users do it today, sample by sample
                flat.append(s.reshape(-1))
                ss.append([[offset, offset + s.size]])
                offset += s.size
                if layout == "flat":
                    shp.append([s.shape])
        else:
            vl = f.create_vlarray("/", "data", atom=tables.Atom.from_dtype(np.dtype(dtype)), filters=filters)
            for s in samples:
                vl.append(s.reshape(-1))
            if layout == "vlarray-shape":
                k = samples[0].ndim
                shp = f.create_earray("/", "data_shape", atom=tables.Int64Atom(), shape=(0, k))
                shp.append(np.array([s.shape for s in samples]).reshape(len(samples), k))


LAYOUTS = ["flat", "flat-noshape", "vlarray-shape", "vlarray"]


def expected_samples(layout, rng, n=300):
    ndim = 1 if layout in ("flat-noshape", "vlarray") else 2
    return random_samples(n, rng, ndim=ndim)


def assert_samples_equal(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("partition_size", [None, "1KiB", "700B", 70])
def test_read_ragged_every_layout(h5path, layout, partition_size, rng):
    samples = expected_samples(layout, rng)
    write_by_hand(h5path, layout, samples)
    bag = daskh5.read_ragged(h5path, "/data", partition_size=partition_size)
    assert isinstance(bag, db.Bag)
    if partition_size == "700B" and layout.startswith("flat"):  # a byte budget
        parts = bag.map_partitions(lambda p: [sum(a.nbytes for a in p)]).compute()
        assert len(parts) > 1 and all(n <= 700 for n in parts)
    if partition_size == 70:  # an int is a number of samples, as for iter_batches
        assert bag.map_partitions(lambda p: [len(p)]).compute()[:-1] == [70] * (len(samples) // 70)
    assert_samples_equal(bag.compute(scheduler="sync"), samples)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_open_ragged_random_access(h5path, layout, rng):
    samples = expected_samples(layout, rng)
    write_by_hand(h5path, layout, samples)
    with daskh5.open_ragged(h5path, "/data") as r:
        assert len(r) == len(samples)
        assert r.dtype == np.dtype("int32")
        assert_samples_equal([r[0], r[-1], r[137]], [samples[0], samples[-1], samples[137]])
        assert_samples_equal(r[10:20], samples[10:20])
        assert_samples_equal(r[::-7], samples[::-7])
        assert_samples_equal(r[[3, 7, 1, 3]], [samples[i] for i in [3, 7, 1, 3]])
        assert_samples_equal(r[np.array([-1, 0])], [samples[-1], samples[0]])
        mask = np.arange(len(samples)) % 5 == 0
        assert_samples_equal(r[mask], [s for s, m in zip(samples, mask, strict=True) if m])
        assert_samples_equal(list(r), samples)
        np.testing.assert_array_equal(r.lengths, [s.size for s in samples])
        np.testing.assert_array_equal(r.shapes, [s.shape for s in samples])
        batches = list(r.iter_batches(64))
        assert [len(b) for b in batches] == [64, 64, 64, 64, 44]
        assert_samples_equal(r.to_bag(partition_size="2KiB").compute(), samples)
        with pytest.raises(IndexError):
            r[len(samples)]
        with pytest.raises(IndexError):
            r[[0, len(samples)]]


def test_bulk_reads_not_one_per_sample(h5path, rng, monkeypatch):
    samples = random_samples(2000, rng)
    daskh5.write_ragged(samples, h5path, "/data", progress=False)
    calls = []
    original = NodeReader.__getitem__

    def counted(self, key):
        if self.info.node == "/data":  # side columns are read (once, in bulk) when the layout is opened
            calls.append(key)
        return original(self, key)

    monkeypatch.setattr(NodeReader, "__getitem__", counted)
    bag = daskh5.read_ragged(h5path, "/data", partition_size="8KiB")
    assert calls == []  # building the bag read none of the samples' data
    assert_samples_equal(bag.compute(scheduler="threads"), samples)
    assert len(calls) == bag.npartitions > 1
    r = daskh5.open_ragged(h5path, "/data")
    calls.clear()
    r[100:900]
    r[[5, 1500, 7, 1999]]
    assert len(calls) == 2


def test_partitions_respect_the_budget(h5path, rng):
    samples = random_samples(3000, rng)
    daskh5.write_ragged(samples, h5path, "/data", progress=False)
    r = daskh5.open_ragged(h5path, "/data")
    budget = 4096
    runs = r._runs(f"{budget}B")
    sizes = r.lengths * 4
    for i0, i1 in runs:
        assert sizes[i0:i1].sum() <= budget or i1 - i0 == 1
    assert runs[0][0] == 0 and runs[-1][1] == len(samples)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(runs))


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_schedulers(h5path, scheduler, layout, rng):
    samples = expected_samples(layout, rng, n=500)
    write_by_hand(h5path, layout, samples)
    bag = daskh5.read_ragged(h5path, "/data", partition_size="2KiB")
    assert bag.npartitions > 1
    assert bag.map(lambda a: int(a.sum())).compute(scheduler=scheduler) == [int(s.sum()) for s in samples]


@pytest.mark.cluster
@pytest.mark.parametrize("layout", ["flat", "vlarray-shape"])
def test_distributed(h5path, layout, rng, cluster_client):
    samples = expected_samples(layout, rng)
    write_by_hand(h5path, layout, samples)
    bag = daskh5.read_ragged(h5path, "/data", partition_size="1KiB")
    assert cluster_client.compute(bag.map(np.shape)).result() == [s.shape for s in samples]


@pytest.mark.parametrize("ndim", [0, 1, 3])
@pytest.mark.parametrize("dtype", ["bool", "uint8", "float32", "complex64", "S3"])
def test_write_read_ranks_and_dtypes(h5path, ndim, dtype, rng):
    samples = [
        a.astype(dtype) if dtype != "S3" else a.astype("S3") for a in random_samples(50, rng, ndim=ndim)
    ]
    daskh5.write_ragged(samples, h5path, "/x/data", progress=False)
    assert_samples_equal(daskh5.read_ragged(h5path, "/x/data").compute(), samples)
    with h5py.File(h5path) as f:
        assert ("data_shape" in f["x"]) == (ndim >= 2)


def test_empty_samples_and_zero_samples(h5path, rng):
    samples = [np.zeros((0, 3), "f4"), np.ones((2, 3), "f4"), np.zeros((4, 0), "f4")]
    daskh5.write_ragged(samples, h5path, "/data", progress=False)
    assert_samples_equal(daskh5.open_ragged(h5path, "/data")[:], samples)
    daskh5.write_ragged([], h5path, "/none", dtype="int16", progress=False)
    r = daskh5.open_ragged(h5path, "/none")
    assert len(r) == 0 and r[:] == [] and r.to_bag().compute() == []
    with pytest.raises(ValueError, match="dtype"):
        daskh5.write_ragged(iter([]), h5path, "/other", progress=False)


def test_writer_sources_list_generator_bag(h5path, rng):
    samples = random_samples(400, rng)
    daskh5.write_ragged(samples, h5path, "/list", progress=False)
    daskh5.write_ragged((s for s in samples), h5path, "/gen", progress=False)
    bag = db.from_sequence(samples, npartitions=13).map(lambda a: a * 2)
    daskh5.write_ragged(bag, h5path, "/bag", progress=False)
    for node, want in [("/list", samples), ("/gen", samples), ("/bag", [s * 2 for s in samples])]:
        assert_samples_equal(daskh5.open_ragged(h5path, node)[:], want)


def test_generator_is_streamed_not_materialised(h5path, rng):
    alive = {"now": 0, "max": 0}

    def gen():
        for _ in range(5000):
            a = rng.integers(0, 9, size=rng.integers(1, 20)).astype("int64")
            alive["now"] += 1
            alive["max"] = max(alive["max"], alive["now"])
            weakref.finalize(a, lambda: alive.__setitem__("now", alive["now"] - 1))
            yield a

    daskh5.write_ragged(gen(), h5path, "/data", batch_size=100, progress=False)
    gc.collect()
    assert alive["max"] <= 102  # one batch (plus the sample in hand), never all 5000
    assert len(daskh5.open_ragged(h5path, "/data")) == 5000


def test_append_continues_offsets(h5path, rng):
    a, b = random_samples(100, rng), random_samples(50, rng)
    daskh5.write_ragged(a, h5path, "/data", progress=False)
    daskh5.write_ragged(b, h5path, "/data", progress=False)
    with tables.open_file(h5path) as f:
        ss = f.root.data_start_and_stop[:]
    assert ss[100, 0] == ss[99, 1]
    assert_samples_equal(daskh5.open_ragged(h5path, "/data")[:], a + b)
    daskh5.write_ragged(b, h5path, "/data", mode="w", progress=False)
    assert_samples_equal(daskh5.open_ragged(h5path, "/data")[:], b)


def test_append_to_hand_written_layout(h5path, rng):
    a, b = random_samples(30, rng), random_samples(20, rng)
    write_by_hand(h5path, "flat", a)
    with pytest.raises(daskh5.RaggedLayoutError, match="int32"):
        daskh5.write_ragged([s.astype("int64") for s in b], h5path, "/data", progress=False)
    with tables.open_file(h5path) as f:  # the hand-written shape column is int32
        assert f.root.data_shape.atom.dtype == np.int32
    daskh5.write_ragged(b, h5path, "/data", progress=False)
    assert_samples_equal(daskh5.open_ragged(h5path, "/data")[:], a + b)


def test_mismatched_appends_are_refused_and_lose_nothing(h5path, rng):
    a = random_samples(40, rng)
    daskh5.write_ragged(a, h5path, "/data", progress=False)
    with pytest.raises(daskh5.RaggedLayoutError, match="2-d samples of int32"):
        daskh5.write_ragged([np.zeros(3, "int32")], h5path, "/data", progress=False)
    with pytest.raises(daskh5.RaggedLayoutError, match="sample 41"):
        daskh5.write_ragged(
            [np.zeros((1, 1), "int32"), np.zeros((1, 1), "int64")], h5path, "/data", progress=False
        )
    assert_samples_equal(daskh5.open_ragged(h5path, "/data")[:], a)


def test_failure_midway_keeps_earlier_content(h5path, rng):
    a = random_samples(100, rng)
    daskh5.write_ragged(a, h5path, "/data", progress=False)

    def broken():
        yield from random_samples(500, rng)
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        daskh5.write_ragged(broken(), h5path, "/data", batch_size=64, progress=False)
    assert_samples_equal(daskh5.open_ragged(h5path, "/data")[:], a)
    with pytest.raises(RuntimeError, match="source failed"):
        daskh5.write_ragged(broken(), h5path, "/new", batch_size=64, progress=False)
    with h5py.File(h5path) as f:
        assert "new" not in f and "new_start_and_stop" not in f and "new_shape" not in f


def test_failure_writing_a_new_file_leaves_nothing(tmp_path, rng):
    def broken():
        yield from random_samples(500, rng)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        daskh5.write_ragged(broken(), tmp_path / "new.h5", "/data", batch_size=64, progress=False)
    assert os.listdir(tmp_path) == []


def test_interrupted_append_rows_are_ignored(h5path, rng):
    """Rows past DASKH5_NSAMPLES (an append killed before committing) read as absent."""
    a = random_samples(20, rng)
    daskh5.write_ragged(a, h5path, "/data", progress=False)
    with tables.open_file(h5path, "a") as f:  # what a killed writer leaves: rows, no commit
        f.root.data.append(np.arange(10, dtype="int32"))
        end = int(f.root.data_start_and_stop[-1, 1])
        f.root.data_start_and_stop.append([[end, end + 10]])
        f.root.data_shape.append([[2, 5]])
    assert_samples_equal(daskh5.open_ragged(h5path, "/data")[:], a)
    b = random_samples(5, rng)
    daskh5.write_ragged(b, h5path, "/data", progress=False)  # the next append drops the leftovers
    assert_samples_equal(daskh5.open_ragged(h5path, "/data")[:], a + b)


def test_progress_bar(h5path, rng, capsys):
    daskh5.write_ragged(random_samples(10, rng), h5path, "/data")
    assert "writing /data" in capsys.readouterr().err


def test_pad_and_awkward(h5path, rng):
    samples = random_samples(60, rng)
    daskh5.write_ragged(samples, h5path, "/data", progress=False)
    r = daskh5.open_ragged(h5path, "/data")
    dense = r.pad(fill_value=-1)
    assert dense.shape == (60, *np.max([s.shape for s in samples], axis=0))
    for i, s in enumerate(samples):
        np.testing.assert_array_equal(dense[i][: s.shape[0], : s.shape[1]], s)
        assert (dense[i][s.shape[0] :] == -1).all()
    with pytest.raises(ValueError, match="larger"):
        r.pad(shape=(1, 1))
    import awkward as ak

    arr = r.to_awkward()
    assert ak.to_list(arr) == [s.tolist() for s in samples]


def test_explicit_side_columns(h5path, rng):
    samples = random_samples(30, rng)
    daskh5.write_ragged(samples, h5path, "/data", progress=False)
    with tables.open_file(h5path, "a") as f:
        f.rename_node("/data_start_and_stop", "offsets")
        f.rename_node("/data_shape", "dims")
        del f.root.data.attrs.DASKH5_START_STOP
        del f.root.data.attrs.DASKH5_SHAPE
    with pytest.raises(KeyError, match="start_stop="):
        daskh5.open_ragged(h5path, "/data")
    r = daskh5.open_ragged(h5path, "/data", start_stop="/offsets", shape="/dims")
    assert_samples_equal(r[:], samples)


# -- bad layouts: a clear error naming the node and the first bad row -----------------------------
def corrupt(path, node, rows):
    with tables.open_file(path, "a") as f:
        for i, v in rows.items():
            f.get_node(node)[i] = v


@pytest.mark.parametrize(
    ("node", "rows", "message"),
    [
        ("/data_start_and_stop", {3: [50, 40]}, r"row 3 stops before it starts"),
        ("/data_start_and_stop", {4: [0, 10**9]}, r"row 4 stops beyond the \d+ values"),
        ("/data_start_and_stop", {2: [-5, 3]}, r"row 2 has a negative start"),
        ("/data_shape", {5: [7, 7]}, r"data_shape: row 5 gives the sample another number of values"),
    ],
)
def test_inconsistent_layouts(h5path, rng, node, rows, message):
    daskh5.write_ragged(random_samples(10, rng), h5path, "/data", progress=False)
    corrupt(h5path, node, rows)
    with pytest.raises(daskh5.RaggedLayoutError, match=message) as info:
        daskh5.open_ragged(h5path, "/data")
    assert isinstance(info.value, ValueError) and h5path in str(info.value)
    assert "1000000000" not in str(info.value)  # rows and counts, never the side columns' values
    with pytest.raises(daskh5.RaggedLayoutError):
        daskh5.read_ragged(h5path, "/data")


def test_side_columns_of_different_lengths(h5path, rng):
    daskh5.write_ragged(random_samples(10, rng), h5path, "/data", progress=False)
    with tables.open_file(h5path, "a") as f:
        f.root.data_shape.truncate(7)
        del f.root.data.attrs.DASKH5_NSAMPLES
    with pytest.raises(daskh5.RaggedLayoutError, match="shape column has 7 rows but there are 10 samples"):
        daskh5.open_ragged(h5path, "/data")


def test_non_integer_side_column(h5path):
    with tables.open_file(h5path, "w") as f:
        f.create_earray("/", "data", obj=np.arange(10.0))
        f.create_earray("/", "data_start_and_stop", obj=np.array([[0.0, 5.0], [5.0, 10.0]]))
    with pytest.raises(daskh5.RaggedLayoutError, match="not integers"):
        daskh5.open_ragged(h5path, "/data")


def test_vlarray_row_disagreeing_with_shape_column(h5path, rng):
    samples = random_samples(10, rng)
    write_by_hand(h5path, "vlarray-shape", samples)
    with tables.open_file(h5path, "a") as f:
        f.root.data_shape[6] = [9, 9]
    with pytest.raises(daskh5.RaggedLayoutError, match="row 6 holds"):
        daskh5.read_ragged(h5path, "/data").compute()


@pytest.mark.parametrize(
    ("node", "error", "message"),
    [
        ("/objs", daskh5.NodeKindError, "ObjectAtom"),
        ("/table", daskh5.NodeKindError, "Table"),
        ("/matrix", daskh5.NodeKindError, "2-d"),
        ("/lonely", KeyError, "lonely_start_and_stop"),
        ("/nothere", KeyError, "no node"),
    ],
)
def test_wrong_nodes(h5path, node, error, message):
    with tables.open_file(h5path, "w") as f:
        f.create_vlarray("/", "objs", atom=tables.ObjectAtom()).append({"a": 1})
        f.create_table("/", "table", obj=np.zeros(2, dtype=[("x", "i4")]))
        f.create_array("/", "matrix", obj=np.zeros((3, 3)))
        f.create_earray("/", "lonely", obj=np.arange(3))
    with pytest.raises(error, match=message):
        daskh5.open_ragged(h5path, node)


def test_write_into_untrusted_file_runs_no_code(h5path, tmp_path, rng):
    marker = tmp_path / "pwned"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with tables.open_file(h5path, "w") as f:
        f.root._v_attrs.trap = Trap()
        f.create_array("/", "other", obj=np.arange(3)).attrs.trap = Trap()
    daskh5.write_ragged(random_samples(10, rng), h5path, "/data", progress=False)
    daskh5.write_ragged(random_samples(10, rng), h5path, "/data", progress=False)
    assert len(daskh5.open_ragged(h5path, "/data")) == 20
    assert not marker.exists()
    with tables.open_file(h5path) as f:  # and PyTables users still find their data
        assert f.root.other[:].tolist() == [0, 1, 2]


def test_take_long_samples_by_slices(h5path):
    """Long samples (images) selected by list or mask are read as runs of slices, not per value."""
    rng = np.random.default_rng(4)
    images = [
        rng.integers(0, 255, size=(rng.integers(20, 40), rng.integers(20, 40), 3), dtype=np.uint8)
        for _ in range(200)
    ]
    daskh5.write_ragged(images, h5path, "/img", progress=False)
    r = daskh5.open_ragged(h5path, "/img")
    mask = rng.random(200) < 0.3
    for key, want in [
        (mask, [im for im, m in zip(images, mask) if m]),
        ([150, 3, 3, 199, 0, -1], [images[i] for i in (150, 3, 3, 199, 0, -1)]),
        (slice(190, 10, -7), images[190:10:-7]),
    ]:
        got = r[key]
        assert len(got) == len(want)
        assert all(g.shape == w.shape and np.array_equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("layout", ["flat", "vlarray"])
def test_in_memory_driver(h5path, layout):
    """driver="H5FD_CORE" (the seed notebook's choice) reads the file into memory once per process."""
    from daskh5 import _files, ragged

    samples = [np.arange(k * 3, dtype=np.int32).reshape(k, 3) for k in (1, 4, 2, 5)]
    if layout == "flat":
        daskh5.write_ragged(samples, h5path, "/s", progress=False)
    else:
        with tables.open_file(h5path, "w") as f:
            vl = f.create_vlarray("/", "s", atom=tables.Int32Atom())
            for a in samples:
                vl.append(a.ravel())
            f.create_array("/", "s_shape", obj=np.array([a.shape for a in samples]))
    daskh5.close_files()
    got = daskh5.read_ragged(h5path, "/s", driver="H5FD_CORE").compute(scheduler="sync")
    assert all(np.array_equal(a, b) for a, b in zip(got, samples, strict=True))
    with daskh5.open_ragged(h5path, "/s", driver="h5fd_core") as r:
        assert np.array_equal(r[[3, 0]][0], samples[3])
        if layout == "flat":
            assert _files._images  # the file's image was loaded
        else:
            assert any(key[2] == "H5FD_CORE" for key in ragged._vl_files)
    with pytest.raises(ValueError, match="driver"):
        daskh5.open_ragged(h5path, "/s", driver="H5FD_FAMILY")
    daskh5.close_files()


def test_bags_default_to_threads_and_keep_it(h5path):
    """Bags of samples, and what their methods derive, run on threads unless a scheduler is chosen.

    Checked in a fresh interpreter: the session's cluster fixture may have left a default client here.
    """
    import subprocess
    import sys

    daskh5.write_ragged([np.arange(n) for n in range(1, 9)], h5path, "/s", progress=False)
    code = f"""
import dask, dask.threaded, distributed, daskh5
from dask.base import get_scheduler
bag = daskh5.read_ragged({h5path!r}, "/s", partition_size=3)
assert isinstance(bag, daskh5.SampleBag) and bag.npartitions == 3
for c in [bag, bag.map(len), bag.filter(lambda s: len(s) > 2), bag.map(len).sum(), bag.pluck(0).max()]:
    assert get_scheduler(collections=[c]) is dask.threaded.get, c
assert bag.map(len).sum().compute() == 36
with dask.config.set(scheduler="sync"):
    assert get_scheduler(collections=[bag.map(len)]) is dask.get  # config wins
with distributed.Client(processes=False, dashboard_address=None) as client:
    assert get_scheduler(collections=[bag.map(len)]) == client.get  # and a client
    assert bag.map(len).sum().compute() == 36
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("ok"), out.stderr


def test_a_script_without_main_guard_runs_once(tmp_path):
    """The README's ragged snippet as a plain script: no BrokenProcessPool, no second append by children."""
    import subprocess
    import sys

    script = tmp_path / "plain.py"
    script.write_text(
        "import numpy as np, daskh5\n"
        "daskh5.write_ragged([np.arange(n) for n in range(1, 50)], 'speech.h5', '/u', mode='w', progress=False)\n"
        "daskh5.to_pytables(np.zeros((2, 3)), 'speech.h5', '/grown', kind='earray', progress=False)\n"
        "daskh5.append(np.ones((5, 3)), 'speech.h5', '/grown', progress=False)\n"
        "print(daskh5.read_ragged('speech.h5', '/u', partition_size=10).map(len).sum().compute())\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == str(sum(range(1, 50)))
    assert daskh5.from_pytables(str(tmp_path / "speech.h5"), "/grown").shape == (7, 3)  # appended once

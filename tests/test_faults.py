"""Faults and contention: killed workers, many concurrent readers, reading while another process appends.

1. A worker SIGKILLed in the middle of ``from_pytables(...).sum()`` / ``read_ragged(...).map(...)``: the
   result is still exact (the lost tasks run again on another worker).
2. A worker SIGKILLed during ``to_pytables`` on a cluster: the write completes exactly, or raises and
   leaves the file valid with no partial node.
3. 8 threads in each of 2 processes reading one file: exact results, no crash.
4. Reading an EArray while another process appends to it: an exact snapshot or a daskh5 error, never
   rows that were not appended.

The kill tests use their own ``LocalCluster`` each (never the session one), make one task block
("hold") until the test releases it, and SIGKILL exactly the worker process that is running that
task, so the kill is genuinely mid-computation on every run: finished blocks exist, the held block is
executing on the killed worker, and blocks are still to come.  Tasks leave marker files
(``start-<key>-<pid>`` / ``end-<key>-<pid>``) that tell the test where and when they ran.

Functions shipped to workers are defined inside functions (so cloudpickle sends them by value: the
worker processes cannot import this test module) and use nothing but the standard library.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import dask
import numpy as np
import pytest
import tables

import daskh5

# Waiting for a marker longer than this means something hung: fail instead of blocking the suite.
TIMEOUT = 60.0


# -- helpers -------------------------------------------------------------------------------------
@contextlib.contextmanager
def private_client(allowed_failures: int | None = None):
    """A client on a fresh 2-process LocalCluster (nannies restart killed workers).

    ``allowed_failures`` (read by the scheduler when it starts): how many workers may die while
    running one task before the task fails with ``KilledWorker`` (distributed's default is 3).
    """
    import distributed

    # A worker fetching a result from a peer that was just killed retries the connection for
    # this long (distributed's default, 30 s, once stalled a kill test for its whole timeout).
    cfg = {"distributed.comm.timeouts.connect": "5s"}
    if allowed_failures is not None:
        cfg["distributed.scheduler.allowed-failures"] = allowed_failures
    with (
        dask.config.set(cfg),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=TIMEOUT)
        yield client


def make_gate(marker_dir: str, hold, release_file: str, delay: float):
    """``gate(key)``: marks start and end of the task ``key``; the task ``hold`` waits for ``release_file``.

    Every other task sleeps ``delay`` so the computation lasts long enough to be interrupted.
    """

    def gate(key) -> None:
        import os
        import time

        pid = os.getpid()
        open(os.path.join(marker_dir, f"start-{key}-{pid}"), "w").close()
        if key == hold:
            deadline = time.monotonic() + 60
            while not os.path.exists(release_file):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"task {key} was never released")
                time.sleep(0.005)
        else:
            time.sleep(delay)
        open(os.path.join(marker_dir, f"end-{key}-{pid}"), "w").close()

    return gate


def gated_blocks(tmp_path, hold: int):
    """(marker dir, release file, ``slow(block, block_id)``): a map_blocks function that holds block ``hold``."""
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    release = str(tmp_path / "release")
    gate = make_gate(str(marker_dir), hold, release, delay=0.05)

    def slow(block, block_id=None):
        gate(block_id[0])
        return block

    return str(marker_dir), release, slow


def markers(marker_dir: str, what: str) -> list[tuple[str, int]]:
    """``(key, pid)`` of every ``what`` ("start" or "end") marker."""
    out = []
    for name in os.listdir(marker_dir):
        kind, key, pid = name.split("-")
        if kind == what:
            out.append((key, int(pid)))
    return out


def wait_for(predicate, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def kill_holder(client, marker_dir: str, hold, release_file: str, min_done: int, running) -> int:
    """Wait until ``hold`` runs and ``min_done`` other tasks finished, SIGKILL its worker, release it.

    ``running()`` must be true at the moment of the kill (the computation is not finished).
    Returns the killed pid.
    """
    hold = str(hold)
    pid = wait_for(
        lambda: [p for k, p in markers(marker_dir, "start") if k == hold], f"task {hold} to start"
    )[0]
    wait_for(lambda: len(markers(marker_dir, "end")) >= min_done, f"{min_done} tasks to finish")
    worker_pids = set(client.run(os.getpid).values())
    assert pid in worker_pids, (pid, worker_pids)
    assert running(), "the computation finished before the kill: the test proves nothing"
    assert (hold, pid) not in markers(marker_dir, "end"), "the held task was not held"
    os.kill(pid, signal.SIGKILL)
    # only now may the task proceed: its retry (on another worker) finds the release file
    open(release_file, "w").close()
    return pid


def assert_retried_elsewhere(marker_dir: str, hold, killed: int) -> None:
    """The held task never finished on the killed worker and did finish on another one."""
    ends = [p for k, p in markers(marker_dir, "end") if k == str(hold)]
    assert ends, "the held task never finished"
    assert killed not in ends, (killed, ends)


# -- 1. a worker killed in the middle of a read -----------------------------------------------------
@pytest.mark.cluster
def test_worker_killed_mid_from_pytables_sum(tmp_path):
    path = str(tmp_path / "data.h5")
    rng = np.random.default_rng(1)
    ref = rng.integers(-(2**40), 2**40, size=(120_000, 4), dtype=np.int64)  # 3.8 MB, exact sums
    with tables.open_file(path, "w") as f:
        f.create_carray("/", "data", obj=ref, filters=tables.Filters(5, "blosc:lz4"), chunkshape=(2500, 4))
    hold, nblocks = 5, 24
    marker_dir, release, slow = gated_blocks(tmp_path, hold)

    x = daskh5.from_pytables(path, "/data", chunks=((5000,) * nblocks, (4,)))
    total = x.map_blocks(slow, dtype=x.dtype).sum(axis=0)
    with private_client() as client:
        future = client.compute(total)
        killed = kill_holder(client, str(marker_dir), hold, release, 3, lambda: not future.done())
        got = future.result(timeout=TIMEOUT)
    np.testing.assert_array_equal(got, ref.sum(axis=0))
    assert got.dtype == np.int64
    assert_retried_elsewhere(str(marker_dir), hold, killed)
    # every block ran to the end at least once (the held one and those lost with the worker again)
    assert {int(k) for k, _p in markers(str(marker_dir), "end")} == set(range(nblocks))


@pytest.mark.cluster
def test_worker_killed_mid_read_ragged_map(tmp_path):
    path = str(tmp_path / "ragged.h5")
    rng = np.random.default_rng(2)
    n = 3000
    rows = rng.integers(1, 21, size=n)
    # sample i holds i*64 + 0, 1, 2, ... (at most 60 values): its first value names it
    samples = [(i * 64 + np.arange(k * 3, dtype=np.int32)).reshape(k, 3) for i, k in enumerate(rows)]
    daskh5.write_ragged(samples, path, "/r", progress=False)
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    release = str(tmp_path / "release")
    nbytes = sum(s.nbytes for s in samples)
    bag = daskh5.read_ragged(path, "/r", partition_size=f"{nbytes // 24 + 1}B")
    nparts = bag.npartitions
    assert nparts >= 20
    # the sample each partition starts with names the partition
    firsts = bag.map_partitions(lambda part: [int(part[0].flat[0]) // 64]).compute(scheduler="sync")
    assert len(firsts) == nparts and firsts == sorted(set(firsts))
    hold = firsts[5]  # the partition that starts at this sample is held
    gate = make_gate(str(marker_dir), hold, release, delay=0.05)

    def slow(part):
        gate(int(part[0].flat[0]) // 64)
        return part

    result = bag.map_partitions(slow).map(lambda a: a * 2 + 1)
    with private_client() as client:
        future = client.compute(result)
        killed = kill_holder(client, str(marker_dir), hold, release, 3, lambda: not future.done())
        got = future.result(timeout=TIMEOUT)
    assert len(got) == n
    for i, (g, s) in enumerate(zip(got, samples)):
        assert g.dtype == np.int32 and g.shape == s.shape, i
        np.testing.assert_array_equal(g, s * 2 + 1, err_msg=f"sample {i}")
    assert_retried_elsewhere(str(marker_dir), hold, killed)
    assert {int(k) for k, _p in markers(str(marker_dir), "end")} == set(firsts)


# -- 2. a worker killed during to_pytables ----------------------------------------------------------
def _tables_nodes(path: str) -> dict[str, np.ndarray]:
    with tables.open_file(path, "r") as f:
        return {leaf._v_pathname: leaf.read() for leaf in f.walk_nodes("/", "Leaf")}


@pytest.mark.cluster
@pytest.mark.parametrize("allowed_failures", [3, 0], ids=["task-retried", "task-fails"])
@pytest.mark.parametrize("target", ["new-node", "overwrite", "new-file"])
def test_worker_killed_during_to_pytables(tmp_path, target, allowed_failures):
    """Either the write completes exactly, or it raises and leaves no partial node behind.

    With distributed's default ``allowed-failures`` the killed task is retried and the write must
    complete; with ``allowed-failures=0`` the task fails with ``KilledWorker`` and the write must
    raise it, leaving the file valid: earlier nodes intact, the new node absent, an overwritten node
    as it was, a new file not there at all.
    """
    from distributed import KilledWorker

    rng = np.random.default_rng(3)
    src_path = str(tmp_path / "src.h5")
    src = rng.normal(size=(96_000, 4))  # 3 MB
    with tables.open_file(src_path, "w") as f:
        f.create_carray("/", "x", obj=src, filters=tables.Filters(5, "blosc:lz4"), chunkshape=(2000, 4))
    path = str(tmp_path / "out.h5")
    keep = np.arange(1000.0)
    old = -np.ones((96_000, 4))
    if target != "new-file":
        with tables.open_file(path, "w") as f:
            f.create_carray("/", "keep", obj=keep, chunkshape=(100,))
            if target == "overwrite":
                f.create_carray("/grp", "out", obj=old, createparents=True, chunkshape=(4000, 4))
    before = _tables_nodes(path) if target != "new-file" else {}

    hold, nblocks = 6, 24
    marker_dir, release, slow = gated_blocks(tmp_path, hold)

    x = daskh5.from_pytables(src_path, "/x", chunks=((4000,) * nblocks, (4,)))
    y = x.map_blocks(slow, dtype=x.dtype)
    outcome: dict = {}

    def write() -> None:
        try:
            daskh5.to_pytables(
                y, path, "/grp/out", chunkshape=(2000, 4), overwrite=target == "overwrite", progress=False
            )
            outcome["ok"] = True
        except BaseException as exc:
            outcome["error"] = exc

    with private_client(allowed_failures) as client:
        writer = threading.Thread(target=write, name="to_pytables")
        writer.start()
        try:
            killed = kill_holder(client, str(marker_dir), hold, release, 3, writer.is_alive)
        finally:
            # never leave the writer blocked on the held task, whatever happened above
            open(release, "w").close()
            writer.join(TIMEOUT)
        assert not writer.is_alive(), "to_pytables hung after the worker was killed"

    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    assert leftovers == [], "temporary files left behind"
    if "error" not in outcome:
        # outcome 1: the write completed exactly
        assert outcome == {"ok": True}
        assert allowed_failures > 0, "the task running on the killed worker should have failed"
        assert_retried_elsewhere(str(marker_dir), hold, killed)
        now = _tables_nodes(path)
        np.testing.assert_array_equal(now.pop("/grp/out"), src)
        before.pop("/grp/out", None)
        assert now.keys() == before.keys()
        for name, values in before.items():
            np.testing.assert_array_equal(now[name], values)
    else:
        # outcome 2: a clear error and no partial node
        error = outcome["error"]
        assert isinstance(error, (daskh5.Daskh5Error, KilledWorker)), repr(error)
        assert allowed_failures == 0, f"the killed task should have been retried, got {error!r}"
        assert isinstance(error, KilledWorker) and "died" in str(error)
        if target == "new-file":
            assert not os.path.exists(path), "a failed write to a new file must leave no file"
        else:
            now = _tables_nodes(path)  # the file still opens, with exactly the nodes it had
            assert now.keys() == before.keys(), (sorted(now), sorted(before))
            for name, values in before.items():
                np.testing.assert_array_equal(now[name], values)
            with tables.open_file(path, "r") as f:
                assert "/grp/out" in f if target == "overwrite" else "/grp/out" not in f


# -- 3. many concurrent readers: 8 threads in each of 2 processes ------------------------------------
_READER = textwrap.dedent(
    """
    import json, sys, threading
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np
    import daskh5

    path, ref_path, out_path, proc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ref = np.load(ref_path)
    nodes = ["/blosc", "/zlib", "/fletcher32", "/contiguous"]
    shared = {n: daskh5.from_pytables(path, n, chunks="64KiB") for n in nodes}
    NTHREADS, ITERS = 8, 8
    barrier = threading.Barrier(NTHREADS)

    def run(t):
        rng = np.random.default_rng([proc, t])
        checks, bad = 0, []
        barrier.wait()  # every thread starts reading at once
        for j in range(ITERS):
            node = nodes[(t + j) % len(nodes)]
            # half the threads build their own array (opening the file concurrently), half share one
            x = shared[node] if t % 2 else daskh5.from_pytables(path, node, chunks="64KiB")
            lo = int(rng.integers(0, len(ref) - 1))
            hi = int(rng.integers(lo + 1, len(ref) + 1))
            idx = np.sort(rng.choice(len(ref), size=200, replace=False))
            scheduler = "threads" if j % 2 else "sync"
            for what, got, want in [
                ("slice", x[lo:hi], ref[lo:hi]),
                ("points", x[idx, 1:3], ref[idx, 1:3]),
                ("sum", x[lo:hi].sum(axis=0), ref[lo:hi].sum(axis=0)),
            ]:
                value = got.compute(scheduler=scheduler)
                checks += 1
                if value.dtype != want.dtype or not np.array_equal(value, want):
                    bad.append([node, what, lo, hi, scheduler])
        return checks, bad

    with ThreadPoolExecutor(NTHREADS) as pool:
        results = list(pool.map(run, range(NTHREADS)))
    with open(out_path, "w") as fh:
        json.dump({"checks": sum(c for c, _ in results), "bad": [b for _, bs in results for b in bs]}, fh)
    """
)


def test_many_concurrent_readers(tmp_path):
    path = str(tmp_path / "data.h5")
    ref_path = str(tmp_path / "ref.npy")
    rng = np.random.default_rng(4)
    ref = rng.integers(-(2**40), 2**40, size=(80_000, 4), dtype=np.int64)  # 2.5 MB per node
    np.save(ref_path, ref)
    with tables.open_file(path, "w") as f:
        # the lock-free chunk reader (blosc, zlib), h5py behind its lock (fletcher32), a memory map
        f.create_carray("/", "blosc", obj=ref, filters=tables.Filters(5, "blosc:lz4"), chunkshape=(1000, 4))
        f.create_carray(
            "/", "zlib", obj=ref, filters=tables.Filters(3, "zlib", shuffle=True), chunkshape=(700, 4)
        )
        f.create_carray(
            "/", "fletcher32", obj=ref, filters=tables.Filters(fletcher32=True), chunkshape=(1000, 4)
        )
        f.create_array("/", "contiguous", obj=ref)
    procs = []
    try:
        for proc in range(2):
            out = str(tmp_path / f"out{proc}.json")
            procs.append(
                (
                    subprocess.Popen(
                        [sys.executable, "-c", _READER, path, ref_path, out, str(proc)],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        cwd=str(tmp_path),
                    ),
                    out,
                )
            )
        for p, out in procs:
            _stdout, stderr = p.communicate(timeout=120)
            assert p.returncode == 0, stderr.decode()[-3000:]
            with open(out) as fh:
                summary = json.load(fh)
            assert summary["bad"] == []
            assert summary["checks"] == 8 * 8 * 3
    finally:
        for p, _out in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# -- 4. reading while another process appends --------------------------------------------------------
_APPENDER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    import tables

    path, stop_path, max_rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(5)
    with tables.open_file(path, "a") as f:
        leaf = f.root.data
        n = leaf.nrows
        while not os.path.exists(stop_path) and n < max_rows:
            k = int(rng.integers(1, 400))
            # row i holds 8*i, 8*i + 1, ..., 8*i + 7
            leaf.append(np.arange(8 * n, 8 * (n + k), dtype=np.int64).reshape(k, 8))
            n += k
            f.flush()
            time.sleep(0.005)
    print(n)
    """
)


@pytest.mark.parametrize(
    "filters", [None, tables.Filters(5, "blosc:lz4"), tables.Filters(3, "zlib")], ids=["raw", "blosc", "zlib"]
)
def test_read_while_another_process_appends(tmp_path, filters):
    """Every read is the exact snapshot of the rows the graph was built with, or a daskh5 error.

    daskh5 opens files with h5py and ``locking=False`` (daskh5/_nodes.py:open_file) and reads chunk
    bytes with ``os.pread`` (daskh5/_files.py), so it never takes HDF5's file lock and the writer's
    exclusive lock does not stop it: ``HDF5_USE_FILE_LOCKING`` is deliberately left alone.  The
    reference is never read with PyTables while the writer runs: row ``i`` must hold ``8*i ... 8*i+7``.
    """
    path = str(tmp_path / "grow.h5")
    stop = str(tmp_path / "stop")
    initial = 5000
    with tables.open_file(path, "w") as f:
        e = f.create_earray(
            "/", "data", atom=tables.Int64Atom(), shape=(0, 8), filters=filters, chunkshape=(256, 8)
        )
        e.append(np.arange(8 * initial, dtype=np.int64).reshape(initial, 8))
    writer = subprocess.Popen(
        [sys.executable, "-c", _APPENDER, path, stop, "1000000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(tmp_path),
    )
    ok, errors, lengths = 0, [], set()
    try:
        start, i = time.monotonic(), 0
        # read for 3 s, longer (at most 10 s) on a busy machine until 8 reads succeeded
        while writer.poll() is None:
            elapsed = time.monotonic() - start
            if elapsed > 10 or (elapsed > 3 and ok >= 8):
                break
            i += 1
            try:
                x = daskh5.from_pytables(path, "/data", chunks="64KiB")
                n = x.shape[0]
                want = np.arange(8 * n, dtype=np.int64).reshape(n, 8)
                scheduler = "threads" if i % 2 else "sync"
                whole = x.compute(scheduler=scheduler)
                tail = x[-300:].compute(scheduler=scheduler)
                every_third = x[::3, ::2].compute(scheduler=scheduler)
            except daskh5.Daskh5Error as exc:
                errors.append(repr(exc))
                continue
            assert n >= initial
            assert whole.shape == (n, 8)
            bad = np.flatnonzero((whole != want).any(axis=1))
            assert bad.size == 0, (
                f"read {i}: {bad.size} garbage rows of {n}, first {bad[:5]}: {whole[bad[:3]]}"
            )
            np.testing.assert_array_equal(tail, want[-300:])
            np.testing.assert_array_equal(every_third, want[::3, ::2])
            ok += 1
            lengths.add(n)
        open(stop, "w").close()
        out, err = writer.communicate(timeout=TIMEOUT)
        assert writer.returncode == 0, err.decode()[-3000:]
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    final = int(out.decode().split()[-1])
    # the reads really overlapped the appends (they saw the node grow), and enough of them succeeded
    assert len(lengths) >= 3, (sorted(lengths), errors[:5])
    assert ok >= 8, (ok, errors[:5])
    # and the file the writer left is intact
    with tables.open_file(path, "r") as f:
        np.testing.assert_array_equal(
            f.root.data.read(), np.arange(8 * final, dtype=np.int64).reshape(final, 8)
        )
    np.testing.assert_array_equal(
        daskh5.from_pytables(path, "/data").compute(scheduler="sync"),
        np.arange(8 * final, dtype=np.int64).reshape(final, 8),
    )


_DASKH5_APPENDER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    import dask.array as da
    import daskh5

    path, marker_dir, before, k = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rows = np.arange(8 * before, 8 * (before + k), dtype=np.int64).reshape(k, 8)

    def hold_block_2(block, block_id=None):
        if block_id[0] == 2:
            open(os.path.join(marker_dir, "held"), "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(os.path.join(marker_dir, "release")):
                if time.monotonic() > deadline:
                    raise TimeoutError("never released")
                time.sleep(0.005)
        return block

    x = da.from_array(rows, chunks=(1024, 8)).map_blocks(hold_block_2, dtype=rows.dtype)
    daskh5.append(x, path, "/data", progress=False)
    """
)


def test_read_while_another_process_appends_with_daskh5(tmp_path):
    """A reader sees the rows before the append, all of them after it, or a daskh5 error; never zeros.

    Deterministic: the other process runs ``daskh5.append`` and is held inside it, with one block
    of the appended rows not computed yet, while this process reads the EArray.  ``daskh5.append``
    grows the EArray (``truncate``) and closes PyTables before it writes the new chunks, so the
    file then says the node has ``before + k`` rows while most of those rows are not written yet.
    """
    path = str(tmp_path / "grow.h5")
    before, k = 5000, 6000
    with tables.open_file(path, "w") as f:
        e = f.create_earray(
            "/", "data", atom=tables.Int64Atom(), shape=(0, 8), filters=tables.Filters(5, "blosc:lz4"),
            chunkshape=(256, 8),
        )  # fmt: skip
        e.append(np.arange(8 * before, dtype=np.int64).reshape(before, 8))
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    writer = subprocess.Popen(
        [sys.executable, "-c", _DASKH5_APPENDER, path, str(marker_dir), str(before), str(k)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(tmp_path),
    )
    try:
        wait_for(lambda: (marker_dir / "held").exists() or writer.poll() is not None, "the append to be held")
        assert writer.poll() is None, writer.communicate()[1].decode()[-3000:]
        try:
            x = daskh5.from_pytables(path, "/data")
            got = x.compute(scheduler="sync")
        except daskh5.Daskh5Error:
            pass  # a clear error is an acceptable answer
        else:
            n = got.shape[0]
            want = np.arange(8 * n, dtype=np.int64).reshape(n, 8)
            bad = np.flatnonzero((got != want).any(axis=1))
            assert bad.size == 0, (
                f"read {n} rows while another process appends {k} rows to {before}: {bad.size} rows are "
                f"not what was appended (rows {bad[0]}..{bad[-1]}, e.g. {got[bad[0]].tolist()})"
            )
    finally:
        (marker_dir / "release").touch()
        try:
            _out, err = writer.communicate(timeout=TIMEOUT)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    assert writer.returncode == 0, err.decode()[-3000:]
    with tables.open_file(path, "r") as f:
        np.testing.assert_array_equal(
            f.root.data.read(), np.arange(8 * (before + k), dtype=np.int64).reshape(before + k, 8)
        )


def test_truncated_file_while_a_writer_holds_the_lock_is_reported_as_truncated(tmp_path):
    """While another process writes, readers can see the file shorter than its superblock says.

    That must be reported as what it is (a truncated file, being written: retry), not as a failure
    to take HDF5's file lock, which daskh5 never needs (it opens files with ``locking=False``).
    """
    import fcntl

    path = str(tmp_path / "cut.h5")
    with tables.open_file(path, "w") as f:
        f.create_carray("/", "data", obj=np.arange(100_000.0), chunkshape=(1000,))
    os.truncate(path, os.path.getsize(path) // 2)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what HDF5 does for a writer (flock)
        with pytest.raises(daskh5.NotHDF5Error) as info:
            daskh5.from_pytables(path, "/data")
        message = str(info.value).replace(path, "<path>")  # (pytest's tmp_path names the test)
        assert "truncated" in message and "being written right now" in message and "retry" in message
        assert "unable to lock" not in message.lower() and "re-copy" not in message, message
    finally:
        os.close(fd)


def test_a_chunk_vanishing_from_the_index_is_reread_not_filled(h5path, monkeypatch):
    """A fresh chunk index read mid-flush (a chunk the graph saw is missing) is read again; if it
    stays missing the read fails clearly instead of returning fill values."""
    from daskh5 import _storage

    data = np.arange(4000.0).reshape(2000, 2)
    with tables.open_file(h5path, "w") as f:
        f.create_earray("/", "data", obj=data, chunkshape=(100, 2))
    x = daskh5.from_pytables(h5path, "/data")
    os.utime(h5path, ns=(time.time_ns(), time.time_ns() + 10**9))  # the file "changed"
    real = _storage.read_chunk_index
    calls = []

    def flaky(info, mtime_ns=None, f=None):
        index = real(info, mtime_ns, f)
        calls.append(1)
        if len(calls) <= 2:  # the first two reads catch the writer mid-flush
            index = _missing(index)
        return index

    monkeypatch.setattr(_storage, "read_chunk_index", flaky)
    np.testing.assert_array_equal(x.compute(scheduler="sync"), data)
    assert len(calls) == 3

    _storage._fresh.clear()
    os.utime(h5path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    monkeypatch.setattr(_storage, "_RETRIES", 2)
    calls.clear()
    monkeypatch.setattr(_storage, "read_chunk_index", lambda *a, **k: _missing(real(*a, **k)))
    with pytest.raises(daskh5.ChunkDecodeError, match="vanished"):
        x.compute(scheduler="sync")


def _missing(index):
    """``index`` without chunk (3, 0), as if it had never been written."""
    import dataclasses

    at = int(index.find([index.linear((3, 0))])[0])
    assert at >= 0
    fields = ("positions", "offsets", "sizes", "masks")
    return dataclasses.replace(index, **{k: np.delete(getattr(index, k), at) for k in fields})

"""Sessions against numpy and hand-derived results, for every session kind and size."""
from __future__ import annotations

import gc
import os
import sys
import time

import ml_dtypes
import numpy as np
import pytest

import disco
from disco.errors import SessionError

pytestmark = pytest.mark.timeout(120)

KINDS = [disco.ThreadedSession, disco.ProcessSession]
SIZES = [1, 2, 4]


@pytest.fixture(params=[(k, n) for k in KINDS for n in SIZES], ids=lambda p: f"{p[0].__name__}-{p[1]}")
def sess(request):
    kind, n = request.param
    with kind(n) as s:
        s.import_module("worker_funcs")
        yield s


@pytest.fixture(params=KINDS, ids=lambda k: k.__name__)
def sess2(request):
    with request.param(2) as s:
        s.import_module("worker_funcs")
        yield s


def test_worker_identity(sess):
    n = sess.num_workers
    ids = sess.get_global_func("disco.worker_id")()
    assert [ids.fetch(w) for w in range(n)] == list(range(n))
    assert sess.get_global_func("disco.num_workers")().fetch(n - 1) == n
    info = sess.get_global_func("test.worker_info")()
    assert [info.fetch(w) for w in range(n)] == [(w, n) for w in range(n)]


def test_scatter_call_gather(sess):
    n = sess.num_workers
    a = np.arange(8 * n * 3, dtype=np.float32).reshape(8 * n, 3)
    b = np.linspace(0, 1, 3, dtype=np.float32)
    out = sess.get_global_func("test.add")(sess.scatter(a), sess.broadcast(b))
    np.testing.assert_array_equal(sess.gather(out), a + b)
    np.testing.assert_array_equal(out.fetch(n - 1), (a + b)[8 * (n - 1):])


@pytest.mark.parametrize("axis", [1, -2])
def test_scatter_gather_other_axis(sess, axis):
    n = sess.num_workers
    a = np.random.default_rng(0).standard_normal((3, 2 * n, 2))
    x = sess.scatter(a, axis=axis)
    np.testing.assert_array_equal(x.fetch(n - 1), np.split(a, n, axis=axis)[n - 1])
    np.testing.assert_array_equal(sess.gather(x, axis=axis), a)


def test_scatter_uneven_raises(sess2):
    with pytest.raises(SessionError, match=r"cannot split axis 0 of shape \(5, 2\) evenly over 2 workers"):
        sess2.scatter(np.zeros((5, 2)))
    with pytest.raises(SessionError, match="axis 2 out of range"):
        sess2.scatter(np.zeros((4, 2)), axis=2)
    sess2.sync()


def test_large_arrays_use_buffers_and_roundtrip(sess):
    n = sess.num_workers
    big = np.random.default_rng(1).standard_normal((512 * n, 300))  # ~1.2 MB per worker
    x = sess.scatter(big)
    y = sess.get_global_func("test.times_worker")(x)
    expect = np.concatenate([p * (w + 1) for w, p in enumerate(np.split(big, n))])
    np.testing.assert_array_equal(sess.gather(y), expect)
    # A large argument, and in-place writes on workers stay private to each worker.
    z = sess.get_global_func("test.add_inplace")(big, 1.0)
    for w in range(n):
        np.testing.assert_array_equal(z.fetch(w), big + 1.0)
    b = sess.broadcast(big)
    sess.get_global_func("test.add_inplace")(b, sess.get_global_func("disco.worker_id")())
    np.testing.assert_array_equal(b.fetch(n - 1), big + (n - 1))
    np.testing.assert_array_equal(b.fetch(0), big)


VALUES = [
    0, -7, 2**63 - 1, 2**70, 3.5, float("inf"), True, False, None, "", "héllo", b"\x00bytes",
    (1, (2.0, ("three", None))), [1, [2]], {"a": 1}, np.int64(5), np.float32(2.5),
    np.arange(6, dtype=np.int16).reshape(2, 3), np.arange(12.0).reshape(3, 4)[:, ::2],
    np.ones((3, 2), dtype=ml_dtypes.bfloat16), np.zeros((0, 4)), np.array(7.0),
    np.arange(40000, dtype=np.float64),
]


def test_argument_and_result_encoding(sess2):
    echo = sess2.get_global_func("test.echo")
    got = echo(*VALUES).fetch(1)
    assert len(got) == len(VALUES)
    for g, v in zip(got, VALUES):
        if isinstance(v, np.ndarray):
            assert g.dtype == v.dtype and g.shape == v.shape
            np.testing.assert_array_equal(g.astype(np.float64), v.astype(np.float64))
        else:
            assert type(g) is type(v) and (g == v or g != g)


def test_drefs_resolve_per_worker_and_nested(sess):
    n = sess.num_workers
    ids = sess.get_global_func("disco.worker_id")()
    pair = sess.get_global_func("test.echo")((ids, 10), "s", None)
    for w in range(n):
        assert pair.fetch(w) == ((w, 10), "s", None)


def test_pipelined_calls_run_in_order(sess):
    add = sess.get_global_func("test.counter_add")
    for k in range(1000):
        add(k)
    log = sess.get_global_func("test.counter_log")()
    for w in range(sess.num_workers):
        assert log.fetch(w) == tuple(range(1000))


def test_drefs_are_freed_when_dropped(sess):
    make = sess.get_global_func("test.make_tracked")
    live = sess.get_global_func("test.live_count")
    refs = [make() for _ in range(100)]
    assert live().fetch(sess.num_workers - 1) == 100
    del refs
    gc.collect()
    sess.sync()
    assert [live().fetch(w) for w in range(sess.num_workers)] == [0] * sess.num_workers


def test_results_dropped_in_a_loop_that_never_waits_stay_bounded_on_workers(sess):
    """Frees go out in batches (before any command the controller waits for, or every
    few drops), so a loop that drops each result keeps only a few alive."""
    from disco.session.base import _FREE_BATCH
    make = sess.get_global_func("test.make_tracked")
    live = sess.get_global_func("test.live_count")
    for _ in range(200):
        make()                                   # dropped at once
    counts = live()                              # posted before anything waited
    assert all(counts.fetch(w) <= _FREE_BATCH for w in range(sess.num_workers))
    gc.collect()
    sess.sync()
    assert [live().fetch(w) for w in range(sess.num_workers)] == [0] * sess.num_workers


def test_a_round_trip_is_two_commands_and_frees_what_it_dropped(sess):
    """`f(); sync()` sends CALL and SYNC only: the dropped result's id rides on the SYNC
    (protocol.py), which frees it on every worker before answering."""
    make = sess.get_global_func("test.make_tracked")
    live = sess.get_global_func("test.live_count")
    sess.sync()
    for _ in range(3):
        before = sess._chan.last_seq
        make()
        sess.sync()
        assert sess._chan.last_seq - before == 2
    assert [live().fetch(w) for w in range(sess.num_workers)] == [0] * sess.num_workers


def test_import_module_registers_on_workers(tmp_path, monkeypatch):
    mod = "worker_funcs_extra"
    (tmp_path / f"{mod}.py").write_text("import disco\n@disco.register_func('test.extra_triple', override=True)\n"
                                        "def triple(x):\n    return 3 * x\n")
    # ProcessSession workers get the controller's sys.path (as PYTHONPATH) when they start.
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, mod, raising=False)
    with disco.ProcessSession(2) as s:
        with pytest.raises(disco.registry.UnknownFunctionError, match="test.extra_triple"):
            s.get_global_func("test.extra_triple")
        s.import_module(mod)
        assert s.get_global_func("test.extra_triple")(5).fetch(1) == 15
    assert mod not in sys.modules  # imported on the workers only


def test_gather_of_values_that_do_not_concatenate_names_them(sess2):
    ids = sess2.get_global_func("disco.worker_id")()
    with pytest.raises(SessionError, match=rf"gather of DRef \d+ \(result of disco.worker_id\): expected arrays "
                                           r"that concatenate along axis 0, the workers hold worker 0: int; "
                                           r"worker 1: int \(numpy: "):
        sess2.gather(ids)
    mixed = sess2.get_global_func("test.ones_per_worker")(((4,), (4, 2)))
    with pytest.raises(SessionError, match=r"result of test.ones_per_worker\): expected arrays that concatenate "
                                           r"along axis 1, the workers hold worker 0: ndarray of shape \(4,\) and "
                                           r"dtype float32; worker 1: ndarray of shape \(4, 2\) and dtype float32"):
        sess2.gather(mixed, axis=1)
    np.testing.assert_array_equal(sess2.gather(sess2.broadcast(np.arange(3))), np.tile(np.arange(3), 2))


def test_fetch_unpicklable_result_raises_clearly(sess2):
    r = sess2.get_global_func("test.unpicklable")()
    with pytest.raises(disco.WorkerError, match="sending the reply"):
        r.fetch(0)
    sess2.sync()


def test_shutdown_and_context_manager():
    for kind in KINDS:
        with kind(2) as s:
            f = s.get_global_func("disco.worker_id")
            r = f()
        assert "closed" in repr(s)
        s.shutdown()  # idempotent
        with pytest.raises(SessionError, match="is shut down"):
            f()
        with pytest.raises(SessionError, match="is shut down"):
            r.fetch(0)


def test_init_ccl_calls_the_hook(sess):
    n = sess.num_workers
    a = np.arange(4 * n, dtype=np.float32)
    sess.init_ccl("shm")
    total = sess.get_global_func("ccl.allreduce")(sess.scatter(a))
    np.testing.assert_allclose(total.fetch(n - 1), np.sum(np.split(a, n), axis=0))


def test_session_attributes(sess):
    assert sess.num_workers in SIZES
    assert type(sess).__name__ in repr(sess)
    assert isinstance(sess, disco.Session)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_command_too_large_for_the_ring_names_the_call_and_the_remedies(kind):
    with kind(2, ring_bytes=1 << 16) as s:  # a command may be at most 16 KiB
        s.import_module("worker_funcs")
        echo = s.get_global_func("test.echo")
        with pytest.raises(SessionError, match=r"call of test.echo: command of \d+ bytes exceeds the ring's limit "
                                               r"of 16384 bytes \(a quarter of its 65536 bytes\); pass large data as "
                                               r"numpy arrays .* ring_bytes="):
            echo(b"x" * 20000)
        with pytest.raises(SessionError, match=r"broadcast: command of \d+ bytes exceeds"):
            s.broadcast("x" * 20000)
        assert echo(b"x" * 100).fetch(1) == (b"x" * 100,)  # nothing half-sent


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_many_drefs_dropped_at_once_are_freed_with_a_small_ring(kind):
    with kind(2, ring_bytes=1 << 16) as s:  # 3000 ids (27 KB) exceed one 16 KiB command
        s.import_module("worker_funcs")
        make, live = s.get_global_func("test.make_tracked"), s.get_global_func("test.live_count")
        refs = [make() for _ in range(3000)]
        assert live().fetch(1) == 3000
        del refs
        gc.collect()
        s.sync()
        assert [live().fetch(w) for w in range(2)] == [0, 0]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_small_ring_wraps_and_applies_backpressure(kind):
    with kind(2, ring_bytes=1 << 16) as s:  # 64 KiB ring; ~1.7 MB of commands wrap it ~25 times
        s.import_module("worker_funcs")
        add, log = s.get_global_func("test.counter_add"), s.get_global_func("test.counter_log")
        echo = s.get_global_func("test.echo")
        pad = "p" * 999
        for k in range(3000):
            add(k)
            echo(pad[: k % 1000])
        assert log().fetch(1) == tuple(range(3000))


def test_large_array_travels_through_buffers_not_the_ring():
    """With a 64 KiB ring a command holds at most 16 KiB (as the bytes control shows),
    so a 2 MiB array that arrives intact, both ways, went through shared-memory buffers."""
    big = np.random.default_rng(2).standard_normal(1 << 18)  # 2 MiB of float64
    with disco.ProcessSession(2, ring_bytes=1 << 16) as s:
        s.import_module("worker_funcs")
        with pytest.raises(SessionError, match="exceeds the ring's limit of 16384 bytes"):
            s.broadcast(big.tobytes())
        b = s.broadcast(big)
        echoed = s.get_global_func("test.echo")(big)
        for w in range(2):
            np.testing.assert_array_equal(b.fetch(w), big)  # the reply is too large for its slot too
            np.testing.assert_array_equal(echoed.fetch(w)[0], big)


def _cpu_ticks(stat_path: str) -> int:
    """utime + stime (clock ticks) from a /proc/.../stat file."""
    with open(stat_path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15; fields[0] is field 3 (state)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_idle_workers_use_almost_no_cpu(kind):
    """Waiting workers sleep on a futex after a short spin: over a second of idleness
    each uses well under 0.2 s of CPU (a spinning worker would use about 1 s)."""
    with kind(2) as s:
        s.sync()
        if kind is disco.ProcessSession:
            stats = [f"/proc/{pid}/stat" for pid in s.pids]
        else:
            stats = [f"/proc/self/task/{t.native_id}/stat" for t in s._threads]
        before = [_cpu_ticks(p) for p in stats]
        time.sleep(1.0)
        used = [_cpu_ticks(p) - b for p, b in zip(stats, before)]
        s.sync()  # still serving
    limit = 0.2 * os.sysconf("SC_CLK_TCK")
    assert all(u < limit for u in used), f"CPU ticks used by idle workers in 1 s: {used} (limit {limit})"


def test_process_workers_do_not_import_the_compiler():
    with disco.ProcessSession(1) as s:
        s.import_module("worker_funcs")
        assert s.get_global_func("test.imported")("compiler").fetch(0) is False
        assert s.get_global_func("test.imported")("disco.session.worker").fetch(0) is True


def test_process_workers_share_the_cores_between_their_blas_threads(monkeypatch):
    # N workers each starting one BLAS thread per core would oversubscribe the host.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")          # a user's choice is kept
    import os
    expected = str(max(1, (os.cpu_count() or 1) // 2))
    with disco.ProcessSession(2) as sess:
        sess.import_module("worker_funcs")
        getenv = sess.get_global_func("test.getenv")
        for var, want in (("OMP_NUM_THREADS", expected), ("MKL_NUM_THREADS", "7")):
            assert getenv(var).fetch(worker=1) == want

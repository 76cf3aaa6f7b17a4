"""Issue 15, case 3: the controller's waits have a deadline. A worker function that
never returns makes sync/fetch/gather raise WorkerTimeoutError naming the worker and
the function (not block until SIGINT), and shutdown stops hung workers in parallel,
within a bounded time (not 10 s + 5 s per worker)."""
from __future__ import annotations

import time

import pytest

import disco
from disco.errors import SessionError, WorkerTimeoutError
from disco.session.base import default_timeout_s
from hang_guard import error_of

pytestmark = pytest.mark.timeout(120)


def _call_hang(sess, worker):
    sess.import_module("worker_funcs")
    return sess.get_global_func("test.hang_on")(worker)


@pytest.mark.parametrize("wait", ["sync", "fetch", "gather"])
def test_wait_names_late_worker_and_function(wait):
    sess = disco.ProcessSession(3, timeout_s=1.0)
    try:
        ref = _call_hang(sess, 1)
        op = {"sync": sess.sync, "fetch": lambda: ref.fetch(1), "gather": lambda: sess.gather(ref)}[wait]
        t0 = time.monotonic()
        e = error_of(op)
        assert isinstance(e, WorkerTimeoutError) and e.worker_id == 1, e
        assert time.monotonic() - t0 < 20
        assert "timed out after 1 s: worker 1 is still running call of test.hang_on" in str(e)
        assert "worker 0" not in str(e) and "worker 2" not in str(e)
        with pytest.raises(WorkerTimeoutError, match="worker 1 is still running call of test.hang_on"):
            sess.sync()   # unusable from now on, with the same error
    finally:
        t0 = time.monotonic()
        sess.shutdown()
        assert time.monotonic() - t0 < 4.0   # hung worker killed after ~1 s, not 10 s + 5 s
    assert all(p.poll() is not None for p in sess._procs)


def test_per_call_timeout_overrides_the_session_default():
    with disco.ThreadedSession(2, timeout_s=None) as sess:
        sess.import_module("worker_funcs")
        sess.get_global_func("test.sleep")(0.5)
        e = error_of(lambda: sess.sync(timeout=0.1))
        assert isinstance(e, WorkerTimeoutError)
        assert "sync timed out after 0.1 s" in str(e) and "call of test.sleep" in str(e)


def test_slow_but_finishing_work_is_not_a_timeout():
    with disco.ProcessSession(2, timeout_s=5.0) as sess:
        sess.import_module("worker_funcs")
        sess.get_global_func("test.sleep")(0.3)
        sess.sync()
        assert sess.get_global_func("test.add")(1, 2).fetch(1) == 3


def test_shutdown_of_many_hung_workers_is_parallel():
    sess = disco.ProcessSession(4, timeout_s=0.5)
    sess.import_module("worker_funcs")
    f = sess.get_global_func("test.hang_on")
    for w in range(4):
        f(w)
    with pytest.raises(WorkerTimeoutError):
        sess.sync()
    t0 = time.monotonic()
    sess.shutdown()
    assert time.monotonic() - t0 < 4.0   # serially it was 10 s + 4 x 5 s
    assert all(p.poll() is not None for p in sess._procs)


def test_default_timeout_from_environment(monkeypatch):
    monkeypatch.setenv("DISCO_SESSION_TIMEOUT_S", "12.5")
    assert default_timeout_s() == 12.5
    for off in ("0", "none", "inf"):
        monkeypatch.setenv("DISCO_SESSION_TIMEOUT_S", off)
        assert default_timeout_s() is None
    monkeypatch.setenv("DISCO_SESSION_TIMEOUT_S", "soon")
    with pytest.raises(SessionError, match="DISCO_SESSION_TIMEOUT_S='soon': expected a number of seconds"):
        default_timeout_s()
    monkeypatch.delenv("DISCO_SESSION_TIMEOUT_S")
    assert default_timeout_s() == 900

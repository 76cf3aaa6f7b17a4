"""Failure behaviour: worker exceptions, dead workers, a dead controller, misuse."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import disco
from disco.errors import SessionError, WorkerError
from disco.registry import UnknownFunctionError
from hang_guard import error_of

pytestmark = pytest.mark.timeout(60)

KINDS = [disco.ThreadedSession, disco.ProcessSession]


@pytest.fixture(params=[(k, n) for k in KINDS for n in (1, 2, 4)], ids=lambda p: f"{p[0].__name__}-{p[1]}")
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


def test_worker_exception_reaches_controller(sess):
    n = sess.num_workers
    bad = n - 1
    r = sess.get_global_func("test.fail_on")(bad, "boom")  # pipelined: raises at the next sync
    with pytest.raises(WorkerError) as info:
        sess.sync()
    e = info.value
    assert e.worker_id == bad
    assert f"worker {bad}" in str(e) and "ValueError: boom on worker" in str(e)
    assert "fail_on" in e.remote_traceback and "raise ValueError" in e.remote_traceback
    # The session stays usable; good workers kept their results, the failed one has
    # none: fetching it raises the call's own error (every time), not "no value".
    sess.sync()
    if n > 1:
        assert r.fetch(0) == 0
    for _ in range(2):
        with pytest.raises(WorkerError, match=f"worker {bad}: CALL of fail_on raised ValueError: boom on worker {bad}"):
            r.fetch(bad)
    assert sess.get_global_func("test.add")(2, 3).fetch(bad) == 5


@pytest.mark.parametrize("kind, name", [("exit", "SystemExit"), ("interrupt", "KeyboardInterrupt")])
def test_exit_or_interrupt_inside_a_worker_function_is_a_failure_not_a_death(sess2, kind, name):
    """A worker reports what its function raises, even SystemExit: it must not exit
    (the controller would see a dead worker) nor swallow it."""
    r = sess2.get_global_func("test.raise_exit")(kind)
    with pytest.raises(WorkerError, match=f"CALL of raise_exit raised {name}") as info:
        sess2.sync()
    assert "raise_exit" in info.value.remote_traceback
    with pytest.raises(WorkerError, match=name):
        r.fetch(1)
    assert sess2.get_global_func("test.add")(2, 3).fetch(1) == 5


def test_fetch_of_failed_collective_raises_its_error_once(sess):
    """The issue's repro: fetching the result of a collective that failed on every worker
    raises the collective's error; the next, unrelated sync raises nothing."""
    sess.init_ccl("shm")
    x = sess.broadcast(np.ones(4, np.float32))
    bad = sess.get_global_func("ccl.allreduce")(x, "avg")
    with pytest.raises(WorkerError, match=r"worker 0: CALL of allreduce raised CollectiveError: .*unknown op") as info:
        bad.fetch(0)
    assert "has no value" not in str(info.value)
    sess.sync()  # reported once, although every worker failed
    assert sess.get_global_func("test.add")(1, 2).fetch(0) == 3
    with pytest.raises(WorkerError, match="CollectiveError"):  # still has no value
        sess.gather(bad)
    sess.sync()


def test_gather_of_failed_call_raises_its_error(sess):
    n = sess.num_workers
    r = sess.get_global_func("test.fail_on")(n - 1, "gone")
    with pytest.raises(WorkerError, match=f"worker {n - 1}: CALL of fail_on raised ValueError: gone on worker {n - 1}"):
        sess.gather(r)
    sess.sync()


def test_every_failure_before_a_sync_is_reported_once(sess):
    n = sess.num_workers
    fail = sess.get_global_func("test.fail_on")
    fail(0, "first")
    fail(n - 1, "second")
    fail(0, "third")
    with pytest.raises(WorkerError) as info:
        sess.sync()
    text = str(info.value)
    assert info.value.worker_id == 0
    assert text.index("first on worker 0") < text.index(f"second on worker {n - 1}") < text.index("third on worker 0")
    assert text.count("also failed:") == 2
    assert "first on worker 0" in info.value.remote_traceback
    sess.sync()  # nothing left to report


def test_failed_fetch_also_reports_earlier_failures(sess):
    """Fetching a failed DRef raises its own error first; other failures since the last
    report are named in the same error, and not raised again."""
    fail = sess.get_global_func("test.fail_on")
    fail(0, "earlier")
    r = fail(0, "fetched")
    with pytest.raises(WorkerError) as info:
        r.fetch(0)
    first, second = str(info.value).splitlines()[:2]
    assert first.endswith("ValueError: fetched on worker 0")
    assert second.startswith("also failed: worker 0:") and second.endswith("earlier on worker 0")
    sess.sync()


def test_many_failures_are_counted(sess):
    fail = sess.get_global_func("test.fail_on")
    for i in range(40):
        fail(0, f"f{i}")
    with pytest.raises(WorkerError) as info:
        sess.sync()
    text = str(info.value)
    assert "f0 on worker 0" in text.splitlines()[0]
    assert "more failed commands on worker 0" in text
    sess.sync()


def test_error_reported_at_fetch_too(sess):
    fail, add = sess.get_global_func("test.fail_on"), sess.get_global_func("test.add")
    fail(0, "early")
    ok = add(1, 1)
    with pytest.raises(WorkerError, match="early on worker 0"):
        ok.fetch(0)
    assert ok.fetch(0) == 2  # reported once; later calls were still run


def test_using_a_failed_result_fails_clearly(sess):
    fail, identity = sess.get_global_func("test.fail_on"), sess.get_global_func("test.identity")
    dependent = identity(fail(0, "x"))
    with pytest.raises(WorkerError, match="x on worker 0") as info:
        sess.sync()
    assert "also failed: worker 0: CALL of identity raised FailedInputError" in str(info.value)
    with pytest.raises(WorkerError, match=r"FailedInputError: argument DRef \d+ .* failed: .*x on worker 0"):
        dependent.fetch(0)


def test_unknown_function_name(sess):
    with pytest.raises(UnknownFunctionError, match=r"'test.ad'.*close names: test.add"):
        sess.get_global_func("test.ad")
    assert sess.get_global_func("test.add")(1, 2).fetch(0) == 3


def test_dref_from_another_session():
    with disco.ThreadedSession(2) as a, disco.ThreadedSession(2) as b:
        x = a.broadcast(1)
        f = b.get_global_func("disco.worker_id")
        identity = b.get_global_func("disco.num_workers")
        pattern = rf"{x!r} belongs to {a.name}, not to {b.name}"
        with pytest.raises(SessionError, match=pattern.replace("(", r"\(").replace(")", r"\)")):
            f(x)
        with pytest.raises(SessionError, match="belongs to"):
            identity((1, [x]))
        with pytest.raises(SessionError, match="belongs to"):
            b.fetch(x)
        with pytest.raises(SessionError, match="belongs to"):
            b.gather(x)
        b.sync()
        assert x.fetch(1) == 1


def test_fetch_bad_worker_index(sess):
    r = sess.broadcast(1)
    with pytest.raises(SessionError, match=r"worker 9 out of range"):
        r.fetch(9)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_until(cond, timeout_s: float) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.mark.parametrize("op", ["sync", "call", "blocked"])
def test_killed_worker_raises_instead_of_hanging(op):
    s = disco.ProcessSession(3)
    try:
        s.import_module("worker_funcs")
        pids = s.pids
        if op == "blocked":  # the controller is already waiting when the worker dies
            s.get_global_func("test.sleep")(0.3)
        os.kill(pids[1], signal.SIGKILL)

        def operation():
            if op == "call":  # pipelined calls until one notices (bounded, in case none does)
                f = s.get_global_func("test.add")
                for _ in range(2000):
                    f(1, 2)
                    time.sleep(0.001)
            s.sync()

        error = error_of(operation)
        assert isinstance(error, WorkerError), f"expected WorkerError, got {error!r}"
        assert error.worker_id == 1 and "SIGKILL" in str(error)
        with pytest.raises(WorkerError):  # stays failed
            s.sync()
    finally:
        s.shutdown()
    assert _wait_until(lambda: all(_gone(p) for p in pids), 5.0)


# The names the project gives /dev/shm entries: "disco-buf-<pid>-..." for the channel and
# array buffers (csrc/channel.cc unique_name) and "disco_ccl_<group>" for a shm
# communicator's segment (csrc/ccl/communicator.cc shm_name), where sess.init_ccl's group
# is "disco-<controller pid>-<hex>".
SHM_PREFIXES = ("disco-", "disco_ccl_")


def _disco_shm(pid: int) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(SHM_PREFIXES) and f"-{pid}-" in n]


def _mapped_ccl_segments(pid: int) -> list[str]:
    """The shm communicator segments process `pid` has mapped (unlinked ones included)."""
    with open(f"/proc/{pid}/maps") as f:
        return sorted({line.split(None, 5)[5].strip() for line in f if "/dev/shm/disco_ccl_" in line})


def test_segments_are_private_and_unlinked():
    with disco.ProcessSession(2) as s:
        mode = os.stat(f"/proc/self/fd/{s._chan.fd}").st_mode & 0o777
        assert mode == 0o600
        assert _disco_shm(os.getpid()) == []


def test_killed_controller_leaves_nothing_behind(tmp_path):
    script = textwrap.dedent("""
        import sys, time, numpy as np, disco
        s = disco.ProcessSession(2)
        x = s.broadcast(np.ones(1 << 20))  # a data buffer too
        s.init_ccl("shm")  # and a communicator segment
        total = s.get_global_func("ccl.allreduce")(x, "sum")
        assert (total.fetch(1) == 2).all()
        print(" ".join(map(str, s.pids)), flush=True)
        time.sleep(60)
    """)
    ctrl = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        pids = [int(p) for p in ctrl.stdout.readline().split()]
        assert len(pids) == 2
        for p in pids:  # the workers do use a communicator segment of this controller's group
            assert any(f"disco_ccl_disco-{ctrl.pid}-" in m for m in _mapped_ccl_segments(p)), p
        ctrl.kill()
        ctrl.wait()
        assert _wait_until(lambda: all(_gone(p) for p in pids), 5.0), "workers outlived the controller"
        left = lambda: [n for p in (ctrl.pid, *pids) for n in _disco_shm(p)]  # noqa: E731
        assert _wait_until(lambda: left() == [], 5.0), f"left in /dev/shm: {left()}"
    finally:
        if ctrl.poll() is None:
            ctrl.kill()

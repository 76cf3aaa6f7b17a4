"""Issue 15: a soak of session lifecycles. 200 sessions are created, use shm collectives
and shut down; in some of the process sessions a worker is SIGKILLed at a random moment
(during init_ccl, a call, a collective or a sync). Afterwards no child process, file
descriptor or /dev/shm entry of ours is left.

Bounded for CI: a worker process costs about a second of start-up here (numpy and
ml_dtypes imports), so by default 20 of the 200 sessions are ProcessSessions and the
rest ThreadedSessions; DISCO_SOAK_PROCESS_SESSIONS=200 makes all of them processes."""
from __future__ import annotations

import gc
import os
import random
import signal
import threading
import time

import numpy as np
import pytest

import disco
from disco.errors import DiscoError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SESSIONS = 200
PROCESS_SESSIONS = int(os.environ.get("DISCO_SOAK_PROCESS_SESSIONS", "20"))


def children() -> set[int]:
    """Pids of this process's living children (zombies count: they were not reaped)."""
    me, out = str(os.getpid()), set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                out.add(int(pid))
    return out


def fds() -> set[str]:
    gc.collect()   # sessions dropped in the loop: their channels close when collected
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass
    return out


def shm_entries() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("disco")}


def one_session(kind, kill_after: float | None, rng: random.Random) -> None:
    sess = kind(2, timeout_s=20.0)
    killer = None
    if kill_after is not None:
        victim = sess.pids[rng.randrange(2)]
        killer = threading.Timer(kill_after, os.kill, (victim, signal.SIGKILL))
        killer.start()
    try:
        sess.init_ccl("shm", timeout_s=5.0)
        sess.import_module("worker_funcs")
        x = sess.scatter(np.arange(8, dtype=np.float32).reshape(2, 4))
        y = sess.get_global_func("ccl.allreduce")(x, "sum")
        sess.get_global_func("test.sleep")(rng.random() * 0.05)
        np.testing.assert_array_equal(y.fetch(worker=1), [[4, 6, 8, 10]])
        sess.sync()
    except DiscoError:
        assert kill_after is not None, "only a killed worker may make a session fail"
    finally:
        if killer is not None:
            killer.join()
        sess.shutdown()


def test_soak_sessions_leave_nothing_behind():
    rng = random.Random(15)
    with disco.ThreadedSession(1) as warm:   # first-use imports and threads, before counting
        warm.sync()
    before = (children(), fds(), shm_entries())
    t0 = time.monotonic()
    kinds = [disco.ProcessSession] * PROCESS_SESSIONS + [disco.ThreadedSession] * (SESSIONS - PROCESS_SESSIONS)
    rng.shuffle(kinds)
    killed = 0
    for kind in kinds:
        kill = kind is disco.ProcessSession and rng.random() < 0.5
        killed += kill
        one_session(kind, rng.random() * 0.4 if kill else None, rng)
    elapsed = time.monotonic() - t0
    time.sleep(0.2)
    after = (children(), fds(), shm_entries())
    assert after[0] - before[0] == set(), "child processes left behind"
    assert after[1] - before[1] == set(), "file descriptors left open"
    assert after[2] - before[2] == set(), "/dev/shm entries left behind"
    assert killed > 0
    print(f"soak: {SESSIONS} sessions ({PROCESS_SESSIONS} processes, {killed} killed) in {elapsed:.1f} s")

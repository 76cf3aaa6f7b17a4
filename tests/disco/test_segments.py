"""Issue 15, case 2: a collective never joins a segment another user or job made.

Ranks are threads (or a child process) calling disco.ccl.shm.ShmCommunicator directly.
Cross-user cases chown a segment to another uid, which needs root."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import disco
from disco.ccl import segments
from disco.ccl.shm import ShmCommunicator
from disco.errors import CollectiveError

pytestmark = pytest.mark.timeout(60)
OTHER_UID = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="making a segment owned by another user needs root")


def shm_path(group: str) -> str:
    return f"/dev/shm/disco_ccl_{group}"


def in_thread(fn):
    """Start fn() in a thread; returns a function giving (result, error) once it ended."""
    out = {}

    def run():
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join():
        t.join(30)
        assert not t.is_alive(), "hung"
        return out.get("result"), out.get("error")
    return join


def wait_for(path, timeout=10.0):
    t0 = time.monotonic()
    while not os.path.exists(path):
        assert time.monotonic() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.005)


def attach_error(group, **options) -> str:
    """The CollectiveError of rank 1 of 2 joining `group` (it must fail fast)."""
    t0 = time.monotonic()
    with pytest.raises(CollectiveError) as info:
        ShmCommunicator(group, 1, 2, timeout_s=5.0, **options)
    assert time.monotonic() - t0 < 2.0, "a refusal, not a timeout"
    return str(info.value)


def planted(group, mode=0o666, owner=None, size=1 << 20):
    path = shm_path(group)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
    os.ftruncate(fd, size)
    os.fchmod(fd, mode)
    if owner is not None:
        os.fchown(fd, owner, owner)
    os.close(fd)
    return path


@needs_root
def test_segment_of_another_user_is_refused():
    group = segments.new_group_name()
    path = planted(group, owner=OTHER_UID)
    try:
        msg = attach_error(group)
        assert f"refuses to join /disco_ccl_{group}: it is owned by uid {OTHER_UID}, not by this user" in msg
    finally:
        os.unlink(path)


def test_segment_open_to_others_is_refused():
    group = segments.new_group_name()
    path = planted(group, mode=0o666)
    try:
        assert "its mode is 666, not 600 (others could read or write it)" in attach_error(group)
    finally:
        os.unlink(path)


def test_symlink_at_the_name_says_eloop():
    group = segments.new_group_name()
    target = planted(segments.new_group_name(), mode=0o600)
    os.symlink(target, shm_path(group))
    try:
        msg = attach_error(group)
        assert "cannot open" in msg and "a symbolic link is at that name" in msg, msg
    finally:
        os.unlink(shm_path(group))
        os.unlink(target)


def test_other_groups_secret_is_refused_and_its_segment_kept():
    """Two jobs of one user with one group name: the second's rank 1 does not join the
    first's segment, and the second's rank 0 does not unlink it."""
    group = segments.new_group_name()
    first0 = in_thread(lambda: ShmCommunicator(group, 0, 2, timeout_s=5.0, secret="job-a"))
    wait_for(shm_path(group))
    assert "belongs to another group (its secret differs" in attach_error(group, secret="job-b")
    with pytest.raises(CollectiveError, match=r"worker 0 cannot create .*: the name exists"):
        ShmCommunicator(group, 0, 2, timeout_s=1.0, secret="job-b")
    assert os.path.exists(shm_path(group))          # job a's segment is still there
    first1 = ShmCommunicator(group, 1, 2, timeout_s=5.0, secret="job-a")   # and job a forms
    comm0, err = first0()
    assert err is None
    out = [None, None]
    t = threading.Thread(target=lambda: out.__setitem__(0, comm0.allreduce(np.array([1., 2.]))))
    t.start()
    out[1] = first1.allreduce(np.array([10., 20.]))
    t.join(10)
    np.testing.assert_array_equal(out[0], [11., 22.])
    np.testing.assert_array_equal(out[1], [11., 22.])
    assert not os.path.exists(shm_path(group))


def test_a_rank_cannot_be_joined_twice():
    group = segments.new_group_name()
    rank0 = in_thread(lambda: ShmCommunicator(group, 0, 3, timeout_s=3.0))
    wait_for(shm_path(group))
    rank1 = in_thread(lambda: ShmCommunicator(group, 1, 3, timeout_s=3.0))
    time.sleep(0.3)
    with pytest.raises(CollectiveError, match=r"rank 1 was already joined by pid \d+"):
        ShmCommunicator(group, 1, 3, timeout_s=3.0)
    assert isinstance(rank0()[1], CollectiveError) and isinstance(rank1()[1], CollectiveError)  # 2 never came
    assert not os.path.exists(shm_path(group))      # worker 0 unlinked what it made


CREATOR = textwrap.dedent("""
    import sys
    from disco.ccl.shm import ShmCommunicator
    ShmCommunicator(sys.argv[1], 0, 2, timeout_s=60.0)   # waits for a rank 1 that never comes
""")


def test_segment_of_a_killed_creator_is_swept():
    """A worker 0 killed while its group forms leaves the name; the next init_ccl sweeps
    it (its name's pid is dead) but not a name whose pid lives."""
    child = subprocess.Popen([sys.executable, "-c", "import os, sys; "
                              "g = f'disco-{os.getpid()}-' + sys.argv[1]; print(g, flush=True); "
                              "exec(sys.argv[2])", segments.new_secret()[:12], CREATOR.replace("sys.argv[1]", "g")],
                             stdout=subprocess.PIPE, text=True)
    dead_group = child.stdout.readline().strip()
    wait_for(shm_path(dead_group))
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert os.path.exists(shm_path(dead_group))     # the crash left it
    live = planted(f"disco-{os.getpid()}-abc", mode=0o600)
    try:
        with disco.ThreadedSession(2) as sess:
            sess.init_ccl("shm")                      # sweeps before making its group
        assert not os.path.exists(shm_path(dead_group))
        assert os.path.exists(live)                   # its creator (this process) is alive
    finally:
        os.unlink(live)


def test_session_groups_are_unguessable_and_keyed():
    names = {segments.new_group_name() for _ in range(100)}
    assert len(names) == 100 and all(n.startswith(f"disco-{os.getpid()}-") for n in names)
    a, b = segments.derived("s", "name", 0, 0), segments.derived("s", "name", 0, 2)
    assert a != b and a != segments.derived("t", "name", 0, 0)


def test_init_without_group_name_is_an_error():
    from disco import ccl
    from disco._context import WorkerContext, set_worker_context
    set_worker_context(WorkerContext(worker_id=0, num_workers=1))
    try:
        with pytest.raises(CollectiveError, match="a group name unique to this group is required"):
            ccl.init("shm")
    finally:
        set_worker_context(None)

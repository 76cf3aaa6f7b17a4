"""A small or full /dev/shm gives error messages and ordinary arrays, never SIGBUS.

Each case runs in a private mount namespace with a small tmpfs on /dev/shm
(`unshare -m`, which needs root or user namespaces; skipped without)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)

HERE = os.path.dirname(os.path.abspath(__file__))


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


if not _can_unshare():
    pytest.skip("needs `unshare -m` and tmpfs mounts (root or user namespaces)", allow_module_level=True)


def run_with_shm(size: str, code: str) -> subprocess.CompletedProcess:
    script = textwrap.dedent(code)
    cmd = f"mount -t tmpfs -o size={size} tmpfs /dev/shm && exec {sys.executable} -c \"$0\""
    return subprocess.run(["unshare", "-m", "sh", "-c", cmd, script], capture_output=True, text=True,
                          timeout=100, env={**os.environ, "PYTHONPATH": os.pathsep.join([HERE, *sys.path])})


def test_arena_leaves_room_and_collectives_still_run_when_shm_is_small():
    """11 MiB of /dev/shm: the arena keeps its headroom, so ccl.empty gives ordinary
    arrays, and staged all-reduces (which write the segment's slots) still work."""
    r = run_with_shm("11m", """
        import numpy as np
        from test_ccl import run_threads
        from disco import ccl
        def body(r):
            keep = ccl.empty(1 << 20, np.float32)
            x = np.full(1 << 20, r + 1.0, np.float32)
            return ccl.communicator().in_arena(keep), float(ccl.allreduce(x, out=np.empty_like(x))[0])
        print(run_threads(2, body))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[(False, 3.0), (False, 3.0)]"


def test_no_room_for_a_session_or_a_group_is_an_error_message():
    r = run_with_shm("1m", """
        import disco
        from disco.errors import CollectiveError, SessionError
        from test_ccl import run_threads
        try:
            disco.ProcessSession(2)
        except SessionError as e:
            print("session:", e)
        errs = run_threads(2, lambda r: None, expect_errors=True, timeout_s=2)
        print("ccl:", errs[0])
    """)
    assert r.returncode == 0, r.stderr
    session, ccl = r.stdout.strip().splitlines()
    assert "cannot create the command channel: no room for a" in session and "--shm-size" in session
    assert "ccl.init: no room for the" in ccl and "in /dev/shm (No space left on device)" in ccl

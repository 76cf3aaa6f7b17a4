"""Point-to-point transfers of the `mpi` backend under mpiexec (mpi_p2p_app.py): sizes and
dtypes, a ring exchange, many messages in order between collectives, mismatches and bad
arguments raised on the receiver naming both workers, timeouts that name what waits
elsewhere, and the controller's form with one peer per worker."""
from __future__ import annotations

import os
import re
import sys

import pytest

from launch_helpers import Job, clean_env, mpiexec_path, needs_mpi

pytestmark = [pytest.mark.timeout(120), pytest.mark.mpi]
APP = os.path.join(os.path.dirname(__file__), "mpi_p2p_app.py")


@needs_mpi
@pytest.mark.parametrize("n", [3, 4])
def test_mpi_send_recv(n):
    job = Job([mpiexec_path(), "-n", str(n), sys.executable, APP], env=clean_env())
    assert job.rc == 0, f"stdout:\n{job.out}\nstderr:\n{job.err}"
    lines = dict(line.split(": ", 1) for line in job.out.splitlines() if ": " in line)
    answers = {case: text.split(" | ") for case, text in lines.items() if case != "session_ring"}
    for case in ("sizes_dtypes", "ring", "many_in_order"):
        assert answers[case] == ["ok"] * n, (case, answers[case])
    for case in ("shape_mismatch", "dtype_mismatch", "timeout"):     # only worker 1 raises
        assert answers[case][:1] + answers[case][2:] == ["ok"] * (n - 1), (case, answers[case])
    assert re.fullmatch(r"ccl\.recv: worker 1 expected a float32 array of shape \(4, 5\) from worker 0, but worker 0 "
                        r"sent a float32 array of shape \(4, 6\) \(its message \d+ to worker 1; dropped, so the next "
                        r"recv from worker 0 gets its next message\)", answers["shape_mismatch"][1])
    assert answers["dtype_mismatch"][1].startswith("ccl.recv: worker 1 expected a float32 array of shape (5,) from "
                                                   "worker 0, but worker 0 sent a float64 array of shape (5,)")
    assert answers["bad_sender"][:2] == [
        "ccl.send: invalid arguments on worker 0: cannot send an array of dtype object (Python objects)",
        "ccl.recv: worker 1 expected a float32 array of shape (1,) from worker 0, which could not send it: invalid "
        "arguments on worker 0: cannot send an array of dtype object (Python objects)"]
    assert answers["timeout"][1] == ("ccl.recv: worker 1 timed out after 0.5 s waiting for a float64 array of shape "
                                     "(3,) from worker 0, which has sent nothing more to it (did worker 0 call "
                                     "ccl.send(x, 1)?)")
    assert answers["wrong_peer"][1:] == ["ok"] * (n - 1)
    assert answers["wrong_peer"][0].endswith("worker 2 has sent a message to worker 0 that it has not received (was "
                                             "src=2 meant?)")
    ring = eval(lines["session_ring"])          # worker w holds what worker w - 1 sent: row w - 1
    assert ring == [[[float(4 * ((w - 1) % n) + i) for i in range(4)]] for w in range(n)]
    assert job.leftovers() == []

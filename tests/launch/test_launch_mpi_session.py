"""The Session API on an MPISession, same-host (shared-memory ring) and MPI-relayed
(the path of ranks on other hosts), under mpiexec."""
from __future__ import annotations

import os
import sys

import pytest

from launch_helpers import Job, clean_env, mpiexec_path, needs_mpi

pytestmark = [pytest.mark.mpi, needs_mpi, pytest.mark.timeout(120)]
APP = os.path.join(os.path.dirname(__file__), "mpi_session_app.py")


@pytest.mark.parametrize("n,transport", [(2, "auto"), (3, "mpi")])
def test_session_api_under_mpiexec(n, transport):
    job = Job([mpiexec_path(), "-n", str(n), sys.executable, APP], env=clean_env(DISCO_MPI_TRANSPORT=transport))
    assert job.rc == 0, f"stdout:\n{job.out}\nstderr:\n{job.err}"
    assert job.out.splitlines()[-1] == "ALL OK", job.out
    assert job.leftovers() == []

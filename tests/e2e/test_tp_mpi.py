"""Tensor-parallel modules on an MPISession under mpiexec (tp_mpi_app.py), and a
two-stage pipeline there with the mpi backend (pipeline_mpi_app.py)."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))


def _mpiexec():
    try:
        from launch import find_mpiexec
    except ImportError:
        return None
    return find_mpiexec()


HAVE_MPI = _mpiexec() is not None and importlib.util.find_spec("mpi4py") is not None
pytestmark = [pytest.mark.mpi, pytest.mark.skipif(not HAVE_MPI, reason="needs mpiexec and mpi4py"),
              pytest.mark.timeout(180)]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPIR_", "DISCO_NUM_WORKERS",
                                "DISCO_PREFIX", "DISCO_MPI_"))}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    return env


# ccl_backend="auto": shm while every rank is on rank 0's host, however its commands
# travel (DISCO_MPI_TRANSPORT=mpi relays them over MPI); mpi with ranks on other hosts
# (DISCO_MPI_TRANSPORT=remote stands in for them here).
@pytest.mark.parametrize("n,transport,expected_auto,args", [(2, "auto", "shm", []),
                                                            (2, "mpi", "shm", ["--auto-only"]),
                                                            (2, "remote", "mpi", ["--auto-only"])])
def test_tp_modules_under_mpiexec(n, transport, expected_auto, args):
    _run_app("tp_mpi_app.py", n, [expected_auto, *args], DISCO_MPI_TRANSPORT=transport)


@pytest.mark.parametrize("transport", ["auto", "remote"])
def test_two_stage_pipeline_with_the_mpi_backend_under_mpiexec(transport):
    _run_app("pipeline_mpi_app.py", 4, [], DISCO_MPI_TRANSPORT=transport)


def _run_app(app: str, n: int, args: list, **env) -> None:
    """`mpiexec -n n python app *args`; it must exit 0 and print "ALL OK" last."""
    p = subprocess.Popen([_mpiexec(), "-n", str(n), sys.executable, os.path.join(HERE, app), *args],
                         env=dict(_env(), **env), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"mpiexec job {app} timed out\nstdout:\n{out}\nstderr:\n{err}")
    assert p.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert out.splitlines()[-1] == "ALL OK", out

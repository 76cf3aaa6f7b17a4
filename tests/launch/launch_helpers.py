"""Helpers for the launch tests: run a command with a timeout, and find leftover processes.

Every job gets a unique DISCO_TEST_TAG in its environment; worker processes and MPI
ranks inherit it, so /proc/*/environ tells whether anything of the job survived."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APP = os.path.join(ROOT, "examples", "launch_app.py")
JOB_TIMEOUT_S = 60


def mpiexec_path() -> str | None:
    from launch import find_mpiexec
    return find_mpiexec()


HAVE_MPI = mpiexec_path() is not None and importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="needs mpiexec and mpi4py (pip install mpich mpi4py)")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any MPI launcher variables (pytest may itself run under one)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPIR_", "DISCO_NUM_WORKERS", "DISCO_PREFIX",
                                "DISCO_MPI_"))}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "examples"), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


class Job:
    def __init__(self, argv, env=None, cwd=None):
        self.tag = uuid.uuid4().hex
        env = dict(clean_env() if env is None else env, DISCO_TEST_TAG=self.tag)
        try:
            p = subprocess.run(argv, env=env, cwd=cwd or ROOT, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for pid in tagged_pids(self.tag):  # whatever the job started, in any session
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
            raise
        self.rc, self.out, self.err = p.returncode, p.stdout, p.stderr

    def leftovers(self, wait_s: float = 5.0) -> list[int]:
        """Pids of processes still carrying this job's tag (after up to wait_s for them to go)."""
        deadline = time.monotonic() + wait_s
        while True:
            left = tagged_pids(self.tag)
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)


def tagged_pids(tag: str) -> list[int]:
    needle = f"DISCO_TEST_TAG={tag}".encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read():
                    with open(f"/proc/{pid}/stat") as st:
                        if st.read().rsplit(")", 1)[1].split()[0] != "Z":  # zombies are already dead
                            found.append(int(pid))
        except OSError:
            continue
    return found


def python(*args: str) -> list[str]:
    return [sys.executable, *args]

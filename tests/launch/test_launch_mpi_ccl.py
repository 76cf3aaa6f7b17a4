"""The `mpi` collective backend through an MPISession, against numpy; and its clear error
where the workers are not MPI ranks."""
from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest

import disco
from disco.errors import WorkerError
from launch_helpers import Job, clean_env, mpiexec_path, needs_mpi

sys.path.insert(0, os.path.dirname(__file__))
from mpi_ccl_app import DTYPES, inputs  # noqa: E402

pytestmark = pytest.mark.timeout(120)
APP = os.path.join(os.path.dirname(__file__), "mpi_ccl_app.py")
TOL = {"float16": 1e-2, "bfloat16": 3e-2}


def references(full: np.ndarray, n: int) -> dict[str, list]:
    """Per key, worker w's expected result (None: that worker gets None), from numpy."""
    parts = np.split(full.astype(np.float64), n)
    total, product, smallest = np.sum(parts, axis=0), np.prod(parts, axis=0), np.min(parts, axis=0)
    return {
        "allreduce_sum": [total] * n, "allreduce_max": [np.max(parts, axis=0)] * n,
        "allreduce_prod": [product] * n, "allreduce_min": [smallest] * n,
        "reduce_scatter_prod_1": np.split(product, n, axis=1), "reduce_scatter_min_1": np.split(smallest, n, axis=1),
        "allgather_0": [np.concatenate(parts, 0)] * n, "allgather_1": [np.concatenate(parts, 1)] * n,
        "reduce_scatter_1": np.split(total, n, axis=1), "broadcast": [parts[0]] * n,
        "scatter_1": np.split(parts[0], n, axis=1), "gather_1": [np.concatenate(parts, 1)] + [None] * (n - 1),
    }


@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("n,transport", [(2, "auto"), (3, "mpi")])
def test_mpi_collectives_match_numpy(tmp_path, n, transport):
    path = str(tmp_path / "out.npz")
    job = Job([mpiexec_path(), "-n", str(n), sys.executable, APP, path], env=clean_env(DISCO_MPI_TRANSPORT=transport))
    assert job.rc == 0, f"stdout:\n{job.out}\nstderr:\n{job.err}"
    got = np.load(path)
    for name in DTYPES:
        tol = TOL.get(name, 1e-6)
        for key, per_worker in references(inputs(n, name), n).items():
            for w, want in enumerate(per_worker):
                if want is None:
                    assert f"{name}/{key}/{w}/none" in got, (name, key, w)
                    continue
                # float16/bfloat16 inputs are rounded already; reductions run in float32
                np.testing.assert_allclose(got[f"{name}/{key}/{w}"], want, rtol=tol, atol=tol * 4,
                                           err_msg=f"{name} {key} worker {w}")
    big = np.arange(n * 300_000, dtype=np.float64).reshape(n, -1).sum(axis=0, keepdims=True)
    np.testing.assert_allclose(got["big/allreduce/last"], big, rtol=1e-6)
    assert job.leftovers() == []


def test_mpi_backend_needs_mpi_ranks(monkeypatch):
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        monkeypatch.delenv(var, raising=False)
    with disco.ThreadedSession(2) as sess:
        with pytest.raises(WorkerError, match=r"worker \d of 2 is not an MPI rank.*use backend 'shm'"):
            sess.init_ccl("mpi")


@pytest.mark.mpi
@needs_mpi
def test_mpi_collective_mismatches_raise_on_every_worker_and_the_group_stays_usable():
    app = os.path.join(os.path.dirname(__file__), "mpi_ccl_errors_app.py")
    job = Job([mpiexec_path(), "-n", "2", sys.executable, app], env=clean_env())
    assert job.rc == 0, f"stdout:\n{job.out}\nstderr:\n{job.err}"
    lines = dict(line.split(": ", 1) for line in job.out.splitlines() if ": " in line)
    expected = {
        "axis_on_one": r"ccl\.allgather: invalid arguments on worker 1: axis 2 is out of range for an "
                       r"array of shape \(2, 4\)",
        "shape_differs": r"ccl\.allreduce: the workers' arguments differ \(worker 0: float32 \(2, 4\) op "
                         r"sum axis 0; worker 1: float32 \(2, 5\) op sum axis 0\)",
        "op_differs": r"ccl\.allreduce: the workers' arguments differ \(.*op sum.*; worker 1: .*op max",
        "unknown_op_on_one": r"ccl\.reduce_scatter: invalid arguments on worker 1: unknown op 'mean'",
        "scatter_uneven": r"ccl\.scatter_from_worker0: axis 0 of shape \(3, 4\) does not split evenly "
                          r"over 2 workers",
        "broadcast_none": r"ccl\.broadcast_from_worker0: worker 0 must pass an array, got None",
    }
    for case, pattern in expected.items():
        per_worker = lines[case].split(" | ")
        assert len(per_worker) == 2 and all(re.match(pattern, text) for text in per_worker), \
            (case, per_worker)
    assert lines["after"] == "[[4.0, 6.0, 8.0, 10.0]]"        # rows 0..3 + 4..7
    assert job.leftovers() == []

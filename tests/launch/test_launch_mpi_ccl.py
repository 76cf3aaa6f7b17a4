"""The `mpi` collective backend through an MPISession, against numpy; and its clear error
where the workers are not MPI ranks."""
from __future__ import annotations

import os
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

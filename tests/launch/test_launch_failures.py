"""Failure behaviour of launched jobs: a worker that dies makes the controller raise and
the job exit non-zero; a controller that dies takes its workers with it; no process of
the job is left afterwards; a wrong worker count is named with both numbers.

Under MPI the cases run with commands through the shared-memory ring and relayed over
MPI (DISCO_MPI_TRANSPORT=mpi; liveness still by pidfd on one host), and as if every
rank were on another host (DISCO_MPI_TRANSPORT=remote: liveness by heartbeats)."""
from __future__ import annotations

import os
import re
import sys
import textwrap

import pytest

import disco
from disco.errors import SessionError
from launch_helpers import APP, ROOT, Job, mpiexec_path, needs_mpi, python

pytestmark = pytest.mark.timeout(120)
mpi = [pytest.mark.mpi, needs_mpi]


RELAYED = ["--env", "DISCO_MPI_TRANSPORT=mpi"]
LAUNCHES = [pytest.param("local", [], id="local"), pytest.param("mpi", [], marks=mpi, id="mpi"),
            pytest.param("mpi", RELAYED, marks=mpi, id="mpi-relayed")]


@pytest.mark.parametrize("mode,extra", LAUNCHES)
def test_dead_worker_makes_the_controller_raise(mode, extra):
    n = 2 if mode == "local" else 3
    bad = n - 1
    job = Job(python("-m", "launch", "-n", str(n), "--mode", mode, *extra, APP, "--fail-rank", str(bad)))
    assert job.rc != 0
    assert "killing worker" in job.out and "controller noticed after" in job.out, job.out
    assert "disco.errors.WorkerError" in job.err and f"worker {bad} " in job.err and "died" in job.err, job.err
    assert job.leftovers() == []


@pytest.mark.mpi
@needs_mpi
def test_dead_rank_under_plain_mpiexec_ends_the_job():
    # Hydra's default: one rank killed, the launcher ends the others and fails.
    job = Job([mpiexec_path(), "-n", "2", sys.executable, APP, "--fail-rank", "1"])
    assert job.rc != 0
    assert job.leftovers() == []


DIE_APP = textwrap.dedent("""
    import os, signal
    import disco

    sess = disco.start()
    sess.sync()
    print("controller dies", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("mode,extra", LAUNCHES)
def test_dead_controller_takes_its_workers(tmp_path, mode, extra):
    app = tmp_path / "die.py"
    app.write_text(DIE_APP)
    job = Job(python("-m", "launch", "-n", "2", "--mode", mode, *extra, str(app)))
    assert "controller dies" in job.out, (job.out, job.err)
    assert job.rc != 0
    assert job.leftovers() == []


# As if on other hosts: no pid to watch, heartbeats only. A short limit keeps the test
# quick; these apps make no long GIL-holding call (no collectives, so no ml_dtypes import).
OTHER_HOSTS = ["--env", "DISCO_MPI_TRANSPORT=remote", "--env", "DISCO_MPI_SILENCE_LIMIT_S=4"]
KILL_APP = textwrap.dedent("""
    import os, signal, sys
    import disco

    @disco.register_func("killapp.die_on", override=True)
    def die_on(worker):
        if disco.worker_id() == worker:
            os.kill(os.getpid(), signal.SIGKILL)

    if __name__ == "__main__":
        sess = disco.start()
        assert sess.workers_on_other_hosts == tuple(range(1, sess.num_workers)), sess.workers_on_other_hosts
        sess.import_module("killapp")
        sess.sync()
        print("killing worker", sys.argv[1], flush=True)
        sess.get_global_func("killapp.die_on")(int(sys.argv[1]))
        while True:
            sess.sync()
""")


@pytest.mark.mpi
@needs_mpi
def test_dead_worker_on_another_host_is_named_after_its_heartbeat_stops(tmp_path):
    app = tmp_path / "killapp.py"
    app.write_text(KILL_APP)
    job = Job(python("-m", "launch", "-n", "3", *OTHER_HOSTS, str(app), "2"))
    assert job.rc != 0
    assert "killing worker 2" in job.out, (job.out, job.err)
    assert "disco.errors.WorkerError" in job.err, job.err
    assert re.search(r"worker 2 \(MPI rank 2, pid \d+ on another host\) sent no heartbeat for \d+\.\d s "
                     r"\(limit 4 s", job.err), job.err
    assert job.leftovers() == []


@pytest.mark.mpi
@needs_mpi
def test_dead_controller_on_another_host_ends_its_workers(tmp_path):
    app = tmp_path / "die.py"
    app.write_text(DIE_APP)
    job = Job(python("-m", "launch", "-n", "2", *OTHER_HOSTS, str(app)))
    assert "controller dies" in job.out, (job.out, job.err)
    assert job.rc != 0
    assert "no heartbeat from the controller (rank 0" in job.out + job.err, (job.out, job.err)
    assert job.leftovers() == []


@pytest.mark.mpi
@needs_mpi
def test_worker_count_mismatch_names_both_numbers(tmp_path):
    app = tmp_path / "four.py"
    app.write_text("import disco\ndisco.start(4)\nprint('unreachable')\n")
    job = Job([mpiexec_path(), "-n", "2", sys.executable, str(app)])
    assert job.rc != 0 and "unreachable" not in job.out
    assert "num_workers=4 but the MPI job has 2 ranks" in job.err, job.err
    assert job.leftovers() == []


MESH4_APP = textwrap.dedent("""
    import sys
    import compiler
    from compiler import script
    import disco

    sess = disco.start()
    with sess:
        sys.path.insert(0, sys.argv[1])
        import _tp_models as M
        executable = compiler.build(script.parse(M.mlp(4)))  # sharded over a mesh of 4
        print("loading on", sess.num_workers, "workers", flush=True)
        sess.load_module(executable)
        print("loaded")
""")
E2E = os.path.join(ROOT, "tests", "e2e")
MESH_MISMATCH = r"device mesh of 4 devices but the session has 2 workers; start it with 4 workers"


def test_mesh_size_mismatch_fails_at_load_naming_both_numbers(monkeypatch):
    monkeypatch.syspath_prepend(E2E)
    import _tp_models as M
    from compiler import build, script

    executable = build(script.parse(M.mlp(4)))
    with disco.ThreadedSession(2) as sess:
        with pytest.raises(SessionError, match=MESH_MISMATCH + r".*-n 4"):
            sess.load_module(executable)


@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("launcher", ["mpiexec", "disco-launch"])
def test_mesh_size_mismatch_under_mpi_fails_at_load_naming_both_numbers(tmp_path, launcher):
    app = tmp_path / "mesh4.py"
    app.write_text(MESH4_APP)
    start = [mpiexec_path(), "-n", "2", sys.executable] if launcher == "mpiexec" else python("-m", "launch", "-n", "2")
    job = Job(start + [str(app), E2E])
    assert job.rc != 0
    assert "loading on 2 workers" in job.out and "loaded" not in job.out, (job.out, job.err)
    assert "sess.load_module(executable)" in job.err and "disco.errors.SessionError" in job.err, job.err
    assert re.search(MESH_MISMATCH, job.err), job.err
    assert job.leftovers() == []

"""One app, every launch mode: `python app.py`, `python -m launch -n 2 app.py` (through
mpiexec and without it), `mpiexec -n 2 python app.py`; the controller's output must be
the same and match numpy. Plus the launcher's options: --env, exit status, prefixes."""
from __future__ import annotations

import os
import sys
import textwrap

import numpy as np
import pytest

from launch_helpers import APP, Job, clean_env, mpiexec_path, needs_mpi, python

pytestmark = pytest.mark.timeout(120)


def expected_output(n: int, size: int = 6) -> list[str]:
    """What launch_app.py must print for n workers, derived here from numpy."""
    parts = [np.arange(size, dtype=np.float64) * (w + 1) for w in range(n)]
    total = np.sum(parts, axis=0)
    return ([f"workers: {n}", f"allreduce: {total.tolist()}", f"expected:  {total.tolist()}"]
            + [f"worker {w} of {n}: sum={float(parts[w].sum()):g}" for w in range(n)])


def controller_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if not line.startswith("[")]


def check(job: Job, n: int) -> None:
    assert job.rc == 0, f"exit status {job.rc}\nstdout:\n{job.out}\nstderr:\n{job.err}"
    assert controller_lines(job.out) == expected_output(n), job.out
    assert job.leftovers() == []


def test_plain_python_and_local_launcher():
    check(Job(python(APP, "--workers", "2")), 2)
    check(Job(python("-m", "launch", "-n", "2", "--mode", "local", APP)), 2)


@pytest.mark.mpi
@needs_mpi
def test_same_output_under_mpi_launches():
    plain = Job(python(APP, "--workers", "2"))
    launched = Job(python("-m", "launch", "-n", "2", APP))
    mpi = Job([mpiexec_path(), "-n", "2", sys.executable, APP])
    for job in (plain, launched, mpi):
        check(job, 2)
    assert plain.out == launched.out == mpi.out


@pytest.mark.mpi
@needs_mpi
def test_mpi_collectives_and_the_mpi_command_path():
    # Three ranks whose commands all go over MPI (the path of ranks on other hosts),
    # with the mpi collective backend.
    env = clean_env(DISCO_MPI_TRANSPORT="mpi")
    check(Job([mpiexec_path(), "-n", "3", sys.executable, APP, "--ccl", "mpi"], env=env), 3)


@pytest.mark.parametrize("mode", ["local", pytest.param("mpi", marks=[pytest.mark.mpi, needs_mpi])])
def test_worker_output_is_prefixed_with_its_id(mode):
    job = Job(python("-m", "launch", "-n", "2", "--mode", mode, APP, "--hello"))
    check(job, 2)
    lines = job.out.splitlines()
    assert "[0] hello from worker 0" in lines and "[1] hello from worker 1" in lines, job.out


ENV_APP = textwrap.dedent("""
    import os, sys
    import disco

    @disco.register_func("envapp.get", override=True)
    def get(key):
        return os.environ.get(key)

    if __name__ == "__main__":
        with disco.start() as sess:
            sess.import_module("envapp")
            r = sess.get_global_func("envapp.get")("FOO")
            print("FOO:", [r.fetch(w) for w in range(sess.num_workers)])
        sys.exit(int(sys.argv[1]))
""")


@pytest.mark.parametrize("mode", ["local", pytest.param("mpi", marks=[pytest.mark.mpi, needs_mpi])])
def test_env_is_forwarded_and_exit_status_propagates(tmp_path, mode):
    app = tmp_path / "envapp.py"
    app.write_text(ENV_APP)
    job = Job(python("-m", "launch", "-n", "2", "--mode", mode, "--env", "FOO=a b=c", str(app), "3"))
    assert job.rc == 3, (job.out, job.err)
    assert "FOO: ['a b=c', 'a b=c']" in job.out.splitlines(), job.out
    assert job.leftovers() == []


CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "disco-launch")
needs_console_script = pytest.mark.skipif(not os.access(CONSOLE_SCRIPT, os.X_OK),
                                          reason=f"no installed console script {CONSOLE_SCRIPT} (pip install -e .)")


def script_python() -> str:
    """The interpreter of the console script's #! line: `python -m launch` run with it
    prints the same sys.executable in its commands."""
    with open(CONSOLE_SCRIPT) as f:
        line = f.readline()
    assert line.startswith("#!"), line
    return line[2:].split()[0]


@needs_console_script
@pytest.mark.parametrize("mode", ["local", pytest.param("mpi", marks=[pytest.mark.mpi, needs_mpi])])
def test_console_script_dry_run_prints_what_python_m_launch_prints(mode):
    args = ["-n", "2", "--mode", mode, "--env", "K=v w", "--dry-run", APP, "--size", "4"]
    script = Job([CONSOLE_SCRIPT, *args])
    module = Job([script_python(), "-m", "launch", *args])
    assert script.rc == module.rc == 0, (script.err, module.err)
    assert script.out == module.out, (script.out, module.out)
    assert APP in script.out and "'v w'" in script.out, script.out  # the --env value, quoted


@needs_console_script
def test_console_script_runs_the_app_as_python_m_launch_does():
    script = Job([CONSOLE_SCRIPT, "-n", "2", APP])
    module = Job([script_python(), "-m", "launch", "-n", "2", APP])
    for job in (script, module):
        check(job, 2)
    assert script.out == module.out

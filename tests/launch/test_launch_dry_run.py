"""The launcher's command lines (--dry-run and build_plan), checked token by token
against what MPICH's Hydra and Open MPI document for the same request."""
from __future__ import annotations

import sys

import pytest

from launch_helpers import Job, python
from launch.command import LaunchError, build_plan

APP_ARGV = (sys.executable, "app.py", "--x", "1")


def test_mpich_one_host():
    plan = build_plan(4, "app.py", ["--x", "1"], mode="mpi", mpiexec="/opt/mpi/bin/mpiexec", flavor="mpich",
                      env={"FOO": "bar"})
    assert plan.mode == "mpi" and plan.env == {}
    assert plan.argv == ("/opt/mpi/bin/mpiexec", "-n", "4", "-disable-auto-cleanup",
                         "-genv", "DISCO_NUM_WORKERS", "4", "-genv", "DISCO_PREFIX_OUTPUT", "1",
                         "-genv", "FOO", "bar", "-genv", "DISCO_LAUNCHER", "disco-launch",
                         sys.executable, "-m", "launch.rank") + APP_ARGV


def test_mpich_several_hosts_keeps_hydra_cleanup():
    plan = build_plan(2, "app.py", ["--x", "1"], mode="mpi", hosts="a,b", hostfile="hosts.txt",
                      mpiexec="mpiexec", flavor="mpich", prefix=False)
    assert plan.argv == ("mpiexec", "-n", "2", "-hosts", "a,b", "-f", "hosts.txt",
                         "-genv", "DISCO_NUM_WORKERS", "2", "-genv", "DISCO_LAUNCHER", "disco-launch") + APP_ARGV


def test_openmpi():
    plan = build_plan(2, "app.py", ["--x", "1"], mode="mpi", hostfile="hf", mpiexec="mpirun", flavor="openmpi",
                      env={"A": "1"})
    assert plan.argv == ("mpirun", "-n", "2", "--hostfile", "hf", "-x", "DISCO_NUM_WORKERS=2",
                         "-x", "DISCO_PREFIX_OUTPUT=1", "-x", "A=1", "-x", "DISCO_LAUNCHER=disco-launch") + APP_ARGV


def test_local_mode_sets_the_environment_for_disco_start():
    plan = build_plan(3, "app.py", ["--x", "1"], mode="local", env={"A": "1"})
    assert plan.argv == APP_ARGV
    assert plan.env == {"DISCO_NUM_WORKERS": "3", "DISCO_PREFIX_OUTPUT": "1", "A": "1"}
    assert plan.describe() == f"DISCO_NUM_WORKERS=3 DISCO_PREFIX_OUTPUT=1 A=1 {sys.executable} app.py --x 1"


def test_non_python_programs_run_as_given():
    assert build_plan(2, "./server", ["-v"], mode="local").argv == ("./server", "-v")


def test_bad_requests_say_what_is_wrong():
    with pytest.raises(LaunchError, match="--hosts/--hostfile need mpiexec"):
        build_plan(2, "app.py", [], mode="local", hosts="a,b")
    with pytest.raises(LaunchError, match="-n must be >= 1, got 0"):
        build_plan(0, "app.py", [], mode="local")


def test_cli_dry_run_prints_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    app = tmp_path / "app.py"
    app.write_text(f"open({str(marker)!r}, 'w')\n")
    job = Job(python("-m", "launch", "-n", "2", "--mode", "local", "--dry-run", "--env", "K=v w", str(app), "-q"))
    assert job.rc == 0, job.err
    assert job.out == f"DISCO_NUM_WORKERS=2 DISCO_PREFIX_OUTPUT=1 K='v w' {sys.executable} {app} -q\n"
    assert not marker.exists()
    bad = Job(python("-m", "launch", "-n", "2", "--mode", "local", "--env", "novalue", str(app)))
    assert bad.rc == 2 and "--env expects KEY=VALUE, got 'novalue'" in bad.err
    assert not marker.exists()

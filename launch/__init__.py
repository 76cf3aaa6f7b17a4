"""Launcher: run an app with N workers, locally or through mpiexec.

    disco-launch -n 4 app.py args...        # or: python -m launch -n 4 app.py args...

With an MPI installed (an `mpiexec` on PATH or next to this Python, and mpi4py), the
app runs as N MPI ranks and `disco.start()` in it returns an MPISession on rank 0;
otherwise the app runs once with DISCO_NUM_WORKERS=N and `disco.start()` starts N
worker processes. `--dry-run` prints the command. Imports nothing from `disco`.
"""
from launch.command import Plan, build_plan, find_mpiexec, mpi_flavor

__all__ = ["Plan", "build_plan", "find_mpiexec", "mpi_flavor", "main"]


def main(argv=None) -> int:
    from launch.__main__ import main as _main
    return _main(argv)

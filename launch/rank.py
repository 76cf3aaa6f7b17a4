"""One rank's keeper (disco-launch on one host runs `mpiexec ... python -m launch.rank app...`).

Hydra ends the whole job at once when a rank is killed by a signal, even with
-disable-auto-cleanup, so the controller would die before it could say which worker
failed. The keeper runs the rank's program as its child (inheriting PMI_FD and every
other fd, so MPI starts as usual) and turns a death by signal into an ordinary exit
status 128 + signal: the other ranks stay up, the controller sees the death through
its pidfd and raises, and the job then ends non-zero. The child gets SIGKILL if the
keeper dies (PR_SET_PDEATHSIG); SIGINT, SIGTERM and SIGUSR1 are passed on to it.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m launch.rank PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    me = os.getpid()

    def in_child():
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != me:  # the keeper died before prctl took effect
            os._exit(1)

    proc = subprocess.Popen(argv, close_fds=False, preexec_fn=in_child)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda s, _f: proc.send_signal(s))  # SIGUSR1: Hydra's failure notice to MPICH
    rc = proc.wait()
    if rc < 0:
        rank = os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "?"))
        sys.stderr.write(f"disco-launch: rank {rank} (pid {proc.pid}) was killed by signal "
                         f"{signal.Signals(-rc).name}\n")
        return 128 - rc
    return rc


if __name__ == "__main__":
    sys.stdout.flush()
    os._exit(main())

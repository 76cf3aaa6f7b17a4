"""`disco-launch` / `python -m launch`: parse options, build the plan, run it, return its status."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from launch.command import LaunchError, build_plan

_GRACE_S = 5.0  # after forwarding SIGINT/SIGTERM, how long the job gets before SIGKILL


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="disco-launch", description="Run APP with N disco workers: through mpiexec when an MPI is "
        "installed, else as one process whose disco.start() starts N worker processes.")
    p.add_argument("-n", "--num-workers", type=int, required=True, help="number of workers (MPI ranks)")
    p.add_argument("--hosts", help="comma-separated hosts (passed to mpiexec)")
    p.add_argument("--hostfile", help="a hostfile (passed to mpiexec)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="set a variable for every worker (repeatable)")
    p.add_argument("--mode", choices=("auto", "mpi", "local"), default="auto",
                   help="auto (default): mpi if mpiexec and mpi4py are installed, else local")
    p.add_argument("--mpiexec", help="the mpiexec to use (default: on PATH, or next to this Python)")
    p.add_argument("--no-prefix", action="store_true", help="do not prefix workers' output with their id")
    p.add_argument("--dry-run", action="store_true", help="print the command and exit")
    p.add_argument("app", help="a .py file (run with this Python) or a program")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the app")
    return p


def _parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LaunchError(f"disco-launch: --env expects KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        plan = build_plan(a.num_workers, a.app, a.args, mode=a.mode, hosts=a.hosts, hostfile=a.hostfile,
                          env=_parse_env(a.env), prefix=not a.no_prefix, mpiexec=a.mpiexec)
    except LaunchError as e:
        print(e, file=sys.stderr)
        return 2
    if a.dry_run:
        print(plan.describe())
        return 0
    return run(plan)


def run(plan) -> int:
    """Run the plan in its own process group; forward SIGINT/SIGTERM; return its exit status
    (128 + signal number if it was killed by a signal, as a shell would)."""
    env = {**os.environ, **plan.env}
    proc = subprocess.Popen(list(plan.argv), env=env, start_new_session=True)

    def forward(sig, _frame):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            rc = proc.wait()
        except BaseException:
            forward(signal.SIGTERM, None)
            raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _reap_group(proc)
    return rc if rc >= 0 else 128 - rc


def _reap_group(proc: subprocess.Popen) -> None:
    """Leave nothing behind: whatever is left of the job's process group gets SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        try:
            proc.wait(_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if sig == signal.SIGTERM:
            import time
            time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())

"""From the launcher's options to the command line and environment it runs (no side effects
beyond asking `mpiexec --version`), so that --dry-run shows exactly what would run."""
from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field


class LaunchError(Exception):
    """A launch that cannot work as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Plan:
    mode: str               # "mpi" or "local"
    argv: tuple[str, ...]   # the command to run
    env: dict[str, str] = field(default_factory=dict)  # set on top of the launcher's environment

    def describe(self) -> str:
        """The command as one shell line, with the environment it adds in front."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.argv)


def find_mpiexec() -> str | None:
    """`mpiexec` on PATH, else the one next to this Python (a venv's bin/)."""
    found = shutil.which("mpiexec")
    if found:
        return found
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else None


def mpi_flavor(mpiexec: str) -> str:
    """'mpich' (Hydra), 'openmpi', or 'unknown', from `mpiexec --version`."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if "HYDRA" in out or "MPICH" in out or "Intel(R) MPI" in out:
        return "mpich"
    if "Open MPI" in out or "OpenRTE" in out or "open-mpi" in out:
        return "openmpi"
    return "unknown"


def app_argv(app: str, args: list[str]) -> list[str]:
    """A .py file runs with this Python; anything else runs as given."""
    return [sys.executable, app, *args] if app.endswith(".py") else [app, *args]


def build_plan(n: int, app: str, args: list[str], *, mode: str = "auto", hosts: str | None = None,
               hostfile: str | None = None, env: dict[str, str] | None = None, prefix: bool = True,
               mpiexec: str | None = None, flavor: str | None = None) -> Plan:
    """The command for `n` workers running `app args...` (see launch/__init__.py)."""
    if n < 1:
        raise LaunchError(f"disco-launch: -n must be >= 1, got {n}")
    extra = {"DISCO_NUM_WORKERS": str(n)}
    if prefix:
        extra["DISCO_PREFIX_OUTPUT"] = "1"
    extra.update(env or {})
    if mode == "auto":
        mpiexec = mpiexec or find_mpiexec()
        mode = "mpi" if mpiexec and importlib.util.find_spec("mpi4py") else "local"
    if mode == "local":
        if hosts or hostfile:
            raise LaunchError("disco-launch: --hosts/--hostfile need mpiexec and mpi4py (pip install mpich mpi4py); "
                              "without them workers run on this host only")
        return Plan("local", tuple(app_argv(app, args)), extra)
    if mode != "mpi":
        raise LaunchError(f"disco-launch: --mode must be auto, mpi or local, got {mode!r}")
    mpiexec = mpiexec or find_mpiexec()
    if not mpiexec:
        raise LaunchError("disco-launch: --mode mpi but no mpiexec found on PATH or next to "
                          f"{sys.executable}; install one (pip install mpich mpi4py) or use --mode local")
    flavor = flavor or mpi_flavor(mpiexec)
    extra["DISCO_LAUNCHER"] = "disco-launch"
    cmd = [mpiexec, "-n", str(n)]
    if flavor == "openmpi":
        cmd += ["--host", hosts] if hosts else []
        cmd += ["--hostfile", hostfile] if hostfile else []
        for k, v in extra.items():
            cmd += ["-x", f"{k}={v}"]
        return Plan("mpi", tuple(cmd + app_argv(app, args)), {})
    if flavor == "mpich":
        one_host = not (hosts or hostfile)
        if one_host:
            # Let the controller see a dead rank and raise (it then ends the job itself):
            # no cleanup by Hydra, and each rank under a keeper (launch/rank.py) that
            # turns a death by signal into an exit status. Across hosts keep Hydra's
            # default of ending the job, since a worker on another host cannot watch
            # the controller's pid.
            cmd.append("-disable-auto-cleanup")
        cmd += ["-hosts", hosts] if hosts else []
        cmd += ["-f", hostfile] if hostfile else []
        for k, v in extra.items():
            cmd += ["-genv", k, v]
        keeper = [sys.executable, "-m", "launch.rank"] if one_host else []
        return Plan("mpi", tuple(cmd + keeper + app_argv(app, args)), {})
    if hosts or hostfile:
        raise LaunchError(f"disco-launch: cannot tell which MPI {mpiexec} is (not MPICH/Hydra, not Open MPI), "
                          "so it does not know how to pass --hosts/--hostfile; run mpiexec yourself")
    return Plan("mpi", tuple(cmd + app_argv(app, args)), extra)  # env inherited from the launcher

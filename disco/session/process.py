"""ProcessSession: workers are child processes (`python -m disco.session.worker`).

Each child inherits the channel's fd (the segment is already unlinked, so nothing is
left in /dev/shm whoever dies), gets the controller's sys.path and nothing else (not
its own working directory first, which could hold another `disco`: it checks that it
imported the controller's), and asks the kernel for SIGKILL when the controller dies
(PR_SET_PDEATHSIG). That signal follows the thread that forked the child, so children
are started from one long-lived thread of the process, not the caller's, and a session
made in a thread that ends keeps its workers. A worker's stderr passes through the
controller, which keeps its last lines: a worker that dies (at start-up above all)
is reported with them. A watcher thread waits on the
children's pidfds, so a dead worker is noticed at once and the next operation raises
WorkerError; waits also poll the children every 50 ms. Workers get BLAS/OpenMP thread
counts that share the host's cores (`worker_thread_env`) unless the user set them.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import disco
from disco.errors import WorkerError
from disco.session.base import Session


# `python -m disco.session.worker` would import the module twice (the package imports it).
# `del sys.path[0]`: -c puts the working directory first; the controller's path follows.
_WORKER_MAIN = "import sys; del sys.path[0]; from disco.session.worker import main; main(sys.argv[1:])"
_TAIL_BYTES = 4096  # of each worker's stderr, kept for the report of its death
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="disco-spawner")


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def worker_thread_env(env: dict, num_workers: int) -> dict:
    """Thread counts for the workers' BLAS and OpenMP: the host's cores shared out
    (at least 1 each), so N workers do not start N threads each and thrash. A count
    the user already set is kept."""
    share = str(max(1, (os.cpu_count() or 1) // max(1, num_workers)))
    return {v: share for v in THREAD_VARS if v not in env}


class ProcessSession(Session):
    """`num_workers` worker processes on this host; see `Session` for the API."""

    def _start_workers(self) -> None:
        fd = self._chan.fd
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        env["DISCO_CONTROLLER_PACKAGE"] = os.path.dirname(os.path.abspath(disco.__file__))
        env.update(worker_thread_env(env, self.num_workers))
        self._procs = _spawner.submit(_spawn, self.num_workers, fd, env).result()
        self._tails = [_Tail(p.stderr, w) for w, p in enumerate(self._procs)]
        self._finalizer = weakref.finalize(self, _kill_all, self._procs)
        self._stop_r, self._stop_w = os.pipe()
        threading.Thread(target=_watch, args=(weakref.ref(self), self._procs, self._stop_r),
                         name="disco-process-watcher", daemon=True).start()

    def _check_workers(self) -> WorkerError | None:
        for w, p in enumerate(self._procs):
            rc = p.poll()
            if rc is not None:
                return _death(self, w, p, rc)
        return None

    def worker_stderr_tail(self, worker: int) -> str:
        """The last lines worker `worker` wrote to stderr (up to 4 KiB)."""
        return self._tails[worker].text()

    def _stop_workers(self, timeout_s: float) -> None:
        try:
            os.write(self._stop_w, b"x")
        except BrokenPipeError:  # the watcher saw every worker end already
            pass
        # One deadline for all: hung workers cost timeout_s in total, not each.
        deadline = time.monotonic() + timeout_s
        for p in self._procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
        self._finalizer()  # SIGKILL to every worker still running, then reaps them
        os.close(self._stop_w)

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids, in worker order."""
        return [p.pid for p in self._procs]


def _spawn(n: int, fd: int, env: dict) -> list[subprocess.Popen]:
    """Start the workers (on the spawner thread: their parent-death signal follows it)."""
    return [subprocess.Popen([sys.executable, "-c", _WORKER_MAIN, "--fd", str(fd), "--worker-id", str(w),
                              "--num-workers", str(n), "--ppid", str(os.getpid())],
                             pass_fds=(fd,), env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for w in range(n)]


class _Tail:
    """Copies a worker's stderr to ours as it comes, keeping the last _TAIL_BYTES."""

    def __init__(self, pipe, worker: int):
        self._buf = b""
        self._thread = threading.Thread(target=self._pump, args=(pipe,), name=f"disco-stderr-{worker}", daemon=True)
        self._thread.start()

    def _pump(self, pipe) -> None:
        with pipe:
            fd = pipe.fileno()
            while data := os.read(fd, 65536):
                self._buf = (self._buf + data)[-_TAIL_BYTES:]
                try:
                    sys.stderr.flush()
                    os.write(2, data)
                except OSError:
                    pass

    def text(self, wait_s: float = 1.0) -> str:
        """The tail so far; after the worker ended, waits (a little) for its last bytes."""
        self._thread.join(wait_s)
        return self._buf.decode("utf-8", "replace")


def _death(sess: Session, w: int, p: subprocess.Popen, rc: int) -> WorkerError:
    how = f"killed by signal {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
    tail = sess._tails[w].text().strip() if getattr(sess, "_tails", None) else ""
    said = f"\n--- its last output on stderr ---\n{tail}" if tail else ""
    return WorkerError(f"{sess.name}: worker {w} (pid {p.pid}) died: {how}; the session is unusable, "
                       f"call shutdown() and start a new one{said}", w, None)


def _watch(sess_ref, procs: list[subprocess.Popen], stop_r: int) -> None:
    """Record the first worker death in the session (holding only a weak reference)."""
    pidfds = {os.pidfd_open(p.pid): w for w, p in enumerate(procs)}
    try:
        while pidfds:
            ready, _, _ = select.select([stop_r, *pidfds], [], [])
            if stop_r in ready:
                return
            for fd in ready:
                w = pidfds.pop(fd)
                os.close(fd)
                rc = procs[w].wait()
                sess = sess_ref()
                if sess is None or sess._stopping:
                    return
                if sess._failure is None:
                    sess._failure = _death(sess, w, procs[w], rc)
    finally:
        for fd in pidfds:
            os.close(fd)
        os.close(stop_r)


def _kill_all(procs: list[subprocess.Popen]) -> None:
    """SIGKILL every worker still running (all first, so they die in parallel), then reap."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()

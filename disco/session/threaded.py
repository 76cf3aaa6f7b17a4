"""ThreadedSession: workers are threads of the controller's process.

Same channel, codec and worker loop as ProcessSession (so the two behave alike); each
thread has its own WorkerContext (thread-local) and its own objects. Python code on the
workers shares one GIL, so this kind is for tests, debugging and GIL-releasing kernels.
"""
from __future__ import annotations

import threading
import time
import traceback
import weakref

from disco import _native
from disco._context import WorkerContext, set_worker_context
from disco.errors import WorkerError
from disco.session.base import Session
from disco.session.worker import serve


class ThreadedSession(Session):
    """`num_workers` worker threads in this process; see `Session` for the API."""

    def _start_workers(self) -> None:
        self._crashes: dict[int, str] = {}  # worker -> traceback of a crash of the loop itself
        self._threads = [
            threading.Thread(target=_run, args=(self._chan.fd, w, self.num_workers, self._crashes),
                             name=f"disco-worker-{w}", daemon=True)
            for w in range(self.num_workers)
        ]
        for t in self._threads:
            t.start()
        # Wake the threads if the session is dropped without shutdown().
        self._finalizer = weakref.finalize(self, self._chan.close)

    def _check_workers(self) -> WorkerError | None:
        for w, t in enumerate(self._threads):
            if not t.is_alive() and not self._closed:
                tb = self._crashes.get(w)
                return WorkerError(f"{self.name}: worker {w} (thread {t.name}) ended unexpectedly"
                                   + (f":\n{tb}" if tb else ""), w, tb)
        return None

    def _stop_workers(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s  # one deadline for all (a hung thread stays, daemon)
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._finalizer()


def _run(fd: int, w: int, n: int, crashes: dict[int, str]) -> None:
    try:
        chan = _native.Channel.attach(fd, w)
        ctx = WorkerContext(worker_id=w, num_workers=n)
        set_worker_context(ctx)  # thread-local: each worker thread sees its own
        serve(chan, ctx)
    except BaseException:
        crashes[w] = traceback.format_exc()

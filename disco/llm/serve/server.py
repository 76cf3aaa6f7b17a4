"""`serve(load, ...)`: listen, load the engine on the scheduler thread, serve until
stopped; the exit code says how it ended.

The socket is bound before anything else (port 0 picks a free port; the line
"listening on http://HOST:PORT" says which), so /health answers "loading" while the
weights load. uvicorn runs on the calling thread (the main thread: it installs the
SIGINT/SIGTERM handlers that stop it gracefully). When the engine fails (a worker
died, a step hung) the scheduler tells uvicorn to exit; streams in flight have had their
error event by then, and the others are closed after `shutdown_timeout_s`.
"""
from __future__ import annotations

import signal
import socket
import sys
from typing import Callable

from .app import build_app
from .scheduler import FAILED, Scheduler

EXIT_OK, EXIT_FAILED = 0, 3


def _log(msg: str) -> None:
    print(f"disco-serve: {msg}", file=sys.stderr, flush=True)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); an OSError that names both when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def serve(load: Callable[[], object], model: str, host: str = "127.0.0.1", port: int = 8000, *,
          max_waiting: int = 64, step_timeout_s: float = 120.0, shutdown_timeout_s: float = 10.0,
          log: Callable[[str], None] = _log, sock: socket.socket | None = None) -> tuple[int, bool]:
    """Serve the engine `load()` makes under the name `model` until a signal stops the
    server (exit code 0) or the engine fails (3). Returns (exit code, clean): clean is
    False when the scheduler thread did not end (a step hangs inside the session), so the
    caller must not touch the session and should exit at once."""
    import uvicorn
    sock = sock or bind(host, port)
    holder: dict = {}

    def fatal() -> None:
        server = holder.get("server")
        if server is not None:
            server.should_exit = True

    scheduler = Scheduler(load, max_waiting=max_waiting, step_timeout_s=step_timeout_s,
                          on_fatal=fatal, log=log)
    app = build_app(scheduler, model)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=shutdown_timeout_s)
    server = uvicorn.Server(config)
    holder["server"] = server
    h, p = sock.getsockname()[:2]
    log(f"listening on http://{h}:{p} (model {model!r}; loading)")
    stopped_by: list[int] = []
    # uvicorn handles SIGINT/SIGTERM while it runs, then raises them again for the handlers
    # it found: these, so a stop by signal ends here, cleanly, not by the default action
    previous = {sig: signal.signal(sig, lambda sig, frame: stopped_by.append(sig))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    scheduler.start()                    # a failure from now on sets server.should_exit
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped_by:
        log(f"stopping ({signal.Signals(stopped_by[0]).name})")
    clean = scheduler.stop(timeout_s=shutdown_timeout_s)
    failed = scheduler.state == FAILED or not clean
    if failed:
        log(f"exiting: the engine failed: {scheduler.error}")
    return (EXIT_FAILED if failed else EXIT_OK), clean

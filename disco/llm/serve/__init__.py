"""disco.llm.serve: an OpenAI-compatible HTTP server over a `disco.llm.Engine`
(`disco-serve`, compiler/models/serve.py, makes the engine from a checkpoint).

- protocol.py: OpenAI's request bodies checked field by field (HTTP 400 naming the field),
  the answers and the stream chunks;
- scheduler.py: the thread that owns the engine: requests join the running batch at step
  boundaries, leave it when finished or cancelled, wait (bounded) for KV pages; faults;
- app.py: the Starlette application (routes, server-sent events, client disconnects);
- metrics.py: Prometheus text for /metrics;
- server.py: `serve(load, model, host, port)`: uvicorn on a bound socket, the exit code.

Needs the `serve` extra (starlette, uvicorn). See docs/serving.md.
"""
from .protocol import APIError, Job
from .scheduler import Handle, Scheduler

__all__ = ["APIError", "Handle", "Job", "Scheduler", "serve", "build_app"]


def __getattr__(name):           # the web stack only when asked for
    if name == "serve":
        from .server import serve
        return serve
    if name == "build_app":
        from .app import build_app
        return build_app
    raise AttributeError(f"module 'disco.llm.serve' has no attribute {name!r}")

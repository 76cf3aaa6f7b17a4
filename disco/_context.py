"""Which worker is running this code.

A worker is a thread (ThreadedSession) or a process (ProcessSession, MPISession).
Its identity and its per-worker state (a collective communicator, the loaded
modules) live in a `WorkerContext`. Thread-local first, so that threads acting as
workers in one process each see their own; a process-wide default otherwise.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WorkerContext:
    worker_id: int
    num_workers: int
    device: str = "cpu"
    # Per-worker objects keyed by owner, e.g. state["ccl"] is the communicator.
    state: dict[str, Any] = field(default_factory=dict)


_local = threading.local()
_process_default: WorkerContext | None = None


def set_worker_context(ctx: WorkerContext | None, *, process_wide: bool = False) -> None:
    """Install `ctx` for the calling thread (or for the whole process)."""
    global _process_default
    if process_wide:
        _process_default = ctx
    else:
        _local.ctx = ctx


def current_context() -> WorkerContext:
    """The calling worker's context. Outside any worker: a lone worker 0 of 1."""
    ctx = getattr(_local, "ctx", None) or _process_default
    if ctx is None:
        ctx = WorkerContext(worker_id=0, num_workers=1)
        set_worker_context(ctx, process_wide=True)
    return ctx


def worker_id() -> int:
    """This worker's index in its session, 0-based."""
    return current_context().worker_id


def num_workers() -> int:
    """How many workers the session has."""
    return current_context().num_workers


def worker_device() -> str:
    """The device this worker computes on ("cpu", or "cuda:N" once bound to a GPU)."""
    return current_context().device

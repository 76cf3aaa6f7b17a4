"""The worker loop: read a command, run it, reply when the protocol says so.

One `match` over the closed `Op` enum (protocol.py). The same loop serves a
ThreadedSession's threads and a ProcessSession's processes; as a program
(`python -m disco.session.worker --fd N --worker-id W --num-workers K --ppid P`) it
attaches to the channel inherited as fd N and serves until SHUTDOWN or until its
controller dies. It imports `disco` only, never `compiler`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Callable

import numpy as np

from disco import _native, registry
from disco._context import WorkerContext, set_worker_context
from disco.session.protocol import INLINE_ARRAY_BYTES, Op, Spill, Status, Transfer

_WAIT_S = 0.25  # longest sleep between liveness checks


def serve(chan, ctx: WorkerContext, alive: Callable[[], bool] | None = None) -> None:
    """Run commands from `chan` as worker `ctx.worker_id` until SHUTDOWN, the channel
    closing, or `alive()` turning False (checked whenever no command came for _WAIT_S)."""
    objects: dict[int, object] = {}  # DRef id -> this worker's object
    funcs: dict[int, Callable] = {}  # function slot -> callable
    transfer = Transfer()
    chan.set_codec(None, None, transfer.encode, transfer.decode, objects, INLINE_ARRAY_BYTES)
    w, n = ctx.worker_id, ctx.num_workers
    error: tuple[str, str] | None = None  # first failure of a command without a reply

    def reply(seq: int, status: Status, value) -> None:
        nonlocal error
        if error is not None and status == Status.OK:
            status, value, error = Status.ERROR, error, None
        try:
            chan.send_reply(seq, status, value)
        except OverflowError:
            chan.send_reply(seq, status, Spill(value))
        except Exception as e:  # e.g. an unpicklable result
            chan.send_reply(seq, Status.ERROR, _describe(e, f"sending the reply to command {seq}"))

    while True:
        cmd = chan.next(_WAIT_S)
        if cmd is None:
            if chan.closed or (alive is not None and not alive()):
                return
            continue
        if transfer.outgoing:  # the controller read our last reply before sending more
            transfer.release()
        op, seq, a, b, payload, missing = cmd
        try:
            if missing != -1:
                raise _bad_payload(op, payload, missing)
            match op:
                case Op.CALL:
                    objects[b] = funcs[a](*payload)
                case Op.FREE:
                    for i in payload:
                        objects.pop(i, None)
                case Op.SYNC:
                    reply(seq, Status.OK, None)
                case Op.GET_FUNC:
                    f = _resolve(payload)
                    if f is None:
                        reply(seq, Status.NOT_FOUND,
                              (registry.unknown_message(payload, registry.list_global_funcs()), ""))
                    else:
                        funcs[a] = f
                        reply(seq, Status.OK, None)
                case Op.FETCH:
                    if b == w:
                        reply(seq, Status.OK, _lookup(objects, a, w))
                case Op.GATHER:
                    reply(seq, Status.OK, _lookup(objects, a, w))
                case Op.BROADCAST:
                    objects[b] = payload
                case Op.SCATTER:
                    objects[b] = np.split(payload, n, axis=a)[w].copy()
                case Op.IMPORT:
                    importlib.import_module(payload)
                    reply(seq, Status.OK, None)
                case Op.SHUTDOWN:
                    reply(seq, Status.OK, None)
                    transfer.release()
                    return
                case _:
                    raise ValueError(f"unknown command op={op} (a closed enum: {[o.name for o in Op]})")
        except BaseException as e:  # a worker reports, it never dies of its functions
            if isinstance(e, (SystemExit, KeyboardInterrupt)) and op != Op.CALL:
                raise
            desc = _describe(e, _what(op, a, funcs))
            if op in (Op.CALL, Op.FREE, Op.BROADCAST, Op.SCATTER):
                error = error or desc
            elif op != Op.FETCH or b == w:
                chan.send_reply(seq, Status.ERROR, desc)


def _resolve(name: str) -> Callable | None:
    f = registry.get_global_func(name, allow_missing=True)
    if f is None and (name.startswith("ccl.") or name.startswith("disco.ccl.")):
        importlib.import_module("disco.ccl")  # registers the collectives on import
        f = registry.get_global_func(name, allow_missing=True)
    return f


def _lookup(objects: dict, ref_id: int, w: int):
    try:
        return objects[ref_id]
    except KeyError:
        raise KeyError(f"DRef {ref_id} has no value on worker {w}: the call that should have made it "
                       "failed, or it was freed") from None


def _bad_payload(op: int, payload, missing: int) -> Exception:
    if missing == -2:
        return payload  # the codec's decoding error
    return KeyError(f"argument DRef {missing} has no value on this worker: the call that should have "
                    "made it failed, or it was freed")


def _what(op: int, a: int, funcs: dict) -> str:
    try:
        name = Op(op).name
    except ValueError:
        return f"command op={op}"
    if op == Op.CALL:
        f = funcs.get(a)
        return f"CALL of {getattr(f, '__qualname__', f'function slot {a}')}"
    return name


def _describe(e: BaseException, what: str) -> tuple[str, str]:
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    return (f"{what} raised {type(e).__name__}: {e}", tb)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m disco.session.worker")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--worker-id", type=int, required=True)
    p.add_argument("--num-workers", type=int, required=True)
    p.add_argument("--ppid", type=int, required=True)
    args = p.parse_args(argv)
    # Die with the controller: the kernel's parent-death signal, plus getppid() checks
    # in the loop for the window before prctl took effect.
    _native.set_parent_death_signal(9)
    if os.getppid() != args.ppid:
        sys.exit(1)
    chan = _native.Channel.attach(args.fd, args.worker_id)
    os.close(args.fd)
    ctx = WorkerContext(worker_id=args.worker_id, num_workers=args.num_workers)
    set_worker_context(ctx, process_wide=True)
    serve(chan, ctx, alive=lambda: os.getppid() == args.ppid)
    # Skip interpreter teardown (atexit, GC of worker objects): the controller waits on us.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

"""The worker loop: read a command, run it, reply when the protocol says so.

One `match` over the closed `Op` enum (protocol.py). The native channel runs the hot
commands -- CALL, FREE, and SYNC when no failure waits to be carried -- inside
`chan.next`, in C++ (csrc/channel_bindings.cc), so a pipelined call costs no bytecode
of this loop; a CALL whose function raised comes back here to be recorded. (The MPI
stand-in channel of ranks on other hosts leaves them to the match.) The same loop serves a
ThreadedSession's threads and a ProcessSession's processes; as a program
(`python -m disco.session.worker --fd N --worker-id W --num-workers K --ppid P`) it
attaches to the channel inherited as fd N and serves until SHUTDOWN or until its
controller dies. It imports `disco` only, never `compiler`.

Failures. A command without a reply (CALL, FREE, BROADCAST, SCATTER) that fails is
recorded twice: under its result id in `failed` (so a FETCH or GATHER of that DRef, or
a call taking it as an argument, raises that call's own error rather than "no value"),
and in `deferred`, the failures since this worker's last reply, every one of which
rides on that next reply (up to _MAX_DEFERRED of them, then a count). An ERROR reply's
value is `(summary, traceback, seq, deferred, ok_value)`: the failure of the command
itself (seq: the command that failed; for a failed DRef, the call that should have
made it) or `summary None` and the command's value `ok_value` when only deferred
failures are reported; `deferred` is a tuple of (seq, summary, traceback). The
controller (base.Session._collect) raises the first and mentions the others, and drops
a deferred failure whose command it already reported, so a collective that failed on
every worker is raised once, not again at the next sync.
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
from disco.session.protocol import (INLINE_ARRAY_BYTES, NEXT_CALL_RAISED, NEXT_DECODE_FAILED,
                                    NEXT_NOTHING_MISSING, Op, Spill, Status, Transfer)
from disco.tensor import host_value

_WAIT_S = 0.25  # longest sleep between liveness checks
_MAX_DEFERRED = 16  # failures kept for the next reply; more are only counted


class FailedInputError(RuntimeError):
    """A call's argument is a DRef whose own call failed on this worker."""


def serve(chan, ctx: WorkerContext, alive: Callable[[], bool] | None = None) -> None:
    """Run commands from `chan` as worker `ctx.worker_id` until SHUTDOWN, the channel
    closing, or `alive()` turning False (checked whenever no command came for _WAIT_S)."""
    try:
        _serve(chan, ctx, alive)
    finally:  # the codec's hooks and the channel refer to each other: a cycle GC cannot see
        chan.set_codec(None, None, None, None, None, INLINE_ARRAY_BYTES)


def _serve(chan, ctx: WorkerContext, alive: Callable[[], bool] | None) -> None:
    objects: dict[int, object] = {}  # DRef id -> this worker's object
    failed: dict[int, tuple[int, str, str]] = {}  # DRef id -> (seq, summary, tb) of the call that failed
    funcs: dict[int, Callable] = {}  # function slot -> callable
    transfer = Transfer()
    transfer.codec = chan
    chan.set_codec(None, None, transfer.encode, transfer.decode, objects, INLINE_ARRAY_BYTES)
    # CALL, FREE, and SYNC while no failure waits for a reply, run inside chan.next
    # (C++); here come the other commands, a CALL that raised (missing == NEXT_CALL_RAISED)
    # and a SYNC that must carry failures (`chan.clean` False).
    chan.handle_hot_commands(funcs, objects, failed)
    w, n = ctx.worker_id, ctx.num_workers
    deferred: list[tuple[int, str, str]] = []  # failures of commands without a reply, since the last reply
    uncounted = 0  # failures beyond _MAX_DEFERRED since the last reply

    def send(seq: int, status: Status, value, carried: tuple = ()) -> None:
        try:
            chan.send_reply(seq, status, value)
        except OverflowError:
            chan.send_reply(seq, status, Spill(value))
        except Exception as e:  # e.g. an unpicklable result; `carried`: the deferred failures in it
            summary, tb = _describe(e, f"sending the reply to command {seq}")
            chan.send_reply(seq, Status.ERROR, (summary, tb, seq, carried, None))

    def take_deferred(own_seq: int = 0) -> tuple:
        nonlocal uncounted
        out = [d for d in deferred if d[0] != own_seq]
        if uncounted:
            out.append((0, f"and {uncounted} more failed commands on worker {w} (not shown)", ""))
        deferred.clear()
        uncounted = 0
        chan.clean = True
        return tuple(out)

    def reply(seq: int, status: Status, value) -> None:
        if (deferred or uncounted) and status == Status.OK:
            carried = take_deferred()
            send(seq, Status.ERROR, (None, None, 0, carried, value), carried)
        else:
            send(seq, status, value)

    def reply_error(seq: int, failure: tuple[int, str, str]) -> None:
        fseq, summary, tb = failure
        carried = take_deferred(fseq)
        send(seq, Status.ERROR, (summary, tb, fseq, carried, None), carried)

    def fail(op: int, seq: int, a: int, b: int, e: BaseException) -> None:
        """Record a failed command without a reply, or answer one that has a reply."""
        nonlocal uncounted
        summary, tb = _describe(e, _what(op, a, funcs))
        if op in (Op.CALL, Op.FREE, Op.BROADCAST, Op.SCATTER):
            if op != Op.FREE:
                failed[b] = (seq, summary, tb)
            if len(deferred) < _MAX_DEFERRED:
                deferred.append((seq, summary, tb))
            else:
                uncounted += 1
            chan.clean = False
        elif op != Op.FETCH or b == w:
            reply_error(seq, (seq, summary, tb))

    def lookup(ref_id: int):
        if ref_id in failed:
            raise _Failed(failed[ref_id])
        return _lookup(objects, ref_id, w)

    while True:
        cmd = chan.next(_WAIT_S)
        if cmd is None:
            if chan.closed or (alive is not None and not alive()):
                return
            continue
        # The controller read our last reply before sending more. (Hot commands never get
        # here, so a reply's buffers may wait for the next other command: one reply's worth.)
        if transfer.outgoing:
            transfer.release()
        op, seq, a, b, payload, missing = cmd
        if missing == NEXT_CALL_RAISED:  # a CALL run by chan.next; payload: what its function raised
            fail(op, seq, a, b, payload)
            continue
        try:
            if missing != NEXT_NOTHING_MISSING:
                raise _bad_payload(payload, missing, failed.get(missing), w)
            match op:  # CALL and FREE come here only from a channel that does not run them itself
                case Op.CALL:
                    objects[b] = funcs[a](*payload)
                case Op.FREE:
                    _free(objects, failed, payload)
                case Op.SYNC:
                    _free(objects, failed, payload)
                    reply(seq, Status.OK, None)
                case Op.GET_FUNC:
                    f = _resolve(payload)
                    if f is None:
                        reply(seq, Status.NOT_FOUND,
                              (registry.unknown_message(payload, registry.list_global_funcs()), ""))
                    else:
                        funcs[a] = f
                        reply(seq, Status.OK, None)
                case Op.FETCH:       # GPU arrays leave the worker as numpy (host_value)
                    if b == w:
                        reply(seq, Status.OK, host_value(lookup(a)))
                case Op.GATHER:
                    reply(seq, Status.OK, host_value(lookup(a)))
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
        except _Failed as f:  # FETCH or GATHER of a DRef whose call failed: that call's error
            reply_error(seq, f.failure)
        except BaseException as e:  # a worker reports, it never dies of its functions
            if isinstance(e, (SystemExit, KeyboardInterrupt)) and op != Op.CALL:
                raise
            fail(op, seq, a, b, e)


class _Failed(Exception):
    """Raised by `lookup` for a DRef whose call failed; carries (seq, summary, tb)."""

    def __init__(self, failure: tuple[int, str, str]):
        super().__init__(failure[1])
        self.failure = failure


def _free(objects: dict, failed: dict, ids: tuple | None) -> None:
    """Drop the objects (and recorded failures) of DRef ids (FREE's payload, SYNC's)."""
    for i in ids or ():
        objects.pop(i, None)
        failed.pop(i, None)


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


def _bad_payload(payload, missing: int, failure: tuple[int, str, str] | None, w: int) -> Exception:
    if missing == NEXT_DECODE_FAILED:
        return payload  # the codec's decoding error
    if failure is not None:
        return FailedInputError(f"argument DRef {missing} has no value on worker {w} because the call that "
                                f"should have made it failed: {failure[1]}")
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


def _check_same_disco(expected: str | None) -> None:
    """Exit with a message (the controller shows it) unless this process imported the
    controller's `disco` package."""
    import disco
    here = os.path.dirname(os.path.abspath(disco.__file__))
    if expected and os.path.realpath(here) != os.path.realpath(expected):
        sys.stderr.write(f"disco worker: imported disco from {here}, but the controller runs the one in "
                         f"{expected}; start the program from another directory or install disco there\n")
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m disco.session.worker")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--worker-id", type=int, required=True)
    p.add_argument("--num-workers", type=int, required=True)
    p.add_argument("--ppid", type=int, required=True)
    args = p.parse_args(argv)
    _check_same_disco(os.environ.get("DISCO_CONTROLLER_PACKAGE"))
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

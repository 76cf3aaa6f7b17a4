"""Running a pipelined function (compiler/distributed/pipeline.py): each worker runs
only its stage's program, and the stages meet through point-to-point transfers that
the programs make themselves.

`dmod["main"](x, w1, ..., w4)` places each argument on the workers of its stage's mesh
(by its placement there), then one broadcast call has every worker pick its stage's
function and arguments (`disco.pipeline.call_micro_batch`); workers outside every stage do
nothing. The result lives on the last stage's workers: a `StageTensorRef`, whose
`fetch()` assembles the global value from them.

Micro-batches: `dmod["main"].run_microbatches(x, w1, ..., micro_batches=8)` places the
arguments that are not split (the weights) once, then splits the named inputs (`split`,
default the first parameter) along axis 0 and issues each micro-batch's stage calls
without waiting: a worker runs its commands in order, so stage 0's workers go on to
micro-batch 2 while stage 1's wait in `recv` for micro-batch 1, and the per-pair
mailboxes of the transfers (disco.ccl send/recv) hold the micro-batches in flight. The
last stage's results are concatenated there. Every stage call records on its worker
(start, received, end) in `time.time()` seconds -- the one clock every process of a host
shares -- where `received` is when its last incoming transfer arrived (the stage's
work starts then); `handle.timeline()` collects them.
"""
from __future__ import annotations

import collections
import itertools
import sys
import time
from typing import Any, Sequence

import numpy as np

from disco._context import current_context
from disco.errors import SessionError
from disco.placement import Layout
from disco.registry import register_func
from disco.session.base import DRef


class StageTensorRef(DRef):
    """A DRef to the pieces of a value on one stage's workers `device_ids` (mesh of
    shape `mesh_shape`, placement `layout`); `fetch()` gives the global value."""

    __slots__ = ("layout", "device_ids")

    def __init__(self, sess, ref_id: int, layout: Layout, device_ids):
        super().__init__(sess, ref_id)
        self.layout, self.device_ids = layout, list(device_ids)

    def fetch(self, worker=None) -> Any:
        self._sess.sync()
        if worker is not None:
            return self._sess.fetch(self, worker)
        if self.layout.replicated:
            return np.asarray(self._sess.fetch(self, self.device_ids[0]))
        pieces = {i: np.asarray(self._sess.fetch(self, w)) for i, w in enumerate(self.device_ids)
                  if self.layout.is_lead(i)}
        first = next(iter(pieces.values()))
        gshape = [n * f for n, f in zip(first.shape, self.layout.factors)]
        out = np.zeros(gshape, first.dtype)
        for i, piece in pieces.items():
            if self.layout.partial:
                out[self.layout.block(i, gshape)] += piece
            else:
                out[self.layout.block(i, gshape)] = piece
        return out


class PipelineFunctionHandle:
    """`dmod["main"]` of a pipelined function (see the module docstring)."""

    def __init__(self, dmod, name: str, info: dict):
        self.dmod, self.name, self.info = dmod, name, info
        self.stages = info["stages"]
        n = dmod.session.num_workers
        self.stage_of = ["" for _ in range(n)]
        self.args_of: list = [[] for _ in range(n)]
        self.mesh_of = {}
        for st in self.stages:
            for w in st["device_ids"]:
                self.stage_of[w] = st["function"]
                self.args_of[w] = list(st["params"])
            for k in st["params"]:
                self.mesh_of[k] = st

    def _place_one(self, k: int, a: Any):
        """Argument k on the workers of its stage's mesh (by its placement there)."""
        if isinstance(a, DRef):
            return a
        sess = self.dmod.session
        st, p = self.mesh_of.get(k), self.info["params"][k]
        whole = sess.broadcast(np.ascontiguousarray(np.asarray(a)))
        if st is None or p.get("placement") in (None, "R") or "shape" not in p:
            return whole
        return sess.get_global_func("disco.pipeline.block")(
            whole, list(st["device_ids"]), list(st["mesh_shape"]), p["placement"])

    def _check_count(self, args: Sequence) -> None:
        params = self.info["params"]
        if len(args) != len(params):
            names = ", ".join(p["name"] for p in params)
            raise SessionError(f"{self.name}: expected {len(params)} arguments ({names}), got {len(args)}")

    def place(self, *args: Any) -> list:
        self._check_count(args)
        return [self._place_one(k, a) for k, a in enumerate(args)]

    def _issue(self, placed: list, run: int, micro_batch: int) -> DRef:
        """One call of every stage on its workers (no wait): the last stage's result."""
        return self.dmod.session.get_global_func("disco.pipeline.call_micro_batch")(
            self.dmod._vm, self.stage_of, self.args_of, run, micro_batch, *placed)

    def _result_layout(self) -> Layout | None:
        res = self.info["result"]
        if res.get("shape") is None:
            return None
        return Layout(res.get("placement"), tuple(self.stages[-1]["mesh_shape"]), len(res["shape"]))

    def _adopt(self, ref: DRef, layout: Layout) -> StageTensorRef:
        from disco.dmodule import adopt
        return adopt(ref, layout, self.stages[-1]["device_ids"])     # the id now belongs to the result

    def __call__(self, *args: Any) -> StageTensorRef:
        ref = self._issue(self.place(*args), next(_RUNS), -1)
        layout = self._result_layout()
        return ref if layout is None else self._adopt(ref, layout)

    def run_microbatches(self, *args: Any, micro_batches: int, split: Sequence[str] | None = None) -> StageTensorRef:
        """The function over a batch split into `micro_batches` along axis 0 of the
        parameters named in `split` (default: the first parameter), the stages working on
        different micro-batches at once (module doc); the other arguments are placed once.
        The program must have been compiled for one micro-batch's shape. Returns the last
        stage's results concatenated along axis 0."""
        self._check_count(args)
        params = self.info["params"]
        names = [p["name"] for p in params]
        split = [names[0]] if split is None else list(split)
        unknown = [n for n in split if n not in names]
        if unknown or not split:
            raise SessionError(f"{self.name}.run_microbatches: split={split} must name one or more parameters "
                               f"({names}); unknown: {unknown}")
        m = int(micro_batches)
        if m < 1:
            raise SessionError(f"{self.name}.run_microbatches: micro_batches must be at least 1, given {micro_batches}")
        layout = self._result_layout()
        if layout is None or layout.factors[0] != 1:
            raise SessionError(f"{self.name}.run_microbatches: the result must be one tensor whose axis 0 is not "
                               f"split over the last stage's workers (the micro-batches are concatenated there "
                               f"along it); it is {self.info['result']}")
        pieces = {}
        for n in split:
            k = names.index(n)
            a = args[k]
            if isinstance(a, DRef):
                raise SessionError(f"{self.name}.run_microbatches: parameter {n!r} is split into micro-batches, "
                                   "so it must be an array on the controller, not a DRef")
            a = np.asarray(a)
            want = (params[k].get("shape") or [None])[0]
            if a.ndim == 0 or a.shape[0] % m or (isinstance(want, int) and a.shape[0] != want * m):
                expect = f"{want} x {m} = {want * m}" if isinstance(want, int) else f"a multiple of {m}"
                raise SessionError(f"{self.name}.run_microbatches: parameter {n!r} of shape {a.shape} is split "
                                   f"into {m} micro-batches along axis 0, so axis 0 must be {expect} "
                                   f"(the program was compiled for shape {params[k].get('shape')})")
            pieces[k] = np.split(a, m, axis=0)
        fixed = {k: self._place_one(k, a) for k, a in enumerate(args) if k not in pieces}
        run = next(_RUNS)
        results = []
        for i in range(m):
            placed = [fixed[k] if k in fixed else self._place_one(k, pieces[k][i]) for k in range(len(args))]
            results.append(self._issue(placed, run, i))
        out = self.dmod.session.get_global_func("disco.pipeline.concat")(*results)
        return self._adopt(out, layout)

    def timeline(self, reset: bool = False) -> list[dict]:
        """The stage calls the workers of this function's stages recorded (module doc),
        oldest first: dicts of worker, stage (index), function, run, micro_batch (-1 for
        a plain call), start, received, end (time.time() seconds; received is start on a
        stage that receives nothing). `reset`: forget them on the workers after."""
        ref = self.dmod.session.get_global_func("disco.pipeline.timeline")(reset)
        stage_index = {st["function"]: i for i, st in enumerate(self.stages)}
        out = []
        for w in sorted({w for st in self.stages for w in st["device_ids"]}):
            for rec in ref.fetch(w):
                if rec["function"] in stage_index:
                    out.append(dict(rec, worker=w, stage=stage_index[rec["function"]]))
        return sorted(out, key=lambda r: r["start"])


_RUNS = itertools.count()       # tags each call's records in the workers' timelines


# -- the worker side --------------------------------------------------------------------


@register_func("disco.pipeline.block", override=True)
def _block(whole, device_ids, mesh_shape, placement):
    """This worker's block of `whole` on a stage's mesh; None off the stage."""
    me = current_context().worker_id
    ids = [int(i) for i in device_ids]
    if me not in ids:
        return None
    a = np.asarray(whole)
    layout = Layout(placement, tuple(int(s) for s in mesh_shape), a.ndim)
    return np.ascontiguousarray(a[layout.block(ids.index(me), a.shape)])


TIMELINE_LENGTH = 4096     # stage calls a worker remembers (the oldest are dropped)


def _timeline() -> collections.deque:
    state = current_context().state
    if "stage_timeline" not in state:
        state["stage_timeline"] = collections.deque(maxlen=TIMELINE_LENGTH)
    return state["stage_timeline"]


def _run_stage(vm, functions, arguments, run: int, micro_batch: int, args):
    """Run this worker's stage function (functions[worker], with args at
    arguments[worker]), recording its start, arrival of inputs and end (module doc)."""
    ctx = current_context()
    name = functions[ctx.worker_id]
    if not name:
        return None
    rec = {"function": name, "run": int(run), "micro_batch": int(micro_batch), "start": time.time()}
    rec["received"] = rec["start"]
    ctx.state["stage_call"] = rec       # spmd.recv notes the arrival of each input in it
    try:
        return vm[name](*[args[int(i)] for i in arguments[ctx.worker_id]])
    finally:
        rec["end"] = time.time()
        ctx.state.pop("stage_call", None)
        _timeline().append(rec)


@register_func("disco.pipeline.call_micro_batch", override=True)
def _call_micro_batch(vm, functions, arguments, run, micro_batch, *args):
    """Micro-batch `micro_batch` of call `run` of this worker's stage."""
    return _run_stage(vm, functions, arguments, run, micro_batch, args)


@register_func("disco.pipeline.concat", override=True)
def _concat(*results):
    """The micro-batches' results concatenated along axis 0 on the workers that hold
    them (the last stage's); None elsewhere."""
    if not results or any(not hasattr(r, "shape") for r in results):
        return None
    xp = sys.modules["cupy"] if type(results[0]).__module__.startswith("cupy") else np
    return xp.concatenate(results, axis=0)


@register_func("disco.pipeline.timeline", override=True)
def _get_timeline(reset: bool = False) -> list:
    """This worker's recorded stage calls (module doc), oldest first."""
    line = _timeline()
    out = [dict(r) for r in line]
    if reset:
        line.clear()
    return out

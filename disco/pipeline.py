"""Running a pipelined function (compiler/distributed/pipeline.py): each worker runs
only its stage's program, and the stages meet through point-to-point transfers that
the programs make themselves.

`dmod["main"](x, w1, ..., w4)` places each argument on the workers of its stage's mesh
(by its placement there), then one broadcast call has every worker pick its stage's
function and arguments (`disco.dmodule.call_stage`); workers outside every stage do
nothing. The result lives on the last stage's workers: a `StageTensorRef`, whose
`fetch()` assembles the global value from them.
"""
from __future__ import annotations

from typing import Any

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

    def place(self, *args: Any) -> list:
        sess = self.dmod.session
        params = self.info["params"]
        if len(args) != len(params):
            names = ", ".join(p["name"] for p in params)
            raise SessionError(f"{self.name}: expected {len(params)} arguments ({names}), got {len(args)}")
        out = []
        for k, a in enumerate(args):
            if isinstance(a, DRef):
                out.append(a)
                continue
            st, p = self.mesh_of.get(k), params[k]
            whole = sess.broadcast(np.ascontiguousarray(np.asarray(a)))
            if st is None or p.get("placement") in (None, "R") or "shape" not in p:
                out.append(whole)
                continue
            out.append(sess.get_global_func("disco.pipeline.block")(
                whole, list(st["device_ids"]), list(st["mesh_shape"]), p["placement"]))
        return out

    def __call__(self, *args: Any) -> StageTensorRef:
        sess = self.dmod.session
        placed = self.place(*args)
        ref = sess.get_global_func("disco.pipeline.call_stage")(self.dmod._vm, self.stage_of, self.args_of,
                                                                 *placed)
        res, last = self.info["result"], self.stages[-1]
        if res.get("shape") is None:
            return ref
        layout = Layout(res.get("placement"), tuple(last["mesh_shape"]), len(res["shape"]))
        out = StageTensorRef(sess, ref._id, layout, last["device_ids"])
        from disco.dmodule import _Detached
        ref._sess = _Detached
        return out


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


@register_func("disco.pipeline.call_stage", override=True)
def _call_stage(vm, functions, arguments, *args):
    """Run this worker's stage function (functions[worker], with args at arguments[worker])."""
    me = current_context().worker_id
    name = functions[me]
    if not name:
        return None
    return vm[name](*[args[int(i)] for i in arguments[me]])

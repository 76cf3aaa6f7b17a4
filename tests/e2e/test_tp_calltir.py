"""Hand-written tensor programs (R.call_tir) and external functions (R.call_dps_packed)
in sharded modules, end to end: script with placements -> compiler.build ->
sess.load_module on ThreadedSession and ProcessSession with 2 and 4 workers, each
result against numpy. Each worker must run a local copy of the tensor program whose
buffers and loops have the local extents (a global-shaped program reads and writes
past the local arrays); a sharded contraction dim gives partial sums and one
all-reduce."""
from __future__ import annotations

import numpy as np
import pytest

import compiler
import disco
from compiler import script
from compiler.distributed.lowering import DistributedLowering
from compiler.ir import graph as G
from compiler.ir import tir as T
from compiler.ir.errors import ShardingError
from compiler.ir.expr import IntImm
from compiler.ir.visitor import post_order_visit

import _tp_models as M

KINDS = {"threaded": disco.ThreadedSession, "process": disco.ProcessSession}
_BUILT: dict = {}


def build(src: str):
    if src not in _BUILT:
        _BUILT[src] = compiler.build(script.parse(src))
    return _BUILT[src]


@pytest.fixture(scope="module", params=[(kind, k) for kind in KINDS for k in (2, 4)],
                ids=lambda p: f"{p[0]}-{p[1]}")
def sess(request):
    kind, k = request.param
    s = KINDS[kind](k)
    s.import_module("_tp_models")         # registers M.DPS_FUNC on the workers
    yield s
    s.shutdown()


def lowered(src: str):
    return DistributedLowering(script.parse(src))


def collectives(mod) -> list[str]:
    found = []
    post_order_visit(mod["main"], lambda n: found.append(n.op.name) if isinstance(n, G.Call) and
                     isinstance(n.op, G.Op) and n.op.name.startswith("relax.ccl.") else None)
    return found


def call_tir_callees(mod) -> list[str]:
    found = []
    post_order_visit(mod["main"], lambda n: found.append(n.args[0].name_hint)
                     if isinstance(n, G.Call) and isinstance(n.op, G.Op) and
                     n.op.name == "relax.call_tir" else None)
    return found


def buffer_shapes(prim) -> list[tuple]:
    return [tuple(d.value if isinstance(d, IntImm) else d.name for d in b.shape)
            for b in prim.params if isinstance(b, T.Buffer)]


def loop_extents(prim) -> list:
    found = []
    post_order_visit(prim.body, lambda n: found.append(
        n.extent.value if isinstance(n.extent, IntImm) else n.extent.name)
        if isinstance(n, T.For) else None)
    return sorted(found, key=str)


def rand(rng, *shape):
    return (rng.standard_normal(shape) * 0.3).astype(np.float32)


# -- end to end ----------------------------------------------------------------------------------

@pytest.mark.parametrize("x,w", [("R", "S[1]"), ("S[0]", "R"), ("S[1]", "S[0]")],
                         ids=["w-cols", "x-rows", "contraction"])
def test_seed_calltir(sess, x, w):
    k = sess.num_workers
    src = M.seed_calltir(k, x=x, w=w)
    dmod = sess.load_module(build(src))
    rng = np.random.default_rng(7)
    wv = rand(rng, 128, 64)
    for n in (k, 3 * k):                   # symbolic rows, divisible where they are split
        xv = rand(rng, n, 128)
        y = dmod["main"](xv, wv).fetch()
        np.testing.assert_allclose(y, M.seed_ref(xv, wv), rtol=1e-4, atol=1e-4)


def test_call_dps_packed_stays_replicated(sess):
    k = sess.num_workers
    src = M.dps_packed(k)
    low = lowered(src)
    call = next(b for b in low["main"].body.blocks[0].bindings
                if isinstance(b.value, G.Call) and b.value.op.name == "relax.call_dps_packed")
    assert call.var.struct_info.shape[1].value == 16       # whole (replicated) on each worker
    assert call.value.sinfo_args[0] == call.var.struct_info
    rng = np.random.default_rng(8)
    args = [rand(rng, 5, 16), rand(rng, 16, 32), rand(rng, 32, 16), rand(rng, 16, 8)]
    y = sess.load_module(build(src))["main"](*args).fetch()
    np.testing.assert_allclose(y, M.dps_packed_ref(*args), rtol=1e-4, atol=1e-4)


TWO_OUTPUTS = '''
    @T.prim_func
    def f(X: T.Buffer((8, 16), "float32"), Y: T.Buffer((8, 16), "float32"), Z: T.Buffer((8, 16), "float32")):
        for i in T.serial(8):
            for j in T.serial(16):
                Y[i, j] = X[i, j] * T.float32(2)
                Z[i, j] = X[i, j] + T.float32(1)

    @R.function
    def main(X: R.DTensor((8, 16), "float32", "mesh[0]", "S[1]")):
        with R.dataflow():
            y = R.call_tir(M.f, (X,), [R.Tensor((8, 16), "float32"), R.Tensor((8, 16), "float32")])
            c = R.add(y[0], y[1])
            R.output(c)
        return c
'''


def test_loops_without_blocks_and_two_outputs(sess):
    src = M.module_text(TWO_OUTPUTS, (sess.num_workers,))
    x = rand(np.random.default_rng(10), 8, 16)
    y = sess.load_module(build(src))["main"](x).fetch()
    np.testing.assert_allclose(y, 3 * x + 1, rtol=1e-6, atol=1e-6)

"""R.ccl.send / R.ccl.recv, the IR form of a transfer between two pipeline stages: struct
info, script round trip, argument errors, dead-code elimination keeps them, and legalization
to the `spmd.send` / `spmd.recv` runtime functions. (Running them: tests/e2e/test_p2p_vm.py.)"""
from __future__ import annotations

import pytest

from compiler import op, script
from compiler.ir import graph as G
from compiler.ir.errors import StructInfoError
from compiler.ir.expr import IntImm
from compiler.ir.struct_info import TensorStructInfo, TupleStructInfo
from compiler.transform.dead_code import DeadCodeElimination
from compiler.transform.legalize_ops import LegalizeOps

STAGES = '''
@I.ir_module
class M:
    @R.function(pure=False)
    def main(x: R.Tensor(("n", 8), "float32")):
        n = T.int64()
        s = R.ccl.send(x, senders=[0, 1], receivers=[2, 3])
        y = R.ccl.recv(R.shape([n, 8]), dtype="float32", senders=[0, 1], receivers=[2, 3])
        return y
'''


def bindings(mod):
    return [b for blk in mod["main"].body.blocks for b in blk.bindings]


def test_struct_info_and_round_trip(roundtrip):
    mod = script.parse(STAGES)
    roundtrip(mod)
    s, y = bindings(mod)
    assert s.var.struct_info == TupleStructInfo(())
    assert isinstance(y.var.struct_info, TensorStructInfo) and y.var.struct_info.dtype == "float32"
    assert [d.value if isinstance(d, IntImm) else d.name for d in y.var.struct_info.shape] == ["n", 8]
    assert "R.ccl.send(x, senders=[0, 1], receivers=[2, 3])" in mod.script()


def test_dead_code_elimination_keeps_the_send():
    mod = DeadCodeElimination(script.parse(STAGES))
    assert [b.value.op.name for b in bindings(mod)] == ["relax.ccl.send", "relax.ccl.recv"]


def test_legalized_to_the_spmd_runtime_functions(roundtrip):
    mod = LegalizeOps(script.parse(STAGES))
    roundtrip(mod)
    calls = [b.value for b in bindings(mod)]
    assert [c.op.name for c in calls] == ["relax.call_packed", "relax.call_packed"]
    assert [c.args[0].global_symbol for c in calls] == ["spmd.send", "spmd.recv"]
    assert 'R.call_packed("spmd.recv", R.shape([n, 8]), R.str("float32"), R.shape([0, 1]), R.shape([2, 3])' \
        in mod.script()


@pytest.mark.parametrize("senders,receivers", [([0, 1], [2]), ([0, 1], [2, 2]), ([0, 1], [1, 2]), ([], []),
                                               ([-1], [1])])
def test_senders_and_receivers_must_pair_distinct_receivers(senders, receivers):
    x = G.Var("x", TensorStructInfo((4,), "float32"))
    op.ccl.send(x, senders=[0, 0], receivers=[1, 2])     # one sender serving two receivers is fine
    with pytest.raises(StructInfoError, match=r"R.ccl.send: senders and receivers must be two disjoint lists of "
                                              r"worker ids of one length, the receivers distinct"):
        op.ccl.send(x, senders=senders, receivers=receivers)
    with pytest.raises(StructInfoError, match=r"R.ccl.recv: senders and receivers"):
        op.ccl.recv((4,), "float32", senders=senders, receivers=receivers)


SHAPE_FIRST = '''
@I.ir_module
class M:
    @R.function(pure=False)
    def main(x: R.Tensor(("n", 8), "float32")):
        m = T.int64()
        s = R.ccl.send(x, senders=[0], receivers=[1], with_shape=True)
        y = R.ccl.recv(R.shape([-1, 8]), dtype="float32", senders=[0], receivers=[1])
        z = R.match_cast(y, R.Tensor((m, 8), "float32"))
        return z
'''


def test_a_symbolic_dim_is_sent_first_and_received_as_minus_one(roundtrip):
    """A receiver that cannot know a dim (the tokens of a step, crossing a stage boundary)
    says -1: its result has only a rank; the sender says with_shape=True, legalized to a
    trailing 1 (and nothing when False, as before)."""
    mod = script.parse(SHAPE_FIRST)
    roundtrip(mod)
    s, y, z = bindings(mod)
    assert y.var.struct_info == TensorStructInfo(None, "float32", 2)
    assert s.value.attrs["with_shape"] is True
    assert "with_shape" not in op.ccl.send(s.value.args[0], [0], [1]).attrs
    text = LegalizeOps(mod).script()
    assert 'R.call_packed("spmd.send", x, R.shape([0]), R.shape([1]), R.prim_value(1)' in text
    assert 'R.call_packed("spmd.recv", R.shape([-1, 8]), R.str("float32"), R.shape([0]), R.shape([1])' in text

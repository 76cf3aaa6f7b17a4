"""Per-operator sharding rules through PropagateSharding: each case's placements are
derived by hand from the operator's meaning (which dims pass through, which must be
whole, which reduce)."""
from __future__ import annotations

from compiler import op
from compiler.op import sharding as rules
from compiler.ir import graph as G
from compiler.ir.struct_info import TensorStructInfo

from test_propagate import conversions, placements, propagate

# Builtins with no tensor semantics of their own (storage, packed calls, collectives of
# the local view, the distributed operators PropagateSharding handles itself).
NO_RULE = ("relax.builtin.", "relax.memory.", "relax.ccl.", "relax.dist.", "relax.call_packed",
           "relax.call_pure_packed")


def test_every_operator_has_a_sharding_rule():
    for name in op.list_ops():
        if name.startswith(NO_RULE):
            continue
        assert op.get_op(name).sharding_rule is not None, f"{name} has no sharding rule"


def run(body: str, roundtrip):
    out = propagate(body, roundtrip)
    return placements(out), conversions(out)


def test_manipulation_ops(roundtrip):
    p, conv = run('''
    @R.function
    def main(x: R.DTensor((4, 8), "float32", "mesh[0]", "S[0]"), b: R.DTensor((1, 8), "float32", "mesh[0]", "S[1]")):
        with R.dataflow():
            c0 = R.concat((x, x), axis=1)
            c1 = R.concat((x, x), axis=0)
            sp = R.split(x, indices_or_sections=2, axis=1)
            s0 = sp[0]
            ss = R.strided_slice(x, axes=[0], begin=[0], end=[2], strides=[1])
            e = R.expand_dims(x, axis=[0])
            q = R.squeeze(e, axis=[0])
            bt = R.broadcast_to(b, R.shape([4, 8]))
            t = R.permute_dims(x, axes=[1, 0])
            R.output(c0, c1, s0, ss, q, bt, t)
        return (c0, c1, s0, ss, q, bt, t)
''', roundtrip)
    assert p["c0"] == "S[0]"            # concat along dim 1: rows stay split
    assert p["c1"] == "R"               # concat along the sharded dim: gathered first
    assert p["s0"] == "S[0]"               # split along dim 1: each part keeps rows split
    assert p["ss"] == "R"               # slicing the sharded dim needs it whole
    assert p["e"] == "S[1]" and p["q"] == "S[0]"
    assert p["bt"] == "S[1]"            # column sharding passes through a row broadcast
    assert p["t"] == "S[1]"
    assert conv == [("S[0]", "R")]     # x gathered once, shared by c1 and ss


def test_normalisations_reductions_and_creation(roundtrip):
    p, conv = run('''
    @R.function
    def main(x: R.DTensor((4, 8), "float32", "mesh[0]", "S[0]"), y: R.DTensor((4, 8), "float32", "mesh[0]", "S[1]"), g: R.Tensor((8,), "float32"), bb: R.Tensor((8,), "float32")):
        with R.dataflow():
            ln = R.nn.layer_norm(y, g, bb, axes=[-1], epsilon=1e-5, center=True, scale=True)
            lsm = R.nn.log_softmax(x, axis=-1)
            am = R.argmax(y, axis=1, keepdims=False)
            mn = R.min(y, axis=[1], keepdims=False)
            f = R.full(R.shape([4, 8]), R.const(1.0, "float32"), dtype="float32")
            a = R.add(x, f)
            z = R.zeros_like(y)
            w = R.where(R.greater(y, z), y, z)
            R.output(ln, lsm, am, mn, a, w)
        return (ln, lsm, am, mn, a, w)
''', roundtrip)
    assert p["ln"] == "R" and p["g"] == "R" and p["bb"] == "R"
    assert p["lsm"] == "S[0]"           # normalised along the unsharded dim
    assert p["am"] == "R"               # argmax over the sharded dim: gathered
    assert p["mn"] == "P[min]"          # min over the sharded dim: pending min
    assert p["a"] == "S[0]" and p["f"] == "R"      # made whole, then sliced for a (free)
    assert p["z"] == "S[1]" and p["w"] == "S[1]"
    assert ("R", "S[0]") in conv and ("P[min]", "R") in conv
    assert conv.count(("S[1]", "R")) == 1           # y gathered once for ln and am


def test_rules_are_direction_free_dim_maps():
    x = G.Var("x", TensorStructInfo((2, 4, 8), "float32"))
    w = G.Var("w", TensorStructInfo((8, 6), "float32"))
    spec = rules.matmul(op.matmul(x, w))
    # batch b0, rows m, contraction k, columns n: k summed
    assert spec.inputs == (("b0", "m", "k"), ("k", "n")) and spec.output == ("b0", "m", "n")
    assert spec.reduce == {"k": "sum"}
    r = G.Var("r", TensorStructInfo((6, 4, 8), "float32"))
    spec = rules.reshape(op.reshape(r, (6, 32)))
    assert spec.inputs[0][0] == spec.output[0] and spec.inputs[0][1] == spec.output[1]
    assert spec.inputs[0][2] is None                 # inner factor of the merged dim
    spec = rules.reshape(op.reshape(r, (3, 2, 32)))  # 6 -> (3, 2): outer factor 3 only
    assert spec.inputs[0][0] == spec.output[0] and spec.output[1] is None
    t = G.Var("t", TensorStructInfo((32, 16), "float32"))
    i = G.Var("i", TensorStructInfo((5,), "int64"))
    spec = rules.take(op.take(t, i, axis=0))
    assert spec.output == ("i0", "x1") and spec.reduce == {"x0": "sum"}

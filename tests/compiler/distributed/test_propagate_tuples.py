"""PropagateSharding on tuples: every field of a tuple-typed value keeps its own placement
(tuple results, split, tuple construction and TupleGetItem), and a returned value that
needs a conversion leaves its dataflow block only converted. Expectations are derived by
hand from the placements given (a column-parallel matmul gives S[1], a replicated
operand gives R, a sharded contraction dim gives P[sum], which results never are)."""
from __future__ import annotations

import numpy as np

import compiler
import disco
from compiler import script
from compiler.distributed import PropagateSharding
from compiler.distributed.lowering import DistributedLowering
from compiler.ir import graph as G
from compiler.ir.struct_info import DTensorStructInfo, TupleStructInfo

import _tp_models as M
from test_propagate import bindings, conversions, propagate


def var(mod, name, func="main"):
    found = [b.var for b in bindings(mod, func) if b.var.name_hint == name]
    assert len(found) == 1, (name, [b.var.name_hint for b in bindings(mod, func)])
    return found[0]


def placement_of(sinfo):
    """A DTensor's placement, or a tuple's as a tuple of its fields' (nested)."""
    if isinstance(sinfo, TupleStructInfo):
        return tuple(placement_of(f) for f in sinfo.fields)
    assert isinstance(sinfo, DTensorStructInfo), sinfo
    return sinfo.placement_text


def outputs(mod, func="main") -> list:
    """Names the last dataflow block lists in R.output (its non-dataflow variables)."""
    blk = mod[func].body.blocks[-1]
    assert isinstance(blk, G.DataflowBlock)
    return [b.var.name_hint for b in blk.bindings if not isinstance(b.var, G.DataflowVar)]


MIXED_RESULT = '''
    @R.function
    def main(x: R.Tensor((4, 8), "float32"), w: R.DTensor((8, 8), "float32", "mesh[0]", "S[1]")):
        with R.dataflow():
            a = R.nn.relu(x)
            b = R.matmul(x, w)
            R.output(a, b)
        return (a, b)
'''


def test_function_returns_replicated_and_sharded_fields(roundtrip):
    out = propagate(MIXED_RESULT, roundtrip)
    # x is never sharded (w is column-split; x's dims are rows and the contraction)
    assert out["main"].params[0].struct_info.placement_text == "R"
    assert placement_of(var(out, "a").struct_info) == "R"
    assert placement_of(var(out, "b").struct_info) == "S[1]"
    assert placement_of(out["main"].ret_struct_info) == ("R", "S[1]")
    assert conversions(out) == []                  # a sharded result is returned as it is


def test_tuple_var_result_and_tuple_parameter(roundtrip):
    out = propagate('''
    @R.function
    def main(p: R.Tuple(R.DTensor((4, 8), "float32", "mesh[0]", "S[0]"), R.Tensor((4, 8), "float32")), w: R.DTensor((8, 8), "float32", "mesh[0]", "S[1]")):
        with R.dataflow():
            x = p[1]
            b = R.matmul(x, w)
            r = p[0]
            e = R.exp(r)
            t = (e, b)
            R.output(t)
        return t
''', roundtrip)
    # p's fields are placed one by one: field 0 as declared, field 1 from the matmul
    assert placement_of(out["main"].params[0].struct_info) == ("S[0]", "R")
    assert placement_of(var(out, "e").struct_info) == "S[0]"     # elementwise keeps rows split
    assert placement_of(var(out, "t").struct_info) == ("S[0]", "S[1]")
    assert placement_of(out["main"].ret_struct_info) == ("S[0]", "S[1]")
    assert conversions(out) == []


def test_split_of_sharded_tensor_along_another_dim(roundtrip):
    out = propagate('''
    @R.function
    def main(x: R.DTensor((4, 8), "float32", "mesh[0]", "S[0]")):
        with R.dataflow():
            sp = R.split(x, indices_or_sections=2, axis=1)
            s0 = sp[0]
            s1 = sp[1]
            y = R.add(s0, s1)
            R.output(sp, y)
        return (sp, y)
''', roundtrip)
    # splitting columns leaves the rows split: every part (and their sum) is S[0]
    assert placement_of(var(out, "sp").struct_info) == ("S[0]", "S[0]")
    assert var(out, "sp").struct_info.fields[0].tensor.shape is not None
    assert placement_of(var(out, "s0").struct_info) == "S[0]"
    assert placement_of(var(out, "s1").struct_info) == "S[0]"
    assert placement_of(var(out, "y").struct_info) == "S[0]"
    assert placement_of(out["main"].ret_struct_info) == (("S[0]", "S[0]"), "S[0]")
    assert conversions(out) == []


def test_split_field_taken_out_in_another_placement_is_converted(roundtrip):
    out = propagate('''
    @R.function
    def main(x: R.DTensor((4, 8), "float32", "mesh[0]", "S[0]")):
        with R.dataflow():
            sp = R.split(x, indices_or_sections=2, axis=1)
            s1 = sp[1]
            r = R.dist.annotate_sharding(s1, "mesh[0]", "R")
            y = R.exp(r)
            R.output(y)
        return y
''', roundtrip)
    # the split itself stays row-parallel; only the field asked for whole is gathered
    assert placement_of(var(out, "sp").struct_info) == ("S[0]", "S[0]")
    assert placement_of(var(out, "s1").struct_info) == "R"
    assert placement_of(var(out, "y").struct_info) == "R"
    assert conversions(out) == [("S[0]", "R")]


def test_tuple_of_different_placements_taken_apart(roundtrip):
    out = propagate('''
    @R.function
    def main(x: R.Tensor((4, 8), "float32"), w1: R.DTensor((8, 8), "float32", "mesh[0]", "S[1]"), w2: R.DTensor((8, 8), "float32", "mesh[0]", "S[0]")):
        with R.dataflow():
            a = R.nn.relu(x)
            b = R.matmul(x, w1)
            t = (a, b)
            u = t[1]
            v = t[0]
            eu = R.exp(u)
            ev = R.exp(v)
            c = R.matmul(eu, w2)
            R.output(eu, ev, c)
        return (eu, ev, c)
''', roundtrip)
    assert placement_of(var(out, "t").struct_info) == ("R", "S[1]")
    assert placement_of(var(out, "u").struct_info) == "S[1]"       # field 1 is b's
    assert placement_of(var(out, "v").struct_info) == "R"          # field 0 is a's
    assert placement_of(var(out, "eu").struct_info) == "S[1]"
    assert placement_of(var(out, "ev").struct_info) == "R"
    # eu's columns are w2's rows: a row-parallel matmul, all-reduced once on return
    assert conversions(out) == [("P[sum]", "R")]
    assert placement_of(out["main"].ret_struct_info) == ("S[1]", "R", "R")


def test_partial_field_is_reduced_before_the_tuple(roundtrip):
    out = propagate('''
    @R.function
    def main(x: R.DTensor((4, 8), "float32", "mesh[0]", "S[1]"), w: R.DTensor((8, 8), "float32", "mesh[0]", "S[0]")):
        with R.dataflow():
            y = R.matmul(x, w)
            t = (x, y)
            R.output(t)
        return t
''', roundtrip)
    assert placement_of(var(out, "y").struct_info) == "P[sum]"     # sharded contraction
    assert conversions(out) == [("P[sum]", "R")]                   # a tuple holds no partial
    assert placement_of(var(out, "t").struct_info) == ("S[1]", "R")
    assert placement_of(out["main"].ret_struct_info) == ("S[1]", "R")


def test_nested_tuple_parameter_result_and_alias(roundtrip):
    out = propagate('''
    @R.function
    def main(p: R.Tuple(R.Tuple(R.DTensor((4, 8), "float32", "mesh[0]", "S[0]"), R.Tensor((4, 8), "float32")), R.Tensor((8, 8), "float32"))):
        with R.dataflow():
            q = p[0]
            a = q[0]
            w = p[1]
            ws = R.dist.annotate_sharding(w, "mesh[0]", "S[1]")
            b = R.matmul(a, ws)
            c = q[1]
            t = ((a, b), c)
            t2 = t
            R.output(t2)
        return t2
''', roundtrip)
    # the annotation reaches p's field through w = p[1]; the unconstrained field is R
    assert placement_of(out["main"].params[0].struct_info) == (("S[0]", "R"), "S[1]")
    # a column-parallel matmul needs a whole: gathering a (4x8) is cheaper than w (8x8)
    assert conversions(out) == [("S[0]", "R")]
    assert placement_of(var(out, "b").struct_info) == "S[1]"
    want = (("S[0]", "S[1]"), "R")
    assert placement_of(var(out, "t").struct_info) == want
    assert placement_of(var(out, "t2").struct_info) == want
    assert placement_of(out["main"].ret_struct_info) == want


def test_tuple_propagation_is_idempotent(roundtrip):
    src = '''
    @R.function
    def main(x: R.Tensor((4, 8), "float32"), w: R.DTensor((8, 8), "float32", "mesh[0]", "S[1]")):
        with R.dataflow():
            a = R.nn.relu(x)
            b = R.matmul(x, w)
            t = (a, b)
            u = t[1]
            R.output(t, u)
        return (t, u)
'''
    once = propagate(src, roundtrip)
    twice = PropagateSharding(once)
    roundtrip(twice)
    for name in ("a", "b", "t", "u"):
        assert placement_of(var(twice, name).struct_info) == \
            placement_of(var(once, name).struct_info)
    assert placement_of(var(once, "t").struct_info) == ("R", "S[1]")
    assert placement_of(twice["main"].ret_struct_info) == (("R", "S[1]"), "S[1]")


# -- what leaves the dataflow block -------------------------------------------------------------


def test_converted_result_is_the_only_output(roundtrip):
    out = propagate('''
    @R.function
    def main(x: R.DTensor((4, 8), "float32", "mesh[0]", "S[1]"), w: R.DTensor((8, 8), "float32", "mesh[0]", "S[0]")) -> R.Tensor((4, 8), "float32"):
        with R.dataflow():
            y = R.matmul(x, w)
            R.output(y)
        return y
''', roundtrip)
    assert conversions(out) == [("P[sum]", "R")]
    ret = out["main"].body.body
    assert isinstance(ret, G.Var) and ret.struct_info.placement_text == "R"
    assert outputs(out) == [ret.name_hint]          # y itself stays inside the block
    assert isinstance(var(out, "y"), G.DataflowVar)
    assert "R.output(y" not in out.script() and f"R.output({ret.name_hint})" in out.script()


def test_outputs_of_a_tuple_result_with_one_converted_field(roundtrip):
    out = propagate('''
    @R.function
    def main(x: R.DTensor((4, 8), "float32", "mesh[0]", "S[1]"), w: R.DTensor((8, 8), "float32", "mesh[0]", "S[0]")):
        with R.dataflow():
            y = R.matmul(x, w)
            z = R.exp(x)
            R.output(y, z)
        return (y, z)
''', roundtrip)
    ret = out["main"].body.body
    assert isinstance(ret, G.Tuple)
    reduced = ret.fields[0]
    assert reduced.struct_info.placement_text == "R" and ret.fields[1].name_hint == "z"
    assert sorted(outputs(out)) == sorted([reduced.name_hint, "z"])    # not y
    assert placement_of(out["main"].ret_struct_info) == ("R", "S[1]")


def test_variable_kept_as_output_when_also_used_after_the_block(roundtrip):
    out = propagate('''
    @R.function
    def main(x: R.DTensor((4, 8), "float32", "mesh[0]", "S[1]"), w: R.DTensor((8, 8), "float32", "mesh[0]", "S[0]")):
        with R.dataflow():
            y = R.matmul(x, w)
            R.output(y)
        z = R.exp(y)
        return z
''', roundtrip)
    # y leaves the dataflow block itself (z, in a later block, reads it)
    assert "y" in outputs_of_first_block(out)


def outputs_of_first_block(mod):
    blk = mod["main"].body.blocks[0]
    return [b.var.name_hint for b in blk.bindings if not isinstance(b.var, G.DataflowVar)]


# -- end to end: two workers against numpy --------------------------------------------------------


E2E = '''
    @R.function
    def main(x: R.Tensor((4, 8), "float32"), w1: R.DTensor((8, 8), "float32", "mesh[0]", "S[1]"), w2: R.DTensor((8, 8), "float32", "mesh[0]", "S[0]")):
        with R.dataflow():
            a = R.nn.relu(x)
            b = R.matmul(x, w1)
            t = (a, b)
            u = t[1]
            sp = R.split(u, indices_or_sections=2, axis=0)
            s0 = sp[0]
            s1 = sp[1]
            d = R.subtract(s0, s1)
            c = R.matmul(u, w2)
            R.output(t, d, c)
        return (t, d, c)
'''


def recorded_result(sig):
    if "fields" in sig:
        return tuple(recorded_result(f) for f in sig["fields"])
    return sig["placement"]


def test_tuples_end_to_end_on_two_workers():
    low = DistributedLowering(script.parse(M.module_text(E2E)))
    result = low.attrs["distributed"]["functions"]["main"]["result"]
    assert recorded_result(result) == (("R", "S[1]"), "S[1]", "R")
    ex = compiler.build(script.parse(M.module_text(E2E)))
    rng = np.random.default_rng(7)
    x, w1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((4, 8), (8, 8), (8, 8)))
    b = x @ w1
    sess = disco.ThreadedSession(2)
    try:
        (ta, tb), d, c = sess.load_module(ex)["main"](x, w1, w2)
        np.testing.assert_allclose(ta.fetch(), np.maximum(x, 0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tb.fetch(), b, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(d.fetch(), b[:2] - b[2:], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(c.fetch(), b @ w2, rtol=1e-4, atol=1e-4)
        # b is column-parallel: worker 1 holds columns 4..8 of it (and of d)
        np.testing.assert_allclose(tb.fetch_local(1), b[:, 4:], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(d.fetch_local(1), (b[:2] - b[2:])[:, 4:], rtol=1e-5, atol=1e-5)
    finally:
        sess.shutdown()

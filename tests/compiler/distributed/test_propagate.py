"""PropagateSharding: placements inferred forwards and backwards, the conversions it
inserts, errors. Expectations are derived by hand from Megatron-style tensor
parallelism (column-parallel then row-parallel matmuls need one all-reduce)."""
from __future__ import annotations

import pytest

from compiler import script
from compiler.distributed import PropagateSharding, describe
from compiler.ir import graph as G
from compiler.ir.errors import ShardingError
from compiler.ir.struct_info import DTensorStructInfo, TupleStructInfo

import _tp_models as M


def module(body: str, mesh=(2,)):
    return script.parse(M.module_text(body, mesh))


def propagate(body: str, roundtrip, mesh=(2,)):
    """PropagateSharding on `body` in a module on `mesh`; the result must round-trip."""
    out = PropagateSharding(module(body, mesh))
    roundtrip(out)
    return out


def bindings(mod, func="main"):
    return [b for blk in mod[func].body.blocks for b in blk.bindings]


def placements(mod, func="main") -> dict:
    f = mod[func]
    out = {p.name_hint: p.struct_info.placement_text for p in f.params}
    for b in bindings(mod, func):
        assert isinstance(b.var.struct_info, (DTensorStructInfo, TupleStructInfo)), b.var
        if isinstance(b.var.struct_info, DTensorStructInfo):
            out[b.var.name_hint] = b.var.struct_info.placement_text
    return out


def conversions(mod, func="main") -> list:
    """(source placement, target placement) of every redistribute, in order."""
    out = []
    for b in bindings(mod, func):
        if isinstance(b.value, G.Call) and b.value.op.name == "relax.dist.redistribute":
            out.append((b.value.args[0].struct_info.placement_text, b.value.attrs["placement"]))
    return out


def op_names(mod, func="main") -> list:
    return [b.value.op.name for b in bindings(mod, func) if isinstance(b.value, G.Call)]


# only the weights annotated: w1 column-parallel, w2 row-parallel
MEGATRON = M.mlp_weights_annotated(2, dim=8, hidden=16, act="relu")


def test_megatron_mlp_one_allreduce(roundtrip):
    out = PropagateSharding(script.parse(MEGATRON))
    roundtrip(out)
    p = placements(out)
    assert p["x"] == "R" and p["w1"] == "S[1]" and p["w2"] == "S[0]"
    assert p["h"] == "S[1]" and p["a"] == "S[1]"          # activations never gathered
    assert p["y"] == "P[sum]"
    assert conversions(out) == [("P[sum]", "R")]           # exactly one all-reduce
    ret = out["main"].ret_struct_info
    assert isinstance(ret, DTensorStructInfo) and ret.placement_text == "R"
    # every variable, parameters included, is a DTensor on the mesh
    for s in [v.struct_info for v in out["main"].params] + [b.var.struct_info for b in bindings(out)]:
        assert isinstance(s, DTensorStructInfo) and s.device_mesh == "mesh[0]"


def test_propagation_is_idempotent(roundtrip):
    once = PropagateSharding(script.parse(MEGATRON))
    twice = PropagateSharding(once)
    roundtrip(twice)
    assert placements(twice) == placements(once)
    assert conversions(twice) == conversions(once)


def test_backward_from_annotated_activation(roundtrip):
    mod = script.parse(M.mlp_activation_annotated(2, dim=8, hidden=16, act="silu", annotated="h2"))
    roundtrip(mod)                  # annotate_sharding prints and parses back
    out = PropagateSharding(mod)
    roundtrip(out)
    p = placements(out)
    assert (p["x"], p["w1"], p["w2"]) == ("R", "S[1]", "S[0]")   # inferred backwards / forwards
    assert p["h"] == "S[1]" and p["a"] == "S[1]" and p["y"] == "P[sum]"
    assert "h2" not in p                                           # annotation removed
    assert "relax.dist.annotate_sharding" not in op_names(out)
    assert conversions(out) == [("P[sum]", "R")]


def test_backward_from_one_weight_and_from_output(roundtrip):
    out = propagate('''
    @R.function
    def main(x: R.Tensor((4, 8), "float32"), w1: R.Tensor((8, 16), "float32"), w2: R.Tensor((16, 8), "float32")) -> R.Tensor((4, 8), "float32"):
        with R.dataflow():
            w1s = R.dist.annotate_sharding(w1, "mesh[0]", "S[1]")
            h = R.matmul(x, w1s)
            y = R.matmul(h, w2)
            R.output(y)
        return y
''', roundtrip)
    p = placements(out)
    assert (p["w1"], p["h"], p["w2"], p["y"]) == ("S[1]", "S[1]", "S[0]", "P[sum]")
    assert conversions(out) == [("P[sum]", "R")]

    # Only the result annotated (row-sharded): the batch dim flows back to x.
    out = propagate('''
    @R.function
    def main(x: R.Tensor((4, 8), "float32"), w: R.Tensor((8, 16), "float32")) -> R.DTensor((4, 16), "float32", "mesh[0]", "S[0]"):
        with R.dataflow():
            h = R.matmul(x, w)
            y = R.nn.relu(h)
            R.output(y)
        return y
''', roundtrip)
    p = placements(out)
    assert (p["x"], p["w"], p["h"], p["y"]) == ("S[0]", "R", "S[0]", "S[0]")
    assert conversions(out) == []


ATTENTION = '''
    @R.function
    def main(x: R.DTensor(("n", 64), "float32", "mesh[0]", "R"), wq: R.DTensor((64, 64), "float32", "mesh[0]", "S[1]"), wk: R.DTensor((64, 64), "float32", "mesh[0]", "S[1]"), wv: R.DTensor((64, 64), "float32", "mesh[0]", "S[1]"), wo: R.DTensor((64, 64), "float32", "mesh[0]", "S[0]")) -> R.Tensor(("n", 64), "float32"):
        n = T.int64()
        with R.dataflow():
            q = R.matmul(x, wq)
            k = R.matmul(x, wk)
            v = R.matmul(x, wv)
            q3 = R.permute_dims(R.reshape(q, R.shape([n, 4, 16])), axes=[1, 0, 2])
            k3 = R.permute_dims(R.reshape(k, R.shape([n, 4, 16])), axes=[1, 2, 0])
            v3 = R.permute_dims(R.reshape(v, R.shape([n, 4, 16])), axes=[1, 0, 2])
            s = R.multiply(R.matmul(q3, k3), R.const(0.25, "float32"))
            pr = R.nn.softmax(s, axis=-1)
            o = R.matmul(pr, v3)
            o2 = R.reshape(R.permute_dims(o, axes=[1, 0, 2]), R.shape([n, 64]))
            y = R.matmul(o2, wo)
            R.output(y)
        return y
'''


def test_attention_heads_sharded_one_allreduce(roundtrip):
    out = propagate(ATTENTION, roundtrip)
    p = placements(out)
    assert p["q"] == p["k"] == p["v"] == "S[1]"
    assert p["pr"] == "S[0]" and p["o"] == "S[0]"           # heads dim of (heads, n, n/16)
    assert p["o2"] == "S[1]" and p["y"] == "P[sum]"
    assert conversions(out) == [("P[sum]", "R")]


def llama(roundtrip, k: int):
    """The Llama layer annotated on its weights only (4 q heads, 2 kv heads of 16)."""
    out = PropagateSharding(script.parse(M.llama_weights_annotated(k)))
    roundtrip(out)
    return out


def test_llama_layer_two_allreduces(roundtrip):
    out = llama(roundtrip, 2)
    p = placements(out)
    assert p["attn"] == "P[sum]" and p["down"] == "P[sum]"
    assert p["x2"] == "R" and p["y"] == "R" and p["h2"] == "R"
    assert p["q"] == "S[1]" and p["k"] == "S[1]" and p["kr"] == "S[1]" and p["m"] == "S[1]"
    assert p["cos"] == "R" and p["g1"] == "R"
    assert conversions(out) == [("P[sum]", "R"), ("P[sum]", "R")]
    report = describe(out)
    assert [k for _, k, _ in report.collectives] == ["allreduce", "allreduce"]


def test_vocab_parallel_embedding_and_lm_head(roundtrip):
    out = propagate('''
    @R.function
    def main(ids: R.Tensor(("n",), "int64"), table: R.DTensor((32, 16), "float32", "mesh[0]", "S[0]"), g: R.Tensor((16,), "float32"), head: R.DTensor((16, 32), "float32", "mesh[0]", "S[1]")) -> R.DTensor(("n", 32), "float32", "mesh[0]", "R"):
        n = T.int64()
        with R.dataflow():
            e = R.take(table, ids, axis=0)
            h = R.nn.rms_norm(e, g, axes=[-1], epsilon=1e-5)
            logits = R.matmul(h, head)
            R.output(logits)
        return logits
''', roundtrip)
    p = placements(out)
    assert p["ids"] == "R" and p["e"] == "P[sum]"            # masked lookup, pending sum
    assert p["h"] == "R" and p["logits"] == "S[1]"
    assert conversions(out) == [("P[sum]", "R"), ("S[1]", "R")]   # all-reduce, all-gather
    report = describe(out)
    assert [k for _, k, _ in report.collectives] == ["allreduce", "allgather"]


def test_2x2_mesh(roundtrip):
    out = propagate('''
    @R.function
    def main(x: R.DTensor((8, 16), "float32", "mesh[0]", "S[0]R"), w: R.DTensor((16, 8), "float32", "mesh[0]", "RS[1]")):
        with R.dataflow():
            y = R.matmul(x, w)
            z = R.nn.gelu(y)
            R.output(z)
        return z
''', roundtrip, mesh=(2, 2))
    p = placements(out)
    assert p["y"] == "S[0]S[1]" and p["z"] == "S[0]S[1]"
    assert conversions(out) == []
    assert describe(out).local_shapes["z"] == (4, 4)

    # contraction sharded on mesh axis 1 only: Partial on that axis, all-reduced there
    out = propagate('''
    @R.function
    def main(x: R.DTensor((8, 16), "float32", "mesh[0]", "S[0]S[1]"), w: R.DTensor((16, 8), "float32", "mesh[0]", "RS[0]")) -> R.DTensor((8, 8), "float32", "mesh[0]", "S[0]R"):
        with R.dataflow():
            y = R.matmul(x, w)
            R.output(y)
        return y
''', roundtrip, mesh=(2, 2))
    assert placements(out)["y"] == "S[0]P[sum]"
    assert conversions(out) == [("S[0]P[sum]", "S[0]R")]
    rep = describe(out)
    # local y is (4, 8) float32 = 128 bytes; all-reduce over 2 moves 2*(1/2)*128 bytes
    assert [(k, b) for _, k, b in rep.collectives] == [("allreduce", 128)]


def test_reductions_and_softmax_over_sharded_dim(roundtrip):
    out = propagate('''
    @R.function
    def main(x: R.DTensor((4, 8), "float32", "mesh[0]", "S[1]")):
        with R.dataflow():
            s = R.sum(x, axis=[1], keepdims=False)
            mx = R.max(x, axis=[1], keepdims=True)
            mn = R.mean(x, axis=[0], keepdims=False)
            sm = R.nn.softmax(x, axis=-1)
            R.output(s, mx, mn, sm)
        return (s, mx, mn, sm)
''', roundtrip)
    p = placements(out)
    assert p["s"] == "P[sum]" and p["mx"] == "P[max]"
    assert p["mn"] == "S[0]"                      # mean over the unsharded dim stays sharded
    assert p["sm"] == "R"                         # softmax needs its axis whole
    assert ("S[1]", "R") in conversions(out)      # gather before softmax
    # results are never Partial: both converted before returning
    assert conversions(out).count(("P[sum]", "R")) == 1
    assert conversions(out).count(("P[max]", "R")) == 1


def test_reshape_maps_outer_factor_only(roundtrip):
    out = propagate('''
    @R.function
    def main(x: R.DTensor((4, 8), "float32", "mesh[0]", "S[1]"), y: R.DTensor((4, 8), "float32", "mesh[0]", "S[0]")):
        with R.dataflow():
            a = R.reshape(x, R.shape([4, 2, 4]))
            b = R.reshape(y, R.shape([32]))
            R.output(a, b)
        return (a, b)
''', roundtrip)
    p = placements(out)
    assert p["a"] == "S[1]"          # 8 -> (2, 4): sharded dim maps to the outer factor 2
    assert p["b"] == "S[0]"          # (4, 8) -> 32: the outer dim 4 maps to the merged dim
    assert conversions(out) == []


def test_call_tir_placements_from_access_patterns(roundtrip):
    from compiler.transform.legalize_ops import LegalizeOps
    plain = script.parse('''
@I.ir_module
class M:
    @R.function
    def main(x: R.Tensor((4, 8), "float32")):
        with R.dataflow():
            r = R.nn.relu(x)
            s = R.sum(r, axis=[1], keepdims=False)
            R.output(s)
        return s
''')
    text = LegalizeOps(plain).script().replace(
        'x: R.Tensor((4, 8), dtype="float32")', 'x: R.DTensor((4, 8), "float32", "mesh[0]", "S[{}]")')
    text = text.replace("class Module:", 'class Module:\n    I.module_global_infos({"mesh": '
                                         '[R.device_mesh((2,), I.Range(0, 2))]})', 1)
    for d, expect_r, expect_conv in ((0, "S[0]", []), (1, "S[1]", [("S[1]", "R")])):
        out = PropagateSharding(script.parse(text.replace("S[{}]", f"S[{d}]")))
        roundtrip(out)
        p = placements(out)
        assert p["r"] == expect_r            # elementwise program: spatial dims pass through
        # the reduction program reduces dim 1: sharded there it needs the dim gathered
        assert conversions(out) == expect_conv
        assert p["s"] == ("S[0]" if d == 0 else "R")


def test_error_not_divisible_names_variable_axis_and_sizes():
    mod = module('''
    @R.function
    def main(x: R.Tensor((4, 8), "float32"), w1: R.DTensor((8, 15), "float32", "mesh[0]", "S[1]")):
        with R.dataflow():
            h = R.matmul(x, w1)
            R.output(h)
        return h
''')
    with pytest.raises(ShardingError) as e:
        PropagateSharding(mod)
    msg = str(e.value)
    assert "'w1'" in msg and "S[1]" in msg and "15" in msg and "mesh[0]" in msg and "size 2" in msg


def test_error_contradicting_annotations():
    mod = module('''
    @R.function
    def main(x: R.Tensor((4, 8), "float32")):
        with R.dataflow():
            a = R.dist.annotate_sharding(x, "mesh[0]", "S[0]")
            b = R.dist.annotate_sharding(x, "mesh[0]", "S[1]")
            c = R.add(a, b)
            R.output(c)
        return c
''')
    with pytest.raises(ShardingError) as e:
        PropagateSharding(mod)
    msg = str(e.value)
    assert "'x'" in msg and "contradict" in msg and "S[0]" in msg and "S[1]" in msg


CHAINED = '''
    @R.function
    def main(x: R.Tensor((4, 8), "float32")):
        with R.dataflow():
            a = R.dist.annotate_sharding(x, "mesh[0]", "S[0]")
            b = R.dist.annotate_sharding(a, "mesh[0]", "{second}")
            c = R.nn.relu(b)
            R.output(c)
        return c
'''


def test_error_chained_annotations_that_contradict():
    # b annotates a, which is x annotated: both constrain x, so S[0] then S[1] is a
    # contradiction (not a silent conversion)
    with pytest.raises(ShardingError) as e:
        PropagateSharding(module(CHAINED.format(second="S[1]")))
    msg = str(e.value)
    assert "variable 'x'" in msg and "contradicting annotations" in msg
    assert "R.dist.annotate_sharding(x, 'mesh[0]', 'S[0]') says 'S[0]'" in msg
    assert "R.dist.annotate_sharding(a, 'mesh[0]', 'S[1]')" in msg and "says 'S[1]'" in msg
    assert "'a' is 'x' annotated" in msg


def test_chained_annotations_that_agree(roundtrip):
    out = propagate(CHAINED.format(second="S[0]"), roundtrip)
    assert placements(out) == {"x": "S[0]", "c": "S[0]"}
    assert conversions(out) == []


def test_error_partial_annotation_and_param_contradiction():
    mod = module('''
    @R.function
    def main(x: R.DTensor((4, 8), "float32", "mesh[0]", "S[0]")):
        with R.dataflow():
            a = R.dist.annotate_sharding(x, "mesh[0]", "R")
            R.output(a)
        return a
''')
    with pytest.raises(ShardingError, match=r"'x'.*contradict"):
        PropagateSharding(mod)
    mod = module('''
    @R.function
    def main(x: R.Tensor((4, 8), "float32")):
        with R.dataflow():
            a = R.dist.annotate_sharding(x, "mesh[0]", "P[sum]")
            R.output(a)
        return a
''')
    with pytest.raises(ShardingError, match=r"'x'.*Partial"):
        PropagateSharding(mod)


def test_annotate_and_redistribute_builder_and_script():
    from compiler import op
    from compiler.ir.struct_info import TensorStructInfo
    x = G.Var("x", TensorStructInfo((4, 8), "float32"))
    a = op.dist.annotate_sharding(x, "mesh[0]", "S[1]")
    assert a.struct_info == x.struct_info                    # identity on values
    r = op.dist.redistribute(x, "mesh[0]", "R")
    assert r.struct_info == DTensorStructInfo(x.struct_info, "mesh[0]", "R")
    with pytest.raises(ShardingError):
        op.dist.annotate_sharding(x, "mesh[0]", "Q[1]")


def test_gqa_with_more_devices_than_kv_heads_gathers_k_and_v(roundtrip):
    # 4 devices, 2 kv heads: wk/wv S[1] give each device half a head, which the head
    # reshape cannot keep split; k and v projections are gathered instead (an error
    # would be wrong: the annotations themselves divide evenly).
    out = llama(roundtrip, 4)
    conv = [c for c in conversions(out) if c[0] != "R"]      # R -> S is a free local slice
    assert sorted(conv) == [("P[sum]", "R")] * 2 + [("S[1]", "R")] * 2
    p = placements(out)
    assert p["q"] == "S[1]" and p["k"] == "R" and p["v"] == "R"
    # describe: the gathered k projection is (n, 32) float32 = 128n bytes, of which each
    # device receives 3/4; an all-reduce of the (n, 64) result moves 2*3/4*256n bytes
    rep = describe(out)
    assert sorted((k, b) for _, k, b in rep.collectives) == [
        ("allgather", "(n * 96)"), ("allgather", "(n * 96)"),
        ("allreduce", "(n * 384)"), ("allreduce", "(n * 384)")]


def test_annotated_result_gets_reduce_scatter_and_keeps_its_name(roundtrip):
    # y annotated row-sharded: the row-parallel matmul yields P[sum]; reduce-scatter
    # ((p-1)/p of y) beats making the matmul itself produce rows (gathering w2).
    out = propagate('''
    @R.function
    def main(x: R.Tensor((4, 8), "float32"), w1: R.DTensor((8, 16), "float32", "mesh[0]", "S[1]"), w2: R.DTensor((16, 8), "float32", "mesh[0]", "S[0]")):
        with R.dataflow():
            h = R.matmul(x, w1)
            y = R.matmul(h, w2)
            ys = R.dist.annotate_sharding(y, "mesh[0]", "S[0]")
            z = R.nn.relu(ys)
            R.output(z)
        return z
''', roundtrip)
    p = placements(out)
    assert p["y"] == "S[0]" and p["z"] == "S[0]" and p["h"] == "S[1]"
    assert conversions(out) == [("P[sum]", "S[0]")]
    assert [k for _, k, _ in describe(out).collectives] == ["reduce_scatter"]


def test_error_partial_type_on_a_value_no_operator_makes_partial():
    mod = module('''
    @R.function
    def main(x: R.DTensor((4, 8), "float32", "mesh[0]", "S[1]")):
        with R.dataflow():
            r: R.DTensor((4, 8), "float32", "mesh[0]", "P[sum]") = R.nn.relu(x)
            R.output(r)
        return r
''')
    with pytest.raises(ShardingError, match=r"'r'.*P\[sum\].*Partial"):
        PropagateSharding(mod)


def test_annotation_on_another_mesh_starts_a_pipeline_stage():
    mod = script.parse('''
@I.ir_module
class M:
    I.module_global_infos({"mesh": [R.device_mesh((2,), I.Range(0, 2)), R.device_mesh((2,), I.Range(2, 4))]})
    @R.function
    def main(x: R.DTensor((4, 8), "float32", "mesh[0]", "S[0]")):
        with R.dataflow():
            a = R.dist.annotate_sharding(R.nn.relu(x), "mesh[1]", "R")
            R.output(a)
        return a
''')
    # issue 17: a value annotated on another mesh crosses to it (a pipeline stage boundary)
    out = PropagateSharding(mod)
    conv = [(b.value.args[0].struct_info.device_mesh, b.value.attrs["device_mesh"], b.value.attrs["placement"])
            for b in bindings(out) if isinstance(b.value, G.Call) and b.value.op.name == "relax.dist.redistribute"]
    assert conv == [("mesh[0]", "mesh[1]", "R")]

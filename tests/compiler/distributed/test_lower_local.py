"""LowerToLocalView and DistributedLowering at the IR level: local shapes, the
collectives each conversion becomes, symbolic sharded dims, errors; every lowered
module round-trips through the script. Numerics are in tests/e2e/test_tp_*.py."""
from __future__ import annotations

import pytest

from compiler import script
from compiler.distributed.lower_local import LowerToLocalView
from compiler.distributed.lowering import DistributedLowering
from compiler.ir import graph as G
from compiler.ir import tir as T
from compiler.ir.errors import ShardingError
from compiler.ir.expr import IntImm, Var as SymVar
from compiler.ir.struct_info import DTensorStructInfo
from compiler.ir.visitor import post_order_visit

import _tp_models as M


# Megatron MLP as PropagateSharding leaves it: x (n, 8), hidden 16, one all-reduce
def mlp(k: int) -> str:
    return M.mlp(k, dim=8, hidden=16, act="relu")


def calls(func) -> list[G.Call]:
    found = []
    post_order_visit(func, lambda n: found.append(n) if isinstance(n, G.Call) and
                     isinstance(n.op, G.Op) else None)
    return found


def op_names(func) -> list[str]:
    return [c.op.name for c in calls(func)]


def shape_of(sinfo) -> tuple:
    return tuple(d.value if isinstance(d, IntImm) else d for d in sinfo.shape)


def no_dtensor(mod) -> bool:
    bad = []
    post_order_visit(mod["main"], lambda n: bad.append(n) if isinstance(getattr(n, "struct_info", None),
                                                                       DTensorStructInfo) else None)
    return not bad


def test_megatron_mlp_one_allreduce_and_local_shapes(roundtrip):
    mod = script.parse(mlp(2))
    low = LowerToLocalView(mod)
    roundtrip(low)
    f = low["main"]
    assert no_dtensor(low)
    assert op_names(f).count("relax.ccl.allreduce") == 1
    assert [c for c in op_names(f) if c.startswith("relax.ccl.")] == ["relax.ccl.allreduce"]
    x, w1, w2 = f.params
    assert shape_of(w1.struct_info) == (8, 8) and shape_of(w2.struct_info) == (8, 8)
    n = x.struct_info.shape[0]
    assert isinstance(n, SymVar) and shape_of(x.struct_info) == (n, 8)
    ar = next(c for c in calls(f) if c.op.name == "relax.ccl.allreduce")
    assert ar.attrs["op"] == "sum" and tuple(ar.attrs["mesh_shape"]) == (2,)
    # the activations stay sharded: the hidden layer is (n, 16 / 2) on each worker
    h = f.body.blocks[0].bindings[0].var
    assert shape_of(h.struct_info) == (n, 8)


def test_four_way_split_divides_by_four(roundtrip):
    low = LowerToLocalView(script.parse(mlp(4)))
    roundtrip(low)
    assert shape_of(low["main"].params[1].struct_info) == (8, 4)


@pytest.mark.parametrize("src,dst,ops,local", [
    ("P[sum]", "R", ["relax.ccl.allreduce"], (8, 12)),
    ("S[0]", "R", ["relax.ccl.allgather"], (8, 12)),
    ("S[1]", "R", ["relax.ccl.allgather"], (8, 12)),
    ("R", "S[1]", ["relax.ccl.local_slice"], (8, 6)),
    ("P[sum]", "S[0]", ["relax.ccl.reduce_scatter"], (4, 12)),
    ("S[0]", "S[1]", ["relax.ccl.allgather", "relax.ccl.local_slice"], (8, 6)),
    ("S[1]", "S[1]", [], (8, 6)),
])
def test_redistribute_becomes_collectives(roundtrip, src, dst, ops, local):
    low = LowerToLocalView(script.parse(M.redistribute(src, dst)))
    roundtrip(low)
    f = low["main"]
    assert [c for c in op_names(f) if c.startswith("relax.")] == ops
    assert shape_of(f.ret_struct_info) == local


def test_2x2_mesh_gathers_each_axis(roundtrip):
    low = LowerToLocalView(script.parse(M.redistribute("S[0]S[1]", "RR", mesh=(2, 2))))
    roundtrip(low)
    f = low["main"]
    assert shape_of(f.params[0].struct_info) == (4, 6)
    gathers = [c for c in calls(f) if c.op.name == "relax.ccl.allgather"]
    # last mesh axis first: dim 1 over mesh axis 1, then dim 0 over mesh axis 0
    assert [(c.attrs["axis"], c.attrs["mesh_axis"]) for c in gathers] == [(1, 1), (0, 0)]


def test_symbolic_sharded_dim_gets_a_local_symbol(roundtrip):
    src = M.redistribute("S[0]", "R", shape=("n", 8), unary="R.exp")
    low = LowerToLocalView(script.parse(src))
    roundtrip(low)
    f = low["main"]
    n_local = f.params[0].struct_info.shape[0]
    assert isinstance(n_local, SymVar) and n_local.name == "n_local"
    # the gathered result is 2 * n_local rows
    ret = f.ret_struct_info.shape[0]
    assert str(script.parse(low.script())["main"].ret_struct_info.shape[0]) == str(ret)
    assert not isinstance(ret, SymVar)


def test_symbolic_dim_bound_whole_elsewhere_is_divided(roundtrip):
    src = M.redistribute("R", "S[0]", shape=("n", 8))
    low = LowerToLocalView(script.parse(src))
    roundtrip(low)
    f = low["main"]
    n = f.params[0].struct_info.shape[0]
    assert isinstance(n, SymVar) and n.name == "n"
    assert shape_of(f.ret_struct_info)[1] == 8
    assert "R.Tensor((n // 2, 8)" in low.script()


def test_vocab_parallel_take_is_masked(roundtrip):
    src = '''
@I.ir_module
class M:
    I.module_global_infos({"mesh": [R.device_mesh((2,), I.Range(0, 2))]})
    @R.function
    def main(ids: R.DTensor((5,), "int64", "mesh[0]", "R"), table: R.DTensor((16, 4), "float32", "mesh[0]", "S[0]")) -> R.DTensor((5, 4), "float32", "mesh[0]", "R"):
        with R.dataflow():
            e: R.DTensor((5, 4), "float32", "mesh[0]", "P[sum]") = R.take(table, ids, axis=0)
            y: R.DTensor((5, 4), "float32", "mesh[0]", "R") = R.dist.redistribute(e, "mesh[0]", "R")
            R.output(y)
        return y
'''
    low = LowerToLocalView(script.parse(src))
    roundtrip(low)
    assert op_names(low["main"]) == ["relax.ccl.masked_take", "relax.ccl.allreduce"]


def test_indivisible_static_dim_names_the_variable():
    with pytest.raises(ShardingError, match=r"parameter 'x'.*7.*not divisible by the 2 devices"):
        LowerToLocalView(script.parse(M.redistribute("S[0]", "R", shape=(7, 4))))


def test_mismatched_local_operator_is_an_error():
    # relu cannot turn S[1] into S[0]: the placements contradict the operator's rule
    src = '''
@I.ir_module
class M:
    I.module_global_infos({"mesh": [R.device_mesh((2,), I.Range(0, 2))]})
    @R.function
    def main(x: R.DTensor((8, 4), "float32", "mesh[0]", "S[1]")) -> R.DTensor((8, 4), "float32", "mesh[0]", "S[0]"):
        with R.dataflow():
            y: R.DTensor((8, 4), "float32", "mesh[0]", "S[0]") = R.nn.relu(x)
            R.output(y)
        return y
'''
    with pytest.raises(ShardingError, match=r"variable 'y'.*\(8, 2\).*\(4, 4\)"):
        LowerToLocalView(script.parse(src))


def test_distributed_lowering_records_placements(roundtrip):
    low = DistributedLowering(script.parse(mlp(2)))
    roundtrip(low)
    info = low.attrs["distributed"]
    assert tuple(info["mesh_shape"]) == (2,)
    params = info["functions"]["main"]["params"]
    assert [(p["name"], p["placement"]) for p in params] == [("x", "R"), ("w1", "S[1]"), ("w2", "S[0]")]
    assert tuple(params[1]["shape"]) == (8, 16)
    assert info["functions"]["main"]["result"]["placement"] == "R"
    # a second run (or a module without DTensors) is left alone
    assert DistributedLowering(low) is low


def test_build_metadata_has_placements():
    import compiler
    ex = compiler.build(script.parse(mlp(2)))
    dist = ex.metadata["distributed"]
    assert dist["mesh_shape"] == [2]
    assert [p["placement"] for p in dist["functions"]["main"]["params"]] == ["R", "S[1]", "S[0]"]
    assert dist["functions"]["main"]["params"][0]["shape"] == ["n", 8]


@pytest.mark.parametrize("name,src", [
    ("attention", M.attention(2)), ("llama", M.llama(2)), ("vocab", M.vocab(4)),
    ("mesh2x2", M.mesh2x2()), ("conversions", M.conversions(4)), ("rows", M.rows(2)),
])
def test_lowered_models_print_and_parse_back(roundtrip, name, src):
    low = DistributedLowering(script.parse(src))
    roundtrip(low)
    assert no_dtensor(low)
    assert not [n for n in op_names(low["main"]) if n.startswith("relax.dist.")]


# -- R.call_tir: the local copy of the tensor program ------------------------------------------

def lowered(src: str):
    return DistributedLowering(script.parse(src))


def collectives(mod) -> list[str]:
    return [n for n in op_names(mod["main"]) if n.startswith("relax.ccl.")]


def call_tir_callees(mod) -> list[str]:
    return [c.args[0].name_hint for c in calls(mod["main"]) if c.op.name == "relax.call_tir"]


def buffer_shapes(prim) -> list[tuple]:
    return [tuple(d.value if isinstance(d, IntImm) else d.name for d in b.shape)
            for b in prim.params if isinstance(b, T.Buffer)]


def loop_extents(prim) -> list:
    found = []
    post_order_visit(prim.body, lambda n: found.append(
        n.extent.value if isinstance(n.extent, IntImm) else n.extent.name)
        if isinstance(n, T.For) else None)
    return sorted(found, key=str)


@pytest.mark.parametrize("k", [2, 4])
def test_column_sharded_weight_gets_local_program(k, roundtrip):
    low = lowered(M.seed_calltir(k, x="R", w="S[1]"))
    roundtrip(low)
    assert call_tir_callees(low) == ["mm_local"]
    assert buffer_shapes(low["mm_local"]) == [("n", 128), (128, 64 // k), ("n", 64 // k)]
    assert loop_extents(low["mm_local"]) == sorted([128, 64 // k, "n"], key=str)
    assert buffer_shapes(low["mm"]) == [("n", 128), (128, 64), ("n", 64)]   # original kept
    call = next(c for c in (b.value for b in low["main"].body.blocks[0].bindings)
                if isinstance(c, G.Call) and c.op.name == "relax.call_tir")
    assert [getattr(d, "value", None) for d in call.sinfo_args[0].shape][1] == 64 // k
    assert collectives(low) == []


def test_row_sharded_symbolic_rows_keep_the_program(roundtrip):
    # only the symbolic row count is split: the program binds n from the local buffer
    low = lowered(M.seed_calltir(2, x="S[0]", w="R"))
    roundtrip(low)
    assert call_tir_callees(low) == ["mm"]
    x = low["main"].params[0]
    assert x.struct_info.shape[0].name == "n_local"
    assert collectives(low) == []


def test_sharded_contraction_dim_is_a_partial_sum(roundtrip):
    low = lowered(M.seed_calltir(2, x="S[1]", w="S[0]"))
    roundtrip(low)
    assert call_tir_callees(low) == ["mm_local"]
    assert buffer_shapes(low["mm_local"]) == [("n", 64), (64, 64), ("n", 64)]
    assert 64 in loop_extents(low["mm_local"]) and 128 not in loop_extents(low["mm_local"])
    assert collectives(low) == ["relax.ccl.allreduce"]


def test_two_placements_two_local_copies(roundtrip):
    src = M.module_text('''
    @T.prim_func
    def mm(X: T.Buffer((8, 16), "float32"), W: T.Buffer((16, 8), "float32"), Y: T.Buffer((8, 8), "float32")):
        for i, j, k in T.grid(8, 8, 16):
            with T.block("Y"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    Y[vi, vj] = T.float32(0)
                Y[vi, vj] = Y[vi, vj] + X[vi, vk] * W[vk, vj]

    @R.function
    def main(X: R.DTensor((8, 16), "float32", "mesh[0]", "R"), W: R.DTensor((16, 8), "float32", "mesh[0]", "S[1]"), V: R.DTensor((16, 8), "float32", "mesh[0]", "S[0]")):
        with R.dataflow():
            a = R.call_tir(M.mm, (X, W), R.Tensor((8, 8), "float32"))
            b = R.call_tir(M.mm, (X, V), R.Tensor((8, 8), "float32"))
            c = R.call_tir(M.mm, (X, W), R.Tensor((8, 8), "float32"))
            R.output(a, b, c)
        return (a, b, c)
''')
    low = lowered(src)
    roundtrip(low)
    names = call_tir_callees(low)
    assert names[0] == names[2] != names[1] and set(names) == {"mm_local", "mm_local_1"}
    by_w = {tuple(buffer_shapes(low[n])[1]) for n in names}
    assert by_w == {(16, 4), (8, 8)}     # W column split; V (via X) rows split to 8


@pytest.mark.parametrize("body,why", [
    ("Y[vi, vj] = X[vi, vj] + T.Cast(\"float32\", vj)", "arithmetic"),
    ("Y[vi, vj] = X[vi, vj] * T.float32(0.5) + T.Cast(\"float32\", 64)", "extent 64"),
])
def test_global_index_or_extent_in_arithmetic_is_an_error(body, why):
    src = M.module_text(f'''
    @T.prim_func
    def f(X: T.Buffer((8, 64), "float32"), Y: T.Buffer((8, 64), "float32")):
        for i, j in T.grid(8, 64):
            with T.block("Y"):
                vi, vj = T.axis.remap("SS", [i, j])
                {body}

    @R.function
    def main(X: R.DTensor((8, 64), "float32", "mesh[0]", "S[1]")):
        with R.dataflow():
            y = R.call_tir(M.f, (X,), R.Tensor((8, 64), "float32"))
            R.output(y)
        return y
''')
    with pytest.raises(ShardingError, match=why) as e:
        lowered(src)
    assert "'f'" in str(e.value) and "S[1]" in str(e.value)


def test_non_sum_reduction_over_a_sharded_dim_is_gathered_first(roundtrip):
    # a max over k is not a sum: PropagateSharding keeps k replicated (all-gather)
    src = M.module_text('''
    @T.prim_func
    def rowmax(X: T.Buffer((8, 16), "float32"), Y: T.Buffer((8,), "float32")):
        for i, k in T.grid(8, 16):
            with T.block("Y"):
                vi, vk = T.axis.remap("SR", [i, k])
                with T.init():
                    Y[vi] = T.float32(-1e30)
                Y[vi] = T.max(Y[vi], X[vi, vk])

    @R.function
    def main(X: R.DTensor((8, 16), "float32", "mesh[0]", "S[1]")):
        with R.dataflow():
            y = R.call_tir(M.rowmax, (X,), R.Tensor((8,), "float32"))
            R.output(y)
        return y
''')
    low = lowered(src)
    roundtrip(low)
    assert collectives(low) == ["relax.ccl.allgather"]
    assert call_tir_callees(low) == ["rowmax"]


@pytest.mark.parametrize("x,w,result,conv", [
    ("R", "S[1]", "S[1]", []),                         # spatial column dim: stays split
    ("S[0]", "R", "S[0]", []),                         # spatial (symbolic) row dim
    ("S[1]", "S[0]", "P[sum]", [("P[sum]", "R")]),     # summed dim: partial, then all-reduce
])
def test_propagation_places_call_tir_from_its_accesses(roundtrip, x, w, result, conv):
    from compiler.distributed import PropagateSharding
    out = PropagateSharding(script.parse(M.seed_calltir(2, x=x, w=w)))
    roundtrip(out)
    binds = {b.var.name_hint: b for blk in out["main"].body.blocks for b in blk.bindings}
    assert binds["lv0"].var.struct_info.placement_text == result
    got = [(b.value.args[0].struct_info.placement_text, b.value.attrs["placement"])
           for b in binds.values() if isinstance(b.value, G.Call) and
           b.value.op.name == "relax.dist.redistribute"]
    assert got == conv


def test_sum_with_nonzero_init_is_not_partial(roundtrip):
    # Y = 1 + sum_k: partial sums would count the 1 on every device -> k must be gathered
    src = M.seed_calltir(2, x="S[1]", w="S[0]").replace("Y[vi, vj] = T.float32(0)",
                                                         "Y[vi, vj] = T.float32(1)")
    low = lowered(src)
    roundtrip(low)
    assert collectives(low) == ["relax.ccl.allgather", "relax.ccl.allgather"]
    assert call_tir_callees(low) == ["mm"]


def test_symbolic_size_of_a_sharded_and_an_unsharded_dim_is_an_error():
    # n sizes the sharded rows of X and the unsharded columns of Y: the local program
    # would bind n to the local row count and shrink Y's columns too
    src = M.module_text('''
    @T.prim_func
    def outer(X: T.Buffer(("n",), "float32"), Y: T.Buffer(("n", "n"), "float32")):
        n = T.int64()
        for i, j in T.grid(n, n):
            with T.block("Y"):
                vi, vj = T.axis.remap("SS", [i, j])
                Y[vi, vj] = X[vi]

    @R.function
    def main(X: R.DTensor(("n",), "float32", "mesh[0]", "S[0]")):
        n = T.int64()
        with R.dataflow():
            y = R.call_tir(M.outer, (X,), R.Tensor((n, n), "float32"))
            R.output(y)
        return y
''')
    with pytest.raises(ShardingError, match="also sizes the unsharded dim 1 of buffer 'Y'") as e:
        lowered(src)
    assert "'outer'" in str(e.value)

"""structural_equal / structural_hash / assert_structural_equal on every node kind.

Modules are built by hand (no builder), twice with fresh variables, so equality
must come from alpha-equivalence and not from shared objects.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from compiler.ir import (Attrs, BindingBlock, Call, Constant, DataflowBlock, DataflowVar, Function,
                         FuncStructInfo, GlobalVar, IRModule, MatchCast, Op, PrimFunc, SeqExpr,
                         ShapeExpr, ShapeStructInfo, TensorStructInfo, TupleStructInfo, Tuple, Var,
                         VarBinding, assert_structural_equal, structural_equal, structural_hash)
from compiler.ir import expr as E
from compiler.ir import tir as T
from compiler.ir.structural import StructuralMismatch


def tsi(*shape, dtype="float32"):
    return TensorStructInfo(tuple(shape), dtype)


def graph_func(size="n", op2="relax.multiply", swap=False, const=1.0, attrs=None):
    """main(x: (n, 4), w: (4, 4)): lv0 = add(x, x); lv1 = op2(lv0, w); gv = lv1; return gv."""
    n = E.Var(size)
    x, w = Var("x", tsi(n, 4)), Var("w", tsi(4, 4))
    lv0 = DataflowVar("a", tsi(n, 4))
    lv1 = DataflowVar("b", tsi(n, 4))
    gv = Var("out", tsi(n, 4))
    c = Constant(np.full((4,), const, "float32"), tsi(4))
    args = (w, lv0) if swap else (lv0, w)
    block = DataflowBlock((
        VarBinding(lv0, Call(Op("relax.add"), (x, x), struct_info=tsi(n, 4))),
        VarBinding(lv1, Call(Op(op2), args, struct_info=tsi(n, 4))),
        VarBinding(gv, Call(Op("relax.add"), (lv1, c), struct_info=tsi(n, 4))),
    ))
    body = SeqExpr((block,), gv, tsi(n, 4))
    return Function((x, w), body, tsi(n, 4), Attrs(attrs or {"global_symbol": "main"}))


def matmul(names=("i", "j", "k"), swap_index=False, size="n"):
    """C[i, j] += A[i, k] * B[k, j] with A: (n, 8), B: (8, 16)."""
    n = E.Var(size)
    A = T.Buffer("A", (n, 8))
    B = T.Buffer("B", (8, 16))
    C = T.Buffer("C", (n, 16))
    li, lj, lk = (E.Var("l" + s) for s in names)
    vi, vj, vk = (E.Var("v" + s) for s in names)
    a_idx = (vk, vi) if swap_index else (vi, vk)
    update = T.BufferStore(C, C[vi, vj] + A[a_idx] * B[vk, vj], (vi, vj))
    block = T.Block("C", (T.IterVar(vi, T.Range(E.IntImm(0), n), "S"),
                          T.IterVar(vj, T.Range(E.IntImm(0), E.IntImm(16)), "S"),
                          T.IterVar(vk, T.Range(E.IntImm(0), E.IntImm(8)), "R")),
                    update, init=T.BufferStore(C, E.FloatImm(0.0), (vi, vj)))
    realize = T.BlockRealize((li, lj, lk), E.IntImm(1, "bool"), block)
    loops = T.For(li, E.IntImm(0), n, "serial",
                  T.For(lj, E.IntImm(0), E.IntImm(16), "serial",
                        T.For(lk, E.IntImm(0), E.IntImm(8), "serial", realize)))
    return PrimFunc((A, B, C), loops, Attrs({"global_symbol": "matmul"}))


def module(**kw):
    return IRModule.from_dict({"main": graph_func(**kw), "matmul": matmul()})


def check_equal(a, b, map_free_vars=False):
    assert structural_equal(a, b, map_free_vars)
    assert structural_equal(b, a, map_free_vars)
    assert structural_hash(a, map_free_vars) == structural_hash(b, map_free_vars)
    assert_structural_equal(a, b, map_free_vars)


def check_differ(a, b, where=None):
    assert not structural_equal(a, b)
    assert not structural_equal(b, a)
    with pytest.raises(AssertionError) as info:
        assert_structural_equal(a, b)
    if where is not None:
        assert str(info.value).startswith(where), str(info.value)
    return str(info.value)


def test_alpha_equivalent_functions_are_equal_and_hash_alike(roundtrip):
    a, b = graph_func("n"), graph_func("m")
    check_equal(a, b)
    mod = module()
    check_equal(mod, module())
    roundtrip(mod)


def test_different_operator_reports_path():
    msg = check_differ(graph_func(), graph_func(op2="relax.subtract"),
                       "body.blocks[0].bindings[1].value.op.name")
    assert "'relax.multiply' vs 'relax.subtract'" in msg


def test_swapped_arguments_report_path_in_module():
    a, b = module(), module(swap=True)
    check_differ(a, b, "main.body.blocks[0].bindings[1].value.args[0]: DataflowVar a vs Var w")


def test_constants_compare_by_value():
    check_equal(graph_func(const=1.0), graph_func(const=1.0))
    check_differ(graph_func(const=1.0), graph_func(const=2.0), "body.blocks[0].bindings[2].value.args[1].data")
    c32 = Constant(np.zeros(3, "float32"))
    check_differ(c32, Constant(np.zeros(3, "float16")), "data: array float32[3] vs float16[3]")
    check_differ(c32, Constant(np.zeros(4, "float32")))


def test_attrs_and_purity_matter():
    check_differ(graph_func(), graph_func(attrs={"global_symbol": "other"}), "attrs['global_symbol']")
    f = graph_func()
    from dataclasses import replace
    check_differ(f, replace(f, is_pure=False), "is_pure")


def test_wrong_variable_use_is_detected():
    # f(x, y) = x  vs  f(x, y) = y: same shape, different binding positions.
    def f(return_first):
        x, y = Var("x", tsi(4)), Var("y", tsi(4))
        out = x if return_first else y
        return Function((x, y), SeqExpr((), out, tsi(4)), tsi(4))
    check_equal(f(True), f(True))
    check_differ(f(True), f(False), "body.body: Var x vs Var y")


def test_dataflow_var_is_not_var():
    def f(cls):
        x = Var("x", tsi(4))
        v = cls("v", tsi(4))
        block = DataflowBlock((VarBinding(v, Call(Op("relax.add"), (x, x), struct_info=tsi(4))),))
        return Function((x,), SeqExpr((block,), v, tsi(4)), tsi(4))
    check_equal(f(DataflowVar), f(DataflowVar))
    check_differ(f(DataflowVar), f(Var))


def test_binding_block_kind_matters():
    x = Var("x", tsi(4))
    b = (VarBinding(Var("y", tsi(4)), x),)
    check_differ(DataflowBlock(b), BindingBlock(b))


def test_free_vars_need_identity_unless_mapped():
    n, m = E.Var("n"), E.Var("m")
    check_equal(tsi(n, 4), tsi(n, 4))
    msg = check_differ(tsi(n, 4), tsi(m, 4), "shape[0]")
    assert "Var n vs Var m" in msg
    check_equal(tsi(n, 4), tsi(m, 4), map_free_vars=True)
    # Mapping is consistent: (n, n) is not (n, m) even with map_free_vars.
    assert not structural_equal(tsi(n, n), tsi(n, m), map_free_vars=True)
    assert structural_equal(tsi(n, n), tsi(m, m), map_free_vars=True)


def test_symbolic_dims_are_defined_by_params():
    # Consistent use of the param's size var elsewhere, versus a foreign free var.
    def f(foreign=None):
        n = E.Var("n")
        x = Var("x", tsi(n, 4))
        out = Var("y", tsi(foreign or n, 4))
        blk = BindingBlock((VarBinding(out, Call(Op("relax.add"), (x, x), struct_info=tsi(foreign or n, 4))),))
        return Function((x,), SeqExpr((blk,), out, tsi(n, 4)), tsi(n, 4))
    check_equal(f(), f())
    m = E.Var("m")
    check_differ(f(), f(foreign=m))


def test_match_cast_defines_symbolic_vars():
    def f(name):
        k = E.Var(name)
        x = Var("x", TensorStructInfo(None, "float32", 2))
        y = Var("y", tsi(k, 2))
        mc = MatchCast(y, x, tsi(k, 2))
        shape = ShapeExpr((k * 2,), ShapeStructInfo((k * 2,)))
        z = Var("z", ShapeStructInfo((k * 2,)))
        blk = BindingBlock((mc, VarBinding(z, shape)))
        return Function((x,), SeqExpr((blk,), z, ShapeStructInfo((k * 2,))), ShapeStructInfo((k * 2,)))
    check_equal(f("k"), f("q"))


def test_tir_matmul_alpha_equivalent(roundtrip):
    a, b = matmul(("i", "j", "k")), matmul(("x", "y", "z"), size="m")
    check_equal(a, b)
    roundtrip(IRModule.from_dict({"matmul": a}))


def test_tir_matmul_swapped_index_differs():
    msg = check_differ(matmul(), matmul(swap_index=True), "body.body.body.body.block.body.value")
    assert msg.endswith("value.b.a.indices[0]: Var vi vs Var vk")


def test_tir_buffer_properties_matter():
    f = matmul()
    A = f.params[0]
    A16 = T.Buffer("A", A.shape, "float16")
    g = PrimFunc((A16,) + f.params[1:], f.body, f.attrs)
    check_differ(f, g, "params[0]: Buffer A vs Buffer A: dtype/scope")


def test_tir_let_and_allocate_bind_vars():
    def f(name):
        n = E.Var("n")
        A = T.Buffer("A", (n,))
        v = E.Var(name)
        tmp = T.Buffer("tmp", (E.IntImm(1),), scope="local")
        body = T.Allocate(tmp, T.LetStmt(v, n * 2, T.SeqStmt((
            T.BufferStore(tmp, E.FloatImm(1.0), (E.IntImm(0),)),
            T.BufferStore(A, tmp[0], (v - n,)),
        ))))
        return PrimFunc((A,), body)
    check_equal(f("a"), f("b"))


def test_scalar_params_define_size_vars():
    def f():
        n = E.Var("n")
        A = T.Buffer("A", (n,))
        i = E.Var("i")
        return PrimFunc((A, n), T.For(i, E.IntImm(0), n, "serial",
                                      T.BufferStore(A, E.FloatImm(0.0), (i,))))
    check_equal(f(), f())


def test_module_function_order_does_not_matter_but_names_do():
    f, g = graph_func(), matmul()
    check_equal(IRModule.from_dict({"main": f, "mm": g}), IRModule.from_dict({"mm": matmul(), "main": graph_func()}))
    msg = check_differ(IRModule.from_dict({"main": f}), IRModule.from_dict({"main": f, "mm": g}))
    assert "only in second ['mm']" in msg
    check_differ(IRModule.from_dict({"main": f}, attrs={"a": 1}), IRModule.from_dict({"main": f}), "attrs")
    check_differ(IRModule.from_dict({"main": f}, global_infos={"mesh": (1, 2)}),
                 IRModule.from_dict({"main": f}, global_infos={"mesh": (1, 3)}), "global_infos['mesh'][1]")


def test_each_function_of_a_module_binds_its_own_size_vars():
    """Two functions sharing one `n` object (a pipeline's stage programs made from one
    function) equal two with an `n` each (as printed and parsed back): each function
    binds its sizes itself; within a function, a mismatch is still found."""
    def module(shared: bool, cols: int = 4):
        n = E.Var("n")
        funcs = []
        for name in ("f", "g"):
            m = n if shared else E.Var("n")
            x = Var("x", tsi(m, 4))
            y = Var("y", tsi(m, cols if name == "g" else 4))
            body = SeqExpr((BindingBlock((VarBinding(y, Call(Op("relax.negative"), (x,), struct_info=y.struct_info)),)),),
                           y, y.struct_info)
            funcs.append((name, Function((x,), body, y.struct_info, Attrs({"global_symbol": name}))))
        return IRModule(tuple(funcs))
    assert structural_equal(module(True), module(False))
    assert structural_hash(module(True)) == structural_hash(module(False))
    assert not structural_equal(module(True), module(False, cols=5))


def test_global_var_and_call_attrs():
    x = Var("x", tsi(4))
    c1 = Call(GlobalVar("f"), (x,), Attrs({"axis": 1}))
    check_equal(c1, Call(GlobalVar("f"), (x,), Attrs({"axis": 1})))
    check_differ(c1, Call(GlobalVar("g"), (x,), Attrs({"axis": 1})))
    check_differ(c1, Call(GlobalVar("f"), (x,), Attrs({"axis": 2})), "attrs['axis']")
    check_differ(Call(Op("relax.x"), (x,), sinfo_args=(tsi(4),)), Call(Op("relax.x"), (x,), sinfo_args=(tsi(5),)))


def test_func_struct_info_binds_its_params():
    n, m = E.Var("n"), E.Var("m")
    check_equal(FuncStructInfo((tsi(n),), tsi(n * 2)), FuncStructInfo((tsi(m),), tsi(m * 2)))
    check_differ(FuncStructInfo((tsi(n),), tsi(n * 2)), FuncStructInfo((tsi(m),), tsi(m * 3)))


def test_scalars_tuples_arrays():
    check_equal((1, "a", 2.5), (1, "a", 2.5))
    check_differ(1, True)
    check_differ((1, 2), (1, 2, 3), "<root>: length 2 vs 3")
    check_equal(float("nan"), float("nan"))
    check_equal(np.arange(6).reshape(2, 3), np.arange(6).reshape(2, 3))
    check_differ(np.arange(6).reshape(2, 3), np.arange(6).reshape(3, 2))
    check_equal(Attrs({"a": 1, "b": (1, 2)}), Attrs({"b": (1, 2), "a": 1}))
    check_equal(TupleStructInfo((tsi(1), tsi(2))), TupleStructInfo((tsi(1), tsi(2))))
    check_differ(E.IntImm(1), E.IntImm(1, "int32"))
    x = Var("x", tsi(4))
    check_equal(Tuple((x, x)), Tuple((x, x)))


def test_hash_differs_for_different_programs():
    hashes = {structural_hash(graph_func()), structural_hash(graph_func(op2="relax.subtract")),
              structural_hash(graph_func(swap=True)), structural_hash(matmul()),
              structural_hash(matmul(swap_index=True))}
    assert len(hashes) == 5


def test_mismatch_error_type_carries_path():
    with pytest.raises(StructuralMismatch) as info:
        assert_structural_equal(module(), module(swap=True))
    assert info.value.path == "main.body.blocks[0].bindings[1].value.args[0]"


def test_sibling_loops_may_share_a_loop_var():
    def f(shared):
        A = T.Buffer("A", (E.IntImm(4),))
        i = E.Var("i")
        j = i if shared else E.Var("j")
        store = lambda v: T.BufferStore(A, E.FloatImm(0.0), (v,))
        return PrimFunc((A,), T.SeqStmt((T.For(i, E.IntImm(0), E.IntImm(4), "serial", store(i)),
                                         T.For(j, E.IntImm(0), E.IntImm(4), "serial", store(j)))))
    check_equal(f(True), f(False))



def _index_exprs(depth=3):
    leaf = st.one_of(st.sampled_from([0, 1, 2]), st.integers(0, 5).map(lambda v: ("c", v)))
    return st.recursive(leaf, lambda ch: st.tuples(st.sampled_from(["+", "*", "//", "%"]), ch, ch),
                        max_leaves=8)


def _build_index(t, vs):
    if isinstance(t, int):
        return vs[t]
    if t[0] == "c":
        return E.IntImm(t[1])
    cls = {"+": E.Add, "*": E.Mul, "//": E.FloorDiv, "%": E.FloorMod}[t[0]]
    return cls(_build_index(t[1], vs), _build_index(t[2], vs))


def _loop_func(t, size):
    n = E.Var(size)
    A = T.Buffer("A", (n,))
    i, j, k = E.Var("i"), E.Var("j"), E.Var("k")
    store = T.BufferStore(A, E.FloatImm(1.0), (_build_index(t, (i, j, k)),))
    body = store
    for v in (k, j, i):
        body = T.For(v, E.IntImm(0), n, "serial", body)
    return PrimFunc((A,), body)


@settings(max_examples=100, deadline=None)
@given(_index_exprs(), _index_exprs())
def test_hash_is_consistent_with_equality(t1, t2):
    a, a2, b = _loop_func(t1, "n"), _loop_func(t1, "m"), _loop_func(t2, "n")
    check_equal(a, a2)
    if structural_equal(a, b):
        assert structural_hash(a) == structural_hash(b)
    if t1 != t2:
        assert not structural_equal(a, b)

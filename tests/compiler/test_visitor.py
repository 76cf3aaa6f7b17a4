"""ExprVisitor / ExprMutator / StmtExprVisitor / StmtExprMutator / post_order_visit, and the
functions over tensor programs: walk, rewrite, substitute_vars, replace_node, vars_in."""
import pytest

from compiler.ir import (Call, DataflowBlock, DataflowVar, ExprMutator, ExprVisitor, Function, Op,
                         PrimFunc, SeqExpr, StmtExprMutator, StmtExprVisitor, TensorStructInfo, Var,
                         VarBinding, assert_structural_equal, post_order_visit)
from compiler.ir import expr as E
from compiler.ir import tir as T
from compiler.ir.visitor import replace_node, rewrite, substitute_vars, vars_in, walk


def tsi(*shape):
    return TensorStructInfo(tuple(shape), "float32")


def graph():
    x = Var("x", tsi(4))
    a, b = DataflowVar("a", tsi(4)), Var("b", tsi(4))
    blk = DataflowBlock((VarBinding(a, Call(Op("relax.add"), (x, x), struct_info=tsi(4))),
                         VarBinding(b, Call(Op("relax.exp"), (a,), struct_info=tsi(4)))))
    return Function((x,), SeqExpr((blk,), b, tsi(4)), tsi(4))


def test_expr_visitor_sees_defs_uses_and_calls():
    events = []

    class V(ExprVisitor):
        def visit_var_def(self, v): events.append(("def", v.name_hint))
        def visit_var(self, v): events.append(("use", v.name_hint))
        def visit_op(self, o): events.append(("op", o.name))

    V().visit_expr(graph())
    assert events == [("def", "x"), ("op", "relax.add"), ("use", "x"), ("use", "x"), ("def", "a"),
                      ("op", "relax.exp"), ("use", "a"), ("def", "b"), ("use", "b")]


def test_expr_mutator_rewrites_and_shares_unchanged_nodes():
    f = graph()

    class ExpToSigmoid(ExprMutator):
        def visit_call(self, call):
            call = super().visit_call(call)
            if call.op == Op("relax.exp"):
                return Call(Op("relax.sigmoid"), call.args, struct_info=call.struct_info)
            return call

    g = ExpToSigmoid().visit_expr(f)
    assert g is not f
    assert g.body.blocks[0].bindings[0] is f.body.blocks[0].bindings[0]   # untouched binding shared
    assert g.body.blocks[0].bindings[1].value.op == Op("relax.sigmoid")
    assert ExprMutator().visit_expr(f) is f                               # identity: nothing rebuilt


def test_expr_mutator_renames_definitions_and_uses():
    f = graph()

    class Rename(ExprMutator):
        def visit_var_def(self, v):
            return type(v)(v.name_hint + "_new", v.struct_info)

    g = Rename().visit_expr(f)
    assert [p.name_hint for p in g.params] == ["x_new"]
    b0, b1 = g.body.blocks[0].bindings
    assert b0.value.args == (g.params[0], g.params[0])
    assert b1.value.args == (b0.var,) and g.body.body is b1.var
    assert_structural_equal(g, f)   # alpha-equivalent


def test_mutator_can_drop_and_expand_bindings():
    f = graph()

    class DropFirst(ExprMutator):
        def visit_var_binding(self, b):
            if b.var.name_hint == "a":
                return None
            return [b, b]

    g = DropFirst().visit_expr(f)
    assert [b.var.name_hint for b in g.body.blocks[0].bindings] == ["b", "b"]


def matmul_like():
    n = E.Var("n")
    A, B = T.Buffer("A", (n,)), T.Buffer("B", (n,))
    i = E.Var("i")
    return PrimFunc((A, B), T.For(i, E.IntImm(0), n, "serial",
                                  T.BufferStore(B, A[i] * E.FloatImm(2.0), (i,))))


def test_stmt_expr_visitor_collects_loads_stores_and_buffers():
    seen = []

    class V(StmtExprVisitor):
        def visit_buffer_load(self, e):
            seen.append(("load", e.buffer.name))
            self.generic_visit(e)
        def visit_buffer_store(self, s):
            seen.append(("store", s.buffer.name))
            self.generic_visit(s)
        def visit_var(self, v):
            seen.append(("var", v.name))

    V().visit_prim_func(matmul_like())
    assert seen == [("var", "i"), ("var", "n"), ("store", "B"), ("load", "A"), ("var", "i"), ("var", "i")]


def test_stmt_expr_mutator_substitutes_vars_and_swaps_buffers():
    f = matmul_like()
    A, B = f.params
    C = T.Buffer("C", A.shape)
    i = f.body.loop_var

    class M(StmtExprMutator):
        def visit_var(self, v):
            return v * 2 if v is i else v       # also rewrites the loop var (def site)
        def visit_buffer(self, b):
            return C if b is A else b

    g = M().visit_prim_func(f)
    assert g.params[0] is C
    store = g.body.body
    assert store.value.a.buffer is C
    assert isinstance(store.indices[0], E.Mul) and store.indices[0].a is i
    assert StmtExprMutator().visit_prim_func(f) is f


def test_walk_and_rewrite_enter_what_the_classes_enter():
    f = matmul_like()
    A, B = f.params
    loop = f.body
    i, n = loop.loop_var, loop.extent
    kinds = [type(x).__name__ for x in walk(loop)]
    assert kinds[0] == "For" and kinds.count("BufferLoad") == 1 and kinds.count("BufferStore") == 1
    assert not any(isinstance(x, T.Buffer) for x in walk(loop))     # buffers: not entered
    assert vars_in(loop) == {id(i), id(n)}
    # the same substitution as the mutator test, as a function; unchanged -> same object
    g = substitute_vars(loop, {id(i): i * 2})
    assert isinstance(g.body.indices[0], E.Mul) and g.body.value.a.indices[0].a is i
    assert rewrite(loop, lambda x: None) is loop and substitute_vars(loop, {}) is loop
    # replace one node by identity: only the store's value changes
    h = replace_node(loop, loop.body.value, E.FloatImm(0.0))
    assert h.body.value == E.FloatImm(0.0) and h.body.indices is loop.body.indices


def test_post_order_visit_children_first_each_once():
    f = graph()
    order = []
    post_order_visit(f, lambda n: order.append(type(n).__name__))
    assert order[-1] == "Function"
    assert order.index("Call") < order.index("VarBinding") < order.index("DataflowBlock")
    assert order.count("Op") == 2           # two distinct Op objects
    names = []
    post_order_visit(matmul_like(), lambda n: names.append(n.name) if isinstance(n, E.Var) else None)
    assert names == ["n", "i"]              # each var once, shapes of buffers included

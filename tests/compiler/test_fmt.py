"""compiler.ir.expr's renderings for messages: fmt_expr, fmt_shape, fmt_sinfo, dim_value."""
from compiler.ir import expr as E
from compiler.ir.struct_info import TensorStructInfo


def test_fmt_expr_parenthesizes_every_operation_or_only_operands():
    n, m = E.Var("n"), E.Var("m")
    e = (n + 1) // 2
    assert E.fmt_expr(e) == "((n + 1) // 2)"
    assert E.fmt_expr(e, bare=True) == "(n + 1) // 2"
    assert E.fmt_expr(E.max_expr(n * 2, 4)) == "max((n * 2), 4)"
    assert E.fmt_expr(E.max_expr(n * 2, 4), bare=True) == "max(n * 2, 4)"
    assert E.fmt_expr(E.logical_and(n < m, E.eq(m, 4)), bare=True) == "(n < m) and (m == 4)"
    assert E.fmt_expr(E.FloatImm(0.5)) == "0.5" and E.fmt_expr(7) == "7" and E.fmt_expr("k") == "k"


def test_fmt_shape_sinfo_and_dim_value():
    n = E.Var("n")
    assert E.fmt_shape((n * 2,)) == "((n * 2),)" and E.fmt_shape((n * 2, 4), bare=True) == "(n * 2, 4)"
    assert E.fmt_shape(None) == "(unknown)" and E.fmt_shape(()) == "()"
    assert E.fmt_sinfo(TensorStructInfo((n, 4))) == "(n, 4)"
    assert E.fmt_sinfo(TensorStructInfo(None, "float32", 2)) == "unknown shape (ndim=2)"
    assert [E.dim_value(d) for d in (E.IntImm(4), n, n * 2)] == [4, "n", "(n * 2)"]

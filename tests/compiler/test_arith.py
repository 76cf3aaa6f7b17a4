"""compiler.ir.arith: simplification checked against Python integer arithmetic.

The reference is a tree of Python tuples evaluated with Python's own floor
division/modulo; the PrimExpr under test is built from the same tree with node
constructors (no folding), simplified, and evaluated by a small evaluator
written here, independent of arith.evaluate.
"""

import pytest
from hypothesis import assume, given, settings, strategies as st

from compiler.ir import arith
from compiler.ir.expr import (EQ, GE, GT, LE, LT, NE, Add, And, FloorDiv, FloorMod, IntImm, Max,
                              Min, Mul, Not, Or, Select, Sub, Var, max_expr, min_expr)

N, M, K = Var("n"), Var("m"), Var("k")
VARS = {"n": N, "m": M, "k": K}
OPS = {"+": (Add, lambda a, b: a + b), "-": (Sub, lambda a, b: a - b),
       "*": (Mul, lambda a, b: a * b), "//": (FloorDiv, lambda a, b: a // b),
       "%": (FloorMod, lambda a, b: a % b), "min": (Min, min), "max": (Max, max)}


def trees():
    leaf = st.one_of(st.sampled_from(sorted(VARS)), st.integers(-9, 9))

    def extend(children):
        lin = st.tuples(st.sampled_from(["+", "-", "*", "min", "max"]), children, children)
        div = st.tuples(st.sampled_from(["//", "%"]), children,
                        st.one_of(st.integers(-8, 8).filter(bool), st.sampled_from(sorted(VARS)),
                                  children))
        return st.one_of(lin, div)

    return st.recursive(leaf, extend, max_leaves=10)


def build(t):
    if isinstance(t, str):
        return VARS[t]
    if isinstance(t, int):
        return IntImm(t)
    op, a, b = t
    return OPS[op][0](build(a), build(b))


def ref(t, env):
    if isinstance(t, str):
        return env[t]
    if isinstance(t, int):
        return t
    op, a, b = t
    return OPS[op][1](ref(a, env), ref(b, env))


def eval_expr(e, env):
    """Independent evaluator of PrimExpr (floor semantics, as Python)."""
    if isinstance(e, IntImm):
        return e.value
    if isinstance(e, Var):
        return env[e.name]
    for cls, fn in (v for v in OPS.values()):
        if isinstance(e, cls):
            return fn(eval_expr(e.a, env), eval_expr(e.b, env))
    raise AssertionError(f"unexpected node {e!r}")


envs = st.fixed_dictionaries({name: st.integers(0, 40) for name in VARS})


@settings(max_examples=400, deadline=None)
@given(trees(), st.lists(envs, min_size=3, max_size=3))
def test_simplify_preserves_value(t, bindings):
    e = build(t)
    s = arith.simplify(e)
    checked = 0
    for env in bindings:
        try:
            expected = ref(t, env)
        except ZeroDivisionError:
            continue
        checked += 1
        assert eval_expr(s, env) == expected, (e, s, env)
        assert arith.evaluate(e, env) == expected
    assume(checked)


@settings(max_examples=200, deadline=None)
@given(trees(), trees(), envs)
def test_prove_equal_is_sound(t1, t2, env):
    a, b = build(t1), build(t2)
    try:
        va, vb = ref(t1, env), ref(t2, env)
    except ZeroDivisionError:
        assume(False)
    if arith.prove_equal(a, b):
        assert va == vb
    # An expression always equals itself rebuilt in another order.
    assert arith.prove_equal(Add(a, b), Add(b, a))


@settings(max_examples=200, deadline=None)
@given(trees(), st.integers(1, 8), envs)
def test_prove_divisible_is_sound(t, k, env):
    e = build(t)
    try:
        v = ref(t, env)
    except ZeroDivisionError:
        assume(False)
    if arith.prove_divisible(e, k):
        assert v % k == 0


@settings(max_examples=200, deadline=None)
@given(trees(), trees(), st.sampled_from([LT, LE, GT, GE, EQ, NE]), envs)
def test_prove_comparisons_is_sound(t1, t2, cmp, env):
    cond = cmp(build(t1), build(t2))
    try:
        a, b = ref(t1, env), ref(t2, env)
    except ZeroDivisionError:
        assume(False)
    py = {LT: a < b, LE: a <= b, GT: a > b, GE: a >= b, EQ: a == b, NE: a != b}[cmp]
    if arith.prove(cond):
        assert py
    assert arith.evaluate(cond, env) == int(py)


@pytest.mark.parametrize("expr, expected", [
    (N * 2 - N, N),
    (FloorDiv(Mul(N, IntImm(4)), IntImm(4)), N),
    (FloorMod(Mul(N, IntImm(4)), IntImm(2)), IntImm(0)),
    (Sub(Add(N, M), Add(M, N)), IntImm(0)),
    (Add(IntImm(3), IntImm(4)), IntImm(7)),
    (min_expr(N, N + 1), N),
    (max_expr(N, N + 1), N + 1),
    (FloorDiv(N * 4 + 3, IntImm(4)), N),
    (FloorMod(N * 4 + 3, IntImm(4)), IntImm(3)),
    (FloorDiv(FloorDiv(N, IntImm(4)), IntImm(2)), FloorDiv(N, IntImm(8))),
    (FloorDiv(N * M, N), M),
    (FloorMod(N * M * 3, M), IntImm(0)),
    (Sub(IntImm(0), N), Sub(IntImm(0), N)),
    (Sub(IntImm(3), N), Sub(IntImm(3), N)),
    (Add(N, IntImm(-1)), Sub(N, IntImm(1))),
])
def test_canonical_forms(expr, expected):
    assert arith.simplify(expr) == expected


def test_canonical_form_is_order_independent():
    a = arith.simplify(N * 2 + M * 4 + K - 1)
    b = arith.simplify(K + (M * 2) * 2 - 1 + N + N)
    assert a == b
    assert arith.simplify(min_expr(N, M)) == arith.simplify(min_expr(M, N))
    assert arith.simplify(max_expr(N + 1, M + 1)) == arith.simplify(max_expr(M, N) + 1)
    assert arith.prove_equal(FloorDiv(N * 8 + M * 4, IntImm(4)), N * 2 + M)


def test_simplify_unknown_stays_symbolic():
    e = arith.simplify(FloorDiv(N + 3, IntImm(4)))
    assert isinstance(e, FloorDiv)
    assert arith.free_vars(e) == [N]
    assert isinstance(arith.simplify(min_expr(N, M)), Min)


def test_prove_equal_accepts_ints():
    assert arith.prove_equal(4, IntImm(4))
    assert arith.prove_equal(N * 2, N + N)
    assert not arith.prove_equal(N, M)
    assert not arith.prove_equal(N, 3)


@pytest.mark.parametrize("expr, k, expected", [
    (N * 8, 4, True), (N, 2, False), (N * 6 + 9, 3, True), (N * 6 + 8, 3, False),
    (N * 4 + M * 2, 2, True), (IntImm(12), 4, True), (IntImm(12), 5, False),
    (N * M, N, True), (N * M + N, N, True), (N + M, N, False), (FloorDiv(N * 8, IntImm(2)), 4, True),
])
def test_prove_divisible(expr, k, expected):
    assert arith.prove_divisible(expr, k) is expected


def test_prove():
    assert arith.prove(N + 1 > N)
    assert arith.prove(N >= 0)
    assert arith.prove(FloorMod(N, IntImm(4)) < 4)
    assert not arith.prove(N > M)
    assert not arith.prove(N > 0)          # n may be 0
    assert arith.prove(And(N + 1 > N, N * 2 >= N))
    assert arith.prove(Or(N > M, N <= N))
    assert arith.prove(Not(N < 0))
    assert arith.prove(True) and not arith.prove(False)


def test_select_folds_on_provable_condition():
    assert arith.simplify(Select(N + 1 > N, N, M, "int64")) == N


def test_substitute():
    e = N * 2 + M
    out = arith.substitute(e, {N: 3})
    assert arith.free_vars(out) == [M]
    assert arith.simplify(out) == arith.simplify(M + 6)
    assert arith.substitute(e, {K: 1}) is e
    chained = arith.substitute(e, {N: M + 1})
    assert arith.evaluate(chained, {M: 5}) == 17


def test_free_vars_ordered_unique():
    assert arith.free_vars(M * N + N * K + M) == [M, N, K]
    assert arith.free_vars((N, M + N, IntImm(2))) == [N, M]
    assert arith.free_vars(IntImm(3)) == []


def test_evaluate_binding_by_name_or_var_and_unbound_error():
    assert arith.evaluate(FloorDiv(N - 7, IntImm(2)), {"n": 0}) == -4
    assert arith.evaluate(FloorMod(N - 7, IntImm(3)), {N: 0}) == 2
    with pytest.raises(arith.UnboundVarError, match="'m'"):
        arith.evaluate(N + M, {N: 1})


def test_bound():
    assert arith.bound(FloorMod(N, IntImm(8))) == (0, 7)
    assert arith.bound(N + 2)[0] == 2
    assert arith.bound(IntImm(5)) == (5, 5)


@settings(max_examples=200, deadline=None)
@given(trees(), st.integers(1, 9), st.integers(-3, 3), envs)
def test_div_mod_recombine(t, c, k, env):
    x = build(t)
    try:
        vx = ref(t, env)
    except ZeroDivisionError:
        assume(False)
    C = IntImm(c)
    whole = Add(Mul(Mul(FloorDiv(x, C), C), IntImm(k)), Mul(FloorMod(x, C), IntImm(k)))
    assert arith.prove_equal(whole, Mul(x, IntImm(k)))
    rem = Sub(Mul(x, IntImm(k)), Mul(Mul(FloorDiv(x, C), C), IntImm(k)))
    assert eval_expr(arith.simplify(rem), env) == k * (vx % c)


def test_div_mod_recombine_forms():
    assert arith.simplify(FloorDiv(N, IntImm(4)) * 4 + FloorMod(N, IntImm(4))) == N
    assert arith.simplify(N - FloorDiv(N, IntImm(4)) * 4) == FloorMod(N, IntImm(4))
    assert arith.prove(FloorDiv(N, IntImm(4)) * 4 <= N)
    fused = Var("fused")
    assert arith.simplify(FloorDiv(fused, IntImm(16)) * 16 + FloorMod(fused, IntImm(16))) == fused

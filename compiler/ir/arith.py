"""Symbolic integer arithmetic for shapes and index expressions.

API: `simplify`, `prove_equal`, `prove_divisible`, `prove`, `substitute`, `evaluate`,
`free_vars`, `canonical_form`, `bound`, `as_int`.

Why a hand-written canonicaliser and not sympy: shape inference calls `simplify`
thousands of times per model, on tiny expressions, and needs exactly the integer
semantics of our IR (floor division and floor modulo, non-negative sizes). A
canonical form of a few hundred lines is fast (memoised on the immutable nodes),
has no dependency, and its rules are readable; sympy would need translating both
ways, is slow per call, and treats `//` through `floor(a/b)`, which it rarely
simplifies.

The canonical form of an integer expression is a sum of monomials with integer
coefficients, `{(atom, atom, ...): coeff}`, where the empty monomial is the
constant. Atoms are scalar `Var`s and the non-linear terms (FloorDiv, FloorMod,
Min, Max, Cast, BufferLoad, ...) whose operands are themselves simplified, so
equal terms meet as equal atoms. Two expressions whose canonical forms are equal
are equal for all values; the converse does not hold (we answer "cannot prove").

Assumption: every integer `Var` is a non-negative integer (a size, a loop index or
a block iterator). It decides `min`/`max` of ordered things and lets
`(n * 4 + 3) // 4` become `n`.
"""
from __future__ import annotations

import math
from dataclasses import fields, is_dataclass, replace
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping, Optional

from .errors import CompilerError
from .expr import (BINARY_NODES, FLOAT_DTYPES, Add, And, Call, Cast, CmpExpr, Div, EQ, FloatImm,
                   FloorDiv, FloorMod, GE, GT, IntImm, LE, LT, Max, Min, Mul, NE, Not, Or, PrimExpr,
                   Select, StringImm, Sub, Var, as_expr)

__all__ = ["simplify", "prove_equal", "prove_divisible", "prove", "substitute", "evaluate",
           "free_vars", "canonical_form", "bound", "as_int", "UnboundVarError"]


class UnboundVarError(CompilerError, LookupError):
    """`evaluate` met a variable that the binding does not give a value for."""


Monomial = tuple  # tuple of atoms (PrimExpr), sorted by _key; () is the constant term
Form = tuple      # tuple of (Monomial, int) pairs, sorted, no zero coefficients

_INF = math.inf


def _is_int_expr(e: PrimExpr) -> bool:
    return e.dtype not in FLOAT_DTYPES and e.dtype not in ("bool", "handle")


# Sort keys: a deterministic total order on atoms, so canonical forms print stably ----


def _field_key(value: Any) -> tuple:
    if isinstance(value, PrimExpr):
        return (0, _key(value))
    if isinstance(value, tuple):
        return (1, tuple(_field_key(v) for v in value))
    if isinstance(value, (int, float, str)):
        return (2, type(value).__name__, value)
    if value is None:
        return (3,)
    # Buffers and other identity-compared objects: by name then creation identity.
    return (4, str(getattr(value, "name", "")), id(value))


@lru_cache(maxsize=1 << 16)
def _key(e: PrimExpr) -> tuple:
    if isinstance(e, Var):
        return (0, e.name, e.dtype, id(e))
    if isinstance(e, IntImm):
        return (1, e.value, e.dtype)
    vals = [getattr(e, f.name) for f in fields(e)] if is_dataclass(e) else [repr(e)]
    return (2, type(e).__name__, tuple(_field_key(v) for v in vals))


def _mono_key(m: Monomial) -> tuple:
    # Higher degree first; the constant monomial () sorts last.
    return (-len(m), tuple(_key(a) for a in m))


# Canonical forms -----------------------------------------------------------------


def _form(d: Mapping[Monomial, int]) -> Form:
    return tuple(sorted(((m, c) for m, c in d.items() if c != 0), key=lambda mc: _mono_key(mc[0])))


def _const_form(v: int) -> Form:
    return (((), v),) if v != 0 else ()


def _form_const(f: Form) -> Optional[int]:
    """The value of a constant form, else None."""
    if not f:
        return 0
    if len(f) == 1 and f[0][0] == ():
        return f[0][1]
    return None


def _add(f: Form, g: Form, scale: int = 1) -> Form:
    d = dict(f)
    for m, c in g:
        d[m] = d.get(m, 0) + scale * c
    return _form(d)


def _scale(f: Form, k: int) -> Form:
    return () if k == 0 else tuple((m, c * k) for m, c in f)


def _mul(f: Form, g: Form) -> Form:
    d: dict = {}
    for m1, c1 in f:
        for m2, c2 in g:
            m = tuple(sorted(m1 + m2, key=_key))
            d[m] = d.get(m, 0) + c1 * c2
    return _form(d)


def _atom_form(atom: PrimExpr) -> Form:
    if isinstance(atom, IntImm):
        return _const_form(atom.value)
    return (((atom,), 1),)


@lru_cache(maxsize=1 << 16)
def canonical_form(e: PrimExpr) -> Form:
    """The canonical sum of monomials of integer expression `e`:
    a tuple of `(monomial, coefficient)` with monomial a sorted tuple of atoms."""
    if isinstance(e, IntImm):
        return _const_form(e.value)
    if isinstance(e, Var):
        return _atom_form(e)
    if isinstance(e, Add) and _is_int_expr(e):
        return _fold_divmod(_add(canonical_form(e.a), canonical_form(e.b)))
    if isinstance(e, Sub) and _is_int_expr(e):
        return _fold_divmod(_add(canonical_form(e.a), canonical_form(e.b), -1))
    if isinstance(e, Mul) and _is_int_expr(e):
        return _mul(canonical_form(e.a), canonical_form(e.b))
    if isinstance(e, FloorDiv) and _is_int_expr(e):
        return _floordiv(canonical_form(e.a), canonical_form(e.b), e.dtype)
    if isinstance(e, FloorMod) and _is_int_expr(e):
        return _floormod(canonical_form(e.a), canonical_form(e.b), e.dtype)
    if isinstance(e, (Min, Max)) and _is_int_expr(e):
        return _minmax(type(e), canonical_form(e.a), canonical_form(e.b), e.dtype)
    return _atom_form(_simplify_other(e))


# FloorDiv / FloorMod ----------------------------------------------------------------


def _split(f: Form, c: int) -> tuple[Form, Form]:
    """f = c * q + r with every coefficient of r in [0, c)."""
    q, r = {}, {}
    for m, k in f:
        q[m], r[m] = divmod(k, c)
    return _form(q), _form(r)


def _gcd_of(f: Form) -> int:
    g = 0
    for _, k in f:
        g = math.gcd(g, k)
    return g


def _floordiv(a: Form, b: Form, dtype: str) -> Form:
    c = _form_const(b)
    if c is not None and c != 0:
        if c < 0:                       # a // -c -> (-a) // c
            a, c = _scale(a, -1), -c
        if c == 1:
            return a
        q, r = _split(a, c)             # (c*q + r) // c -> q + r // c
        if not r:
            return q
        g = math.gcd(_gcd_of(r), c)     # (g*x) // (g*d) -> x // d
        if g > 1:
            r, c = tuple((m, k // g) for m, k in r), c // g
        lo, hi = _bound_form(r)
        if lo >= 0 and hi < c:          # 0 <= r < c -> r // c == 0
            return q
        if lo >= -c and hi < 0:         # -c <= r < 0 -> r // c == -1
            return _add(q, _const_form(-1))
        if len(r) == 1 and r[0][1] == 1 and len(r[0][0]) == 1:
            inner = r[0][0][0]          # (x // c1) // c2 -> x // (c1 * c2)
            if isinstance(inner, FloorDiv) and isinstance(inner.b, IntImm) and inner.b.value > 0:
                return _add(q, _atom_form(FloorDiv(inner.a, IntImm(inner.b.value * c, inner.b.dtype), dtype)))
        return _add(q, _atom_form(FloorDiv(_render(r, dtype), IntImm(c, dtype), dtype)))
    if c is None:
        quotient = _exact_quotient(a, b)
        if quotient is not None:        # (x * m) // m -> x  (sizes are assumed non-zero here)
            return quotient
    return _atom_form(FloorDiv(_render(a, dtype), _render(b, dtype), dtype))


def _floormod(a: Form, b: Form, dtype: str) -> Form:
    c = _form_const(b)
    if c is not None and c != 0:
        if c < 0:                       # a % -c -> -((-a) % c)
            return _scale(_floormod(_scale(a, -1), _const_form(-c), dtype), -1)
        if c == 1:
            return ()
        _, r = _split(a, c)             # (c*q + r) % c -> r % c
        if not r:
            return ()
        g = math.gcd(_gcd_of(r), c)     # (g*x) % (g*d) -> g * (x % d)
        if g > 1:
            inner = tuple((m, k // g) for m, k in r)
            return _scale(_floormod(inner, _const_form(c // g), dtype), g)
        lo, hi = _bound_form(r)
        if lo >= 0 and hi < c:          # 0 <= r < c -> r % c == r
            return r
        if len(r) == 1 and r[0][1] == 1 and len(r[0][0]) == 1:
            inner = r[0][0][0]          # (x % c1) % c2 -> x % c2  when c2 divides c1
            if isinstance(inner, FloorMod) and isinstance(inner.b, IntImm) and inner.b.value % c == 0:
                return _floormod(canonical_form(inner.a), _const_form(c), dtype)
        return _atom_form(FloorMod(_render(r, dtype), IntImm(c, dtype), dtype))
    if c is None and _exact_quotient(a, b) is not None:
        return ()                       # (x * m) % m -> 0
    return _atom_form(FloorMod(_render(a, dtype), _render(b, dtype), dtype))


def _fold_divmod(f: Form) -> Form:
    """Recombine floor division and modulo of the same operand:
    `(x // c) * c + x % c -> x` and `x - (x // c) * c -> x % c` (times any k)."""
    if not any(len(m) == 1 and isinstance(m[0], (FloorDiv, FloorMod)) for m, _ in f):
        return f
    changed = True
    while changed:
        changed = False
        d = dict(f)
        for m, k in f:
            if len(m) != 1 or not isinstance(m[0], (FloorDiv, FloorMod)):
                continue
            atom = m[0]
            if not (isinstance(atom.b, IntImm) and atom.b.value > 0):
                continue
            c = atom.b.value
            x = canonical_form(atom.a)
            if isinstance(atom, FloorMod):
                # x // c in canonical form: ((y // 2) // 2 is already y // 4 in f)
                div = _floordiv(x, _const_form(c), atom.dtype)
                if div and all(md != m and d.get(md) == k * c * kd for md, kd in div):
                    d.pop(m)                            # k*(x % c) + k*c*(x // c) -> k*x
                    for md, _ in div:
                        d.pop(md)
                    f = _add(_form(d), x, k)
                    changed = True
                    break
            elif k % c == 0:
                q = -k // c                             # q*x - q*c*(x // c) -> q*(x % c)
                if x and all(d.get(mx) == q * kx for mx, kx in x):
                    d.pop(m)
                    rest = _add(_form(d), x, -q)
                    f = _add(rest, _floormod(x, _const_form(c), atom.dtype), q)
                    changed = True
                    break
    return f


def _exact_quotient(a: Form, b: Form) -> Optional[Form]:
    """a / b when b is one monomial dividing every term of a exactly, else None."""
    if len(b) != 1 or b[0][0] == ():
        return None
    bm, bc = b[0]
    out = {}
    for m, k in a:
        rest = list(m)
        for atom in bm:
            if atom not in rest:
                return None
            rest.remove(atom)
        if k % bc:
            return None
        out[tuple(rest)] = k // bc
    return _form(out)


# Min / Max ----------------------------------------------------------------------------


def _minmax(cls, a: Form, b: Form, dtype: str) -> Form:
    lo, hi = _bound_form(_fold_divmod(_add(a, b, -1)))
    if hi <= 0:                          # a <= b
        return a if cls is Min else b
    if lo >= 0:                          # a >= b
        return b if cls is Min else a
    # min(x + k, y + k) -> min(x, y) + k : pull out the common part (often a constant).
    common = _form({m: k for m, k in a if dict(b).get(m) == k})
    a, b = _add(a, common, -1), _add(b, common, -1)
    x, y = sorted((a, b), key=_form_key)  # operands of min/max in a canonical order
    return _add(common, _atom_form(cls(_render(x, dtype), _render(y, dtype), dtype)))


def _form_key(f: Form) -> tuple:
    return tuple(_mono_key(m) + (k,) for m, k in f)


# Bounds (interval analysis; integer Vars are >= 0) -----------------------------------


def _imul(a: tuple, b: tuple) -> tuple:
    def m(x, y):
        return 0 if x == 0 or y == 0 else x * y
    ps = [m(x, y) for x in a for y in b]
    return (min(ps), max(ps))


def _bound_atom(e: PrimExpr) -> tuple:
    if isinstance(e, IntImm):
        return (e.value, e.value)
    if isinstance(e, Var):
        return (0, _INF) if _is_int_expr(e) else (-_INF, _INF)
    if isinstance(e, (FloorDiv, FloorMod)) and isinstance(e.b, IntImm) and e.b.value > 0:
        c = e.b.value
        if isinstance(e, FloorMod):
            return (0, c - 1)
        lo, hi = _bound_form(canonical_form(e.a))
        return (lo // c if lo != -_INF else lo, hi // c if hi != _INF else hi)
    if isinstance(e, FloorDiv):
        (alo, ahi), (blo, _) = bound(e.a), bound(e.b)
        if alo >= 0 and blo >= 1:
            return (0, ahi)
    if isinstance(e, (Min, Max)):
        (alo, ahi), (blo, bhi) = bound(e.a), bound(e.b)
        f = min if isinstance(e, Min) else max
        return (f(alo, blo), f(ahi, bhi))
    return (-_INF, _INF)


def _bound_form(f: Form) -> tuple:
    lo, hi = 0, 0
    for m, k in f:
        b = (k, k)
        for atom in m:
            b = _imul(b, _bound_atom(atom))
        lo, hi = lo + b[0], hi + b[1]
    return (lo, hi)


def bound(e) -> tuple:
    """Lower and upper bound of integer expression `e` (±math.inf when unknown)."""
    e = as_expr(e)
    if not _is_int_expr(e):
        return (-_INF, _INF)
    return _bound_form(canonical_form(e))


# Rendering a form back to an expression ---------------------------------------------


def _render_mono(m: Monomial, k: int, dtype: str) -> PrimExpr:
    out: Optional[PrimExpr] = None
    for atom in m:
        out = atom if out is None else Mul(out, atom, dtype)
    if out is None:
        return IntImm(k, dtype)
    return out if k == 1 else Mul(out, IntImm(k, dtype), dtype)


def _render(f: Form, dtype: str) -> PrimExpr:
    """`n * 2 + m - k - 1`: positive terms, then negative ones subtracted, constant last."""
    if not f:
        return IntImm(0, dtype)
    const = dict(f).get((), 0)
    pos = [(m, k) for m, k in f if m != () and k > 0]
    neg = [(m, -k) for m, k in f if m != () and k < 0]
    out: Optional[PrimExpr] = None
    for m, k in pos:
        t = _render_mono(m, k, dtype)
        out = t if out is None else Add(out, t, dtype)
    if out is None:                     # only negative terms: `3 - n`, `0 - n - 1`
        if not neg or const > 0:
            out, const = IntImm(const, dtype), 0
        else:
            out = IntImm(0, dtype)
    for m, k in neg:
        out = Sub(out, _render_mono(m, k, dtype), dtype)
    if const > 0:
        out = Add(out, IntImm(const, dtype), dtype)
    elif const < 0:
        out = Sub(out, IntImm(-const, dtype), dtype)
    return out


# simplify --------------------------------------------------------------------------


def _simplify_children(e: PrimExpr) -> PrimExpr:
    """Rebuild `e` with simplified PrimExpr children (same node kind)."""
    if not is_dataclass(e):
        return e
    changes = {}
    for f in fields(e):
        v = getattr(e, f.name)
        if isinstance(v, PrimExpr):
            nv = simplify(v)
        elif isinstance(v, tuple) and any(isinstance(x, PrimExpr) for x in v):
            nv = tuple(simplify(x) if isinstance(x, PrimExpr) else x for x in v)
        else:
            continue
        if nv is not v and nv != v:
            changes[f.name] = nv
    return replace(e, **changes) if changes else e


_CMP = {LT: lambda lo, hi: (hi < 0, lo >= 0), LE: lambda lo, hi: (hi <= 0, lo > 0),
        GT: lambda lo, hi: (lo > 0, hi <= 0), GE: lambda lo, hi: (lo >= 0, hi < 0),
        EQ: lambda lo, hi: (lo == hi == 0, lo > 0 or hi < 0),
        NE: lambda lo, hi: (lo > 0 or hi < 0, lo == hi == 0)}


def _simplify_other(e: PrimExpr) -> PrimExpr:
    """Nodes outside the canonical form: comparisons, logic, casts, loads, floats."""
    if isinstance(e, CmpExpr):
        return _simplify_cond(e)
    if isinstance(e, Select):
        cond = simplify(e.condition)
        if isinstance(cond, IntImm):
            return simplify(e.true_value if cond.value else e.false_value)
        return _simplify_children(e)
    out = _simplify_children(e)
    if isinstance(out, BINARY_NODES) and isinstance(out.a, FloatImm) and isinstance(out.b, FloatImm):
        folded = _eval_node(out, out.a.value, out.b.value)
        if folded is not None:
            return FloatImm(float(folded), out.dtype)
    if isinstance(out, Cast) and isinstance(out.value, IntImm) and _is_int_expr(out):
        return IntImm(out.value.value, out.dtype)
    return out


def _bool(v: bool) -> IntImm:
    return IntImm(int(v), "bool")


def _simplify_cond(e: CmpExpr) -> PrimExpr:
    if isinstance(e, Not):
        a = simplify(e.a)
        return _bool(not a.value) if isinstance(a, IntImm) else Not(a, e.dtype)
    if isinstance(e, (And, Or)):
        a, b = simplify(e.a), simplify(e.b)
        absorbing = 0 if isinstance(e, And) else 1
        for x, y in ((a, b), (b, a)):
            if isinstance(x, IntImm):
                return _bool(absorbing) if bool(x.value) == bool(absorbing) else y
        return type(e)(a, b, e.dtype)
    a, b = simplify(e.a), simplify(e.b)
    rule = _CMP.get(type(e))
    if rule is not None and _is_int_expr(a) and _is_int_expr(b):
        lo, hi = _bound_form(_fold_divmod(_add(canonical_form(a), canonical_form(b), -1)))
        true, false = rule(lo, hi)
        if true or false:
            return _bool(true)
    return type(e)(a, b, e.dtype)


@lru_cache(maxsize=1 << 16)
def _simplify(e: PrimExpr) -> PrimExpr:
    if isinstance(e, (IntImm, FloatImm, StringImm, Var)):
        return e
    if _is_int_expr(e) and isinstance(e, (Add, Sub, Mul, FloorDiv, FloorMod, Min, Max)):
        return _render(canonical_form(e), e.dtype)
    return _simplify_other(e)


def simplify(e) -> PrimExpr:
    """Canonical simplification: `n*2 - n -> n`, `(n*4)//4 -> n`, `(n*4)%2 -> 0`,
    `(a+b)-(b+a) -> 0`, constant folding, min/max of provably ordered operands.
    Accepts ints. Equal inputs give identical (==) outputs."""
    return _simplify(as_expr(e))


# Proofs ----------------------------------------------------------------------------


def as_int(e) -> Optional[int]:
    """The integer value of `e` if it simplifies to a constant, else None."""
    if isinstance(e, bool):
        return int(e)
    if isinstance(e, int):
        return e
    e = as_expr(e)
    if not _is_int_expr(e):
        return None
    return _form_const(canonical_form(e))


def prove_equal(a, b) -> bool:
    """True when `a == b` for all non-negative values of the variables; False when
    unequal or unknown. Accepts ints and PrimExprs."""
    a, b = as_expr(a), as_expr(b)
    if a is b:
        return True
    if not (_is_int_expr(a) and _is_int_expr(b)):
        return simplify(a) == simplify(b)
    return not _fold_divmod(_add(canonical_form(a), canonical_form(b), -1))


def prove_divisible(a, k) -> bool:
    """True when `a` is a multiple of `k` for all values (`n*8` by 4); False when
    not or unknown (`n` by 2). `k` is an int or a PrimExpr."""
    f = canonical_form(as_expr(a))
    kc = as_int(k)
    if kc is not None:
        if kc == 0:
            return not f
        return all(c % kc == 0 for _, c in f)
    return _exact_quotient(f, canonical_form(as_expr(k))) is not None


def prove(cond) -> bool:
    """True when the condition (`n + 1 > n`, `And`/`Or`/`Not` of comparisons) holds for
    all non-negative values of the variables; False when it does not or is unknown."""
    if isinstance(cond, bool):
        return cond
    c = simplify(cond)
    return isinstance(c, IntImm) and c.value != 0


# Substitution, free variables, evaluation -------------------------------------------


def substitute(e, mapping: Mapping[Var, Any]) -> PrimExpr:
    """`e` with each Var in `mapping` replaced (values: PrimExpr or int). No
    simplification is done; call `simplify` on the result if wanted."""
    e = as_expr(e)
    if not mapping:
        return e
    vmap = {v: as_expr(x, v.dtype) for v, x in mapping.items()}
    memo: dict = {}

    def go(x: PrimExpr) -> PrimExpr:
        if isinstance(x, Var):
            return vmap.get(x, x)
        if not is_dataclass(x):
            return x
        key = id(x)
        if key in memo:
            return memo[key][1]
        changes = {}
        for f in fields(x):
            v = getattr(x, f.name)
            if isinstance(v, PrimExpr):
                nv = go(v)
            elif isinstance(v, tuple) and any(isinstance(i, PrimExpr) for i in v):
                nv = tuple(go(i) if isinstance(i, PrimExpr) else i for i in v)
            else:
                continue
            if nv is not v and (not isinstance(nv, tuple) or any(p is not q for p, q in zip(nv, v))):
                changes[f.name] = nv
        out = replace(x, **changes) if changes else x
        memo[key] = (x, out)  # keep x alive so its id is not reused
        return out

    return go(e)


def free_vars(e) -> list[Var]:
    """Scalar Vars of `e` (a PrimExpr or an iterable of them), in first-appearance
    order, each once."""
    seen: dict[Var, None] = {}

    def go(x: Any) -> None:
        if isinstance(x, Var):
            seen.setdefault(x, None)
        elif isinstance(x, PrimExpr) and is_dataclass(x):
            for f in fields(x):
                go(getattr(x, f.name))
        elif isinstance(x, (tuple, list)):
            for i in x:
                go(i)

    if isinstance(e, PrimExpr):
        go(e)
    elif isinstance(e, Iterable) and not isinstance(e, str):
        for x in e:
            go(x)
    return list(seen)


def _names(binding: Mapping) -> list[str]:
    return [k.name if isinstance(k, Var) else str(k) for k in binding]


def _trunc_div(a, b):
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


_INTRINSIC: dict[str, Callable] = {
    "exp": math.exp, "log": math.log, "sqrt": math.sqrt, "rsqrt": lambda x: 1.0 / math.sqrt(x),
    "tanh": math.tanh, "erf": math.erf, "pow": math.pow, "fabs": math.fabs, "max": max,
    "min": min, "sigmoid": lambda x: 1.0 / (1.0 + math.exp(-x)), "exp2": lambda x: 2.0 ** x,
    "log2": math.log2, "sin": math.sin, "cos": math.cos, "floor": math.floor,
    "ceil": math.ceil, "round": round,
}


def _eval_node(e: PrimExpr, a, b):
    if isinstance(e, Add): return a + b
    if isinstance(e, Sub): return a - b
    if isinstance(e, Mul): return a * b
    if isinstance(e, Div):
        if _is_int_expr(e):
            return _trunc_div(a, b)
        return a / b
    if isinstance(e, FloorDiv):
        return a // b if isinstance(a, int) and isinstance(b, int) else math.floor(a / b)
    if isinstance(e, FloorMod):
        return a % b
    if isinstance(e, Min): return min(a, b)
    if isinstance(e, Max): return max(a, b)
    if isinstance(e, LT): return int(a < b)
    if isinstance(e, LE): return int(a <= b)
    if isinstance(e, GT): return int(a > b)
    if isinstance(e, GE): return int(a >= b)
    if isinstance(e, EQ): return int(a == b)
    if isinstance(e, NE): return int(a != b)
    if isinstance(e, And): return int(bool(a) and bool(b))
    if isinstance(e, Or): return int(bool(a) or bool(b))
    return None


def evaluate(e, binding: Mapping[Any, Any] | None = None):
    """The value of `e` with vars bound by `binding` (keys: Var or var name).
    Integer semantics are Python's (floor division and modulo); comparisons give 0/1.
    Raises UnboundVarError naming a var the binding lacks."""
    binding = binding or {}
    by_var = {k: v for k, v in binding.items() if isinstance(k, Var)}
    by_name = {k: v for k, v in binding.items() if isinstance(k, str)}

    def go(x: PrimExpr):
        if isinstance(x, (IntImm, FloatImm)):
            return x.value
        if isinstance(x, Var):
            if x in by_var:
                return by_var[x]
            if x.name in by_name:
                return by_name[x.name]
            raise UnboundVarError(f"evaluate: variable {x.name!r} ({x.dtype}) has no value; "
                                  f"expected it in the binding, given {sorted(_names(binding))}")
        if isinstance(x, BINARY_NODES):
            return _eval_node(x, go(x.a), go(x.b))
        if isinstance(x, Not):
            return int(not go(x.a))
        if isinstance(x, Select):
            return go(x.true_value) if go(x.condition) else go(x.false_value)
        if isinstance(x, Cast):
            v = go(x.value)
            if x.dtype == "bool":
                return int(bool(v))
            return float(v) if x.dtype in FLOAT_DTYPES else int(v)
        if isinstance(x, Call) and x.op in _INTRINSIC:
            return _INTRINSIC[x.op](*[go(a) for a in x.args])
        raise CompilerError(f"evaluate: cannot evaluate {type(x).__name__} node {x!r}; "
                            "expected scalar arithmetic over bound variables")

    if isinstance(e, (int, float)):
        return e
    return go(as_expr(e))

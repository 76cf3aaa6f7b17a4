"""Shared helpers for operator legalizations (the `@opdef.legalizer` rules).

A legalizer is `fn(bb: BlockBuilder, call: Call) -> Expr`: it returns an
expression with the call's struct info that computes the same value without the
operator, normally `R.call_tir(gvar, args, out_sinfo)` of a tensor program it
added with `bb.add_func`. `call_te` does all of that from a compute definition:

    @exp.legalizer
    def _(bb, call):
        return call_te(bb, call, lambda x: te.compute(out_shape(call), lambda *i: te.exp(x[i]),
                                                      name="exp"), call.args[0])

Each graph tensor argument becomes a `te.placeholder` with the argument's own
shape expressions, so the program's sizes are the graph's (`n` stays `n`; the
finished program gets its own copies of those vars, since one program may serve
calls in several functions). Sizes that no buffer holds as a bare dim (the begin
of a slice, `m` in a dim `m * 2`) become scalar parameters, passed as `tir_vars`.
The program gets attr `op_pattern` (the operator's fusion kind, read by FuseOps)
and a readable name: the operator's short name, suffixed when taken ("add_1");
`bb.add_func` reuses a structurally equal program instead of adding a copy.

Output shapes come from the call's struct info (`out_shape(call)`), so the graph's
types stay exactly as they were. Reductions and normalisations of float16/bfloat16
compute in float32 (`acc_dtype`); elementwise math stays in the storage dtype (the
C backend widens half types to float for the arithmetic anyway).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Optional, Sequence

from .. import te
from ..ir import arith
from ..ir import expr as E
from ..ir.errors import LegalizeError, ShapeError
from ..ir.graph import Call, Expr, Tuple, TupleGetItem
from ..ir.struct_info import TensorStructInfo, TupleStructInfo
from ..ir.tir import Buffer, PrimFunc
from ..ir.visitor import StmtExprMutator, post_order_visit
from .registry import get_op

# Legalizations compute float16/bfloat16 reductions in this dtype, then round once.
ACC_DTYPE = {"float16": "float32", "bfloat16": "float32"}


def acc_dtype(dtype: str) -> str:
    """The dtype in which reductions and normalisations of `dtype` are computed."""
    return ACC_DTYPE.get(dtype, dtype)


def tensor_sinfo(call: Call, expr: Expr, what: str) -> TensorStructInfo:
    """The known-shape tensor struct info of `expr` (an argument or the result)."""
    sinfo = expr.struct_info
    if not isinstance(sinfo, TensorStructInfo):
        raise LegalizeError(f"{_script(call)}: {what} must be a tensor to legalize, got "
                            f"{type(sinfo).__name__ if sinfo is not None else 'no struct info'}")
    if sinfo.shape is None:
        raise LegalizeError(f"{_script(call)}: {what} has an unknown shape (ndim={sinfo.ndim}); "
                            "legalization needs every dim (state them with R.match_cast)")
    return sinfo


def out_shape(call: Call) -> tuple[E.PrimExpr, ...]:
    """The result shape the struct-info rule inferred (the shape every legalization
    produces, so the graph's types stay as they were)."""
    return tensor_sinfo(call, call, "the result").shape


def out_dtype(call: Call) -> str:
    return tensor_sinfo(call, call, "the result").dtype


def placeholder(call: Call, expr: Expr, name: str) -> te.Tensor:
    """A te placeholder for graph tensor `expr`, with its shape expressions."""
    sinfo = tensor_sinfo(call, expr, f"argument {name}")
    return te.placeholder(sinfo.shape, sinfo.dtype, name)


def call_te(bb, call: Call, fcompute: Callable[..., Any], *args: Expr,
            name: Optional[str] = None) -> Call:
    """`R.call_tir` of the tensor program `fcompute(*placeholders)` computes.

    `args` are graph expressions: a tensor becomes one placeholder; a Tuple (or a
    var of tuple struct info) becomes a list of placeholders. `fcompute` returns the
    output tensor, or a list of them for a tuple result; the call's struct info is
    the call_tir's `out_sinfo`. The program is added to `bb` under `name` (default:
    the operator's short name) with attr `op_pattern`."""
    opdef = get_op(call.op.name)
    names = _arg_names(call, args)
    te_args: list = []
    flat_args: list[Expr] = []
    inputs: list[te.Tensor] = []
    for arg, arg_name in zip(args, names):
        if isinstance(arg.struct_info, TupleStructInfo):
            fields = arg.fields if isinstance(arg, Tuple) else tuple(
                TupleGetItem(arg, i, f) for i, f in enumerate(arg.struct_info.fields))
            group = [placeholder(call, f, f"{arg_name}_{i}") for i, f in enumerate(fields)]
            te_args.append(group)
            inputs.extend(group)
            flat_args.extend(fields)
        else:
            t = placeholder(call, arg, arg_name)
            te_args.append(t)
            inputs.append(t)
            flat_args.append(arg)
    result = fcompute(*te_args)
    outputs = list(result) if isinstance(result, (list, tuple)) else [result]
    sinfo = call.struct_info
    out_sinfos = list(sinfo.fields) if isinstance(sinfo, TupleStructInfo) else [sinfo]
    if len(outputs) != len(out_sinfos) or not all(isinstance(o, te.Tensor) for o in outputs):
        raise LegalizeError(f"{opdef.script}: the legalization computes {len(outputs)} output(s) "
                            f"but the call's struct info has {len(out_sinfos)}")
    for i, (o, s) in enumerate(zip(outputs, out_sinfos)):
        if not isinstance(s, TensorStructInfo) or s.shape is None:
            raise LegalizeError(f"{opdef.script}: result {i} must be a tensor of known shape to "
                                f"legalize, got {s}")
        if o.dtype != s.dtype or o.ndim != s.ndim:
            raise LegalizeError(f"{opdef.script}: output {i} of the legalization is {o.ndim}-d "
                                f"{o.dtype}, the struct info says {s.ndim}-d {s.dtype}")
    func = te.create_prim_func(inputs + outputs, attrs={"op_pattern": int(opdef.pattern)})
    scalars = [p for p in func.params if isinstance(p, E.Var)]
    func = _FreshSizeVars(func).visit_prim_func(func)
    gvar = bb.add_func(func, name or opdef.name.rsplit(".", 1)[-1])
    from .builtin import call_tir
    return call_tir(gvar, Tuple(tuple(flat_args)), sinfo if isinstance(sinfo, TensorStructInfo)
                    else list(out_sinfos), tir_vars=scalars or None)


class _FreshSizeVars(StmtExprMutator):
    """The program's own copies of the graph's size vars (those in parameter shapes
    and the scalar parameters): a program is shared by call sites in different
    functions and printed on its own, so it must not hold the graph's Var objects."""

    def __init__(self, func: PrimFunc):
        free: dict[int, E.Var] = {}
        for p in func.params:
            for node in (p.shape if isinstance(p, Buffer) else (p,)):
                post_order_visit(node, lambda n: free.setdefault(id(n), n) if isinstance(n, E.Var) else None)
        self.vars = {k: E.Var(v.name, v.dtype) for k, v in free.items()}
        self.buffers: dict[int, Buffer] = {}

    def visit_var(self, v: E.Var) -> E.PrimExpr:
        return self.vars.get(id(v), v)

    def visit_buffer(self, buf: Buffer) -> Buffer:
        new = self.buffers.get(id(buf))
        if new is None:
            new = replace(buf, shape=tuple(self.visit_prim_expr(d) for d in buf.shape))
            self.buffers[id(buf)] = new
        return new


def _arg_names(call: Call, args: Sequence[Expr]) -> list[str]:
    """Placeholder names: the operator's argument name for each of the call's own
    arguments, `x{i}` otherwise."""
    opdef = get_op(call.op.name)
    out = []
    for i, a in enumerate(args):
        pos = next((k for k, c in enumerate(call.args) if c is a), None)
        out.append(opdef.args[pos] if pos is not None and pos < len(opdef.args) else f"x{i}")
    return out


def _script(call: Call) -> str:
    return get_op(call.op.name).script


# Small helpers the legalizers share -------------------------------------------------

def int_attr(value: Any) -> int:
    return value.value if isinstance(value, E.IntImm) else int(value)


def axes_of(attr: Any, ndim: int, where: str) -> tuple[int, ...]:
    """Axes attribute (None, int or tuple) as sorted non-negative ints."""
    if attr is None:
        return tuple(range(ndim))
    items = attr if isinstance(attr, (list, tuple)) else (attr,)
    out = sorted({(int_attr(a) + ndim) % ndim if ndim else 0 for a in items})
    if any(not -ndim <= int_attr(a) < ndim for a in items):
        raise ShapeError(f"{where}: axes {list(items)} out of range for rank {ndim}")
    return tuple(out)


def broadcast_indices(in_shape: Sequence[E.PrimExpr], shape: Sequence[E.PrimExpr],
                      idx: Sequence[E.PrimExpr]) -> tuple[E.PrimExpr, ...]:
    """The index into a tensor of `in_shape` for index `idx` of its numpy broadcast to
    `shape` (trailing dims align).

    A dim of 1 reads 0. A dim not provably equal to the output's (`m` against `n`,
    or `n` against 4: the struct-info rules accept both) reads `idx % dim`, which is
    right whether it turns out to be 1 or equal at run time, and never out of bounds."""
    lead = len(shape) - len(in_shape)
    out: list[E.PrimExpr] = []
    for k, d in enumerate(in_shape):
        o, i = shape[lead + k], idx[lead + k]
        if isinstance(d, E.IntImm) and d.value == 1:
            out.append(E.IntImm(0))
        elif d is o or arith.prove_equal(d, o):
            out.append(i)
        else:
            out.append(i % d)
    return tuple(out)


def broadcast_load(t: te.Tensor, shape: Sequence[E.PrimExpr], idx: Sequence[E.PrimExpr]) -> E.PrimExpr:
    """`t` read at index `idx` of its broadcast to `shape` (see broadcast_indices)."""
    return t[broadcast_indices(t.shape, shape, idx)]


def broadcast_compute(fn: Callable, *tensors: te.Tensor, shape: Sequence[E.PrimExpr],
                      name: str) -> te.Tensor:
    """`fn(element of each tensor)` over `shape`, the tensors broadcast to it."""
    return te.compute(shape, lambda *i: fn(*(broadcast_load(t, shape, i) for t in tensors)), name=name)


def count(shape: Sequence[E.PrimExpr], axes: Sequence[int], dtype: str) -> E.PrimExpr:
    """The number of elements over `axes` of `shape`, as a `dtype` scalar."""
    n: E.PrimExpr = E.IntImm(1)
    for a in axes:
        n = n * shape[a]
    return te.cast(arith.simplify(n), dtype)

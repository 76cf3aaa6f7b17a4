"""Check, before building, that every call of a tensor program passes tensors whose
shapes agree with the PrimFunc's buffers.

Why: a kernel trusts its buffer shapes. It reads each symbolic size from the first
buffer dim that is just that variable (the ABI in c.py) and never looks at the other
dims, so `R.call_tir(mm, (X, W), R.Tensor((n * 2, 64)))` against `Y: (n, 64)` would
allocate one shape and let the kernel write another. Here the struct-info shapes of
a call's arguments and outputs (`out_sinfo` for `R.call_tir`, the given outputs for
`R.memory.call_tir`) and its `tir_vars` are unified with the buffer shapes:

- dtype and rank must be equal (when the struct info knows them);
- each PrimFunc size var is bound, as in the kernel, by its first bare buffer dim
  (then by its scalar parameter); every other use of it, and every constant dim,
  must then equal the given dim.

A dim equality is proved with `compiler.ir.arith.prove_equal`. When it is provably
false -- the two dims differ for every positive value of the symbolic sizes, as
`n * 2` and `n` do -- the build fails (`CallShapeError`, naming the graph function,
the PrimFunc, the buffer, the variable and its binding, the expected and given
shapes). When it cannot be decided (`m` against `n`, an unknown shape or dtype) the
call is returned as unproved, and the VM code generator emits a run-time check
(Op.CHECK_KERNEL) that the VM runs once per execution plan.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

from ..ir import expr as E
from ..ir import graph as G
from ..ir import struct_info as S
from ..ir.arith import bound, free_vars, prove_equal, simplify, substitute
from ..ir.errors import CallShapeError
from ..ir.module import IRModule
from ..ir.tir import Buffer, PrimFunc
from ..ir.visitor import ExprVisitor

CALL_TIR = "relax.call_tir"
MEM_CALL_TIR = "relax.memory.call_tir"

# Dims and shapes in messages read as the VM's shape patterns do (`n * 2`).
_text = partial(E.fmt_expr, bare=True)
_shape = partial(E.fmt_shape, bare=True)


def verify_calls(mod: IRModule) -> set[int]:
    """Check every `call_tir` / `R.memory.call_tir` of every graph function of `mod`.

    Raises CallShapeError on a provable mismatch. Returns the ids (`id(call)`) of the
    calls whose agreement could not be proved statically: they need a run-time check.
    The ids are valid while `mod` is alive."""
    unproved: set[int] = set()
    for fname, func in mod.graph_functions().items():
        for call in _tir_calls(func):
            if not check_call(mod, fname, call):
                unproved.add(id(call))
    return unproved


def _tir_calls(func: G.Function) -> list[G.Call]:
    found: list[G.Call] = []

    class _Collect(ExprVisitor):
        def visit_call(self, call: G.Call) -> None:
            if isinstance(call.op, G.Op) and call.op.name in (CALL_TIR, MEM_CALL_TIR):
                found.append(call)
            super().visit_call(call)

    _Collect().visit_expr(func.body)
    return found


def _arg_list(args: G.Expr) -> tuple:
    return args.fields if isinstance(args, G.Tuple) else (args,)


def _given(call: G.Call) -> Optional[tuple[list, list, list]]:
    """(input struct infos, output struct infos, tir_vars values) of a call, or None when
    the call's form is not one the code generator accepts (it reports that itself)."""
    given_outs = call.op.name == MEM_CALL_TIR
    ins = [getattr(a, "struct_info", None) for a in _arg_list(call.args[1])]
    if given_outs:
        outs = [getattr(a, "struct_info", None) for a in _arg_list(call.args[2])]
    else:
        outs = list(call.sinfo_args)
        if len(outs) == 1 and isinstance(outs[0], S.TupleStructInfo):
            outs = list(outs[0].fields)
    tv_index = 3 if given_outs else 2
    scalars: list = []
    if len(call.args) > tv_index and call.args[tv_index] is not None:
        tv = call.args[tv_index]
        if not isinstance(tv, G.ShapeExpr):
            return None
        scalars = list(tv.values)
    return ins, outs, scalars


def check_call(mod: IRModule, fname: str, call: G.Call) -> bool:
    """True when the shapes of `call` (in graph function `fname`) provably agree with its
    PrimFunc; False when that needs checking at run time. Raises CallShapeError when they
    provably disagree."""
    gv = call.args[0]
    name = gv.name_hint if isinstance(gv, G.GlobalVar) else None
    prim = mod[name] if name is not None and name in mod else None
    given = _given(call)
    if not isinstance(prim, PrimFunc) or given is None:
        return False      # the code generator reports a malformed call
    ins, outs, scalar_values = given
    buffers = [p for p in prim.params if isinstance(p, Buffer)]
    scalar_params = [p for p in prim.params if isinstance(p, E.Var)]
    if len(buffers) != len(ins) + len(outs) or len(scalar_params) != len(scalar_values):
        return False      # the code generator reports the count mismatch
    roles = [f"argument {i}" for i in range(len(ins))] + [f"output {i}" for i in range(len(outs))]
    return _Unifier(fname, name, buffers, scalar_params).run(
        list(zip(buffers, ins + outs, roles)), scalar_values)


class _Unifier:
    def __init__(self, fname: str, prim_name: str, buffers: list, scalar_params: list):
        self.fname = fname
        self.prim_name = prim_name
        self.buffers = buffers
        self.scalar_params = scalar_params
        self.binding: dict = {}       # PrimFunc Var -> (graph PrimExpr, "buffer 'X' (argument 0)")

    def run(self, pairs: list, scalar_values: list) -> bool:
        proved = True
        shaped = []
        for buf, sinfo, role in pairs:
            if not isinstance(sinfo, S.TensorStructInfo):
                proved = False
                continue
            if sinfo.dtype not in ("", "void", None) and sinfo.dtype != buf.dtype:
                raise self.error(buf, role, f"expects dtype {buf.dtype}, given {sinfo.dtype}")
            if sinfo.dtype in ("", "void", None):
                proved = False
            if sinfo.ndim >= 0 and sinfo.ndim != len(buf.shape):
                raise self.error(buf, role, f"expects a {len(buf.shape)}-d tensor of shape "
                                            f"{_shape(buf.shape)}, given a {sinfo.ndim}-d "
                                            + (f"tensor of shape {_shape(sinfo.shape)}"
                                               if sinfo.shape is not None else "tensor"))
            if sinfo.shape is None:
                proved = False
                continue
            shaped.append((buf, sinfo.shape, role))
            for d, g in zip(buf.shape, sinfo.shape):     # bind at the first bare dim
                if isinstance(d, E.Var) and d not in self.binding:
                    self.binding[d] = (g, f"buffer {buf.name!r} ({role})")
        scalar_checks = []
        for i, (v, value) in enumerate(zip(self.scalar_params, scalar_values)):
            if v not in self.binding:
                self.binding[v] = (value, f"tir_vars[{i}]")
            else:
                scalar_checks.append((v, value, i))
        for buf, shape, role in shaped:
            if not self.check_shape(buf, shape, role):
                proved = False
        for v, value, i in scalar_checks:
            expected = self.binding[v][0]
            if prove_equal(expected, value):
                continue
            if _provably_unequal(expected, value):
                raise CallShapeError(
                    f"{self.fname}: call_tir of tensor program {self.prim_name!r}: tir_vars[{i}] "
                    f"gives {self.prim_name}'s {v.name} = {_text(value)}, but "
                    f"{self.binding[v][1]} binds {v.name} = {_text(expected)}")
            proved = False
        return proved

    def check_shape(self, buf: Buffer, shape: tuple, role: str) -> bool:
        """Check each dim of `shape` against `buf`'s; False when some cannot be decided."""
        expected = []
        for d in buf.shape:
            vs = free_vars(d)
            if any(v not in self.binding for v in vs):
                expected.append(None)    # not bindable from the call: the kernel fails to build
            else:
                expected.append(simplify(substitute(d, {v: self.binding[v][0] for v in vs})))
        proved = True
        for i, (e, g) in enumerate(zip(expected, shape)):
            if e is None:
                proved = False
                continue
            if prove_equal(e, g):
                continue
            if not _provably_unequal(e, g):
                proved = False
                continue
            vs = [v for v in free_vars(buf.shape) if v in self.binding]
            where = " and".join(f" {v.name} = {_text(self.binding[v][0])} (bound by "
                                f"{self.binding[v][1]})" for v in vs)
            exp_text = _shape([x if x is not None else d for x, d in zip(expected, buf.shape)])
            raise self.error(
                buf, role, f"has shape {_shape(buf.shape)}"
                           + (f" where{where}" if where else "")
                           + f", so it expects {exp_text}, but the call gives "
                             f"{_shape(shape)}: dim {i} is {_text(g)}, not {_text(e)}")
        return proved

    def error(self, buf: Buffer, role: str, msg: str) -> CallShapeError:
        return CallShapeError(f"{self.fname}: call_tir of tensor program {self.prim_name!r}: "
                              f"buffer {buf.name!r} ({role}) {msg}")


def _provably_unequal(a: E.PrimExpr, b: E.PrimExpr) -> bool:
    """True when `a != b` for every value >= 1 of their symbolic sizes (`n * 2` vs `n`,
    `64` vs `32`); False when they may be equal or it is unknown (`m` vs `n`). Sizes are
    taken to be positive: dims that agree only for empty tensors are a mismatch."""
    diff = E.as_expr(a) - E.as_expr(b)
    try:
        shifted = substitute(diff, {v: v + 1 for v in free_vars(diff)
                                    if not E.is_float_dtype(v.dtype)})
        lo, hi = bound(simplify(shifted))
    except Exception:   # not an integer expression the analysis handles: undecided
        return False
    return lo > 0 or hi < 0

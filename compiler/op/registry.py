"""The operator registry: each operator is defined once, with everything about it.

An `OpDef` holds, side by side: the user-facing constructor (the same function the
builder API and the script's `R.xxx` call), how to print a call back as script, the
struct-info rule, the fusion pattern kind, and (added by later stages, in the same
file as the op) the legalization to a tensor program and the sharding rule.

Writing an operator:

    @register_op("relax.add", script="R.add", args=("x1", "x2"), pattern=BROADCAST)
    def add(x1, x2): ...            # -> make_call(...)
    @add.infer
    def _(call): ...                # -> StructInfo, raises ShapeError / DTypeError

Legalization (`@add.legalizer`, run by compiler.transform.legalize_ops.LegalizeOps):
`fn(bb: BlockBuilder, call: Call) -> Expr` returns an expression with the call's
struct info that computes the same value without the operator, usually
`R.call_tir(gvar, args, out_sinfo)` of a tensor program added with `bb.add_func`
(which reuses an equal one). Write it with compiler.te through
`compiler.op._legalize.call_te`, which also sets the program's attr `op_pattern`
(this op's `pattern`, read by FuseOps). A legalizer may add functions to `bb`
but not emit bindings; it raises a CompilerError for calls it cannot lower.

Calls are built by `make_call`, which infers struct info eagerly when every argument
already has it, so an ill-typed program fails where it is written.

How a call prints (`OpDef.script_parts`): the expression arguments `call.args`
positionally, in the order of `OpDef.args`, then every attribute named in
`OpDef.attrs` that the call holds, as `name=value`, in that order (defaults included,
so printing never depends on knowing a default). Attribute values are None, bool,
int, float, str, PrimExpr (printed as a script expression, e.g. `n - 1`) or tuples
of those, printed as lists: `R.sum(x, axis=[0], keepdims=False)`. An op may
override this with `extra["script_parts"]` (call_tir prints `out_sinfo=` from
`Call.sinfo_args`). Parsing is the reverse: `get_op(script_name)(*args, **kwargs)`,
and each constructor accepts exactly what the printer writes (lists for tuples).
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Callable, Optional

from ..ir.attrs import Attrs
from ..ir.errors import CompilerError, StructInfoError
from ..ir.graph import Call, Expr, Op
from ..ir.struct_info import StructInfo


class OpPattern(IntEnum):
    """Fusion pattern kinds, ordered from most to least fusible (as in TVM)."""
    ELEMWISE = 0          # out[i] = f(in[i])
    BROADCAST = 1         # out[i, j] = f(in[i], other[j])
    INJECTIVE = 2         # each output element from one input element (reshape, permute, take)
    COMM_REDUCE = 3       # commutative reduction (sum, max)
    OUT_EWISE_FUSABLE = 4 # matmul: elementwise consumers can fuse into it
    TUPLE = 7
    OPAQUE = 8            # never fused


ELEMWISE, BROADCAST, INJECTIVE = OpPattern.ELEMWISE, OpPattern.BROADCAST, OpPattern.INJECTIVE
COMM_REDUCE, OUT_EWISE_FUSABLE, OPAQUE = OpPattern.COMM_REDUCE, OpPattern.OUT_EWISE_FUSABLE, OpPattern.OPAQUE


@dataclass(eq=False)
class OpDef:
    """Everything about one operator. Mutable only while ops register their rules."""
    name: str                       # canonical, e.g. "relax.nn.softmax"
    script: str                     # script spelling, e.g. "R.nn.softmax"
    args: tuple[str, ...]           # positional (expression) arguments, in order
    attrs: tuple[str, ...]          # attribute names, printed as keywords in this order
    constructor: Callable[..., Call]
    pattern: OpPattern = OPAQUE
    infer_struct_info: Optional[Callable[[Call], StructInfo]] = None
    legalize: Optional[Callable[..., Any]] = None       # (bb, call) -> Expr, see the docstring
    sharding_rule: Optional[Callable[..., Any]] = None  # compiler.distributed rule
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def op(self) -> Op:
        return Op(self.name)

    # Decorators to attach rules next to the op's definition.
    def infer(self, fn: Callable[[Call], StructInfo]) -> Callable[[Call], StructInfo]:
        self.infer_struct_info = fn
        return fn

    def legalizer(self, fn):
        self.legalize = fn
        return fn

    def sharding(self, fn):
        self.sharding_rule = fn
        return fn

    def script_parts(self, call: Call) -> tuple[list[Any], list[tuple[str, Any]]]:
        """What the printer writes for `call`: positional values and (keyword, value)
        pairs, in order (see the module docstring)."""
        custom = self.extra.get("script_parts")
        if custom is not None:
            return custom(call)
        return list(call.args), [(a, call.attrs[a]) for a in self.attrs if a in call.attrs]

    def __call__(self, *args, **kwargs) -> Call:
        try:
            return self.constructor(*args, **kwargs)
        except TypeError as e:
            if isinstance(e, CompilerError):
                raise
            check_arguments(f"{self.script} ({self.name})", self.constructor, args, kwargs)
            raise       # the arguments fit: a TypeError from inside the constructor



def check_arguments(label: str, fn: Callable[..., Any], args: tuple, kwargs: dict,
                    skip: int = 0) -> None:
    """Raise StructInfoError naming `label` and `fn`'s parameters when `args` / `kwargs`
    do not fit them (unknown or repeated keyword, too many or missing arguments), so the
    user reads `R.sum: unexpected keyword 'axes'`, not a Python closure's name. `skip`
    leading parameters are filled by the caller (the parser's `node`)."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[skip:]
    sig = sig.replace(parameters=params)
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        problem = str(e)
        names = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1)
            problem = f"unexpected keyword argument {unknown[0]!r}" + \
                (f" (did you mean {close[0]}?)" if close else "")
        raise StructInfoError(f"{label}: {problem}; accepted parameters: "
                              f"{parameter_list(params)}") from None


def parameter_list(params: list) -> str:
    """`x, axis=None, keepdims=False` (no annotations) for messages."""
    out = []
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            out.append(f"*{p.name}")
        elif p.kind is p.VAR_KEYWORD:
            out.append(f"**{p.name}")
        elif p.default is p.empty:
            out.append(p.name)
        else:
            out.append(f"{p.name}={p.default!r}")
    return ", ".join(out)


_OPS: dict[str, OpDef] = {}
_BY_SCRIPT: dict[str, OpDef] = {}


def register_op(name: str, *, script: str, args: tuple[str, ...], attrs: tuple[str, ...] = (),
                pattern: OpPattern = OPAQUE) -> Callable[[Callable[..., Call]], OpDef]:
    """Register the decorated constructor as operator `name`; returns its OpDef."""

    def wrap(constructor: Callable[..., Call]) -> OpDef:
        if name in _OPS:
            raise CompilerError(f"operator {name!r} is registered twice")
        opdef = OpDef(name, script, args, attrs, constructor, pattern)
        _OPS[name] = opdef
        _BY_SCRIPT[script] = opdef
        return opdef

    return wrap


def get_op(name: str) -> OpDef:
    """The OpDef of canonical name ("relax.add") or script name ("R.add")."""
    opdef = _OPS.get(name) or _BY_SCRIPT.get(name)
    if opdef is None:
        close = difflib.get_close_matches(name, list(_OPS) + list(_BY_SCRIPT), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise CompilerError(f"unknown operator {name!r}{hint}")
    return opdef


def find_op(name: str) -> Optional[OpDef]:
    """The OpDef registered under canonical name `name` ("relax.add"), or None (an
    operator nobody registered: the builder then needs the call's sinfo_args, the
    printer spells the call out)."""
    return _OPS.get(name)


def list_ops() -> list[str]:
    return sorted(_OPS)


def make_call(name: str, args: tuple[Expr, ...], attrs: Optional[dict[str, Any]] = None,
              sinfo_args: tuple[StructInfo, ...] = ()) -> Call:
    """Build a call of operator `name`; infer its struct info now when the args allow."""
    opdef = get_op(name)
    call = Call(Op(opdef.name), tuple(args), Attrs(attrs or {}), tuple(sinfo_args))
    return infer_call(call) if all(a.struct_info is not None for a in call.args) else call


def infer_call(call: Call) -> Call:
    """`call` with its struct info set from the operator's rule."""
    assert isinstance(call.op, Op)
    opdef = get_op(call.op.name)
    if opdef.infer_struct_info is None:
        raise CompilerError(f"operator {opdef.name} has no struct-info rule")
    return call.with_struct_info(opdef.infer_struct_info(call))

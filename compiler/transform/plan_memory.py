"""PlanMemory: explicit, reused storage for the outputs of call_tir / call_dps_packed.

Why: an unplanned function allocates every intermediate tensor; a planned one
allocates a few storages once (per input shapes, in the VM) and lets tensors
whose lifetimes do not overlap take turns in them. A chain of six elementwise
ops needs two storages, used ping-pong.

What it writes (ops in compiler/op/memory.py):

    R.call_tir(cls.f, (x,), out_sinfo=R.Tensor((n, 4), "float32"))
  ->
    storage = R.memory.alloc_storage(R.shape([16384]), R.dtype("float32"))  # first block
    ...
    t = R.memory.alloc_tensor(storage, R.prim_value(0), R.shape([n, 4]), R.dtype("float32"))
    y = R.memory.call_tir(cls.f, (x,), (t,))

Rules:
- Storage sizes are static: the tensor's byte size, or its upper bound when it has
  symbolic dims bounded by the function attr `{"tir_var_upper_bound": {"n": 1024}}`
  (or bounded by the shape itself, as `min(n, 64)`). A tensor of unbounded size is
  allocated at run time instead (`R.builtin.alloc_tensor`).
- A storage holds one live tensor at a time; it becomes free after the last use of
  that tensor (and of every value aliasing it: `y = x`, tuples, tuple items,
  match_cast). A tensor takes the smallest free storage of its dtype class (float,
  int, uint, bool) that fits, else the largest one (grown), else a new one. The
  output of a call never shares a storage with its inputs (kernels are not in-place).
- Never planned (allocated fresh on every call with `R.builtin.alloc_tensor`): tensors
  the function returns or that its return value aliases, and tensors passed to
  anything that may keep or return them (packed functions, other graph functions,
  control flow).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

from ..ir import expr as E
from ..ir import graph as G
from ..ir import struct_info as S
from ..ir.module import IRModule
from ..ir.visitor import post_order_visit
from ..op import builtin, memory

__all__ = ["PlanMemory", "upper_bound", "dtype_class"]

_DPS = frozenset({"relax.call_tir", "relax.call_dps_packed"})   # outputs allocated by the call
# Operators whose result may be one of their arguments (a runtime function's choice);
# every other operator reads its arguments and returns a fresh value.
_MAY_RETURN_ARGS = {"relax.call_packed", "relax.call_pure_packed"}


def PlanMemory(mod: IRModule) -> IRModule:
    """`mod` with call_tir / call_dps_packed outputs allocated explicitly, storage reused."""
    out = mod
    for name, func in mod.graph_functions().items():
        new = _plan_function(func)
        if new is not func:
            out = out.with_function(name, new)
    return out


# -- sizes --------------------------------------------------------------------------

def upper_bound(e: E.PrimExpr, bounds: dict) -> float:
    """An upper bound of shape expression `e` (math.inf when unknown); `bounds` maps
    symbolic variable names to their upper bounds. Symbolic sizes are >= 0."""
    return _interval(e, bounds)[1]


def _interval(e: E.PrimExpr, bounds: dict) -> tuple[float, float]:
    inf = math.inf
    if isinstance(e, E.IntImm):
        return e.value, e.value
    if isinstance(e, E.Var):
        return 0, bounds.get(e.name, inf)
    t = type(e)
    if t in (E.Add, E.Sub, E.Mul, E.FloorDiv, E.Min, E.Max):
        (alo, ahi), (blo, bhi) = _interval(e.a, bounds), _interval(e.b, bounds)
        if t is E.Add:
            return alo + blo, ahi + bhi
        if t is E.Sub:
            return alo - bhi, ahi - blo
        if t is E.Min:
            return min(alo, blo), min(ahi, bhi)
        if t is E.Max:
            return max(alo, blo), max(ahi, bhi)
        if t is E.Mul and alo >= 0 and blo >= 0:
            return alo * blo, (0 if 0 in (ahi, bhi) else ahi * bhi)
        if t is E.FloorDiv and isinstance(e.b, E.IntImm) and e.b.value > 0:
            c = e.b.value
            return (alo // c if alo != -inf else -inf), (ahi // c if ahi != inf else inf)
    return -inf, inf


def dtype_class(dtype: str) -> str:
    """Tensors of one class may share a storage: float, int, uint or bool."""
    for prefix in ("bfloat", "float", "uint", "int", "bool"):
        if dtype.startswith(prefix):
            return "float" if prefix == "bfloat" else prefix
    return dtype


def _byte_bound(sinfo: S.TensorStructInfo, bounds: dict) -> Optional[int]:
    n: float = E.dtype_bytes(sinfo.dtype)
    for d in sinfo.shape:
        hi = upper_bound(d, bounds)
        if hi == math.inf:
            return None
        n *= max(hi, 0)
    return int(n)


# -- analysis ------------------------------------------------------------------------

@dataclass(eq=False)
class _Tensor:
    """One output of a destination-passing call."""
    binding: int                  # index of the producing binding (flattened)
    sinfo: S.TensorStructInfo
    last_use: int = -1
    pinned: bool = False          # returned, or handed to something that may keep it
    nbytes: Optional[int] = None
    storage: Optional[int] = None


@dataclass
class _Storage:
    cls: str
    dtype: str
    nbytes: int
    var: Optional[G.Var] = None


@dataclass
class _Alias:
    """Which planned tensors a value may refer to: all of them, and per field for tuples."""
    tensors: frozenset = frozenset()
    fields: Optional[list] = None


def _is_dps(value: G.Expr) -> bool:
    return isinstance(value, G.Call) and isinstance(value.op, G.Op) and value.op.name in _DPS


def _out_sinfos(call: G.Call) -> Optional[list]:
    s = call.sinfo_args[0] if call.sinfo_args else None
    fields = list(s.fields) if isinstance(s, S.TupleStructInfo) else [s]
    if not all(isinstance(f, S.TensorStructInfo) and f.shape is not None for f in fields):
        return None
    return fields


def _graph_vars(e: G.Expr) -> list:
    out: list = []
    post_order_visit(e, lambda n: out.append(n) if isinstance(n, G.Var) else None)
    return out


class _Analysis:
    def __init__(self, func: G.Function):
        self.bindings = [b for block in func.body.blocks for b in block.bindings]
        self.tensors: dict = {}            # binding index -> [_Tensor per output]
        self.alias: dict = {}              # Var -> _Alias
        for i, b in enumerate(self.bindings):
            self.binding(i, b)
        for v in _graph_vars(func.body.body):
            for t in self.of(v).tensors:
                t.pinned = True

    def of(self, v: G.Var) -> _Alias:
        return self.alias.get(v, _Alias())

    def use(self, e: G.Expr, i: int, pin: bool) -> frozenset:
        every: set = set()
        for v in _graph_vars(e):
            for t in self.of(v).tensors:
                t.last_use = max(t.last_use, i)
                t.pinned |= pin
                every.add(t)
        return frozenset(every)

    def binding(self, i: int, b) -> None:
        value = b.value
        if _is_dps(value) and _out_sinfos(value) is not None:
            self.use(value, i, False)
            outs = [_Tensor(i, s, last_use=i) for s in _out_sinfos(value)]
            self.tensors[i] = outs
            single = isinstance(value.sinfo_args[0], S.TensorStructInfo)
            self.alias[b.var] = _Alias(frozenset(outs), None if single
                                       else [frozenset([t]) for t in outs])
        elif isinstance(value, G.Var):            # y = x, match_cast(x, ...): aliases
            self.use(value, i, False)
            self.alias[b.var] = self.of(value)
        elif isinstance(value, G.Tuple):
            self.use(value, i, False)
            fields = [self.use(f, i, False) if not isinstance(f, G.Var) else self.of(f).tensors
                      for f in value.fields]
            self.alias[b.var] = _Alias(frozenset().union(*fields) if fields else frozenset(),
                                       fields)
        elif isinstance(value, G.TupleGetItem) and isinstance(value.tuple_value, G.Var):
            self.use(value, i, False)
            src = self.of(value.tuple_value)
            if src.fields is not None and 0 <= value.index < len(src.fields):
                self.alias[b.var] = _Alias(src.fields[value.index])
            else:
                self.alias[b.var] = _Alias(src.tensors)
        elif isinstance(value, G.Call) and isinstance(value.op, G.Op) \
                and value.op.name not in _MAY_RETURN_ARGS:
            self.use(value, i, False)      # an operator: reads its inputs, returns a new value
        else:                              # may keep or return what it is given
            self.alias[b.var] = _Alias(self.use(value, i, True))


# -- assignment and rewrite ---------------------------------------------------------

def _assign(an: _Analysis, bounds: dict) -> list[_Storage]:
    storages: list[_Storage] = []
    free: list[int] = []
    dying: dict = {}
    for i in range(len(an.bindings)):
        for t in an.tensors.get(i, ()):
            if t.pinned:
                continue
            t.nbytes = _byte_bound(t.sinfo, bounds)
            if t.nbytes is None:
                continue
            cls = dtype_class(t.sinfo.dtype)
            same = [k for k in free if storages[k].cls == cls]
            fits = [k for k in same if storages[k].nbytes >= t.nbytes]
            if fits:
                k = min(fits, key=lambda k: storages[k].nbytes)
            elif same:
                k = max(same, key=lambda k: storages[k].nbytes)
                storages[k].nbytes = t.nbytes
            else:
                k = len(storages)
                storages.append(_Storage(cls, t.sinfo.dtype, t.nbytes))
            if k in free:
                free.remove(k)
            t.storage = k
            dying.setdefault(t.last_use, []).append(k)
        free.extend(dying.pop(i, ()))
    return storages


def _plan_function(func: G.Function) -> G.Function:
    an = _Analysis(func)
    if not an.tensors:
        return func
    bounds = dict(func.attrs.get("tir_var_upper_bound", None) or {})
    storages = _assign(an, bounds)
    head = []
    for k, st in enumerate(storages):
        call = memory.alloc_storage(builtin.shape([st.nbytes]), st.dtype)
        st.var = G.Var(f"storage{k}" if k else "storage", call.struct_info)
        head.append(G.VarBinding(st.var, call))
    blocks = [G.BindingBlock(tuple(head))] if head else []
    i = 0
    n_alloc = 0
    for block in func.body.blocks:
        out = []
        var_type = G.DataflowVar if isinstance(block, G.DataflowBlock) else G.Var
        for b in block.bindings:
            outs = an.tensors.get(i)
            i += 1
            if outs is None:
                out.append(b)
                continue
            regs = []
            for t in outs:
                shape = builtin.shape(list(t.sinfo.shape))
                if t.storage is None:
                    call = builtin.alloc_tensor(shape, t.sinfo.dtype, 0)
                else:
                    call = memory.alloc_tensor(storages[t.storage].var, 0, shape, t.sinfo.dtype)
                v = var_type(f"alloc{n_alloc}" if n_alloc else "alloc", call.struct_info)
                n_alloc += 1
                out.append(G.VarBinding(v, call))
                regs.append(v)
            out.append(replace(b, value=_dps_call(b.value, regs)))
        if blocks and not isinstance(block, G.DataflowBlock) and not isinstance(blocks[-1], G.DataflowBlock):
            # the storages' block joins a plain block that follows it: the script has no
            # boundary between two plain blocks, so keeping two would not print and parse back
            blocks[-1] = replace(blocks[-1], bindings=blocks[-1].bindings + tuple(out))
        else:
            blocks.append(replace(block, bindings=tuple(out)))
    return replace(func, body=replace(func.body, blocks=tuple(blocks)))


def _dps_call(call: G.Call, outs: list) -> G.Call:
    if call.op.name == "relax.call_tir":
        tir_vars = call.args[2] if len(call.args) > 2 else None
        new = memory.call_tir(call.args[0], call.args[1], list(outs), tir_vars)
    else:
        new = memory.call_dps_packed(call.args[0], call.args[1], list(outs))
    return new

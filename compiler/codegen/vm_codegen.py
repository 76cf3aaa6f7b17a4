"""Graph functions -> VM bytecode (the instruction set and encodings are defined in
disco/executable.py, which the runtime reads without importing the compiler).

Each graph function becomes a `disco.executable.VMFunction`:

- its signature: one shape pattern per parameter. A symbolic dim binds at its first
  bare occurrence in parameter order (`X: (n, 64)` binds n) and every other
  occurrence is checked (`W: (n, 64)`, `Z: (n * 2,)`);
- its code: registers for graph variables, a heap of symbolic ints for `n`, `m`, ...,
  shape expressions as Python expression strings over the heap (`"h[0] * 2"`).

Supported calls: `relax.call_tir` (allocate outputs, call the kernel),
`relax.call_dps_packed` (allocate outputs, call a runtime function by name),
calls of an `ExternFunc` (a runtime function returning a value), calls of another
graph function of the module, `relax.builtin.alloc_tensor`, and the planned-memory
forms (compiler/op/memory.py): `relax.memory.alloc_storage` / `alloc_tensor`
(ALLOC_STORAGE / ALLOC_VIEW) and `relax.memory.call_tir` / `call_dps_packed`
(the outputs are given). Any other operator must have been legalized before codegen.

A tensor-program call whose tensor shapes `verify_calls` could not prove equal to the
PrimFunc's buffer shapes is preceded by a CHECK_KERNEL instruction: the kernel's buffer
shapes as patterns over their own symbols, which the VM matches against the actual
arrays when it records a plan (so the check is not on a plan's hot path).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from disco.executable import Op, VMFunction

from ..ir import expr as E
from ..ir import graph as G
from ..ir import struct_info as S
from ..ir.arith import free_vars
from ..ir.errors import CodegenError
from ..ir.module import IRModule
from ..ir.tir import Buffer, PrimFunc
from .verify_calls import verify_calls

CALL_TIR = "relax.call_tir"
CALL_DPS_PACKED = "relax.call_dps_packed"
PACKED_CALLS = ("relax.call_packed", "relax.call_pure_packed")
ALLOC_TENSOR = "relax.builtin.alloc_tensor"
ALLOC_STORAGE = "relax.memory.alloc_storage"
ALLOC_VIEW = "relax.memory.alloc_tensor"
MEM_CALL_TIR = "relax.memory.call_tir"
MEM_CALL_DPS_PACKED = "relax.memory.call_dps_packed"


def codegen_vm(mod: IRModule, kernel_index: dict[str, int],
               constants: Optional[list] = None, *,
               unproved_calls: Optional[set[int]] = None,
               ) -> tuple[dict[str, VMFunction], list[np.ndarray]]:
    """Bytecode for every graph function of `mod`. `kernel_index` maps PrimFunc names to
    their index in the executable's kernel list. `unproved_calls` is what
    `verify_calls(mod)` returned (computed here when not given): the calls that get a
    run-time shape check. Returns (functions, constants)."""
    if unproved_calls is None:
        unproved_calls = verify_calls(mod)
    constants = [] if constants is None else constants
    const_ids: dict[int, int] = {}
    functions = {}
    for name, func in mod.graph_functions().items():
        functions[name] = _FunctionCodegen(mod, name, kernel_index, constants, const_ids,
                                           unproved_calls).run(func)
    return functions, constants


class _FunctionCodegen:
    def __init__(self, mod: IRModule, name: str, kernel_index: dict[str, int],
                 constants: list, const_ids: dict, unproved_calls: frozenset = frozenset()):
        self.mod = mod
        self.unproved_calls = unproved_calls
        self.kernel_checks: dict[str, dict] = {}   # PrimFunc name -> CHECK_KERNEL operand
        self.name = name
        self.kernel_index = kernel_index
        self.constants = constants
        self.const_ids = const_ids
        self.regs: dict = {}                # graph Var -> register
        self.num_regs = 0
        self.syms: dict = {}                # symbolic Var -> heap slot
        self.bound: set = set()             # symbolic Vars whose binding dim is emitted
        self.sym_names: list[str] = []
        self.code: list = []

    def error(self, msg: str) -> CodegenError:
        return CodegenError(f"{self.name}: {msg}")

    # -- expressions over the heap -------------------------------------------------
    def py(self, e: E.PrimExpr) -> str:
        """Python source of `e` over the heap `h`."""
        if isinstance(e, E.IntImm):
            return str(int(e.value))
        if isinstance(e, E.FloatImm):
            return repr(float(e.value))
        if isinstance(e, E.Var):
            if e not in self.syms:
                raise self.error(f"symbolic variable {e.name!r} is used before any parameter "
                                 "or match_cast binds it (a dim that is only a bare variable "
                                 "binds it)")
            return f"h[{self.syms[e]}]"
        if type(e) in (E.Min, E.Max):
            return f"{type(e).__name__.lower()}({self.py(e.a)}, {self.py(e.b)})"
        if type(e) in E.INFIX:   # the same spelling in Python: // and % floor, / true
            return f"({self.py(e.a)} {E.INFIX[type(e)]} {self.py(e.b)})"
        if isinstance(e, E.Not):
            return f"(not {self.py(e.a)})"
        if isinstance(e, E.Cast):
            return f"{'float' if E.is_float_dtype(e.dtype) else 'int'}({self.py(e.value)})"
        if isinstance(e, E.Select):
            return f"({self.py(e.true_value)} if {self.py(e.condition)} else {self.py(e.false_value)})"
        raise self.error(f"shape expression {e!r} cannot be evaluated by the VM")

    def dim(self, e: E.PrimExpr):
        """A shape entry for ALLOC / MAKE_SHAPE: an int or an expression string."""
        return int(e.value) if isinstance(e, E.IntImm) else self.py(e)

    # -- patterns -----------------------------------------------------------------
    def pattern(self, sinfo: Optional[S.StructInfo], bind: bool, what: str) -> dict:
        """The JSON shape pattern of `sinfo`; with `bind`, unbound bare vars bind here."""
        if sinfo is None or isinstance(sinfo, (S.ObjectStructInfo, S.FuncStructInfo)):
            return {"kind": "object"}
        if isinstance(sinfo, S.TensorStructInfo):
            shape = self.dims(sinfo.shape, bind, what) if sinfo.shape is not None else None
            return {"kind": "tensor", "dtype": sinfo.dtype if sinfo.dtype not in ("", "void", None)
                    else None, "ndim": sinfo.ndim, "shape": shape}
        if isinstance(sinfo, S.ShapeStructInfo):
            values = self.dims(sinfo.values, bind, what) if sinfo.values is not None else None
            return {"kind": "shape", "ndim": sinfo.ndim, "values": values}
        if isinstance(sinfo, S.PrimStructInfo):
            value = None
            if sinfo.value is not None and E.is_int_dtype(sinfo.dtype):
                value = self.dims((sinfo.value,), bind, what)[0]
            return {"kind": "prim", "dtype": sinfo.dtype, "value": value}
        if isinstance(sinfo, S.TupleStructInfo):
            return {"kind": "tuple", "fields": [self.pattern(f, bind, f"{what} field {i}")
                                                for i, f in enumerate(sinfo.fields)]}
        if isinstance(sinfo, S.DTensorStructInfo):
            raise self.error(f"{what} has distributed struct info {sinfo}; lower the module to "
                             "the local view (LowerToLocalView) before building")
        raise self.error(f"{what}: struct info {type(sinfo).__name__} is not supported by the VM")

    def dims(self, values, bind: bool, what: str) -> list:
        out = []
        for d in values:
            if isinstance(d, E.IntImm):
                out.append(int(d.value))
            elif isinstance(d, E.Var) and bind and d not in self.bound:
                if d not in self.syms:
                    self.syms[d] = len(self.sym_names)
                    self.sym_names.append(d.name)
                self.bound.add(d)
                out.append(["b", self.syms[d], d.name])
            else:
                missing = [v.name for v in free_vars(d) if v not in self.syms]
                if missing:
                    raise self.error(f"{what}: dim {E.fmt_expr(d, bare=True)} mentions {missing[0]!r}, which no "
                                     f"parameter or match_cast binds; give {missing[0]!r} a bare "
                                     "occurrence (a dim that is just the variable)")
                out.append(["e", self.py(d), E.fmt_expr(d, bare=True)])
        return out

    def ret_pattern(self, sinfo) -> dict:
        try:
            return self.pattern(sinfo, False, "return value")
        except CodegenError:   # mentions symbols bound inside the body only: keep the rank
            if isinstance(sinfo, S.TensorStructInfo):
                return {"kind": "tensor", "dtype": sinfo.dtype, "ndim": sinfo.ndim, "shape": None}
            return {"kind": "object"}

    # -- functions -------------------------------------------------------------------
    def new_reg(self) -> int:
        self.num_regs += 1
        return self.num_regs - 1

    def emit(self, op: Op, *operands) -> None:
        self.code.append([int(op), *operands])

    def run(self, func: G.Function) -> VMFunction:
        params = []
        for p in func.params:
            self.regs[p] = self.new_reg()
        # Heap slots for every var with a bare dim (so `Z: (n * 2,), X: (n,)` works: the VM
        # binds all bare first occurrences before it checks any dim); then the patterns.
        for p in func.params:
            self._prebind(p.struct_info)
        for p in func.params:
            params.append({"name": p.name_hint,
                           "pattern": self.pattern(p.struct_info, True, f"parameter {p.name_hint!r}")})
        ret = self.expr(func.body)
        self.emit(Op.RET, ret)
        bounds = func.attrs.get("tir_var_upper_bound", None) or {}
        return VMFunction(self.name, params, self.ret_pattern(func.ret_struct_info), self.code,
                          self.num_regs, self.sym_names,
                          {str(k): int(v) for k, v in dict(bounds).items()})

    def _prebind(self, sinfo) -> None:
        for d in _bare_dims(sinfo):
            if isinstance(d, E.Var) and d not in self.syms:
                self.syms[d] = len(self.sym_names)
                self.sym_names.append(d.name)

    # -- bodies ----------------------------------------------------------------------
    def expr(self, e: G.Expr) -> int:
        """Emit code computing `e`; return its register."""
        if isinstance(e, G.Var):
            try:
                return self.regs[e]
            except KeyError:
                raise self.error(f"variable {e.name_hint!r} is used before it is defined") from None
        if isinstance(e, G.SeqExpr):
            for block in e.blocks:
                for b in block.bindings:
                    self.binding(b)
            return self.expr(e.body)
        if isinstance(e, G.Constant):
            key = id(e.data)
            if key not in self.const_ids:
                self.const_ids[key] = len(self.constants)
                self.constants.append(_contiguous(e.data))
            r = self.new_reg()
            self.emit(Op.LOAD_CONST, r, self.const_ids[key])
            return r
        if isinstance(e, G.PrimValue):
            r = self.new_reg()
            self.emit(Op.PRIM, r, self.dim(e.value) if isinstance(e.value, E.IntImm)
                      else self.py(e.value))
            return r
        if isinstance(e, G.ShapeExpr):
            r = self.new_reg()
            self.emit(Op.MAKE_SHAPE, r, [self.dim(v) for v in e.values])
            return r
        if isinstance(e, (G.StringImm, G.DataTypeImm)):
            r = self.new_reg()
            self.emit(Op.LOAD_IMM, r, e.value)
            return r
        if isinstance(e, G.Tuple):
            fields = [self.expr(f) for f in e.fields]
            r = self.new_reg()
            self.emit(Op.MAKE_TUPLE, r, fields)
            return r
        if isinstance(e, G.TupleGetItem):
            t = self.expr(e.tuple_value)
            r = self.new_reg()
            self.emit(Op.TUPLE_GET, r, t, int(e.index))
            return r
        if isinstance(e, G.Call):
            return self.call(e)
        if isinstance(e, G.If):
            raise self.error("If (control flow) is not supported by the VM yet")
        raise self.error(f"{type(e).__name__} cannot be compiled to VM bytecode")

    def binding(self, b) -> None:
        if isinstance(b, G.MatchCast):
            r = self.expr(b.value)
            pat = self.pattern(b.struct_info, True, f"match_cast of {b.var.name_hint!r}")
            self.emit(Op.MATCH, r, pat, b.var.name_hint)
            self.regs[b.var] = r
        else:
            self.regs[b.var] = self.expr(b.value)

    def call(self, call: G.Call) -> int:
        op = call.op
        if isinstance(op, G.Op):
            if op.name == CALL_TIR:
                return self.call_tir(call)
            if op.name == CALL_DPS_PACKED:
                return self.call_dps(call)
            if op.name in PACKED_CALLS:
                return self.packed(_extern_name(call.args[0], self), call.args[1:])
            if op.name == MEM_CALL_TIR:
                return self.call_tir(call, given_outs=True)
            if op.name == MEM_CALL_DPS_PACKED:
                return self.call_dps(call, given_outs=True)
            if op.name == ALLOC_STORAGE:
                return self.alloc_storage(call)
            if op.name == ALLOC_VIEW:
                return self.alloc_view(call)
            if op.name == ALLOC_TENSOR:
                shape, dtype = call.args[0], call.args[1]
                if not isinstance(shape, G.ShapeExpr) or not isinstance(dtype, G.DataTypeImm):
                    raise self.error("alloc_tensor needs a literal shape and dtype")
                r = self.new_reg()
                self.emit(Op.ALLOC, r, dtype.value, [self.dim(v) for v in shape.values])
                return r
            raise self.error(f"operator {_script_name(op.name)} has no legalization yet; "
                             "legalize the module (compiler.transform.legalize_ops) before "
                             "building, or express it as call_tir / call_dps_packed")
        if isinstance(op, G.ExternFunc):
            return self.packed(op.global_symbol, call.args)
        if isinstance(op, G.GlobalVar):
            if op.name_hint not in self.mod:
                raise self.error(f"call of {op.name_hint!r}, which the module does not define")
            callee = self.mod[op.name_hint]
            if isinstance(callee, PrimFunc):
                raise self.error(f"tensor program {op.name_hint!r} is called directly; "
                                 "call it through R.call_tir")
            args = [self.expr(a) for a in call.args]
            r = self.new_reg()
            self.emit(Op.CALL_FUNC, r, op.name_hint, args)
            return r
        raise self.error(f"calls of {type(op).__name__} are not supported by the VM")

    def packed(self, name: str, args) -> int:
        regs = [self.expr(a) for a in args]
        r = self.new_reg()
        self.emit(Op.CALL_PACKED, r, name, regs)
        return r

    def _outputs(self, call: G.Call, what: str) -> tuple[list[int], bool]:
        """Allocate the outputs of a destination-passing call; (registers, is_tuple)."""
        sinfos = list(call.sinfo_args)
        is_tuple = len(sinfos) != 1
        if len(sinfos) == 1 and isinstance(sinfos[0], S.TupleStructInfo):
            sinfos, is_tuple = list(sinfos[0].fields), True
        outs = []
        for i, s in enumerate(sinfos):
            if not isinstance(s, S.TensorStructInfo) or s.shape is None:
                raise self.error(f"{what}: output {i} needs a tensor struct info with a known "
                                 f"shape, got {s}")
            r = self.new_reg()
            self.emit(Op.ALLOC, r, s.dtype, [self.dim(d) for d in s.shape])
            outs.append(r)
        return outs, is_tuple

    def _result(self, outs: list[int], is_tuple: bool) -> int:
        if not is_tuple:
            return outs[0]
        r = self.new_reg()
        self.emit(Op.MAKE_TUPLE, r, outs)
        return r

    def _given_outputs(self, call: G.Call) -> tuple[list[int], bool]:
        """The outputs of a planned destination-passing call; (registers, is_tuple)."""
        outs = [self.expr(a) for a in _arg_list(call.args[2])]
        return outs, len(outs) != 1

    def alloc_storage(self, call: G.Call) -> int:
        size, dtype = call.args[0], call.args[1]
        if not isinstance(size, G.ShapeExpr) or len(size.values) != 1 \
                or not isinstance(dtype, G.DataTypeImm):
            raise self.error("R.memory.alloc_storage needs a literal R.shape([nbytes]) and dtype")
        r = self.new_reg()
        self.emit(Op.ALLOC_STORAGE, r, self.dim(size.values[0]), dtype.value)
        return r

    def alloc_view(self, call: G.Call) -> int:
        storage, offset, shape, dtype = call.args
        if not isinstance(offset, G.PrimValue) or not isinstance(shape, G.ShapeExpr) \
                or not isinstance(dtype, G.DataTypeImm):
            raise self.error("R.memory.alloc_tensor needs a literal offset, shape and dtype")
        st = self.expr(storage)
        r = self.new_reg()
        self.emit(Op.ALLOC_VIEW, r, st, self.dim(offset.value), dtype.value,
                  [self.dim(v) for v in shape.values])
        return r

    def call_tir(self, call: G.Call, given_outs: bool = False) -> int:
        gv = call.args[0]
        name = gv.name_hint if isinstance(gv, G.GlobalVar) else None
        if name is None or name not in self.kernel_index:
            raise self.error(f"call_tir of {gv!r}, which is not a tensor program of the module")
        prim = self.mod[name]
        ins = [self.expr(a) for a in _arg_list(call.args[1])]
        if given_outs:
            outs, is_tuple = self._given_outputs(call)
        else:
            outs, is_tuple = self._outputs(call, f"call_tir {name}")
        scalars = []
        tv_index = 3 if given_outs else 2
        if len(call.args) > tv_index and call.args[tv_index] is not None:
            tv = call.args[tv_index]
            values = tv.values if isinstance(tv, G.ShapeExpr) else None
            if values is None:
                raise self.error(f"call_tir {name}: tir_vars must be a shape expression")
            scalars = [self.dim(v) for v in values]
        n_buf = sum(isinstance(p, Buffer) for p in prim.params)
        n_scalar = len(prim.params) - n_buf
        if n_buf != len(ins) + len(outs):
            raise self.error(f"call_tir {name}: the tensor program takes {n_buf} buffers, "
                             f"the call passes {len(ins)} inputs and {len(outs)} outputs")
        if n_scalar != len(scalars):
            raise self.error(f"call_tir {name}: the tensor program takes {n_scalar} scalar "
                             f"parameters, the call passes {len(scalars)} tir_vars")
        if id(call) in self.unproved_calls:
            self.emit(Op.CHECK_KERNEL, self.kernel_index[name], ins + outs, scalars,
                      self.kernel_check(name, prim, len(ins)))
        self.emit(Op.CALL_KERNEL, self.kernel_index[name], ins + outs, scalars)
        return self._result(outs, is_tuple)

    def kernel_check(self, name: str, prim: PrimFunc, num_ins: int) -> dict:
        """The CHECK_KERNEL operand of tensor program `name`: its buffers' and integer
        scalars' patterns over a heap of its own size vars (bound, as the kernel binds
        them, at the first bare buffer dim, then by the scalar parameter)."""
        key = f"{name}/{num_ins}"
        if key in self.kernel_checks:
            return self.kernel_checks[key]
        cg = _FunctionCodegen(self.mod, f"{self.name}: call_tir {name}", {}, [], {})
        buffers = [p for p in prim.params if isinstance(p, Buffer)]
        scalars = [p for p in prim.params if isinstance(p, E.Var)]
        for b in buffers:
            cg._prebind(S.TensorStructInfo(b.shape, b.dtype))
        for v in scalars:
            if E.is_int_dtype(v.dtype):
                cg._prebind(S.PrimStructInfo(v.dtype, v))
        entries = []
        for i, b in enumerate(buffers):
            role = f"argument {i}" if i < num_ins else f"output {i - num_ins}"
            try:
                pat = cg.pattern(S.TensorStructInfo(b.shape, b.dtype), True, f"buffer {b.name!r}")
            except CodegenError:   # a dim the call cannot bind: check dtype and rank only
                pat = {"kind": "tensor", "dtype": b.dtype, "ndim": len(b.shape), "shape": None}
            entries.append({"where": f"buffer {b.name!r} ({role})", "pattern": pat})
        scalar_entries = []
        for i, v in enumerate(scalars):
            try:
                pat = cg.pattern(S.PrimStructInfo(v.dtype, v if E.is_int_dtype(v.dtype) else None),
                                 True, f"scalar {v.name!r}")
            except CodegenError:
                pat = {"kind": "prim", "dtype": v.dtype, "value": None}
            scalar_entries.append({"where": f"scalar {v.name!r} (tir_vars[{i}])", "pattern": pat})
        check = self.kernel_checks[key] = {"tir": name, "syms": cg.sym_names,
                                           "buffers": entries, "scalars": scalar_entries}
        return check

    def call_dps(self, call: G.Call, given_outs: bool = False) -> int:
        name = _extern_name(call.args[0], self)
        ins = [self.expr(a) for a in _arg_list(call.args[1])]
        if given_outs:
            outs, is_tuple = self._given_outputs(call)
        else:
            outs, is_tuple = self._outputs(call, f"call_dps_packed {name}")
        self.emit(Op.CALL_PACKED, -1, name, ins + outs)
        return self._result(outs, is_tuple)


def _contiguous(a: np.ndarray) -> np.ndarray:
    # Not np.ascontiguousarray: it turns a 0-d array into a 1-d one.
    return a if a.flags.c_contiguous else np.array(a, order="C")


def _arg_list(args: G.Expr) -> tuple:
    return args.fields if isinstance(args, G.Tuple) else (args,)


def _extern_name(e: G.Expr, cg: _FunctionCodegen) -> str:
    if isinstance(e, G.ExternFunc):
        return e.global_symbol
    if isinstance(e, G.StringImm):
        return e.value
    raise cg.error(f"expected a runtime function name (ExternFunc), got {e!r}")


def _bare_dims(sinfo) -> list:
    """Dims of `sinfo` in pattern order (the order `pattern` walks them)."""
    if isinstance(sinfo, S.TensorStructInfo) and sinfo.shape is not None:
        return list(sinfo.shape)
    if isinstance(sinfo, S.ShapeStructInfo) and sinfo.values is not None:
        return list(sinfo.values)
    if isinstance(sinfo, S.PrimStructInfo) and sinfo.value is not None and E.is_int_dtype(sinfo.dtype):
        return [sinfo.value]
    if isinstance(sinfo, S.TupleStructInfo):
        return [d for f in sinfo.fields for d in _bare_dims(f)]
    return []


def _script_name(op_name: str) -> str:
    try:
        from ..op.registry import get_op
        return get_op(op_name).script
    except Exception:   # unregistered: derive "R.nn.relu" from "relax.nn.relu"
        return "R." + op_name.split(".", 1)[-1] if op_name.startswith("relax.") else op_name

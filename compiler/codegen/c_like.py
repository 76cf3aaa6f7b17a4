"""What the C and CUDA backends print alike: TIR expressions and statements as C.

`CFamilyPrinter` keeps the C names of vars and buffers, the vars known to be
non-negative (for a fast `/` and `%`), row-major strides, and prints expressions
and the statements both dialects write the same way. A backend subclasses it for
its kernel header (`emit`), loops (`stmt_For`), local buffers (`alloc`), and sets
the class attributes that name what differs: half-type conversions, NaN/infinity
and wide integer literals.

Scalar semantics (both backends): float16/bfloat16 are computed in float, integer
index arithmetic is int64, FloorDiv/FloorMod have floor semantics (`disco_floordiv`
/ `disco_floormod` from the prelude, a plain `/`, `%` where both sides are provably
non-negative). Blocks follow TVM: iterators are bound to their values as local
consts, the predicate guards the body, and `init` runs when every reduction
iterator is at the minimum of its domain.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Optional

from ..ir import arith
from ..ir import expr as E
from ..ir import tir as T
from ..ir.errors import CodegenError
from ..ir.visitor import vars_in, walk


_PLAIN_CTYPE = {
    "float32": "float", "float64": "double",
    "int8": "int8_t", "int16": "int16_t", "int32": "int32_t", "int64": "int64_t",
    "uint8": "uint8_t", "uint16": "uint16_t", "uint32": "uint32_t", "uint64": "uint64_t",
    "bool": "bool",
}


def storage_ctypes(float16: str, bfloat16: str) -> dict[str, str]:
    """dtype -> C storage type, given the dialect's types for the two half types."""
    return dict(_PLAIN_CTYPE, float16=float16, bfloat16=bfloat16)


# Type in which values of a dtype are computed (half types are widened to float).
COMPUTE_CTYPE = storage_ctypes(float16="float", bfloat16="float")


def c_identifier(name: str) -> str:
    """`name` made into a valid C identifier (not checked against reserved names)."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name) or "_"
    return "_" + ident if ident[0].isdigit() else ident


def unique_name(ident: str, used: set[str]) -> str:
    """`ident`, or `ident_<k>` for the first k making it not in `used`; added to `used`."""
    name, k = ident, 1
    while name in used:
        name, k = f"{ident}_{k}", k + 1
    used.add(name)
    return name


def check_dtype(dtype: str, where: str) -> str:
    if dtype not in COMPUTE_CTYPE:
        raise CodegenError(f"kernel {where!r}: dtype {dtype!r} is not supported by the C backend; "
                           f"supported: {sorted(COMPUTE_CTYPE)}")
    return dtype


def split_params(func: T.PrimFunc) -> tuple[list[T.Buffer], list[E.Var]]:
    """(buffer params, scalar Var params) of `func`, each in param order."""
    return ([p for p in func.params if isinstance(p, T.Buffer)],
            [p for p in func.params if isinstance(p, E.Var)])


# ---- reading TIR ---------------------------------------------------------------------------

def is_true(e: E.PrimExpr) -> bool:
    return isinstance(e, E.IntImm) and e.value != 0


def loop_nest(loop: T.For) -> tuple[list[T.For], T.Stmt]:
    """(the perfectly nested loops starting at `loop`, the statement inside them)."""
    chain, node = [], loop
    while isinstance(node, T.For):
        chain.append(node)
        node = node.body
    return chain, node


def reduction_update(realize: T.BlockRealize):
    """(op, rhs) when the block is `B[idx] = B[idx] op rhs` (op: + * max min) with `init`
    a store to the same element, `idx` free of reduction iterators and `rhs` not reading
    B; None otherwise (also for bool B)."""
    block = realize.block
    body, init = block.body, block.init
    if not (isinstance(body, T.BufferStore) and isinstance(init, T.BufferStore)):
        return None
    buf = body.buffer
    if init.buffer is not buf or init.indices != body.indices or buf.dtype == "bool":
        return None
    red_vars = {id(iv.var) for iv in block.iter_vars if iv.kind == "R"}
    if vars_in(body.indices) & red_vars:
        return None
    own = T.BufferLoad(buf, body.indices)
    v = body.value
    if isinstance(v, (E.Add, E.Mul, E.Max, E.Min)):
        op = {E.Add: "+", E.Mul: "*", E.Max: "max", E.Min: "min"}[type(v)]
        a, b = v.a, v.b
    elif isinstance(v, E.Call) and v.op in ("max", "min") and len(v.args) == 2:
        op, (a, b) = v.op, v.args
    else:
        return None
    rhs = b if a == own else a if b == own else None
    if rhs is None or any(isinstance(n, T.BufferLoad) and n.buffer is buf for n in walk(rhs)):
        return None
    return op, rhs


def _float_literal(value: float, dtype: str) -> str:
    """A finite float as a C literal, rounded to `dtype` first for the half types."""
    if dtype in ("float16", "bfloat16"):
        import ml_dtypes
        import numpy as np
        value = float(np.array(value, dtype=ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16))
    text = repr(float(value))
    if "e" not in text and "." not in text:
        text += ".0"
    return text if dtype == "float64" else text + "f"


# ---- the printer ---------------------------------------------------------------------------

class CFamilyPrinter:
    """Prints one kernel body; keeps C names of vars/buffers and the non-negative vars.

    Subclasses provide `emit`, `stmt_For` and `alloc`, and name the dialect's spelling
    of half-type conversions (format strings over one C expression) and special literals.
    """

    LOAD_AS_FLOAT = {"bfloat16": "disco_bf16_to_f32({})", "float16": "((float){})"}
    STORE_FROM_FLOAT = {"bfloat16": "disco_f32_to_bf16({})", "float16": "(_Float16)({})",
                        "bool": "(({}) != 0)"}
    ROUND_THROUGH = {"bfloat16": "disco_bf16_to_f32(disco_f32_to_bf16((float)({})))",
                     "float16": "((float)(_Float16)({}))"}
    NAN, INFINITY = "NAN", "INFINITY"

    def __init__(self, symbol: str, func: T.PrimFunc, reserved: set[str]):
        self.symbol, self.func = symbol, func
        self.lines: list[str] = []
        self.indent = 1
        self.names: dict[int, str] = {}  # id(Var|Buffer) -> C name
        self.used = set(reserved) | {symbol}
        self.nonneg: set[int] = set()    # ids of vars known to be >= 0
        self.strides: dict[int, list[str]] = {}  # id(Buffer) -> row-major strides (C exprs)
        self.dim_pos: dict[int, int] = {}        # id(size Var) -> its slot among the dims

    # ---- names and lines -----------------------------------------------------------------
    def _fresh(self, hint: str) -> str:
        base = c_identifier(hint)
        if base.startswith("disco_"):
            base = "v_" + base
        return unique_name(base, self.used)

    def bind(self, node, hint: str) -> str:
        name = self._fresh(hint)
        self.names[id(node)] = name
        return name

    def var(self, v: E.Var) -> str:
        try:
            return self.names[id(v)]
        except KeyError:
            raise CodegenError(f"kernel {self.symbol!r}: variable {v.name!r} is used but never bound "
                               "(not a bare buffer dim, scalar param, loop var or block iterator)") from None

    def line(self, text: str) -> None:
        self.lines.append("  " * self.indent + text)

    def open_scope(self, text: str) -> None:
        """A line ending in `{`; what follows is indented until `close_scope`."""
        self.line(text)
        self.indent += 1

    def close_scope(self) -> None:
        self.indent -= 1
        self.line("}")

    def bind_size_vars(self, buffers: list[T.Buffer], slot: Callable[[int], str]) -> int:
        """Declare each symbolic size var at the first bare dim it appears as, read from the
        dims slot `slot(pos)`; returns the number of dims slots of `buffers`."""
        pos = 0
        for buf in buffers:
            for d in buf.shape:
                if isinstance(d, E.Var) and id(d) not in self.names:
                    self.line(f"const int64_t {self.bind(d, d.name)} = {slot(pos)};")
                    self.nonneg.add(id(d))
                    self.dim_pos[id(d)] = pos
                pos += 1
        return pos

    def bind_iter_var(self, var: E.Var, value: E.PrimExpr) -> None:
        """Declare a block iterator (or thread index) as a local const of `value`."""
        name = self.bind(var, var.name)
        self.line(f"const int64_t {name} = {self.expr(value)};")
        if self.is_nonneg(value):
            self.nonneg.add(id(var))

    def loop_bounds(self, s: T.For) -> tuple[str, str, str]:
        """Bind the loop var of `s`: (its C name, first value, end) as C expressions."""
        name = self.bind(s.loop_var, s.loop_var.name)
        lo, ext = self.expr(s.min), self.expr(s.extent)
        if self.is_nonneg(s.min):
            self.nonneg.add(id(s.loop_var))
        return name, lo, ext if lo == "0" else f"{lo} + {ext}"

    def open_for(self, name: str, lo: str, end: str) -> None:
        self.open_scope(f"for (int64_t {name} = {lo}; {name} < {end}; ++{name}) {{")

    def _set_strides(self, buf: T.Buffer) -> None:
        strides, acc = [], "1"
        for d in reversed(buf.shape):
            strides.append(acc)
            dim = self.expr(d)
            acc = dim if acc == "1" else (str(int(acc) * d.value) if isinstance(d, E.IntImm)
                                           and acc.isdigit() else f"({acc} * {dim})")
        self.strides[id(buf)] = strides[::-1]

    def alloc(self, buf: T.Buffer) -> list[str]:
        """Declare a local buffer; returns the lines that release it."""
        raise NotImplementedError

    # ---- statements ----------------------------------------------------------------------
    def stmt(self, s: T.Stmt) -> None:
        method = getattr(self, "stmt_" + type(s).__name__, None)
        if method is None:
            raise CodegenError(f"kernel {self.symbol!r}: no C translation for statement {type(s).__name__}")
        method(s)

    def stmt_SeqStmt(self, s: T.SeqStmt) -> None:
        for sub in s.stmts:
            self.stmt(sub)

    def to_storage(self, value: str, dtype: str) -> str:
        """A computed value (C expression) converted to the storage type of `dtype`."""
        template = self.STORE_FROM_FLOAT.get(dtype)
        return template.format(value) if template else value

    def stmt_BufferStore(self, s: T.BufferStore) -> None:
        value = self.to_storage(self.expr(s.value), s.buffer.dtype)
        self.line(f"{self.buffer_ref(s.buffer, s.indices)} = {value};")

    def stmt_Evaluate(self, s: T.Evaluate) -> None:
        if not isinstance(s.value, (E.IntImm, E.FloatImm)):
            self.line(f"(void)({self.expr(s.value)});")

    def stmt_LetStmt(self, s: T.LetStmt) -> None:
        self.open_scope("{")
        value = self.expr(s.value)
        self.line(f"const {COMPUTE_CTYPE[s.var.dtype]} {self.bind(s.var, s.var.name)} = {value};")
        if self.is_nonneg(s.value):
            self.nonneg.add(id(s.var))
        self.stmt(s.body)
        self.close_scope()

    def stmt_IfThenElse(self, s: T.IfThenElse) -> None:
        self.open_scope(f"if ({self.expr(s.condition)}) {{")
        self.stmt(s.then_case)
        if s.else_case is not None:
            self.indent -= 1
            self.open_scope("} else {")
            self.stmt(s.else_case)
        self.close_scope()

    def stmt_Allocate(self, s: T.Allocate) -> None:
        self.open_scope("{")
        freed = self.alloc(s.buffer)
        self.stmt(s.body)
        for f in freed:
            self.line(f)
        self.close_scope()

    def stmt_BlockRealize(self, s: T.BlockRealize) -> None:
        block = s.block
        self.open_scope(f"{{  // block {block.name}")
        for iv, value in zip(block.iter_vars, s.iter_values):
            self.bind_iter_var(iv.var, value)
        guarded = not is_true(s.predicate)
        if guarded:
            self.open_scope(f"if ({self.expr(s.predicate)}) {{")
        freed = [line for buf in block.alloc_buffers for line in self.alloc(buf)]
        if block.init is not None and not self.init_is_hoisted(s):
            conds = [f"{self.var(iv.var)} == {self.expr(iv.dom.min)}" for iv in block.iter_vars
                     if iv.kind == "R"]
            if conds:
                self.open_scope(f"if ({' && '.join(conds)}) {{")
                self.stmt(block.init)
                self.close_scope()
            else:
                self.stmt(block.init)
        self.block_body(s)
        for f in freed:
            self.line(f)
        if guarded:
            self.close_scope()
        self.close_scope()

    def init_is_hoisted(self, s: T.BlockRealize) -> bool:
        """Whether the block's init was emitted before its reduction loops already."""
        return False

    def block_body(self, s: T.BlockRealize) -> None:
        self.stmt(s.block.body)

    # ---- expressions ---------------------------------------------------------------------
    def buffer_ref(self, buf: T.Buffer, indices) -> str:
        if id(buf) not in self.names:
            raise CodegenError(f"kernel {self.symbol!r}: buffer {buf.name!r} is used but is neither "
                               "a parameter nor allocated")
        if len(indices) != len(buf.shape):
            raise CodegenError(f"kernel {self.symbol!r}: buffer {buf.name!r} has {len(buf.shape)} dims, "
                               f"indexed with {len(indices)}")
        flat = self.folded_offset(buf, indices)
        if flat is not None:
            return f"{self.names[id(buf)]}[{self.index_expr(flat)}]"
        terms = []
        for idx, stride in zip(indices, self.strides[id(buf)]):
            text = self.index_expr(idx)
            if text == "0":
                continue
            terms.append(text if stride == "1" else f"{text} * {stride}")
        return f"{self.names[id(buf)]}[{' + '.join(terms) or '0'}]"

    def folded_offset(self, buf: T.Buffer, indices) -> Optional[E.PrimExpr]:
        """The flat offset of `indices` in `buf`, simplified, when the indices divide and
        take the modulo by constants that the offset recombines (a reshape reading
        `x[i // 64, i % 64]` from rows of 64 reads `x[i]`: contiguous, so it vectorizes
        without a gather); None otherwise (the offset is printed dim by dim)."""
        if not any(isinstance(n, (E.FloorDiv, E.FloorMod)) for i in indices for n in walk(i)) \
                or not all(isinstance(d, E.IntImm) for d in buf.shape[1:]) \
                or not all(i.dtype == "int64" for i in indices):
            return None
        flat, stride = None, 1
        for k in reversed(range(len(indices))):
            idx = indices[k]
            term = idx if stride == 1 else E.Mul(idx, E.IntImm(stride, "int64"), "int64")
            flat = term if flat is None else E.Add(term, flat, "int64")
            if k:
                stride *= buf.shape[k].value
        folded = arith.simplify(flat)
        count = lambda e: sum(isinstance(n, (E.FloorDiv, E.FloorMod)) for n in walk(e))  # noqa: E731
        if count(folded) >= sum(count(i) for i in indices):
            return None
        return folded

    def index_expr(self, e: E.PrimExpr) -> str:
        text = self.expr(e)
        return text if e.dtype == "int64" or isinstance(e, E.IntImm) else f"(int64_t)({text})"

    def is_nonneg(self, e: E.PrimExpr) -> bool:
        if isinstance(e, E.IntImm):
            return e.value >= 0
        if isinstance(e, E.Var):
            return id(e) in self.nonneg
        if isinstance(e, (E.Add, E.Mul, E.FloorDiv, E.Min, E.Max)):
            return self.is_nonneg(e.a) and self.is_nonneg(e.b)
        if isinstance(e, E.FloorMod):
            return self.is_nonneg(e.b)
        return False

    def expr(self, e: E.PrimExpr) -> str:
        method = getattr(self, "expr_" + type(e).__name__, None)
        if method is None:
            raise CodegenError(f"kernel {self.symbol!r}: no C translation for expression {type(e).__name__}")
        return method(e)

    def expr_IntImm(self, e: E.IntImm) -> str:
        if e.dtype == "bool":
            return "1" if e.value else "0"
        if -2**31 <= e.value < 2**31:
            return str(e.value)
        return self.wide_int_literal(e)

    def wide_int_literal(self, e: E.IntImm) -> str:
        """An integer constant outside int32's range."""
        return f"INT64_C({e.value})" if e.dtype == "int64" else str(e.value)

    def expr_FloatImm(self, e: E.FloatImm) -> str:
        if math.isnan(e.value):
            return self.NAN
        if math.isinf(e.value):
            return self.INFINITY if e.value > 0 else f"(-{self.INFINITY})"
        return _float_literal(e.value, e.dtype)

    def expr_Var(self, e: E.Var) -> str:
        return self.var(e)

    def expr_BufferLoad(self, e: T.BufferLoad) -> str:
        ref = self.buffer_ref(e.buffer, e.indices)
        template = self.LOAD_AS_FLOAT.get(e.buffer.dtype)
        return template.format(ref) if template else ref

    def _arith(self, e, op: str) -> str:
        return f"({self.expr(e.a)} {op} {self.expr(e.b)})"

    def expr_Add(self, e): return self._arith(e, "+")
    def expr_Sub(self, e): return self._arith(e, "-")
    def expr_Mul(self, e): return self._arith(e, "*")
    def expr_LT(self, e): return self._arith(e, "<")
    def expr_LE(self, e): return self._arith(e, "<=")
    def expr_GT(self, e): return self._arith(e, ">")
    def expr_GE(self, e): return self._arith(e, ">=")
    def expr_EQ(self, e): return self._arith(e, "==")
    def expr_NE(self, e): return self._arith(e, "!=")
    def expr_And(self, e): return self._arith(e, "&&")
    def expr_Or(self, e): return self._arith(e, "||")
    def expr_Not(self, e): return f"(!{self.expr(e.a)})"

    def expr_Div(self, e: E.Div) -> str:
        if E.is_float_dtype(e.dtype):
            ct = COMPUTE_CTYPE[e.dtype]
            a, b = self.expr(e.a), self.expr(e.b)
            if not E.is_float_dtype(e.a.dtype):
                a = f"({ct}){a}"
            if not E.is_float_dtype(e.b.dtype):
                b = f"({ct}){b}"
            return f"({a} / {b})"
        return self._arith(e, "/")  # integer Div truncates, as in C

    def expr_FloorDiv(self, e: E.FloorDiv) -> str:
        if E.is_float_dtype(e.dtype):
            f = "floorf" if COMPUTE_CTYPE[e.dtype] == "float" else "floor"
            return f"{f}({self.expr(e.a)} / {self.expr(e.b)})"
        if self.is_nonneg(e.a) and isinstance(e.b, E.IntImm) and e.b.value > 0:
            return self._arith(e, "/")
        return f"({COMPUTE_CTYPE[e.dtype]})disco_floordiv({self.expr(e.a)}, {self.expr(e.b)})"

    def expr_FloorMod(self, e: E.FloorMod) -> str:
        if E.is_float_dtype(e.dtype):
            f = "floorf" if COMPUTE_CTYPE[e.dtype] == "float" else "floor"
            a, b = self.expr(e.a), self.expr(e.b)
            return f"({a} - {f}({a} / {b}) * {b})"
        if self.is_nonneg(e.a) and isinstance(e.b, E.IntImm) and e.b.value > 0:
            return self._arith(e, "%")
        return f"({COMPUTE_CTYPE[e.dtype]})disco_floormod({self.expr(e.a)}, {self.expr(e.b)})"

    def _minmax(self, a: E.PrimExpr, b: E.PrimExpr, op: str) -> str:
        # Statement expression: each side evaluated once, vectorizes to min/max instructions.
        x, y = self.expr(a), self.expr(b)
        ct = COMPUTE_CTYPE.get(a.dtype, "int64_t")
        return f"({{ {ct} _a = {x}; {ct} _b = {y}; _a {op} _b ? _a : _b; }})"

    def expr_Min(self, e): return self._minmax(e.a, e.b, "<")
    def expr_Max(self, e): return self._minmax(e.a, e.b, ">")

    def expr_Cast(self, e: E.Cast) -> str:
        v = self.expr(e.value)
        if e.dtype in self.ROUND_THROUGH:
            return self.ROUND_THROUGH[e.dtype].format(v)
        if e.dtype == "bool":
            return f"(({v}) != 0)"
        return f"(({COMPUTE_CTYPE[check_dtype(e.dtype, self.symbol)]})({v}))"

    def expr_Select(self, e: E.Select) -> str:
        return f"({self.expr(e.condition)} ? {self.expr(e.true_value)} : {self.expr(e.false_value)})"

    def expr_Call(self, e: E.Call) -> str:
        args = [self.expr(a) for a in e.args]
        if e.op in ("max", "min"):
            return self._minmax(e.args[0], e.args[1], ">" if e.op == "max" else "<")
        if not E.is_float_dtype(e.dtype):
            if e.op == "fabs":
                return f"({args[0]} < 0 ? -{args[0]} : {args[0]})"
            raise CodegenError(f"kernel {self.symbol!r}: intrinsic {e.op!r} on {e.dtype} is not supported")
        single = COMPUTE_CTYPE[e.dtype] == "float"
        suffix = "f" if single else ""
        one = "1.0f" if single else "1.0"
        if e.op == "rsqrt":
            return f"({one} / sqrt{suffix}({args[0]}))"
        if e.op == "sigmoid":
            return f"({one} / ({one} + exp{suffix}(-({args[0]}))))"
        if e.op == "round":
            return f"nearbyint{suffix}({args[0]})"
        if e.op not in E.INTRINSICS:
            raise CodegenError(f"kernel {self.symbol!r}: unknown intrinsic {e.op!r}; known: {E.INTRINSICS}")
        return f"{e.op}{suffix}({', '.join(args)})"

    def expr_StringImm(self, e):
        raise CodegenError(f"kernel {self.symbol!r}: string {e.value!r} has no C value")

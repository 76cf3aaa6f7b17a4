"""The virtual machine: runs an Executable's graph functions on arrays.

    vm = disco.VirtualMachine(ex, device="cpu")
    y = vm["main"](x, w)          # numpy arrays, torch tensors, DLPack producers

How a call runs. The first call of a function with a given *plan key* (the shapes
and dtypes of its tensor arguments, plus shape and symbolic scalar arguments)
interprets the bytecode while recording it: arguments are checked against the
signature (binding symbolic dims), shapes are evaluated, intermediates allocated and
kernels called, and every step is recorded. The recording becomes an execution
plan, cached per key, in which all that can be decided from the key already is:

- symbolic dims, allocation shapes, kernel `dims` arrays: constants;
- intermediate tensors: allocated once, reused by every later call with that key
  (tensors that are returned are allocated fresh on each call, so results never
  alias storage the next call overwrites). Storages the compiler planned
  (ALLOC_STORAGE, sized for upper bounds) are shared by all plans of a function, so
  one set serves every key; those plans share one lock;
- kernel calls: `functools.partial(cfunc, args_addr, dims_addr)` over prebuilt ctypes
  arrays; the pointers of values that change per call (arguments, returned tensors,
  results of packed functions) are patched into those arrays once, when the value
  is produced, so calling a kernel costs one ctypes call (which releases the GIL).
- tensors a collective reads (a packed function's `in_place_inputs`, e.g.
  spmd.allreduce's input) come from `device.shared_empty`: on a worker with an shm
  communicator, its arena, so the peers read them in place (disco.ccl.empty).

Shapes the compiler could not prove to fit a kernel's buffers are checked by a
CHECK_KERNEL instruction before the kernel runs; like argument checks, that happens
while recording, so a plan keyed on the same shapes does not repeat it.

A plan run is a flat loop over steps. Functions whose shapes depend on data (a
match_cast binding a symbol from a packed function's result) are not cached and are
interpreted on every call. A VM is not meant to be shared by threads; a call that
finds its plan busy (another thread, re-entry) falls back to interpreting.

Devices: "cpu" (numpy; `_Device`) and "cuda"/"cuda:N" (cupy arrays, NVRTC kernels,
cuBLAS, optional CUDA graphs; `disco.cuda.CudaDevice`, same interface).
"""
from __future__ import annotations

import ast
import ctypes
import functools
import importlib
import re
import threading
from typing import Any, Callable, Optional

import numpy as np

from ._context import current_context
from .errors import DiscoError, SignatureError
from .executable import Executable, Op, VMFunction, format_dim, format_pattern, format_shape
from .tensor import as_numpy, contiguous, data_ptr, dtype_name, is_array_like, np_dtype

_KERNEL_PROTO = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_PLAN_CACHE_SIZE = 16


class _Device:
    """What the VM needs from a device: arrays, pointers and kernel functions."""

    name = "cpu"
    tensor_type = np.ndarray    # the exact type a plan takes without converting (is_tensor)

    def __init__(self, ex: Executable):
        self.lib = ex.load_library()

    empty = staticmethod(np.empty)
    ptr = staticmethod(data_ptr)

    @staticmethod
    def shared_empty(shape, dtype) -> np.ndarray:
        """An array the worker's collectives read in place where they can: from its
        communicator (shm: the arena, see disco.ccl.empty); numpy's without one."""
        comm = current_context().state.get("ccl")
        return np.empty(shape, dtype) if comm is None else comm.empty(shape, dtype)

    def kernel(self, symbol: str) -> Callable:
        if self.lib is None:
            raise DiscoError(f"executable has no kernel library, but needs kernel {symbol!r}")
        try:
            addr = ctypes.cast(getattr(self.lib, symbol), ctypes.c_void_p).value
        except AttributeError:
            raise DiscoError(f"kernel {symbol!r} is missing from the executable's library") from None
        return _KERNEL_PROTO(addr)

    def to_tensor(self, x: Any) -> np.ndarray:
        return contiguous(as_numpy(x))

    @staticmethod
    def is_tensor(x: Any) -> bool:
        """Whether `x` is a tensor of this device (kernels take it as is)."""
        return isinstance(x, np.ndarray)

    def packed(self, name: str) -> Optional[Callable]:
        """A device-specific variant of packed function `name`, or None (use the registry's)."""
        return None

    def wrap_handle(self, handle: "VMFunctionHandle") -> Any:
        """What `vm[name]` returns (the CUDA device wraps it for CUDA graphs)."""
        return handle


def _make_device(device: str, ex: Executable, **options: Any) -> _Device:
    if device == "cpu":
        if options:
            raise DiscoError(f"device 'cpu' takes no options, got {sorted(options)}")
        return _Device(ex)
    if device == "cuda" or device.startswith("cuda:"):
        from .cuda import CudaDevice     # cupy arrays, NVRTC kernels, CUDA graphs (disco/cuda.py)
        return CudaDevice(ex, device, **options)
    raise DiscoError(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'")


# -- shape expressions --------------------------------------------------------------

_ALLOWED_NODES = (ast.Expression, ast.Tuple, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp,
                  ast.IfExp, ast.Call, ast.Subscript, ast.Constant, ast.Name, ast.Load,
                  ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod, ast.Div, ast.USub, ast.Not,
                  ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.And, ast.Or)
_NAMES = {"h": None, "min": min, "max": max, "int": int, "float": float}


def compile_exprs(exprs: list, what: str) -> Callable[[list], tuple]:
    """`lambda h: (e0, e1, ...)` for expression strings (or ints) over the heap `h`."""
    parts = [str(e) if isinstance(e, int) else e for e in exprs]
    src = "(" + "".join(f"{p}, " for p in parts) + ")"
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError:
        raise DiscoError(f"{what}: malformed shape expression {src!r}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES) or \
                (isinstance(node, ast.Name) and node.id not in _NAMES) or \
                (isinstance(node, ast.Constant) and type(node.value) not in (int, float, bool)):
            raise DiscoError(f"{what}: shape expression {src!r} uses {ast.dump(node)[:40]}, "
                             "which the executable format does not allow")
    env = {"__builtins__": {}, **{k: v for k, v in _NAMES.items() if v is not None}}
    return eval(compile(f"lambda h: {src}", "<shape>", "eval"), env)  # noqa: S307 (checked above)


def _compile_expr(e, what: str) -> Callable[[list], Any]:
    f = compile_exprs([e], what)
    return lambda h: f(h)[0]


_HEAP_REF = re.compile(r"h\[(\d+)\]")


class _Pattern:
    """A shape pattern (see executable.py) ready to match: expressions compiled."""
    __slots__ = ("kind", "dtype", "ndim", "dims", "fields", "text", "syms", "text_dims")

    def __init__(self, p: dict, what: str):
        self.kind = p["kind"]
        self.text = format_pattern(p)
        self.dtype = np_dtype(p["dtype"]) if p.get("dtype") else None
        self.ndim = p.get("ndim", -1)
        self.fields = [_Pattern(f, what) for f in p.get("fields", ())]
        raw = p.get("shape") if self.kind == "tensor" else p.get("values") if self.kind == "shape" \
            else [p["value"]] if self.kind == "prim" and p.get("value") is not None else None
        self.dims = None
        self.syms: list[int] = []     # heap slots this pattern mentions, for error messages
        if raw is not None:
            self.dims = []
            for d in raw:
                if isinstance(d, int):
                    self.dims.append(("i", d, str(d)))
                elif d[0] == "b":
                    self.dims.append(("b", int(d[1]), d[2]))
                    self.syms.append(int(d[1]))
                else:
                    self.dims.append(("e", _compile_expr(d[1], what), d[2]))
                    self.syms.extend(int(m) for m in _HEAP_REF.findall(d[1]))
            self.syms = list(dict.fromkeys(self.syms))
            self.text_dims = [format_dim(d) for d in raw]


class _Fn:
    """A VMFunction decoded for execution: expressions compiled, patterns prepared."""

    def __init__(self, f: VMFunction, kernels: list, device: _Device):
        self.name = f.name
        self.vmf = f
        self.num_regs = f.num_regs
        self.num_syms = len(f.sym_names)
        self.sym_names = f.sym_names
        self.upper_bounds = [(i, name, f.upper_bounds[name]) for i, name in enumerate(f.sym_names)
                             if name in f.upper_bounds]
        self.param_names = [p["name"] for p in f.params]
        self.params = [_Pattern(p["pattern"], f"{f.name}: parameter {p['name']!r}") for p in f.params]
        self.code = []
        for ins in f.code:
            op = Op(ins[0])
            what = f"{f.name}: {op.name}"
            if op in (Op.PRIM,):
                ins = (op, ins[1], _compile_expr(ins[2], what))
            elif op is Op.MAKE_SHAPE:
                ins = (op, ins[1], compile_exprs(ins[2], what))
            elif op is Op.ALLOC:
                ins = (op, ins[1], np_dtype(ins[2]), compile_exprs(ins[3], what))
            elif op is Op.ALLOC_STORAGE:
                ins = (op, ins[1], _compile_expr(ins[2], what), ins[3])
            elif op is Op.ALLOC_VIEW:
                ins = (op, ins[1], ins[2], _compile_expr(ins[3], what), np_dtype(ins[4]),
                       compile_exprs(ins[5], what))
            elif op is Op.CALL_KERNEL:
                if not 0 <= ins[1] < len(kernels):
                    raise DiscoError(f"{what}: kernel index {ins[1]} out of range "
                                     f"({len(kernels)} kernels)")
                ins = (op, kernels[ins[1]], list(ins[2]), compile_exprs(ins[3], what))
            elif op is Op.MATCH:
                ins = (op, ins[1], _Pattern(ins[2], what), ins[3])
            elif op is Op.CHECK_KERNEL:
                if not 0 <= ins[1] < len(kernels):
                    raise DiscoError(f"{what}: kernel index {ins[1]} out of range "
                                     f"({len(kernels)} kernels)")
                ins = (op, _KernelCheck(f.name, ins[4], what), list(ins[2]),
                       compile_exprs(ins[3], what))
            else:
                ins = (op, *ins[1:])
            self.code.append(ins)


class _KernelCheck:
    """A CHECK_KERNEL operand decoded: the kernel's buffer and scalar patterns over its
    own heap of size vars. `name` and `sym_names` are what `_Matcher` reports."""
    __slots__ = ("name", "sym_names", "buffers", "scalars")
    upper_bounds = ()     # a kernel's sizes are bounded by its buffers, not by a plan

    def __init__(self, fn_name: str, check: dict, what: str):
        self.name = f"{fn_name}: call_tir of tensor program {check['tir']!r}"
        self.sym_names = list(check["syms"])
        self.buffers = [(_Pattern(b["pattern"], what), b["where"]) for b in check["buffers"]]
        self.scalars = [(_Pattern(b["pattern"], what), b["where"]) for b in check["scalars"]]

    def run(self, arrays: list, scalars: tuple, device: "_Device") -> None:
        """Raise SignatureError unless `arrays` and `scalars` fit the kernel's parameters."""
        if len(arrays) != len(self.buffers) or len(scalars) != len(self.scalars):
            raise SignatureError(f"{self.name}: the kernel takes {len(self.buffers)} buffers and "
                                 f"{len(self.scalars)} scalars, got {len(arrays)} and "
                                 f"{len(scalars)}")
        m = _Matcher(self, [0] * len(self.sym_names), {}, device)
        for (pat, where), a in zip(self.buffers, arrays):
            m.convert(pat, a, where, False)
        for (pat, where), v in zip(self.scalars, scalars):
            m.convert(pat, v, where, False)
        m.finish()


class _Kernel:
    __slots__ = ("info", "fn", "dtypes")

    def __init__(self, info, fn):
        self.info = info
        self.fn = fn
        self.dtypes = [np_dtype(b["dtype"]) for b in info.buffers]


# -- matching values against patterns ----------------------------------------------

def _got_text(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"a {x.ndim}-d {dtype_name(x.dtype) if x.dtype.kind != 'O' else 'object'} array of shape {tuple(x.shape)}"
    if isinstance(x, (tuple, list)):  # its arity, not its (possibly huge) contents
        return f"a {type(x).__name__} of {len(x)} field{'' if len(x) == 1 else 's'}"
    return f"{type(x).__name__} {x!r}"[:80]


class _Matcher:
    """Checks values against patterns, binding symbols into the heap `h` in two phases:
    `convert` checks kind, dtype and rank and binds every symbol at its first bare
    occurrence; `finish` then checks every dim against its now-known value."""

    def __init__(self, fn: "_Fn", h: list, binders: dict, device: "_Device"):
        self.fn = fn
        self.h = h
        self.binders = binders     # heap slot -> who bound it ("'X'")
        self.device = device
        self.checks: list = []

    def convert(self, pat: _Pattern, x: Any, where: str, is_param: bool) -> Any:
        kind = pat.kind
        if kind == "tensor":
            if not self.device.is_tensor(x):
                if not is_array_like(x):
                    self._fail(where, f"expects a tensor {pat.text}, got {_got_text(x)}")
                x = self.device.to_tensor(x) if is_param else as_numpy(x)
            elif is_param and not x.flags.c_contiguous:
                x = self.device.to_tensor(x)
            if pat.ndim >= 0 and x.ndim != pat.ndim:
                shape = f" of shape {format_shape(pat.text_dims)}" if pat.dims is not None else ""
                self._fail(where, f"expects a {pat.ndim}-d tensor{shape}, got {_got_text(x)}")
            if pat.dtype is not None and x.dtype != pat.dtype:
                got = dtype_name(x.dtype) if x.dtype.kind != "O" else "object"
                self._fail(where, f"expects dtype {dtype_name(pat.dtype)}, got {got}")
            if pat.dims is not None:
                self._bind(pat, tuple(x.shape), where)
            return x
        if kind == "shape":
            try:
                x = tuple(int(v) for v in x)
            except (TypeError, ValueError):
                self._fail(where, f"expects a shape {pat.text}, got {_got_text(x)}")
            if pat.ndim >= 0 and len(x) != pat.ndim:
                self._fail(where, f"expects a shape of {pat.ndim} dims {pat.text}, got {x}")
            if pat.dims is not None:
                self._bind(pat, x, where)
            return x
        if kind == "prim":
            v = _to_scalar(x, pat)
            if v is None:
                self._fail(where, f"expects a scalar {pat.text}, got {_got_text(x)}")
            x = v
            if pat.dims is not None:
                self._bind(pat, (x,), where)
            return x
        if kind == "tuple":
            if not isinstance(x, (tuple, list)) or len(x) != len(pat.fields):
                self._fail(where, f"expects a tuple of {len(pat.fields)} fields {pat.text}, got {_got_text(x)}")
            return tuple(self.convert(f, v, f"{where} field {i}", is_param)
                         for i, (f, v) in enumerate(zip(pat.fields, x)))
        return x

    def _bind(self, pat: _Pattern, got: tuple, where: str) -> None:
        for (kind, d, _), v in zip(pat.dims, got):
            if kind == "b" and d not in self.binders:
                self.h[d] = v
                self.binders[d] = where[len("parameter "):] if where.startswith("parameter ") \
                    else where
        self.checks.append((pat, got, where))

    def finish(self) -> None:
        h = self.h
        for pat, got, where in self.checks:
            expected = [d if kind == "i" else h[d] if kind == "b" else d(h)
                        for kind, d, _ in pat.dims]
            if list(got) != expected:
                names = self.fn.sym_names
                bound = [f"{names[i] if i < len(names) else i}={h[i]} (bound by {self.binders[i]})"
                         for i in pat.syms if i in self.binders]
                with_ = f" with {', '.join(bound)}" if bound else ""
                if pat.kind == "prim":
                    self._fail(where, f"expects value {pat.text_dims[0]}{with_}, got {got[0]}")
                self._fail(where, f"expects shape {format_shape(pat.text_dims)}{with_}, "
                                  f"got {tuple(got)}")
        self.checks.clear()
        for i, name, bound in self.fn.upper_bounds:
            if i in self.binders and h[i] > bound:
                raise SignatureError(
                    f"{self.fn.name}: size {name}={h[i]} (bound by {self.binders[i]}) exceeds its "
                    f"upper bound {bound} (function attr tir_var_upper_bound), which the "
                    f"memory plan assumed")

    def _fail(self, where: str, msg: str):
        raise SignatureError(f"{self.fn.name}: {where} {msg}")


def _to_scalar(x: Any, pat: _Pattern) -> Any:
    """A Python int/float/bool for a prim pattern, or None when `x` is not one."""
    if isinstance(x, (np.ndarray, np.generic)):
        if x.ndim != 0:
            return None
        x = x.item()
    if not isinstance(x, (int, float)):
        return None
    kind = pat.dtype.kind if pat.dtype is not None else None
    if kind in ("i", "u", "b"):
        if isinstance(x, float) and not x.is_integer():
            return None
        return bool(x) if kind == "b" else int(x)
    return float(x) if kind == "f" else x


# -- recording interpreter ------------------------------------------------------------

class _Recorder:
    """Interprets a function call while recording what it does (see the module docstring).

    Values live in a flat list of slots shared by all frames: a callee's parameters are
    its caller's slots, so calls are inlined into one plan."""

    def __init__(self, vm: "VirtualMachine"):
        self.vm = vm
        self.vals: list = []
        self.events: list = []        # effects and producers, in execution order
        self.volatile: set = set()    # slots whose value is not fixed by the plan key
        self.tuples: dict = {}        # slot -> field slots, for tuples made here
        self.allocs: dict = {}        # slot -> (shape, dtype)
        self.storages: dict = {}      # slot -> nbytes, storages made here (ALLOC_STORAGE)
        self.pool: Optional[list] = None   # the handle's storages, when this call may use them
        self.pool_slots: dict = {}    # slot -> index in the pool
        self.views: dict = {}         # slot -> its storage's slot (ALLOC_VIEW)
        self.param_slots: list = []
        self.cacheable = True

    def new(self, v: Any) -> int:
        self.vals.append(v)
        return len(self.vals) - 1

    def call_top(self, fn: _Fn, args) -> int:
        h, binders = [0] * fn.num_syms, {}
        m = _Matcher(fn, h, binders, self.vm.device)
        conv = [m.convert(p, a, f"parameter {n!r}", True)
                for p, a, n in zip(fn.params, args, fn.param_names)]
        m.finish()
        self.param_slots = [self.new(v) for v in conv]
        return self.body(fn, list(self.param_slots), h, binders)

    def call_inner(self, fn: _Fn, slots: list) -> int:
        h, binders = [0] * fn.num_syms, {}
        m = _Matcher(fn, h, binders, self.vm.device)
        for p, s, n in zip(fn.params, slots, fn.param_names):
            m.convert(p, self.vals[s], f"parameter {n!r}", False)
        m.finish()
        return self.body(fn, list(slots), h, binders)

    def body(self, fn: _Fn, arg_slots: list, h: list, binders: dict) -> int:
        vals, vm = self.vals, self.vm
        regs = arg_slots + [None] * (fn.num_regs - len(arg_slots))
        for ins in fn.code:
            op = ins[0]
            if op is Op.CALL_KERNEL:
                self.kernel(fn, ins[1], [regs[r] for r in ins[2]], ins[3](h))
            elif op is Op.CHECK_KERNEL:      # checked when recording: plans need not repeat it
                ins[1].run([vals[regs[r]] for r in ins[2]], ins[3](h), vm.device)
            elif op is Op.ALLOC:
                shape = ins[3](h)
                s = regs[ins[1]] = self.new(vm.device.empty(shape, ins[2]))
                self.allocs[s] = (shape, ins[2])
                self.events.append(("alloc", s))
            elif op is Op.ALLOC_VIEW:
                st, offset, dtype, shape = regs[ins[2]], ins[3](h), ins[4], ins[5](h)
                s = regs[ins[1]] = self.new(_view(fn.name, vals[st], offset, shape, dtype))
                self.views[s] = st
                self.events.append(("view", s, st, offset, shape, dtype, fn.name))
            elif op is Op.ALLOC_STORAGE:
                nbytes = int(ins[2](h))
                s = regs[ins[1]] = self.new(self.storage(nbytes))
                self.storages[s] = nbytes
                self.events.append(("storage", s, nbytes))
            elif op is Op.CALL_PACKED:
                dst, name, slots = ins[1], ins[2], [regs[r] for r in ins[3]]
                func = vm._packed(name)
                r = _normalize(func(*[vals[s] for s in slots]))
                s = None
                if dst >= 0:
                    s = regs[dst] = self.new(r)
                    self.volatile.add(s)
                guard = (r.shape, r.dtype) if vm.device.is_tensor(r) else None
                self.events.append(("packed", func, name, slots, s, guard))
            elif op is Op.LOAD_CONST:
                regs[ins[1]] = self.new(vm.constants[ins[2]])
            elif op is Op.LOAD_IMM:
                regs[ins[1]] = self.new(ins[2])
            elif op is Op.PRIM or op is Op.MAKE_SHAPE:
                regs[ins[1]] = self.new(ins[2](h))
            elif op is Op.MAKE_TUPLE:
                slots = [regs[r] for r in ins[2]]
                s = regs[ins[1]] = self.new(tuple(vals[f] for f in slots))
                self.tuples[s] = slots
                if any(f in self.volatile for f in slots):
                    self.volatile.add(s)
                self.events.append(("tuple", s, slots))
            elif op is Op.TUPLE_GET:
                src, idx = regs[ins[2]], ins[3]
                if src in self.tuples:      # a tuple made here: alias its field
                    regs[ins[1]] = self.tuples[src][idx]
                    continue
                t = vals[src]
                if not isinstance(t, tuple) or not -len(t) <= idx < len(t):
                    raise DiscoError(f"{fn.name}: TUPLE_GET {idx} of {_got_text(t)}")
                s = regs[ins[1]] = self.new(t[idx])
                self.volatile.add(s)
                self.events.append(("get", s, src, idx))
            elif op is Op.MATCH:
                s, pat, what = regs[ins[1]], ins[2], ins[3]
                before = len(binders)
                m = _Matcher(fn, h, binders, vm.device)
                m.convert(pat, vals[s], f"match_cast of {what!r}", False)
                m.finish()
                if s in self.volatile:
                    if len(binders) != before:
                        self.cacheable = False   # shapes depend on data: interpret each call
                    self.events.append(("match", s, fn, pat, what, list(h), dict(binders)))
            elif op is Op.CALL_FUNC:
                regs[ins[1]] = self.call_inner(vm._fn(ins[2]), [regs[r] for r in ins[3]])
            elif op is Op.RET:
                return regs[ins[1]]
            else:  # pragma: no cover - Op is closed
                raise DiscoError(f"{fn.name}: unknown instruction {op!r}")
        raise DiscoError(f"{fn.name}: bytecode ends without RET")

    def storage(self, nbytes: int) -> Any:
        """A storage of at least `nbytes`: the pool's k-th one for the k-th ALLOC_STORAGE of
        the call (every call of a function runs the same ones in the same order)."""
        pool = self.pool
        if pool is None:
            return self.vm.device.empty((nbytes,), _BYTES)
        k = len(self.pool_slots)
        if k == len(pool):
            pool.append(None)
        buf = pool[k]
        if buf is None or buf.nbytes < nbytes:
            buf = pool[k] = self.vm.device.empty((nbytes,), _BYTES)
        self.pool_slots[len(self.vals)] = k     # the slot `new` gives it next
        return buf

    def escaping(self, ret: int) -> set:
        """Allocations and storages the result may hold: those it returns (directly or in
        tuples), and those handed to a packed function whose result may be one of them."""
        escaping: set = set()

        def walk(s):
            if s in self.tuples:
                for f in self.tuples[s]:
                    walk(f)
            elif s in self.allocs:
                escaping.add(s)
            elif s in self.views:
                escaping.add(self.views[s])
        walk(ret)
        for ev in self.events:
            if ev[0] == "packed" and ev[4] is not None:
                for s in ev[3]:
                    walk(s)
        return escaping

    def collective_inputs(self) -> set:
        """Allocations and storages holding what a collective reads (the arguments at
        its packed function's `in_place_inputs`): made with `device.shared_empty`. A
        packed call's arguments escape (its result may be one of them), so these are
        made afresh by every call of the plan."""
        shared: set = set()
        for ev in self.events:
            if ev[0] == "packed":
                for i in getattr(ev[1], "in_place_inputs", ()):
                    if i < len(ev[3]):
                        s = ev[3][i]
                        shared.add(self.views.get(s, s))
        return shared

    def release_pool(self, ret: int) -> None:
        """Give up pool storages the result may view: the caller keeps them, so later
        calls must not write them."""
        for s in self.escaping(ret):
            k = self.pool_slots.get(s)
            if k is not None:
                self.pool[k] = None

    def kernel(self, fn: _Fn, k: _Kernel, slots: list, scalars: tuple) -> None:
        arrays = [self.vals[s] for s in slots]
        info = k.info
        if len(arrays) != len(k.dtypes):
            raise DiscoError(f"{fn.name}: kernel {info.name} takes {len(k.dtypes)} buffers, "
                             f"got {len(arrays)}")
        for a, dt, b in zip(arrays, k.dtypes, info.buffers):
            if not self.vm.device.is_tensor(a) or a.dtype != dt or a.ndim != b["ndim"] \
                    or not a.flags.c_contiguous:
                raise DiscoError(f"{fn.name}: kernel {info.name} buffer {b['name']!r} expects a "
                                 f"contiguous {b['ndim']}-d {b['dtype']} array, got {_got_text(a)}")
        dims = [d for a in arrays for d in a.shape] + [int(v) for v in scalars]
        ptrs = (ctypes.c_void_p * max(len(arrays), 1))(*[self.vm.device.ptr(a) for a in arrays])
        dimsarr = (ctypes.c_int64 * max(len(dims), 1))(*dims)
        k.fn(ctypes.addressof(ptrs), ctypes.addressof(dimsarr))
        self.events.append(("kernel", k, slots, ptrs, dimsarr))

    def finalize(self, ret: int, lock: Optional[threading.Lock] = None) -> "_Plan":
        """Turn the recording into a plan; see the module docstring."""
        escaping = self.escaping(ret)
        # A returned view: its storage, and every view of it, are made afresh each call.
        escaping |= {v for v, st in self.views.items() if st in escaping}
        dynamic = set(self.param_slots) | self.volatile | escaping
        for ev in self.events:           # tuples of fresh values are rebuilt each call
            if ev[0] == "tuple" and any(f in dynamic for f in ev[2]):
                dynamic.add(ev[1])
        self.share_storage(escaping)
        patches: dict = {s: [] for s in dynamic}
        for ev in self.events:
            if ev[0] == "kernel":
                for i, s in enumerate(ev[2]):
                    if s in dynamic:
                        patches[s].append((ev[3], i))
        return _Plan(self, ret, dynamic, escaping, patches, lock)


    def share_storage(self, escaping: set) -> None:
        """Intermediates whose lives do not overlap share storage (same byte size).

        Only tensors used solely as kernel or packed-call arguments take part; those in
        tuples, match_casts or results keep their own. Rewrites the recorded pointers."""
        last_use: dict = {}
        pinned = set(escaping)
        for i, ev in enumerate(self.events):
            kind = ev[0]
            if kind == "kernel":
                for s in ev[2]:
                    last_use[s] = i
            elif kind == "packed":
                for s in ev[3]:
                    last_use[s] = i
            elif kind == "tuple":
                pinned.update(ev[2])
            elif kind in ("match", "get"):
                pinned.add(ev[1] if kind == "match" else ev[2])
        free: dict = {}                   # nbytes -> [flat uint8 storage]
        owner: dict = {}                  # slot -> its flat storage
        dying: dict = {}                  # event index -> slots to free after it
        moved: dict = {}
        for i, ev in enumerate(self.events):
            if ev[0] == "alloc" and ev[1] not in pinned:
                s = ev[1]
                a = self.vals[s]
                pool = free.get(a.nbytes)
                if pool:
                    base = pool.pop()
                    self.vals[s] = moved[s] = base.view(a.dtype).reshape(a.shape)
                else:
                    base = a.reshape(-1).view(np.uint8)
                owner[s] = base
                dying.setdefault(last_use.get(s, i), []).append(s)
            for s in dying.pop(i, ()):
                free.setdefault(owner[s].nbytes, []).append(owner[s])
        if moved:
            for ev in self.events:
                if ev[0] == "kernel":
                    for j, s in enumerate(ev[2]):
                        if s in moved:
                            ev[3][j] = self.vm.device.ptr(moved[s])


def _normalize(r: Any) -> Any:
    """What a packed function returns, as VM values (numpy arrays, tuples, scalars)."""
    if isinstance(r, np.ndarray):
        return contiguous(r)
    if type(r).__module__.startswith("cupy"):   # a CUDA device's tensor stays on the device
        return contiguous(r)
    if isinstance(r, (tuple, list)):
        return tuple(_normalize(v) for v in r)
    if isinstance(r, np.generic):
        return r.item()
    if is_array_like(r):
        return np.asarray(as_numpy(r), order="C")   # (ascontiguousarray makes 0-d 1-d)
    return r


class _Plan:
    """A recorded call, replayable for arguments with the same plan key."""

    def __init__(self, rec: _Recorder, ret: int, dynamic: set, escaping: set, patches: dict,
                 lock: Optional[threading.Lock] = None):
        self.lock = lock or threading.Lock()
        vals = self.vals = list(rec.vals)
        for s in dynamic:
            vals[s] = None                 # no references to the recording call's values
        self.ret = ret
        self.keep = []                     # ctypes arrays the steps point into
        self.params = [(s, patches.get(s) or None) for s in rec.param_slots]
        steps = self.steps = []
        device = rec.vm.device
        self.ptr = device.ptr
        exact = {ev[1] for ev in rec.events if ev[0] == "match" and ev[3].kind == "tensor"
                 and ev[3].dims is not None and ev[3].dtype is not None}
        shared = rec.collective_inputs()
        for ev in rec.events:
            kind = ev[0]
            if kind == "kernel":
                _, k, slots, ptrs, dimsarr = ev
                self.keep.append((ptrs, dimsarr))
                steps.append(functools.partial(k.fn, ctypes.addressof(ptrs),
                                               ctypes.addressof(dimsarr)))
            elif kind == "storage" and ev[1] in escaping:
                steps.append(_storage_step(vals, ev[1], ev[2], device, ev[1] in shared))
            elif kind == "view" and ev[1] in escaping:
                steps.append(_view_step(vals, *ev[1:6], patches[ev[1]], device, ev[6]))
            elif kind == "alloc" and ev[1] in escaping:
                s = ev[1]
                shape, dtype = rec.allocs[s]
                steps.append(_alloc_step(vals, s, shape, dtype, patches[s], device, s in shared))
            elif kind == "packed":
                guard = None if ev[4] in exact else ev[5]   # a match_cast checks it exactly
                steps.append(_packed_step(vals, *ev[1:5], guard, patches.get(ev[4]), device))
            elif kind == "tuple" and ev[1] in dynamic:
                steps.append(_tuple_step(vals, ev[1], ev[2]))
            elif kind == "get":
                steps.append(_get_step(vals, ev[1], ev[2], ev[3], patches[ev[1]], device))
            elif kind == "match":
                steps.append(_match_step(vals, *ev[1:], device))

    def run(self, args) -> Any:
        vals = self.vals
        for (s, pl), a in zip(self.params, args):
            vals[s] = a
            if pl:
                p = self.ptr(a)
                for arr, i in pl:
                    arr[i] = p
        for step in self.steps:
            step()
        return vals[self.ret]


def _patch(pl, a, device):
    p = device.ptr(a)
    for arr, i in pl:
        arr[i] = p


_BYTES = np.dtype("uint8")       # a storage's element type (a dtype, as every device takes)


def _view(where: str, storage, offset: int, shape: tuple, dtype) -> Any:
    """A tensor of `shape` and `dtype` viewing `storage` (a flat byte buffer) from `offset`."""
    n = 1
    for d in shape:
        n *= d
    end = offset + n * dtype.itemsize
    if offset < 0 or end > storage.nbytes:
        raise DiscoError(f"{where}: a tensor of shape {tuple(shape)} {dtype_name(dtype)} at byte "
                         f"offset {offset} needs {end} bytes, but its storage has "
                         f"{storage.nbytes}; a symbolic dim is larger than the upper bound the "
                         "memory plan assumed (function attr tir_var_upper_bound)")
    return storage[offset:end].view(dtype).reshape(shape)


def _storage_step(vals, s, nbytes, device, shared=False):
    empty = device.shared_empty if shared else device.empty

    def step():
        vals[s] = empty((nbytes,), _BYTES)
    return step


def _view_step(vals, s, st, offset, shape, dtype, pl, device, where):
    def step():
        v = vals[s] = _view(where, vals[st], offset, shape, dtype)
        if pl:
            _patch(pl, v, device)
    return step


def _alloc_step(vals, s, shape, dtype, pl, device, shared=False):
    empty = device.shared_empty if shared else device.empty

    def step():
        a = vals[s] = empty(shape, dtype)
        if pl:
            _patch(pl, a, device)
    return step


def _packed_step(vals, func, name, slots, dst, guard, pl, device):
    def step():
        r = func(*[vals[s] for s in slots])
        if dst is not None:
            r = vals[dst] = _normalize(r)
            if guard is not None:
                if not device.is_tensor(r) or r.shape != guard[0] or r.dtype != guard[1]:
                    raise DiscoError(
                        f"packed function {name!r} returned {_got_text(r)}, but with the same "
                        f"argument shapes it returned shape {guard[0]} {dtype_name(guard[1])} "
                        "before; its result shape must depend only on its arguments' shapes")
            if pl:
                if not device.is_tensor(r):
                    raise DiscoError(f"packed function {name!r} returned {_got_text(r)}, "
                                     "where a tensor was expected")
                _patch(pl, r, device)
    return step


def _tuple_step(vals, s, fields):
    def step():
        vals[s] = tuple([vals[f] for f in fields])
    return step


def _get_step(vals, s, src, idx, pl, device):
    def step():
        v = vals[s] = vals[src][idx]
        if pl:
            _patch(pl, v, device)
    return step


def _match_step(vals, s, fn, pat, what, h, binders, device):
    def step():
        m = _Matcher(fn, list(h), dict(binders), device)
        m.convert(pat, vals[s], f"match_cast of {what!r}", False)
        m.finish()
    return step


# -- the VM ------------------------------------------------------------------------

class _Uncacheable(Exception):
    pass


def _deep_key(x: Any, tensor_type: type) -> Any:
    """The plan key of a structured argument (tuples of tensors, shapes). Tensors not of
    the device's type are uncacheable: the plan would take them unconverted."""
    if type(x) is tensor_type:
        if not x.flags.c_contiguous:
            raise _Uncacheable
        return (x.shape, x.dtype)
    if isinstance(x, (tuple, list)):
        return tuple(_deep_key(v, tensor_type) for v in x)
    if isinstance(x, (int, float, str)):
        return x
    if isinstance(x, np.generic):
        return x.item()
    raise _Uncacheable


_MISSING = object()     # a parameter no argument was given for


class VMFunctionHandle:
    """`vm["main"]`: call it with arrays; `.signature` describes its parameters."""

    def __init__(self, vm: "VirtualMachine", fn: _Fn):
        self.vm = vm
        self.fn = fn
        self.plans: dict = {}
        # Plans of one function share the storages the compiler planned (PlanMemory: sized
        # for upper bounds, so one set serves every shape key) and hence one lock.
        self.pool: list = []
        self.lock = threading.Lock()
        # How each argument enters the plan key: 0 tensor (shape, dtype), 1 not at all (a
        # scalar no shape depends on), 2 its structure and shapes (tuples, shapes, objects).
        self.kinds = []
        for p in fn.params:
            if p.kind == "tensor":
                self.kinds.append(0)
            elif p.kind == "prim" and p.dims is None:
                self.kinds.append(1)
            else:
                self.kinds.append(2)

    @property
    def signature(self) -> str:
        return self.fn.vmf.signature_text()

    def _by_name(self, args: tuple, kwargs: dict) -> tuple:
        """Positional arguments followed by keyword arguments, in parameter order."""
        names = self.fn.param_names
        out = list(args) + [_MISSING] * (len(names) - len(args))
        for name, value in kwargs.items():
            if name not in names:
                raise SignatureError(f"{self.fn.name} has no parameter {name!r}; its parameters "
                                     f"are ({', '.join(names)})")
            i = names.index(name)
            if i < len(args):
                raise SignatureError(f"{self.fn.name}: parameter {name!r} given both by position "
                                     f"(argument {i}) and by name")
            out[i] = value
        missing = [n for n, v in zip(names, out) if v is _MISSING]
        if missing:
            raise SignatureError(f"{self.fn.name}: missing argument{'s' if len(missing) > 1 else ''} "
                                 f"{', '.join(repr(n) for n in missing)} (parameters: "
                                 f"{', '.join(names)})")
        return tuple(out)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn = self.fn
        if kwargs:
            args = self._by_name(args, kwargs)
        if len(args) != len(self.kinds):
            raise SignatureError(
                f"{fn.name} expects {len(self.kinds)} argument{'s' if len(self.kinds) != 1 else ''}"
                f" ({', '.join(fn.param_names)}), got {len(args)}")
        key = []
        conv = None
        tensor_type = self.vm.device.tensor_type
        try:
            for i, kind in enumerate(self.kinds):
                x = args[i]
                if kind == 0:
                    if type(x) is not tensor_type or not x.flags.c_contiguous:
                        if not is_array_like(x):
                            raise _Uncacheable   # the matcher explains what was expected
                        if conv is None:
                            conv = list(args)
                        x = conv[i] = self.vm.device.to_tensor(x)
                    key.append(x.shape)
                    key.append(x.dtype)
                elif kind == 2:
                    key.append(_deep_key(x, tensor_type))
                elif type(x) not in (int, float, bool):
                    v = _to_scalar(x, fn.params[i])
                    if v is None:
                        raise _Uncacheable       # the matcher explains what was expected
                    if conv is None:
                        conv = list(args)
                    conv[i] = v
            key = tuple(key)
        except (_Uncacheable, DiscoError, TypeError, ValueError):
            key = None
        if conv is not None:
            args = conv
        plan = self.plans.get(key) if key is not None else None
        if plan is not None and plan.lock.acquire(False):
            try:
                return plan.run(args)
            finally:
                plan.lock.release()
        rec = _Recorder(self.vm)
        pooled = self.lock.acquire(False)   # else a plan runs (another thread, re-entry)
        try:
            if pooled:
                rec.pool = self.pool
            ret = rec.call_top(fn, args)
            result = rec.vals[ret]
            if pooled:
                rec.release_pool(ret)
            if rec.cacheable and key is not None and plan is None:
                if len(self.plans) >= _PLAN_CACHE_SIZE:
                    self.plans.pop(next(iter(self.plans)))
                self.plans[key] = rec.finalize(ret, self.lock)
        finally:
            if pooled:
                self.lock.release()
        return result

    def __repr__(self) -> str:
        return f"<VM function {self.signature}>"


class VirtualMachine:
    """Runs the graph functions of an `Executable` on one device."""

    def __init__(self, executable: Executable, device: str = "cpu", **device_options: Any):
        """`device_options` go to the device: "cuda" takes cuda_graph=True (disco/cuda.py)."""
        self.executable = executable
        self.device = _make_device(device, executable, **device_options)
        # on the device once, at load (kernels on "cuda" take device arrays only)
        self.constants = [self.device.to_tensor(c) for c in executable.constants]
        self._kernels = [_Kernel(k, self.device.kernel(k.name)) for k in executable.kernels]
        self._fns = {name: _Fn(f, self._kernels, self.device)
                     for name, f in executable.functions.items()}
        for f in self._fns.values():
            for ins in f.code:
                if ins[0] is Op.CALL_FUNC and ins[2] not in self._fns:
                    raise DiscoError(f"{f.name}: calls {ins[2]!r}, which the executable lacks")
        self._handles: dict = {}
        self._packed_funcs: dict = {}

    def _fn(self, name: str) -> _Fn:
        try:
            return self._fns[name]
        except KeyError:
            raise DiscoError(f"executable has no function {name!r}; it has "
                             f"{sorted(self._fns)}") from None

    def __getitem__(self, name: str) -> VMFunctionHandle:
        h = self._handles.get(name)
        if h is None:
            h = self._handles[name] = self.device.wrap_handle(VMFunctionHandle(self, self._fn(name)))
        return h

    def __contains__(self, name: str) -> bool:
        return name in self._fns

    def invoke(self, name: str, *args: Any) -> Any:
        return self[name](*args)

    def function_names(self) -> list[str]:
        return list(self._fns)

    def _packed(self, name: str) -> Callable:
        f = self._packed_funcs.get(name)
        if f is None:
            f = self._packed_funcs[name] = self.device.packed(name)
        if f is None:
            from . import registry
            if name.startswith("disco.blas."):
                importlib.import_module("disco.blas")   # registers the BLAS functions
            elif name.startswith("spmd."):
                importlib.import_module("disco.spmd")   # the collectives of lowered programs
            try:
                f = registry.get_global_func(name)
            except KeyError:
                f = None
            if f is None:
                raise DiscoError(f"packed function {name!r} is not registered; register it with "
                                 "disco.register_func before calling")
            self._packed_funcs[name] = f
        return f

"""What users hold: `VirtualMachine` (an Executable loaded on a device) and
`VMFunctionHandle` (`vm["main"]`), whose call computes the plan key of its arguments,
replays the cached plan for that key or records a new one (recorder.py, plan.py).

The key computation and the replay are the per-call cost of the VM, so `__call__`
is written for speed: one pass over the arguments, no matching when a plan exists.
"""
from __future__ import annotations

import importlib
import threading
from typing import Any, Callable, Optional

import numpy as np

from ..errors import DiscoError, SignatureError
from ..executable import Executable, Op
from ..tensor import is_array_like
from .decode import Function, Kernel
from .device import make_device
from .matcher import to_scalar
from .plan import ResultShapeChanged
from .recorder import Recorder

_PLAN_CACHE_SIZE = 16


class _Uncacheable(Exception):
    """An argument the plan key cannot describe: the call is interpreted."""


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
_BOUND = object()       # in a plan key: what follows identifies bound trailing arguments


class BoundArgs:
    """A function's trailing arguments fixed for many calls (a model's weights), from
    `VMFunctionHandle.bind`: `handle.call_bound(head, bound)` runs like
    `handle(*head, *bound.args)`, without recomputing the bound arguments' part of the
    plan key or re-binding them into a plan that ran with them last.

    The key part is computed once, at binding, and cannot go stale: each tensor is held
    as a private view (`x.view()`, the same memory), an array object no one else holds,
    so its shape, dtype and strides cannot be changed in place after the key was read
    (and a base array that has views cannot be resized). `key` is None when some bound
    argument cannot be described once (not an exact tensor of the device, a structured
    argument, a scalar to convert): calls then compute the whole key as a plain call
    does."""

    __slots__ = ("start", "args", "key", "__weakref__")

    def __init__(self, start: int, args: tuple, key):
        self.start, self.args, self.key = start, args, key


class VMFunctionHandle:
    """`vm["main"]`: call it with arrays; `.signature` describes its parameters."""

    def __init__(self, vm: VirtualMachine, fn: Function):
        self.vm = vm
        self.fn = fn
        self.plans: dict = {}
        # Plans of one function share the storages the compiler planned (PlanMemory: sized
        # for upper bounds, so one set serves every shape key) and hence one lock.
        self.pool: list = []
        self.lock = threading.Lock()
        self.varying: set = set()   # plan keys whose packed results changed shape: interpreted
        self.bound_keys: dict = {}  # (start, bound arguments' key part) -> its number in plan keys
        # How each argument enters the plan key: 0 tensor (shape, dtype), 1 not at all (a
        # scalar no shape depends on), 2 its structure and shapes (tuples, shapes), 3 not
        # at all and passed as it is (an R.Object: a runtime object such as the KV cache).
        self.kinds = []
        for p in fn.params:
            if p.kind == "tensor":
                self.kinds.append(0)
            elif p.kind == "prim" and p.dims is None:
                self.kinds.append(1)
            elif p.kind == "object":
                self.kinds.append(3)
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

    def bind(self, start: int, args) -> BoundArgs:
        """`args` as the arguments from position `start` on of many calls (`call_bound`)."""
        args = tuple(args)
        if start < 0 or start + len(args) != len(self.kinds):
            raise SignatureError(
                f"{self.fn.name} expects {len(self.kinds)} arguments ({', '.join(self.fn.param_names)}); "
                f"cannot bind {len(args)} from position {start}")
        tensor_type = self.vm.device.tensor_type
        out, key = [], []
        for kind, x in zip(self.kinds[start:], args):
            if kind == 0 and key is not None:
                if type(x) is tensor_type and x.flags.c_contiguous:
                    x = x.view()        # private: its shape and dtype stay those keyed
                    key.append(x.shape)
                    key.append(x.dtype)
                else:
                    key = None          # converted on each call, as a plain call does
            elif kind == 1 and type(x) not in (int, float, bool):
                key = None
            elif kind == 2:
                key = None
            out.append(x)
        if key is not None:
            key = self.bound_keys.setdefault((start, tuple(key)), len(self.bound_keys))
        return BoundArgs(start, tuple(out), key)

    def call_bound(self, head: tuple, bound: BoundArgs) -> Any:
        """`self(*head, *bound.args)`: the bound arguments' key part and their binding
        into the plan (when it ran with `bound` last) are not done again."""
        if bound.key is None or len(head) != bound.start:
            return self(*head, *bound.args)
        return self._call(head, bound)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            args = self._by_name(args, kwargs)
        return self._call(args, None)

    def _call(self, args: tuple, _bound: Optional[BoundArgs]) -> Any:
        fn = self.fn
        kinds = self.kinds
        if _bound is not None:          # call_bound: the head only; the key ends with the bound part
            kinds = kinds[:_bound.start]
        if len(args) != len(kinds):
            raise SignatureError(
                f"{fn.name} expects {len(self.kinds)} argument{'s' if len(self.kinds) != 1 else ''}"
                f" ({', '.join(fn.param_names)}), got {len(args)}")
        key = []
        conv = None
        tensor_type = self.vm.device.tensor_type
        try:
            for i, kind in enumerate(kinds):
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
                elif kind == 3:
                    continue
                elif type(x) not in (int, float, bool):
                    v = to_scalar(x, fn.params[i])
                    if v is None:
                        raise _Uncacheable       # the matcher explains what was expected
                    if conv is None:
                        conv = list(args)
                    conv[i] = v
            if _bound is not None:
                key.append(_BOUND)
                key.append(_bound.key)
            key = tuple(key)
        except (_Uncacheable, DiscoError, TypeError, ValueError):
            key = None
        if conv is not None:
            args = conv
        if key is not None and key in self.varying:
            key = None
        plan = self.plans.get(key) if key is not None else None
        if plan is not None and plan.lock.acquire(False):
            try:
                return plan.run(args, _bound)
            except ResultShapeChanged:
                # A packed function's result shape follows something besides the argument
                # shapes (a runtime object's state): interpret this key from now on; the
                # work done so far is done again (graph functions are pure).
                self.plans.pop(key, None)
                self.varying.add(key)
            finally:
                plan.lock.release()
            key, plan = None, None
        if _bound is not None:
            args = tuple(args) + _bound.args
        rec = Recorder(self.vm)
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
        self.device = make_device(device, executable, **device_options)
        # on the device once, at load (kernels on "cuda" take device arrays only)
        self.constants = [self.device.to_tensor(c) for c in executable.constants]
        self._kernels = [Kernel(k, self.device.kernel(k.name)) for k in executable.kernels]
        self._fns = {name: Function(f, self._kernels, self.device)
                     for name, f in executable.functions.items()}
        for f in self._fns.values():
            for ins in f.code:
                if ins[0] is Op.CALL_FUNC and ins[2] not in self._fns:
                    raise DiscoError(f"{f.name}: calls {ins[2]!r}, which the executable lacks")
        self._handles: dict = {}
        self._packed_funcs: dict = {}

    def _fn(self, name: str) -> Function:
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

    def _packed(self, name: str) -> Callable:
        f = self._packed_funcs.get(name)
        if f is None:
            f = self._packed_funcs[name] = self.device.packed(name)
        if f is None:
            from .. import registry
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

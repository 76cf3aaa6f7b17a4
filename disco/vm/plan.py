"""Execution plans: a recorded call turned into a flat list of steps.

A plan holds what the recording decided from the plan key (constant shapes and
`dims` arrays, intermediates allocated once, kernel calls as native `KernelCall`s over
prebuilt ctypes arrays); its steps do only what must happen on every call: make the
tensors the result may hold, call kernels and packed functions, patch the pointers of
values that change per call. See the package docstring (disco/vm/__init__.py) for how
a call runs; the recording is disco/vm/recorder.py.
"""
from __future__ import annotations

import ctypes
import functools
import operator
import threading
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .. import _native
from ..errors import DiscoError
from ..tensor import as_numpy, contiguous, dtype_name, is_array_like
from .matcher import Matcher, got_text

if TYPE_CHECKING:
    from .recorder import Recorder

BYTES = np.dtype("uint8")       # a storage's element type (a dtype, as every device takes)


def normalize(r: Any) -> Any:
    """What a packed function returns, as VM values (numpy arrays, tuples, scalars)."""
    if isinstance(r, np.ndarray):
        return contiguous(r)
    if type(r).__module__.startswith("cupy"):   # a CUDA device's tensor stays on the device
        return contiguous(r)
    if isinstance(r, (tuple, list)):
        return tuple(normalize(v) for v in r)
    if isinstance(r, np.generic):
        return r.item()
    if is_array_like(r):
        return np.asarray(as_numpy(r), order="C")   # (ascontiguousarray makes 0-d 1-d)
    return r


def view(where: str, storage, offset: int, shape: tuple, dtype) -> Any:
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


class Plan:
    """A recorded call, replayable for arguments with the same plan key."""

    def __init__(self, rec: Recorder, ret: int, dynamic: set, escaping: set, patches: dict,
                 lock: Optional[threading.Lock] = None):
        self.lock = lock or threading.Lock()
        vals = self.vals = list(rec.vals)
        for s in dynamic:
            vals[s] = None                 # no references to the recording call's values
        self.ret = ret
        self.keep = []                     # ctypes arrays the steps point into
        self.params = [(s, patches.get(s) or None) for s in rec.param_slots]
        self.bound = None                  # the BoundArgs bound into vals by the last run
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
                steps.append(_kernel_step(k.fn, ctypes.addressof(ptrs), ctypes.addressof(dimsarr)))
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
                func = _specialized(ev[1], ev[3], rec.vals, dynamic)
                steps.append(_packed_step(vals, func, *ev[2:5], guard, patches.get(ev[4]), device))
            elif kind == "tuple" and ev[1] in dynamic:
                steps.append(_tuple_step(vals, ev[1], ev[2]))
            elif kind == "get":
                steps.append(_get_step(vals, ev[1], ev[2], ev[3], patches[ev[1]], device))
            elif kind == "match":
                steps.append(_match_step(vals, *ev[1:], device))

    def run(self, args, bound=None) -> Any:
        """Run with arguments `args`, followed by `bound.args` when `bound` (a
        machine.BoundArgs) is given: those stay bound (in vals and the kernels' pointer
        arrays, which nothing else writes) from the last run that had the same `bound`."""
        vals = self.vals
        for (s, pl), a in zip(self.params, args):
            vals[s] = a
            if pl:
                p = self.ptr(a)
                for arr, i in pl:
                    arr[i] = p
        if bound is not self.bound:
            if bound is not None:
                for (s, pl), a in zip(self.params[bound.start:], bound.args):
                    vals[s] = a
                    if pl:
                        p = self.ptr(a)
                        for arr, i in pl:
                            arr[i] = p
            self.bound = bound
        for step in self.steps:
            step()
        return vals[self.ret]


# -- steps: one closure per recorded event that must happen on every call -------------

# An extension module built before csrc/vm_bindings.cc lacks it (rerun pip install -e .):
# kernels then go through ctypes, as before, and tests/compiler/test_vm.py says so.
_KernelCall = getattr(_native, "KernelCall", None)


def _kernel_step(fn, args_addr: int, dims_addr: int):
    """fn(args, dims): a compiled CPU kernel (a ctypes function) as a native KernelCall,
    about a third of a ctypes call's cost; other devices' kernels as a partial."""
    if isinstance(fn, ctypes._CFuncPtr) and _KernelCall is not None:
        return _KernelCall(ctypes.cast(fn, ctypes.c_void_p).value, args_addr, dims_addr, fn)
    return functools.partial(fn, args_addr, dims_addr)


def _patch(pl, a, device):
    p = device.ptr(a)
    for arr, i in pl:
        arr[i] = p


def _storage_step(vals, s, nbytes, device, shared=False):
    empty = device.shared_empty if shared else device.empty

    def step():
        vals[s] = empty((nbytes,), BYTES)
    return step


def _view_step(vals, s, st, offset, shape, dtype, pl, device, where):
    def step():
        v = vals[s] = view(where, vals[st], offset, shape, dtype)
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


class ResultShapeChanged(DiscoError):
    """A packed function returned another shape than when the plan was recorded with the
    same argument shapes (its result depends on more than them, e.g. a runtime object's
    state); the handle then interprets calls with that key."""


def _specialized(func, slots, recorded, dynamic):
    """`func` as this plan calls it: a packed function with a `specialize(args, varies)`
    attribute may return a faster equivalent for calls like the recorded one (`args`: the
    recorded arguments; `varies[i]`: whether argument i is a new value on each call, its
    shape and dtype those recorded), e.g. a collective with its group, dtype and op
    resolved once; None keeps `func`."""
    spec = getattr(func, "specialize", None)
    if spec is None:
        return func
    fast = spec([recorded[s] for s in slots], [s in dynamic for s in slots])
    return func if fast is None else fast


def _packed_step(vals, func, name, slots, dst, guard, pl, device):
    # operator.itemgetter fetches the arguments in C (a list comprehension costs twice as
    # much, and a decode step runs a few hundred of these); one slot gives the value itself.
    get = operator.itemgetter(*slots) if slots else (lambda v: ())
    if len(slots) == 1:
        get = (lambda g: lambda v: (g(v),))(get)

    def step():
        r = func(*get(vals))
        if dst is not None:
            r = vals[dst] = normalize(r)
            if guard is not None:
                if not device.is_tensor(r) or r.shape != guard[0] or r.dtype != guard[1]:
                    raise ResultShapeChanged(
                        f"packed function {name!r} returned {got_text(r)}, but with the same "
                        f"argument shapes it returned shape {guard[0]} {dtype_name(guard[1])} "
                        "before; its result shape must depend only on its arguments' shapes")
            if pl:
                if not device.is_tensor(r):
                    raise DiscoError(f"packed function {name!r} returned {got_text(r)}, "
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
        m = Matcher(fn, list(h), dict(binders), device)
        m.convert(pat, vals[s], f"match_cast of {what!r}", False)
        m.finish()
    return step

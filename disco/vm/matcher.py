"""Checking values against the signature patterns of the executable format.

Every argument of a call, every match_cast and every kernel call the compiler could
not prove (CHECK_KERNEL) is checked here: kind, dtype, rank, and the relations
between symbolic dims, binding each symbol into the heap at its first occurrence.
A mismatch raises `SignatureError` naming the function, the parameter, what was
expected (with the symbols bound so far and who bound them) and what was given.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SignatureError
from ..executable import format_dim, format_pattern, format_shape
from ..tensor import as_numpy, dtype_name, is_array_like, np_dtype
from .exprs import compile_expr

if TYPE_CHECKING:
    from .device import CpuDevice

_HEAP_REF = re.compile(r"h\[(\d+)\]")


class Pattern:
    """A shape pattern (see disco/executable.py) ready to match: expressions compiled."""
    __slots__ = ("kind", "dtype", "ndim", "dims", "fields", "text", "syms", "text_dims")

    def __init__(self, p: dict, what: str):
        self.kind = p["kind"]
        self.text = format_pattern(p)
        self.dtype = np_dtype(p["dtype"]) if p.get("dtype") else None
        self.ndim = p.get("ndim", -1)
        self.fields = [Pattern(f, what) for f in p.get("fields", ())]
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
                    self.dims.append(("e", compile_expr(d[1], what), d[2]))
                    self.syms.extend(int(m) for m in _HEAP_REF.findall(d[1]))
            self.syms = list(dict.fromkeys(self.syms))
            self.text_dims = [format_dim(d) for d in raw]


def got_text(x: Any) -> str:
    """How an error message describes the value `x` that was given."""
    if isinstance(x, np.ndarray):
        return f"a {x.ndim}-d {dtype_name(x.dtype) if x.dtype.kind != 'O' else 'object'} array of shape {tuple(x.shape)}"
    if isinstance(x, (tuple, list)):  # its arity, not its (possibly huge) contents
        return f"a {type(x).__name__} of {len(x)} field{'' if len(x) == 1 else 's'}"
    return f"{type(x).__name__} {x!r}"[:80]


class Matcher:
    """Checks values against patterns, binding symbols into the heap `h` in two phases:
    `convert` checks kind, dtype and rank and binds every symbol at its first bare
    occurrence; `finish` then checks every dim against its now-known value.

    `fn` is what errors name: a decoded function (`disco.vm.decode.Function`) or a
    `KernelCheck` (`name`, `sym_names`, `upper_bounds`)."""

    def __init__(self, fn: Any, h: list, binders: dict, device: CpuDevice):
        self.fn = fn
        self.h = h
        self.binders = binders     # heap slot -> who bound it ("'X'")
        self.device = device
        self.checks: list = []

    def convert(self, pat: Pattern, x: Any, where: str, is_param: bool) -> Any:
        kind = pat.kind
        if kind == "tensor":
            if not self.device.is_tensor(x):
                if not is_array_like(x):
                    self._fail(where, f"expects a tensor {pat.text}, got {got_text(x)}")
                x = self.device.to_tensor(x) if is_param else as_numpy(x)
            elif is_param and not x.flags.c_contiguous:
                x = self.device.to_tensor(x)
            if pat.ndim >= 0 and x.ndim != pat.ndim:
                shape = f" of shape {format_shape(pat.text_dims)}" if pat.dims is not None else ""
                self._fail(where, f"expects a {pat.ndim}-d tensor{shape}, got {got_text(x)}")
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
                self._fail(where, f"expects a shape {pat.text}, got {got_text(x)}")
            if pat.ndim >= 0 and len(x) != pat.ndim:
                self._fail(where, f"expects a shape of {pat.ndim} dims {pat.text}, got {x}")
            if pat.dims is not None:
                self._bind(pat, x, where)
            return x
        if kind == "prim":
            v = to_scalar(x, pat)
            if v is None:
                self._fail(where, f"expects a scalar {pat.text}, got {got_text(x)}")
            x = v
            if pat.dims is not None:
                self._bind(pat, (x,), where)
            return x
        if kind == "tuple":
            if not isinstance(x, (tuple, list)) or len(x) != len(pat.fields):
                self._fail(where, f"expects a tuple of {len(pat.fields)} fields {pat.text}, got {got_text(x)}")
            return tuple(self.convert(f, v, f"{where} field {i}", is_param)
                         for i, (f, v) in enumerate(zip(pat.fields, x)))
        return x

    def _bind(self, pat: Pattern, got: tuple, where: str) -> None:
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


def to_scalar(x: Any, pat: Pattern) -> Any:
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


class KernelCheck:
    """A CHECK_KERNEL operand decoded: the kernel's buffer and scalar patterns over its
    own heap of size vars. `name` and `sym_names` are what `Matcher` reports."""
    __slots__ = ("name", "sym_names", "buffers", "scalars")
    upper_bounds = ()     # a kernel's sizes are bounded by its buffers, not by a plan

    def __init__(self, fn_name: str, check: dict, what: str):
        self.name = f"{fn_name}: call_tir of tensor program {check['tir']!r}"
        self.sym_names = list(check["syms"])
        self.buffers = [(Pattern(b["pattern"], what), b["where"]) for b in check["buffers"]]
        self.scalars = [(Pattern(b["pattern"], what), b["where"]) for b in check["scalars"]]

    def run(self, arrays: list, scalars: tuple, device: CpuDevice) -> None:
        """Raise SignatureError unless `arrays` and `scalars` fit the kernel's parameters."""
        if len(arrays) != len(self.buffers) or len(scalars) != len(self.scalars):
            raise SignatureError(f"{self.name}: the kernel takes {len(self.buffers)} buffers and "
                                 f"{len(self.scalars)} scalars, got {len(arrays)} and "
                                 f"{len(scalars)}")
        m = Matcher(self, [0] * len(self.sym_names), {}, device)
        for (pat, where), a in zip(self.buffers, arrays):
            m.convert(pat, a, where, False)
        for (pat, where), v in zip(self.scalars, scalars):
            m.convert(pat, v, where, False)
        m.finish()

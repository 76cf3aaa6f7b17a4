"""Structural equality and hashing of IR, up to renaming of bound variables.

`structural_equal(a, b)` walks both trees in step. Variables (graph `Var`, scalar
`Var`, tir `Buffer`) are compared by *binding position*: at a definition site the
variable of `a` is mapped to the variable of `b`; later uses must agree with the
map. Name hints never matter. Definition sites are:

- graph functions: parameters; binding targets (`VarBinding`, `MatchCast`);
- symbolic size vars: their first appearance in a *defining struct info*: the
  struct info of a parameter or binding target, a `MatchCast` struct info, the
  parameters of a `FuncStructInfo`, the shapes of `PrimFunc` parameter buffers;
- tensor programs: `PrimFunc` params, loop vars, block iter vars, `alloc_buffers`,
  `Allocate` buffers, `LetStmt` vars.

A variable used where it is not bound (a free var) is equal only to itself,
unless `map_free_vars=True`, in which case free vars are mapped on first use.

`structural_hash` is the same walk run against itself (`a` with `a`), folding a
token per leaf into the hash; bound variables contribute their definition index
(de Bruijn-like), so alpha-equivalent trees hash alike by construction: equality
and hashing cannot drift apart because there is only one traversal.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np

from . import expr as E
from . import graph as G
from . import struct_info as S
from . import tir as T
from .module import IRModule

__all__ = ["structural_equal", "structural_hash", "assert_structural_equal", "StructuralMismatch"]


class StructuralMismatch(AssertionError):
    """Raised by `assert_structural_equal`; `path` locates the first mismatch."""

    def __init__(self, path: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


class _Mismatch(Exception):
    def __init__(self, path: str, detail: str):
        self.path, self.detail = path, detail


_VAR_TYPES = (E.Var, G.Var, T.Buffer)


def _describe(x: Any) -> str:
    if isinstance(x, G.Var):
        return f"{type(x).__name__} {x.name_hint}"
    if isinstance(x, E.Var):
        return f"Var {x.name}"
    if isinstance(x, T.Buffer):
        return f"Buffer {x.name}"
    if isinstance(x, (E.IntImm, E.FloatImm)):
        return f"{type(x).__name__} {x.value} ({x.dtype})"
    text = repr(x)
    return text if len(text) <= 100 else text[:97] + "..."


class _Walker:
    """Walks `a` and `b` in step; in hashing mode `b is a` and tokens are folded."""

    def __init__(self, map_free_vars: bool, hashing: bool = False):
        self.map_free_vars = map_free_vars
        self.hashing = hashing
        self.a2b: dict[Any, Any] = {}
        self.b2a: dict[Any, Any] = {}
        self.index: dict[Any, int] = {}   # bound var of `a` -> definition number
        self.defined = 0
        self.define = False     # inside a defining struct info / buffer shape
        self.path: list[str] = []
        self.hash = 0

    # plumbing ---------------------------------------------------------------------

    def token(self, *t: Any) -> None:
        if self.hashing:
            self.hash = hash((self.hash, t))

    def fail(self, detail: str) -> None:
        path = "".join(self.path).lstrip(".") or "<root>"
        raise _Mismatch(path, detail)

    def at(self, step: str, a: Any, b: Any) -> None:
        self.path.append(step)
        self.visit(a, b)
        self.path.pop()

    def seq(self, step: str, a: Any, b: Any) -> None:
        if len(a) != len(b):
            self.path.append(step)
            self.fail(f"length {len(a)} vs {len(b)}")
        self.token("seq", len(a))
        for i, (x, y) in enumerate(zip(a, b)):
            self.at(f"{step}[{i}]", x, y)

    def defining(self, step: str, a: Any, b: Any) -> None:
        """Visit a defining struct info / shape: unmapped size vars get bound."""
        saved, self.define = self.define, True
        try:
            self.at(step, a, b)
        finally:
            self.define = saved

    # variables -------------------------------------------------------------------

    def bind(self, a: Any, b: Any) -> None:
        """Definition site: `a` and `b` are the same variable from now on."""
        if type(a) is not type(b):
            self.fail(f"{_describe(a)} vs {_describe(b)}")
        # A var object defined again (sibling loops sharing one loop var) starts a
        # new scope: forget its old pairing on either side.
        if a in self.a2b:
            self.b2a.pop(self.a2b.pop(a), None)
        if b in self.b2a:
            self.a2b.pop(self.b2a.pop(b), None)
        if isinstance(a, E.Var) and a.dtype != b.dtype:
            self.fail(f"{_describe(a)} vs {_describe(b)}: dtype {a.dtype} vs {b.dtype}")
        self.a2b[a], self.b2a[b] = b, a
        self.index[a] = self.defined
        self.defined += 1
        self.token("def", type(a).__name__)
        # What a definition carries is part of it: a graph var's struct info, a
        # buffer's shape, dtype and scope (sizes first seen there are defined too).
        if isinstance(a, G.Var):
            self.defining(".struct_info", a.struct_info, b.struct_info)
        elif isinstance(a, T.Buffer):
            if (a.dtype, a.scope) != (b.dtype, b.scope):
                self.fail(f"{_describe(a)} vs {_describe(b)}: dtype/scope "
                          f"{a.dtype}/{a.scope} vs {b.dtype}/{b.scope}")
            self.token(a.dtype, a.scope)
            saved, self.define = self.define, True
            try:
                self.seq(".shape", a.shape, b.shape)
            finally:
                self.define = saved

    def use(self, a: Any, b: Any) -> None:
        if type(a) is not type(b):
            self.fail(f"{_describe(a)} vs {_describe(b)}")
        if a in self.a2b:
            if self.a2b[a] is not b:
                self.fail(f"{_describe(a)} vs {_describe(b)}")
            self.token("var", self.index[a])
            return
        if b in self.b2a:
            self.fail(f"{_describe(a)} vs {_describe(b)}")
        if (self.define and isinstance(a, E.Var)) or self.map_free_vars:
            self.bind(a, b)
            return
        if a is not b:
            self.fail(f"{_describe(a)} vs {_describe(b)} (free variables differ)")
        self.token("free", id(a))

    # dispatch --------------------------------------------------------------------

    def visit(self, a: Any, b: Any) -> None:
        # Shortcut for shared subtrees, only while nothing is bound: a shared
        # subtree could otherwise mean a bound var on one side and a free one on the other.
        if a is b and not self.hashing and not self.a2b and not isinstance(a, _VAR_TYPES):
            return
        if a is None or b is None:
            if a is not b:
                self.fail(f"{_describe(a)} vs {_describe(b)}")
            self.token(None)
            return
        if isinstance(a, _VAR_TYPES):
            self.use(a, b)
            return
        if type(a) is not type(b):
            self.fail(f"{type(a).__name__} vs {type(b).__name__}: {_describe(a)} vs {_describe(b)}")
        method = _SPECIAL.get(type(a))
        if method is not None:
            method(self, a, b)
        elif isinstance(a, (bool, int, str, bytes, np.generic)):
            if a != b:
                self.fail(f"{a!r} vs {b!r}")
            self.token(a)
        elif isinstance(a, float):
            if not (a == b or (math.isnan(a) and math.isnan(b))):
                self.fail(f"{a!r} vs {b!r}")
            self.token("nan" if math.isnan(a) else a)
        elif isinstance(a, (tuple, list)):
            self.seq("", a, b)
        elif isinstance(a, Mapping):
            self.mapping(a, b)
        elif isinstance(a, np.ndarray):
            self.array(a, b)
        elif is_dataclass(a):
            self.token(type(a).__name__)
            derived = isinstance(a, G.Expr) and not isinstance(a, (G.Var, G.Constant))
            for f in fields(a):
                if derived and f.name == "struct_info":
                    continue    # follows from the node's fields; a hand-built node may lack it
                self.at("." + f.name, getattr(a, f.name), getattr(b, f.name))
        else:
            if a != b:
                self.fail(f"{_describe(a)} vs {_describe(b)}")
            try:
                self.token(type(a).__name__, hash(a))
            except TypeError:
                self.token(type(a).__name__, repr(a))

    def mapping(self, a: Mapping, b: Mapping) -> None:
        if set(a) != set(b):
            self.fail(f"keys {sorted(map(str, a))} vs {sorted(map(str, b))}")
        self.token("map", len(a))
        for k in sorted(a, key=str):
            self.token(k)
            self.at(f"[{k!r}]", a[k], b[k])

    def array(self, a: np.ndarray, b: np.ndarray) -> None:
        if a.dtype != b.dtype or a.shape != b.shape:
            self.fail(f"array {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
        try:
            same = np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
        except TypeError:
            same = np.array_equal(a, b)
        if not same:
            self.fail("array values differ")
        self.token(str(a.dtype), a.shape, hash(a.tobytes()) if self.hashing else 0)

    # node kinds with definition sites --------------------------------------------

    def function(self, a: G.Function, b: G.Function) -> None:
        self.token("Function")
        if len(a.params) != len(b.params):
            self.path.append(".params")
            self.fail(f"{len(a.params)} vs {len(b.params)} parameters")
        for i, (x, y) in enumerate(zip(a.params, b.params)):
            self.path.append(f".params[{i}]")
            self.bind(x, y)
            self.path.pop()
        self.at(".body", a.body, b.body)
        self.at(".ret_struct_info", a.ret_struct_info, b.ret_struct_info)
        self.at(".attrs", a.attrs, b.attrs)
        self.at(".is_pure", a.is_pure, b.is_pure)
        # struct_info is not compared: it is derived (params, ret_struct_info, is_pure),
        # and a function built by hand may not have it filled in.

    def var_binding(self, a: G.VarBinding, b: G.VarBinding) -> None:
        # The target is defined first so that sizes first seen in its struct info
        # (data-dependent shapes) are bound before the value's struct info uses them.
        self.token("VarBinding")
        self.path.append(".var")
        self.bind(a.var, b.var)
        self.path.pop()
        self.at(".value", a.value, b.value)

    def match_cast(self, a: G.MatchCast, b: G.MatchCast) -> None:
        self.token("MatchCast")
        self.at(".value", a.value, b.value)
        self.defining(".struct_info", a.struct_info, b.struct_info)
        self.path.append(".var")
        self.bind(a.var, b.var)
        self.path.pop()

    def func_sinfo(self, a: S.FuncStructInfo, b: S.FuncStructInfo) -> None:
        self.token("FuncStructInfo")
        self.defining(".params", a.params, b.params)
        self.at(".ret", a.ret, b.ret)
        self.at(".purity", a.purity, b.purity)

    def prim_func(self, a: T.PrimFunc, b: T.PrimFunc) -> None:
        self.token("PrimFunc")
        if len(a.params) != len(b.params):
            self.path.append(".params")
            self.fail(f"{len(a.params)} vs {len(b.params)} parameters")
        # Scalar params first: a size var passed explicitly is defined by its param,
        # wherever it sits in the list; buffer shapes then use it.
        order = sorted(range(len(a.params)), key=lambda i: not isinstance(a.params[i], E.Var))
        for i in order:
            self.path.append(f".params[{i}]")
            self.bind(a.params[i], b.params[i])
            self.path.pop()
        self.at(".body", a.body, b.body)
        self.at(".attrs", a.attrs, b.attrs)

    def for_(self, a: T.For, b: T.For) -> None:
        self.token("For")
        self.at(".min", a.min, b.min)
        self.at(".extent", a.extent, b.extent)
        self.path.append(".loop_var")
        self.bind(a.loop_var, b.loop_var)
        self.path.pop()
        for name in ("kind", "thread_tag", "annotations", "body"):
            self.at("." + name, getattr(a, name), getattr(b, name))

    def block(self, a: T.Block, b: T.Block) -> None:
        self.token("Block")
        self.at(".name", a.name, b.name)
        if len(a.iter_vars) != len(b.iter_vars):
            self.path.append(".iter_vars")
            self.fail(f"{len(a.iter_vars)} vs {len(b.iter_vars)} iterators")
        for i, (x, y) in enumerate(zip(a.iter_vars, b.iter_vars)):
            self.path.append(f".iter_vars[{i}]")
            self.at(".dom", x.dom, y.dom)
            self.at(".kind", x.kind, y.kind)
            self.path.append(".var")
            self.bind(x.var, y.var)
            self.path.pop()
            self.path.pop()
        if len(a.alloc_buffers) != len(b.alloc_buffers):
            self.path.append(".alloc_buffers")
            self.fail(f"{len(a.alloc_buffers)} vs {len(b.alloc_buffers)} buffers")
        for i, (x, y) in enumerate(zip(a.alloc_buffers, b.alloc_buffers)):
            self.path.append(f".alloc_buffers[{i}]")
            self.bind(x, y)
            self.path.pop()
        self.at(".init", a.init, b.init)
        self.at(".body", a.body, b.body)
        self.at(".annotations", a.annotations, b.annotations)

    def let_stmt(self, a: T.LetStmt, b: T.LetStmt) -> None:
        self.token("LetStmt")
        self.at(".value", a.value, b.value)
        self.path.append(".var")
        self.bind(a.var, b.var)
        self.path.pop()
        self.at(".body", a.body, b.body)

    def allocate(self, a: T.Allocate, b: T.Allocate) -> None:
        self.token("Allocate")
        self.path.append(".buffer")
        self.bind(a.buffer, b.buffer)
        self.path.pop()
        self.at(".body", a.body, b.body)

    def constant(self, a: G.Constant, b: G.Constant) -> None:
        self.token("Constant")
        self.path.append(".data")
        self.array(np.asarray(a.data), np.asarray(b.data))
        self.path.pop()
        self.at(".struct_info", a.struct_info, b.struct_info)

    def module(self, a: IRModule, b: IRModule) -> None:
        self.token("IRModule")
        na, nb = a.names(), b.names()
        if set(na) != set(nb):
            only_a = sorted(set(na) - set(nb))
            only_b = sorted(set(nb) - set(na))
            self.fail(f"functions differ: only in first {only_a}, only in second {only_b}")
        for name in sorted(na):
            self.token(name)
            self.path.append(name)
            # each function is its own scope: the stage programs of a pipeline share the
            # size variable objects (`n`) of the function they come from, but each binds
            # them itself, as the printed form (one `n = T.int64()` per function) does
            saved = dict(self.a2b), dict(self.b2a), dict(self.index)
            self.visit(a[name], b[name])
            self.a2b, self.b2a, self.index = saved
            self.path.pop()
        self.at("attrs", a.attrs, b.attrs)
        self.at("global_infos", a.global_infos, b.global_infos)


_SPECIAL = {
    G.Function: _Walker.function, G.VarBinding: _Walker.var_binding,
    G.MatchCast: _Walker.match_cast, S.FuncStructInfo: _Walker.func_sinfo,
    T.PrimFunc: _Walker.prim_func, T.For: _Walker.for_, T.Block: _Walker.block,
    T.LetStmt: _Walker.let_stmt, T.Allocate: _Walker.allocate, G.Constant: _Walker.constant,
    IRModule: _Walker.module,
}


def structural_equal(a: Any, b: Any, map_free_vars: bool = False) -> bool:
    """True when `a` and `b` are the same IR up to renaming of bound variables."""
    try:
        _Walker(map_free_vars).visit(a, b)
    except _Mismatch:
        return False
    return True


def assert_structural_equal(a: Any, b: Any, map_free_vars: bool = False) -> None:
    """Raise StructuralMismatch (an AssertionError) naming the path to the first
    difference, e.g. `main.body.blocks[0].bindings[2].value.args[1]: Var lv1 vs Var lv2`."""
    try:
        _Walker(map_free_vars).visit(a, b)
    except _Mismatch as m:
        raise StructuralMismatch(m.path, m.detail) from None


def structural_hash(a: Any, map_free_vars: bool = False) -> int:
    """A hash consistent with `structural_equal(..., map_free_vars)`: equal trees
    hash alike. Free variables hash by identity unless `map_free_vars`. Like
    `hash()`, the value is stable within a process only (string hashing is salted)."""
    w = _Walker(map_free_vars, hashing=True)
    w.visit(a, a)
    return w.hash

"""IRModule: a map from global names to graph functions and tensor programs."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping, Optional

from .attrs import Attrs
from .graph import BaseFunc, Function, GlobalVar
from .tir import PrimFunc


@dataclass(frozen=True, slots=True)
class IRModule:
    """Immutable. `functions` maps name -> Function | PrimFunc (insertion-ordered);
    `global_infos` holds module-wide values such as device meshes
    ({"mesh": (DeviceMesh, ...)}); `attrs` holds module attributes."""
    functions: tuple[tuple[str, BaseFunc], ...] = ()
    attrs: Attrs = field(default_factory=Attrs)
    global_infos: Attrs = field(default_factory=Attrs)

    @staticmethod
    def from_dict(functions: Mapping[str, BaseFunc], attrs: Optional[Mapping[str, Any]] = None,
                  global_infos: Optional[Mapping[str, Any]] = None) -> "IRModule":
        return IRModule(tuple(functions.items()), Attrs(attrs or {}), Attrs(global_infos or {}))

    def __getitem__(self, name: str | GlobalVar) -> BaseFunc:
        key = name.name_hint if isinstance(name, GlobalVar) else name
        for k, f in self.functions:
            if k == key:
                return f
        raise KeyError(f"IRModule has no function {key!r}; it has {self.names()}")

    def __contains__(self, name: object) -> bool:
        key = name.name_hint if isinstance(name, GlobalVar) else name
        return any(k == key for k, _ in self.functions)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self.functions)

    def items(self) -> tuple[tuple[str, BaseFunc], ...]:
        return self.functions

    def names(self) -> list[str]:
        return [k for k, _ in self.functions]

    def get_global_var(self, name: str) -> GlobalVar:
        if name not in self:
            raise KeyError(f"IRModule has no function {name!r}; it has {self.names()}")
        return GlobalVar(name)

    def graph_functions(self) -> dict[str, Function]:
        return {k: f for k, f in self.functions if isinstance(f, Function)}

    def prim_funcs(self) -> dict[str, PrimFunc]:
        return {k: f for k, f in self.functions if isinstance(f, PrimFunc)}

    def with_function(self, name: str, func: BaseFunc) -> "IRModule":
        """A copy with `name` added or replaced (position kept when replaced)."""
        items = list(self.functions)
        for i, (k, _) in enumerate(items):
            if k == name:
                items[i] = (name, func)
                break
        else:
            items.append((name, func))
        return replace(self, functions=tuple(items))

    def without(self, name: str) -> "IRModule":
        return replace(self, functions=tuple((k, f) for k, f in self.functions if k != name))

    def with_global_infos(self, **infos: Any) -> "IRModule":
        return replace(self, global_infos=self.global_infos.replace(**infos))

    def script(self) -> str:
        """The module as Python-syntax script (see compiler.script)."""
        from ..script.printer import print_module
        return print_module(self)

    def __str__(self) -> str:
        return self.script()

"""Shared pieces of the decorators: a member of an `@I.ir_module` class is left for
the class decorator to parse (with the rest of the module's source)."""
from __future__ import annotations

from typing import Any, Callable


class Deferred:
    """What `@R.function` / `@T.prim_func` return inside a class body: the class
    decorator parses the whole class from source, so nothing is done here."""

    def __init__(self, func: Callable[..., Any], kind: str):
        self.func = func
        self.kind = kind

    def __repr__(self) -> str:
        return f"<{self.kind} {self.func.__qualname__} (parsed by @I.ir_module)>"


def in_class_body(func: Callable[..., Any]) -> bool:
    parts = func.__qualname__.split(".")
    return len(parts) > 1 and parts[-2] != "<locals>"


def decorate(kind: str, func: Callable[..., Any]) -> Any:
    if in_class_body(func):
        return Deferred(func, kind)
    from .parser import from_source
    return from_source(func)

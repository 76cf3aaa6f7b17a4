"""The global function registry: names -> Python callables.

A session calls functions on its workers by name, so every function a controller wants
to run remotely is registered here (in the worker's process: import the defining module
there with `sess.import_module`). The VM finds packed functions here too.

    @disco.register_func("my.add")
    def add(a, b): ...

    disco.get_global_func("my.add")(1, 2)

A few runtime modules register a whole name prefix and are imported on the first lookup
of such a name (`_PROVIDERS`: "disco.kv." -> disco.kv_cache, "disco.llm.load_weights" ->
disco.llm.weights), so compiled code and session workers can call them without importing
anything first.
"""
from __future__ import annotations

import difflib
from typing import Callable, TypeVar

from . import _context
from .errors import DiscoError

F = TypeVar("F", bound=Callable)

_FUNCS: dict[str, Callable] = {}

# Modules that register the functions of a name prefix, imported the first time a name
# with that prefix is looked up: the VM and session workers find these functions without
# importing their module first (which the VM, running compiled code, could not know to do).
_PROVIDERS = {"disco.kv.": "disco.kv_cache", "disco.llm.load_weights": "disco.llm.weights",
              "disco.cpu.": "disco.cpu_kernels", "disco.memory.": "disco.memory"}


class UnknownFunctionError(DiscoError, KeyError):
    """No function is registered under the name. A KeyError too, for `except KeyError`."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def register_func(name: str, func: Callable | None = None, *, override: bool = False):
    """Register `func` under `name`; without `func`, a decorator that does so.

    Raises DiscoError if `name` is taken, unless `override=True`."""
    if not isinstance(name, str) or not name:
        raise DiscoError(f"register_func: name must be a non-empty str, got {name!r}")

    def register(f: F) -> F:
        if not callable(f):
            raise DiscoError(f"register_func({name!r}): expected a callable, got {type(f).__name__}")
        old = _FUNCS.get(name)
        if old is not None and old is not f and not override:
            raise DiscoError(
                f"register_func: {name!r} is already registered (to {_describe(old)}); "
                f"pass override=True to replace it with {_describe(f)}")
        _FUNCS[name] = f
        return f

    return register if func is None else register(func)


def get_global_func(name: str, allow_missing: bool = False) -> Callable | None:
    """The function registered under `name`.

    Missing: None if `allow_missing`, else UnknownFunctionError listing close names."""
    f = _FUNCS.get(name)
    if f is None:
        f = _from_provider(name)
    if f is None and not allow_missing:
        raise UnknownFunctionError(unknown_message(name, list(_FUNCS)))
    return f


def _from_provider(name: str) -> Callable | None:
    for prefix, module in _PROVIDERS.items():
        if name.startswith(prefix):
            import importlib
            importlib.import_module(module)
            return _FUNCS.get(name)
    return None


def remove_global_func(name: str) -> None:
    """Forget `name` (no error if it is not registered)."""
    _FUNCS.pop(name, None)


def list_global_funcs() -> list[str]:
    """Every registered name, sorted."""
    return sorted(_FUNCS)


def unknown_message(name: str, known: list[str]) -> str:
    """'no global function named X; close names: ...' (shared with the session workers)."""
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; close names: {', '.join(close)}" if close else ""
    return (f"no global function named {name!r} is registered{hint}. Register it with "
            f"@disco.register_func({name!r}) in a module the workers import "
            f"(sess.import_module(...)).")


def _describe(f: Callable) -> str:
    mod = getattr(f, "__module__", None) or "?"
    return f"{mod}.{getattr(f, '__qualname__', repr(f))}"


register_func("disco.worker_id", _context.worker_id)
register_func("disco.num_workers", _context.num_workers)
register_func("disco.worker_device", _context.worker_device)

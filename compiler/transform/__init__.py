"""Passes: each one is a function `Pass(mod: IRModule, **options) -> IRModule`.

A pass never mutates its input (IR nodes are immutable); it returns a new module,
printable with `mod.script()` and buildable by `compiler.build(mod, passes=[])`.
The default order for each target is in `compiler.pipeline`.

Names load lazily so that importing one pass does not import them all.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "LegalizeOps": "compiler.transform.legalize_ops",
    "FuseOps": "compiler.transform.fuse_ops",
    "FuseTIR": "compiler.transform.fuse_tir",
    "DispatchLibrary": "compiler.transform.dispatch_library",
    "DefaultSchedule": "compiler.transform.default_schedule",
    "DefaultGPUSchedule": "compiler.transform.gpu_schedule",
    "PlanMemory": "compiler.transform.plan_memory",
    "DeadCodeElimination": "compiler.transform.dead_code",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'compiler.transform' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

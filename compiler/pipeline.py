"""The default pass order per target; `compiler.build` runs it.

    DistributedLowering   modules with a device mesh: PropagateSharding + LowerToLocalView
    DispatchLibrary       matmul -> call_dps_packed to the runtime's BLAS function
    LegalizeOps           remaining operators -> call_tir of tensor programs
    FuseOps, FuseTIR      group elementwise/injective chains with their producer or
                          consumer reduction, and merge each group into one program
    DefaultSchedule       loop schedules for the target
    DeadCodeElimination   drop unused bindings and functions
    PlanMemory            reuse storage between tensors whose lifetimes do not overlap

A stage whose module is not there is skipped, so that every state of the project
builds; `missing_passes()` says which ones those are.
"""
from __future__ import annotations

import importlib
from typing import Callable

from .ir.module import IRModule

Pass = Callable[[IRModule], IRModule]

_CPU_STAGES = (
    ("compiler.distributed.lowering", "DistributedLowering"),
    ("compiler.transform.dispatch_library", "DispatchLibrary"),
    ("compiler.transform.legalize_ops", "LegalizeOps"),
    ("compiler.transform.fuse_ops", "FuseOps"),
    ("compiler.transform.fuse_tir", "FuseTIR"),
    ("compiler.transform.default_schedule", "DefaultSchedule"),
    ("compiler.transform.dead_code", "DeadCodeElimination"),
    ("compiler.transform.plan_memory", "PlanMemory"),
)

# CUDA: the same stages, with the GPU default schedule (blocks/threads, row kernels).
_CUDA_STAGES = tuple(("compiler.transform.gpu_schedule", "DefaultGPUSchedule")
                     if name == "DefaultSchedule" else (module, name) for module, name in _CPU_STAGES)

STAGES = {"cpu": _CPU_STAGES, "cuda": _CUDA_STAGES}


def _load(module: str, name: str):
    try:
        m = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and module.startswith(e.name):
            return None         # the stage's module does not exist (yet)
        raise
    return getattr(m, name, None)


def get_pipeline(target: str = "cpu") -> list[Pass]:
    """The passes `compiler.build(mod, target)` runs, in order."""
    if target not in STAGES:
        raise ValueError(f"no pipeline for target {target!r}; known: {', '.join(STAGES)}")
    return [p for p in (_load(m, n) for m, n in STAGES[target]) if p is not None]


def missing_passes(target: str = "cpu") -> list[str]:
    """Names of the stages of `target`'s pipeline that are not available."""
    return [n for m, n in STAGES[target] if _load(m, n) is None]

"""The default pass order per target; `compiler.build` runs it.

    DistributedLowering   modules with a device mesh: PropagateSharding + LowerToLocalView
    DispatchCPUKernels    (CPU only) matmuls and lookups of weights stored in 16 bits or GGUF
                          blocks -> disco.cpu.* kernels that read them as stored
    DispatchLibrary       matmul -> call_dps_packed to the runtime's BLAS function
    LegalizeOps           remaining operators -> call_tir of tensor programs
    FuseOps, FuseTIR      group elementwise/injective chains with their producer or
                          consumer reduction, and merge each group into one program
    DefaultSchedule       loop schedules for the target
    DeadCodeElimination   drop unused bindings and functions
    PlanMemory            reuse storage between tensors whose lifetimes do not overlap

Every stage is required: a stage whose module or pass cannot be loaded raises
`PipelineError` naming it (no stage depends on an optional package, so none is
skipped).
"""
from __future__ import annotations

import importlib
from typing import Callable

from .ir.errors import CompilerError
from .ir.module import IRModule

Pass = Callable[[IRModule], IRModule]

_CPU_STAGES = (
    ("compiler.distributed.lowering", "DistributedLowering"),
    ("compiler.transform.dispatch_cpu_kernels", "DispatchCPUKernels"),
    ("compiler.transform.dispatch_library", "DispatchLibrary"),
    ("compiler.transform.legalize_ops", "LegalizeOps"),
    ("compiler.transform.fuse_ops", "FuseOps"),
    ("compiler.transform.fuse_tir", "FuseTIR"),
    ("compiler.transform.default_schedule", "DefaultSchedule"),
    ("compiler.transform.dead_code", "DeadCodeElimination"),
    ("compiler.transform.plan_memory", "PlanMemory"),
)

# CUDA: the same stages, with the GPU default schedule (blocks/threads, row kernels), and
# without the CPU kernels (R.dequantize legalizes there).
_CUDA_STAGES = tuple(("compiler.transform.gpu_schedule", "DefaultGPUSchedule")
                     if name == "DefaultSchedule" else (module, name) for module, name in _CPU_STAGES
                     if name != "DispatchCPUKernels")

STAGES = {"cpu": _CPU_STAGES, "cuda": _CUDA_STAGES}


class PipelineError(CompilerError, ImportError):
    """A stage of the pipeline whose module or pass cannot be loaded."""


def _load(module: str, name: str) -> Pass:
    """Pass `name` of `module`, or PipelineError naming the stage and what is missing."""
    try:
        m = importlib.import_module(module)
    except ImportError as e:
        raise PipelineError(f"pipeline stage {name}: cannot import its module {module} ({e}); "
                            "every stage is required: restore the module, or remove the stage "
                            "from compiler.pipeline.STAGES") from e
    p = getattr(m, name, None)
    if p is None:
        raise PipelineError(f"pipeline stage {name}: module {module} defines no {name!r}; "
                            "every stage is required: define the pass there, or correct "
                            "compiler.pipeline.STAGES")
    return p


def get_pipeline(target: str = "cpu") -> list[Pass]:
    """The passes `compiler.build(mod, target)` runs, in order."""
    if target not in STAGES:
        raise ValueError(f"no pipeline for target {target!r}; known: {', '.join(STAGES)}")
    return [_load(m, n) for m, n in STAGES[target]]

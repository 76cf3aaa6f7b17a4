"""`compiler.build(mod, target="cpu") -> disco.Executable`.

Runs the target's pipeline (`compiler.pipeline`), compiles every tensor program into
one shared object, generates bytecode for every graph function and collects the
constants.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

from disco.executable import Executable, KernelInfo

from .codegen import build_kernels, signature_of
from .codegen.verify_calls import verify_calls
from .codegen.vm_codegen import codegen_vm
from .ir.errors import BuildError
from .ir.module import IRModule

__all__ = ["BuildError", "TARGETS", "build", "check_script_roundtrip", "default_passes"]

TARGETS = ("cpu", "cuda")


def default_passes(target: str) -> list[Callable[[IRModule], IRModule]]:
    """The passes `build` runs: the target's pipeline (compiler.pipeline)."""
    from .pipeline import get_pipeline
    return get_pipeline(target)


def check_script_roundtrip(mod: IRModule, what: str) -> None:
    """Raise unless `parse(mod.script())` is structurally equal to `mod`: every state
    of a module must print and read back. `build` runs this on its input and after
    each pass when DISCO_TP_CHECK_ROUNDTRIP=1 (the test suite sets it)."""
    from .ir.structural import assert_structural_equal
    from .script import parse
    text = mod.script()
    try:
        assert_structural_equal(parse(text), mod)
    except Exception as e:
        raise BuildError(f"script round trip of {what} failed: {e}\n--- script ---\n{text}") from None


def build(mod: IRModule, target: str = "cpu", *,
          passes: Optional[Sequence[Callable[[IRModule], IRModule]]] = None,
          metadata: Optional[dict] = None) -> Executable:
    """Compile `mod` into an Executable for `target` ("cpu").

    `passes` replaces the default pipeline (pass `[]` to build the module as is)."""
    if target not in TARGETS:
        raise BuildError(f"unknown target {target!r}; supported: {', '.join(TARGETS)}")
    if not isinstance(mod, IRModule):
        raise BuildError(f"build expects an IRModule, got {type(mod).__name__}")
    check = os.environ.get("DISCO_TP_CHECK_ROUNDTRIP") == "1"
    if check:
        check_script_roundtrip(mod, "the input module")
    for p in (default_passes(target) if passes is None else passes):
        mod = p(mod)
        if not isinstance(mod, IRModule):
            raise BuildError(f"pass {getattr(p, '__name__', p)!r} returned "
                             f"{type(mod).__name__}, not an IRModule")
        if check:
            check_script_roundtrip(mod, f"the output of {getattr(p, '__name__', p)}")

    # Tensor shapes vs. buffer shapes of every call_tir: mismatches fail here, before the
    # kernels compile; calls it cannot decide get a run-time check (CHECK_KERNEL).
    unproved_calls = verify_calls(mod)
    prim_funcs = mod.prim_funcs()
    kernels: list[KernelInfo] = []
    library = None
    if prim_funcs and target == "cuda":
        # CUDA: the source and launch descriptions go in metadata["cuda"]; the runtime
        # compiles them with NVRTC (disco/cuda.py). No shared object.
        from .codegen.cuda import generate_cuda
        cuda = generate_cuda(prim_funcs)
        metadata = dict(metadata or {}, cuda=cuda.to_json())
        for name, func in prim_funcs.items():
            sig = signature_of(cuda.kernel_names[name], func)
            kernels.append(KernelInfo(
                sig.symbol,
                [{"name": b.name, "dtype": b.dtype, "ndim": b.ndim} for b in sig.buffers],
                [s.name for s in sig.scalars]))
    elif prim_funcs:
        lib = build_kernels(prim_funcs)
        library = lib.so_bytes
        for name in prim_funcs:
            sig = lib.signatures[name]
            kernels.append(KernelInfo(
                sig.symbol,
                [{"name": b.name, "dtype": b.dtype, "ndim": b.ndim} for b in sig.buffers],
                [s.name for s in sig.scalars]))
    kernel_index = {name: i for i, name in enumerate(prim_funcs)}
    functions, constants = codegen_vm(mod, kernel_index, unproved_calls=unproved_calls)
    if not functions:
        raise BuildError("the module has no graph function to run")
    meta = dict(metadata or {})
    meta.setdefault("kernel_functions", list(prim_funcs))
    if "distributed" in mod.attrs:   # parameter placements and mesh (DistributedLowering)
        meta.setdefault("distributed", _plain(mod.attrs["distributed"]))
    return Executable(functions, kernels, library, constants, meta, target)


def _plain(value):
    """Attrs / tuples -> dicts / lists, for the executable's JSON metadata."""
    from collections.abc import Mapping
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

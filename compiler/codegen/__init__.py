"""compiler.codegen: tensor programs to native kernels.

`build_kernels(prim_funcs)` generates C for every PrimFunc (see c.py for the kernel
ABI), compiles it into one shared object (cc.py, cached on disk) and describes each
kernel's signature, which is what disco's VM needs to call it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from ..ir import expr as E
from ..ir import tir as T
from .c import CodegenError, generate_c, kernel_names
from .cc import CCompileError, compile_shared_object

__all__ = ["BufferParam", "ScalarParam", "KernelSignature", "KernelLibrary", "build_kernels",
           "generate_c", "kernel_names", "compile_shared_object", "signature_of",
           "CodegenError", "CCompileError"]


@dataclass(frozen=True)
class BufferParam:
    """A buffer parameter: `shape` holds ints and, for symbolic dims, their text ("n")."""
    name: str
    dtype: str
    ndim: int
    shape: tuple[Union[int, str], ...] = ()


@dataclass(frozen=True)
class ScalarParam:
    """A scalar parameter, passed in the tail of `dims` (see the ABI in c.py)."""
    name: str
    dtype: str


@dataclass(frozen=True)
class KernelSignature:
    """Buffers in `args` order; `dims` = their shapes concatenated, then the scalars."""
    symbol: str
    buffers: tuple[BufferParam, ...]
    scalars: tuple[ScalarParam, ...]

    @property
    def num_dims(self) -> int:
        return sum(b.ndim for b in self.buffers) + len(self.scalars)


@dataclass(frozen=True)
class KernelLibrary:
    """One shared object holding every kernel of a module.

    `kernel_names` maps each global name to its C symbol; `signatures` maps global
    names to their KernelSignature; `source` is the C source it was built from."""
    so_path: Path
    kernel_names: dict[str, str]
    signatures: dict[str, KernelSignature] = field(default_factory=dict)
    source: str = ""

    @property
    def so_bytes(self) -> bytes:
        return Path(self.so_path).read_bytes()


def signature_of(symbol: str, func: T.PrimFunc) -> KernelSignature:
    buffers = tuple(BufferParam(p.name, p.dtype, len(p.shape), tuple(E.dim_value(d, bare=True) for d in p.shape))
                    for p in func.params if isinstance(p, T.Buffer))
    scalars = tuple(ScalarParam(p.name, p.dtype) for p in func.params if isinstance(p, E.Var))
    return KernelSignature(symbol, buffers, scalars)


def build_kernels(prim_funcs: dict[str, T.PrimFunc]) -> KernelLibrary:
    """Generate, compile (cached) and describe the kernels of `prim_funcs`."""
    names = kernel_names(prim_funcs)
    source = generate_c(prim_funcs)
    path = compile_shared_object(source)
    sigs = {name: signature_of(names[name], f) for name, f in prim_funcs.items()}
    return KernelLibrary(path, names, sigs, source)

"""DispatchLibrary: send operators a library does better to that library.

    R.matmul(a, b, out_dtype=...)  ->  R.call_dps_packed("disco.blas.matmul", (a, b), out_sinfo)
    R.matmul(a, R.permute_dims(w, [1, 0]))  ->  R.call_dps_packed("disco.blas.matmul_nt", (a, w), ...)

The second is a linear layer with its weight in PyTorch's (out, in) layout: the BLAS
reads the weight transposed in place, where the permute would copy it on every call
(the permute is then unused, and DeadCodeElimination drops it).

`disco.blas.matmul` (disco/blas.py) is numpy.matmul writing into the VM's output
buffer, i.e. the system BLAS: far faster than an unscheduled loop nest, and the
same function on every state of the module. Runs before LegalizeOps, which
lowers what is left here: matmuls of integer or bfloat16 dtypes, with a 1-D
operand, or whose output shape is not known (the VM must allocate the output).
"""
from __future__ import annotations

from ..ir.graph import Call, ExternFunc, Op
from ..ir.module import IRModule
from ..ir.struct_info import TensorStructInfo
from ..ir.visitor import ExprMutator
from ..op.builtin import call_dps_packed

__all__ = ["DispatchLibrary", "BLAS_MATMUL", "BLAS_MATMUL_NT"]

BLAS_MATMUL = "disco.blas.matmul"
BLAS_MATMUL_NT = "disco.blas.matmul_nt"     # a @ b.T, b 2-D
_BLAS_DTYPES = frozenset({"float16", "float32", "float64"})


def DispatchLibrary(mod: IRModule) -> IRModule:
    """`mod` with every matmul the runtime's BLAS handles turned into a call of it."""
    out = mod
    for name, func in mod.graph_functions().items():
        new = _Dispatcher(_transposed_matrices(func)).visit_expr(func)
        if new is not func:
            out = out.with_function(name, new)
    return out


def _transposed_matrices(func) -> dict:
    """Variables bound to the transpose of a 2-D tensor -> that tensor."""
    out = {}
    for blk in func.body.blocks:
        for b in blk.bindings:
            v = getattr(b, "value", None)
            if isinstance(v, Call) and isinstance(v.op, Op) and v.op.name == "relax.permute_dims":
                x = v.args[0].struct_info
                axes = v.attrs.get("axes")
                if isinstance(x, TensorStructInfo) and x.ndim == 2 and \
                        (axes is None or [int(a) % 2 for a in axes] == [1, 0]):
                    out[b.var] = v.args[0]
    return out


def blas_handles(call: Call) -> bool:
    """Whether `disco.blas.matmul` computes this `R.matmul` call."""
    sinfos = [a.struct_info for a in call.args] + [call.struct_info]
    if not all(isinstance(s, TensorStructInfo) for s in sinfos):
        return False
    a, b, out = sinfos
    return (a.ndim >= 2 and b.ndim >= 2 and out.shape is not None
            and {a.dtype, b.dtype, out.dtype} <= _BLAS_DTYPES)


class _Dispatcher(ExprMutator):
    def __init__(self, transposed: dict):
        super().__init__()
        self.transposed = transposed

    def visit_call(self, call: Call):
        call = super().visit_call(call)
        if isinstance(call.op, Op) and call.op.name == "relax.matmul" and blas_handles(call):
            w = self.transposed.get(call.args[1])
            if w is not None:
                return call_dps_packed(ExternFunc(BLAS_MATMUL_NT), [call.args[0], w],
                                       out_sinfo=call.struct_info)
            return call_dps_packed(ExternFunc(BLAS_MATMUL), list(call.args[:2]),
                                   out_sinfo=call.struct_info)
        return call

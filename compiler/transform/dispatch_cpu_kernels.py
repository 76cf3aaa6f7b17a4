"""DispatchCPUKernels (CPU pipeline only): weights read in their stored format.

    R.matmul(x, R.permute_dims(R.dequantize(w, format=f), [1, 0]))
        ->  R.call_dps_packed("disco.cpu.matmul_nt_<f>", (x, w), out_sinfo)    # q8_0, q4_0, q4_1
        ->  R.call_dps_packed("disco.cpu.matmul_nt", (x, w), out_sinfo)        # float16, bfloat16
    R.take(R.dequantize(w, format=f), ids, axis=0)
        ->  R.call_dps_packed("disco.cpu.embedding[_<f>]", (ids, w), out_sinfo)
    R.ccl.masked_take(R.dequantize(w, format=f), ids, mesh_shape, mesh_axis)   # vocabulary-parallel
        ->  R.call_pure_packed("spmd.masked_embedding", w, ids, mesh_shape, mesh_axis, f[, device_ids])
    R.matmul(x, R.permute_dims(w, [1, 0]))      x, w float32, decode shapes
        ->  R.call_dps_packed("disco.cpu.matmul_nt", (x, w), out_sinfo)

The kernels (disco/cpu_kernels.py, csrc/cpu_kernels) convert each weight to float32 in
registers, so a weight stored in 16 bits or 4 bits is read as such: decoding reads
every weight once per token, and its speed is bytes read over memory bandwidth. The
dequantized matrix is then unused and DeadCodeElimination drops it.

float32 weights go to `disco.cpu.matmul_nt_auto`, which picks the kernel or numpy's
BLAS by the rows of x at run time (the IR's row count is symbolic): the BLAS copies
(packs) the whole weight matrix on every call, which at decode shapes -- a step of a
few dozen sequences -- costs more than the product itself (about half of a 32-row
decode step of the ~100M Llama); the kernel reads the weights in place and wins up
to about 32 rows, the BLAS's blocked GEMM past that (disco.cpu_kernels.
FLOAT32_KERNEL_ROWS).

Runs after DistributedLowering (local shapes, masked takes) and before DispatchLibrary
(which would otherwise hand the BLAS the dequantized matrix). Not in the CUDA
pipeline: there R.dequantize legalizes (float formats: a cast kernel).
"""
from __future__ import annotations

from disco.cpu_kernels import EMBEDDING, MATMUL_NT

from ..ir.graph import Call, Op
from ..ir.module import IRModule
from ..ir.struct_info import TensorStructInfo
from ..ir.visitor import ExprMutator
from ..op.builtin import call_dps_packed, call_pure_packed, prim_value, shape, string_imm

__all__ = ["DispatchCPUKernels", "FLOAT32_MATMUL"]

FLOAT32_MATMUL = "disco.cpu.matmul_nt_auto"    # float32 weights: kernel or BLAS by rows of x
ROUTE_FLOAT32 = True           # False: float32 matmuls stay on the BLAS (DispatchLibrary)


def DispatchCPUKernels(mod: IRModule) -> IRModule:
    """`mod` with matmuls and lookups of stored weights turned into CPU kernel calls."""
    out = mod
    for name, func in mod.graph_functions().items():
        new = _Dispatcher(_producers(func)).visit_expr(func)
        if new is not func:
            out = out.with_function(name, new)
    return out


def _producers(func) -> dict:
    """Variables bound to R.dequantize or R.permute_dims calls -> the call."""
    out = {}
    for blk in func.body.blocks:
        for b in blk.bindings:
            v = getattr(b, "value", None)
            if isinstance(v, Call) and isinstance(v.op, Op) and \
                    v.op.name in ("relax.dequantize", "relax.permute_dims"):
                out[b.var] = v
    return out


def _tensor(expr, dtype=None) -> bool:
    s = expr.struct_info
    return isinstance(s, TensorStructInfo) and (dtype is None or s.dtype == dtype)


class _Dispatcher(ExprMutator):
    def __init__(self, producers: dict):
        super().__init__()
        self.producers = producers

    def _call(self, var, name: str):
        c = self.producers.get(var)
        return c if c is not None and c.op.name == name else None

    def _stored(self, var):
        """(stored weight, format) when `var` is R.dequantize of a 2-D stored weight."""
        d = self._call(var, "relax.dequantize")
        if d is None or not _tensor(d.args[0]) or d.args[0].struct_info.ndim != 2:
            return None
        return d.args[0], d.attrs["format"]

    def _transposed(self, var):
        """The 2-D matrix `var` is the transpose of, else None."""
        p = self._call(var, "relax.permute_dims")
        if p is None or not _tensor(p.args[0]) or p.args[0].struct_info.ndim != 2:
            return None
        axes = p.attrs.get("axes")
        return p.args[0] if axes is None or [int(a) % 2 for a in axes] == [1, 0] else None

    def visit_call(self, call: Call):
        call = super().visit_call(call)
        if not isinstance(call.op, Op) or not _tensor(call, "float32") or call.struct_info.shape is None:
            return call
        name = call.op.name
        if name == "relax.matmul" and _tensor(call.args[0], "float32") and call.args[0].struct_info.ndim >= 1:
            m = self._transposed(call.args[1])
            if m is None:
                return call
            stored = self._stored(m)
            if stored is not None:
                w, fmt = stored
                return call_dps_packed(MATMUL_NT[fmt], [call.args[0], w], out_sinfo=call.struct_info)
            if ROUTE_FLOAT32 and _tensor(m, "float32"):
                return call_dps_packed(FLOAT32_MATMUL, [call.args[0], m], out_sinfo=call.struct_info)
            return call
        if name == "relax.take" and call.attrs.get("axis") in (0, -2):
            stored = self._stored(call.args[0])
            if stored is not None and _tensor(call.args[1]):
                w, fmt = stored
                return call_dps_packed(EMBEDDING[fmt], [call.args[1], w], out_sinfo=call.struct_info)
        if name == "relax.ccl.masked_take":
            stored = self._stored(call.args[0])
            if stored is not None:
                w, fmt = stored
                stage = (shape(list(call.attrs["device_ids"])),) if "device_ids" in call.attrs else ()
                return call_pure_packed("spmd.masked_embedding", w, call.args[1],
                                        shape(list(call.attrs["mesh_shape"])),
                                        prim_value(call.attrs["mesh_axis"]), string_imm(fmt), *stage,
                                        sinfo_args=call.struct_info)
        return call

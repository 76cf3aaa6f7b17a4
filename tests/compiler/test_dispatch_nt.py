"""DispatchLibrary on linear layers with PyTorch-layout weights: matmul(x,
permute_dims(w)) becomes disco.blas.matmul_nt(x, w), the permute is dropped by
DeadCodeElimination (no transposed copy per call), and the result equals numpy."""
from __future__ import annotations

import numpy as np

from compiler import build, op
from compiler.ir import BlockBuilder, Var
from compiler.ir.graph import Call
from compiler.ir.struct_info import TensorStructInfo
from compiler.ir.visitor import post_order_visit
from compiler.transform.dead_code import DeadCodeElimination
from compiler.transform.dispatch_library import DispatchLibrary
from disco.vm import VirtualMachine


def _linear_module(dtype="float32"):
    bb = BlockBuilder()
    n = bb.size_var("n")
    x = Var("x", TensorStructInfo((n, 8), dtype))
    w = Var("w", TensorStructInfo((5, 8), dtype))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            wt = bb.emit(op.permute_dims(w, [1, 0]))
            y = bb.emit_output(op.matmul(x, wt))
        bb.emit_func_output(y)
    return bb.get()


def _calls(mod):
    found = []
    post_order_visit(mod["main"], lambda e: found.append(
        e.args[0].global_symbol if getattr(e.op, "name", "") == "relax.call_dps_packed" else e.op.name)
        if isinstance(e, Call) else None)
    return found


def test_transposed_weight_goes_to_matmul_nt_and_the_permute_goes_away():
    out = DeadCodeElimination(DispatchLibrary(_linear_module()))
    calls = _calls(out)
    assert "disco.blas.matmul_nt" in calls and "relax.permute_dims" not in calls


def test_matmul_nt_result_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    w = rng.standard_normal((5, 8)).astype(np.float32)
    vm = VirtualMachine(build(_linear_module()))
    np.testing.assert_allclose(vm["main"](x, w), x @ w.T, rtol=1e-5, atol=1e-5)


def test_a_permute_of_other_axes_is_left_alone():
    bb = BlockBuilder()
    x = Var("x", TensorStructInfo((2, 3, 4), "float32"))
    w = Var("w", TensorStructInfo((2, 5, 4), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            wt = bb.emit(op.permute_dims(w, [0, 2, 1]))
            y = bb.emit_output(op.matmul(x, wt))
        bb.emit_func_output(y)
    calls = _calls(DispatchLibrary(bb.get()))
    assert "disco.blas.matmul_nt" not in calls and "disco.blas.matmul" in calls

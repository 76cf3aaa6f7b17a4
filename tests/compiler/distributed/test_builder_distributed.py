"""A distributed module made with the builder API (compiler/ir/builder.py) instead of
the script: a DTensor parameter, an annotate_sharding call and a mesh in the global
infos; built and run on 2 workers against numpy. The placements expected are
Megatron's: w1 column-parallel (given), w2 row-parallel (annotated), x replicated, one
all-reduce of the result."""
from __future__ import annotations

import numpy as np

import compiler
import disco
from compiler import op
from compiler.distributed import DeviceMesh, describe
from compiler.ir.builder import BlockBuilder
from compiler.ir.graph import Var
from compiler.ir.struct_info import DTensorStructInfo, TensorStructInfo


def megatron_mlp():
    bb = BlockBuilder()
    n = bb.size_var("n")
    x = Var("x", TensorStructInfo((n, 16), "float32"))
    w1 = Var("w1", DTensorStructInfo(TensorStructInfo((16, 32), "float32"), "mesh[0]", "S[1]"))
    w2 = Var("w2", TensorStructInfo((32, 16), "float32"))
    with bb.function("main", [x, w1, w2]):
        with bb.dataflow():
            h = bb.emit(op.nn.relu(op.matmul(x, w1)))
            w2s = bb.emit(op.dist.annotate_sharding(w2, "mesh[0]", "S[0]"))
            y = bb.emit_output(op.matmul(h, w2s))
        bb.emit_func_output(y)
    return bb.get().with_global_infos(mesh=[DeviceMesh((2,), range(2))])


def test_builder_module_with_dtensor_parameter_and_annotation_runs_on_two_workers(roundtrip):
    mod = megatron_mlp()
    roundtrip(mod)
    rep = describe(mod)
    assert {k: rep.placements[k] for k in ("x", "w1", "w2")} == {"x": "R", "w1": "S[1]",
                                                                   "w2": "S[0]"}
    # the (n, 16) float32 result all-reduced over 2 devices: 2 * 1/2 * 64n bytes
    assert [(k, b) for _, k, b in rep.collectives] == [("allreduce", "(n * 64)")]
    ex = compiler.build(mod, target="cpu")
    params = ex.metadata["distributed"]["functions"]["main"]["params"]
    assert [(p["name"], p["placement"]) for p in params] == [("x", "R"), ("w1", "S[1]"),
                                                             ("w2", "S[0]")]
    rng = np.random.default_rng(0)
    w1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((16, 32), (32, 16)))
    with disco.ThreadedSession(2) as sess:
        f = sess.load_module(ex)["main"]
        for n in (3, 8):
            x = rng.standard_normal((n, 16)).astype(np.float32)
            np.testing.assert_allclose(f(x, w1, w2).fetch(), np.maximum(x @ w1, 0) @ w2,
                                       rtol=1e-4, atol=1e-4)

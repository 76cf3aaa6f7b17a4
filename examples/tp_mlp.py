"""Tensor-parallel MLP in a few lines: annotate two weights, compile, run on 2 workers.

    python examples/tp_mlp.py

The model author writes the MLP once, typing only the two weights with their
placements over a 2-device mesh: w1 split by columns ("S[1]"), w2 by rows ("S[0]")
(Megatron-style). The compiler propagates those placements to every tensor, lowers the
module to the per-worker program (local shapes, one all-reduce) and builds it; Disco
runs it on two worker processes, each holding half of each weight.
"""
from __future__ import annotations

import time

import numpy as np

import compiler
import disco
from compiler import script
from compiler.distributed import DistributedLowering, describe

DIM, HIDDEN = 512, 2048

# What the author writes: only the weights carry placements.
ANNOTATED = f'''
@I.ir_module
class MLP:
    I.module_global_infos({{"mesh": [R.device_mesh((2,), I.Range(0, 2))]}})

    @R.function
    def main(x: R.Tensor(("n", {DIM}), "float32"),
             w1: R.DTensor(({DIM}, {HIDDEN}), "float32", "mesh[0]", "S[1]"),
             w2: R.DTensor(({HIDDEN}, {DIM}), "float32", "mesh[0]", "S[0]")) -> R.Tensor(("n", {DIM}), "float32"):
        n = T.int64()
        with R.dataflow():
            h = R.matmul(x, w1)
            a = R.nn.gelu(h)
            y = R.matmul(a, w2)
            R.output(y)
        return y
'''


def reference(x, w1, w2):
    """The same MLP in numpy, float64, on one device."""
    from math import erf
    h = x.astype(np.float64) @ w1
    return (0.5 * h * (1 + np.vectorize(erf)(h / np.sqrt(2)))) @ w2


def main() -> None:
    mod = script.parse(ANNOTATED)
    print("input module:")
    print(mod.script())
    print(describe(mod, "main"))

    print("per-worker program (after DistributedLowering):")
    print(DistributedLowering(mod).script())

    t0 = time.perf_counter()
    ex = compiler.build(mod)
    print(f"compiled in {time.perf_counter() - t0:.2f} s")

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, DIM)).astype(np.float32)
    w1 = (rng.standard_normal((DIM, HIDDEN)) / np.sqrt(DIM)).astype(np.float32)
    w2 = (rng.standard_normal((HIDDEN, DIM)) / np.sqrt(HIDDEN)).astype(np.float32)

    with disco.ProcessSession(2) as sess:
        dmod = sess.load_module(ex)
        weights = dmod.place({"w1": w1, "w2": w2})    # each worker receives only its half
        y = dmod["main"](x, weights["w1"], weights["w2"]).fetch()
        err = float(np.abs(y - reference(x, w1, w2)).max())
        calls = 50
        t0 = time.perf_counter()
        for _ in range(calls):
            out = dmod["main"](x, weights["w1"], weights["w2"])
        out.fetch()
        per_call = (time.perf_counter() - t0) / calls
    print(f"2 workers: max abs error vs numpy {err:.2e}; {per_call * 1e3:.3f} ms per call "
          f"(x {x.shape}, w1 {w1.shape}, w2 {w2.shape}, float32)")
    if err > 1e-3:
        raise SystemExit(f"result differs from numpy by {err}")


if __name__ == "__main__":
    main()

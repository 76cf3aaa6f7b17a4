"""VM overhead per operator, and compile time of a 32-layer decoder.

vm overhead: a graph function of 1000 tiny ops (adds of 1-element tensors, built with
the default CPU pipeline minus fusion, memory planned) run by `disco.VirtualMachine`, against the
same 1000 calls of the same compiled kernel made directly through ctypes from a
Python loop (the floor for anything driven from Python), and against 1000
`numpy.add(a, b, out=c)`. Prints microseconds per op and the VM's overhead over the
direct calls. Target: overhead <= 3 us/op.

compile time: a 32-layer decoder (each layer as tests/compiler/test_every_state_builds.py:
rms_norm, q/k/v matmuls, rotary, softmax attention, o-proj, residual, SwiGLU MLP; hidden
size 64) through `compiler.build`, cold (an empty kernel cache: DISCO_TP_CACHE pointing
at a fresh directory) and warm (the same directory again), each in a fresh process.
Targets: cold < 60 s, warm < 5 s.

    python benchmarks/vm_overhead.py      # prints both tables, writes results/vm_overhead.json

benchmarks/ops.py runs both as its sections "vm overhead" and "compile time".
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.pop("DISCO_TP_CHECK_ROUNDTRIP", None)   # benchmark the build, not its checks

import numpy as np  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "vm_overhead.json")
TARGETS = {"overhead_us_per_op": 3.0, "compile_cold_s": 60.0, "compile_warm_s": 5.0}


# -- vm overhead -------------------------------------------------------------------------

def tiny_ops_module(n_ops: int):
    from compiler import op
    from compiler.ir.builder import BlockBuilder
    from compiler.ir.graph import Var
    from compiler.ir.struct_info import TensorStructInfo
    bb = BlockBuilder()
    x = Var("x", TensorStructInfo((1,), "float32"))
    y = Var("y", TensorStructInfo((1,), "float32"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            v = x
            for _ in range(n_ops - 1):
                v = bb.emit(op.add(v, y))
            v = bb.emit_output(op.add(v, y))
        bb.emit_func_output(v)
    return bb.get()


def _time_per_op(f, n_ops: int, repeats: int) -> float:
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / n_ops * 1e6


def vm_overhead(n_ops: int, repeats: int) -> dict:
    from compiler import build
    from compiler.pipeline import get_pipeline
    from disco.vm import VirtualMachine
    # Without fusion: FuseOps would merge the chain into one kernel, and this measures
    # the VM's cost per instruction, not how many instructions are left.
    passes = [p for p in get_pipeline("cpu") if p.__name__ not in ("FuseOps", "FuseTIR")]
    ex = build(tiny_ops_module(n_ops), passes=passes)
    vm = VirtualMachine(ex)
    main = vm["main"]
    x, y = np.zeros(1, "float32"), np.ones(1, "float32")
    assert main(x, y)[0] == n_ops, "the VM computed a wrong result"
    from disco.executable import Op
    storages = sum(1 for ins in ex.functions["main"].code if ins[0] == Op.ALLOC_STORAGE)

    # The same kernel, called directly: one ctypes call per op, arguments prebuilt.
    (kernel,) = ex.kernels
    addr = ctypes.cast(getattr(ex.load_library(), kernel.name), ctypes.c_void_p).value
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(addr)
    bufs = [np.zeros(1, "float32"), np.ones(1, "float32"), np.zeros(1, "float32")]
    ptrs = (ctypes.c_void_p * 3)(*[b.ctypes.data for b in bufs])
    dims = (ctypes.c_int64 * 3)(1, 1, 1)
    pa, da = ctypes.addressof(ptrs), ctypes.addressof(dims)

    def direct():
        for _ in range(n_ops):
            fn(pa, da)

    a, b, c = np.zeros(1, "float32"), np.ones(1, "float32"), np.zeros(1, "float32")
    add = np.add

    def numpy_loop():
        for _ in range(n_ops):
            add(a, b, out=c)

    vm_us = _time_per_op(lambda: main(x, y), n_ops, repeats)
    direct_us = _time_per_op(direct, n_ops, repeats)
    numpy_us = _time_per_op(numpy_loop, n_ops, repeats)
    return {"n_ops": n_ops, "storages": storages, "vm_us_per_op": vm_us,
            "ctypes_direct_us_per_op": direct_us, "numpy_us_per_op": numpy_us,
            "overhead_us_per_op": vm_us - direct_us}


# -- compile time ------------------------------------------------------------------------

def decoder_module(layers: int, d: int = 64, heads: int = 4, ffn: int = 128):
    from compiler import op
    from compiler.ir.builder import BlockBuilder
    from compiler.ir.graph import Var
    from compiler.ir.struct_info import TensorStructInfo as TS
    hd = d // heads
    bb = BlockBuilder()
    s = bb.size_var("s")
    x = Var("x", TS((s, d), "float32"))
    mask = Var("mask", TS((s, s), "float32"))
    cos, sin = Var("cos", TS((s, hd), "float32")), Var("sin", TS((s, hd), "float32"))
    params = [x, mask, cos, sin]
    for i in range(layers):
        params += [Var(f"l{i}_g_attn", TS((d,), "float32")), Var(f"l{i}_g_mlp", TS((d,), "float32"))]
        params += [Var(f"l{i}_{n}", TS((d, d), "float32")) for n in ("wq", "wk", "wv", "wo")]
        params += [Var(f"l{i}_{n}", TS((d, ffn), "float32")) for n in ("w_gate", "w_up")]
        params += [Var(f"l{i}_w_down", TS((ffn, d), "float32"))]
    with bb.function("main", params, attrs={"tir_var_upper_bound": {"s": 2048}}):
        with bb.dataflow():
            h = x
            for i in range(layers):
                g1, g2, wq, wk, wv, wo, wg, wu, wd = params[4 + 9 * i: 13 + 9 * i]
                n1 = bb.emit(op.nn.rms_norm(h, g1, axes=[-1], epsilon=1e-5))
                q, k, v = (bb.emit(op.reshape(bb.emit(op.matmul(n1, w)), [s, heads, hd]))
                           for w in (wq, wk, wv))
                q = bb.emit(op.nn.rotary_embedding(q, cos, sin))
                k = bb.emit(op.nn.rotary_embedding(k, cos, sin))
                sc = bb.emit(op.multiply(op.matmul(op.permute_dims(q, [1, 0, 2]),
                                                   op.permute_dims(k, [1, 2, 0])),
                                         op.const(hd ** -0.5, "float32")))
                p = bb.emit(op.nn.softmax(op.add(sc, mask), axis=-1))
                o = bb.emit(op.matmul(p, op.permute_dims(v, [1, 0, 2])))
                o = bb.emit(op.reshape(op.permute_dims(o, [1, 0, 2]), [s, d]))
                r = bb.emit(op.add(h, op.matmul(o, wo)))
                n2 = bb.emit(op.nn.rms_norm(r, g2, axes=[-1], epsilon=1e-5))
                act = bb.emit(op.multiply(op.nn.silu(op.matmul(n2, wg)), op.matmul(n2, wu)))
                h = bb.emit(op.add(r, op.matmul(act, wd)))
            out = bb.emit_output(h)
        bb.emit_func_output(out)
    return bb.get()


def _compile_once(layers: int) -> None:
    """Child process: build the decoder once, print the seconds `compiler.build` took."""
    from compiler import build
    from compiler.codegen import cc
    mod = decoder_module(layers)
    t0 = time.perf_counter()
    ex = build(mod)
    dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "kernels": len(ex.kernels), "c_compiles": cc.compile_count,
                      "instructions": len(ex.functions["main"].code)}))


def compile_time(layers: int) -> dict:
    out = {"layers": layers}
    with tempfile.TemporaryDirectory(prefix="disco-tp-bench-") as cache:
        env = dict(os.environ, DISCO_TP_CACHE=cache)
        env.pop("DISCO_TP_CHECK_ROUNDTRIP", None)
        for phase in ("cold", "warm"):
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "--compile-once",
                                str(layers)], env=env, capture_output=True, text=True,
                               timeout=600)
            if r.returncode != 0:
                raise RuntimeError(f"{phase} build failed:\n{r.stderr[-4000:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
            out[f"compile_{phase}_s"] = res["seconds"]
            out[f"c_compiler_runs_{phase}"] = res["c_compiles"]
            out["kernels"], out["instructions"] = res["kernels"], res["instructions"]
    return out


def report_overhead(ov: dict) -> dict:
    print(f"== vm overhead: {ov['n_ops']} adds of 1-element tensors "
          f"({ov['storages']} planned storages) ==")
    print(f"{'runner':<28s}{'us/op':>10s}")
    print(f"{'disco VM':<28s}{ov['vm_us_per_op']:>10.3f}")
    print(f"{'ctypes, same kernel':<28s}{ov['ctypes_direct_us_per_op']:>10.3f}")
    print(f"{'numpy.add(out=)':<28s}{ov['numpy_us_per_op']:>10.3f}")
    print(f"VM overhead over direct calls: {ov['overhead_us_per_op']:.3f} us/op "
          f"(target <= {TARGETS['overhead_us_per_op']}); VM / direct = "
          f"{ov['vm_us_per_op'] / ov['ctypes_direct_us_per_op']:.2f}x, "
          f"VM / numpy = {ov['vm_us_per_op'] / ov['numpy_us_per_op']:.2f}x")
    return ov


def report_compile_time(ct: dict) -> dict:
    print(f"== compile time: {ct['layers']}-layer decoder, {ct['kernels']} kernels, "
          f"{ct['instructions']} VM instructions ==")
    print(f"cold (empty kernel cache): {ct['compile_cold_s']:.2f} s (target < "
          f"{TARGETS['compile_cold_s']:.0f} s), C compiler runs: {ct['c_compiler_runs_cold']}")
    print(f"warm (cache filled):       {ct['compile_warm_s']:.2f} s (target < "
          f"{TARGETS['compile_warm_s']:.0f} s), C compiler runs: {ct['c_compiler_runs_warm']}")
    return ct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--compile-once", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.compile_once is not None:
        _compile_once(a.compile_once)
        return

    ov = report_overhead(vm_overhead(a.ops, a.repeats))
    print()
    ct = report_compile_time(compile_time(a.layers))

    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"benchmark": "vm_overhead", "vm_overhead": ov, "compile_time": ct,
                   "targets": TARGETS}, f, indent=1)


if __name__ == "__main__":
    main()

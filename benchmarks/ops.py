"""Operator benchmarks: the project's kernels against numpy, side by side in one run.

Sections (each a function in SECTIONS; add one by appending `(name, function)`; a
section takes the parsed arguments and returns a JSON-able dict):

fused kernels: rms_norm, softmax, silu(x) * y, add + rms_norm (returning both, as the
residual stream of a decoder does) and rotary embedding, each written with the real
operators (R.nn.rms_norm, R.nn.softmax, R.nn.silu, R.multiply, R.add,
R.nn.rotary_embedding) over a symbolic row count and built with LegalizeOps +
FuseOps + FuseTIR + DefaultSchedule, run through disco.VirtualMachine, against the
numpy composite of the same operators. Rows of 4096 float32 (1024 of them, and a
smaller 64-row case), median of repeated runs. Target: >= 2x over numpy.

vm overhead, compile time: see benchmarks/vm_overhead.py (VM cost per op over direct
kernel calls, target <= 3 us/op; 32-layer decoder build cold < 60 s, warm < 5 s).

    python benchmarks/ops.py                       # every section; writes results/ops.json
    python benchmarks/ops.py --only "fused kernels" --repeat 50
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.pop("DISCO_TP_CHECK_ROUNDTRIP", None)   # benchmark the kernels, not the checks

import numpy as np  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ops.json")
TARGET_SPEEDUP = 2.0


def median_seconds(fn: Callable[[], object], repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# -- fused kernels ------------------------------------------------------------------------

def _fused_cases(width: int):
    """name -> (build the graph function body, input shapes by row count, numpy composite)."""
    from compiler import op
    eps = 1e-5
    heads, head_dim = width // 128, 128

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def rotary(x, cos, sin):
        half = head_dim // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
        return x * cos[:, None, :] + rot * sin[:, None, :]

    return {
        "rms_norm": (lambda bb, x, w: op.nn.rms_norm(x, w, axes=[-1], epsilon=eps),
                     lambda n: [(n, width), (width,)], rms),
        "softmax": (lambda bb, x: op.nn.softmax(x, axis=-1), lambda n: [(n, width)], softmax),
        "silu_mul": (lambda bb, x, y: op.multiply(op.nn.silu(x), y),
                     lambda n: [(n, width), (n, width)], lambda x, y: x / (1 + np.exp(-x)) * y),
        "add_rms_norm": (lambda bb, x, r, w: _add_rms(bb, op, x, r, w, eps),
                         lambda n: [(n, width), (n, width), (width,)],
                         lambda x, r, w: (x + r, rms(x + r, w))),
        "rotary": (lambda bb, x, c, s: op.nn.rotary_embedding(x, c, s),
                   lambda n: [(n, heads, head_dim), (n, head_dim), (n, head_dim)], rotary),
    }


def _add_rms(bb, op, x, r, w, eps):
    a = bb.emit_output(op.add(x, r))
    return [a, op.nn.rms_norm(a, w, axes=[-1], epsilon=eps)]


def fused_module(body, shapes):
    """A module `main(inputs) -> body(...)` over a symbolic row count `n`."""
    from compiler.ir.builder import BlockBuilder
    from compiler.ir.graph import Var
    from compiler.ir.struct_info import TensorStructInfo
    bb = BlockBuilder()
    n = bb.size_var("n")
    params = [Var(f"p{i}", TensorStructInfo(tuple(n if d == "n" else d for d in s), "float32"))
              for i, s in enumerate(shapes("n"))]
    with bb.function("main", params):
        with bb.dataflow():
            out = body(bb, *params)
            if isinstance(out, list):
                out = [o if isinstance(o, Var) else bb.emit_output(o) for o in out]
            else:
                out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get()


def fused_passes():
    from compiler.transform import DefaultSchedule, FuseOps, FuseTIR, LegalizeOps
    return [LegalizeOps, FuseOps, FuseTIR, DefaultSchedule]


def bench_fused_kernels(args) -> dict:
    from compiler import build
    from disco.vm import VirtualMachine
    rows = [1024, 64]
    width = 4096
    results = []
    print(f"\n== fused kernels: float32 rows of {width}, median of {args.repeat} runs ==")
    print(f"{'kernel':<14} {'rows':>5} {'project ms':>11} {'numpy ms':>10} {'speedup':>8}  "
          f"target >= {TARGET_SPEEDUP:g}x")
    for name, (body, shapes, ref) in _fused_cases(width).items():
        if args.case and name not in args.case:
            continue
        mod = fused_module(body, shapes)
        ex = build(mod, passes=fused_passes())
        kernels = ex.metadata.get("kernel_functions", [])
        main = VirtualMachine(ex)["main"]
        for n in rows:
            rng = np.random.default_rng(n)
            inputs = [rng.standard_normal(s).astype(np.float32) for s in shapes(n)]
            got, want = main(*inputs), ref(*inputs)
            for g, w in zip(got if isinstance(got, (list, tuple)) else [got],
                            want if isinstance(want, tuple) else [want]):
                np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-4)
            t_proj = median_seconds(lambda: main(*inputs), args.repeat)
            t_np = median_seconds(lambda: ref(*inputs), args.repeat)
            ratio = t_np / t_proj
            verdict = "met" if ratio >= TARGET_SPEEDUP else "MISSED"
            print(f"{name:<14} {n:>5} {t_proj * 1e3:>11.3f} {t_np * 1e3:>10.3f} {ratio:>7.2f}x  {verdict}")
            results.append({"kernel": name, "rows": n, "width": width, "project_s": t_proj,
                            "numpy_s": t_np, "speedup": ratio, "kernels": kernels})
    return {"target_speedup": TARGET_SPEEDUP, "cases": results}


def bench_vm_overhead(args) -> dict:
    import vm_overhead
    return vm_overhead.report_overhead(vm_overhead.vm_overhead(1000, max(args.repeat, 20)))


def bench_compile_time(args) -> dict:
    import vm_overhead
    return vm_overhead.report_compile_time(vm_overhead.compile_time(32))


SECTIONS: list[tuple[str, Callable[[argparse.Namespace], dict]]] = [
    ("fused kernels", bench_fused_kernels),
    ("vm overhead", bench_vm_overhead),      # benchmarks/vm_overhead.py
    ("compile time", bench_compile_time),    # benchmarks/vm_overhead.py
]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", default=None, metavar="NAME",
                    help=f"run only this section (repeatable); one of {[n for n, _ in SECTIONS]}")
    ap.add_argument("--case", action="append", default=None,
                    help="fused kernels: run only this kernel (repeatable)")
    ap.add_argument("--repeat", type=int, default=20, help="timed runs per measurement")
    ap.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS}")
    args = ap.parse_args(argv)
    known = [n for n, _ in SECTIONS]
    for name in args.only or []:
        if name not in known:
            ap.error(f"--only {name!r}: no such section; sections: {known}")
    out = {"benchmark": "ops", "cpu_count": os.cpu_count()}
    for name, fn in SECTIONS:
        if args.only is None or name in args.only:
            out[name] = fn(args)
    if not args.no_save:
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        previous = {}
        if os.path.exists(RESULTS):
            with open(RESULTS) as f:
                previous = json.load(f)
        previous.update(out)
        with open(RESULTS, "w") as f:
            json.dump(previous, f, indent=1)
        print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()

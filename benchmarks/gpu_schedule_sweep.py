"""Threads per block for the generated fused kernels, swept on the GPU in one run.

DefaultGPUSchedule binds elementwise stages to `threads` per block, `items` elements
per thread, and row kernels (softmax, norms) to up to `row_threads`; this times each fused kernel of
benchmarks/gpu_ops.py under several values of both and prints, per kernel, the
fraction of device copy bandwidth each variant reaches, so the defaults can be chosen from
measurements.

    python benchmarks/gpu_schedule_sweep.py [--rows 4096] [--repeats 10]
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "gpu"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

# (threads per block, elements per thread of an elementwise stage); row kernels take
# the first as their threads per block and ignore the second
VARIANTS = ((128, 4), (256, 4), (512, 4), (1024, 4), (256, 1), (256, 2), (256, 8))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--profile", metavar="KERNEL_DTYPE_THREADSxITEMS",
                   help="only launch this variant 3 times (e.g. under ncu), no timing")
    a = p.parse_args(argv)
    import te_kernels as K
    from gpu_ops import _time, copy_bandwidth

    import disco.cuda as dc
    from compiler.codegen.cuda import generate_cuda
    from compiler.transform.gpu_schedule import schedule_gpu
    cp = dc.cupy_module()
    cases = [("rms_norm", 4096, a.rows), ("softmax", 4096, a.rows), ("silu_mul", 4096, a.rows),
             ("add_rms_norm", 4096, a.rows), ("rotary", 128, a.rows * 32)]
    funcs = {}
    for name, m, _ in cases:
        for dt in ("float16", "float32"):
            func = K.MAKERS[name](m=m, dtype=dt)[0]
            for t, i in VARIANTS:
                funcs[f"{name}_{dt}_{t}x{i}"] = schedule_gpu(func, threads=t, row_threads=t, items=i)
    mod = generate_cuda(funcs)
    raw = dc.compile_module(mod.source)
    if a.profile:
        name, dt, _ = a.profile.rsplit("_", 2)
        m, n = next((m, n) for c, m, n in cases if c == name)
        args = [cp.asarray(x) for x in K.inputs_for(name, n, m, dt, seed=1)]
        fn = dc.CudaFunction(raw, mod.functions[mod.kernel_names[a.profile]].to_json())
        for _ in range(3):
            fn(*args, cp.empty(args[0].shape, dtype=dt))
        cp.cuda.get_current_stream().synchronize()
        return 0
    bw = copy_bandwidth(cp, a.repeats)
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s; fraction of it per threads x items:")
    print(f"{'kernel':14s} {'dtype':8s} " + " ".join(f"{f'{t}x{i}':>7s}" for t, i in VARIANTS))
    for name, m, n in cases:
        for dt in ("float16", "float32"):
            args = [cp.asarray(x) for x in K.inputs_for(name, n, m, dt, seed=1)]
            y = cp.empty(args[0].shape, dtype=dt)
            nbytes = sum(x.nbytes for x in args) + y.nbytes
            fracs = []
            for t, i in VARIANTS:
                key = f"{name}_{dt}_{t}x{i}"
                fn = dc.CudaFunction(raw, mod.functions[mod.kernel_names[key]].to_json())
                fracs.append(nbytes / _time(cp, lambda: fn(*args, y), a.repeats) / bw)
            print(f"{name:14s} {dt:8s} " + " ".join(f"{f:7.2f}" for f in fracs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generated CUDA kernels against cupy, and against the memory-bandwidth bound.

In one run on one GPU:
- fused kernels made by the compiler (compiler.te programs scheduled by
  DefaultGPUSchedule, CUDA C from compiler.codegen.cuda, NVRTC through disco.cuda):
  rms_norm, softmax, silu*mul, add+rms_norm (4096-wide rows, 4096 rows) and rotary
  (128-wide heads, 4096 tokens x 32 heads), in float16 and float32;
- the same operations written as cupy composites (several cupy kernels each);
- the bound: bytes each kernel must move (inputs read once + outputs written once)
  divided by the measured device-to-device copy bandwidth (cupy copy of 512 MiB,
  counted as read + write);
- matmul: the compiled module's "disco.blas.matmul" (VM on device "cuda", which runs
  cupy.matmul into the VM's buffer) against cupy.matmul called directly.

- bfloat16 matmul through disco.cublas (uint16 storage) against torch.matmul;
- NCCL: a one-rank all-reduce through disco.ccl.nccl against cupy.cuda.nccl directly;
- CUDA graphs: a Llama decoder layer (tests/e2e/_tp_models.llama, 32 wide) through the
  VM on "cuda", eager against graph replay (cuda_graph=True).

Timings: batches of calls between one pair of CUDA events, so that launch overhead
overlaps the kernels. Prints, per kernel: time (median over repeats), cupy / ours (>= 2 is the
target), and achieved bandwidth / copy bandwidth (>= 0.7 is the target); for matmul
cupy / ours (>= 0.95 is the target). Writes benchmarks/results/gpu_ops.json.

    python benchmarks/gpu_ops.py [--rows 4096] [--repeats 50]

Without a GPU (or cupy) it says so and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "gpu"))     # te_kernels: the fused programs

RESULTS = os.path.join(ROOT, "benchmarks", "results", "gpu_ops.json")
TARGETS = {"vs_cupy": 2.0, "of_copy_bandwidth": 0.7, "matmul_vs_cupy": 0.95}


def _time(cp, fn, repeats: int, warmup: int = 3, batch: int = 20) -> float:
    """Median seconds per fn() on the current stream: `batch` calls between one pair of
    CUDA events, so the host's launch overhead (~10 us a call) overlaps the kernels
    instead of being counted in a short one."""
    for _ in range(warmup):
        fn()
    cp.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(repeats):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(batch):
            fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) / 1e3 / batch)
    return statistics.median(times)


def copy_bandwidth(cp, repeats: int) -> float:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    n = 512 << 20
    src = cp.ones(n, dtype=cp.uint8)
    dst = cp.empty_like(src)
    t = _time(cp, lambda: dst.__setitem__(Ellipsis, src), repeats, batch=5)
    return 2 * n / t


def _composites(cp, eps=1e-5):
    f32 = cp.float32

    def rms_norm(x, w):
        x32 = x.astype(f32)
        return (x32 * (1.0 / cp.sqrt((x32 * x32).mean(-1, keepdims=True) + eps)) * w.astype(f32)).astype(x.dtype)

    def softmax(x):
        x32 = x.astype(f32)
        e = cp.exp(x32 - x32.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)).astype(x.dtype)

    def silu_mul(a, b):
        a32 = a.astype(f32)
        return (a32 / (1 + cp.exp(-a32)) * b.astype(f32)).astype(a.dtype)

    def add_rms_norm(x, r, w):
        h = x.astype(f32) + r.astype(f32)
        return (h * (1.0 / cp.sqrt((h * h).mean(-1, keepdims=True) + eps)) * w.astype(f32)).astype(x.dtype)

    def rotary(x, c, s):
        half = x.shape[1] // 2
        x32 = x.astype(f32)
        return (x32 * c + cp.concatenate([-x32[:, half:], x32[:, :half]], axis=1) * s).astype(x.dtype)

    return {"rms_norm": rms_norm, "softmax": softmax, "silu_mul": silu_mul,
            "add_rms_norm": add_rms_norm, "rotary": rotary}


def fused_kernels(cp, rows: int, repeats: int, bw: float) -> list[dict]:
    import te_kernels as K

    import disco.cuda as dc
    from compiler.codegen.cuda import generate_cuda
    from compiler.transform.gpu_schedule import schedule_gpu
    cases = [("rms_norm", 4096, rows), ("softmax", 4096, rows), ("silu_mul", 4096, rows),
             ("add_rms_norm", 4096, rows), ("rotary", 128, rows * 32)]
    funcs = {f"{name}_{dt}": schedule_gpu(K.MAKERS[name](m=m, dtype=dt)[0])
             for name, m, _ in cases for dt in ("float16", "float32")}
    mod = generate_cuda(funcs)
    raw = dc.compile_module(mod.source)
    comp = _composites(cp)
    out = []
    for name, m, n in cases:
        for dt in ("float16", "float32"):
            key = f"{name}_{dt}"
            fn = dc.CudaFunction(raw, mod.functions[mod.kernel_names[key]].to_json())
            host = K.inputs_for(name, n, m, dt, seed=1)
            args = [cp.asarray(a) for a in host]
            want_shape = args[0].shape
            y = cp.empty(want_shape, dtype=dt)
            ours = _time(cp, lambda: fn(*args, y), repeats)
            ref = comp[name](*args)
            err = float(cp.abs(y.astype(cp.float32) - ref.astype(cp.float32)).max())
            theirs = _time(cp, lambda: comp[name](*args), repeats)
            nbytes = sum(a.nbytes for a in args) + y.nbytes
            row = {"kernel": name, "dtype": dt, "shape": [n, m], "ours_s": ours, "cupy_s": theirs,
                   "vs_cupy": theirs / ours, "bytes": nbytes, "of_copy_bandwidth": nbytes / ours / bw,
                   "max_abs_diff_vs_cupy": err}
            out.append(row)
            print(f"{name:13s} {dt:8s} {n:7d}x{m:<5d} ours {ours * 1e6:9.1f} us  cupy {theirs * 1e6:9.1f} us  "
                  f"cupy/ours {theirs / ours:5.2f}  {nbytes / ours / 1e9:7.1f} GB/s = "
                  f"{nbytes / ours / bw:5.2f} of copy  (max |diff| {err:.2e})", flush=True)
    return out


def _matmul_module(k: int, n_out: int, dtype: str):
    from compiler import op
    from compiler.ir import BlockBuilder, Var
    from compiler.ir.struct_info import TensorStructInfo
    bb = BlockBuilder()
    n = bb.size_var("n")
    x = Var("x", TensorStructInfo((n, k), dtype))
    w = Var("w", TensorStructInfo((k, n_out), dtype))
    with bb.function("mm", [x, w]):
        with bb.dataflow():
            y = bb.emit_output(op.matmul(x, w))
        bb.emit_func_output(y)
    return bb.get()


def matmuls(cp, repeats: int) -> list[dict]:
    from compiler import build
    from disco.vm import VirtualMachine
    out = []
    for m, k, n, dt in ((4096, 4096, 4096, "float16"), (16, 4096, 11008, "float16"),
                        (4096, 4096, 4096, "float32")):
        vm = VirtualMachine(build(_matmul_module(k, n, dt), "cuda"), device="cuda")
        f = vm["mm"]
        a = cp.random.standard_normal((m, k), dtype=cp.float32).astype(dt)
        b = cp.random.standard_normal((k, n), dtype=cp.float32).astype(dt)
        ours = _time(cp, lambda: f(a, b), repeats)
        theirs = _time(cp, lambda: cp.matmul(a, b), repeats)
        err = float(cp.abs(f(a, b).astype(cp.float32) - cp.matmul(a, b).astype(cp.float32)).max())
        row = {"kernel": "matmul", "dtype": dt, "shape": [m, k, n], "ours_s": ours, "cupy_s": theirs,
               "matmul_vs_cupy": theirs / ours, "tflops": 2 * m * k * n / ours / 1e12,
               "max_abs_diff_vs_cupy": err}
        out.append(row)
        print(f"matmul        {dt:8s} {m}x{k}x{n}  ours (VM) {ours * 1e6:9.1f} us  cupy.matmul "
              f"{theirs * 1e6:9.1f} us  cupy/ours {theirs / ours:5.3f}  {row['tflops']:6.1f} TFLOP/s", flush=True)
    return out


def nccl_allreduce(cp, repeats: int) -> list[dict]:
    """One-rank all-reduce: disco.ccl.nccl's communicator against cupy.cuda.nccl's."""
    from cupy.cuda import nccl

    from disco.ccl.nccl import NcclCommunicator
    ours = NcclCommunicator("bench-nccl", 0, 1)
    raw = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    out = []
    try:
        for n in (1, 1 << 22):
            x = cp.ones(n, cp.float32)
            y = cp.empty_like(x)
            stream = cp.cuda.get_current_stream().ptr
            t_ours = _time(cp, lambda: ours.allreduce(x, "sum", y), repeats)
            t_raw = _time(cp, lambda: raw.allReduce(x.data.ptr, y.data.ptr, n, nccl.NCCL_FLOAT32,
                                                    nccl.NCCL_SUM, stream), repeats)
            ok = bool((y == 1).all())
            out.append({"kernel": "nccl_allreduce_1rank", "bytes": 4 * n, "ours_s": t_ours,
                        "cupy_nccl_s": t_raw, "ratio": t_raw / t_ours, "correct": ok})
            print(f"nccl all-reduce (1 rank) {4 * n:9d} B  ours {t_ours * 1e6:8.1f} us  cupy.cuda.nccl "
                  f"{t_raw * 1e6:8.1f} us  raw/ours {t_raw / t_ours:5.2f}  result correct: {ok}", flush=True)
    finally:
        ours.close()
        raw.destroy()
    return out


def graph_replay(cp, repeats: int) -> list[dict]:
    """A Llama decoder layer through the VM: eager launches against CUDA-graph replay."""
    import numpy as np
    sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
    import _tp_models as M

    from compiler import build, script
    from disco.vm import VirtualMachine
    ex = build(script.parse(M.llama(1)), "cuda")
    out = []
    for n in (1, 64):
        host = M.llama_inputs(np.random.default_rng(0), n)
        args = [cp.asarray(v) for v in host.values()]
        eager = VirtualMachine(ex, device="cuda")["main"]
        graph = VirtualMachine(ex, device="cuda", cuda_graph=True)["main"]
        want = M.llama_ref(**host)
        err = max(float(np.abs(cp.asnumpy(f(*args)) - want).max()) for f in (eager, graph))
        t_eager = _time(cp, lambda: eager(*args), repeats)
        t_graph = _time(cp, lambda: graph(*args), repeats)
        out.append({"kernel": "llama_layer", "tokens": n, "eager_s": t_eager, "graph_s": t_graph,
                    "eager_over_graph": t_eager / t_graph, "max_abs_err_vs_numpy": err})
        print(f"llama layer  n={n:3d}  eager {t_eager * 1e6:8.1f} us  graph replay {t_graph * 1e6:8.1f} us  "
              f"eager/graph {t_eager / t_graph:5.2f}  (max |err| vs numpy {err:.1e})", flush=True)
    return out


def bf16_matmul(cp, repeats: int) -> list[dict]:
    """bfloat16 (no cupy dtype: uint16 bits) through disco.cublas against torch.matmul."""
    import torch

    from disco import cublas
    out = []
    for m, k, n in ((4096, 4096, 4096), (16, 4096, 11008)):
        ta = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        tb = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
        a, b = (cp.from_dlpack(t.view(torch.int16)).view(cp.uint16) for t in (ta, tb))
        c = cp.empty((m, n), cp.uint16)
        ours = _time(cp, lambda: cublas.matmul(a, b, c, dtype="bfloat16"), repeats)
        theirs = _time(cp, lambda: torch.matmul(ta, tb), repeats)
        want = torch.matmul(ta, tb).float()
        got = torch.from_dlpack(c.view(cp.int16)).view(torch.bfloat16).float()
        err = float((got - want).abs().max())
        row = {"kernel": "matmul", "dtype": "bfloat16", "shape": [m, k, n], "ours_s": ours, "torch_s": theirs,
               "matmul_vs_torch": theirs / ours, "tflops": 2 * m * k * n / ours / 1e12, "max_abs_diff_vs_torch": err}
        out.append(row)
        print(f"matmul        bfloat16 {m}x{k}x{n}  ours (cublas) {ours * 1e6:9.1f} us  torch.matmul "
              f"{theirs * 1e6:9.1f} us  torch/ours {theirs / ours:5.3f}  {row['tflops']:6.1f} TFLOP/s "
              f"(max |diff| {err:.1e})", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=50)
    a = p.parse_args(argv)
    from disco.cuda import cupy_module
    from disco.errors import DiscoError
    try:
        cp = cupy_module()
    except DiscoError as e:
        print(f"benchmarks/gpu_ops.py needs a CUDA GPU and cupy: {e}", file=sys.stderr)
        return 2
    dev = cp.cuda.Device()
    name = cp.cuda.runtime.getDeviceProperties(dev.id)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    bw = copy_bandwidth(cp, a.repeats)
    print(f"device {name}; device-to-device copy bandwidth {bw / 1e9:.1f} GB/s (read + write)")
    rows = fused_kernels(cp, a.rows, a.repeats, bw)
    mm = matmuls(cp, a.repeats)
    extra = {}
    for name, part in (("bf16_matmul", bf16_matmul), ("nccl", nccl_allreduce), ("graphs", graph_replay)):
        try:
            extra[name] = part(cp, a.repeats)
        except Exception as e:         # report and go on: the other figures still count
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
            extra[name] = {"error": f"{type(e).__name__}: {e}"}
    fused_ok = all(r["vs_cupy"] >= TARGETS["vs_cupy"] and r["of_copy_bandwidth"] >= TARGETS["of_copy_bandwidth"]
                   for r in rows)
    mm_ok = all(r["matmul_vs_cupy"] >= TARGETS["matmul_vs_cupy"] for r in mm)
    print(f"targets: fused >= {TARGETS['vs_cupy']}x cupy and >= {TARGETS['of_copy_bandwidth']:.0%} of copy "
          f"bandwidth: {'met' if fused_ok else 'NOT met'}; matmul within 5% of cupy.matmul: "
          f"{'met' if mm_ok else 'NOT met'}")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"benchmark": "gpu_ops", "device": name, "copy_bandwidth_Bps": bw, "fused": rows,
                   "matmul": mm, **extra, "targets": TARGETS}, f, indent=1)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

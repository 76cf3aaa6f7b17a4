"""bfloat16 and float32 linear layers on one core: this project's AMX kernels beside its
AVX-512 kernel, numpy's float32 BLAS and PyTorch's matmul (oneDNN / MKL), in one run.

    y[m, n] = x[m, k] @ W[n, k]^T, W bfloat16 (float32 for numpy), x float32 (bfloat16 for
    torch: its bfloat16 matmul takes bfloat16 activations), one thread everywhere.

Shapes: the ~100M Llama's layers (hidden 768, intermediate 2048; q/k/v/o, gate/up,
down) and its LM head (32000 x 768), at 1, 8, 32, 128 and 512 rows of x (batch-1 decode,
batched decode, prefill chunks). Each W is a fresh 4x copy cycled through, so it comes
from memory as in a model step, not from cache. Two AMX rows: x split into 3 bfloat16
parts (the default, float32 x exactly) and into 1 (DISCO_CPU_AMX_X_TERMS=1: x rounded,
the numerics of torch's bfloat16 matmul); each in its own process (the setting is read
once). Times are the best of --reps.

Then float32 weights: AMX with W split into three bfloat16 parts too (six products,
float32's accuracy: csrc/cpu_kernels/isa_amx.cc) beside the AVX-512 float32 kernel,
numpy's float32 BLAS (OpenBLAS; what float32 prefill used before) and torch's float32
matmul, all float32 in and out.

    python benchmarks/amx_matmul.py [--reps 7] [--rows 1,8,32,128,512]

Skips (with the reason printed) where this CPU or build has no AMX, or torch is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RESULTS = os.path.join(ROOT, "benchmarks", "results", "amx_matmul.json")
SHAPES = {"q/o proj": (768, 768), "k/v proj": (256, 768), "gate/up": (2048, 768), "down": (768, 2048),
          "lm head": (32000, 768)}


def _best(f, reps):
    f()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(rows, reps, which, weights="bfloat16") -> dict:
    """Seconds per call for each (shape, m) of the variants in `which`, in this process,
    W in `weights` (bfloat16, or float32 for every column)."""
    import ml_dtypes
    import numpy as np
    from disco import cpu_kernels as ck
    rng = np.random.default_rng(0)
    out = {}
    for name, (n, k) in SHAPES.items():
        copies = max(1, min(4, (256 << 20) // (n * k * 4)))
        w32 = [rng.standard_normal((n, k), dtype=np.float32) * 0.02 for _ in range(copies)]
        wk = [w.astype(ml_dtypes.bfloat16) for w in w32] if weights == "bfloat16" else w32   # the kernels'
        for m in rows:
            x = rng.standard_normal((m, k), dtype=np.float32)
            y = np.empty((m, n), np.float32)
            row = {}
            i = [0]

            def cycle(ws, f):
                def g():
                    f(ws[i[0] % len(ws)])
                    i[0] += 1
                return g
            if "amx" in which:
                row["amx"] = _best(cycle(wk, lambda w: ck.matmul_nt(x, w, y, isa="amx", num_threads=1)), reps)
            if "avx512" in which:
                row["avx512"] = _best(cycle(wk, lambda w: ck.matmul_nt(x, w, y, isa="avx512", num_threads=1)), reps)
            if "numpy" in which:
                row["numpy_f32"] = _best(cycle(w32, lambda w: np.matmul(x, w.T, out=y)), reps)
            if "torch" in which:
                import torch
                dt = torch.bfloat16 if weights == "bfloat16" else torch.float32
                tw = [torch.from_numpy(w).to(dt) for w in w32]
                tx = torch.from_numpy(x).to(dt)
                with torch.inference_mode():
                    row["torch"] = _best(cycle(tw, lambda w: torch.nn.functional.linear(tx, w)), reps)
            out[f"{name} {n}x{k} m={m}"] = row
    return out


def _child(terms, rows, reps, which, weights="bfloat16"):
    env = dict(os.environ, DISCO_CPU_AMX_X_TERMS=str(terms), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    code = (f"import sys, json; sys.path.insert(0, {ROOT!r}); sys.path.insert(0, {os.path.dirname(__file__)!r}); "
            f"import amx_matmul as b; {'import torch; torch.set_num_threads(1); ' if 'torch' in which else ''}"
            f"print(json.dumps(b.measure({rows!r}, {reps}, {which!r}, {weights!r})))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--rows", default="1,8,32,128,512")
    a = p.parse_args(argv)
    rows = [int(r) for r in a.rows.split(",")]
    from disco import cpu_kernels as ck
    if "amx" not in ck.isas():
        print(f"skipped: no AMX kernels on this CPU or build (variants: {ck.isas()})")
        return 0
    try:
        import torch  # noqa: F401
        which = ["amx", "avx512", "numpy", "torch"]
    except ImportError:
        print("torch is not installed: its column is skipped")
        which = ["amx", "avx512", "numpy"]
    load = os.getloadavg()
    exact = _child(3, rows, a.reps, which)
    rounded = _child(1, rows, a.reps, ["amx"])
    print(f"bfloat16 W, one thread, load average {load[0]:.2f}; ms per call (best of {a.reps}); ratios are the "
          f"other's time over AMX (3 parts)'s")
    head = f"{'layer':28s} {'AMX x3':>8s} {'AMX x1':>8s} {'AVX-512':>8s} {'np f32':>8s} {'torch bf16':>10s}" \
           f" {'vs AVX-512':>10s} {'vs np':>7s} {'vs torch':>8s} {'GB/s W':>7s}"
    print(head)
    for key, r in exact.items():
        n, k = (int(v) for v in key.split()[-2].split("x"))
        t3, t1 = r["amx"], rounded[key]["amx"]
        tt = r.get("torch")
        print(f"{key:28s} {t3 * 1e3:8.3f} {t1 * 1e3:8.3f} {r['avx512'] * 1e3:8.3f} {r['numpy_f32'] * 1e3:8.3f} "
              f"{(tt or float('nan')) * 1e3:10.3f} {r['avx512'] / t3:9.2f}x {r['numpy_f32'] / t3:6.2f}x "
              f"{(tt or float('nan')) / t3:7.2f}x {2 * n * k / t3 / 1e9:7.1f}")
        r["amx_x1"] = t1
    f32 = None
    if ck.amx_rows("amx", "float32") < 0:
        print("\nfloat32 W: not on AMX here (DISCO_CPU_AMX_FLOAT32=0): skipped")
    else:
        f32 = _child(3, rows, a.reps, which, "float32")
        print("\nfloat32 W (AMX: W and x in three bfloat16 parts, six products); ms per call; ratios are the "
              "other's time over AMX's")
        print(f"{'layer':28s} {'AMX':>8s} {'AVX-512':>8s} {'np f32':>8s} {'torch f32':>10s} {'vs AVX-512':>10s} "
              f"{'vs np':>7s} {'vs torch':>8s} {'GF/s':>7s}")
        for key, r in f32.items():
            n, k = (int(v) for v in key.split()[-2].split("x"))
            m = int(key.split("m=")[1])
            t, tt = r["amx"], r.get("torch", float("nan"))
            print(f"{key:28s} {t * 1e3:8.3f} {r['avx512'] * 1e3:8.3f} {r['numpy_f32'] * 1e3:8.3f} {tt * 1e3:10.3f} "
                  f"{r['avx512'] / t:9.2f}x {r['numpy_f32'] / t:6.2f}x {tt / t:7.2f}x {2 * m * n * k / t / 1e9:7.1f}")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"load_average_before": load, "load_average_after": os.getloadavg(), "seconds": exact,
                   "float32_seconds": f32, "reps": a.reps}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

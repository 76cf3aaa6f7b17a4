"""Decode matmuls against the memory-bandwidth floor: numpy's BLAS in float32 and the
CPU kernels (disco.cpu_kernels) in every weight format, side by side in one run.

A decode step reads every weight once, so a linear layer at batch 1..8 is bound by
memory bandwidth: its floor is (bytes of the weight) / (read bandwidth). Measured per
linear layer of two models (random weights of the real shapes, y = x @ W^T with W
stored (n, k)):

- llama-100m: hidden 768, intermediate 2048, 12 heads, 4 KV heads of 64, vocab 32000
  (the ~100M Llama of benchmarks/llama_decode.py);
- smollm2-135m: hidden 576, intermediate 1536, 9 heads, 3 KV heads of 64, vocab 49152;

at batch 1 and 8, on 1 and 2 threads, for numpy float32 (OpenBLAS, its thread count set
in a child process per count) and ours in float32, bfloat16, float16, q8_0, q4_1 and
q4_0. Each row gives the weight bytes read per second (GB/s) and that as a fraction of
the copy bandwidth measured in the same run (bytes read + written per second by large
np.copyto calls, on as many threads as the row uses: the convention of the other
benchmarks here). A row's time is the median of single calls. Weights come from memory, not cache: each call uses the next of as
many copies of the weight as fill the working set (default 1 GiB, above this machine's
480 MiB L3), as a model's layers do. "step" rows weigh each layer by its count in the
model (q, k, v, o, gate, up, down per layer, the LM head once) and give the matmul part
of a whole decode step. The load average is recorded: on a shared machine other
processes take cores and bandwidth from every row alike.

    python benchmarks/cpu_matmul.py                         # writes results/cpu_matmul.json
    python benchmarks/cpu_matmul.py --working-set-mib 256 --repeat 2 --models smollm2-135m
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

RESULTS = os.path.join(ROOT, "benchmarks", "results", "cpu_matmul.json")
MODELS = {
    "llama-100m": dict(hidden=768, intermediate=2048, heads=12, kv_heads=4, head_dim=64, vocab=32000),
    "smollm2-135m": dict(hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152),
}
FORMATS = ["float32", "bfloat16", "float16", "q8_0", "q4_1", "q4_0"]


def layers(cfg: dict) -> list[tuple[str, int, int, int]]:
    """(name, n, k, calls per decode step) of each distinct linear layer shape."""
    h, i, kv = cfg["hidden"], cfg["intermediate"], cfg["kv_heads"] * cfg["head_dim"]
    return [("q/o_proj", cfg["heads"] * cfg["head_dim"], h, 2), ("k/v_proj", kv, h, 2), ("gate/up_proj", i, h, 2),
            ("down_proj", h, i, 1), ("lm_head", cfg["vocab"], h, 0)]


def copy_bandwidth(threads: int, nbytes: int = 256 << 20, repeat: int = 5) -> float:
    """Bytes read + written per second by `threads` threads each np.copyto-ing nbytes
    (numpy releases the GIL while copying); best of `repeat`."""
    import numpy as np
    src = [np.ones(nbytes // 4, np.float32) for _ in range(threads)]
    dst = [np.empty_like(s) for s in src]
    for s, d in zip(src, dst):
        np.copyto(d, s)
    best = float("inf")
    for _ in range(repeat):
        ts = [threading.Thread(target=np.copyto, args=(d, s)) for s, d in zip(src, dst)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes * threads / best


def per_call(fn, weights: list, repeat: int) -> float:
    """Seconds of one call of fn(w): the median over `repeat` rounds through `weights`
    (after a warm-up call), each call timed alone, so that a call that lost its core to
    another process counts as one outlier, not as a slow round."""
    fn(weights[-1])
    times = []
    for _ in range(repeat):
        for w in weights:
            t0 = time.perf_counter()
            fn(w)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copies(w, working_set: int) -> list:
    return [w] + [w.copy() for _ in range(max(1, working_set // w.nbytes) - 1)]


def base_weight(n: int, k: int, seed: int):
    import numpy as np
    return (np.random.default_rng(seed).standard_normal((n, k), np.float32) * 0.05)


def numpy_rows(args_: dict) -> list[dict]:
    """float32 numpy matmuls for every case; runs in a child process whose OpenBLAS was
    started with the given thread count."""
    import numpy as np
    out = []
    for model in args_["models"]:
        for li, (name, n, k, _) in enumerate(layers(MODELS[model])):
            ws = copies(base_weight(n, k, li), args_["working_set"])
            for batch in args_["batches"]:
                x = np.random.default_rng(batch).standard_normal((batch, k), np.float32)
                y = np.empty((batch, n), np.float32)
                s = per_call(lambda w: np.matmul(x, w.T, out=y), ws, args_["repeat"])
                out.append(dict(model=model, layer=name, batch=batch, seconds=s))
            del ws
    return out


def _numpy_child(q, args_):
    q.put(numpy_rows(args_))


def numpy_baseline(threads: int, args_: dict) -> list[dict]:
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(threads)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_numpy_child, args=(q, args_))
    p.start()
    rows = q.get(timeout=3600)
    p.join(timeout=60)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--working-set-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--formats", nargs="+", default=FORMATS, choices=FORMATS)
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args()
    common = dict(models=a.models, batches=a.batches, repeat=a.repeat, working_set=a.working_set_mib << 20)

    base = {t: numpy_baseline(t, common) for t in a.threads}     # before this process's numpy threads exist
    import numpy as np
    from disco import cpu_kernels as ck
    from disco.weight_formats import quantize
    bw = {t: copy_bandwidth(t) for t in a.threads}
    print(f"copy bandwidth (read + write): " + ", ".join(f"{t} thread(s) {bw[t] / 1e9:.1f} GB/s" for t in a.threads)
          + f"; kernels: {ck.default_isa()}; load average {os.getloadavg()[0]:.2f}")

    cases = []
    for model in a.models:
        for li, (name, n, k, count) in enumerate(layers(MODELS[model])):
            w32 = base_weight(n, k, li)
            for fmt in a.formats:
                ws = copies(quantize(w32, fmt), common["working_set"])
                for batch in a.batches:
                    x = np.random.default_rng(batch).standard_normal((batch, k), np.float32)
                    y = np.empty((batch, n), np.float32)
                    for t in a.threads:
                        s = per_call(lambda w: ck.matmul_nt(x, w, y, fmt=fmt, num_threads=t), ws, a.repeat)
                        cases.append(dict(model=model, layer=name, n=n, k=k, count=count, batch=batch, threads=t,
                                          format=fmt, bytes=ws[0].nbytes, seconds=s))
                del ws
            for batch in a.batches:
                for t in a.threads:
                    s = next(r["seconds"] for r in base[t] if (r["model"], r["layer"], r["batch"]) == (model, name, batch))
                    cases.append(dict(model=model, layer=name, n=n, k=k, count=count, batch=batch, threads=t,
                                      format="numpy_float32", bytes=n * k * 4, seconds=s))
    for c in cases:
        c["GBps"] = c["bytes"] / c["seconds"] / 1e9
        c["of_copy"] = c["bytes"] / c["seconds"] / bw[c["threads"]]

    steps = []   # whole decode steps' matmuls: each layer as often as the model has it
    impls = ["numpy_float32"] + a.formats
    for model in a.models:
        cfg_layers = {"llama-100m": 12, "smollm2-135m": 30}[model]
        for batch in a.batches:
            for t in a.threads:
                for fmt in impls:
                    rows = [c for c in cases if (c["model"], c["batch"], c["threads"], c["format"]) == (model, batch, t, fmt)]
                    mult = [c["count"] * cfg_layers or 1 for c in rows]
                    secs = sum(m * c["seconds"] for m, c in zip(mult, rows))
                    nbytes = sum(m * c["bytes"] for m, c in zip(mult, rows))
                    steps.append(dict(model=model, batch=batch, threads=t, format=fmt, bytes=nbytes, seconds=secs,
                                      GBps=nbytes / secs / 1e9, of_copy=nbytes / secs / bw[t]))

    head = "".join(f"{f:>16s}" for f in impls)
    print("\nGB/s of weights read (fraction of the copy bandwidth); per layer, then the whole step's matmuls")
    for model in a.models:
        print(f"\n{model}{'':22s}{head}")
        for batch in a.batches:
            for t in a.threads:
                for layer in [l[0] for l in layers(MODELS[model])] + ["step"]:
                    src = steps if layer == "step" else cases
                    cells = []
                    for fmt in impls:
                        c = next(c for c in src if (c["model"], c["batch"], c["threads"], c["format"]) == (model, batch, t, fmt)
                                 and c.get("layer", "step") == layer)
                        cells.append(f"{c['GBps']:7.1f} ({c['of_copy']:4.2f})")
                    print(f"  b{batch} t{t} {layer:14s}" + "".join(f"{s:>16s}" for s in cells))
        print(f"  step time vs numpy float32 (speedup):")
        for batch in a.batches:
            for t in a.threads:
                ref = next(s for s in steps if (s["model"], s["batch"], s["threads"], s["format"]) == (model, batch, t, "numpy_float32"))
                line = "".join(f"{ref['seconds'] / s['seconds']:16.2f}" for f in impls for s in steps
                               if (s["model"], s["batch"], s["threads"], s["format"]) == (model, batch, t, f))
                print(f"  b{batch} t{t} {'':14s}{line}")

    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(dict(benchmark="cpu_matmul.decode", isa=ck.default_isa(), copy_Bps={str(t): bw[t] for t in a.threads},
                       working_set_bytes=common["working_set"], load_average=os.getloadavg()[0],
                       models=MODELS, cases=cases, steps=steps), f, indent=1)
    print(f"\nwrote {os.path.relpath(a.out, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

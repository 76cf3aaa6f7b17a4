"""Tensor-parallel SwiGLU MLP: one process (VM) vs 1, 2 and 4 Disco workers, one run.

A Llama-7B-sized MLP (4096 -> 11008 -> 4096, SwiGLU, float32) at batch 1 and 16:

    out = (silu(x @ wg) * (x @ wu)) @ wd      wg, wu column-parallel ("S[1]"), wd row-parallel ("S[0]")

- baseline: the unsharded module built with compiler.build and run by disco.VirtualMachine
  in this process;
- tp-N: the annotated module on a ProcessSession of N workers (shm collectives, one
  all-reduce per call), weights placed once with `dmod.place`.

Every process uses one BLAS/OpenMP thread (set before numpy loads), so N workers use
N cores. Reported: best time per call over `--repeats` timed loops, throughput ratios
(tp-N vs tp-1 and vs the VM), and the collectives' share of the call two ways: the
time the compiled program spent inside its collectives during the timed calls
(`spmd.collective_stats`, waiting for the peer included; the largest over the
workers; "in-call"), and the same (batch, 4096) float32 all-reduce alone, issued back
to back through the session ("allreduce"). Targets: tp-2 >= 1.6x tp-1; collectives
<= 10% of the call at batch 16. Worker counts above the machine's core count are
skipped.

    python benchmarks/tp_mlp.py                 # writes benchmarks/results/tp_mlp.json
    python benchmarks/tp_mlp.py --dim 512 --hidden 1376 --workers 1 2   # a quick run
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "tp_mlp.json")


def module_text(dim: int, hidden: int, k: int | None) -> str:
    """The MLP; k=None: plain tensors (the single-process baseline); else placements on a
    k-device mesh, as PropagateSharding writes them."""
    if k is None:
        t = lambda shape, _p: f'R.Tensor({shape}, "float32")'  # noqa: E731
        mesh, redist = "", ""
    else:
        t = lambda shape, p: f'R.DTensor({shape}, "float32", "mesh[0]", "{p}")'  # noqa: E731
        mesh = f'    I.module_global_infos({{"mesh": [R.device_mesh(({k},), I.Range(0, {k}))]}})\n'
    out = "z" if k is not None else "y"
    redist = (f'            z: {t("(n, %d)" % dim, "R")} = R.dist.redistribute(y, "mesh[0]", "R")\n'
              if k is not None else "")
    return f'''
@I.ir_module
class MLP:
{mesh}
    @R.function
    def main(x: {t('("n", %d)' % dim, "R")}, wg: {t((dim, hidden), "S[1]")}, wu: {t((dim, hidden), "S[1]")}, wd: {t((hidden, dim), "S[0]")}) -> {t('("n", %d)' % dim, "R")}:
        n = T.int64()
        with R.dataflow():
            g: {t("(n, %d)" % hidden, "S[1]")} = R.matmul(x, wg)
            u: {t("(n, %d)" % hidden, "S[1]")} = R.matmul(x, wu)
            s: {t("(n, %d)" % hidden, "S[1]")} = R.nn.silu(g)
            a: {t("(n, %d)" % hidden, "S[1]")} = R.multiply(s, u)
            y: {t("(n, %d)" % dim, "P[sum]")} = R.matmul(a, wd)
{redist}            R.output({out})
        return {out}
'''


def best_time(fn, iters: int, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - t0) / iters)
    return best


def reference(x, wg, wu, wd):
    g = x @ wg
    return ((g / (1 + np.exp(-g))) * (x @ wu)) @ wd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=11008)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=RESULTS)
    args = ap.parse_args()

    import compiler
    import disco
    from compiler import script

    cores = os.cpu_count() or 1
    workers = [k for k in args.workers if k <= cores and args.hidden % k == 0]
    skipped = [k for k in args.workers if k not in workers]
    rng = np.random.default_rng(0)
    d, h = args.dim, args.hidden
    wg = (rng.standard_normal((d, h)) / np.sqrt(d)).astype(np.float32)
    wu = (rng.standard_normal((d, h)) / np.sqrt(d)).astype(np.float32)
    wd = (rng.standard_normal((h, d)) / np.sqrt(h)).astype(np.float32)
    xs = {b: rng.standard_normal((b, d)).astype(np.float32) for b in args.batch}
    refs = {b: reference(xs[b], wg, wu, wd) for b in args.batch}

    rows: list[dict] = []
    # baseline: one process, the VM
    vm = disco.VirtualMachine(compiler.build(script.parse(module_text(d, h, None))))
    f = vm["main"]
    for b in args.batch:
        err = float(np.abs(f(xs[b], wg, wu, wd) - refs[b]).max())
        t = best_time(lambda: f(xs[b], wg, wu, wd), args.iters, args.repeats)
        rows.append(dict(config="vm", workers=1, batch=b, ms=t * 1e3, max_err=err))
    del vm, f

    for k in workers:
        ex = compiler.build(script.parse(module_text(d, h, k)))
        with disco.ProcessSession(k) as sess:
            dmod = sess.load_module(ex)
            w = dmod.place({"wg": wg, "wu": wu, "wd": wd})
            fn = dmod["main"]
            allreduce = sess.get_global_func("ccl.allreduce")
            stats = sess.get_global_func("spmd.collective_stats")
            for b in args.batch:
                out = fn(xs[b], w["wg"], w["wu"], w["wd"]).fetch()
                err = float(np.abs(out - refs[b]).max())
                xb = sess.broadcast(xs[b])
                stats(True)
                t = best_time(lambda: fn(xb, w["wg"], w["wu"], w["wd"]).fetch(), args.iters,
                              args.repeats)
                # inside the calls: seconds in the compiled program's collectives per call
                # (waiting for the peer included), the largest over the workers
                in_call = [stats(True).fetch(i) for i in range(k)]
                n_calls = 1 + args.iters * args.repeats          # what best_time ran
                per_call = max(sum(sec for _, sec in st.values()) for st in in_call) / n_calls
                collectives = sum(c for c, _ in in_call[0].values()) / n_calls
                part = sess.broadcast(np.ones((b, d), np.float32))
                n_ar = 50

                def ar_loop():
                    for _ in range(n_ar):
                        allreduce(part)
                    sess.sync()
                t_ar = best_time(ar_loop, 1, args.repeats) / n_ar if k > 1 else 0.0
                rows.append(dict(config=f"tp-{k}", workers=k, batch=b, ms=t * 1e3, max_err=err,
                                 allreduce_ms=t_ar * 1e3, in_call_collective_ms=per_call * 1e3,
                                 collectives_per_call=collectives))

    base = {(r["batch"]): r["ms"] for r in rows if r["config"] == "vm"}
    tp1 = {(r["batch"]): r["ms"] for r in rows if r["config"] == "tp-1"}
    print(f"SwiGLU MLP {d} -> {h} -> {d}, float32, one BLAS thread per process, "
          f"{cores} cores ({platform.processor() or platform.machine()})")
    if skipped:
        print(f"skipped worker counts {skipped} (more than {cores} cores or hidden not divisible)")
    print(f"{'config':>7} {'batch':>5} {'ms/call':>9} {'vs vm':>7} {'vs tp-1':>8} "
          f"{'allreduce ms':>13} {'share':>6} {'in-call ms':>11} {'share':>6} {'max err':>9}")
    for r in rows:
        r["speedup_vs_vm"] = base[r["batch"]] / r["ms"]
        r["speedup_vs_tp1"] = tp1[r["batch"]] / r["ms"] if r["batch"] in tp1 else None
        share = r.get("allreduce_ms", 0.0) / r["ms"]
        r["allreduce_share"] = share
        vs1 = f"{r['speedup_vs_tp1']:.2f}x" if r["speedup_vs_tp1"] else "-"
        ar = f"{r['allreduce_ms']:.3f}" if "allreduce_ms" in r else "-"
        inside = r.get("in_call_collective_ms")
        r["in_call_share"] = (inside or 0.0) / r["ms"]
        ic = f"{inside:.3f}" if inside is not None else "-"
        print(f"{r['config']:>7} {r['batch']:>5} {r['ms']:>9.2f} {r['speedup_vs_vm']:>6.2f}x "
              f"{vs1:>8} {ar:>13} {share:>6.1%} {ic:>11} {r['in_call_share']:>6.1%} {r['max_err']:>9.1e}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fp:
        json.dump(dict(dim=d, hidden=h, cores=cores, rows=rows), fp, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

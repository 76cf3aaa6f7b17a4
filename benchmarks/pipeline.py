"""Pipeline vs tensor parallelism: an 8-layer MLP stack on 4 workers split as
(tp=4, pp=1), (tp=2, pp=2) and (tp=1, pp=4), each with 1 and 8 micro-batches.

Each layer is a Megatron MLP block, x <- relu(x @ w_in) @ w_out (w_in "S[1]", w_out
propagated to "S[0]": one all-reduce per layer inside a stage); layers are split evenly
between the pp stages, each stage on its own mesh of tp workers (issue 17).

- baseline: the unsharded stack built with compiler.build and run by
  disco.VirtualMachine in this process (one core);
- tp=4, pp=1: one mesh of 4 workers; its "micro-batches" are calls issued back to back
  (no stage to overlap with);
- tp=2, pp=2 and tp=1, pp=4: `dmod["main"].run_microbatches(x, *w, micro_batches=M)`.

Weights are placed once. Each configuration runs a batch of `--batch` rows, compiled
for one micro-batch's rows. Reported, best of `--repeats`: the batch's latency (issue
to the result fetched) and throughput (rows/s); for pipelines each stage's busy share
of the batch (its calls from inputs received to end, over the batch's wall time, from
the workers' timelines of the fastest run) and its mean micro-batch latency (its first stage call's start
to its last stage call's end; "mb ms"); and the bytes one call (one micro-batch) moves, as `describe`
reports them: per device in the all-reduces (counting those that move bytes: a
stage of one device has none), in all between stages. Every process uses
one BLAS thread. The machine's load average and core count are recorded: 4 workers on
fewer cores measure contention as much as the split.

    python benchmarks/pipeline.py          # writes benchmarks/results/pipeline.json
    python benchmarks/pipeline.py --dim 256 --hidden 512 --repeats 2   # a quick run
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

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "pipeline.json")
SPLITS = [(4, 1), (2, 2), (1, 4)]         # (tp, pp) on 4 workers


def stack_text(layers: int, dim: int, hidden: int, rows: int, tp: int | None, pp: int = 1) -> str:
    """The stack; tp=None: plain tensors (the baseline); else pp meshes of tp devices,
    layer i's w_in annotated S[1] on mesh[i * pp // layers] (the rest is propagated)."""
    params = ", ".join(f'w_in{i}: R.Tensor(({dim}, {hidden}), "float32"), '
                       f'w_out{i}: R.Tensor(({hidden}, {dim}), "float32")' for i in range(layers))
    lines, h = [], "x"
    for i in range(layers):
        w = f"w_in{i}"
        if tp is not None:
            lines.append(f'w{i}s = R.dist.annotate_sharding(w_in{i}, "mesh[{i * pp // layers}]", "S[1]")')
            w = f"w{i}s"
        lines += [f"h{i} = R.matmul({h}, {w})", f"a{i} = R.nn.relu(h{i})", f"y{i} = R.matmul(a{i}, w_out{i})"]
        h = f"y{i}"
    body = "\n".join(" " * 12 + s for s in lines)
    meshes = ""
    if tp is not None:
        ms = ", ".join(f"R.device_mesh(({tp},), I.Range({s * tp}, {(s + 1) * tp}))" for s in range(pp))
        meshes = f'    I.module_global_infos({{"mesh": [{ms}]}})\n'
    return f'''
@I.ir_module
class Stack:
{meshes}
    @R.function
    def main(x: R.Tensor(({rows}, {dim}), "float32"), {params}) -> R.Tensor(({rows}, {dim}), "float32"):
        with R.dataflow():
{body}
            R.output({h})
        return {h}
'''


def reference(x, weights):
    for w_in, w_out in zip(weights[::2], weights[1::2]):
        x = np.maximum(x @ w_in, 0) @ w_out
    return x


def best_time(fn, repeats: int, before=None, after=None) -> tuple:
    """The best wall time of fn() over `repeats` runs (after one warm-up), and what
    after() -- called untimed after each run, before() before it -- gave for that run."""
    fn()
    best, kept = float("inf"), None
    for _ in range(repeats):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
        got = after() if after is not None else None
        if t < best:
            best, kept = t, got
    return best, kept


def moved(mod) -> dict:
    """What one call moves, from `describe` of the lowered module (report.py)."""
    from compiler.distributed import DistributedLowering, describe
    r = describe(DistributedLowering(mod), "main")
    return dict(allreduces=sum(1 for *_, b in r.collectives if b),      # groups of one device move nothing
                collective_bytes_per_device=int(sum(b for _, _, b in r.collectives)),
                transfers=len(r.transfers),
                transfer_bytes=int(sum(total for *_, total in r.transfers)))


def from_timeline(line: list, stages: int) -> dict:
    """From one run's handle.timeline(): each stage's share of the run's wall time spent
    in its calls after their inputs arrived (the stage's first worker), and the mean
    micro-batch latency (first stage's start to last stage's end)."""
    wall = max(r["end"] for r in line) - min(r["start"] for r in line)
    busy = []
    for s in range(stages):
        first = min(r["worker"] for r in line if r["stage"] == s)
        busy.append(sum(r["end"] - r["received"] for r in line if r["stage"] == s and r["worker"] == first) / wall)
    mbs = {r["micro_batch"] for r in line}
    lat = [max(r["end"] for r in line if r["micro_batch"] == m and r["stage"] == stages - 1)
           - min(r["start"] for r in line if r["micro_batch"] == m and r["stage"] == 0) for m in mbs]
    return dict(stage_busy=busy, micro_batch_latency_ms=1e3 * sum(lat) / len(lat))


def run_split(sess, tp: int, pp: int, args, x, weights, ref) -> list:
    import compiler
    from compiler import script
    rows = []
    for m in args.micro_batches:
        mod = script.parse(stack_text(args.layers, args.dim, args.hidden, args.batch // m, tp, pp))
        dmod = sess.load_module(compiler.build(mod), ccl_backend="shm")
        h = dmod["main"]
        if pp == 1:
            names = [n for n, _, _ in h.params][1:]
            w = dmod.place(dict(zip(names, weights)))
            wrefs = [w[n] for n in names]
            concat = sess.get_global_func("disco.pipeline.concat")

            def run():
                parts = [h(xm, *wrefs) for xm in np.split(x, m)]
                return concat(*parts).fetch(0) if m > 1 else parts[0].fetch()
        else:
            wrefs = h.place(x[:args.batch // m], *weights)[1:]

            def run():
                return h.run_microbatches(x, *wrefs, micro_batches=m).fetch()
        err = float(np.abs(run() - ref).max())
        if pp > 1:      # the timeline of the fastest run
            t, line = best_time(run, args.repeats, lambda: h.timeline(reset=True),
                                lambda: h.timeline(reset=True))
        else:
            t, line = best_time(run, args.repeats)
        row = dict(config=f"tp={tp},pp={pp}", tp=tp, pp=pp, micro_batches=m, ms=t * 1e3,
                   rows_per_s=args.batch / t, max_err=err, **moved(mod))
        if line:
            row.update(from_timeline(line, pp))
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--micro-batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=RESULTS)
    args = ap.parse_args()

    import compiler
    import disco
    from compiler import script

    rng = np.random.default_rng(0)
    d, hd = args.dim, args.hidden
    weights = []
    for _ in range(args.layers):
        weights += [(rng.standard_normal((d, hd)) / np.sqrt(d)).astype(np.float32),
                    (rng.standard_normal((hd, d)) / np.sqrt(hd)).astype(np.float32)]
    x = rng.standard_normal((args.batch, d)).astype(np.float32)
    ref = reference(x, weights)
    load_before = os.getloadavg()

    vm = disco.VirtualMachine(compiler.build(script.parse(stack_text(args.layers, d, hd, args.batch, None))))
    f = vm["main"]
    rows = [dict(config="vm (1 process)", tp=1, pp=1, micro_batches=1,
                 max_err=float(np.abs(f(x, *weights) - ref).max()),
                 ms=best_time(lambda: f(x, *weights), args.repeats)[0] * 1e3)]
    rows[0]["rows_per_s"] = args.batch / rows[0]["ms"] * 1e3
    del vm, f

    with disco.ProcessSession(4) as sess:
        sess.import_module("disco.pipeline")
        for tp, pp in SPLITS:
            rows += run_split(sess, tp, pp, args, x, weights, ref)

    load_after = os.getloadavg()
    cores = os.cpu_count() or 1
    base = rows[0]["ms"]
    print(f"{args.layers}-layer MLP stack {d} -> {hd} -> {d}, float32, batch {args.batch}, 4 workers, "
          f"{cores} cores ({platform.processor() or platform.machine()}), load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"{'config':>15} {'mb':>3} {'ms/batch':>9} {'mb ms':>6} {'rows/s':>8} {'vs vm':>6} {'ar/call':>7} "
          f"{'ar B/dev':>9} {'xfer/call':>9} {'xfer B':>8} {'stage busy':>16} {'max err':>8}")
    for r in rows:
        r["speedup_vs_vm"] = base / r["ms"]
        busy = " ".join(f"{b:.0%}" for b in r.get("stage_busy", ())) or "-"
        mb = f"{r['micro_batch_latency_ms']:.1f}" if "micro_batch_latency_ms" in r else "-"
        print(f"{r['config']:>15} {r['micro_batches']:>3} {r['ms']:>9.2f} {mb:>6} {r['rows_per_s']:>8.0f} "
              f"{r['speedup_vs_vm']:>5.2f}x {r.get('allreduces', '-'):>7} "
              f"{r.get('collective_bytes_per_device', '-'):>9} {r.get('transfers', '-'):>9} "
              f"{r.get('transfer_bytes', '-'):>8} {busy:>16} {r['max_err']:>8.1e}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fp:
        json.dump(dict(layers=args.layers, dim=d, hidden=hd, batch=args.batch, workers=4, cores=cores,
                       load_average_before=load_before, load_average_after=load_after, rows=rows), fp, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

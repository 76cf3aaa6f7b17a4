"""Loading a checkpoint on tensor-parallel workers: each worker's peak memory and the
time, for disco.llm.weights (each worker reads only its block of each tensor) against
the baseline of reading each tensor whole and copying the block out, side by side in
one run.

The checkpoint is Llama-shaped (vocabulary-parallel embedding and LM head, column-
parallel q/k/v/gate/up, row-parallel o/down, replicated norms), float32, random, written
here with numpy (default 284 MiB). Memory is measured in each worker process: the growth
of its peak resident set (VmHWM, reset by writing 5 to /proc/self/clear_refs just before
the load) over its resident set at that moment. Both loaders read the file with pread,
so none of the file's pages are mapped into the process: the growth is the worker's own
(private) memory: the blocks it keeps, plus what it needed on the way. The file is read
once before timing, so both read it from the page cache. Each loader runs in fresh worker
processes (memory freed by an earlier load would hide part of a later one's growth),
then loads again in the same processes ("again": warm, the time only).

    python benchmarks/weights_load.py                  # writes results/weights_load.json
    python benchmarks/weights_load.py --workers 4 --layers 8
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import disco  # noqa: E402  (first: it sets OpenBLAS's thread timeout)
import numpy as np  # noqa: E402

from disco.llm.checkpoint import open_checkpoint  # noqa: E402
from disco.llm.synthetic import llama_specs, write_random_checkpoint  # noqa: E402
from disco.placement import Layout  # noqa: E402

MIB = 1 << 20


@disco.register_func("bench.load_whole", override=True)
def load_whole(path: str, specs: str, mesh_shape):
    """The baseline: each tensor read whole, then this worker's block copied out."""
    out = []
    with open_checkpoint(path) as ckpt:
        for s in json.loads(specs):
            whole = ckpt.read(s["source"])
            block = Layout(s["placement"], mesh_shape, whole.ndim).block(disco.worker_id(), whole.shape)
            out.append(np.ascontiguousarray(whole[block]))
            del whole
    return tuple(out)


def measure(sess, func: str, path: str, specs: list[dict]) -> dict:
    n = sess.num_workers
    load = sess.get_global_func(func)
    marks = sess.get_global_func("disco.memory.mark")()
    before = [marks.fetch(w) for w in range(n)]
    t = time.perf_counter()
    blocks = load(path, json.dumps(specs), [n])
    sess.sync()
    seconds = time.perf_counter() - t
    peaks = sess.get_global_func("disco.memory.peak")()
    growth = [(peaks.fetch(w) - before[w][0]) * 1024 for w in range(n)]
    del blocks
    sess.sync()
    return {"seconds": seconds, "peak_growth_bytes": growth, "reset": all(b[1] for b in before)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "weights_load.json"))
    args = ap.parse_args(argv)
    heads = args.hidden // 64
    specs = llama_specs(args.vocab, args.hidden, args.layers, heads, max(1, heads // 3), 64,
                        int(args.hidden * 8 / 3) // 256 * 256)
    n = args.workers
    kept = sum(math.prod(s["shape"]) * 4 // (n if s["placement"] != "R" else 1) for s in specs)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        size = write_random_checkpoint(path, specs)
        with open(path, "rb") as f:                     # into the page cache for both runs
            while f.read(64 * MIB):
                pass
        results = {}
        for name, func in (("blocks (disco.llm.load_weights)", "disco.llm.load_weights"),
                           ("whole tensors, then the block", "bench.load_whole")):
            with disco.ProcessSession(n) as sess:       # fresh workers: nothing freed to reuse
                sess.import_module("weights_load")
                results[name] = measure(sess, func, path, specs)
                results[name]["seconds_again"] = measure(sess, func, path, specs)["seconds"]
    load = os.getloadavg()[0]
    print(f"checkpoint {size / MIB:.0f} MiB, {len(specs)} tensors, {n} workers; each keeps "
          f"{kept / MIB:.0f} MiB ({kept / size:.2f} of the checkpoint); load average {load:.1f} on "
          f"{os.cpu_count()} CPUs (times are noisy on a busy machine, memory is not)")
    print(f"{'loader':34s} {'seconds':>8s} {'again':>6s} {'peak growth per worker (MiB)':>30s} "
          f"{'x checkpoint':>13s}")
    for name, r in results.items():
        worst = max(r["peak_growth_bytes"])
        print(f"{name:34s} {r['seconds']:8.2f} {r['seconds_again']:6.2f} "
              f"{str([round(g / MIB) for g in r['peak_growth_bytes']]):>30s} {worst / size:13.2f}")
    ours, base = results["blocks (disco.llm.load_weights)"], results["whole tensors, then the block"]
    ratio = max(base["peak_growth_bytes"]) / max(ours["peak_growth_bytes"])
    print(f"baseline / ours, peak memory: {ratio:.2f}x; time: {base['seconds'] / ours['seconds']:.2f}x, "
          f"again {base['seconds_again'] / ours['seconds_again']:.2f}x")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"checkpoint_bytes": size, "workers": n, "kept_bytes_per_worker": kept,
                   "load_average": load, "cpus": os.cpu_count(),
                   "results": results, "peak_ratio_baseline_over_ours": ratio}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

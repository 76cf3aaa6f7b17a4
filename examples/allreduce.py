"""Start worker processes, all-reduce a tensor across them, print the result and the time.

    python examples/allreduce.py [--workers 4] [--mib 16]

Each worker holds a different array (worker i: all values i+1); after
`ccl.allreduce` every worker holds the sum 1 + 2 + ... + W, which is checked here.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import disco


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--mib", type=float, default=16.0, help="size of each worker's array")
    args = ap.parse_args()
    n = max(1, int(args.mib * (1 << 20)) // 4)
    w = args.workers

    start = time.perf_counter()
    with disco.ProcessSession(w) as sess:
        sess.init_ccl("shm")
        started = time.perf_counter() - start
        # worker i gets an array of value i+1 (one row of the scattered matrix each)
        full = np.repeat(np.arange(1, w + 1, dtype=np.float32)[:, None], n, axis=1)
        x = sess.scatter(full)                   # worker i: shape (1, n)
        allreduce = sess.get_global_func("ccl.allreduce")
        allreduce(x, "sum")
        sess.sync()                              # warm-up round
        rounds = 10
        t0 = time.perf_counter()
        for _ in range(rounds):
            y = allreduce(x, "sum")
        sess.sync()
        per_call = (time.perf_counter() - t0) / rounds
        expected = w * (w + 1) / 2
        for worker in range(w):
            got = y.fetch(worker=worker)
            assert np.all(got == expected), f"worker {worker}: expected {expected}, got {got[:4]}"
        print(f"{w} worker processes started in {started * 1e3:.0f} ms")
        print(f"all-reduce(sum) of {n * 4 / (1 << 20):.1f} MiB float32 per worker: "
              f"every worker holds {y.fetch(worker=0).ravel()[:3]}... (= 1+...+{w} = {expected:g})")
        print(f"time per all-reduce: {per_call * 1e3:.2f} ms  "
              f"({n * 4 / per_call / 1e9:.2f} GB/s algorithm bandwidth)")


if __name__ == "__main__":
    main()

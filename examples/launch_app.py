"""The same program under every launch mode: all-reduce a per-worker array, call a function.

    python examples/launch_app.py --workers 2
    disco-launch -n 2 examples/launch_app.py          # or: python -m launch -n 2 ...
    mpiexec -n 2 python examples/launch_app.py

Worker i holds arange(6) * (i + 1); after `ccl.allreduce` each holds the sum over
workers, arange(6) * n(n+1)/2. The controller prints the results, which are the same
in every mode for the same number of workers. `--ccl mpi` uses the MPI collectives
(needs an MPI launch); `--hello` makes every worker print a line (prefixed with its id
by disco-launch); `--fail-rank R` kills worker R (R > 0; tests of the failure path).
"""
from __future__ import annotations

import argparse
import os
import signal
import time

import numpy as np

import disco


@disco.register_func("launch_app.part", override=True)
def part(size: int) -> np.ndarray:
    """This worker's array: arange(size) * (worker_id + 1)."""
    return np.arange(size, dtype=np.float64) * (disco.worker_id() + 1)


@disco.register_func("launch_app.describe", override=True)
def describe(x) -> str:
    return f"worker {disco.worker_id()} of {disco.num_workers()}: sum={float(np.sum(x)):g}"


@disco.register_func("launch_app.hello", override=True)
def hello() -> None:
    print(f"hello from worker {disco.worker_id()}", flush=True)


@disco.register_func("launch_app.die_on", override=True)
def die_on(worker: int) -> None:
    if disco.worker_id() == worker:
        os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=None, help="outside a launcher (default: DISCO_NUM_WORKERS or 1)")
    ap.add_argument("--ccl", default="shm", help="collective backend (shm, mpi)")
    ap.add_argument("--size", type=int, default=6)
    ap.add_argument("--hello", action="store_true")
    ap.add_argument("--fail-rank", type=int, default=None)
    args = ap.parse_args()

    sess = disco.start(args.workers)  # under mpiexec, ranks > 0 never return from here
    with sess:
        sess.import_module("launch_app")
        sess.init_ccl(args.ccl)
        n = sess.num_workers
        x = sess.get_global_func("launch_app.part")(args.size)
        y = sess.get_global_func("ccl.allreduce")(x, "sum")
        print(f"workers: {n}")
        print(f"allreduce: {y.fetch(n - 1).tolist()}")
        print(f"expected:  {(np.arange(args.size) * n * (n + 1) / 2).tolist()}")
        describe = sess.get_global_func("launch_app.describe")
        for w in range(n):
            print(describe(x).fetch(w))
        if args.hello:
            sess.get_global_func("launch_app.hello")()
            sess.sync()
        if args.fail_rank is not None:
            print("killing worker", args.fail_rank, flush=True)
            sess.get_global_func("launch_app.die_on")(args.fail_rank)
            t0 = time.monotonic()
            try:
                while True:  # keep using the session: the death must surface as an error
                    sess.sync()
                    time.sleep(0.01)
            finally:
                print(f"controller noticed after {time.monotonic() - t0:.2f} s", flush=True)


if __name__ == "__main__":
    main()

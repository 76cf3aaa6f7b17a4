"""All-reduce latency and bandwidth of the collective backends, 16 B to 64 MiB.

Two worker processes (one per core on the reference machine) all-reduce float32
arrays with op sum through `disco.ccl`: backend `shm` on ordinary numpy arrays
with `out=` an ordinary array (staged through the segment's slots), the same without
`out=` (the result is an arena array, so the all-gather reads the peer in place), and
arena arrays from `ccl.empty` in and out (read by the peer in place altogether), and
(when mpiexec and mpi4py are installed; --no-mpi skips them)
backend `mpi` under `mpiexec -n 2`, next to mpi4py's own `Allreduce` on numpy arrays
as the baseline, all in the same run. The table shows each side by side and the
ratios MPI time / shm time (> 1: shm is faster) and disco-mpi time / mpi4py time
(the cost of the `mpi` backend's layer; ~1 expected).

Both sides write into a preallocated output (`out=` / recvbuf), time a loop of calls
between two barriers, repeat it `--repeats` times per round over `--rounds`
alternating rounds and keep the best, and report rank 0's time per call. Bandwidth is algorithm bandwidth: bytes / time.

    python benchmarks/ccl.py     # prints a table, writes benchmarks/results/ccl.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np

SIZES = [16 << (2 * i) for i in range(12)]  # 16 B, 64 B, ..., 16 MiB, 64 MiB
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ccl.json")


def iterations(nbytes: int, budget_s: float) -> int:
    """Calls per timed loop: about budget_s at ~10 GB/s, between 3 and 20000."""
    return int(min(20000, max(3, budget_s / (3e-6 + nbytes / 10e9))))


def time_loop(fn, barrier, iters: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        barrier()
        best = min(best, (time.perf_counter() - t0) / iters)
    return best


def shm_worker(rank: int, world: int, group: str, sizes, budget_s: float, repeats: int, queue) -> None:
    from disco import ccl
    from disco._context import WorkerContext, set_worker_context

    set_worker_context(WorkerContext(worker_id=rank, num_workers=world), process_wide=True)
    ccl.init("shm", group)
    times = {"numpy": {}, "default": {}, "arena": {}}
    for nbytes in sizes:
        for kind, empty in (("numpy", np.empty), ("default", np.empty), ("arena", ccl.empty)):
            x = empty(nbytes // 4, np.float32)
            x[...] = rank + 1
            out = None if kind == "default" else empty(nbytes // 4, np.float32)
            got = ccl.allreduce(x, out=out)
            assert got[0] == world * (world + 1) / 2, got[:4]  # a sanity check, not the test suite
            iters = iterations(nbytes, budget_s)
            times[kind][nbytes] = time_loop(lambda: ccl.allreduce(x, out=out), ccl.barrier, iters, repeats)
            del x, out, got
    ccl.shutdown()
    if rank == 0:
        queue.put(times)


def run_shm(sizes, budget_s: float, repeats: int, world: int = 2) -> dict[str, dict[int, float]]:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    group = f"bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    procs = [ctx.Process(target=shm_worker, args=(r, world, group, sizes, budget_s, repeats, queue)) for r in range(world)]
    for p in procs:
        p.start()
    times = queue.get(timeout=600)
    for p in procs:
        p.join(timeout=60)
    return times


def mpi_worker(sizes, budget_s: float, repeats: int, path: str, backend: str = "mpi4py") -> None:
    """Runs under mpiexec: mpi4py Allreduce, or disco.ccl backend `mpi`, on the same sizes."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if backend == "disco":
        from disco import ccl
        from disco._context import WorkerContext, set_worker_context

        set_worker_context(WorkerContext(worker_id=comm.rank, num_workers=comm.size), process_wide=True)
        ccl.init("mpi", "bench")
        allreduce, barrier = (lambda x, out: ccl.allreduce(x, out=out)), ccl.barrier
    else:
        allreduce, barrier = (lambda x, out: comm.Allreduce(x, out, op=MPI.SUM)), comm.Barrier
    times = {}
    for nbytes in sizes:
        x = np.full(nbytes // 4, comm.rank + 1, np.float32)
        out = np.empty_like(x)
        allreduce(x, out)
        assert out[0] == comm.size * (comm.size + 1) / 2, out[:4]
        iters = iterations(nbytes, budget_s)
        times[nbytes] = time_loop(lambda: allreduce(x, out), barrier, iters, repeats)
    if comm.rank == 0:
        with open(path, "w") as f:
            json.dump({str(k): v for k, v in times.items()}, f)


def mpiexec_path() -> str | None:
    import importlib.util

    found = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return found if os.access(found, os.X_OK) and importlib.util.find_spec("mpi4py") else None


def run_mpi(sizes, budget_s: float, repeats: int, world: int = 2, backend: str = "mpi4py") -> dict[int, float]:
    mpiexec = mpiexec_path()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "mpi.json")
        cmd = [mpiexec, "-n", str(world), sys.executable, os.path.abspath(__file__), "--mpi-worker", backend,
               "--budget", str(budget_s), "--repeats", str(repeats), "--mpi-out", path,
               "--sizes", ",".join(map(str, sizes))]
        subprocess.run(cmd, check=True, timeout=900)
        with open(path) as f:
            return {int(k): v for k, v in json.load(f).items()}


def fmt_size(n: int) -> str:
    for unit, s in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= s:
            return f"{n // s} {unit}"
    return f"{n} B"


def fmt_time(t: float, width: int = 12) -> str:
    text = f"{t * 1e6:.1f} us" if t < 1e-3 else f"{t * 1e3:.2f} ms"
    return f"{text:>{width}}"


# The targets for shm against MPICH (mpi4py's Allreduce): latency at most 1.2x
# MPICH's from 16 B to 4 KiB; at least 2x its bandwidth from 16 MiB to 64 MiB.
LATENCY_SIZES, LATENCY_MAX_RATIO = (16, 4 << 10), 1.2
BANDWIDTH_SIZES, BANDWIDTH_MIN_RATIO = (16 << 20, 64 << 20), 2.0


def _verdicts(sizes, shm: dict, mpi: dict, what: str) -> str:
    """One line per target: met or MISSED, with the worst ratio in its size range."""
    lines = []
    lat = [shm[n] / mpi[n] for n in sizes if LATENCY_SIZES[0] <= n <= LATENCY_SIZES[1]]
    if lat:
        worst = max(lat)
        lines.append(f"target: shm ({what}) latency <= {LATENCY_MAX_RATIO}x MPICH at 16 B-4 KiB: worst "
                     f"{worst:.2f}x: {'met' if worst <= LATENCY_MAX_RATIO else 'MISSED'}")
    bw = [mpi[n] / shm[n] for n in sizes if BANDWIDTH_SIZES[0] <= n <= BANDWIDTH_SIZES[1]]
    if bw:
        worst = min(bw)
        lines.append(f"target: shm ({what}) bandwidth >= {BANDWIDTH_MIN_RATIO}x MPICH at 16-64 MiB: worst "
                     f"{worst:.2f}x: {'met' if worst >= BANDWIDTH_MIN_RATIO else 'MISSED'}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare-mpi", action="store_true", help="fail if mpiexec/mpi4py are missing (they run by default)")
    ap.add_argument("--no-mpi", action="store_true", help="run backend shm only")
    ap.add_argument("--budget", type=float, default=0.1, help="seconds per timed loop (default 0.1)")
    ap.add_argument("--repeats", type=int, default=5, help="timed loops per size; the best is kept")
    ap.add_argument("--rounds", type=int, default=2, help="alternating shm / mpi rounds; the best is kept")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="message sizes in bytes, comma-separated")
    ap.add_argument("--out", default=RESULTS, help="JSON output path")
    ap.add_argument("--mpi-worker", choices=("mpi4py", "disco"), help=argparse.SUPPRESS)
    ap.add_argument("--mpi-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.mpi_worker:
        return mpi_worker(sizes, args.budget, args.repeats, args.mpi_out, args.mpi_worker)
    use_mpi = not args.no_mpi and mpiexec_path() is not None
    if args.compare_mpi and not use_mpi:
        raise SystemExit("--compare-mpi: no mpiexec with mpi4py found (pip install mpich mpi4py)")

    # Both run in this process tree, in alternating rounds on the same sizes; the best
    # time of each is kept, so a burst of load from elsewhere does not decide a ratio.
    shm: dict[int, float] = {}      # ordinary numpy arrays in and out, staged
    default: dict[int, float] = {}  # numpy in, out=None (an arena array): the all-gather in place
    arena: dict[int, float] = {}    # arena arrays (ccl.empty) in and out, read in place
    mpi: dict[int, float] = {}
    dmpi: dict[int, float] = {}
    for _ in range(args.rounds):
        got = run_shm(sizes, args.budget, args.repeats)
        for best, kind in ((shm, "numpy"), (default, "default"), (arena, "arena")):
            for n, t in got[kind].items():
                best[n] = min(t, best.get(n, t))
        if use_mpi:
            for n, t in run_mpi(sizes, args.budget, args.repeats).items():
                mpi[n] = min(t, mpi.get(n, t))
            for n, t in run_mpi(sizes, args.budget, args.repeats, backend="disco").items():
                dmpi[n] = min(t, dmpi.get(n, t))
    rows = []
    head = f"{'size':>8} | {'numpy':>10} {'out=None':>10} {'arena':>10} {'GB/s':>6}"
    if mpi:
        head += (f" | {'disco mpi':>10} | {'mpi4py':>10} {'GB/s':>6}"
                 f" | {'mpi/np':>7} {'mpi/None':>8} {'mpi/arena':>9} {'dmpi/mpi':>8}")
    print("all-reduce, float32 sum, 2 workers (processes); shm with numpy: ordinary arrays in and out;")
    print("out=None: ordinary input, arena output; arena: arrays from ccl.empty in and out")
    if mpi:
        print("ratios: mpi4py time over shm's (numpy, out=None, arena; > 1: shm is faster), and the mpi backend's over mpi4py's")
    print(head)
    print("-" * len(head))
    for n in sizes:
        row = {"bytes": n, "shm_s": shm[n], "shm_GBps": n / shm[n] / 1e9,
               "shm_out_none_s": default[n], "shm_out_none_GBps": n / default[n] / 1e9,
               "shm_arena_s": arena[n], "shm_arena_GBps": n / arena[n] / 1e9}
        line = (f"{fmt_size(n):>8} | {fmt_time(shm[n], 10)} {fmt_time(default[n], 10)} "
                f"{fmt_time(arena[n], 10)} {row['shm_arena_GBps']:6.2f}")
        if mpi:
            row.update(mpi_s=mpi[n], mpi_GBps=n / mpi[n] / 1e9, ratio_mpi_over_shm=mpi[n] / shm[n],
                       ratio_mpi_over_shm_out_none=mpi[n] / default[n],
                       ratio_mpi_over_shm_arena=mpi[n] / arena[n],
                       disco_mpi_s=dmpi[n], disco_mpi_GBps=n / dmpi[n] / 1e9,
                       ratio_disco_mpi_over_mpi4py=dmpi[n] / mpi[n])
            line += (f" | {fmt_time(dmpi[n], 10)} | {fmt_time(mpi[n], 10)} {row['mpi_GBps']:6.2f}"
                     f" | {row['ratio_mpi_over_shm']:6.2f}x {row['ratio_mpi_over_shm_out_none']:7.2f}x"
                     f" {row['ratio_mpi_over_shm_arena']:8.2f}x {row['ratio_disco_mpi_over_mpi4py']:7.2f}x")
        rows.append(row)
        print(line)
    if mpi:
        print(_verdicts(sizes, shm, mpi, "numpy arrays"))
        print(_verdicts(sizes, default, mpi, "numpy input, out=None"))
        print(_verdicts(sizes, arena, mpi, "arena arrays"))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"benchmark": "ccl.allreduce", "dtype": "float32", "op": "sum", "workers": 2,
                   "repeats": args.repeats, "rounds": args.rounds, "budget_s": args.budget,
                   "baseline": "mpi4py Allreduce (mpiexec -n 2)" if mpi else None,
                   "backends": ["shm", "shm out=None", "shm arena", "mpi"] if mpi else ["shm", "shm out=None", "shm arena"],
                   "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                   "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

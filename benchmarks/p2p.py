"""Point-to-point transfers (`disco.ccl.send` / `recv`): ping-pong latency and bandwidth,
16 B to 64 MiB, of backend `shm` next to mpi4py's own Send/Recv (the baseline) and the
`mpi` backend, in one run.

Two ranks bounce a float32 array: rank 0 sends, rank 1 receives and sends it back,
rank 0 receives. Time per one-way transfer is half a round trip; bandwidth is bytes /
that time. shm runs two forked processes (payloads above 16 KiB go through the
sender's arena, smaller ones through the pair's ring); mpi4py and the mpi backend run
under `mpiexec -n 2` (skipped without mpiexec and mpi4py, or with --no-mpi). Each size
is timed `--repeats` times and the best kept. The ratio mpi4py / shm > 1: shm faster.

    python benchmarks/p2p.py     # prints a table, writes benchmarks/results/p2p.json
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
import time
import uuid

import numpy as np

SIZES = [16 << (2 * i) for i in range(12)]  # 16 B, 64 B, ..., 16 MiB, 64 MiB
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "p2p.json")


def iterations(nbytes: int) -> int:
    return int(min(5000, max(3, 0.2 / (5e-6 + nbytes / 5e9))))


def ping_pong(rank: int, send, recv, sizes, repeats: int) -> dict:
    """{nbytes: seconds per one-way transfer} on rank 0 (rank 1 returns {})."""
    out = {}
    for nbytes in sizes:
        x = np.ones(nbytes // 4, np.float32)
        iters = iterations(nbytes)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(iters):
                if rank == 0:
                    send(x)
                    x = recv(x)
                else:
                    x = recv(x)
                    send(x)
            best = min(best, (time.perf_counter() - t0) / iters / 2)
        out[nbytes] = best
    return out if rank == 0 else {}


def shm_rank(rank: int, group: str, sizes, repeats: int, queue) -> None:
    from disco import ccl
    from disco._context import WorkerContext, set_worker_context
    set_worker_context(WorkerContext(worker_id=rank, num_workers=2), process_wide=True)
    ccl.init("shm", group)
    peer = 1 - rank
    queue.put(ping_pong(rank, lambda x: ccl.send(x, peer), lambda x: ccl.recv(x.shape, x.dtype, peer, out=x),
                        sizes, repeats))
    ccl.shutdown()


def run_shm(sizes, repeats: int) -> dict:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    group = f"bench-p2p-{uuid.uuid4().hex[:8]}"
    procs = [ctx.Process(target=shm_rank, args=(r, group, sizes, repeats, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return next(r for r in results if r)


def mpi_child(sizes, repeats: int, path: str) -> None:
    """Under mpiexec -n 2: mpi4py Send/Recv, then the disco `mpi` backend."""
    from mpi4py import MPI

    from disco import ccl
    from disco._context import WorkerContext, set_worker_context
    comm, rank = MPI.COMM_WORLD, MPI.COMM_WORLD.rank
    peer = 1 - rank

    def mpi4py_recv(x):
        comm.Recv(x, source=peer)
        return x
    base = ping_pong(rank, lambda x: comm.Send(x, dest=peer), mpi4py_recv, sizes, repeats)
    set_worker_context(WorkerContext(worker_id=rank, num_workers=2), process_wide=True)
    ccl.init("mpi", "bench")
    ours = ping_pong(rank, lambda x: ccl.send(x, peer), lambda x: ccl.recv(x.shape, x.dtype, peer, out=x),
                     sizes, repeats)
    ccl.shutdown()
    if rank == 0:
        with open(path, "w") as f:
            json.dump({"mpi4py": base, "disco_mpi": ours}, f)


def run_mpi(sizes, repeats: int) -> dict | None:
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if mpiexec is None:
        return None
    path = os.path.join("/tmp", f"p2p-bench-{uuid.uuid4().hex[:8]}.json")
    args = [mpiexec, "-n", "2", sys.executable, __file__, "--mpi-child", path, "--repeats", str(repeats),
            "--max-bytes", str(max(sizes))]
    subprocess.run(args, check=True, timeout=1800)
    with open(path) as f:
        got = json.load(f)
    os.unlink(path)
    return {k: {int(n): t for n, t in v.items()} for k, v in got.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-bytes", type=int, default=64 << 20)
    ap.add_argument("--no-mpi", action="store_true")
    ap.add_argument("--mpi-child", metavar="PATH")
    args = ap.parse_args()
    sizes = [n for n in SIZES if n <= args.max_bytes]
    if args.mpi_child:
        mpi_child(sizes, args.repeats, args.mpi_child)
        return
    shm = run_shm(sizes, args.repeats)
    mpi = None if args.no_mpi else run_mpi(sizes, args.repeats)
    rows = []
    print(f"{'bytes':>10} {'shm us':>10} {'shm GB/s':>9} {'mpi4py us':>10} {'disco-mpi us':>12} "
          f"{'mpi4py/shm':>10} {'disco-mpi/mpi4py':>16}")
    for n in sizes:
        row = {"bytes": n, "shm_s": shm[n]}
        line = f"{n:>10} {shm[n] * 1e6:>10.2f} {n / shm[n] / 1e9:>9.2f}"
        if mpi:
            b, o = mpi["mpi4py"][n], mpi["disco_mpi"][n]
            row.update(mpi4py_s=b, disco_mpi_s=o, mpi4py_over_shm=b / shm[n], disco_mpi_over_mpi4py=o / b)
            line += f" {b * 1e6:>10.2f} {o * 1e6:>12.2f} {b / shm[n]:>10.2f} {o / b:>16.2f}"
        rows.append(row)
        print(line)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"machine": platform.platform(), "cpus": os.cpu_count(), "repeats": args.repeats, "rows": rows},
                  f, indent=1)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

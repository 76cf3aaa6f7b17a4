"""Dispatch cost of Disco sessions: round trip (call + sync) and pipelined calls.

For ThreadedSession, ProcessSession and MPISession with 2 workers: the latency of one
call of a registered no-op followed by sync (`round trip`), and the cost per call of
10,000 calls sent back to back and then one sync (`pipelined`). MPISession runs in a
child job (`mpiexec -n W python dispatch.py --mpi-child`) twice: with its same-host
shared-memory ring, and with DISCO_MPI_TRANSPORT=mpi, the path of ranks on other hosts
(commands over MPI, relayed into the ring by rank 0). Each is timed `--repeats` times and
the median is reported. Apache TVM's Disco ProcessSession on the reference machine
(2 cores) is the baseline; TVM is not installed here, so its figures are the ones
measured there, printed next to ours with the ratio TVM / ours (> 1: we are faster).

    python benchmarks/dispatch.py      # prints a table, writes benchmarks/results/dispatch.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import disco  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "dispatch.json")
# Apache TVM Disco ProcessSession, 2 workers, on this 2-core machine (seconds).
TVM_REFERENCE = {"round_trip_s": 59e-6, "pipelined_s": 228e-6}
TARGETS = {"round_trip_s": 15e-6, "pipelined_s": 5e-6}  # for ProcessSession


def round_trip(sess, f, iters: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        f()
        sess.sync()
    return (time.perf_counter() - t0) / iters


def pipelined(sess, f, calls: int, *args) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        f(*args)
    sess.sync()
    return (time.perf_counter() - t0) / calls


def measure(kind, workers: int, repeats: int, iters: int, calls: int) -> dict:
    with kind(workers) as sess:
        return measure_session(sess, kind.__name__, repeats, iters, calls)


def measure_session(sess, name: str, repeats: int, iters: int, calls: int) -> dict:
    workers = sess.num_workers
    sess.import_module("dispatch")  # registers disco.bench.args on process workers
    noop = sess.get_global_func("disco.worker_id")  # registered everywhere, no arguments
    x = sess.broadcast(1)
    round_trip(sess, noop, iters // 4)  # warm up
    pipelined(sess, noop, calls // 4)
    rt = statistics.median(round_trip(sess, noop, iters) for _ in range(repeats))
    pp = statistics.median(pipelined(sess, noop, calls) for _ in range(repeats))
    # The same with arguments (an int, a float, a str, a DRef): the codec's share.
    ppa = statistics.median(pipelined_args(sess, calls, x) for _ in range(repeats))
    return {"session": name, "workers": workers, "round_trip_s": rt, "pipelined_s": pp,
            "pipelined_with_args_s": ppa}


def measure_mpi(transport: str, workers: int, repeats: int, iters: int, calls: int) -> dict | None:
    """MPISession rows, measured in a child job under mpiexec; None without an MPI."""
    from launch import find_mpiexec

    mpiexec = find_mpiexec()
    if mpiexec is None or importlib.util.find_spec("mpi4py") is None:
        print("(no mpiexec/mpi4py: MPISession skipped)")
        return None
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "row.json")
        env = {**os.environ, "DISCO_MPI_TRANSPORT": transport}
        subprocess.run([mpiexec, "-n", str(workers), sys.executable, os.path.abspath(__file__), "--mpi-child", out,
                        "--repeats", str(repeats), "--iters", str(iters), "--calls", str(calls)],
                       env=env, check=True, timeout=600)
        with open(out) as f:
            return json.load(f)


def mpi_child(path: str, a) -> None:
    sess = disco.start()  # ranks > 0 serve inside and exit
    with sess:
        name = "MPISession" if os.environ.get("DISCO_MPI_TRANSPORT", "auto") != "mpi" else "MPISession/relay"
        row = measure_session(sess, name, a.repeats, a.iters, a.calls)
    with open(path, "w") as f:
        json.dump(row, f)


def pipelined_args(sess, calls: int, x) -> float:
    f = sess.get_global_func("disco.bench.args")
    return pipelined(sess, f, calls, 7, 2.5, "name", x)


# This file's directory is sys.path[0], which workers inherit: they import it as `dispatch`.
@disco.register_func("disco.bench.args", override=True)
def _args(*args):
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--iters", type=int, default=2000, help="round trips per timing")
    p.add_argument("--calls", type=int, default=10000, help="pipelined calls per timing")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--no-mpi", action="store_true", help="skip MPISession")
    p.add_argument("--mpi-child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.mpi_child:
        return mpi_child(a.mpi_child, a)

    rows = []
    for kind in (disco.ThreadedSession, disco.ProcessSession):
        rows.append(measure(kind, a.workers, a.repeats, a.iters, a.calls))
    for transport in () if a.no_mpi else ("auto", "mpi"):
        row = measure_mpi(transport, a.workers, a.repeats, a.iters, a.calls)
        if row is not None:
            rows.append(row)

    us = 1e6
    print(f"Disco dispatch, {a.workers} workers, median of {a.repeats} "
          f"({os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()})")
    print(f"{'session':<18}{'round trip':>14}{'pipelined/call':>17}{'  + 4 args':>12}"
          f"{'TVM rt':>10}{'TVM pipe':>10}{'rt ratio':>10}{'pipe ratio':>12}")
    for r in rows:
        r["tvm_round_trip_s"] = TVM_REFERENCE["round_trip_s"]
        r["tvm_pipelined_s"] = TVM_REFERENCE["pipelined_s"]
        r["ratio_tvm_over_ours_round_trip"] = TVM_REFERENCE["round_trip_s"] / r["round_trip_s"]
        r["ratio_tvm_over_ours_pipelined"] = TVM_REFERENCE["pipelined_s"] / r["pipelined_s"]
        print(f"{r['session']:<18}{r['round_trip_s'] * us:>11.1f} us{r['pipelined_s'] * us:>14.2f} us"
              f"{r['pipelined_with_args_s'] * us:>9.2f} us"
              f"{TVM_REFERENCE['round_trip_s'] * us:>7.0f} us{TVM_REFERENCE['pipelined_s'] * us:>7.0f} us"
              f"{r['ratio_tvm_over_ours_round_trip']:>9.1f}x{r['ratio_tvm_over_ours_pipelined']:>11.1f}x")
    proc = next(r for r in rows if r["session"] == "ProcessSession")
    ok = {k: proc[k] <= v for k, v in TARGETS.items()}
    print(f"targets for ProcessSession: round trip <= {TARGETS['round_trip_s'] * us:.0f} us: "
          f"{'met' if ok['round_trip_s'] else 'MISSED'}; pipelined <= {TARGETS['pipelined_s'] * us:.0f} us: "
          f"{'met' if ok['pipelined_s'] else 'MISSED'}")

    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"benchmark": "disco.dispatch", "workers": a.workers, "repeats": a.repeats,
                   "iters": a.iters, "calls": a.calls, "statistic": "median",
                   "baseline": "Apache TVM Disco ProcessSession (reference figures, same machine)",
                   "targets": TARGETS, "targets_met": ok,
                   "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                   "rows": rows}, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

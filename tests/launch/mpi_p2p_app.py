"""Run under mpiexec by test_launch_mpi_p2p.py: point-to-point transfers of the `mpi`
backend through an MPISession. Each case runs on every worker, which checks what it
received against the array its sender made from the same seed, and returns "ok" or the
error text; the app prints one line per case with every worker's answer."""
from __future__ import annotations

import time

import ml_dtypes
import numpy as np

import disco

DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, np.int8, np.int64, np.bool_]
SIZES = [0, 1, 1000, 100_003, 3 << 20]      # bytes


def array(seed, shape, dtype):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 10).astype(np.dtype(dtype))


def check(got, want, what):
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, got.dtype, want.shape, want.dtype)
    assert got.tobytes() == want.tobytes(), what


@disco.register_func("mpi_p2p.case", override=True)
def case(name: str):
    from disco import ccl
    w, n = disco.worker_id(), disco.num_workers()
    result = "ok"
    try:
        if name == "sizes_dtypes":              # 0 -> n-1, every dtype and size
            for i, dt in enumerate(DTYPES):
                for j, nbytes in enumerate(SIZES):
                    shape = (nbytes // np.dtype(dt).itemsize,)
                    if w == 0:
                        ccl.send(array(i * 10 + j, shape, dt), n - 1)
                    elif w == n - 1:
                        check(ccl.recv(shape, dt, 0), array(i * 10 + j, shape, dt), (dt, nbytes))
        elif name == "ring":                    # w -> w + 1, three rounds, 2 MB each
            for step in range(3):
                ccl.send(array(100 * step + w, (1 << 18,), np.float64), (w + 1) % n)
                src = (w - 1) % n
                check(ccl.recv((1 << 18,), np.float64, src), array(100 * step + src, (1 << 18,), np.float64), step)
        elif name == "many_in_order":           # 300 messages 0 -> 1 between collectives
            for i in range(300):
                shape = ((i * 7919) % 5000,)
                if w == 0:
                    ccl.send(np.full(shape, i, np.int32), 1)
                elif w == 1:
                    check(ccl.recv(shape, np.int32, 0), np.full(shape, i, np.int32), i)
                if i % 50 == 0:
                    assert ccl.allreduce(np.ones(1))[0] == n
        elif name == "shape_mismatch":
            if w == 0:
                ccl.send(np.ones((4, 6), np.float32), 1)
                ccl.send(np.arange(3, dtype=np.int32), 1)
            elif w == 1:
                try:
                    ccl.recv((4, 5), np.float32, 0)
                except disco.errors.CollectiveError as e:
                    check(ccl.recv((3,), np.int32, 0), np.arange(3, dtype=np.int32), "after")
                    return str(e)
        elif name == "dtype_mismatch":
            if w == 0:
                ccl.send(np.ones(5, np.float64), 1)
            elif w == 1:
                ccl.recv((5,), np.float32, 0)
        elif name == "bad_sender":
            if w == 0:
                ccl.send(np.array([object()]), 1)
            elif w == 1:
                ccl.recv((1,), np.float32, 0)
        elif name == "timeout":                 # 0 sends to 2, 1 waits for 0
            ccl.init("mpi", "p2p-timeout", timeout_s=0.5)
            if w == 0:
                ccl.send(np.ones(3), 2)
            elif w == 1:
                t0 = time.monotonic()
                try:
                    ccl.recv((3,), np.float64, 0)
                except disco.errors.CollectiveError as e:
                    assert time.monotonic() - t0 < 10
                    result = str(e)
            elif w == 2:
                time.sleep(1.0)
                check(ccl.recv((3,), np.float64, 0), np.ones(3), "late")
            ccl.barrier()
            return result
        elif name == "wrong_peer":              # 2 sends to 0, 0 waits for 1
            ccl.init("mpi", "p2p-wrong-peer", timeout_s=0.5)
            if w == 2:
                ccl.send(np.zeros(2), 0)
            elif w == 0:
                try:
                    ccl.recv((2,), np.float64, 1)
                except disco.errors.CollectiveError as e:
                    check(ccl.recv((2,), np.float64, 2), np.zeros(2), "then")
                    result = str(e)
            ccl.barrier()
            return result
        else:
            raise ValueError(name)
    except disco.errors.CollectiveError as e:
        return str(e)
    return "ok"


def main() -> None:
    with disco.start() as sess:
        sess.init_ccl("mpi")
        run = sess.get_global_func("mpi_p2p.case")
        n = sess.num_workers
        for name in ("sizes_dtypes", "ring", "many_in_order", "shape_mismatch", "dtype_mismatch", "bad_sender",
                     "timeout", "wrong_peer"):
            r = run(name)
            print(f"{name}: " + " | ".join(r.fetch(w) for w in range(n)), flush=True)
        sess.init_ccl("mpi")
        # the controller's way: one peer per worker
        x = sess.scatter(np.arange(n * 4, dtype=np.float32).reshape(n, 4))
        sess.get_global_func("ccl.send")(x, tuple((w + 1) % n for w in range(n)))
        y = sess.get_global_func("ccl.recv")((1, 4), "float32", tuple((w - 1) % n for w in range(n)))
        print("session_ring:", [y.fetch(w).tolist() for w in range(n)], flush=True)


if __name__ == "__main__":
    main()

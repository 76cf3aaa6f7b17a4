"""Shared-memory collectives against numpy references, with threads as ranks (each with
its own WorkerContext, like ThreadedSession) and with processes (fork and spawn)."""
from __future__ import annotations

import functools
import multiprocessing as mp
import os
import threading
import time
import uuid

import ml_dtypes
import numpy as np
import pytest

from disco import ccl
from disco._context import WorkerContext, set_worker_context
from disco.errors import CollectiveError

pytestmark = pytest.mark.timeout(60)

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.dtype(t) for t in (np.float32, np.float64, np.float16, BF16, np.int8, np.int32, np.int64)]
NP_OPS = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}


def run_threads(world, fn, *, group=None, expect_errors=False, **options):
    """Run fn(rank) on `world` threads acting as ranks of one shm group; return the
    results in rank order (or the exceptions, with expect_errors)."""
    group = group or f"t-{uuid.uuid4().hex[:12]}"
    results, errors = [None] * world, [None] * world

    def body(rank):
        set_worker_context(WorkerContext(worker_id=rank, num_workers=world))
        try:
            ccl.init("shm", group, **options)
            results[rank] = fn(rank)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors[rank] = e
        finally:
            ccl.shutdown()
            set_worker_context(None)

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=50)
        assert not t.is_alive(), "a rank hung"
    if expect_errors:
        return errors
    for e in errors:
        if e is not None:
            raise e
    return results


def make(rank, shape, dtype, op="sum", seed=0):
    """Deterministic per-rank input; values small enough that prod stays finite."""
    rng = np.random.default_rng(seed * 1000 + rank)
    if dtype.kind == "i":
        lo, hi = (-3, 4) if op == "prod" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
        return rng.integers(lo, hi, size=shape, dtype=dtype, endpoint=False)
    lo, hi = (0.5, 1.5) if op == "prod" else (-100.0, 100.0)
    return rng.uniform(lo, hi, size=shape).astype(dtype)


def reference_reduce(xs, op):
    """numpy reference; float16/bfloat16 reduced in float32 and rounded once."""
    dtype = xs[0].dtype
    if dtype in (np.dtype(np.float16), BF16):
        return functools.reduce(NP_OPS[op], [x.astype(np.float32) for x in xs]).astype(dtype)
    return functools.reduce(NP_OPS[op], xs)


def assert_matches(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    if want.dtype.kind == "i" or want.dtype in (np.dtype(np.float16), BF16):
        # integers exactly; 16-bit floats too (same float32 order, one rounding)
        np.testing.assert_array_equal(got.view(f"u{want.itemsize}") if want.dtype.kind == "f" or want.dtype == BF16 else got,
                                      want.view(f"u{want.itemsize}") if want.dtype.kind == "f" or want.dtype == BF16 else want)
    else:
        rtol = 1e-5 if want.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 100)


# ---------------------------------------------------------------- all-reduce


def with_nans(x, rank, world):
    """x with NaNs (floating dtypes only) where only rank 0 has one, where only a later
    rank has one, and where the first and the last rank both have one."""
    if x.dtype.kind != "f" and x.dtype != BF16:
        return x
    x = x.copy()
    x[rank + 1::world + 3] = np.nan
    if rank in (0, world - 1):
        x[world + 1::world + 3] = np.nan
    return x


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", list(NP_OPS))
def test_allreduce_dtypes_ops(dtype, op):
    world = 3
    for n in (1, 1031, 70001):  # one-barrier path, and the pipelined one (> small_bytes, > 1 chunk)
        xs = [with_nans(make(r, (n,), dtype, op, seed=n), r, world) for r in range(world)]
        got = run_threads(world, lambda r: ccl.allreduce(xs[r], op), chunk_bytes=64 << 10)
        want = reference_reduce(xs, op)
        for g in got:
            assert_matches(g, want)


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d.kind == "f" or d == BF16], ids=str)
def test_min_max_propagate_nan(dtype):
    """Like np.minimum / np.maximum: a NaN on any worker is the result, whichever
    worker holds it (the first source or a later one)."""
    xs = [np.array([np.nan, 1, 2], dtype), np.array([0, np.nan, 3], dtype)]
    for op, want in (("min", [np.nan, np.nan, 2]), ("max", [np.nan, np.nan, 3])):
        for small_bytes in (16 << 10, 0):  # one-barrier path, reduce-scatter + all-gather path
            got = run_threads(2, lambda r: ccl.allreduce(xs[r], op), small_bytes=small_bytes)
            for g in got:
                np.testing.assert_array_equal(g.astype(np.float64), want)  # NaN where want has NaN


@pytest.mark.parametrize("nelem", [1, 2, 3, 17, 4095, 4097, 65537, 1_000_003])
def test_allreduce_sizes(nelem):
    xs = [make(r, (nelem,), np.dtype(np.float32)) for r in range(2)]
    got = run_threads(2, lambda r: ccl.allreduce(xs[r]))
    for g in got:
        assert_matches(g, reference_reduce(xs, "sum"))


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.int8)], ids=str)
def test_allreduce_64mib(dtype):
    n = (64 << 20) // dtype.itemsize
    xs = [make(r, (n,), dtype) for r in range(2)]
    got = run_threads(2, lambda r: ccl.allreduce(xs[r]))
    want = reference_reduce(xs, "sum")
    for g in got:
        assert_matches(g, want)


def test_allreduce_in_place_and_multidim():
    xs = [make(r, (33, 7, 5), np.dtype(np.float64)) for r in range(3)]
    want = reference_reduce(xs, "max")
    inputs = [x.copy() for x in xs]
    got = run_threads(3, lambda r: ccl.allreduce(inputs[r], "max", out=inputs[r]), chunk_bytes=4096, small_bytes=0)
    for g, x in zip(got, inputs):
        assert g is x
        assert_matches(g, want)
    # a non-contiguous input is copied first; the result is a new contiguous array
    got = run_threads(2, lambda r: ccl.allreduce(xs[r][:, ::2, :], "sum"))
    assert_matches(got[0], xs[0][:, ::2, :] + xs[1][:, ::2, :])


@pytest.mark.parametrize("dtype", [np.dtype(np.float16), BF16], ids=str)
def test_half_conversions_every_bit_pattern(dtype):
    """x + 0 round-trips every non-NaN 16-bit pattern through the hand-written
    float32 conversions (subnormals, infinities, signed zeros included)."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    x = bits.view(dtype)
    x = x[~np.isnan(x.astype(np.float32))]
    zeros = np.zeros_like(x)
    got = run_threads(2, lambda r: ccl.allreduce(x if r == 0 else zeros, "sum"))
    assert_matches(got[1], reference_reduce([x, zeros], "sum"))
    # and rounding: float32 sums that land between two 16-bit values
    y = make(0, (50000,), np.dtype(np.float32)).astype(dtype)
    z = (make(1, (50000,), np.dtype(np.float32)) * 1e-3).astype(dtype)
    got = run_threads(2, lambda r: ccl.allreduce([y, z][r], "sum"))
    assert_matches(got[0], reference_reduce([y, z], "sum"))


# ---------------------------------------------------------------- the others


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("shape,axis", [((5,), 0), ((3, 5, 7), 0), ((3, 5, 7), 1), ((3, 5, 7), -1), ((513, 1025), 1)])
def test_allgather(world, shape, axis):
    for dtype in (np.dtype(np.float32), BF16, np.dtype(np.int64)):
        xs = [make(r, shape, dtype) for r in range(world)]
        got = run_threads(world, lambda r: ccl.allgather(xs[r], axis), chunk_bytes=64 << 10)
        for g in got:
            assert_matches(g, np.concatenate(xs, axis))


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("shape,axis", [((6,), 0), ((6, 5), 0), ((4, 6, 3), 1), ((3, 5, 6), -1), ((7, 600, 301), 1)])
@pytest.mark.parametrize("op", ["sum", "max"])
def test_reduce_scatter(world, shape, axis, op):
    shape = tuple(s * world // 2 if i == axis % len(shape) else s for i, s in enumerate(shape))
    shape = tuple(s if i != axis % len(shape) else s - s % world for i, s in enumerate(shape))
    for dtype in (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int32)):
        xs = [make(r, shape, dtype, op) for r in range(world)]
        got = run_threads(world, lambda r: ccl.reduce_scatter(xs[r], op, axis), chunk_bytes=64 << 10)
        parts = np.split(reference_reduce(xs, op), world, axis)
        for r, g in enumerate(got):
            assert_matches(g, parts[r])


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("shape", [(1,), (3, 5), (1_000_003,)])
def test_broadcast(world, shape):
    x = make(0, shape, np.dtype(np.float64))
    # other workers pass None or something else entirely; both are ignored
    got = run_threads(world, lambda r: ccl.broadcast_from_worker0(x if r == 0 else (None if r == 1 else np.ones(2))),
                      chunk_bytes=64 << 10)
    for g in got:
        assert_matches(g, x)
    assert got[0] is not x


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("shape,axis", [((6,), 0), ((6, 5), 1), ((4, 6, 3), 0), ((3, 1001, 600), 2)])
def test_scatter(world, shape, axis):
    shape = tuple(s * world if i == axis else s for i, s in enumerate(shape))
    x = make(0, shape, np.dtype(np.int8))
    got = run_threads(world, lambda r: ccl.scatter_from_worker0(x if r == 0 else None, axis), chunk_bytes=64 << 10)
    for g, want in zip(got, np.split(x, world, axis)):
        assert_matches(g, want)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("shape,axis", [((1,), 0), ((3, 5), 1), ((700, 999), 0)])
def test_gather(world, shape, axis):
    xs = [make(r, shape, np.dtype(np.float16)) for r in range(world)]
    got = run_threads(world, lambda r: ccl.gather_to_worker0(xs[r], axis), chunk_bytes=64 << 10)
    assert_matches(got[0], np.concatenate(xs, axis))
    assert all(g is None for g in got[1:])


def test_mixed_sequence_more_ranks_than_cores():
    """Many collectives back to back (double-buffered halves reused), 4 ranks on 2 cores."""
    world = 4

    def body(r):
        out = []
        for i in range(30):
            n = [1, 100, 5000, 40000][i % 4]
            x = make(r, (n * world,), np.dtype(np.float32), seed=i)
            out.append(ccl.allreduce(x))
            out.append(ccl.allgather(x))
            out.append(ccl.reduce_scatter(x, "min"))
            out.append(ccl.broadcast_from_worker0(x))
            ccl.barrier()
        return out

    got = run_threads(world, body, chunk_bytes=16 << 10)
    k = 0
    for i in range(30):
        n = [1, 100, 5000, 40000][i % 4]
        xs = [make(r, (n * world,), np.dtype(np.float32), seed=i) for r in range(world)]
        for r in range(world):
            assert_matches(got[r][k], reference_reduce(xs, "sum"))
            assert_matches(got[r][k + 1], np.concatenate(xs))
            assert_matches(got[r][k + 2], np.split(reference_reduce(xs, "min"), world)[r])
            assert_matches(got[r][k + 3], xs[0])
        k += 4


def test_single_worker():
    x = make(0, (10,), np.dtype(np.int32))
    (got,) = run_threads(1, lambda r: (ccl.allreduce(x), ccl.allgather(x), ccl.gather_to_worker0(x)))
    for g in got:
        assert_matches(g, x)


# ---------------------------------------------------------------- processes


def _proc_worker(rank, world, group, q):
    set_worker_context(WorkerContext(worker_id=rank, num_workers=world), process_wide=True)
    try:
        ccl.init("shm", group)
        x = make(rank, (300_001,), np.dtype(np.float32))
        a = ccl.empty(x.shape, x.dtype)  # in the arena: read by the peers in place
        a[...] = x
        out = (ccl.allreduce(x), ccl.allgather(x[:1001]), ccl.broadcast_from_worker0(x if rank == 0 else None),
               ccl.gather_to_worker0(x[:7]), np.array(ccl.allreduce(a, out=a)),
               ccl.communicator().allreduce_paths())
        ccl.barrier()
        q.put((rank, out))
    except BaseException as e:  # noqa: BLE001
        q.put((rank, e))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_processes(method):
    world = 2 if method == "spawn" else 3
    ctx = mp.get_context(method)
    q = ctx.Queue()
    group = f"p-{uuid.uuid4().hex[:12]}"
    procs = [ctx.Process(target=_proc_worker, args=(r, world, group, q)) for r in range(world)]
    for p in procs:
        p.start()
    got = dict(q.get(timeout=50) for _ in range(world))
    for p in procs:
        p.join(timeout=20)
    xs = [make(r, (300_001,), np.dtype(np.float32)) for r in range(world)]
    for r in range(world):
        assert not isinstance(got[r], BaseException), got[r]
        assert_matches(got[r][0], reference_reduce(xs, "sum"))
        assert_matches(got[r][1], np.concatenate([x[:1001] for x in xs]))
        assert_matches(got[r][2], xs[0])
    assert_matches(got[0][3], np.concatenate([x[:7] for x in xs]))
    assert got[1][3] is None
    for r in range(world):  # each process maps the arenas at its own addresses
        assert_matches(got[r][4], reference_reduce(xs, "sum"))
        # the first all-reduce's output (out=None) was an arena array: its all-gather read in place
        assert got[r][5] == {"one_barrier": 0, "staged": 0, "outputs_in_arenas": 1, "in_arenas": 1}
    assert not [f for f in os.listdir("/dev/shm") if group in f], "segment left behind"


# ---------------------------------------------------------------- errors


def _errors(world, fn, **options):
    errs = run_threads(world, fn, expect_errors=True, **options)
    assert all(isinstance(e, CollectiveError) for e in errs), errs
    return [str(e) for e in errs]


def test_unsupported_dtype_raises_on_every_worker():
    msgs = _errors(2, lambda r: ccl.allreduce(np.ones(4, np.uint8 if r == 1 else np.float32)))
    for m in msgs:
        assert "ccl.allreduce" in m and "worker 1" in m and "uint8" in m and "float32" in m
    msgs = _errors(2, lambda r: ccl.allgather(np.zeros(3, bool)))
    assert all("ccl.allgather: worker 0 gave dtype bool" in m for m in msgs)


def test_shape_mismatch_names_worker_expected_and_given():
    msgs = _errors(3, lambda r: ccl.allreduce(np.ones((4, 5 + (r == 2)), np.float32)))
    for m in msgs:
        assert m.startswith("ccl.allreduce: worker 2 gave shape (4, 6), expected (4, 5)"), m
    msgs = _errors(2, lambda r: ccl.allgather(np.ones(3 + r, np.int32)))
    assert all("ccl.allgather: worker 1 gave shape (4,), expected (3,)" in m for m in msgs)
    msgs = _errors(2, lambda r: ccl.reduce_scatter(np.ones((2, 2 + r)), "sum", 0))
    assert all("ccl.reduce_scatter: worker 1 gave shape (2, 3), expected (2, 2)" in m for m in msgs)
    msgs = _errors(2, lambda r: ccl.gather_to_worker0(np.ones(5 - r, np.int8)))
    assert all("ccl.gather_to_worker0: worker 1 gave shape (4,)" in m for m in msgs)


def test_other_mismatches():
    msgs = _errors(2, lambda r: ccl.allreduce(np.ones(4, [np.float32, np.float64][r])))
    assert all("worker 1 gave dtype float64, expected float32" in m for m in msgs)
    msgs = _errors(2, lambda r: ccl.allreduce(np.ones(4), ["sum", "max"][r]))
    assert all("worker 1 gave op max, expected sum" in m for m in msgs)
    msgs = _errors(2, lambda r: ccl.allreduce(np.ones(4), "mean" if r == 1 else "sum"))
    assert all(m.startswith("ccl.allreduce: invalid arguments on worker 1: unknown op 'mean'; expected one of "
                            "sum, prod, min, max") for m in msgs), msgs
    msgs = _errors(2, lambda r: ccl.allreduce(np.ones(4)) if r == 0 else ccl.allgather(np.ones(4)))
    assert all("worker 1 called ccl.allgather, expected ccl.allreduce" in m for m in msgs)
    msgs = _errors(2, lambda r: ccl.reduce_scatter(np.ones(5), "sum"))
    assert all("divisible by 2" in m for m in msgs)
    msgs = _errors(2, lambda r: ccl.scatter_from_worker0(np.ones((2, 3)) if r == 0 else None, 1))
    assert all("divisible by 2" in m and "given length 3" in m for m in msgs)
    msgs = _errors(2, lambda r: ccl.broadcast_from_worker0(None))
    assert all("worker 0 must pass an array" in m for m in msgs)


def test_bad_local_arguments_raise_on_every_worker_and_keep_the_group_usable():
    """An argument only one worker cannot use would make it raise alone while its peers
    wait for it until the timeout; instead every worker raises the same error, naming
    that worker and what it gave, and the next collective works."""
    xs = [np.arange(6.0) * (r + 1) for r in range(3)]
    cases = {
        "axis": (lambda r: ccl.allgather(np.ones((4,) if r == 0 else (4, 2)), axis=1),
                 "ccl.allgather: invalid arguments on worker 0: axis 1 is out of range for an array of shape (4,)"),
        "out": (lambda r: ccl.allreduce(np.ones(3), out=np.empty(4) if r == 2 else None),
                "ccl.allreduce: invalid arguments on worker 2: out= must be a C-contiguous numpy array of shape (3,) "
                "and dtype float64, given an array of shape (4,) and dtype float64"),
        "out type": (lambda r: ccl.reduce_scatter(np.ones(6), "sum", 0, out=[0.0, 0.0] if r == 1 else None),
                     "ccl.reduce_scatter: invalid arguments on worker 1: out= must be a C-contiguous numpy array of "
                     "shape (2,) and dtype float64, given a list"),
        "scatter axis": (lambda r: ccl.scatter_from_worker0(np.ones((3, 3)) if r == 0 else None, 2),
                         "ccl.scatter_from_worker0: invalid arguments on worker 0: axis 2 is out of range for an "
                         "array of shape (3, 3)"),
        "two workers": (lambda r: ccl.gather_to_worker0(np.ones(2), axis=[0, 5, -9][r]),
                        "ccl.gather_to_worker0: invalid arguments on workers 1, 2: worker 1: axis 5 is out of range "
                        "for an array of shape (2,); worker 2: axis -9 is out of range for an array of shape (2,)"),
        "dims": (lambda r: ccl.allgather(np.ones((1,) * (13 if r == 1 else 2))),
                 "ccl.allgather: invalid arguments on worker 1: arrays of at most 12 dims are supported, given one of "
                 "13 dims"),
    }

    def body(r):
        messages = {}
        for name, (call, _) in cases.items():
            with pytest.raises(CollectiveError) as info:
                call(r)
            messages[name] = str(info.value)
        return messages, ccl.allreduce(xs[r])

    for messages, total in run_threads(3, body):  # run_threads' join timeout is the hang guard
        for name, (_, expected) in cases.items():
            assert messages[name].startswith(expected), (name, messages[name])
            assert "did not arrive" not in messages[name]
        assert_matches(total, reference_reduce(xs, "sum"))


def test_unknown_op_code_names_it_and_the_accepted_ops():
    """disco.ccl passes op codes; a code outside the table (only reachable through the
    native object) is named with the accepted ops rather than silently reduced."""
    from disco import _native

    comm = _native.ShmCommunicator(f"op-{uuid.uuid4().hex[:12]}", 0, 1)
    x = np.ones(3, np.float32)
    with pytest.raises(CollectiveError, match=r"^ccl.allreduce: worker 0 gave an unknown op \(code 9\); "
                                              r"expected one of sum, prod, min, max$"):
        comm.allreduce(x, np.empty_like(x), 0, "", 9)
    out = np.empty_like(x)
    comm.allreduce(x, out, 0, "", 0)  # sum: still usable
    np.testing.assert_array_equal(out, x)


def test_timeout_names_missing_worker_and_never_hangs():
    def body(r):
        if r == 0:
            ccl.allreduce(np.ones(3))
        # worker 1 never calls

    msgs = run_threads(2, body, expect_errors=True, timeout_s=0.3)
    assert isinstance(msgs[0], CollectiveError) and msgs[1] is None
    assert "ccl.allreduce: worker 0 timed out" in str(msgs[0]) and "worker(s) [1] did not arrive" in str(msgs[0])

    def body2(r):
        if r == 0:
            with pytest.raises(CollectiveError, match="ccl.barrier: worker 0 timed out after 0.3 s"):
                ccl.barrier()
            ccl.allreduce(np.ones(3))  # out of step now: worker 0 refuses at once
        else:
            time.sleep(0.6)
            ccl.allreduce(np.ones(3))  # meets worker 0's stale barrier: a mismatch, not a hang

    msgs = run_threads(2, body2, expect_errors=True, timeout_s=0.3)
    assert "out of step" in str(msgs[0])
    assert "worker 1 called ccl.allreduce, expected ccl.barrier" in str(msgs[1])


def test_a_group_that_never_forms_leaves_no_segment():
    """Worker 2 never joins: the others time out at init, and the segment's name (which
    only lives until every worker has attached) is gone from /dev/shm."""
    group = f"never-{uuid.uuid4().hex[:12]}"
    outcome = [None] * 2

    def join(rank):
        set_worker_context(WorkerContext(worker_id=rank, num_workers=3))
        try:
            ccl.init("shm", group, timeout_s=0.3)
        except CollectiveError as e:
            outcome[rank] = str(e)
        finally:
            ccl.shutdown()
            set_worker_context(None)

    threads = [threading.Thread(target=join, args=(r,), daemon=True) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a rank hung"
    assert all(m is not None and "ccl.init" in m and "worker(s) [2] did not arrive" in m for m in outcome), outcome
    assert not [f for f in os.listdir("/dev/shm") if group in f], "segment left behind"


def test_no_communicator_and_missing_backend_function():
    set_worker_context(WorkerContext(worker_id=0, num_workers=1))
    try:
        with pytest.raises(CollectiveError, match="has no collective communicator"):
            ccl.allreduce(np.ones(2))

        class Partial(ccl.Communicator):
            backend = "partial"

        ccl.register_backend("partial", lambda group, rank, world: Partial(rank, world))
        ccl.init("partial", "g")
        with pytest.raises(CollectiveError, match="no `allreduce` for backend `partial`"):
            ccl.allreduce(np.ones(2))
        with pytest.raises(CollectiveError, match="unknown backend 'nope'"):
            ccl.init("nope", "g")
    finally:
        ccl.shutdown()
        set_worker_context(None)


def test_allreduce_streaming_stores():
    """The streaming-store output path (stream_bytes) gives the same results, odd sizes
    and unaligned regions included."""
    for n in (300, 100_003):
        xs = [make(r, (n,), np.dtype(np.float16)) for r in range(3)]
        got = run_threads(3, lambda r: ccl.allreduce(xs[r]), stream_bytes=1, small_bytes=0, chunk_bytes=8192)
        for g in got:
            assert_matches(g, reference_reduce(xs, "sum"))


# ---------------------------------------------------------------- the arena


def _in_arenas(world, xs, op, out_in_place=False, **options):
    """All-reduce copies of xs made in the arena (ccl.empty) on every rank; returns
    (results, whether each rank's input was in its arena, each rank's path counts)."""
    def body(r):
        a = ccl.empty(xs[r].shape, xs[r].dtype)
        a[...] = xs[r]
        out = a if out_in_place else ccl.empty(xs[r].shape, xs[r].dtype)
        comm = ccl.communicator()
        inside = comm.in_arena(a) and comm.in_arena(out)
        got = ccl.allreduce(a, op, out=out)
        assert got is out
        return np.array(got), inside, comm.allreduce_paths()
    return zip(*run_threads(world, body, **options))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", list(NP_OPS))
def test_allreduce_of_arena_arrays_reads_peers_in_place(dtype, op):
    """Inputs and outputs in the arenas on every worker: the in-place path, same results
    as numpy (odd sizes, regions not multiples of the alignment)."""
    for world, n in ((2, 70001), (3, 1031)):
        xs = [with_nans(make(r, (n,), dtype, op, seed=n), r, world) for r in range(world)]
        got, inside, paths = _in_arenas(world, xs, op, small_bytes=0)
        want = reference_reduce(xs, op)
        assert all(inside)
        assert all(p["in_arenas"] == 1 and p["staged"] == 0 for p in paths)
        for g in got:
            assert_matches(g, want)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_allreduce_in_place_over_the_arena(world):
    """out is the input (in the arena): a worker's output region is its own input, which
    its reduction reads while writing it, whatever its rank (the first source or not)."""
    for dtype in (np.dtype(np.float32), np.dtype(np.int64), BF16):
        xs = [make(r, (50_003,), dtype, seed=world) for r in range(world)]
        got, _, paths = _in_arenas(world, xs, "sum", out_in_place=True)
        assert all(p["in_arenas"] == 1 for p in paths)
        for g in got:
            assert_matches(g, reference_reduce(xs, "sum"))


def test_allreduce_with_arena_arrays_on_some_workers_only():
    """Worker 0's arrays in the arena, worker 1's ordinary: the staged path (worker 0
    stages the first chunk it had skipped), correct, and the group stays in step; then
    ordinary inputs with arena outputs (out=None): staged, the all-gather in place."""
    xs = [make(r, (200_003,), np.dtype(np.float32)) for r in range(2)]

    def body(r):
        x = ccl.empty(xs[r].shape, xs[r].dtype) if r == 0 else xs[r].copy()
        x[...] = xs[r]
        first = ccl.allreduce(x, out=ccl.empty(x.shape, x.dtype) if r == 0 else np.empty_like(x))
        again = ccl.allreduce(xs[r])
        return first, again, ccl.communicator().in_arena(again), ccl.communicator().allreduce_paths()
    for first, again, again_in_arena, paths in run_threads(2, body):
        assert_matches(first, reference_reduce(xs, "sum"))
        assert_matches(again, reference_reduce(xs, "sum"))
        assert again_in_arena
        assert paths == {"one_barrier": 0, "staged": 1, "outputs_in_arenas": 1, "in_arenas": 0}


@pytest.mark.parametrize("world", [2, 3])
def test_allreduce_of_ordinary_arrays_into_arena_outputs(world):
    """Inputs ordinary, outputs in the arenas on every worker: inputs staged chunk by
    chunk, each worker reduces into its output, the all-gather reads the peers' outputs
    (chunks and regions of odd sizes)."""
    for dtype, op in ((np.dtype(np.float32), "sum"), (BF16, "max"), (np.dtype(np.int32), "prod")):
        xs = [make(r, (70_001,), dtype, op) for r in range(world)]

        def body(r):
            out = ccl.empty(xs[r].shape, xs[r].dtype)
            return np.array(ccl.allreduce(xs[r], op, out=out)), ccl.communicator().allreduce_paths()
        for got, paths in run_threads(world, body, chunk_bytes=64 << 10):
            assert_matches(got, reference_reduce(xs, op))
            assert paths["outputs_in_arenas"] == 1 and paths["staged"] == 0


def test_arena_allocation_reuses_freed_blocks_and_falls_back_when_full():
    """A 2 MiB arena: blocks freed next to each other merge into room for a larger one;
    a request that does not fit gives an ordinary array, which still all-reduces."""
    def body(r):
        comm = ccl.communicator()
        a, b, c = (ccl.empty(128 << 10, np.float32) for _ in range(3))   # 512 KiB each
        assert all(comm.in_arena(v) for v in (a, b, c))
        too_big = ccl.empty(1 << 20, np.float32)                          # 4 MiB
        assert not comm.in_arena(too_big) and too_big.shape == (1 << 20,) and too_big.dtype == np.float32
        del a, b
        merged = ccl.empty(256 << 10, np.float32)                         # 1 MiB: where a and b were
        assert comm.in_arena(merged)
        merged[...] = r + 1
        too_big[...] = r + 1
        return ccl.allreduce(merged, out=merged)[-1], ccl.allreduce(too_big)[-1], comm.allreduce_paths()
    for merged, big, paths in run_threads(2, body, arena_bytes=2 << 20):
        assert merged == 3 and big == 3     # too_big's result (4 MiB) does not fit either: staged
        assert paths["in_arenas"] == 1 and paths["staged"] == 1


def test_arena_arrays_outlive_their_communicator():
    """An array from ccl.empty stays valid after ccl.shutdown (its memory is released
    when the array goes); a large all-reduce without out= returns an arena array."""
    def body(r):
        x = ccl.empty((1000, 64), np.float64)
        x[...] = r
        y = ccl.allreduce(x)
        kept = ccl.communicator().in_arena(y)
        ccl.shutdown()
        y += 1       # writes the arena memory after the communicator is gone
        return kept, float(y.sum())
    for kept, total in run_threads(2, body):
        assert kept and total == (0 + 1 + 1) * 1000 * 64


def test_arena_empty_takes_what_numpy_empty_takes_and_raises_what_it_raises():
    def body(r):
        comm = ccl.communicator()
        a = ccl.empty(np.int64(5), "float16")
        b = ccl.empty((np.int32(2), 3), BF16)
        objects = ccl.empty(3, object)                    # never in shared memory
        errors = []
        for shape in ((-1, 4), (1 << 40, 1 << 40), 2.7, (3.9, 2), "4"):
            for empty in (ccl.empty, np.empty):
                try:
                    empty(shape, np.float32)
                    errors.append(None)
                except (ValueError, TypeError, MemoryError) as e:
                    errors.append(type(e).__name__)
        return (a.shape, a.dtype, comm.in_arena(a), b.shape, b.dtype, comm.in_arena(b),
                objects.dtype, comm.in_arena(objects), errors)
    for got in run_threads(2, body):
        assert got[:-1] == ((5,), np.float16, True, (2, 3), BF16, True, np.dtype(object), False)
        errors = got[-1]
        assert errors[0::2] == errors[1::2]                # ccl.empty's error is numpy's
        assert errors[0::2] == ["ValueError", "ValueError", "TypeError", "TypeError", "TypeError"]


def test_no_arena():
    """arena_bytes=0: ccl.empty gives ordinary arrays, all-reduces are staged."""
    def body(r):
        x = ccl.empty(100_000, np.float32)
        x[...] = 1
        return ccl.communicator().in_arena(x), ccl.allreduce(x)[0]
    assert run_threads(2, body, arena_bytes=0) == [(False, 2.0)] * 2


def test_zero_d_inputs_stay_zero_d():
    """A numpy scalar or 0-d array all-reduces to a 0-d array, as np.add would give."""
    got = run_threads(2, lambda r: (ccl.allreduce(np.float64(r + 1.5)), ccl.allreduce(np.array(r, np.int32))))
    for scalar, zero_d in got:
        assert scalar.shape == () and scalar.dtype == np.float64 and scalar == 4.0
        assert zero_d.shape == () and zero_d.dtype == np.int32 and zero_d == 1


def test_a_closed_communicator_names_the_collective():
    def body(r):
        comm = ccl.communicator()
        comm.close()
        errors = []
        for call in (lambda: comm.allreduce(np.ones(1 << 16, np.float32)), lambda: comm.barrier()):
            try:
                call()
            except CollectiveError as e:
                errors.append(str(e))
        return errors
    for errors in run_threads(2, body):
        assert [e.split(":")[0] for e in errors] == ["ccl.allreduce", "ccl.barrier"]
        assert all("is closed" in e for e in errors)

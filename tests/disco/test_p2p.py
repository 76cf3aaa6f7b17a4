"""Point-to-point transfers (`disco.ccl.send` / `recv`) of the shm backend, with threads as
ranks (as in test_ccl.py), with processes, and through sessions ("ccl.send" / "ccl.recv"
on every worker, with one peer per worker); checked against the arrays sent."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import uuid

import ml_dtypes
import numpy as np
import pytest

import disco
from disco import ccl
from disco._context import WorkerContext, set_worker_context
from disco.errors import CollectiveError, WorkerError
from test_ccl import run_threads

pytestmark = pytest.mark.timeout(90)

DTYPES = [np.dtype(t) for t in (np.float32, np.float64, np.float16, ml_dtypes.bfloat16, np.int8, np.int64,
                                np.uint16, np.bool_, np.complex64)]
# bytes: 0, inline, one ring piece, through the arena, several MB through the arena
SIZES = [0, 1, 1000, 16 << 10, 100_003, 3 << 20]


def array(seed, shape, dtype):
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind in "iu":
        return rng.integers(0, 100, size=shape).astype(dtype)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def same(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    np.testing.assert_array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))  # NaNs too


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sizes_and_dtypes_arrive_intact(dtype):
    shapes = [(n // dtype.itemsize,) for n in SIZES] + [(), (3, 0, 2), (7, 5, 3)]
    xs = [array(i, s, dtype) for i, s in enumerate(shapes)]

    def body(r):
        if r == 0:
            for x in xs:
                ccl.send(x, 1)
            return None
        return [ccl.recv(x.shape, dtype, 0) for x in xs]
    _, got = run_threads(2, body)
    for g, x in zip(got, xs):
        same(g, x)


@pytest.mark.parametrize("arena_bytes", [256 << 20, 0], ids=["arena", "no-arena"])
def test_large_messages_stream_through_the_ring_without_an_arena(arena_bytes):
    """Without an arena a large payload passes through the pair's 64 KiB ring in pieces
    (the sender waits for the receiver); with one, through the sender's arena."""
    x = array(1, (5 << 20) // 4 + 3, np.dtype(np.float32))

    def body(r):
        if r == 0:
            ccl.send(x, 1)
            ccl.send(x[:10], 1)
            return None
        return ccl.recv(x.shape, x.dtype, 0), ccl.recv((10,), x.dtype, 0)
    _, (big, small) = run_threads(2, body, arena_bytes=arena_bytes)
    same(big, x)
    same(small, x[:10])


def test_arena_blocks_of_received_messages_are_reused_for_other_receivers():
    """A 2 MiB arena: the 1.5 MB message to worker 1, once received, leaves room for the
    one to worker 2, which goes through the arena too (so send does not wait for worker
    2, which receives only after the 0.5 s timeout)."""
    x = np.arange((3 << 20) // 8, dtype=np.float32)

    def body(r):
        if r == 0:
            ccl.send(x, 1)
        elif r == 1:
            same(ccl.recv(x.shape, x.dtype, 0), x)
        ccl.barrier()
        if r == 0:
            ccl.send(x + 1, 2)
        elif r == 2:
            time.sleep(1.0)
            return ccl.recv(x.shape, x.dtype, 0)
    got = run_threads(3, body, arena_bytes=2 << 20, timeout_s=0.5)[2]
    same(got, x + 1)


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("nbytes", [64, 40_000, 2 << 20])
def test_ring_exchange(world, nbytes):
    """Every worker sends to the next, then receives from the previous: send does not wait
    for the receiver, so this does not deadlock (small payloads in the ring, large ones
    in the arena)."""
    xs = [array(r, (nbytes // 8,), np.dtype(np.float64)) for r in range(world)]

    def body(r):
        got = []
        for step in range(3):
            ccl.send(xs[r] + step, (r + 1) % world)
            got.append(ccl.recv(xs[r].shape, np.float64, (r - 1) % world))
        return got
    for r, got in enumerate(run_threads(world, body)):
        for step, g in enumerate(got):
            same(g, xs[(r - 1) % world] + step)


def test_many_messages_in_order_interleaved_with_collectives():
    """200 messages of varying sizes from 0 to 1 (more than a mailbox holds, so the
    sender waits for the receiver now and then), with collectives in between on all
    three workers, and 2 -> 0 traffic at the same time."""
    sizes = [(i * 7919) % 50_000 for i in range(200)]

    def body(r):
        got, sums = [], []
        for i, n in enumerate(sizes):
            if r == 0:
                ccl.send(np.full(n, i, np.int32), 1)
                if i % 10 == 0:
                    got.append(ccl.recv((i + 1,), np.int64, 2))
            elif r == 1:
                got.append(ccl.recv((n,), np.int32, 0))
            elif i % 10 == 0:
                ccl.send(np.arange(i + 1, dtype=np.int64), 0)
            if i % 25 == 0:
                sums.append(ccl.allreduce(np.array([r + i], np.int64))[0])
        return got, sums

    results = run_threads(3, body, timeout_s=20)
    for i, g in enumerate(results[1][0]):
        same(g, np.full(sizes[i], i, np.int32))
    for k, g in enumerate(results[0][0]):
        same(g, np.arange(10 * k + 1, dtype=np.int64))
    for _, sums in results:
        assert sums == [3 * i + 3 for i in range(0, 200, 25)]


def test_recv_into_out_and_non_contiguous_and_device_free_inputs():
    x = np.arange(24, dtype=np.float32).reshape(4, 6)

    def body(r):
        if r == 0:
            ccl.send(x[:, ::2], 1)           # non-contiguous: sent as its C-contiguous copy
            ccl.send(x.T, 1)
            return None
        out = np.empty((4, 3), np.float32)
        got = ccl.recv((4, 3), np.float32, 0, out=out)
        return got is out, out.copy(), ccl.recv([6, 4], "float32", 0)
    _, (is_out, a, b) = run_threads(2, body)
    assert is_out
    same(a, np.ascontiguousarray(x[:, ::2]))
    same(b, np.ascontiguousarray(x.T))


# ---------------------------------------------------------------- errors


def test_shape_and_dtype_mismatches_name_both_workers_and_keep_the_pair_in_step():
    def body(r):
        errors = []
        if r == 0:
            ccl.send(np.ones((4, 6), np.float32), 1)
            ccl.send(np.ones(5, np.float64), 1)
            ccl.send(np.ones(200_000, np.int8), 1)         # through the arena
            ccl.send(np.arange(3, dtype=np.int32), 1)
            return None
        for shape, dtype in (((4, 5), np.float32), ((5,), np.float32), ((100_000,), np.int8)):
            with pytest.raises(CollectiveError) as info:
                ccl.recv(shape, dtype, 0)
            errors.append(str(info.value))
        return errors, ccl.recv((3,), np.int32, 0)
    _, (errors, last) = run_threads(2, body)
    assert errors[0].startswith("ccl.recv: worker 1 expected a float32 array of shape (4, 5) from worker 0, but "
                                "worker 0 sent a float32 array of shape (4, 6) (its message 0 to worker 1; dropped")
    assert "expected a float32 array of shape (5,) from worker 0, but worker 0 sent a float64 array of shape (5,)" \
        in errors[1]
    assert "shape (100000,) from worker 0, but worker 0 sent a int8 array of shape (200000,)" in errors[2]
    same(last, np.arange(3, dtype=np.int32))          # the next message arrives intact


def test_bad_arguments_on_the_sender_raise_on_both_sides():
    def body(r):
        if r == 0:
            with pytest.raises(CollectiveError, match=r"^ccl.send: invalid arguments on worker 0: cannot send an "
                                                      r"array of dtype object"):
                ccl.send(np.array([object()]), 1)
            with pytest.raises(CollectiveError, match="gave dst 0, itself"):
                ccl.send(np.ones(2), 0)
            with pytest.raises(CollectiveError, match="gave dst 5, which is not a worker of this group of 2"):
                ccl.send(np.ones(2), 5)
            ccl.send(np.ones(2), 1)
            return None
        with pytest.raises(CollectiveError) as info:
            ccl.recv((1,), np.float32, 0)
        return str(info.value), ccl.recv((2,), np.float64, 0)
    _, (message, after) = run_threads(2, body)
    assert message.startswith("ccl.recv: worker 1 expected a float32 array of shape (1,) from worker 0, which could "
                              "not send it: invalid arguments on worker 0: cannot send an array of dtype object")
    same(after, np.ones(2))


def test_recv_without_a_send_times_out_and_names_what_waits_elsewhere():
    """Worker 0 sends to 2 while 1 waits for 0: 1 times out (never hangs), saying that 0
    has a message out to 2, and 2 still receives it."""
    def body(r):
        if r == 0:
            ccl.send(np.ones(3), 2)
        elif r == 1:
            t0 = time.monotonic()
            with pytest.raises(CollectiveError) as info:
                ccl.recv((3,), np.float64, 0)
            return str(info.value), time.monotonic() - t0
        else:
            time.sleep(0.8)                    # after worker 1 has given up
            return ccl.recv((3,), np.float64, 0)
    _, (message, waited), got = run_threads(3, body, timeout_s=0.4)
    assert message.startswith("ccl.recv: worker 1 timed out after 0.4 s waiting for a float64 array of shape (3,) "
                              "from worker 0, which has sent nothing more to it (did worker 0 call "
                              "ccl.send(x, 1)?); worker 0 has sent 1 message(s) to worker 2 that are not received")
    assert waited < 10
    same(got, np.ones(3))


def test_recv_from_the_wrong_peer_names_the_one_that_sent():
    def body(r):
        if r == 2:
            ccl.send(np.zeros((2, 2), np.int64), 0)
        elif r == 0:
            with pytest.raises(CollectiveError) as info:
                ccl.recv((2, 2), np.int64, 1)
            return str(info.value), ccl.recv((2, 2), np.int64, 2)
    (message, got), _, _ = run_threads(3, body, timeout_s=0.3)
    assert ("worker 2 has sent 1 message(s) to worker 0 that it has not received (the first: a int64 array of "
            "shape (2, 2); was src=2 meant?)") in message
    same(got, np.zeros((2, 2), np.int64))


def test_send_to_a_full_mailbox_times_out():
    """8 messages wait in a mailbox at most; the ninth send waits for the receiver and
    gives up after the timeout, naming it."""
    def body(r):
        if r == 0:
            for _ in range(8):
                ccl.send(np.ones(1), 1)
            with pytest.raises(CollectiveError) as info:
                ccl.send(np.ones(1), 1)
            return str(info.value), ccl.communicator().unreceived(1)
        time.sleep(1.0)
        return [ccl.recv((1,), np.float64, 0)[0] for _ in range(8)]
    (message, unreceived), got = run_threads(2, body, timeout_s=0.3)
    assert message.startswith("ccl.send: worker 0 timed out after 0.3 s sending a float64 array of shape (1,) to "
                              "worker 1, waiting for it to receive earlier messages (8 are not received)")
    assert unreceived == 8 and got == [1.0] * 8


def test_global_table_of_peers_and_its_errors():
    def body(r):
        a = ccl.send(np.full(2, r), (1, -1))       # worker 0 sends, worker 1 does nothing
        b = ccl.recv((2,), np.int64, (None, 0))
        with pytest.raises(CollectiveError, match=r"given dst=\(1, 0, 0\), one entry per worker, but the group "
                                                  r"has 2 workers"):
            ccl.send(np.ones(1), (1, 0, 0))
        with pytest.raises(CollectiveError, match="dst must be a worker id"):
            ccl.send(np.ones(1), "1")
        return a, b
    (a0, b0), (a1, b1) = run_threads(2, body)
    assert a0 is None and a1 is None and b0 is None
    same(b1, np.zeros(2, np.int64))


# ---------------------------------------------------------------- processes


def _waiting_receiver(rank, group, q):
    set_worker_context(WorkerContext(worker_id=rank, num_workers=2), process_wide=True)
    try:
        ccl.init("shm", group, timeout_s=60)
        q.put((rank, "ready", os.getpid()))
        if rank == 1:
            t0 = time.monotonic()
            try:
                ccl.recv((4,), np.float32, 0)
                q.put((rank, "received", 0.0))
            except CollectiveError as e:
                q.put((rank, str(e), time.monotonic() - t0))
        else:
            time.sleep(60)
    except BaseException as e:  # noqa: BLE001
        q.put((rank, repr(e), 0.0))


def test_a_killed_sender_ends_the_wait_at_once():
    """The receiver's sender dies (SIGKILL) while it waits: recv raises within moments,
    well before its 60 s timeout, saying so."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    group = f"kill-{uuid.uuid4().hex[:12]}"
    procs = [ctx.Process(target=_waiting_receiver, args=(r, group, q)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        ready = dict((r, pid) for r, _, pid in (q.get(timeout=30) for _ in range(2)))
        time.sleep(0.3)
        os.kill(ready[0], signal.SIGKILL)
        rank, message, waited = q.get(timeout=30)
        assert rank == 1
        assert message == "ccl.recv: worker 1 gave up waiting for a float32 array of shape (4,) from worker 0: " \
                          "the process of worker 0 has died"
        assert waited < 30
    finally:
        for p in procs:
            p.kill()
            p.join(timeout=10)


# ---------------------------------------------------------------- sessions


@pytest.mark.parametrize("world", [2, 4])
def test_session_transfers_and_ring(world):
    with disco.ProcessSession(world) as sess:
        sess.init_ccl("shm")
        send, recv = sess.get_global_func("ccl.send"), sess.get_global_func("ccl.recv")
        full = np.arange(world * 3 * 1000, dtype=np.float32).reshape(world, 3, 1000)
        x = sess.scatter(full)                             # worker w holds full[w:w+1]
        # worker 0 -> the last worker
        send(x, (world - 1,) + (-1,) * (world - 1))
        y = recv((1, 3, 1000), "float32", (-1,) * (world - 1) + (0,))
        np.testing.assert_array_equal(y.fetch(world - 1), full[:1])
        assert y.fetch(0) is None
        # a ring: w -> w + 1
        send(x, tuple((w + 1) % world for w in range(world)))
        z = recv((1, 3, 1000), "float32", tuple((w - 1) % world for w in range(world)))
        for w in range(world):
            np.testing.assert_array_equal(z.fetch(w), full[(w - 1) % world:][:1])
        # a mismatch reaches the controller from the receiver, and the group goes on
        send(x, (1,) + (-1,) * (world - 1))
        recv((3, 1000), "float32", (-1, 0) + (-1,) * (world - 2))
        with pytest.raises(WorkerError, match=r"ccl.recv: worker 1 expected a float32 array of shape \(3, 1000\) "
                                              r"from worker 0, but worker 0 sent a float32 array of shape "
                                              r"\(1, 3, 1000\)"):
            sess.sync()
        send(x, (1,) + (-1,) * (world - 1))
        again = recv((1, 3, 1000), "float32", (-1, 0) + (-1,) * (world - 2))
        np.testing.assert_array_equal(again.fetch(1), full[:1])


def test_spmd_send_recv_between_two_stages():
    """The runtime functions compiled pipeline transfers call: stage 0 on workers 0-1 sends
    its shards to stage 1 on workers 2-3 (peers computed from the two meshes), with the
    calls counted in spmd.collective_stats."""
    with disco.ProcessSession(4) as sess:
        sess.init_ccl("shm")
        sess.import_module("disco.spmd")
        full = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
        x = sess.scatter(full)
        sess.get_global_func("spmd.send")(x, (0, 1), (2, 3))
        y = sess.get_global_func("spmd.recv")((1, 6), "float32", (0, 1), (2, 3))
        assert y.fetch(0) is None
        np.testing.assert_array_equal(y.fetch(2), full[0:1])
        np.testing.assert_array_equal(y.fetch(3), full[1:2])
        stats = sess.get_global_func("spmd.collective_stats")()
        assert stats.fetch(0)["send"][0] == 1 and stats.fetch(3)["recv"][0] == 1
        sess.get_global_func("spmd.send")(x, (0, 1), (4, 5))
        with pytest.raises(WorkerError, match=r"R.ccl.send pairs senders \[0, 1\] with receivers \[4, 5\], which "
                                              r"are not workers of this session of 4"):
            sess.sync()

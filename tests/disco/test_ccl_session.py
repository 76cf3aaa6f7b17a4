"""The `ccl.*` global functions through real sessions: `sess.init_ccl("shm")`, then
collectives called on DRefs, results fetched and compared with numpy."""
from __future__ import annotations

import numpy as np
import pytest

import disco
from disco.errors import WorkerError
from hang_guard import error_of

pytestmark = pytest.mark.timeout(60)

WORLD = 2


@pytest.fixture(params=["ThreadedSession", "ProcessSession"])
def sess(request):
    s = getattr(disco, request.param)(WORLD)
    try:
        s.import_module("worker_funcs")
        s.init_ccl("shm")
        yield s
    finally:
        s.shutdown()


def test_collectives_on_drefs(sess):
    rng = np.random.default_rng(0)
    full = rng.standard_normal((WORLD * 6, 1001)).astype(np.float32)  # worker i holds rows 6i..6i+5
    parts = np.split(full, WORLD)
    x = sess.scatter(full)

    y = sess.get_global_func("ccl.allreduce")(x, "sum")
    for w in range(WORLD):
        np.testing.assert_allclose(y.fetch(worker=w), sum(parts), rtol=1e-5, atol=1e-5)

    m = sess.get_global_func("ccl.allreduce")(x, "max")
    np.testing.assert_array_equal(m.fetch(worker=1), np.maximum(*parts))

    g = sess.get_global_func("ccl.allgather")(x, 1)
    np.testing.assert_array_equal(g.fetch(worker=1), np.concatenate(parts, axis=1))

    rs = sess.get_global_func("ccl.reduce_scatter")(x, "sum", 0)
    for w in range(WORLD):
        np.testing.assert_allclose(rs.fetch(worker=w), np.split(sum(parts), WORLD)[w], rtol=1e-5, atol=1e-5)

    b = sess.get_global_func("ccl.broadcast_from_worker0")(x)
    np.testing.assert_array_equal(b.fetch(worker=1), parts[0])

    s = sess.get_global_func("ccl.scatter_from_worker0")(x, 0)
    np.testing.assert_array_equal(s.fetch(worker=1), np.split(parts[0], WORLD)[1])

    gt = sess.get_global_func("ccl.gather_to_worker0")(x, 0)
    np.testing.assert_array_equal(gt.fetch(worker=0), full)
    assert gt.fetch(worker=1) is None

    sess.get_global_func("ccl.barrier")()
    sess.sync()


def test_collective_error_reaches_controller(sess):
    sess.get_global_func("ccl.allreduce")(np.arange(3, dtype=np.uint8), "sum")
    with pytest.raises(WorkerError, match="ccl.allreduce: worker 0 gave dtype uint8"):
        sess.sync()


def test_collectives_on_inline_arrays(sess):
    """Arguments sent by value (every worker gets the same array)."""
    x = np.arange(7, dtype=np.int64)
    y = sess.get_global_func("ccl.allreduce")(x, "sum")
    g = sess.get_global_func("ccl.allgather")(x.astype(np.float16), 0)
    for w in range(WORLD):
        np.testing.assert_array_equal(y.fetch(worker=w), x * WORLD)
        np.testing.assert_array_equal(g.fetch(worker=w), np.tile(x, WORLD).astype(np.float16))


@pytest.mark.parametrize("case", ["axis", "out"])
def test_bad_arguments_on_one_worker_raise_on_every_worker(sess, case):
    """Arguments only one worker cannot use (here worker 0's axis, worker 1's out=): every
    worker raises the same error at once (its peers do not wait for the collective's
    30 s timeout), and the group stays usable."""
    if case == "axis":  # worker 0 holds shape (4,), worker 1 (4, 2): axis 1 exists on worker 1 only
        x = sess.get_global_func("test.ones_per_worker")(((4,), (4, 2)))
        sess.get_global_func("ccl.allgather")(x, 1)
        expected = "ccl.allgather: invalid arguments on worker 0: axis 1 is out of range for an array of shape (4,)"
    else:
        sess.get_global_func("test.allreduce_into")(np.ones(3, np.float32), ((3,), (4,)))
        expected = ("ccl.allreduce: invalid arguments on worker 1: out= must be a C-contiguous numpy array of "
                    "shape (3,) and dtype float32, given an array of shape (4,) and dtype float32")
    error = error_of(sess.sync, guard_s=15.0)  # well below the collective timeout
    assert isinstance(error, WorkerError), f"expected WorkerError, got {error!r}"
    assert expected in str(error)
    assert "(workers [0, 1] failed)" in str(error)  # raised on both, reported once
    assert "did not arrive" not in str(error)

    a = np.arange(6, dtype=np.float32)
    y = sess.get_global_func("ccl.allreduce")(sess.get_global_func("test.times_worker")(sess.broadcast(a)), "sum")
    for w in range(WORLD):
        np.testing.assert_array_equal(y.fetch(worker=w), a * sum(range(1, WORLD + 1)))


def test_init_ccl_options_and_values_made_on_worker0_reach_every_worker(sess):
    """A backend's session_setup runs on the controller (NCCL: worker 0's unique id,
    handed to every worker through the session); the user's options go along."""
    import os

    import worker_funcs  # noqa: F401  (registers the test_token backend in the controller)
    sess.init_ccl("test_token", seed=7, label="tp")
    state = sess.get_global_func("test.ccl_state")()
    got = [state.fetch(worker=w) for w in range(WORLD)]
    worker0_pid = got[0][1][0]
    assert got == [("test_token", (worker0_pid, 7), "tp")] * WORLD
    assert (worker0_pid == os.getpid()) == isinstance(sess, disco.ThreadedSession)
    sess.init_ccl("shm")                     # and back: the shm collectives work again
    x = sess.scatter(np.arange(2 * WORLD, dtype=np.float32).reshape(WORLD, 2))
    np.testing.assert_array_equal(sess.get_global_func("ccl.allreduce")(x, "sum").fetch(worker=1),
                                  np.arange(2 * WORLD, dtype=np.float32).reshape(WORLD, 2).sum(0, keepdims=True))


def test_init_ccl_unknown_backend_names_the_known_ones(sess):
    with pytest.raises(disco.errors.CollectiveError, match=r"init_ccl: unknown backend 'nope'; expected one "
                                                           r"of \[.*'mpi', 'nccl'.*'shm'.*\]"):
        sess.init_ccl("nope")


def test_default_backend_is_shm_on_one_host_nccl_on_gpu_workers_and_shm_on_a_shared_gpu(sess):
    assert sess.default_ccl_backend() == "shm"
    sess.init_ccl()                                      # the default: shm collectives work
    x = sess.scatter(np.ones((WORLD, 3), np.float32))
    np.testing.assert_array_equal(sess.get_global_func("ccl.allreduce")(x, "sum").fetch(worker=0),
                                  np.full((1, 3), WORLD, np.float32))
    sess.get_global_func("test.set_device")("cuda:{w}")  # as disco.cuda.bind_device records it
    assert sess.default_ccl_backend() == "nccl"
    sess.get_global_func("test.set_device")("cuda:0")    # every worker on one GPU: NCCL refuses that
    assert sess.default_ccl_backend() == "shm"
    sess.get_global_func("test.set_device")("cpu")

"""NCCL point-to-point (`ccl.send` / `ccl.recv` of the nccl backend) through a
ThreadedSession whose workers are bound to their GPUs (on the stand-in cupy: threads of
one process, several stand-in devices). Results are checked against the arrays sent."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def sess(monkeypatch):
    import disco
    from disco.cuda import bind_session_devices
    monkeypatch.setenv("DISCO_STANDIN_GPUS", "3")
    with disco.ThreadedSession(3) as s:
        bind_session_devices(s, [0, 1, 2])
        s.import_module("gpu_worker_funcs")
        s.init_ccl("nccl")
        yield s


def _arrays():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((5, 7)).astype(np.float32), np.arange(1000, dtype=np.int64), np.zeros((0, 3)),
            (rng.standard_normal(1 << 18) * 8).astype(np.float16), np.array(2.5)]


def test_stage_to_stage_transfers(sess):
    """Worker 0 -> 2 and 1 -> 2, several dtypes and sizes (0 bytes, 2 MB), in order;
    results are device arrays on the receiver."""
    send, recv = sess.get_global_func("ccl.send"), sess.get_global_func("ccl.recv")
    to_host = sess.get_global_func("test.gpu.to_host")
    on_device = sess.get_global_func("test.gpu.is_device_array")
    for x in _arrays():
        send(x, (2, -1, -1))
        send(x * 2 if x.dtype != np.int64 else x + 1, (-1, 2, -1))
        a = recv(x.shape, x.dtype.name, (-1, -1, 0))
        b = recv(x.shape, x.dtype.name, (-1, -1, 1))
        np.testing.assert_array_equal(to_host(a).fetch(2), x)
        np.testing.assert_array_equal(to_host(b).fetch(2), x * 2 if x.dtype != np.int64 else x + 1)
        assert on_device(a).fetch(2) and a.fetch(0) is None


def test_mismatch_and_bad_sender_raise_on_the_receiver_and_the_pair_goes_on(sess):
    from disco.errors import WorkerError
    send, recv = sess.get_global_func("ccl.send"), sess.get_global_func("ccl.recv")
    send(np.ones((4, 6), np.float32), (1, -1, -1))
    recv((4, 5), "float32", (-1, 0, -1))
    with pytest.raises(WorkerError, match=r"ccl.recv: worker 1 expected a float32 array of shape \(4, 5\) from "
                                          r"worker 0, but worker 0 sent a float32 array of shape \(4, 6\)"):
        sess.sync()
    send(np.ones((1,) * 12, np.float32), (1, -1, -1))
    recv((1,), "float32", (-1, 0, -1))
    with pytest.raises(WorkerError, match=r"worker 1 expected a float32 array of shape \(1,\) from worker 0, which "
                                          r"could not send it: invalid arguments on worker 0: cannot send an array "
                                          r"of dtype float32 and 12 dims"):
        sess.sync()
    send(np.arange(3.0), (1, -1, -1))
    y = recv((3,), "float64", (-1, 0, -1))
    np.testing.assert_array_equal(sess.get_global_func("test.gpu.to_host")(y).fetch(1), np.arange(3.0))


def test_recv_without_a_send_raises_instead_of_hanging(sess, monkeypatch):
    from cupy.cuda import nccl

    from disco.errors import WorkerError
    if getattr(nccl, "TIMEOUT_S", None) is not None:      # the stand-in's stand-in for a GPU hang
        monkeypatch.setattr(nccl, "TIMEOUT_S", 0.5)
    sess.init_ccl("nccl", timeout_s=0.5)
    sess.get_global_func("ccl.recv")((2,), "float32", (-1, 0, -1))
    with pytest.raises(WorkerError, match=r"ccl.recv|nccl recv") as info:
        sess.sync()
    assert "worker 1" in str(info.value)

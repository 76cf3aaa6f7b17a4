"""The `ccl.*` global functions through real sessions: `sess.init_ccl("shm")`, then
collectives called on DRefs, results fetched and compared with numpy."""
from __future__ import annotations

import numpy as np
import pytest

import disco
from disco.errors import WorkerError

pytestmark = pytest.mark.timeout(60)

WORLD = 2


@pytest.fixture(params=["ThreadedSession", "ProcessSession"])
def sess(request):
    s = getattr(disco, request.param)(WORLD)
    try:
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

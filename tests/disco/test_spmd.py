"""disco.spmd, the runtime side of R.ccl.*: every collective over one axis of a 2x2 mesh,
through group communicators and through the all-gather fallback, against numpy
reductions of the group members' arrays."""
from __future__ import annotations

import numpy as np
import pytest

import disco
from disco import spmd

MESH = (2, 2)


def _array_of(seed: int, w: int) -> np.ndarray:
    """Worker w's array: a (4, 6) int-valued float32 array that differs per worker."""
    return np.random.default_rng(seed + w).integers(-3, 4, size=(4, 6)).astype(np.float32)


@disco.register_func("test_spmd.value", override=True)
def _value(seed: int) -> np.ndarray:
    return _array_of(seed, disco.worker_id())


def _values(seed):
    """Every worker's array, as the reference sees them."""
    return [_array_of(seed, w) for w in range(4)]


@pytest.fixture(params=["groups", "fallback"])
def sess(request):
    with disco.ThreadedSession(4) as s:
        s.init_ccl("shm")
        if request.param == "groups":
            made = s.get_global_func("spmd.init_groups")("shm", f"test-spmd-{id(s)}", list(MESH))
            assert [made.fetch(w) for w in range(4)] == [2] * 4
        yield s


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("op, ref", [("sum", np.sum), ("prod", np.prod), ("min", np.min),
                                     ("max", np.max)])
def test_allreduce_over_one_mesh_axis(sess, axis, op, ref):
    x = sess.get_global_func("test_spmd.value")(11)
    y = sess.get_global_func("spmd.allreduce")(x, op, list(MESH), axis)
    vals = _values(11)
    for w in range(4):
        group = spmd.group_members(w, MESH, axis)
        np.testing.assert_array_equal(y.fetch(w), ref(np.stack([vals[g] for g in group]), axis=0))


@pytest.mark.parametrize("axis", [0, 1])
def test_allgather_and_reduce_scatter_over_one_mesh_axis(sess, axis):
    x = sess.get_global_func("test_spmd.value")(5)
    gathered = sess.get_global_func("spmd.allgather")(x, 1, list(MESH), axis)
    scattered = sess.get_global_func("spmd.reduce_scatter")(x, 0, "sum", list(MESH), axis)
    vals = _values(5)
    for w in range(4):
        group = spmd.group_members(w, MESH, axis)
        np.testing.assert_array_equal(gathered.fetch(w), np.concatenate([vals[g] for g in group], 1))
        total = np.sum([vals[g] for g in group], axis=0)
        i = spmd.mesh_coordinate(w, MESH)[axis]
        np.testing.assert_array_equal(scattered.fetch(w), total[i * 2:(i + 1) * 2])


def test_masked_take_gives_zero_rows_for_other_workers_ids():
    table = np.arange(12, dtype=np.float32).reshape(6, 2)      # the global table, 6 rows
    ids = np.array([0, 5, 2, 3], dtype=np.int64)
    with disco.ThreadedSession(2) as s:
        local = s.scatter(table)                               # 3 rows each
        out = s.get_global_func("spmd.masked_take")(local, ids, [2], 0)
        mine = [ids < 3, ids >= 3]
        for w in range(2):
            want = np.where(mine[w][:, None], table[ids], 0)
            np.testing.assert_array_equal(out.fetch(w), want)


def test_collective_stats_count_each_kind_on_every_worker():
    with disco.ThreadedSession(2) as s:
        s.init_ccl("shm")
        x = s.scatter(np.ones((2, 4), np.float32))
        s.get_global_func("spmd.collective_stats")(True)        # reset
        for _ in range(3):
            s.get_global_func("spmd.allreduce")(x, "sum", [2], 0)
        s.get_global_func("spmd.allgather")(x, 0, [2], 0)
        s.get_global_func("spmd.local_slice")(x, 1, [2], 0)      # not a collective
        stats = s.get_global_func("spmd.collective_stats")(True)
        for w in range(2):
            got = stats.fetch(w)
            assert {k: c for k, (c, _) in got.items()} == {"allreduce": 3, "allgather": 1}
            assert all(sec >= 0 for _, sec in got.values())
        again = s.get_global_func("spmd.collective_stats")()
        assert again.fetch(0) == {}                              # reset by the previous call


@disco.register_func("test_spmd.sub_group_sum", override=True)
def _sub_group_sum(backend: str, name: str, members, seed: int):
    """(all-reduce of test_spmd.value over a sub-group of `members` made here, its rank,
    its size) on the members; None on the others. A CollectiveError comes back as text."""
    from disco import ccl
    from disco.errors import CollectiveError
    if disco.worker_id() not in members and backend == "shm":
        return None
    try:
        comm = ccl.sub_group(backend, name, members, secret="s")
    except CollectiveError as e:
        return str(e)
    try:
        return comm.allreduce(_array_of(seed, disco.worker_id()), "sum", None), comm.rank, comm.world
    finally:
        comm.close()


def test_sub_group_communicator_of_some_workers_and_its_errors():
    from disco import ccl
    with disco.ThreadedSession(3) as s:
        f = s.get_global_func("test_spmd.sub_group_sum")
        got = f("shm", f"test-sub-{id(s)}", [2, 0], 7)
        total, rank, world = got.fetch(2)
        np.testing.assert_array_equal(total, _array_of(7, 0) + _array_of(7, 2))
        assert (rank, world) == (0, 2) and got.fetch(0)[1:] == (1, 2) and got.fetch(1) is None
        ccl.register_backend("test-nosub", lambda *a, **k: None)
        try:
            assert "worker 0 is not one of the members [1, 2]" in f("test-nosub", "x", [1, 2], 0).fetch(0)
            assert "backend 'test-nosub' makes no communicators for part of the workers [0, 1, 2]" in \
                f("test-nosub", "x", [0, 1, 2], 0).fetch(0)
        finally:
            ccl._BACKENDS.pop("test-nosub")


@disco.register_func("test_spmd.specialized_allreduce", override=True)
def _specialized_allreduce(seed: int, mesh, axis: int, op: str, varies: bool):
    """On a worker: what a VM plan would call for spmd.allreduce(x, op, mesh, axis) (None
    where the plan keeps the general function), run on 2 x, 3 x and on a (3,) array of
    another shape, with the collective_stats of those calls."""
    x = _array_of(seed, disco.worker_id())
    fast = spmd.allreduce.specialize([x, op, list(mesh), axis], [True, varies, False, False])
    if fast is None:
        return None
    spmd.collective_stats(True)
    outs = [fast(k * x, op, list(mesh), axis) for k in (2, 3)]
    outs.append(fast(np.full(3, disco.worker_id() + 1.0, np.float32), op, list(mesh), axis))
    return outs, {k: c for k, (c, _) in spmd.collective_stats(True).items()}


@pytest.mark.parametrize("op, ref", [("sum", np.sum), ("max", np.max)])
def test_allreduce_specialized_for_a_plan_matches_the_reduction(op, ref):
    """The plan's all-reduce over the whole mesh (shm's allreduce_fn: checks made once)
    gives the reduction of every worker's array, counts in collective_stats like the
    general function, and takes arrays of another shape through the general path."""
    with disco.ThreadedSession(2) as s:
        s.init_ccl("shm")
        got = s.get_global_func("test_spmd.specialized_allreduce")(7, [2], 0, op, False)
        vals = [_array_of(7, w) for w in range(2)]
        for w in range(2):
            outs, stats = got.fetch(w)
            for k, out in zip((2, 3), outs):
                np.testing.assert_array_equal(out, ref(np.stack([k * v for v in vals]), axis=0))
            np.testing.assert_array_equal(outs[2], ref(np.stack([np.full(3, 1.0), np.full(3, 2.0)]), axis=0))
            assert stats == {"allreduce": 3}


def test_allreduce_not_specialized_for_groups_or_varying_arguments(sess):
    """A sub-group of the 2x2 mesh, or an op that is not the recorded one on every call:
    the plan keeps the general function."""
    for mesh, axis, varies in ((MESH, 0, False), ((4,), 0, True)):
        got = sess.get_global_func("test_spmd.specialized_allreduce")(1, list(mesh), axis, "sum", varies)
        assert [got.fetch(w) for w in range(4)] == [None] * 4


@disco.register_func("test_spmd.masked_embedding_both_ways", override=True)
def _masked_embedding_both_ways(table, ids, fmt):
    """On a worker: spmd.masked_embedding and what a VM plan calls for it (its `specialize`)."""
    fast = spmd.masked_embedding.specialize([table, ids, [2], 0, fmt], [False, True, False, False, False])
    return spmd.masked_embedding(table, ids, [2], 0, fmt), fast(table, ids, [2], 0, fmt)


@pytest.mark.parametrize("fmt", ["bfloat16", "q8_0", "q4_1"])
def test_masked_embedding_reads_rows_of_this_workers_slice(fmt):
    """Each worker's rows of a vocabulary-parallel table stored in `fmt`, dequantized as
    gguf does (weight_formats.dequantize, the reference); zero rows for ids of the other
    worker's slice. The plan's specialized call gives the same."""
    from disco.weight_formats import dequantize, quantize
    table = np.random.default_rng(4).standard_normal((8, 64)).astype(np.float32)
    stored = quantize(table, fmt)
    ids = np.array([[0, 7], [3, 4]], np.int64)
    with disco.ThreadedSession(2) as s:
        got = s.get_global_func("test_spmd.masked_embedding_both_ways")(s.scatter(stored), ids, fmt)
        for w in range(2):
            mine = (ids >= 4 * w) & (ids < 4 * w + 4)
            want = np.where(mine[..., None], dequantize(stored, fmt).astype(np.float32)[ids], 0)
            general, fast = got.fetch(w)
            np.testing.assert_allclose(general, want, rtol=2 ** -23, atol=0)
            np.testing.assert_array_equal(fast, general)

"""Tensor-parallel execution end to end: script with placements -> compiler.build ->
sess.load_module -> dmod["main"](numpy) on ThreadedSession and ProcessSession with 1, 2
and 4 workers, each result against a single-device numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

import compiler
import disco
from compiler import script
from compiler.distributed.lowering import DistributedLowering
from compiler.ir import graph as G
from compiler.ir.visitor import post_order_visit
from disco.errors import SessionError

import _tp_models as M

KINDS = {"threaded": disco.ThreadedSession, "process": disco.ProcessSession}
_BUILT: dict = {}


def build(src: str):
    if src not in _BUILT:
        _BUILT[src] = compiler.build(script.parse(src))
    return _BUILT[src]


@pytest.fixture(scope="module", params=[(kind, k) for kind in KINDS for k in (1, 2, 4)],
                ids=lambda p: f"{p[0]}-{p[1]}")
def sess(request):
    kind, k = request.param
    s = KINDS[kind](k)
    yield s
    s.shutdown()


def collectives(src: str) -> list[str]:
    low = DistributedLowering(script.parse(src))
    found = []
    post_order_visit(low["main"], lambda n: found.append(n.op.name) if isinstance(n, G.Call) and
                     isinstance(n.op, G.Op) and n.op.name.startswith("relax.ccl.") else None)
    return found


def rand(rng, *shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def test_megatron_mlp(sess):
    k = sess.num_workers
    src = M.mlp(k)
    assert collectives(src) == ["relax.ccl.allreduce"]      # activations never gathered
    rng = np.random.default_rng(1)
    w1, w2 = rand(rng, 16, 32), rand(rng, 32, 16)
    dmod = sess.load_module(build(src))
    weights = dmod.place({"w1": w1, "w2": w2})                  # sent once
    np.testing.assert_array_equal(weights["w1"].fetch_local(k - 1), w1[:, -32 // k:])
    np.testing.assert_array_equal(weights["w2"].fetch(), w2)
    for n in (3, 5):                                            # symbolic sequence length
        x = rand(rng, n, 16)
        y = dmod["main"](x, weights["w1"], weights["w2"]).fetch()
        np.testing.assert_allclose(y, M.mlp_ref(x, w1, w2), rtol=1e-4, atol=1e-5)


def test_attention_heads_sharded(sess):
    src = M.attention(sess.num_workers)
    assert collectives(src) == ["relax.ccl.allreduce"]
    rng = np.random.default_rng(2)
    args = [rand(rng, 6, 16)] + [rand(rng, 16, 16) for _ in range(4)]
    y = sess.load_module(build(src))["main"](*args).fetch()
    np.testing.assert_allclose(y, M.attention_ref(*args), rtol=1e-4, atol=1e-5)


def test_llama_layer_two_allreduces(sess):
    src = M.llama(sess.num_workers)
    assert collectives(src) == ["relax.ccl.allreduce", "relax.ccl.allreduce"]
    inputs = M.llama_inputs(np.random.default_rng(3), 5)
    y = sess.load_module(build(src))["main"](*inputs.values()).fetch()
    np.testing.assert_allclose(y, M.llama_ref(**inputs), rtol=1e-4, atol=1e-4)


def test_vocab_parallel_embedding_and_lm_head(sess):
    src = M.vocab(sess.num_workers)
    assert collectives(src) == ["relax.ccl.masked_take", "relax.ccl.allreduce",
                                "relax.ccl.allgather"]
    rng = np.random.default_rng(4)
    ids = np.array([0, 15, 7, 8, 3, 12, 7], np.int64)           # rows of every shard, repeats
    table, wh = rand(rng, 16, 8), rand(rng, 8, 16)
    y = sess.load_module(build(src))["main"](ids, table, wh).fetch()
    np.testing.assert_allclose(y, table[ids] @ wh, rtol=1e-5, atol=1e-6)


def test_sharded_result_is_gathered_and_batch_divisibility_checked(sess):
    k = sess.num_workers
    rng = np.random.default_rng(5)
    dmod = sess.load_module(build(M.rows(k)))
    x, w = rand(rng, 8, 8), rand(rng, 8, 8)
    out = dmod["main"](x, w)
    np.testing.assert_allclose(out.fetch(), np.maximum(x @ w, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.fetch_local(k - 1), np.maximum(x @ w, 0)[-8 // k:],
                               rtol=1e-5, atol=1e-6)
    if k > 1:
        with pytest.raises(SessionError, match=rf"parameter 'x'.*dim 0 of shape \(9, 8\) is 9, which "
                                               rf"is not divisible by the {k} devices"):
            dmod["main"](rand(rng, 9, 8), w)


def test_mesh_2x2(sess):
    if sess.num_workers != 4:
        pytest.skip("a 2x2 mesh needs 4 workers")
    rng = np.random.default_rng(6)
    x, w = rand(rng, 8, 16), rand(rng, 16, 12)
    gathered, sharded = sess.load_module(build(M.mesh2x2()))["main"](x, w)
    want = np.exp(x @ w)
    np.testing.assert_allclose(gathered.fetch(), want, rtol=1e-5)
    np.testing.assert_allclose(sharded.fetch(), want, rtol=1e-5)
    # worker 3 sits at mesh coordinate (1, 1): rows 4..8, columns 6..12
    np.testing.assert_allclose(sharded.fetch_local(3), want[4:, 6:], rtol=1e-5)
    # each worker has a communicator for its row and one for its column (shm)
    groups = sess.get_global_func("spmd.group_count")()
    assert [groups.fetch(i) for i in range(4)] == [2, 2, 2, 2]


def test_mesh_size_mismatch_names_both_numbers(sess):
    other = 2 if sess.num_workers != 2 else 4
    with pytest.raises(SessionError, match=rf"mesh of {other} devices but the session has "
                                           rf"{sess.num_workers} workers"):
        sess.load_module(build(M.mlp(other)))


def test_every_conversion(sess):
    src = M.conversions(sess.num_workers)
    assert collectives(src) == ["relax.ccl.allgather", "relax.ccl.local_slice", "relax.ccl.allgather",
                                "relax.ccl.reduce_scatter", "relax.ccl.allreduce",
                                "relax.ccl.local_slice"]
    rng = np.random.default_rng(7)
    x, w = rand(rng, 8, 12), rand(rng, 12, 8)
    c, e, mr, f = sess.load_module(build(src))["main"](x, w)
    b = np.exp(x)
    np.testing.assert_allclose(c.fetch(), b, rtol=1e-6)
    np.testing.assert_allclose(e.fetch(), b @ w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mr.fetch(), b.mean(1), rtol=1e-5)
    np.testing.assert_allclose(f.fetch(), b, rtol=1e-6)


@pytest.mark.parametrize("model,placements", [
    (M.mlp_weights_annotated, ["R", "S[1]", "S[0]"]),
    (M.mlp_activation_annotated, ["R", "S[1]", "S[0]"]),
])
def test_mlp_from_annotations(sess, model, placements):
    pytest.importorskip("compiler.distributed.propagate")
    k = sess.num_workers
    src = model(k)
    assert collectives(src) == ["relax.ccl.allreduce"]
    ex = build(src)
    got = [p["placement"] for p in ex.metadata["distributed"]["functions"]["main"]["params"]]
    assert got == placements
    rng = np.random.default_rng(8)
    x, w1, w2 = rand(rng, 4, 16), rand(rng, 16, 32), rand(rng, 32, 16)
    y = sess.load_module(ex)["main"](x, w1, w2).fetch()
    np.testing.assert_allclose(y, M.mlp_ref(x, w1, w2), rtol=1e-4, atol=1e-5)


def test_module_without_mesh_runs_replicated(sess):
    src = '''
@I.ir_module
class M:
    @R.function
    def main(x: R.Tensor(("n", 4), "float32"), y: R.Tensor(("n", 4), "float32")) -> R.Tensor(("n", 4), "float32"):
        n = T.int64()
        with R.dataflow():
            z = R.add(x, y)
            R.output(z)
        return z
'''
    rng = np.random.default_rng(9)
    x, y = rand(rng, 3, 4), rand(rng, 3, 4)
    ref = sess.load_module(build(src))["main"](x, sess.broadcast(y))     # a DRef passes through
    for w in range(sess.num_workers):
        np.testing.assert_allclose(ref.fetch(w), x + y, rtol=1e-6)


def test_mesh_2x2_without_group_communicators():
    """ccl_backend=None: the session's own communicator only, so collectives over one
    mesh axis take the all-gather path of disco.spmd."""
    rng = np.random.default_rng(10)
    x, w = rand(rng, 8, 16), rand(rng, 16, 12)
    with disco.ThreadedSession(4) as s:
        s.init_ccl("shm")
        gathered, sharded = s.load_module(build(M.mesh2x2()), ccl_backend=None)["main"](x, w)
        np.testing.assert_allclose(gathered.fetch(), np.exp(x @ w), rtol=1e-5)
        groups = s.get_global_func("spmd.group_count")()
        assert [groups.fetch(i) for i in range(4)] == [0, 0, 0, 0]


def test_runtime_split_of_symbolic_dim_reports_indivisible_size():
    src = M.redistribute("R", "S[0]", shape=("n", 4))     # rows split at run time
    with disco.ThreadedSession(2) as s:
        f = s.load_module(build(src))["main"]
        x = np.arange(24, dtype=np.float32).reshape(6, 4)
        np.testing.assert_array_equal(f(x).fetch(), x)
        with pytest.raises(disco.WorkerError, match=r"R.ccl.local_slice: dim 0 of shape \(5, 4\) is 5, "
                                                    r"not divisible by the 2 workers"):
            f(x[:5]).fetch()

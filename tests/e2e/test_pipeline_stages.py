"""A two-stage pipeline (issue 17, parts 2 and 4) compiled and run on 4 worker processes
(shm): stage 0 on workers 0-1 and stage 1 on workers 2-3, 2-way tensor parallelism in
each, checked against numpy."""
from __future__ import annotations

import numpy as np
import pytest

import disco
from compiler import build, script
from compiler.distributed import DistributedLowering

import _tp_models as M

pytestmark = pytest.mark.timeout(300)


def two_stage(batch=8, dim=128):
    return script.parse(M.pipeline_module_text(M.mlp_two_stages(dim, batch)))


def test_lowered_stage_programs_send_and_receive_between_the_meshes():
    out = DistributedLowering(two_stage())
    text = out.script()
    assert "def main__stage0(" in text and "def main__stage1(" in text and "def main(" not in text
    assert 'R.ccl.send(rd0, senders=[0, 1], receivers=[2, 3])' in text
    assert 'R.ccl.recv(R.shape([8, 128]), dtype="float32", senders=[0, 1], receivers=[2, 3])' in text
    # stage 0's all-reduce runs on workers 0-1, stage 1's on 2-3
    assert 'R.ccl.allreduce(y1, op="sum", mesh_shape=[2], mesh_axis=0, device_ids=[0, 1])' in text
    assert 'R.ccl.allreduce(y2, op="sum", mesh_shape=[2], mesh_axis=0, device_ids=[2, 3])' in text
    stages = out.attrs["distributed"]["functions"]["main"]["stages"]
    assert [(s["function"], list(s["device_ids"]), list(s["params"])) for s in stages] == [
        ("main__stage0", [0, 1], [0, 1, 2]), ("main__stage1", [2, 3], [3, 4])]


def test_two_stage_mlp_on_four_workers_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 128)).astype(np.float32)
    ws = [(rng.standard_normal((128, 128)) / 12).astype(np.float32) for _ in range(4)]
    ex = build(two_stage())
    with disco.ProcessSession(4) as sess:
        dmod = sess.load_module(ex, ccl_backend="shm")
        y = dmod["main"](x, *ws)
        got = y.fetch()
        np.testing.assert_allclose(got, M.mlp_two_stages_ref(x, *ws), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(y.fetch(worker=3), got, rtol=0, atol=0)
        assert y.fetch(worker=0) == ()          # stage 0 returns nothing (its value went by send)
        # a second call with other inputs: the pairs stay in step
        x2 = rng.standard_normal((8, 128)).astype(np.float32)
        np.testing.assert_allclose(dmod["main"](x2, *ws).fetch(), M.mlp_two_stages_ref(x2, *ws),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("meshes", [((1,), (2,)), ((2,), (1,)), ((1,), (3,))],
                         ids=["1-to-2", "2-to-1", "1-to-3"])
def test_stages_of_different_sizes_match_numpy(meshes):
    """A receiving mesh larger than the sending one (one sender serves several receivers:
    receiver j gets the value from sender j mod |senders|) and a smaller one (the extra
    senders send nothing), on 1 + 2, 2 + 1 and 1 + 3 worker processes."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 96)).astype(np.float32)
    ws = [(rng.standard_normal((96, 96)) / 10).astype(np.float32) for _ in range(4)]
    mod = script.parse(M.pipeline_module_text(M.mlp_two_stages(96, 8), meshes=meshes))
    text = DistributedLowering(mod).script()
    first, second = meshes[0][0], meshes[1][0]
    senders = [j % first for j in range(second)]
    receivers = [first + j for j in range(second)]
    assert f"senders={senders}, receivers={receivers}" in text
    with disco.ProcessSession(first + second) as sess:
        dmod = sess.load_module(build(mod), ccl_backend="shm")
        y = dmod["main"](x, *ws)
        np.testing.assert_allclose(y.fetch(), M.mlp_two_stages_ref(x, *ws), rtol=1e-4, atol=1e-4)
        for w in receivers:                      # every receiver computed the same result
            np.testing.assert_allclose(y.fetch(worker=w), y.fetch(), rtol=0, atol=0)

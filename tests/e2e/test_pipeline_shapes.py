"""A pipeline whose boundary value has a symbolic dim (the batch `n`, as the tokens of a
language model's step): the receiving stage's program learns it from the sender
(R.ccl.send with_shape, R.ccl.recv of -1 dims, R.match_cast), so one build serves every
n; run on 4 worker processes (shm) against numpy."""
from __future__ import annotations

import numpy as np
import pytest

import disco
from compiler import build, script
from compiler.distributed import DistributedLowering
from compiler.ir import assert_structural_equal

import _tp_models as M

pytestmark = pytest.mark.timeout(300)


def two_stage():
    return script.parse(M.pipeline_module_text(M.mlp_two_stages(128, "n")))


def test_receiving_stage_binds_the_symbolic_dim_from_what_it_receives():
    out = DistributedLowering(two_stage())
    text = out.script()
    assert_structural_equal(script.parse(text), out)     # each stage binds its own n
    assert 'R.ccl.send(rd0, senders=[0, 1], receivers=[2, 3], with_shape=True)' in text
    assert 'y1_s1_in: R.Tensor(dtype="float32", ndim=2) = R.ccl.recv(R.shape([-1, 128]), dtype="float32", ' \
           'senders=[0, 1], receivers=[2, 3])' in text
    assert 'y1_s1 = R.match_cast(y1_s1_in, R.Tensor((n, 128), dtype="float32"))' in text


def test_one_build_runs_every_batch_size_on_four_workers():
    rng = np.random.default_rng(1)
    ws = [(rng.standard_normal((128, 128)) / 12).astype(np.float32) for _ in range(4)]
    ex = build(two_stage())
    with disco.ProcessSession(4) as sess:
        dmod = sess.load_module(ex, ccl_backend="shm")
        for n in (3, 8, 1):
            x = rng.standard_normal((n, 128)).astype(np.float32)
            got = dmod["main"](x, *ws).fetch()
            assert got.shape == (n, 128)
            np.testing.assert_allclose(got, M.mlp_two_stages_ref(x, *ws), rtol=1e-4, atol=1e-4)

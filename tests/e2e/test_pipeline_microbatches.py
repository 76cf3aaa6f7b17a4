"""Micro-batched execution of a two-stage pipeline (issue 17, part 4) on 4 worker
processes (shm): stage 0 on workers 0-1, stage 1 on workers 2-3, 2-way tensor
parallelism in each. Results against numpy; overlap of the stages from the timestamps
the workers record (disco/pipeline.py)."""
from __future__ import annotations

import numpy as np
import pytest

import disco
from compiler import build, script
from disco.errors import SessionError

import _tp_models as M

pytestmark = pytest.mark.timeout(300)

DIM, ROWS, MICRO = 512, 32, 8         # each micro-batch: ROWS x DIM; a stage call takes about 1-3 ms


@pytest.fixture(scope="module")
def pipeline():
    """A 4-worker session with the two-stage MLP compiled for one micro-batch's shape."""
    ex = build(script.parse(M.pipeline_module_text(M.mlp_two_stages(DIM, ROWS))))
    rng = np.random.default_rng(1)
    ws = [(rng.standard_normal((DIM, DIM)) / np.sqrt(DIM)).astype(np.float32) for _ in range(4)]
    with disco.ProcessSession(4) as sess:
        yield sess.load_module(ex, ccl_backend="shm")["main"], ws, rng


def _calls(timeline, stage, key="micro_batch"):
    """{record[key]: record} of one stage's calls, its workers' records merged (the
    latest start, arrival and end)."""
    out = {}
    for r in timeline:
        if r["stage"] == stage:
            o = out.setdefault(r[key], dict(r))
            o["start"], o["received"] = max(o["start"], r["start"]), max(o["received"], r["received"])
            o["end"] = max(o["end"], r["end"])
    return out


def _overlapping(first, second) -> list[int]:
    """Micro-batches i where the first stage started i+1 before the second stage finished i."""
    return [i for i in first if i + 1 in first and i in second and first[i + 1]["start"] < second[i]["end"]]


def test_eight_micro_batches_match_numpy_and_both_stages_work_at_once(pipeline, monkeypatch):
    h, ws, rng = pipeline
    x = rng.standard_normal((ROWS * MICRO, DIM)).astype(np.float32)
    placed = []
    monkeypatch.setattr(h, "_place_one", lambda k, a, f=h._place_one: placed.append(k) or f(k, a))
    h.timeline(reset=True)
    y = h.run_microbatches(x, *ws, micro_batches=MICRO)
    got = y.fetch()
    np.testing.assert_allclose(got, M.mlp_two_stages_ref(x, *ws), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(y.fetch(worker=2), got)
    # the weights are placed once, the input once per micro-batch
    assert sorted(placed) == [0] * MICRO + [1, 2, 3, 4], placed
    line = h.timeline()
    assert {(r["worker"], r["stage"]) for r in line} == {(0, 0), (1, 0), (2, 1), (3, 1)}
    assert len(line) == 4 * MICRO and len({r["run"] for r in line}) == 1
    s0, s1 = _calls(line, 0), _calls(line, 1)
    assert sorted(s0) == sorted(s1) == list(range(MICRO))
    # the acceptance: stage 2 starts (has its input for) micro-batch 1 before
    # stage 1 finishes micro-batch 8
    assert s1[0]["received"] < s0[MICRO - 1]["end"], (s1[0], s0[MICRO - 1])
    # and the stages overlap: stage 1 starts micro-batch i+1 while stage 2 still works on i
    assert _overlapping(s0, s1), (s0, s1)


def test_micro_batches_one_at_a_time_do_not_overlap(pipeline):
    """The control for the overlap check above: waiting for each micro-batch's result
    before issuing the next serialises the stages, and the check sees it."""
    h, ws, rng = pipeline
    placed = h.place(np.zeros((ROWS, DIM), np.float32), *ws)
    h.timeline(reset=True)
    xs = [rng.standard_normal((ROWS, DIM)).astype(np.float32) for _ in range(4)]
    for x in xs:
        got = h(h._place_one(0, x), *placed[1:]).fetch()
        np.testing.assert_allclose(got, M.mlp_two_stages_ref(x, *ws), rtol=1e-4, atol=1e-4)
    line = h.timeline()
    s0, s1 = _calls(line, 0), _calls(line, 1)
    assert sorted(s0) == sorted(s1) == [-1]      # plain calls: micro-batch -1, one run each
    runs = sorted({r["run"] for r in line})
    assert len(runs) == 4
    first, second = _calls(line, 0, "run"), _calls(line, 1, "run")
    first, second = ({i: calls[k] for i, k in enumerate(runs)} for calls in (first, second))
    assert _overlapping(first, second) == []


def test_micro_batch_arguments_are_checked(pipeline):
    h, ws, _ = pipeline
    x = np.zeros((ROWS * MICRO, DIM), np.float32)
    short = ROWS * MICRO - 8
    with pytest.raises(SessionError, match=rf"parameter 'x' of shape \({short}, {DIM}\).*{ROWS} x 8 = {ROWS * 8}"):
        h.run_microbatches(x[:short], *ws, micro_batches=MICRO)
    with pytest.raises(SessionError, match=r"split=\['y'\] must name one or more parameters \(\['x', 'w1', 'w2', 'w3', 'w4'\]\); unknown: \['y'\]"):
        h.run_microbatches(x, *ws, micro_batches=MICRO, split=["y"])
    with pytest.raises(SessionError, match="micro_batches must be at least 1, given 0"):
        h.run_microbatches(x, *ws, micro_batches=0)
    # one micro-batch is a plain call
    np.testing.assert_allclose(h.run_microbatches(x[:ROWS] + 1, *ws, micro_batches=1).fetch(),
                               M.mlp_two_stages_ref(x[:ROWS] + 1, *ws), rtol=1e-4, atol=1e-4)


def test_more_micro_batches_in_flight_than_a_mailbox_holds(pipeline):
    """32 micro-batches: stage 0 may run up to 8 transfers ahead of stage 1 (the shm
    mailbox's descriptors, csrc/ccl/p2p.h); further sends wait for the receiver, which
    never waits for the sender's stage, so nothing deadlocks."""
    h, ws, rng = pipeline
    x = rng.standard_normal((ROWS * 32, DIM)).astype(np.float32)
    h.timeline(reset=True)
    np.testing.assert_allclose(h.run_microbatches(x, *ws, micro_batches=32).fetch(),
                               M.mlp_two_stages_ref(x, *ws), rtol=1e-4, atol=1e-4)
    line = h.timeline(reset=True)
    assert sorted(_calls(line, 1)) == list(range(32))

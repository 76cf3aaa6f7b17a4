"""disco.llm.sampling: each step against hand-derived results and, when torch and
transformers are installed, against transformers' logits processors; the draw against
its distribution; seeds reproducible across batches and processes; greedy seedless."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from disco.errors import SamplingError
from disco.llm import sampling
from disco.llm.sampling import Sampler, SamplingParams, choose_token, process_logits, sample

NEG = -np.inf


def test_repetition_penalty_by_hand():
    logits = np.array([2.0, -2.0, 1.0, -1.0, 0.5], np.float32)
    out = process_logits(logits, SamplingParams(temperature=0, repetition_penalty=2.0), [0, 1, 1])
    np.testing.assert_array_equal(out, [1.0, -4.0, 1.0, -1.0, 0.5])
    # the penalty can change the greedy choice; the caller's logits stay as they were
    assert Sampler(SamplingParams(temperature=0, repetition_penalty=4.0), [0]).choose(logits) == 2
    assert logits[0] == 2.0


def test_top_k_keeps_ties_at_the_kth():
    logits = np.array([1.0, 3.0, 2.0, 2.0, 0.0], np.float32)
    out = process_logits(logits, SamplingParams(top_k=2))
    np.testing.assert_array_equal(out, [NEG, 3.0, 2.0, 2.0, NEG])


def test_temperature_scales():
    logits = np.array([1.0, 3.0, 2.0], np.float32)
    np.testing.assert_allclose(process_logits(logits, SamplingParams(temperature=0.5)), [2, 6, 4])


@pytest.mark.parametrize("p, kept", [(0.5, 1), (0.7, 2), (0.8, 2), (0.81, 3), (0.96, 4), (1.0, 4)])
def test_top_p_by_hand(p, kept):
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    out = process_logits(np.log(probs).astype(np.float32), SamplingParams(top_p=p))
    # kept: the most probable tokens while the mass above each is < p
    assert set(np.flatnonzero(out > NEG)) == set([1, 3, 2, 0][:kept])


def test_min_p_by_hand():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    out = process_logits(np.log(probs).astype(np.float32), SamplingParams(min_p=0.3))
    assert list(np.flatnonzero(out > NEG)) == [0, 1]          # >= 0.3 * 0.5


def test_nucleus_on_a_large_vocabulary_equals_a_full_sort():
    rng = np.random.default_rng(0)
    for scale, p in [(1.0, 0.9), (4.0, 0.95), (0.1, 0.5), (0.01, 0.99)]:
        logits = (rng.standard_normal(50_000) * scale).astype(np.float64)
        logits[:10] = logits[10]                 # ties
        probs = np.exp(logits - logits.max())
        ids = np.arange(probs.size)
        got = sampling._nucleus(ids, probs, p)
        order = np.lexsort((ids, -probs))
        cum = np.cumsum(probs[order]) / probs.sum()
        want = order[np.concatenate([[0.0], cum[:-1]]) < p]
        assert sorted(got) == sorted(want)


def test_greedy_ignores_the_seed():
    logits = np.random.default_rng(1).standard_normal((3, 100)).astype(np.float32)
    a = [Sampler(SamplingParams(temperature=0, seed=s)) for s in (1, 2, 3)]
    b = [Sampler(SamplingParams(temperature=0, seed=s)) for s in (9, 8, None)]
    assert list(sample(logits, a)) == list(sample(logits, b)) == list(logits.argmax(1))
    state = a[0].rng.bit_generator.state
    sample(logits, a)
    assert a[0].rng.bit_generator.state == state               # nothing drawn


def test_greedy_takes_the_first_of_equal_maxima():
    assert choose_token(np.array([1, 5, 5, 0], np.float32), SamplingParams(temperature=0), [], None) == 1


def _tokens(seed, logits, steps=20, **params):
    s = Sampler(SamplingParams(seed=seed, **params))
    return [s.choose(logits[i % len(logits)]) for i in range(steps)]


def test_same_seed_same_tokens_whatever_the_batch():
    logits = np.random.default_rng(2).standard_normal((4, 1000)).astype(np.float32)
    params = dict(temperature=0.8, top_k=50, top_p=0.9)
    alone = _tokens(42, logits, **params)
    assert alone == _tokens(42, logits, **params) and alone != _tokens(43, logits, **params)
    # the same request in a batch with others, at a different row
    batch = [Sampler(SamplingParams(seed=s, **params)) for s in (7, 42, None)]
    together = []
    for i in range(20):
        rows = np.stack([logits[(i + 1) % 4], logits[i % 4], logits[(i + 2) % 4]])
        together.append(int(sample(rows, batch)[1]))
    assert together == alone


def test_same_seed_same_tokens_in_another_process():
    logits = np.random.default_rng(3).standard_normal((4, 5000)).astype(np.float32)
    here = _tokens(1234, logits, temperature=0.9, top_p=0.95, repetition_penalty=1.1)
    code = textwrap.dedent("""
        import numpy as np, sys
        from disco.llm.sampling import Sampler, SamplingParams
        logits = np.random.default_rng(3).standard_normal((4, 5000)).astype(np.float32)
        s = Sampler(SamplingParams(seed=1234, temperature=0.9, top_p=0.95, repetition_penalty=1.1))
        print([s.choose(logits[i % 4]) for i in range(20)])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "99"})
    assert out.stdout.strip() == str(here)


def test_draws_follow_the_filtered_distribution():
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.06, 0.04])).astype(np.float32)
    params = SamplingParams(temperature=1.0, top_p=0.85, seed=5)
    n = 20_000
    s = Sampler(params)
    counts = np.bincount([choose_token(logits, params, np.zeros(0, np.int64), s.rng)
                          for _ in range(n)], minlength=5)
    expected = np.array([0.4, 0.3, 0.2, 0, 0]) / 0.9 * n        # the nucleus, renormalised
    assert counts[3] == counts[4] == 0
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected + 1))


def test_sampler_records_its_tokens_for_the_penalty():
    logits = np.array([5.0, 4.9, 0.6], np.float32)   # penalised: 0.5, 0.49
    s = Sampler(SamplingParams(temperature=0, repetition_penalty=10.0))
    assert [s.choose(logits) for _ in range(3)] == [0, 1, 2]
    assert list(s.seen_ids()) == [0, 1, 2]


def test_errors():
    for bad in (dict(temperature=-1), dict(top_k=-1), dict(top_p=0), dict(top_p=1.5),
                dict(min_p=2), dict(repetition_penalty=0), dict(seed=-3), dict(seed=1.5)):
        with pytest.raises(SamplingError, match=next(iter(bad))):
            SamplingParams(**bad)
    s = [Sampler(), Sampler()]
    with pytest.raises(SamplingError, match=r"shape \(3, 4\) for 2 samplers"):
        sample(np.zeros((3, 4), np.float32), s)
    with pytest.raises(SamplingError, match="dtype int"):
        sample(np.zeros((2, 4), np.int32), s)
    with pytest.raises(SamplingError, match="nothing to sample"):
        Sampler().choose(np.array([NEG, NEG], np.float32))
    with pytest.raises(SamplingError, match="row 1: .*nothing to sample"):
        sample(np.array([[0, 1], [np.nan, 1]], np.float32), s)
    with pytest.raises(SamplingError, match="outside the vocabulary of 2"):
        Sampler(SamplingParams(repetition_penalty=1.2), [5]).choose(np.zeros(2, np.float32))


# ---- against transformers' processors ---------------------------------------------------

CASES = [
    dict(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05),
    dict(temperature=1.3, top_p=0.5, repetition_penalty=0.8),
    dict(temperature=1.0, top_k=5),
    dict(temperature=0.6, top_p=0.9, min_p=0.05),
    dict(temperature=2.0, top_k=100, top_p=0.99, min_p=0.2, repetition_penalty=1.5),
    dict(temperature=0, repetition_penalty=1.3),
]


@pytest.mark.parametrize("case", CASES)
def test_matches_transformers_processors(case):
    torch = pytest.importorskip("torch")
    gen = pytest.importorskip("transformers.generation.logits_process")
    params = SamplingParams(**case)
    procs = gen.LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        procs.append(gen.RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if not params.greedy:   # transformers' warpers, in its order
        if params.temperature != 1.0:
            procs.append(gen.TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            procs.append(gen.TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            procs.append(gen.TopPLogitsWarper(params.top_p))
        if params.min_p:
            procs.append(gen.MinPLogitsWarper(params.min_p))
    rng = np.random.default_rng(11)
    logits = (rng.standard_normal((6, 3000)) * 3).astype(np.float32)
    history = rng.integers(0, 3000, size=(6, 40))
    want = procs(torch.from_numpy(history), torch.from_numpy(logits.copy())).numpy()
    for row in range(6):
        got = process_logits(logits[row], params, history[row])
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want[row]))
        np.testing.assert_allclose(got[got > NEG], want[row][want[row] > NEG], rtol=1e-6)
        if params.greedy:
            assert choose_token(logits[row], params, history[row], None) == int(want[row].argmax())

"""A 16-bit KV cache under a float32 model (`models.load(..., kv_dtype="bfloat16")`, issue
14 item 3): the tiny Llama against transformers in float32 (the committed references of
make_references.py, which test_models.py holds to transformers itself), on 1 and 2
workers, 2 pipeline stages and chunked prefill; with 16-bit weights against the same
weights over a float32 cache. Keys and values are
rounded as they are appended, so the logits move by about bfloat16's rounding: prompt
logits (|logits| up to ~10) are held within atol ATOL (about twice the largest
difference measured, 0.073 for bfloat16 and 0.012 for float16), and must differ from
float32's (the option is not ignored). Greedy tokens: the first FIRST of each sequence
must equal transformers'; the agreement over all of them is printed (a 16-bit cache
may pick another token where two logits are close), not asserted."""
from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tiny  # noqa: E402

import disco  # noqa: E402
from compiler import models  # noqa: E402
from disco.llm.engine import EngineError  # noqa: E402

pytestmark = pytest.mark.timeout(600)

GREEDY = dict(temperature=0, ignore_eos=True)
ATOL = {"bfloat16": 0.15, "float16": 0.03}
FIRST = 3


@pytest.fixture(scope="module", autouse=True)
def _own_model_cache(model_cache):
    """Compiled models in a folder of this module's (conftest.py)."""
    yield


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(os.path.join(HERE, "references", "llama.npz")))


def _check(engine, reference, kv_dtype: str, atol: float, what="transformers float32") -> list[float]:
    """Prompt logits within `atol` of the reference's (transformers' float32 ones; and not
    equal: the cache is 16-bit), greedy tokens' first FIRST equal; returns the largest
    differences."""
    assert engine.kv_dtype == kv_dtype
    worst = []
    for i, prompt in enumerate(tiny.PROMPTS):
        got, want = engine.forward([list(prompt)])[0], reference[f"prompt_logits_{i}"]
        np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=f"prompt {i}")
        worst.append(float(np.abs(got - want).max()))
    assert max(worst) > 1e-4, "the logits equal float32's: is the cache 16-bit?"
    steps = engine.generate([list(p) for p in tiny.PROMPTS], tiny.DECODE_STEPS, **GREEDY)
    gens = engine.generate([list(p) for p in tiny.GENERATE_PROMPTS], tiny.GENERATE_TOKENS, **GREEDY)
    pairs = [(s, reference["tokens"][i]) for i, s in enumerate(steps)] + \
        [(g, reference[f"generate_{i}"]) for i, g in enumerate(gens)]
    for got, want in pairs:
        assert list(got[:FIRST]) == list(want[:FIRST])
    agree = [int(np.sum(np.asarray(got) == want)) for got, want in pairs]
    print(f"kv_dtype={kv_dtype}: prompt logits within {max(worst):.4f} of {what}'s; "
          f"greedy tokens equal to {what}'s: {agree} of "
          f"{[len(w) for _, w in pairs]}")
    return worst


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("kv_dtype", ["bfloat16", "float16"])
def test_16_bit_cache_against_transformers(llama, reference, sessions, kv_dtype, tp):
    with models.load(llama, tp=tp, session=sessions(tp), kv_dtype=kv_dtype) as engine:
        assert engine.kv_bytes_per_token == 2 * 2 * (2 // tp) * 8 * 2     # layers, kv heads, head_dim
        _check(engine, reference, kv_dtype, ATOL[kv_dtype])
        assert engine.free_pages == engine.num_pages                      # every page given back


def test_pipeline_stages_and_chunked_prefill(llama, reference, sessions):
    """2 stages of 1 worker, each with a bfloat16 cache of its layer; prompts appended 4
    tokens a step: within the same tolerance, the same first tokens."""
    with models.load(llama, tp=1, pp=2, session=sessions(2), kv_dtype="bfloat16",
                     prefill_chunk=4) as engine:
        _check(engine, reference, "bfloat16", ATOL["bfloat16"])


def test_with_16_bit_weights(llama, sessions):
    """bfloat16 weights (float32 activations) and a bfloat16 cache, against the same
    weights with a float32 cache (bfloat16 weights alone change the greedy tokens from
    transformers' from the first one: tests/models/test_quantized.py)."""
    with models.load(llama, tp=2, session=sessions(2), quantization="bf16") as engine:
        reference = {f"prompt_logits_{i}": engine.forward([list(p)])[0] for i, p in enumerate(tiny.PROMPTS)}
        reference["tokens"] = [np.asarray(t) for t in
                               engine.generate([list(p) for p in tiny.PROMPTS], tiny.DECODE_STEPS, **GREEDY)]
        gens = engine.generate([list(p) for p in tiny.GENERATE_PROMPTS], tiny.GENERATE_TOKENS, **GREEDY)
        reference.update({f"generate_{i}": np.asarray(g) for i, g in enumerate(gens)})
    with models.load(llama, tp=2, session=sessions(2), kv_dtype="bfloat16", quantization="bf16") as engine:
        _check(engine, reference, "bfloat16", ATOL["bfloat16"], "bf16 weights, float32 cache")


def test_bad_kv_dtype_fails_before_any_worker(llama, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a session was started")
    monkeypatch.setattr(disco, "start", refuse)
    for bad in ("int8", "bf16", np.float16):
        with pytest.raises(EngineError, match=re.escape(
                f"models.load: kv_dtype={bad!r} is not supported; expected one of 'float32', "
                "'float16', 'bfloat16', or None for the model's dtype")):
            models.load(llama, tp=2, kv_dtype=bad)

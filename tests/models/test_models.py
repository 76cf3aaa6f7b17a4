"""Llama, Qwen2 and GPT-2 defined with compiler.nn against Hugging Face transformers: the
tiny checkpoints of tiny.py, prefill logits of two prompts of different lengths in one
call, then 16 batched decode steps through the paged KV cache, on 1, 2 and 4 workers
(ProcessSession, shm collectives; 4 workers with the 2 KV heads of the Llama config
repeated). References: references/<family>.npz (made by make_references.py from
transformers), and transformers itself, live, when it is installed."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tiny  # noqa: E402

import disco  # noqa: E402
from compiler import build, models  # noqa: E402
from compiler.distributed import describe  # noqa: E402
from compiler.ir.errors import ShardingError  # noqa: E402
from disco.llm.weights import place_weights  # noqa: E402

FAMILIES = tuple(tiny.CONFIGS)
TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    base = tmp_path_factory.mktemp("checkpoints")
    return {f: tiny.make_checkpoint(f, str(base / f)) for f in FAMILIES}


@pytest.fixture(scope="module")
def references(checkpoints):
    """The committed references, and transformers' own where it is installed (they
    must agree: the committed files are what a machine without torch checks against)."""
    refs = {f: dict(np.load(os.path.join(HERE, "references", f"{f}.npz"))) for f in FAMILIES}
    try:
        import make_references
        import transformers  # noqa: F401
    except ImportError:
        return refs
    for f in FAMILIES:
        live = make_references.references(f, checkpoints[f])
        for k, v in live.items():
            if k.startswith("bf16"):
                continue        # bfloat16 arithmetic may differ between torch versions
            np.testing.assert_allclose(refs[f][k], v, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{f}: committed reference {k} differs from transformers")
    return refs


class _Model:
    """A compiled family on a session of `tp` workers, each with its KV cache."""

    def __init__(self, directory: str, tp: int, sess, dtype: str = "float32"):
        cfg = json.load(open(os.path.join(directory, "config.json")))
        self.model = models.from_config(cfg, tp=tp, dtype=dtype)
        self.sess = sess
        self.dmod = sess.load_module(build(self.model.export()))
        specs = self.model.weight_specs()
        placements = self.dmod.placements("prefill")      # the executable's, by parameter
        assert [placements[s["name"].replace(".", "_")] for s in specs] == [s["placement"] for s in specs]
        self.weights = place_weights(sess, directory, specs)       # each worker reads its blocks
        layers, kv_heads, head_dim = self.model.kv_layout()
        self.cache = sess.get_global_func("disco.kv.create")(layers, kv_heads, head_dim, 64, 16, dtype)

    def add(self, *seq_ids: int) -> None:
        for s in seq_ids:
            self.sess.get_global_func("disco.kv.add_sequence")(self.cache, s)

    def step(self, fn: str, seq_ids, tokens) -> np.ndarray:
        """Logits of one forward step: `tokens[i]` appended to sequence seq_ids[i]."""
        self.sess.get_global_func("disco.kv.begin_forward")(self.cache, list(seq_ids),
                                                             [len(t) for t in tokens])
        ids = np.concatenate([np.asarray(t, np.int64) for t in tokens])
        return np.asarray(self.dmod[fn](ids, self.cache, *self.weights).fetch())


def _run(directory: str, tp: int, ref: dict, dtype: str = "float32"):
    """Prefill both prompts in one call, then decode, each step fed the reference's
    greedy tokens (transformers' in the same dtype); returns (prefill logits per
    prompt, decode logits (steps, 2, vocab), the greedy choices (2, steps))."""
    fed = ref["tokens"] if dtype == "float32" else ref["bf16_tokens"]
    with disco.ProcessSession(tp) as sess:
        m = _Model(directory, tp, sess, dtype)
        m.add(0, 1)
        logits = m.step("forward", [0, 1], tiny.PROMPTS).astype(np.float32)
        n0 = len(tiny.PROMPTS[0])
        prefill = [logits[:n0], logits[n0:]]
        steps, greedy = [], [[int(np.argmax(prefill[0][-1])), int(np.argmax(prefill[1][-1]))]]
        for s in range(tiny.DECODE_STEPS - 1):
            out = m.step("decode", [0, 1], [[int(fed[0, s])], [int(fed[1, s])]]).astype(np.float32)
            steps.append(out)
            greedy.append([int(np.argmax(out[0])), int(np.argmax(out[1]))])
        return prefill, np.stack(steps), np.array(greedy).T


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_and_decode_match_transformers(checkpoints, references, family, tp):
    ref = references[family]
    prefill, steps, greedy = _run(checkpoints[family], tp, ref)
    for i in range(2):
        np.testing.assert_allclose(prefill[i], ref[f"prompt_logits_{i}"], rtol=TOL, atol=TOL,
                                   err_msg=f"{family} tp={tp}: prefill logits of prompt {i}")
    # each decode step is fed the reference's token and must give the reference's logits
    np.testing.assert_allclose(steps, ref["step_logits"][1:], rtol=TOL, atol=TOL,
                               err_msg=f"{family} tp={tp}: decode logits")
    np.testing.assert_array_equal(greedy, ref["tokens"])


BF16_ULP = 2.0 ** -7      # relative spacing of bfloat16 numbers


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_weights_give_the_same_greedy_tokens(tmp_path, references, family):
    """A bfloat16 checkpoint computed in bfloat16 (2 workers), against transformers in
    bfloat16: logits within a few bfloat16 roundings, and the same greedy token at every
    step whose choice is not a tie at bfloat16 precision (transformers' top two logits
    at least 4 bfloat16 spacings apart; a closer pair can go either way with any
    rounding order)."""
    ref = references[family]
    directory = tiny.make_checkpoint(family, str(tmp_path / family), "bfloat16")
    prefill, steps, greedy = _run(directory, 2, ref, "bfloat16")
    hf = np.concatenate([ref["bf16_prompt_logits_0"][-1:], ref["bf16_step_logits"][1:, 0]])
    ours = np.concatenate([prefill[0][-1:], steps[:, 0]])
    scale = np.abs(hf).max(axis=-1, keepdims=True)
    assert np.all(np.abs(ours - hf) <= 8 * BF16_ULP * scale), f"{family}: bf16 logits differ"
    top2 = np.sort(ref["bf16_step_logits"], axis=-1)[..., -2:]       # (steps, 2, 2)
    clear = (top2[..., 1] - top2[..., 0] >= 4 * BF16_ULP * np.abs(top2[..., 1])).T   # (2, steps)
    assert clear.mean() > 0.5, "the reference has too many ties to test anything"
    np.testing.assert_array_equal(greedy[clear], ref["bf16_tokens"][clear])


def test_weight_specs(checkpoints):
    """The specs describe every parameter in order, JSON-able, with the maps the layout
    needs; the whole parameters they give (load_params) against numpy: GPT-2's padded
    vocabulary and regrouped c_attn columns on 2 devices, Llama's KV heads repeated
    for 4 devices (2 KV heads)."""
    from disco.llm.checkpoint import open_checkpoint
    gpt2 = models.from_config(tiny.CONFIGS["gpt2"], tp=2)
    specs = gpt2.weight_specs()
    assert [s["name"] for s in specs] == [n for n, _ in gpt2.named_parameters()]
    assert json.loads(json.dumps(specs)) == specs
    by_name = {s["name"]: s for s in specs}
    assert by_name["transformer.wte.weight"] == {
        "name": "transformer.wte.weight", "source": "transformer.wte.weight", "shape": [1002, 64],
        "dtype": "float32", "placement": "S[0]", "maps": [{"axis": 0, "op": "pad", "size": 1002}]}
    assert by_name["transformer.h.0.attn.c_attn.weight"]["maps"] == [
        {"axis": -1, "op": "regroup", "parts": 3, "groups": 2}]
    assert by_name["transformer.ln_f.weight"]["placement"] == "R"
    with open_checkpoint(checkpoints["gpt2"]) as ckpt:
        params = gpt2.load_params(ckpt)
        wte, c_attn = ckpt.read("transformer.wte.weight"), ckpt.read("transformer.h.1.attn.c_attn.weight")
    np.testing.assert_array_equal(params["transformer.wte.weight"], np.concatenate([wte, np.zeros((1, 64))]))
    q, k, v = np.split(c_attn, 3, axis=1)        # device i: its half of the heads of q, k and v
    np.testing.assert_array_equal(params["transformer.h.1.attn.c_attn.weight"],
                                  np.concatenate([q[:, :32], k[:, :32], v[:, :32], q[:, 32:], k[:, 32:], v[:, 32:]], 1))

    llama = models.from_config(tiny.CONFIGS["llama"], tp=4)
    k_spec = {s["name"]: s for s in llama.weight_specs()}["model.layers.0.self_attn.k_proj.weight"]
    assert k_spec["maps"] == [{"axis": 0, "op": "repeat_heads", "heads": 2, "repeat": 2}]
    assert k_spec["shape"] == [32, 64]
    params = llama.load_params(checkpoints["llama"])
    with open_checkpoint(checkpoints["llama"]) as ckpt:
        k = ckpt.read("model.layers.0.self_attn.k_proj.weight")          # 2 heads of 8 rows
    np.testing.assert_array_equal(params["model.layers.0.self_attn.k_proj.weight"],
                                  np.concatenate([k[:8], k[:8], k[8:], k[8:]]))


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoints_saved_by_transformers_load(tmp_path, family):
    """A checkpoint written by transformers' save_pretrained (its names, its handling of
    tied weights and buffers): every tensor is used, and the parameters are its state."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.for_model(**{k: v for k, v in tiny.CONFIGS[family].items()
                                               if k != "architectures"})
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(cfg)
    hf.save_pretrained(str(tmp_path))
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    for tp in (1, 2):
        params = models.from_config(json.load(open(tmp_path / "config.json")), tp=tp).load_params(str(tmp_path))
        for name, a in params.items():
            if tp == 1:
                np.testing.assert_array_equal(a, state[name], err_msg=name)


EXPECTED_COLLECTIVES = {
    # one all-reduce for the vocabulary-parallel embedding, two per layer (attention and
    # MLP outputs, row-parallel); GPT-2's padded vocabulary adds an all-gather of the
    # logits before they are cut to the real vocabulary
    "llama": ["allreduce"] * 5,
    "qwen2": ["allreduce"] * 5,
    "gpt2": ["allreduce"] * 5 + ["allgather"],
}


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("family", FAMILIES)
def test_collectives_are_exactly_the_megatron_ones(family, tp):
    m = models.from_config(tiny.CONFIGS[family], tp=tp)
    report = describe(m.export(), "decode")
    assert [kind for _, kind, _ in report.collectives] == EXPECTED_COLLECTIVES[family]
    placements = report.placements
    if family != "gpt2":
        assert placements["model_layers_0_self_attn_q_proj_weight"] == "S[0]"
        assert placements["model_layers_0_self_attn_o_proj_weight"] == "S[1]"


def test_one_build_serves_every_length(checkpoints):
    """Sequences of 1, 7 and 33 tokens through the same executable, against transformers'
    logits computed here with numpy-free references: prefill of each length alone must
    equal the same tokens' logits from one longer prefill."""
    directory = checkpoints["llama"]
    rng = np.random.default_rng(3)
    long_prompt = [int(t) for t in rng.integers(0, 1000, 33)]
    with disco.ProcessSession(1) as sess:
        m = _Model(directory, 1, sess)
        m.add(0, 1, 2, 3)
        whole = m.step("forward", [0], [long_prompt])
        for sid, n in ((1, 1), (2, 7), (3, 33)):
            part = m.step("forward", [sid], [long_prompt[:n]])
            np.testing.assert_allclose(part, whole[:n], rtol=TOL, atol=TOL)


@pytest.mark.parametrize("tp", [1, 2])
def test_prefill_gives_the_last_tokens_logits(checkpoints, references, tp):
    """prefill(input_ids, cache, last): each sequence's last-token logits only."""
    ref = references["gpt2"]
    with disco.ProcessSession(tp) as sess:
        m = _Model(checkpoints["gpt2"], tp, sess)
        m.add(0, 1)
        m.sess.get_global_func("disco.kv.begin_forward")(m.cache, [0, 1], [len(p) for p in tiny.PROMPTS])
        ids = np.concatenate([np.asarray(p, np.int64) for p in tiny.PROMPTS])
        last = np.cumsum([len(p) for p in tiny.PROMPTS]) - 1
        out = np.asarray(m.dmod["prefill"](ids, m.cache, last.astype(np.int64), *m.weights).fetch())
    np.testing.assert_allclose(out, [ref["prompt_logits_0"][-1], ref["prompt_logits_1"][-1]],
                               rtol=TOL, atol=TOL)


@pytest.mark.parametrize("change,tp,message", [
    (dict(num_attention_heads=6, head_dim=8, num_key_value_heads=2), 4,
     r"num_attention_heads = 6 does not split over a mesh of 4 devices"),
    (dict(intermediate_size=130), 4, r"intermediate_size = 130 does not split over a mesh of 4"),
    (dict(num_attention_heads=6, num_key_value_heads=3, head_dim=8), 2,
     r"num_key_value_heads = 3 neither splits over 2 devices nor divides 2"),
])
def test_plans_that_cannot_be_honoured_fail_at_build(change, tp, message):
    with pytest.raises(ShardingError, match=message):
        models.from_config(dict(tiny.CONFIGS["llama"], **change), tp=tp)

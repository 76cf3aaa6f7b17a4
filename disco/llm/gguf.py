"""GGUF files (llama.cpp's format) as checkpoints: tensors under Hugging Face's names and
layouts, dequantized to float32; the config.json and the tokenizer the metadata describe.

    ckpt = GGUFCheckpoint("SmolLM2-135M-Instruct.Q4_1.gguf")
    ckpt.read("model.layers.0.self_attn.q_proj.weight", rows=slice(0, 192))  # float32
    cfg = gguf_config(path)              # {"model_type": "llama", "hidden_size": 576, ...}
    parts = gguf_tokenizer_parts(path)   # a tokenizers.Tokenizer, bos/eos ids, chat template

What a GGUF holds that Hugging Face's files do not, and how it is undone here, following
transformers' GGUF loader so that the tensors equal its state_dict:
- names: llama.cpp's (`blk.0.attn_q.weight`), renamed by `_HF_NAMES`;
- shapes: ggml lists dimensions fastest first, the reverse of numpy's;
- blocks: quantized tensors are blocks of 32 or 256 values along the last dimension (a
  row is whole blocks), dequantized by the `gguf` package (every ggml format);
- rotary: llama.cpp's converter reorders the rows of q and k inside each head from
  "halves" to "interleaved" pairs for its rotary kernel; `_unpermute` reorders them back.

Read: the "llama" architecture (Llama 1-3, Mistral, SmolLM, TinyLlama files), byte-level
BPE tokenizers (tokenizer.ggml.model "gpt2"); anything else raises GGUFError naming it.
The header is parsed here (the `gguf` package's reader decodes every metadata string into
numpy parts, seconds for a vocabulary); only dequantizing needs the `gguf` package.
"""
from __future__ import annotations

import math
import mmap
import os
import re
import struct
from dataclasses import dataclass
from typing import Any, Optional

import ml_dtypes
import numpy as np

from ..errors import DiscoError
from .checkpoint import Checkpoint


class GGUFError(DiscoError, ValueError):
    """A GGUF file that is malformed, or holds a model or tokenizer this reader does not
    support (the message names the key or tensor)."""


# ---- the header: metadata, tensor table, where the data starts ----------------------------

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_F32, _F16, _BF16 = 0, 1, 30
_Q4_0, _Q4_1, _Q8_0 = 2, 3, 8
# ggml types the CPU kernels read as stored -> their weight format (disco/weight_formats.py)
_FORMATS = {_F32: "float32", _F16: "float16", _BF16: "bfloat16", _Q8_0: "q8_0", _Q4_0: "q4_0",
            _Q4_1: "q4_1"}
_FLOAT_DTYPES = {_F32: np.dtype(np.float32), _F16: np.dtype(np.float16),
                 _BF16: np.dtype(ml_dtypes.bfloat16)}
_REQUIRED = object()


@dataclass(frozen=True)
class _Tensor:
    gguf_name: str
    shape: tuple[int, ...]   # numpy's order (slowest dimension first)
    ggml_type: int
    offset: int              # absolute, in the file


@dataclass(frozen=True)
class GGUFHeader:
    path: str
    metadata: dict[str, Any]
    tensors: dict[str, _Tensor]   # by GGUF name, in file order

    @property
    def architecture(self) -> str:
        return self.metadata["general.architecture"]

    def arch_value(self, key: str, default: Any = _REQUIRED) -> Any:
        """`{architecture}.{key}` of the metadata (`llama.block_count`, ...)."""
        full = f"{self.architecture}.{key}"
        if full in self.metadata:
            return self.metadata[full]
        if default is _REQUIRED:
            raise GGUFError(f"{self.path}: metadata has no {full!r}, which a {self.architecture} "
                            f"model needs")
        return default


def read_header(path: str) -> GGUFHeader:
    """The metadata and tensor table of a GGUF file (version 2 or 3, little-endian); no
    tensor data is read."""
    path = str(path)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 24:
            raise GGUFError(f"{path} is not a GGUF file (shorter than a GGUF header)")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse_header(buf, path)
    finally:
        buf.close()


def _parse_header(buf: mmap.mmap, path: str) -> GGUFHeader:
    if buf[:4] != b"GGUF":
        raise GGUFError(f"{path} is not a GGUF file (it starts with {bytes(buf[:4])!r}, not b'GGUF')")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3):
        raise GGUFError(f"{path}: GGUF version {version} (or a big-endian file); this reader "
                        f"reads little-endian versions 2 and 3")
    pos = 24

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", buf, pos)
        pos += 8 + n
        return buf[pos - n:pos].decode("utf-8")

    def value(kind: int) -> Any:
        nonlocal pos
        if kind == _STRING:
            return string()
        if kind == _ARRAY:
            item, n = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if item in _SCALARS:   # numbers in one go (token types, scores)
                width = struct.calcsize(_SCALARS[item])
                out = np.frombuffer(buf, np.dtype(_SCALARS[item]), n, pos).tolist()
                pos += width * n
                return out
            return [value(item) for _ in range(n)]
        if kind not in _SCALARS:
            raise GGUFError(f"{path}: metadata value of unknown type {kind} at byte {pos}")
        (v,) = struct.unpack_from(_SCALARS[kind], buf, pos)
        pos += struct.calcsize(_SCALARS[kind])
        return v

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        (kind,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        metadata[key] = value(kind)
    if "general.architecture" not in metadata:
        raise GGUFError(f"{path}: metadata has no 'general.architecture'")
    table = []
    for _ in range(n_tensors):
        name = string()
        (ndim,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{ndim}Q", buf, pos + 4)
        ggml_type, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * ndim)
        pos += 4 + 8 * ndim + 12
        table.append((name, tuple(reversed(dims)), ggml_type, offset))
    align = int(metadata.get("general.alignment", 32))
    data_start = -(-pos // align) * align
    tensors = {name: _Tensor(name, shape, t, data_start + off) for name, shape, t, off in table}
    return GGUFHeader(path, metadata, tensors)


def _block(t: _Tensor, path: str) -> tuple[int, int]:
    """(values, bytes) of one block of `t`'s ggml type; (1, itemsize) when not quantized."""
    if t.ggml_type == _F32:
        return 1, 4
    if t.ggml_type in (_F16, _BF16):
        return 1, 2
    gguf = _gguf_package()
    try:
        return tuple(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.ggml_type)])
    except (ValueError, KeyError):
        raise GGUFError(f"{path}: tensor {t.gguf_name!r} has ggml type {t.ggml_type}, which the "
                        f"installed gguf package does not know; upgrade it (pip install -U gguf)") from None


def _gguf_package():
    try:
        import gguf
    except ImportError:
        raise ImportError("reading quantized GGUF tensors needs the gguf package: "
                          "pip install 'disco-tp[gguf]' (or pip install gguf)") from None
    return gguf


def _dequantize(raw: np.ndarray, ggml_type: int) -> np.ndarray:
    """float32 values of whole blocks `raw` (uint8), a new array."""
    if ggml_type == _F32:
        return raw.view(np.float32).copy()
    if ggml_type == _F16:
        return raw.view(np.float16).astype(np.float32)
    if ggml_type == _BF16:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    gguf = _gguf_package()
    return gguf.dequantize(raw, gguf.GGMLQuantizationType(ggml_type)).reshape(-1)


# ---- names: llama.cpp's to Hugging Face's ---------------------------------------------------

# Architectures read here, and whether llama.cpp permuted their q and k rows for rotary
# (transformers' TENSOR_PROCESSORS: only "llama"'s LlamaTensorProcessor undoes it).
_ARCHS = {"llama": True}

_HF_NAMES = [   # (GGUF pattern, Hugging Face name); \1 the layer, \2 weight or bias
    (r"token_embd\.weight", "model.embed_tokens.weight"),
    (r"output_norm\.weight", "model.norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", r"model.layers.\1.input_layernorm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"blk\.(\d+)\.attn_q\.(weight|bias)", r"model.layers.\1.self_attn.q_proj.\2"),
    (r"blk\.(\d+)\.attn_k\.(weight|bias)", r"model.layers.\1.self_attn.k_proj.\2"),
    (r"blk\.(\d+)\.attn_v\.(weight|bias)", r"model.layers.\1.self_attn.v_proj.\2"),
    (r"blk\.(\d+)\.attn_output\.(weight|bias)", r"model.layers.\1.self_attn.o_proj.\2"),
    (r"blk\.(\d+)\.ffn_gate\.weight", r"model.layers.\1.mlp.gate_proj.weight"),
    (r"blk\.(\d+)\.ffn_up\.weight", r"model.layers.\1.mlp.up_proj.weight"),
    (r"blk\.(\d+)\.ffn_down\.weight", r"model.layers.\1.mlp.down_proj.weight"),
]
_HF_RE = [(re.compile(p), hf) for p, hf in _HF_NAMES]
# Tensors llama.cpp adds that are not weights of the Hugging Face model (rope_freqs: the
# llama3 rotary scaling as per-frequency factors, read by gguf_config).
_NOT_WEIGHTS = {"rope_freqs.weight"}


def hf_name(gguf_name: str) -> Optional[str]:
    """Hugging Face's name of a llama GGUF tensor, None when it has none."""
    for pattern, hf in _HF_RE:
        m = pattern.fullmatch(gguf_name)
        if m:
            return m.expand(hf)
    return None


def _check_arch(header: GGUFHeader) -> None:
    if header.architecture not in _ARCHS:
        raise GGUFError(f"{header.path}: architecture {header.architecture!r} is not supported "
                        f"(supported: {sorted(_ARCHS)})")


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each of `heads` heads from llama.cpp's order back to Hugging Face's.

    Hugging Face's rotary turns the pairs of rows (i, i + d/2) of a head of d rows,
    llama.cpp's the adjacent pairs (2i, 2i + 1), so its converter moved row j*(d/2) + i to
    2i + j; this moves it back (transformers' `_reverse_permute_weights`). Weights
    (rows, in) and biases (rows,) alike."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFCheckpoint(Checkpoint):
    """A GGUF file's tensors under Hugging Face's names and shapes, read as float32.

    `read(name, rows)` reads only the blocks of those rows (a row of a quantized matrix is
    whole blocks, so a row range is one byte range); for q and k, whose rows llama.cpp
    reordered within each head, it reads the whole heads the rows fall in."""

    def __init__(self, path: str):
        self.path = str(path)
        self.header = read_header(self.path)
        _check_arch(self.header)
        permuted = _ARCHS[self.header.architecture]
        heads = int(self.header.arch_value("attention.head_count"))
        kv_heads = int(self.header.arch_value("attention.head_count_kv", heads))
        self._tensors: dict[str, _Tensor] = {}
        self._blocks: dict[str, tuple[int, int]] = {}
        self._heads: dict[str, int] = {}   # HF name -> heads to unpermute (q and k)
        unknown = []
        for t in self.header.tensors.values():
            name = hf_name(t.gguf_name)
            if name is None:
                if t.gguf_name not in _NOT_WEIGHTS:
                    unknown.append(t.gguf_name)
                continue
            self._tensors[name], self._blocks[name] = t, _block(t, self.path)
            if permuted and (".attn_q." in t.gguf_name or ".attn_k." in t.gguf_name):
                n = heads if ".attn_q." in t.gguf_name else kv_heads
                if t.shape[0] % (2 * n):
                    raise GGUFError(f"{self.path}: {t.gguf_name} has {t.shape[0]} rows, not a whole "
                                    f"even number per head for {n} heads")
                self._heads[name] = n
        if unknown:
            raise GGUFError(f"{self.path}: tensors with no Hugging Face {self.header.architecture} "
                            f"name: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
        with open(self.path, "rb") as f:
            self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def __reduce__(self):   # to another process: by path (each opens its own mapping)
        return GGUFCheckpoint, (self.path,)

    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._tensor(name).shape

    def dtype(self, name: str) -> np.dtype:
        self._tensor(name)
        return np.dtype(np.float32)

    def gguf_name(self, name: str) -> str:
        """The file's name of tensor `name` (for error messages)."""
        return self._tensor(name).gguf_name

    def read(self, name: str, rows: Optional[slice] = None) -> np.ndarray:
        t = self._tensor(name)
        start, stop, step = (rows or slice(None)).indices(t.shape[0])
        if step != 1:
            picked = np.arange(start, stop, step)
            if picked.size == 0:
                return np.empty((0,) + t.shape[1:], np.float32)
            lo = int(picked.min())
            return self.read(name, slice(lo, int(picked.max()) + 1))[picked - lo]
        stop = max(stop, start)
        heads = self._heads.get(name)
        if heads is None:
            return self._rows(name, start, stop)
        size = t.shape[0] // heads                       # rows of one head
        first, last = start // size, -(-stop // size)   # the heads the rows fall in
        w = _unpermute(self._rows(name, first * size, last * size), last - first)
        return w[start - first * size:stop - first * size].copy()

    def stored_format(self, name: str) -> Optional[str]:
        """The weight format (disco/weight_formats.py) tensor `name` is stored in, when it
        is one the CPU kernels read (float32, float16, bfloat16, q8_0, q4_0, q4_1)."""
        return _FORMATS.get(self._tensor(name).ggml_type)

    def read_raw(self, name: str, rows: slice) -> np.ndarray:
        """Rows `rows` (a slice with step 1) of tensor `name` as stored: for a block
        format the uint8 (rows, row_bytes) of their blocks, for a float format the array
        of its dtype; no dequantization. q and k rows come back in Hugging Face's order
        (a row permutation: a row of blocks moves whole)."""
        t = self._tensor(name)
        if self._buf is None:
            raise GGUFError(f"{self.path}: read after close()")
        if len(t.shape) != 2 or t.ggml_type not in _FORMATS:
            raise GGUFError(f"{self.path}: {t.gguf_name} (ggml type {t.ggml_type}, shape {t.shape}) "
                            f"cannot be read as stored; read() dequantizes it")
        start, stop, _ = rows.indices(t.shape[0])
        stop = max(stop, start)
        heads = self._heads.get(name)
        if heads is None:
            return self._raw_rows(name, start, stop)
        size = t.shape[0] // heads
        first, last = start // size, -(-stop // size)
        w = _unpermute(self._raw_rows(name, first * size, last * size), last - first)
        return w[start - first * size:stop - first * size].copy()

    def _raw_rows(self, name: str, a: int, b: int) -> np.ndarray:
        t = self._tensors[name]
        values, nbytes = self._blocks[name]
        row_bytes = t.shape[1] // values * nbytes
        raw = np.frombuffer(self._buf, np.uint8, (b - a) * row_bytes, t.offset + a * row_bytes)
        raw = raw.reshape(b - a, row_bytes).copy()
        return raw if values > 1 else raw.view(_FLOAT_DTYPES[t.ggml_type])

    def close(self) -> None:
        if self._buf is not None:
            self._buf.close()
            self._buf = None

    def _tensor(self, name: str) -> _Tensor:
        if name not in self._tensors:
            raise KeyError(f"{self.path}: no tensor {name!r} (Hugging Face names; this file has "
                           f"{len(self._tensors)}, e.g. {list(self._tensors)[:3]})")
        return self._tensors[name]

    def _rows(self, name: str, a: int, b: int) -> np.ndarray:
        """Rows a..b of tensor `name` (dim 0), dequantized from the blocks that hold them."""
        if self._buf is None:
            raise GGUFError(f"{self.path}: read after close()")
        t = self._tensors[name]
        if b <= a:
            return np.empty((0,) + t.shape[1:], np.float32)
        per_row = math.prod(t.shape[1:])
        values, nbytes = self._blocks[name]
        first, last = a * per_row // values, -(-b * per_row // values)   # blocks
        raw = np.frombuffer(self._buf, np.uint8, (last - first) * nbytes, t.offset + first * nbytes)
        flat = _dequantize(raw, t.ggml_type)
        skip = a * per_row - first * values
        return flat[skip:skip + (b - a) * per_row].reshape((b - a,) + t.shape[1:])


# ---- config.json from the metadata -----------------------------------------------------------

def gguf_config(path: str) -> dict[str, Any]:
    """The Hugging Face config.json dict of a GGUF file, from its metadata (the keys
    transformers' GGUF loader reads, under the same names; rope in the config.json form
    "rope_theta" / "rope_scaling"). tie_word_embeddings: the file has no output.weight."""
    h = read_header(path)
    _check_arch(h)
    md, v = h.metadata, h.arch_value
    heads, hidden = int(v("attention.head_count")), int(v("embedding_length"))
    kv_heads = v("attention.head_count_kv", heads)
    if isinstance(kv_heads, list):
        raise GGUFError(f"{h.path}: {h.architecture}.attention.head_count_kv differs per layer "
                        f"({kv_heads[:4]} ...), which a llama model cannot have")
    vocab = v("vocab_size", None)
    if vocab is None:
        if "tokenizer.ggml.tokens" not in md:
            raise GGUFError(f"{h.path}: neither {h.architecture}.vocab_size nor tokenizer.ggml.tokens "
                            f"says the vocabulary size")
        vocab = len(md["tokenizer.ggml.tokens"])
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(v("feed_forward_length")),
        "num_hidden_layers": int(v("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv_heads),
        "head_dim": int(v("attention.key_length", v("rope.dimension_count", hidden // heads))),
        "hidden_act": "silu",
        "rms_norm_eps": float(v("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(v("rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "max_position_embeddings": int(v("context_length")),
        "tie_word_embeddings": "output.weight" not in h.tensors,
        "attention_bias": "blk.0.attn_q.bias" in h.tensors,
    }
    cfg["rope_scaling"] = _rope_scaling(h, cfg)
    for key in ("bos_token_id", "eos_token_id"):
        cfg[key] = md.get(f"tokenizer.ggml.{key}")
    if "tokenizer.ggml.padding_token_id" in md:
        cfg["pad_token_id"] = md["tokenizer.ggml.padding_token_id"]
    return cfg


def _rope_scaling(h: GGUFHeader, cfg: dict) -> Optional[dict]:
    """config.json's rope_scaling: from rope.scaling.* (linear, yarn) or the old
    rope.scale_linear; for Llama 3.x, recovered from the per-frequency factors llama.cpp
    stores as the tensor rope_freqs.weight instead (transformers ignores that tensor)."""
    v = h.arch_value
    kind = v("rope.scaling.type", None)
    factor = v("rope.scaling.factor", v("rope.scale_linear", None))
    if "rope_freqs.weight" in h.tensors:
        return _llama3_scaling(h, cfg)
    if kind in (None, "none") and factor in (None, 1.0):
        return None
    if factor is None:
        raise GGUFError(f"{h.path}: rope scaling {kind!r} without {h.architecture}.rope.scaling.factor")
    scaling = {"rope_type": kind or "linear", "factor": float(factor)}
    if v("rope.scaling.original_context_length", None) is not None:
        scaling["original_max_position_embeddings"] = int(v("rope.scaling.original_context_length"))
    return scaling


def llama3_rope_factors(theta: float, head_dim: int, scaling: dict) -> np.ndarray:
    """What llama.cpp's converter stores as rope_freqs.weight for a llama3 rope_scaling: each
    frequency's divisor (convert_hf_to_gguf's LlamaModel.generate_extra_tensors)."""
    old = scaling["original_max_position_embeddings"]
    factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / freqs
    smooth = (old / wavelen - lo) / (hi - lo)
    out = np.where(wavelen < old / hi, 1.0, np.where(wavelen > old / lo, factor,
                                                     1 / ((1 - smooth) / factor + smooth)))
    return out.astype(np.float32)


def _llama3_scaling(h: GGUFHeader, cfg: dict) -> Optional[dict]:
    """The llama3 rope_scaling whose factors are the file's rope_freqs.weight.

    Between its bands the factor r of a wavelength w is 1 / ((1 - s) / factor + s) with
    s = (old / w - low) / (high - low), linear in 1 / w: two such points fix that line, and
    with it low and high for any `old` (the original context; 8192, llama.cpp's default,
    unless the file says). The result is checked by recomputing the factors."""
    t = h.tensors["rope_freqs.weight"]
    values, nbytes = _block(t, h.path)
    with open(h.path, "rb") as f:
        f.seek(t.offset)
        raw = np.frombuffer(f.read(math.prod(t.shape) // values * nbytes), np.uint8)
    r = _dequantize(raw, t.ggml_type).astype(np.float64)
    theta, dim = cfg["rope_theta"], cfg["head_dim"]
    inv_w = 1.0 / (2 * np.pi * theta ** (np.arange(0, dim, 2) / dim))
    factor = float(r.max())
    if factor <= 1 + 1e-6:
        return None
    old = int(h.arch_value("rope.scaling.original_context_length", 8192))
    mid = (r > 1 + 1e-6) & (r < factor * (1 - 1e-6))
    if mid.sum() >= 2:
        s = (1 / r[mid] - 1 / factor) / (1 - 1 / factor)
        slope, icpt = np.polyfit(old * inv_w[mid], s, 1)  # s = slope * old/w + icpt
        lo, hi = -icpt / slope, (1 - icpt) / slope
    elif mid.sum() == 0:   # no smooth band: its ends lie at the last 1 and the first factor
        lo, hi = old * inv_w[r > 1 + 1e-6].max(), old * inv_w[r <= 1 + 1e-6].min()
    else:
        raise GGUFError(f"{h.path}: rope_freqs.weight has one value between 1 and {factor}, "
                        f"too few to recover llama3 rope scaling")
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": float(lo),
               "high_freq_factor": float(hi), "original_max_position_embeddings": old}
    if not np.allclose(llama3_rope_factors(theta, dim, scaling), r, rtol=1e-4, atol=1e-5):
        raise GGUFError(f"{h.path}: rope_freqs.weight is not a llama3 rope scaling "
                        f"(factors {np.round(r, 3).tolist()})")
    return scaling


# ---- the tokenizer the metadata describe -------------------------------------------------------

# Pre-tokenizer splits by tokenizer.ggml.pre, as transformers' GGUF loader has them
# (integrations/gguf/gguf_tokenizer_mapping.py); any other name: GPT-2's ByteLevel regex.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                 r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                 r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                     "lfm2", "jina-v5-nano", "dbrx", "smaug-bpe"], _LLAMA3_SPLIT),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"], _QWEN2_SPLIT),
    "qwen35": _QWEN35_SPLIT, "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], _GPT4O_SPLIT),
}
_CONTROL, _USER_DEFINED = 3, 4   # tokenizer.ggml.token_type values


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of each byte (byte-level BPE vocabularies are written in it)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


@dataclass(frozen=True)
class GGUFTokenizerParts:
    """What a GGUF file says about its tokenizer: `tokenizer` (a tokenizers.Tokenizer that
    encodes as transformers' tokenizer of the file; it prepends BOS when the file says
    tokenizer.ggml.add_bos_token), the special ids and tokens, and the chat template."""

    tokenizer: Any
    bos_token_id: Optional[int]
    eos_token_id: Optional[int]
    pad_token_id: Optional[int]
    bos_token: Optional[str]
    eos_token: Optional[str]
    chat_template: Optional[str]
    add_bos_token: bool
    stop_token_ids: tuple[int, ...]   # eos and, when the file names them, end-of-turn / message


def gguf_tokenizer_parts(path: str) -> GGUFTokenizerParts:
    """The tokenizer of a GGUF file with a byte-level BPE vocabulary (tokenizer.ggml.model
    "gpt2": Llama 3, SmolLM, Qwen2, ...), built as transformers builds it from the same
    metadata: the vocabulary (tokens not in GPT-2's byte alphabet respelled as their UTF-8
    bytes), the merges, ByteLevel pre-tokenizer (or the split of tokenizer.ggml.pre) and
    decoder, control tokens as special added tokens, user-defined ones as added tokens."""
    try:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    except ImportError:
        raise ImportError("building a GGUF file's tokenizer needs the tokenizers package: "
                          "pip install 'disco-tp[gguf]' (or pip install tokenizers)") from None
    h = read_header(path)
    md = h.metadata
    kind = md.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFError(f"{h.path}: tokenizer.ggml.model is {kind!r}; only byte-level BPE "
                        f"('gpt2') vocabularies are supported")
    if "tokenizer.ggml.tokens" not in md:
        raise GGUFError(f"{h.path}: metadata has no tokenizer.ggml.tokens (no vocabulary)")
    tokens: list[str] = md["tokenizer.ggml.tokens"]
    types: list[int] = md.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    spelling = _byte_alphabet()
    alphabet = set(spelling.values())
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ")) for m in md.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False))
    split = _SPLITS.get(md.get("tokenizer.ggml.pre"))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    # control tokens spelled outside the byte alphabet are llama.cpp mislabels (transformers
    # skips them too: adding them would grow the vocabulary past the model's)
    special = [AddedToken(t, normalized=False, special=True) for t, k in zip(tokens, types)
               if k == _CONTROL and set(t) <= alphabet]
    tok.add_special_tokens(special)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t, k in zip(tokens, types)
                    if k == _USER_DEFINED and t in vocab])

    def token(key: str) -> tuple[Optional[int], Optional[str]]:
        i = md.get(f"tokenizer.ggml.{key}")
        return (None, None) if i is None else (int(i), tokens[i])

    (bos_id, bos), (eos_id, eos) = token("bos_token_id"), token("eos_token_id")
    add_bos = bool(md.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(md.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    single = ([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else [])
    pair = single + ["$B:1"] + ([f"{eos}:1"] if add_eos else [])
    used = {t: i for t, i in ((bos, bos_id), (eos, eos_id)) if t is not None}
    tok.post_processor = processors.TemplateProcessing(
        single=" ".join(single), pair=" ".join(pair),
        special_tokens=[(t, i) for t, i in used.items() if f"{t}:0" in single])
    stops = [i for i in (eos_id, token("eot_token_id")[0], token("eom_token_id")[0]) if i is not None]
    return GGUFTokenizerParts(
        tokenizer=tok, bos_token_id=bos_id, eos_token_id=eos_id,
        pad_token_id=token("padding_token_id")[0], bos_token=bos, eos_token=eos,
        chat_template=md.get("tokenizer.chat_template"), add_bos_token=add_bos,
        stop_token_ids=tuple(dict.fromkeys(stops)))

"""What every model family shares: tensor-parallel sizing checked at build time, the
exported functions, and loading a checkpoint's tensors into the model's parameters.

A family (llama.py, gpt2.py) builds a `CausalLM` from a Hugging Face config dict for a
tensor-parallel degree `tp`. Its parameters are named as the checkpoint's tensors;
where the model's layout differs from the checkpoint's (vocabulary padded to a multiple
of `tp`, KV heads repeated for more devices than KV heads, GPT-2's fused q/k/v columns
regrouped per device), the family says how to make each parameter from the checkpoint
(`weight_transforms`), so that the placement's contiguous split gives every device
exactly its part.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import numpy as np

from .. import nn
from ..ir.errors import ShardingError
from ..ir.module import IRModule

# The inputs of a model's forward step: the tokens of the step (all sequences,
# concatenated in the order the KV cache was told) and the cache; prefill also takes the
# index of each sequence's last token among them (only those tokens' logits are made).
STEP_INPUTS = {"input_ids": nn.spec.Tensor(("n",), "int64"), "cache": nn.spec.Object()}
PREFILL_INPUTS = dict(STEP_INPUTS, last=nn.spec.Tensor(("b",), "int64"))


def padded(n: int, tp: int) -> int:
    """`n` rounded up to a multiple of `tp`."""
    return -(-n // tp) * tp


def check_divisible(value: int, tp: int, what: str, family: str, hint: str = "") -> None:
    """ShardingError naming the config value unless `tp` devices split it evenly."""
    if value % tp:
        works = [d for d in range(1, value + 1) if value % d == 0 and d <= 64]
        raise ShardingError(f"{family}: {what} = {value} does not split over a mesh of {tp} devices "
                            f"(tensor-parallel degree {tp}); degrees that divide it: {works}" +
                            (f"; {hint}" if hint else ""))


def kv_heads_for(kv_heads: int, heads: int, tp: int, family: str) -> int:
    """KV heads the model is built with for `tp` devices: the config's when they split
    evenly; `tp` (each KV head repeated on the devices whose query heads use it) when
    fewer KV heads divide `tp`; otherwise a ShardingError."""
    check_divisible(heads, tp, "num_attention_heads", family)
    if kv_heads % tp == 0:
        return kv_heads
    if tp % kv_heads == 0:
        return tp
    raise ShardingError(f"{family}: num_key_value_heads = {kv_heads} neither splits over {tp} devices "
                        f"nor divides {tp} (so each could be repeated on the devices that need it); "
                        f"use a tensor-parallel degree that divides or is a multiple of {kv_heads}")


def repeat_heads(w: np.ndarray, heads: int, repeat: int, axis: int = 0) -> np.ndarray:
    """A projection with each of its `heads` heads (blocks along `axis`) repeated
    `repeat` times in a row: head e of the result is head e // repeat of `w`."""
    if repeat == 1:
        return w
    shape = list(w.shape)
    blocks = np.split(w, heads, axis=axis)
    return np.concatenate([b for b in blocks for _ in range(repeat)], axis=axis).reshape(
        shape[:axis] + [shape[axis] * repeat] + shape[axis + 1:])


def pad_rows(w: np.ndarray, rows: int) -> np.ndarray:
    """`w` with zero rows appended up to `rows` (a padded vocabulary)."""
    if w.shape[0] == rows:
        return w
    out = np.zeros((rows,) + w.shape[1:], w.dtype)
    out[:w.shape[0]] = w
    return out


class CausalLM(nn.Module):
    """Base of the families' top-level models. A family defines `hidden(input_ids, cache)`
    (the final hidden states of the step's tokens) and `head(h)` (their logits); the
    exported functions are built from those:

    - prefill(input_ids (n,), cache, last (b,)) -> logits (b, vocab): the tokens of one
      step for several sequences, logits of each sequence's last token only;
    - decode(input_ids (b,), cache) -> logits (b, vocab): one new token per sequence;
    - forward(input_ids (n,), cache) -> logits (n, vocab): every token's logits."""

    family = "?"
    config: Any
    tp: int = 1

    def hidden(self, input_ids, cache):
        raise NotImplementedError(f"{type(self).__name__}.hidden")

    def head(self, h):
        raise NotImplementedError(f"{type(self).__name__}.head")

    def forward(self, input_ids, cache):
        return self.head(self.hidden(input_ids, cache))

    def prefill(self, input_ids, cache, last):
        from ..nn import functional as F
        return self.head(F.take_rows(self.hidden(input_ids, cache), last))

    def decode(self, input_ids, cache):
        return self.forward(input_ids, cache)

    def export(self) -> IRModule:
        return nn.export(self, {"prefill": PREFILL_INPUTS, "decode": STEP_INPUTS, "forward": STEP_INPUTS})

    def kv_layout(self) -> tuple[int, int, int]:
        """(layers, KV heads per device, head_dim): the KV cache each device needs."""
        raise NotImplementedError(f"{type(self).__name__}.kv_layout")

    def weight_transforms(self) -> Mapping[str, Callable[[Callable[[str], np.ndarray]], np.ndarray]]:
        """Parameter name -> how to make it from the checkpoint (given a function that
        reads a checkpoint tensor by name); parameters not listed are read as they are."""
        return {}

    def load_params(self, read: Callable[[str], np.ndarray]) -> dict[str, np.ndarray]:
        """Every parameter's array, in `named_parameters()` order, from `read(name)`
        (a checkpoint tensor by name), transformed and cast to the parameter's dtype."""
        from disco.tensor import np_dtype
        transforms = self.weight_transforms()
        out = {}
        for name, p in self.named_parameters():
            a = transforms[name](read) if name in transforms else read(name)
            a = np.asarray(a)
            if tuple(a.shape) != p.shape:
                raise ShardingError(f"{self.family}: parameter {name!r} should have shape {p.shape}, "
                                    f"the checkpoint gives {tuple(a.shape)}")
            out[name] = np.ascontiguousarray(a.astype(np_dtype(p.dtype), copy=False))
        return out


def read_safetensors(directory: str) -> Callable[[str], np.ndarray]:
    """A reader of a Hugging Face checkpoint directory's *.safetensors tensors by name
    (bfloat16 as ml_dtypes.bfloat16; disco.shards reads the files)."""
    import glob
    import os

    from disco.shards import open_tensor, read_header
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {directory!r}")
    where: dict[str, tuple] = {}
    for f in files:
        header, start = read_header(f)
        for k in header:
            if k != "__metadata__":
                where[k] = (f, header, start)

    def read(name: str) -> np.ndarray:
        if name not in where:
            close = [k for k in where if k.split(".")[-1] == name.split(".")[-1]][:5]
            raise KeyError(f"checkpoint {directory!r} has no tensor {name!r} (e.g. {close})")
        f, header, start = where[name]
        return np.array(open_tensor(f, name, header, start))
    return read


def config_value(cfg: Mapping[str, Any], *names: str, default: Optional[Any] = None) -> Any:
    """The first of `names` present in the config dict, else `default`."""
    for n in names:
        if n in cfg and cfg[n] is not None:
            return cfg[n]
    return default


def rope_settings(cfg: Mapping[str, Any]) -> tuple[float, Optional[dict]]:
    """(theta, scaling) from a config of either transformers generation
    ("rope_parameters" from version 5, or "rope_theta" and "rope_scaling")."""
    params = cfg.get("rope_parameters")
    if params:
        theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        kind = params.get("rope_type", "default")
        return theta, (dict(params) if kind not in (None, "default") else None)
    scaling = cfg.get("rope_scaling")
    return float(cfg.get("rope_theta", 10000.0)), (dict(scaling) if scaling else None)

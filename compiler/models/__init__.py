"""Language models defined with compiler.nn, one file per family, each built from a
Hugging Face `config.json` dict with parameters named as the checkpoint's tensors.

    model = models.from_config(json.load(open("ckpt/config.json")), tp=2)
    mod = model.export()                                  # IRModule: prefill, decode
    specs = model.weight_specs()      # how each parameter is read from the checkpoint
    weights = disco.llm.weights.place_weights(sess, "ckpt", specs)   # each worker its blocks

    with models.load("ckpt", tp=2) as engine:         # compiled (cached), loaded: a disco.llm.Engine
        engine.generate(["Once upon a time"], max_new_tokens=32)
"""
from __future__ import annotations

from typing import Any, Mapping

from . import gpt2, llama
from .base import CausalLM, check_stages

FAMILIES = {"llama": llama.build, "mistral": llama.build, "qwen2": llama.build, "gpt2": gpt2.build}


def from_config(cfg: Mapping[str, Any], tp: int = 1, dtype: str = "float32",
                quantization=None, pp: int = 1) -> CausalLM:
    """The model of a Hugging Face config dict, for a tensor-parallel degree `tp` in each
    of `pp` pipeline stages; `quantization`: the format its weights are stored in
    (CausalLM.store_weights)."""
    kind = cfg.get("model_type")
    if kind not in FAMILIES:
        raise ValueError(f"model_type {kind!r} is not supported; supported: {sorted(FAMILIES)}")
    model = FAMILIES[kind](cfg, tp, dtype, check_stages(pp))
    if quantization is not None and dtype != "float32":
        raise ValueError(f"quantization={quantization!r} stores the weights and computes in float32; "
                         f"dtype={dtype!r} asks for {dtype} computation (use one or the other)")
    return model.store_weights(quantization)


from .loader import load  # noqa: E402  (after from_config: the loader builds models with it)

__all__ = ["FAMILIES", "from_config", "CausalLM", "load"]

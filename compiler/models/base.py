"""What every model family shares: tensor-parallel sizing checked at build time, the
exported functions, and how the checkpoint's tensors make the model's parameters.

A family (llama.py, gpt2.py) builds a `CausalLM` from a Hugging Face config dict for a
tensor-parallel degree `tp`. Its parameters are named as the checkpoint's tensors;
where the model's layout differs from the checkpoint's (vocabulary padded to a multiple
of `tp`, KV heads repeated for more devices than KV heads, GPT-2's fused q/k/v columns
regrouped per device), the family says so with index maps (`weight_maps`), so that the
placement's contiguous split gives every device exactly its part. `weight_specs()`
describes every parameter (source tensor, shape, dtype, placement, maps) as plain
JSON-able dicts, which the runtime (disco.llm.weights) applies on each worker, reading
only that worker's block of the checkpoint.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Mapping, Optional

import numpy as np

from .. import nn
from ..nn.export import meshes_of
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


# Index maps of weight specs (disco.llm.weights describes them), along one axis of a
# parameter, applied to its checkpoint tensor.

def pad_map(size: int, axis: int = 0) -> dict:
    """The axis padded with zeros to `size` (a vocabulary padded to the degree)."""
    return {"axis": axis, "op": "pad", "size": size}


def repeat_heads_map(heads: int, repeat: int, axis: int = 0) -> dict:
    """The axis's `heads` heads each repeated `repeat` times in a row (head e of the
    parameter is head e // repeat of the checkpoint's)."""
    return {"axis": axis, "op": "repeat_heads", "heads": heads, "repeat": repeat}


def regroup_map(parts: int, groups: int, axis: int = -1) -> dict:
    """The axis's `parts` parts (q | k | v) each split in `groups` contiguous groups,
    reordered group-major (group g of every part, then group g + 1)."""
    return {"axis": axis, "op": "regroup", "parts": parts, "groups": groups}


def check_stages(pp: Any) -> int:
    """`pp` when it is a positive int (a number of pipeline stages), else a ValueError."""
    if not isinstance(pp, int) or isinstance(pp, bool) or pp < 1:
        raise ValueError(f"pp (pipeline stages) must be a positive int, got {pp!r}")
    return pp


def stage_layers(layers: int, pp: int, family: str, what: str = "num_hidden_layers") -> list[range]:
    """The layers of each of `pp` pipeline stages: contiguous, as even as can be (the
    first `layers % pp` stages one more); a ValueError naming the layer count (config
    value `what`) when a stage would have none."""
    if check_stages(pp) > layers:
        raise ValueError(f"{family}: pp = {pp} pipeline stages but {what} = {layers}: "
                         f"each stage needs at least one layer; use pp <= {layers}")
    out, start = [], 0
    for s in range(pp):
        n = layers // pp + (1 if s < layers % pp else 0)
        out.append(range(start, start + n))
        start += n
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
    pp: int = 1         # pipeline stages (meshes of tp workers each)
    # Parameters the CPU kernels read in a stored format (fnmatch patterns): the weights
    # of linear layers in (out, in) layout and embedding tables.
    STORABLE: tuple[str, ...] = ()

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

    def place_stages(self, stages: list[range], layers: nn.ModuleList, last: list) -> None:
        """With several stages (`stage_layers`): one mesh of `tp` devices per stage
        (nn.pipeline), each layer of `layers` on its stage, the modules of `last` (final
        norm, LM head) on the last; the rest (the embedding) stays on the first."""
        if len(stages) < 2:
            return
        nn.pipeline(self, len(stages), self.tp)
        for s, r in enumerate(stages):
            for i in r:
                nn.stage(layers[i], s)
        for m in last:
            nn.stage(m, len(stages) - 1)

    def kv_layout(self) -> tuple[int, int, int]:
        """(layers, KV heads per device, head_dim): the KV cache each device needs (with
        pipeline stages, the layers of the largest stage: each worker caches its own)."""
        raise NotImplementedError(f"{type(self).__name__}.kv_layout")

    def store_weights(self, quantization) -> "CausalLM":
        """Keep the weights the CPU kernels read (STORABLE) in a stored format, computing in
        float32: `quantization` is None (as declared), one format for all of them ("q4_1",
        "q8_0", "q4_0", "bfloat16"/"bf16", "float16"/"f16", "float32"), or a dict parameter
        name -> format (None: float32). A row-parallel weight ("S[1]": its input dim split)
        of a block format must split at whole blocks: k // 32 divisible by the degree
        (ShardingError naming the weight otherwise). Returns the model."""
        from disco.errors import KernelError
        from disco.weight_formats import weight_format
        if quantization is None:
            return self
        names = dict(self.named_parameters())
        storable = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in self.STORABLE)]
        if isinstance(quantization, str):
            plan = {n: quantization for n in storable}
        elif isinstance(quantization, Mapping):
            plan = dict(quantization)
            bad = [n for n in plan if n not in storable]
            if bad:
                raise ValueError(f"{self.family}: quantization names {bad[:4]}, which are not weights "
                                 f"the CPU kernels read in a stored format; those are: {storable[:4]} ...")
        else:
            raise ValueError(f"quantization must be None, a format name or a dict parameter -> "
                             f"format; got {quantization!r}")
        if not storable:
            raise ValueError(f"{self.family}: no weights can be stored quantized (its layers are "
                             f"not in the (out, in) layout the CPU kernels read); use quantization=None")
        for name, fmt in plan.items():
            if fmt is None:
                continue
            try:
                f = weight_format(fmt)
            except KernelError as e:
                raise ValueError(f"quantization {fmt!r} for {name!r}: {e}") from None
            if f.name == "float32":
                continue
            p = names[name]
            rows_split = p.placement is not None and any(
                getattr(pl, "dim", None) == 1 for pl in p.placement)
            k = p.logical_shape[-1]
            if f.quantized and rows_split and k % f.block == 0 and (k // f.block) % self.tp:
                raise ShardingError(
                    f"{self.family}: {name} ({p.logical_shape[0]} x {k}) is row-parallel (its input "
                    f"dim split over {self.tp} devices), and a {f.name} row is blocks of {f.block} "
                    f"weights: {k // f.block} blocks do not split over {self.tp} devices; use a "
                    f"degree that divides {k // f.block}, or a float format (bfloat16) for it")
            p.store(f.name)
        return self

    def weight_maps(self) -> Mapping[str, list]:
        """Parameter name -> its index maps (pad_map, repeat_heads_map, regroup_map), for
        the parameters that differ from their checkpoint tensor."""
        return {}

    def weight_sources(self) -> Mapping[str, str]:
        """Parameter name -> the checkpoint tensor it is read from, where that is not its
        own name (a tied weight may read another parameter's tensor)."""
        return {}

    def weight_specs(self) -> list[dict]:
        """Every parameter, in `named_parameters()` order, as a JSON-able spec: name,
        source (the checkpoint tensor), shape, dtype, placement (text, one entry per mesh
        axis), maps (disco.llm.weights applies them on each worker)."""
        from disco.placement import format_placement
        maps, sources = self.weight_maps(), self.weight_sources()
        meshes = meshes_of(self)
        axes = len(meshes[0].shape) if meshes else 1

        def stage(p) -> dict:       # a pipeline: the workers of the parameter's stage load it
            if len(meshes) < 2:
                return {}
            m = meshes[p.mesh]
            return {"mesh_shape": list(m.shape), "device_ids": list(m.device_ids)}

        return [{"name": name, "source": sources.get(name, name), "shape": list(p.shape),
                 "dtype": p.dtype,
                 "placement": format_placement(p.placement) if p.placement else "R" * axes,
                 "maps": [dict(m) for m in maps.get(name, ())],
                 **({"format": p.format} if p.format else {}), **stage(p)}
                for name, p in self.named_parameters()]

    def load_params(self, checkpoint) -> dict[str, np.ndarray]:
        """Every parameter's whole array, in `named_parameters()` order, from a checkpoint
        (a path, or a disco.llm.checkpoint.Checkpoint): the specs' blocks on a mesh of
        one device (for tests and tools; workers load their own blocks with
        disco.llm.weights.place_weights)."""
        import os

        from disco.llm.checkpoint import open_checkpoint
        from disco.llm.weights import check_specs, load_block
        from disco.placement import parse_placement
        ckpt = open_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
        try:
            specs = self.weight_specs()
            check_specs(ckpt, specs)
            return {s["name"]: load_block(ckpt, s, (1,) * len(parse_placement(s["placement"])), 0)
                    for s in specs}
        finally:
            if ckpt is not checkpoint:
                ckpt.close()


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

"""`models.load`: a checkpoint in, a running engine out.

    with models.load("path/to/checkpoint", tp=2) as engine:     # -> disco.llm.Engine
        print(engine.generate(["Once upon a time"], max_new_tokens=32)[0])

Steps, each failing early with an error that says what to do: read the config (a
Hugging Face directory's config.json, or a GGUF file's metadata) and check the family
and the tensor-parallel degree before any worker starts; start the session (or use
`session=`; under disco-launch or mpiexec the launched ranks, and `tp` defaults to their
number); compile, or find the compiled model in the cache (keyed by config, dtype,
degree and target, so a second load does not compile); then the engine loads the
weights, each worker its own blocks, and the tokenizer.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Optional

from disco.llm.engine import EXECUTABLE, MODEL_JSON, Engine, check_kv_dtype
from disco.llm.generation import GenerationConfig
from disco.llm.tokenizer import load_tokenizer

from ..ir.errors import ShardingError
from . import from_config, FAMILIES
from .base import check_stages

DTYPES = ("float32", "float16", "bfloat16")
CACHE_VERSION = 3       # bump when the exported format or the compiled code changes meaning
                        # (2: float32 matmuls through disco.cpu.matmul_nt_auto; 3: reshape kernels
                        # read run by run, C offsets simplified)


def cache_dir() -> str:
    """$DISCO_TP_MODEL_CACHE, else ~/.cache/disco-tp/compiled."""
    return os.environ.get("DISCO_TP_MODEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "disco-tp", "compiled")


def read_config(path: str) -> dict:
    """The Hugging Face config of a checkpoint directory or GGUF file; a clear error when
    there is none or its family is not supported."""
    if os.path.isfile(path) and path.endswith(".gguf"):
        from disco.llm.gguf import gguf_config
        cfg = gguf_config(path)
    else:
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"{path!r} is not a model checkpoint: it has no config.json "
                                    "(expected a Hugging Face model directory or a .gguf file)")
        with open(cfg_path) as f:
            cfg = json.load(f)
    kind = cfg.get("model_type")
    if kind not in FAMILIES:
        raise ValueError(f"{path!r}: model_type {kind!r} is not supported; supported: "
                         f"{', '.join(sorted(FAMILIES))}")
    return cfg


def degrees_that_work(cfg: dict, up_to: int = 16) -> list[int]:
    """Tensor-parallel degrees the model can be split by."""
    ok = []
    for tp in range(1, up_to + 1):
        try:
            from_config(cfg, tp=tp)
            ok.append(tp)
        except ShardingError:
            pass
    return ok


def resolve_quantization(quantization, path: str, cfg: dict, device: str = "cpu", pp: int = 1):
    """`quantization` as from_config takes it: None, a format name (checked), or for
    "gguf" a dict parameter -> the format the GGUF file stores it in (every 2-D weight
    the CPU kernels read; a ValueError naming tensors in other ggml types). Only for
    CPU workers (a ValueError for another `device`)."""
    from disco.errors import KernelError
    from disco.weight_formats import weight_format
    if quantization is None:
        return None
    if device != "cpu":
        raise ValueError(f"quantization={quantization!r} is for CPU workers (its kernels are CPU "
                         f"kernels); device={device!r}")
    if not isinstance(quantization, str):
        raise ValueError(f"quantization must be a format name or 'gguf', got {quantization!r}")
    if quantization.lower() != "gguf":
        try:
            name = weight_format(quantization).name
            return None if name == "float32" else name
        except KernelError as e:
            raise ValueError(f"quantization={quantization!r}: {e}; or 'gguf' (each weight as a GGUF "
                             f"file stores it)") from None
    if not (os.path.isfile(path) and path.endswith(".gguf")):
        raise ValueError(f"quantization='gguf' runs a GGUF file's weights as stored; {path!r} is not "
                         f"a .gguf file (name a format instead: q8_0, q4_0, q4_1, bfloat16, float16)")
    from disco.llm.gguf import GGUFCheckpoint
    model = from_config(cfg, tp=1, pp=pp)       # pp: a tied head is a weight of its own
    storable = [n for n, _ in model.named_parameters()
                if any(fnmatch.fnmatchcase(n, p) for p in model.STORABLE)]
    plan, bad = {}, []
    with GGUFCheckpoint(path) as ckpt:
        sources = model.weight_sources()
        for name in storable:
            source = sources.get(name, name)
            fmt = ckpt.stored_format(source)
            if fmt is None:
                bad.append(f"{ckpt.gguf_name(source)} (ggml type {ckpt._tensor(source).ggml_type})")
            plan[name] = fmt
    if bad:
        raise ValueError(f"quantization='gguf': {path!r} stores {', '.join(bad[:4])} in formats the "
                         f"CPU kernels do not read (they read F32, F16, BF16, Q8_0, Q4_0, Q4_1); name "
                         f"one format for every weight instead (quantization='q8_0')")
    return plan


def _model(cfg: dict, tp: int, dtype: str, path: str, quantization=None, pp: int = 1):
    try:
        return from_config(cfg, tp=tp, dtype=dtype, quantization=quantization, pp=pp)
    except ShardingError as e:
        raise ShardingError(f"{path!r} cannot be split over {tp} workers: {e}; degrees that work: "
                            f"{degrees_that_work(cfg)}") from None


def _config_eos(cfg: dict) -> list[int]:
    ids = cfg.get("eos_token_id")
    if ids is None:
        return []
    return [int(i) for i in (ids if isinstance(ids, list) else [ids])]


def compile_model(cfg: dict, tp: int, dtype: str, target: str = "cpu", path: str = "",
                  progress: bool = True, quantization=None, pp: int = 1) -> str:
    """The exported model folder of this config, dtype, quantization (as from_config
    takes it), degree, pipeline stages and target: from the cache, or compiled into it
    (written to a temporary folder, then renamed: a reader never sees half of one)."""
    key = {"config": cfg, "tp": tp, "dtype": dtype, "target": target, "version": CACHE_VERSION}
    if quantization is not None:
        key["quantization"] = quantization
    if pp != 1:
        key["pp"] = pp
    key = json.dumps(key, sort_keys=True, default=str)
    folder = os.path.join(cache_dir(), hashlib.sha256(key.encode()).hexdigest()[:20])
    if os.path.isfile(os.path.join(folder, MODEL_JSON)):
        return folder
    from .. import build
    model = _model(cfg, tp, dtype, path, quantization, pp)
    bar = _progress("compile", progress)
    ex = build(model.export(), target)
    bar()
    layers, kv_heads, head_dim = model.kv_layout()
    meta = {"family": cfg.get("model_type"), "config": cfg, "tp": tp, "pp": pp, "dtype": dtype, "target": target,
            **({"quantization": quantization} if quantization is not None else {}),
            "vocab_size": _real_vocab(model), "max_positions": _max_positions(cfg),
            "kv_layout": [layers, kv_heads, head_dim], "eos_token_ids": _config_eos(cfg),
            "params": model.weight_specs()}
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache_dir(), prefix=".compiling-")
    try:
        ex.export(os.path.join(tmp, EXECUTABLE))
        with open(os.path.join(tmp, MODEL_JSON), "w") as f:
            json.dump(meta, f)
        try:
            os.rename(tmp, folder)
        except OSError:         # another process finished first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _real_vocab(model) -> int:
    c = model.config
    return int(getattr(c, "vocab_size"))


def _max_positions(cfg: dict) -> Optional[int]:
    v = cfg.get("max_position_embeddings") or cfg.get("n_positions")
    return int(v) if v else None


def _progress(what: str, enabled: bool):
    """A one-step tqdm bar on a terminal; returns the callable that completes it."""
    import sys
    if not (enabled and sys.stderr.isatty()):
        return lambda: None
    from tqdm import tqdm
    bar = tqdm(total=1, desc=what, leave=False)
    return lambda: (bar.update(1), bar.close())


def launched_ranks() -> Optional[int]:
    """The number of ranks when this program was launched by disco-launch or mpiexec."""
    from disco.start import mpi_environment
    env = mpi_environment()
    if env is not None:
        return env[1]
    n = os.environ.get("DISCO_NUM_WORKERS")
    return int(n) if n else None


def load(path: str, tp: Optional[int] = None, dtype: str = "float32", session=None,
         device: str = "cpu", progress: bool = True, quantization: Optional[str] = None,
         pp: int = 1, kv_dtype: Optional[str] = None, **engine_options: Any) -> Engine:
    """A `disco.llm.Engine` for the checkpoint at `path` (see the module docstring).

    `pp`: pipeline stages; the layers are split evenly between them, each stage on its
    own `tp` workers (stage s on workers s * tp .. (s + 1) * tp - 1, with the KV cache of
    its layers), so the session has tp * pp workers (`tp` defaults to the session's or
    the launched ranks' number divided by `pp`).

    `dtype`: the dtype of weights and computation alike (float32, float16, bfloat16).
    `quantization` (CPU): the format the weights of linear layers and embeddings are
    stored in, computing in float32 (`dtype` must stay float32): "bf16" / "f16" (16-bit
    weights), "q8_0", "q4_0", "q4_1" (GGUF's blocks: read from a GGUF file's own blocks
    when it stores them so, else quantized at load), or "gguf" (each weight as the GGUF
    file stores it); None: as `dtype` says.
    `kv_dtype`: what the KV cache stores, whatever the weights' format: "bfloat16" or
    "float16" (half a float32 cache's bytes; keys and values rounded as they are
    appended, attention in float32), or None for `dtype`. The compiled model is the
    same either way (the attention kernel converts).
    `engine_options`: Engine's (max_tokens, page_size, generation_config, prefill_chunk)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    cfg = read_config(path)
    check_stages(pp)
    if tp is None:
        workers = session.num_workers if session is not None else launched_ranks() or pp
        if workers % pp:
            raise ValueError(f"pp={pp} pipeline stages do not split {workers} workers evenly; "
                             f"give tp (workers per stage) so that tp * pp workers run")
        tp = workers // pp
    if not isinstance(tp, int) or tp < 1:
        raise ValueError(f"tp must be a positive int, got {tp!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; expected one of {', '.join(DTYPES)}")
    check_kv_dtype(kv_dtype, "models.load")
    quantization = resolve_quantization(quantization, path, cfg, device, pp)
    _model(cfg, tp, dtype, path, quantization, pp)   # a degree or pp that cannot work fails before any worker
    tokenizer = load_tokenizer(path)             # a broken tokenizer too
    if tokenizer is None and "generation_config" not in engine_options and os.path.isdir(path):
        engine_options["generation_config"] = GenerationConfig.load(path, _config_eos(cfg))
    owns = session is None
    if session is None:
        import disco
        session = disco.start(tp * pp, device=device)   # under mpiexec, ranks other than 0 serve here
    elif session.num_workers != tp * pp:
        raise ValueError(f"tp={tp}" + (f" x pp={pp} = {tp * pp} workers" if pp != 1 else "") +
                         f" but the session has {session.num_workers} workers")
    try:
        folder = compile_model(cfg, tp, dtype, "cuda" if device.startswith("cuda") else "cpu", path,
                               progress, quantization, pp)
        engine = Engine.load(folder, checkpoint=path, session=session, tokenizer=tokenizer,
                             kv_dtype=kv_dtype, **engine_options)
        engine.owns_session = owns
        return engine
    except BaseException:
        if owns:
            session.shutdown()
        raise

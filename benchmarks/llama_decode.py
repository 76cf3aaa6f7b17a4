"""Llama decode speed: the project on 1 and 2 workers against transformers, in one run.

A Llama config of about 100M parameters (hidden 768, 12 layers, 12 heads, 4 KV heads,
intermediate 2048, vocab 32000), float32, random weights (transformers' own init,
saved with save_pretrained and loaded by compiler.models). Measured:

- prefill of 128 tokens (one sequence) and decode tokens per second at batch 1 and 8
  (after a 128-token prompt each), for transformers (torch CPU, eager, with its KV
  cache) and for the project on 1 and 2 worker processes (shm collectives);
- the memory-bandwidth bound of batch-1 decode: every weight is read once per token,
  so a token takes at least (weight bytes) / (read bandwidth); the read bandwidth is
  taken as a numpy copy's bandwidth (bytes read + written per second) in one process,
  and for 2 workers as the aggregate of two processes copying at once (the ceiling of a
  2-worker speedup is the ratio of the two).

Threads: one per process everywhere by default (--threads): transformers
(torch.set_num_threads), each worker (OMP/OpenBLAS threads); so the 2-worker ceiling is
the 2-process over 1-process copy bandwidth, both single-threaded, as measured.

    python benchmarks/llama_decode.py [--steps 32] [--layers 12] [--quick]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import disco  # noqa: E402,F401  (before numpy, as an application would: its OpenBLAS settings)
import numpy as np

RESULTS = os.path.join(ROOT, "benchmarks", "results", "llama_decode.json")

CONFIG = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=32000, hidden_size=768,
              intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
              rms_norm_eps=1e-5, max_position_embeddings=2048, tie_word_embeddings=False,
              rope_parameters=dict(rope_type="default", rope_theta=10000.0))
PROMPT = 128


def _copy_bandwidth(nbytes: int = 512 << 20, repeats: int = 5) -> float:
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def read_bandwidth(nbytes: int = 512 << 20, repeats: int = 5) -> float:
    """Bytes read per second by one thread streaming an array: numpy's sum of it (one
    thread, each element loaded once, nothing written; the BLAS dot product would take
    as many threads as the machine has)."""
    a = np.ones(nbytes // 8)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return nbytes / best


def _copy_worker(q, start, measure=_copy_bandwidth):
    start.wait()
    q.put(measure())


def aggregate_bandwidth(procs: int, measure=_copy_bandwidth) -> float:
    """Sum of what `measure` measures (copy bandwidth; or read_bandwidth) in `procs`
    processes measuring at the same time."""
    ctx = mp.get_context("spawn")
    q, start = ctx.Queue(), ctx.Event()
    ps = [ctx.Process(target=_copy_worker, args=(q, start, measure)) for _ in range(procs)]
    for p in ps:
        p.start()
    start.set()
    bws = [q.get(timeout=120) for _ in ps]
    for p in ps:
        p.join(timeout=30)
    return sum(bws)


def make_checkpoint(directory: str, cfg: dict) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k != "architectures"})).save_pretrained(directory)


def bench_transformers(directory: str, steps: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    out = {}
    with torch.no_grad():
        for batch in (1, 8):
            ids = torch.tensor(rng.integers(0, CONFIG["vocab_size"], (batch, PROMPT)))
            t = time.perf_counter()
            r = model(ids, use_cache=True)
            prefill = time.perf_counter() - t
            past, nxt = r.past_key_values, r.logits[:, -1].argmax(-1, keepdim=True)
            t = time.perf_counter()
            for _ in range(steps):
                r = model(nxt, past_key_values=past, use_cache=True)
                past, nxt = r.past_key_values, r.logits[:, -1].argmax(-1, keepdim=True)
            dt = time.perf_counter() - t
            if batch == 1:
                out["prefill_s"] = prefill
            out[f"decode_tok_s_b{batch}"] = batch * steps / dt
    return out


def bench_ours(directory: str, tp: int, steps: int, threads: int) -> dict:
    import disco
    from compiler import build, models
    from disco.llm.weights import place_weights
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    cfg = json.load(open(os.path.join(directory, "config.json")))
    model = models.from_config(cfg, tp=tp)
    ex = build(model.export())
    out = {}
    rng = np.random.default_rng(0)
    with disco.ProcessSession(tp) as sess:
        dmod = sess.load_module(ex)
        weights = place_weights(sess, directory, model.weight_specs())
        layers, kv, hd = model.kv_layout()
        cache = sess.get_global_func("disco.kv.create")(layers, kv, hd, 8 * (PROMPT + steps) // 16 + 16, 16,
                                                        "float32")
        begin = sess.get_global_func("disco.kv.begin_forward")
        add = sess.get_global_func("disco.kv.add_sequence")
        sid = 0
        for batch in (1, 8):
            seqs = list(range(sid, sid + batch))
            sid += batch
            for s in seqs:
                add(cache, s)
            prompts = rng.integers(0, CONFIG["vocab_size"], (batch, PROMPT))
            t = time.perf_counter()
            begin(cache, seqs, [PROMPT] * batch)
            logits = dmod["forward"](prompts.reshape(-1).astype(np.int64), cache, *weights).fetch()
            prefill = time.perf_counter() - t
            nxt = logits.reshape(batch, PROMPT, -1)[:, -1].argmax(-1).astype(np.int64)
            t = time.perf_counter()
            for _ in range(steps):
                begin(cache, seqs, [1] * batch)
                nxt = dmod["decode"](nxt, cache, *weights).fetch().argmax(-1).astype(np.int64)
            dt = time.perf_counter() - t
            if batch == 1:
                out["prefill_s"] = prefill
            out[f"decode_tok_s_b{batch}"] = batch * steps / dt
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--layers", type=int, default=CONFIG["num_hidden_layers"])
    p.add_argument("--quick", action="store_true", help="2 layers, 8 steps (a smoke run)")
    p.add_argument("--threads", type=int, default=1, help="threads per process (transformers, each worker)")
    a = p.parse_args(argv)
    cfg = dict(CONFIG, num_hidden_layers=2 if a.quick else a.layers)
    steps = 8 if a.quick else a.steps
    with tempfile.TemporaryDirectory() as d:
        make_checkpoint(d, cfg)
        weight_bytes = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors"))
        bw1 = aggregate_bandwidth(1)
        bw2 = aggregate_bandwidth(2)
        rows = {"transformers": bench_transformers(d, steps, a.threads)}
        for tp in (1, 2):
            rows[f"ours_tp{tp}"] = bench_ours(d, tp, steps, a.threads)
    floor1 = weight_bytes / bw1
    print(f"weights {weight_bytes / 1e6:.0f} MB; copy bandwidth 1 process {bw1 / 1e9:.1f} GB/s, "
          f"2 processes {bw2 / 1e9:.1f} GB/s (2-process ceiling {bw2 / bw1:.2f}x); "
          f"batch-1 decode floor {floor1 * 1e3:.1f} ms/token = {1 / floor1:.1f} tok/s")
    print(f"{'':14s} {'prefill 128':>12s} {'decode b1':>12s} {'decode b8':>12s}  b1 vs floor")
    for name, r in rows.items():
        print(f"{name:14s} {r['prefill_s'] * 1e3:9.1f} ms {r['decode_tok_s_b1']:8.1f} t/s "
              f"{r['decode_tok_s_b8']:8.1f} t/s  {r['decode_tok_s_b1'] * floor1:5.2f}")
    hf, o1, o2 = rows["transformers"], rows["ours_tp1"], rows["ours_tp2"]
    speedup = o2["decode_tok_s_b1"] / o1["decode_tok_s_b1"]
    print(f"1 worker / transformers: decode b1 {o1['decode_tok_s_b1'] / hf['decode_tok_s_b1']:.2f}x, "
          f"b8 {o1['decode_tok_s_b8'] / hf['decode_tok_s_b8']:.2f}x, prefill {hf['prefill_s'] / o1['prefill_s']:.2f}x")
    print(f"2 workers / 1 worker at batch 1: {speedup:.2f}x = {speedup / (bw2 / bw1):.0%} of the "
          f"{bw2 / bw1:.2f}x the memory allows (target >= 80%)")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"config": cfg, "steps": steps, "threads": a.threads, "weight_bytes": weight_bytes, "copy_bw_1": bw1,
                   "copy_bw_2": bw2, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

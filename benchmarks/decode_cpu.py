"""CPU decode against the memory-bandwidth floor, per weight format (issue 14), in one run.

Checkpoints: SmolLM2-135M-Instruct's Q4_1 GGUF file (compiler.models.fetch; its Q8_0
embedding is the tied LM head) and the ~100M-parameter Llama of benchmarks/llama_decode.py
(hidden 768, 12 layers, vocab 32000; transformers' random init) saved in bfloat16.
Rows, each: prefill tokens/s of one 128-token prompt, decode tokens/s at batch 1 and 8
after a 128-token prompt each (greedy, argmax on the controller):

- this project, `quantization=` each format (the GGUF file also "gguf": every weight
  from its own blocks), 1 worker with 1 and 2 threads, 2 workers with 1 thread each
  (SmolLM2's 9 heads do not split over 2 workers: skipped, with the reason);
- transformers (torch CPU build) in float32 and bfloat16 with the same threads;
- llama.cpp (the prebuilt `xllamacpp` wheel) on the GGUF file, 1 and 2 threads; the
  bfloat16 Llama is not converted (it has no tokenizer, which a GGUF file needs): skipped;
- the floor: copy bandwidth of 1 process and the aggregate of 2, bytes of weights read
  per token (every weight but the embedding table, of which a token reads one row;
  a tied table is read whole as the LM head), and each row's fraction of
  floor = bandwidth / bytes (batch 1). The copy bandwidth counts the bytes read and
  written; beside it (not instead) "of read" is the fraction of what one thread reading
  an array without writing reaches (numpy's sum of it), the limit
  of a decode step's weight stream on one core.

Per-token overhead (issue 14 item 4): the ~100M Llama's decode step at batch 1 on 2
workers, against the same model with its kernels made negligible (every dim 8 or 32,
vocabulary 256, the same 12 layers: the same VM instructions, library calls, collectives,
session round trip, fetch and argmax): the fraction of the step that is not kernels.

`--kv-dtype bfloat16` (or float16) runs this project's rows over a 16-bit KV cache
(half the KV bytes per token, recorded in each row); the default is float32.

The machine may be shared: the load average is recorded before and after.

    python benchmarks/decode_cpu.py [--steps 16] [--quick] [--formats float32,bfloat16,q8_0,q4_0]
                                    [--kv-dtype float32|float16|bfloat16]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import disco  # noqa: E402,F401
import disco.cpu_kernels  # noqa: E402
import numpy as np  # noqa: E402

from llama_decode import CONFIG, aggregate_bandwidth, read_bandwidth  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results", "decode_cpu.json")
PROMPT = 128
TINY = dict(CONFIG, vocab_size=256, hidden_size=96, intermediate_size=32, num_attention_heads=12,
            num_key_value_heads=4, head_dim=8)


def make_llama(directory: str, cfg: dict) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k != "architectures"}))
    model.to(torch.bfloat16).save_pretrained(directory)


def weight_bytes(specs: list[dict], tied: bool) -> int:
    """Bytes of weights a batch-1 decode step reads."""
    from disco.weight_formats import FORMATS
    total = 0
    for s in specs:
        if s["name"] == "model.embed_tokens.weight" and not tied:
            continue
        item = FORMATS[s["format"]].dtype.itemsize if "format" in s else np.dtype(
            "float32" if s["dtype"] == "float32" else "float16").itemsize
        total += math.prod(s["shape"]) * item
    return total


def bench_ours(path: str, cfg: dict, tp: int, threads: int, quantization, steps: int,
               batches=(1, 8), kv_dtype: str = "float32") -> dict:
    """Prefill and decode of the compiled model, weights in `quantization`, the KV cache
    in `kv_dtype`."""
    from compiler.models.loader import compile_model, resolve_quantization
    from disco.executable import load_executable
    from disco.llm.engine import EXECUTABLE, MODEL_JSON
    from disco.llm.weights import place_weights
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[v] = str(threads)
    q = resolve_quantization(quantization, path, cfg)
    folder = compile_model(cfg, tp, "float32", "cpu", path, False, q)
    meta = json.load(open(os.path.join(folder, MODEL_JSON)))
    specs = meta["params"]
    vocab = cfg["vocab_size"]
    rng = np.random.default_rng(0)
    out = {"bytes_per_token": weight_bytes(specs, bool(cfg.get("tie_word_embeddings")))}
    with disco.ProcessSession(tp) as sess:
        sess.init_ccl("shm")
        dmod = sess.load_module(load_executable(os.path.join(folder, EXECUTABLE)))
        weights = place_weights(sess, path, specs)
        layers, kv, hd = meta["kv_layout"]
        out["kv_bytes_per_token"] = 2 * layers * kv * hd * (4 if kv_dtype == "float32" else 2)
        cache = sess.get_global_func("disco.kv.create")(layers, kv, hd, 8 * (PROMPT + steps + 1) // 16 + 16,
                                                        16, kv_dtype)
        begin = sess.get_global_func("disco.kv.begin_forward")
        add = sess.get_global_func("disco.kv.add_sequence")
        remove = sess.get_global_func("disco.kv.remove_sequence")
        add(cache, 0)                   # a prompt untimed: the prefill plan recorded, buffers made
        begin(cache, [0], [PROMPT])
        dmod["forward"](rng.integers(0, vocab, PROMPT).astype(np.int64), cache, *weights).fetch()
        remove(cache, 0)
        sid = 1
        for batch in batches:
            seqs = list(range(sid, sid + batch))
            sid += batch
            for s in seqs:
                add(cache, s)
            prompts = rng.integers(0, vocab, (batch, PROMPT))
            t = time.perf_counter()
            begin(cache, seqs, [PROMPT] * batch)
            logits = dmod["forward"](prompts.reshape(-1).astype(np.int64), cache, *weights).fetch()
            prefill = time.perf_counter() - t
            nxt = logits.reshape(batch, PROMPT, -1)[:, -1].argmax(-1).astype(np.int64)
            begin(cache, seqs, [1] * batch)       # one step untimed (first-call allocations)
            nxt = dmod["decode"](nxt, cache, *weights).fetch().argmax(-1).astype(np.int64)
            times = []
            for _ in range(steps):
                t = time.perf_counter()
                begin(cache, seqs, [1] * batch)
                nxt = dmod["decode"](nxt, cache, *weights).fetch().argmax(-1).astype(np.int64)
                times.append(time.perf_counter() - t)
            if batch == batches[0]:
                out["prefill_tok_s"] = PROMPT * batch / prefill
            # median step: robust to the other jobs of a shared machine
            out[f"decode_tok_s_b{batch}"] = batch / float(np.median(times))
            out[f"step_ms_b{batch}"] = 1e3 * float(np.median(times))
            for s in seqs:              # the next batch gets the whole cache
                remove(cache, s)
    return out


def bench_transformers(directory: str, threads: int, dtype: str, steps: int, gguf_file=None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(threads)
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=getattr(torch, dtype), **kw).eval()
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    out = {}
    with torch.no_grad():
        for batch in (1, 8):
            ids = torch.tensor(rng.integers(0, vocab, (batch, PROMPT)))
            t = time.perf_counter()
            r = model(ids, use_cache=True)
            prefill = time.perf_counter() - t
            past, nxt = r.past_key_values, r.logits[:, -1].argmax(-1, keepdim=True)
            times = []
            for _ in range(steps):
                t = time.perf_counter()
                r = model(nxt, past_key_values=past, use_cache=True)
                past, nxt = r.past_key_values, r.logits[:, -1].argmax(-1, keepdim=True)
                times.append(time.perf_counter() - t)
            if batch == 1:
                out["prefill_tok_s"] = PROMPT / prefill
            out[f"decode_tok_s_b{batch}"] = batch / float(np.median(times))
    return out


def bench_llamacpp(path: str, threads: int, steps: int) -> dict:
    """llama.cpp through xllamacpp's in-process server: its own timings (prompt and
    predicted tokens per second) of a 128-token prompt and `steps` greedy tokens."""
    import xllamacpp as x
    p = x.CommonParams()
    p.model.path = path
    p.n_ctx, p.n_parallel, p.warmup = 1024, 1, True
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = threads
    server = x.Server(p)
    rng = np.random.default_rng(0)
    best = {}
    for _ in range(2):   # the first call warms up
        r = server.handle_completions({"prompt": [int(i) for i in rng.integers(100, 40000, PROMPT)],
                                       "n_predict": steps * 2, "temperature": 0, "ignore_eos": True,
                                       "cache_prompt": False})
        best = {"prefill_tok_s": r["timings"]["prompt_per_second"],
                "decode_tok_s_b1": r["timings"]["predicted_per_second"]}
    del server
    return best


def _run(rows: dict, key: str, fn, *args) -> None:
    print(f"  {key} ...", flush=True)
    try:
        rows[key] = fn(*args)
    except Exception as e:     # a row that cannot run is reported, not fatal
        rows[key] = {"skipped": f"{type(e).__name__}: {e}"}
    print(f"    {rows[key]}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="2 layers, 4 steps (a smoke run)")
    p.add_argument("--formats", default="float32,bfloat16,q8_0,q4_0")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--kv-dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="what this project's KV cache stores")
    a = p.parse_args(argv)
    steps = 4 if a.quick else a.steps
    threads = [int(t) for t in a.threads.split(",")]
    formats = a.formats.split(",")
    load_before = os.getloadavg()
    bw = {1: aggregate_bandwidth(1), 2: aggregate_bandwidth(2)}
    read = {1: aggregate_bandwidth(1, read_bandwidth), 2: aggregate_bandwidth(2, read_bandwidth)}
    print(f"copy bandwidth: 1 process {bw[1] / 1e9:.1f} GB/s, 2 processes {bw[2] / 1e9:.1f} GB/s "
          f"(2-worker ceiling {bw[2] / bw[1]:.2f}x); load average {load_before[0]:.1f}", flush=True)
    print(f"read-only streams (beside the floor, not it): 1 process {read[1] / 1e9:.1f} GB/s, 2 processes "
          f"{read[2] / 1e9:.1f} GB/s", flush=True)
    from compiler.models.fetch import try_fetch
    from disco.llm.gguf import gguf_config
    results = {"benchmark": "decode_cpu", "steps": steps, "prompt": PROMPT, "copy_Bps": bw, "read_Bps": read,
               "load_average_before": load_before, "isa": disco.cpu_kernels.default_isa(), "kv_dtype": a.kv_dtype,
               "models": {}}
    with tempfile.TemporaryDirectory() as d:
        os.environ.setdefault("DISCO_TP_MODEL_CACHE", os.path.join(d, "compiled"))
        cfg = dict(CONFIG, num_hidden_layers=2 if a.quick else CONFIG["num_hidden_layers"])
        llama = os.path.join(d, "llama-100m")
        make_llama(llama, cfg)
        cfg = json.load(open(os.path.join(llama, "config.json")))
        print("llama-100m (bfloat16 checkpoint)", flush=True)
        rows = {}
        for t in threads:
            for dt in ("float32", "bfloat16"):
                _run(rows, f"transformers {dt} t{t}", bench_transformers, llama, t, dt, steps)
        for fmt in formats:
            for tp, t in [(1, t) for t in threads] + [(2, 1)]:
                _run(rows, f"ours {fmt} tp{tp} t{t}", bench_ours, llama, cfg, tp, t,
                     None if fmt == "float32" else fmt, steps, (1, 8), a.kv_dtype)
        rows["llama.cpp"] = {"skipped": "the random bfloat16 Llama has no tokenizer, which a GGUF "
                                        "file for llama.cpp needs; not converted"}
        results["models"]["llama-100m"] = {"config": cfg, "rows": rows}

        # item 4: the decode step with the kernels made negligible, batch 1, 2 workers
        tiny_dir = os.path.join(d, "llama-tiny")
        tiny_cfg = dict(TINY, num_hidden_layers=cfg["num_hidden_layers"])
        make_llama(tiny_dir, tiny_cfg)
        over = {}
        for fmt in ("float32", "bfloat16"):
            _run(over, f"tiny {fmt} tp2 t1", bench_ours, tiny_dir, json.load(open(os.path.join(
                tiny_dir, "config.json"))), 2, 1, None if fmt == "float32" else fmt, steps * 4, (1,), a.kv_dtype)
            full = rows.get(f"ours {fmt} tp2 t1", {})
            if "step_ms_b1" in full and "step_ms_b1" in over[f"tiny {fmt} tp2 t1"]:
                over[f"fraction {fmt}"] = over[f"tiny {fmt} tp2 t1"]["step_ms_b1"] / full["step_ms_b1"]
        results["overhead"] = over

        smol = try_fetch("smollm2")
        if smol is None:
            results["models"]["smollm2"] = {"skipped": "SmolLM2's GGUF file cannot be fetched"}
        else:
            smol = str(smol)
            scfg = gguf_config(smol)
            print("smollm2 (Q4_1 GGUF)", flush=True)
            srows = {}
            for t in threads:
                _run(srows, f"transformers float32 t{t}", bench_transformers, os.path.dirname(smol), t,
                     "float32", steps, os.path.basename(smol))
                _run(srows, f"llama.cpp q4_1 t{t}", bench_llamacpp, smol, t, steps)
                for q in ("gguf", "float32"):
                    _run(srows, f"ours {q} tp1 t{t}", bench_ours, smol, scfg, 1, t,
                         None if q == "float32" else q, steps, (1, 8), a.kv_dtype)
            srows["ours tp2"] = {"skipped": "9 query heads and 3 KV heads do not split over 2 workers"}
            results["models"]["smollm2"] = {"config": scfg, "rows": srows}
    results["load_average_after"] = os.getloadavg()
    summarize(results)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1, default=str)
    return 0


def summarize(results: dict) -> None:
    bw = results["copy_Bps"]
    for name, m in results["models"].items():
        if "rows" not in m:
            continue
        print(f"\n{name}: {'row':28s} {'prefill t/s':>11s} {'b1 t/s':>8s} {'b8 t/s':>8s} "
              f"{'MB/token':>9s} {'of floor':>8s} {'of read':>8s}")
        for key, r in m["rows"].items():
            if "skipped" in r:
                print(f"  {key:34s} skipped: {r['skipped']}")
                continue
            b = r.get("bytes_per_token")
            procs = 2 if " tp2 " in key else 1
            frac = r["decode_tok_s_b1"] * b / bw[procs] if b else None
            r["of_floor"] = frac
            r["of_read"] = r["decode_tok_s_b1"] * b / results["read_Bps"][procs] if b else None
            print(f"  {key:34s} {r.get('prefill_tok_s', float('nan')):11.1f} {r['decode_tok_s_b1']:8.1f} "
                  f"{r.get('decode_tok_s_b8', float('nan')):8.1f} "
                  f"{(b or float('nan')) / 1e6:9.1f} {frac if frac is not None else float('nan'):8.2f} "
                  f"{r['of_read'] if r['of_read'] is not None else float('nan'):8.2f}")
    rows = results["models"].get("llama-100m", {}).get("rows", {})

    def tok(key, b="decode_tok_s_b1"):
        return rows.get(key, {}).get(b)
    checks = {}
    for t in (1, 2):
        if tok(f"ours bfloat16 tp1 t{t}") and tok(f"transformers float32 t{t}"):
            checks[f"bf16 1 worker / transformers float32, t{t}"] = \
                tok(f"ours bfloat16 tp1 t{t}") / tok(f"transformers float32 t{t}")
    if tok("ours bfloat16 tp1 t1"):
        checks["bf16 1 worker t1 of floor"] = rows["ours bfloat16 tp1 t1"]["of_floor"]
    ceiling = bw[2] / bw[1]
    for fmt in ("float32", "bfloat16", "q8_0", "q4_0"):
        if tok(f"ours {fmt} tp2 t1") and tok(f"ours {fmt} tp1 t1"):
            s = tok(f"ours {fmt} tp2 t1") / tok(f"ours {fmt} tp1 t1")
            checks[f"{fmt} 2 workers / 1 worker (of the {ceiling:.2f}x memory allows)"] = s / ceiling
    srows = results["models"].get("smollm2", {}).get("rows", {})
    for t in (1, 2):
        a, b = srows.get(f"ours gguf tp1 t{t}", {}), srows.get(f"llama.cpp q4_1 t{t}", {})
        if "decode_tok_s_b1" in a and "decode_tok_s_b1" in b:
            checks[f"smollm2 q4_1 / llama.cpp, t{t}"] = a["decode_tok_s_b1"] / b["decode_tok_s_b1"]
    for k, v in results.get("overhead", {}).items():
        if k.startswith("fraction"):
            checks[f"per-token overhead {k[9:]} (tp2, batch 1)"] = v
    results["checks"] = checks
    print()
    for k, v in checks.items():
        print(f"  {k}: {v:.2f}")


if __name__ == "__main__":
    sys.exit(main())

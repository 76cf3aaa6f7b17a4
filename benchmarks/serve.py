"""disco-serve under load: output tokens per second, and p50/p99 time to first token and
inter-token latency, for 1, 8 and 32 concurrent streaming clients (the official `openai`
client, asyncio), beside the same requests run through `engine.generate` one at a time.

The model: the ~100M Llama of benchmarks/llama_decode.py (hidden 768, 12 layers, 12
heads, 4 KV heads, intermediate 2048, vocab 32000), float32, random weights written here
with numpy (std 0.02), with the small byte-level tokenizer of tests/llm (the server takes
text); 2 workers. The workload: 32 requests with prompts of 16 to 256 tokens (token
ids, mixed lengths), 32 new tokens each, greedy, EOS ignored, so every run makes the same
1024 tokens. Each concurrency level sends the 32 requests through that many clients,
each taking the next request when its last one ends. The baseline runs first, in this
process (the engine on 2 workers, `generate` per request); then the server, as
`python -m compiler.models.serve`, is started once for the three levels. The figures
include everything a client sees (HTTP, JSON, the scheduler); the client shares the
machine's cores with the server and its workers. Time to first token is to the first
chunk with text: random ids through the byte-level tokenizer often make bytes that are
not yet whole characters, held back until they are (of the 32 requests, a few get no
text for several tokens, two for all 31 after the first), so the TTFT p99 of the
32-client run is near its end although the last prompt's first token comes from step 17
of 48 (with prefill_chunk 256; the server's default is now 512).

    python benchmarks/serve.py [--layers 12] [--requests 32] [--tokens 32] [--quick]
                               [--quantization bf16]

`--quantization` loads the weights in that format on both sides (the server's flag of
the same name); results go to results/serve.json, or serve-<format>.json. bfloat16
weights run prefill and batched decode on AMX tiles where the CPU has them
(disco.cpu_kernels), with float32 activations held exactly; DISCO_CPU_AMX_X_TERMS=1 in
the environment (it reaches the workers) rounds them to bfloat16 there instead, as a
bfloat16 model computes: results then go to serve-<format>-x1.json. float32 weights run
there too, split into three bfloat16 parts like x (float32's accuracy); with
DISCO_CPU_AMX_FLOAT32=0 they stay on AVX-512 and numpy's BLAS (the results file records
which: float32_amx_rows -1).

Target (issue 16): at 32 clients, throughput at least 4x the one-at-a-time rate.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "llm"))
import disco  # noqa: E402,F401  (before numpy, as an application would: its OpenBLAS settings)
import disco.cpu_kernels  # noqa: E402
import numpy as np  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results", "serve.json")
CONFIG = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=32000, hidden_size=768,
              intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
              rms_norm_eps=1e-5, max_position_embeddings=2048, tie_word_embeddings=False,
              rope_parameters=dict(rope_type="default", rope_theta=10000.0))
LEVELS = (1, 8, 32)


def make_checkpoint(directory: str, cfg: dict) -> None:
    """Random float32 weights in the Hugging Face Llama layout, the tokenizer of tests/llm."""
    import tok_fixtures
    from safetensors.numpy import save_file
    tok_fixtures.byte_level_dir(directory)
    rng = np.random.default_rng(0)
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = d // cfg["num_attention_heads"]
    h, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02)
    t = {"model.embed_tokens.weight": w(v, d), "model.norm.weight": np.ones(d, np.float32),
         "lm_head.weight": w(v, d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": np.ones(d, np.float32),
                  p + "post_attention_layernorm.weight": np.ones(d, np.float32),
                  p + "self_attn.q_proj.weight": w(h * hd, d), p + "self_attn.k_proj.weight": w(kv * hd, d),
                  p + "self_attn.v_proj.weight": w(kv * hd, d), p + "self_attn.o_proj.weight": w(d, h * hd),
                  p + "mlp.gate_proj.weight": w(f, d), p + "mlp.up_proj.weight": w(f, d),
                  p + "mlp.down_proj.weight": w(d, f)})
    save_file(t, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as fh:
        json.dump(cfg, fh)


def workload(n: int, tokenizer_vocab: int) -> list[list[int]]:
    """n prompts of 16..256 token ids (the tokenizer's ids, so they decode), lengths mixed."""
    rng = np.random.default_rng(1)
    lengths = np.linspace(16, 256, n).astype(int)
    rng.shuffle(lengths)
    return [rng.integers(3, tokenizer_vocab, int(k)).tolist() for k in lengths]


def baseline(path: str, prompts, tokens: int, quantization=None) -> dict:
    """engine.generate one request at a time, on 2 workers, in this process."""
    from compiler import models
    with models.load(path, tp=2, quantization=quantization, progress=False) as engine:
        engine.generate(prompts[0][:16], max_new_tokens=2, temperature=0, ignore_eos=True)   # warm
        ttft, t0 = [], time.perf_counter()
        out = 0
        for p in prompts:
            start = time.perf_counter()
            r = engine.submit(p, tokens, temperature=0, ignore_eos=True)
            while not r.tokens:
                engine.step()
            ttft.append(time.perf_counter() - start)
            engine.run([r])
            out += len(r.tokens)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "output_tokens": out, "tok_s": out / wall, "ttft_p50_s": _pct(ttft, 50),
            "ttft_p99_s": _pct(ttft, 99)}


class Server:
    def __init__(self, path: str, env: dict, quantization=None):
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        extra = ["--quantization", quantization] if quantization else []
        self.proc = subprocess.Popen([sys.executable, "-m", "compiler.models.serve", "--model", path, "--tp", "2",
                                      "--port", "0", "--no-progress", "--max-waiting", "64", *extra],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            text = open(self.log.name).read()
            m = re.search(r"listening on (http://\S+)", text)
            if m and "ready" in text:
                self.url = m[1]
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"disco-serve exited:\n{text}")
            time.sleep(0.2)
        self.stop()
        raise SystemExit("disco-serve was not ready in 600 s")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def level(url: str, model: str, prompts, tokens: int, clients: int) -> dict:
    import openai
    todo = list(range(len(prompts)))
    ttft, itl, out = [], [], 0

    async def client(c):
        nonlocal out
        while todo:
            i = todo.pop(0)
            start = last = time.perf_counter()
            stream = await c.completions.create(model=model, prompt=prompts[i], max_tokens=tokens, temperature=0,
                                                stream=True, extra_body={"ignore_eos": True},
                                                stream_options={"include_usage": True})
            first = True
            async for ch in stream:
                now = time.perf_counter()
                if ch.choices and ch.choices[0].text:
                    if first:
                        ttft.append(now - start)
                        first = False
                    else:
                        itl.append(now - last)
                    last = now
                if ch.usage:
                    out += ch.usage.completion_tokens

    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"clients": clients, "wall_s": wall, "output_tokens": out, "tok_s": out / wall,
            "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
            "itl_p50_s": _pct(itl, 50), "itl_p99_s": _pct(itl, 99)}


def _pct(xs, q):
    return float(np.percentile(xs, q)) if xs else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=CONFIG["num_hidden_layers"])
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    p.add_argument("--quick", action="store_true", help="2 layers, 8 tokens (a smoke run)")
    p.add_argument("--quantization", default=None, help="weight format on both sides (bf16, q8_0, ...)")
    a = p.parse_args(argv)
    cfg = dict(CONFIG, num_hidden_layers=2 if a.quick else a.layers)
    tokens = 8 if a.quick else a.tokens
    load = os.getloadavg()          # other work on the machine shows in every figure: recorded
    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as cache:
        os.environ["DISCO_TP_MODEL_CACHE"] = cache
        make_checkpoint(d, cfg)
        from disco.llm.tokenizer import Tokenizer
        prompts = workload(a.requests, Tokenizer.load(d).vocab_size)
        base = baseline(d, prompts, tokens, a.quantization)
        print(f"one at a time (engine.generate): {base['output_tokens']} tokens in {base['wall_s']:.1f} s = "
              f"{base['tok_s']:.1f} tok/s; TTFT p50 {base['ttft_p50_s'] * 1e3:.0f} ms")
        server = Server(d, dict(os.environ), a.quantization)
        rows = []
        try:
            for clients in LEVELS:
                r = asyncio.run(level(server.url, os.path.basename(d), prompts, tokens, clients))
                r["vs_one_at_a_time"] = r["tok_s"] / base["tok_s"]
                rows.append(r)
        finally:
            server.stop()
    print(f"{'clients':>7s} {'tok/s':>8s} {'x alone':>8s} {'TTFT p50':>9s} {'TTFT p99':>9s} "
          f"{'ITL p50':>8s} {'ITL p99':>8s}")
    for r in rows:
        print(f"{r['clients']:7d} {r['tok_s']:8.1f} {r['vs_one_at_a_time']:7.2f}x {r['ttft_p50_s'] * 1e3:6.0f} ms "
              f"{r['ttft_p99_s'] * 1e3:6.0f} ms {r['itl_p50_s'] * 1e3:5.0f} ms {r['itl_p99_s'] * 1e3:5.0f} ms")
    top = rows[-1]["vs_one_at_a_time"]
    print(f"at {LEVELS[-1]} clients: {top:.2f}x the one-at-a-time rate (target >= 4x)")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    terms = disco.cpu_kernels.amx_x_terms()
    suffix = (f"-{a.quantization}" if a.quantization else "") + (f"-x{terms}" if terms not in (0, 3) else "")
    results = RESULTS.replace(".json", f"{suffix}.json")
    with open(results, "w") as f:
        json.dump({"config": cfg, "requests": a.requests, "new_tokens": tokens, "tp": 2,
                   "quantization": a.quantization, "cpu_isa": disco.cpu_kernels.default_isa(),
                   "amx_x_terms": terms, "float32_amx_rows": disco.cpu_kernels.amx_rows(dtype="float32"),
                   "cores": os.cpu_count(), "load_average_before": load, "load_average_after": os.getloadavg(),
                   "one_at_a_time": base, "levels": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

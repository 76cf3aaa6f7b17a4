"""Worker CPU time per prefill token: the ~100M Llama of benchmarks/serve.py (float32, 2
workers), its 32 prompts (16..256 tokens, 4337 in all) put in with `prefill_chunk` 512
(the server's default) and one new token each, so every step is a 512-token prefill.
Measured as the workers' CPU time (/proc/<pid>/stat, user + system) over the run,
divided by the prompt tokens; the machine may be shared, and CPU time is what other
processes disturb least.

    python benchmarks/prefill_cpu.py [--rounds 5] [--profile] [--quantization bf16] [--decode STEPS]
                                     [EXPORTED ...]

`--decode STEPS`: the same per token for STEPS decode steps of the 32 sequences together
(their prompts put in first, not measured): the batched decode of a busy server.

Without EXPORTED folders the model is compiled here (compiler.models' cache). Given
several exported folders (e.g. the same model compiled by two versions of the
compiler: `--compile-only` prints the folder), each gets its own session and they run
in turn, round by round, so a comparison sees the same load. `--profile` adds each
kernel's and packed function's share of the workers' thread CPU time (benchmarks/
_step_profile.py wraps the VM plans' steps on the workers).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "tests", "llm"))
import disco  # noqa: E402,F401
import numpy as np  # noqa: E402

import serve as serve_bench  # noqa: E402

CKPT = os.path.join(tempfile.gettempdir(), f"disco-prefill-bench-{os.getuid()}")
TICK = os.sysconf("SC_CLK_TCK")


def checkpoint() -> str:
    if not os.path.isfile(os.path.join(CKPT, "config.json")):
        os.makedirs(CKPT, exist_ok=True)
        serve_bench.make_checkpoint(CKPT, serve_bench.CONFIG)
    return CKPT


def proc_stat(pids) -> np.ndarray:
    """user s, system s, minor page faults: summed over the processes `pids`."""
    total = np.zeros(3)
    for p in pids:
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()   # after pid and comm
        total += [int(fields[11]) / TICK, int(fields[12]) / TICK, int(fields[7])]
    return total


class Profile:
    """The workers' per-step CPU table of one engine (benchmarks/_step_profile.py), summed
    over the measured parts of the runs only."""

    def __init__(self, engine):
        engine.session.import_module("_step_profile")
        self.fn = engine.session.get_global_func("bench.step_profile")
        self.workers = range(engine.session.num_workers)
        self.tables = [{} for _ in self.workers]

    def reset(self) -> None:
        for w in self.workers:
            self.fn(True).fetch(w)

    def add(self) -> None:
        for table, w in zip(self.tables, self.workers):
            for name, (count, seconds) in self.fn().fetch(w).items():
                entry = table.setdefault(name, [0, 0.0])
                entry[0] += count
                entry[1] += seconds


def run_once(engine, prompts, chunk, profile=None) -> tuple[float, float, int]:
    """The prompts put in, one new token each: worker CPU, wall, prompt tokens."""
    engine.prefill_chunk = chunk
    pids = engine.session.pids
    if profile:
        profile.reset()
    c0, t0 = proc_stat(pids), time.perf_counter()
    reqs = [engine.submit(p, 1, temperature=0, ignore_eos=True) for p in prompts]
    engine.run(reqs)
    used = proc_stat(pids) - c0, time.perf_counter() - t0, sum(map(len, prompts))
    if profile:
        profile.add()
    return used


def run_decode(engine, prompts, steps, profile=None) -> tuple[float, float, int]:
    """The prompts put in (not measured), then `steps` decode steps of all of them: worker
    CPU, wall, tokens made."""
    engine.prefill_chunk = 512
    reqs = [engine.submit(p, steps + 2, temperature=0, ignore_eos=True) for p in prompts]
    while any(len(r.tokens) == 0 for r in reqs):
        engine.step()
    pids = engine.session.pids
    if profile:
        profile.reset()
    c0, t0 = proc_stat(pids), time.perf_counter()
    for _ in range(steps):
        engine.step()
    used = proc_stat(pids) - c0, time.perf_counter() - t0, steps * len(prompts)
    if profile:
        profile.add()
    engine.run(reqs)
    return used


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("exported", nargs="*")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--quantization", default=None, help="weight format (bf16, q8_0, ...): as models.load takes it")
    ap.add_argument("--decode", type=int, default=0, metavar="STEPS",
                    help="measure STEPS decode steps of the 32 sequences instead of their prefill")
    args = ap.parse_args()
    path = checkpoint()
    if args.compile_only or not args.exported:
        from compiler.models.loader import compile_model, resolve_quantization
        q = resolve_quantization(args.quantization, path, serve_bench.CONFIG)
        folder = compile_model(serve_bench.CONFIG, 2, "float32", "cpu", path, progress=False, quantization=q)
        if args.compile_only:
            print(folder)
            return
        args.exported = [folder]
    from disco.llm.engine import Engine
    from disco.llm.tokenizer import load_tokenizer
    tok = load_tokenizer(path)
    prompts = serve_bench.workload(32, tok.vocab_size)
    what = "decoded" if args.decode else "prefill"

    def measure(engine, profile=None):
        if args.decode:
            return run_decode(engine, prompts, args.decode, profile)
        return run_once(engine, prompts, args.chunk, profile)
    engines, profiles = [], []
    try:
        for folder in args.exported:
            e = Engine.load(folder, checkpoint=path, tokenizer=tok)
            engines.append(e)
            profiles.append(Profile(e) if args.profile else None)
            measure(e)                                 # warm: plans recorded
        res = {f: [] for f in args.exported}
        for _ in range(args.rounds):
            for f, e, prof in zip(args.exported, engines, profiles):
                res[f].append(measure(e, prof))
        load = os.getloadavg()
        for f in args.exported:
            cpu = [(c[0] + c[1]) / n * 1e6 for c, _, n in res[f]]
            sys_share = np.median([c[1] / (c[0] + c[1]) for c, _, _ in res[f]])
            faults = np.median([c[2] / n for c, _, n in res[f]])
            wall = [w / n * 1e6 for _, w, n in res[f]]
            print(f"{f}: worker CPU per {what} token {np.median(cpu):.1f} us (min {min(cpu):.1f}, "
                  f"rounds {', '.join(f'{c:.0f}' for c in cpu)}); wall {np.median(wall):.1f} us/token; "
                  f"system {sys_share * 100:.0f}%; minor faults {faults:.1f}/token; load {load[0]:.2f}")
        if args.profile:
            for f, prof in zip(args.exported, profiles):
                tables = prof.tables
                ntok = sum(n for _, _, n in res[f])
                print(f"\n{f}: per worker, thread CPU us per {what} token by step (count per run)")
                names = sorted(tables[0], key=lambda k: -tables[0][k][1])
                total = [sum(v[1] for v in t.values()) for t in tables]
                print(f"  {'total':60s} " + "  ".join(f"{t / ntok * 1e6:8.1f}" for t in total))
                for k in names:
                    vals = [t.get(k, [0, 0.0]) for t in tables]
                    print(f"  {k[:60]:60s} " + "  ".join(f"{v[1] / ntok * 1e6:8.1f}" for v in vals) +
                          f"  {vals[0][1] / total[0] * 100:5.1f}%  x{vals[0][0] // args.rounds}")
    finally:
        for e in engines:
            e.close()


if __name__ == "__main__":
    main()

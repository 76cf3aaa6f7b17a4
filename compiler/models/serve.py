"""`disco-serve` (and `python -m compiler.models.serve`): a checkpoint behind an
OpenAI-compatible HTTP endpoint, on as many workers as asked.

    disco-serve --model path/to/checkpoint --tp 2 --host 127.0.0.1 --port 8000
    disco-serve --model path/to/checkpoint --tp 2 --pp 2 --port 8000   # 2 pipeline stages x 2 workers
    disco-launch -n 2 disco-serve --model DIR --port 8000        # the launched ranks
    mpiexec -n 2 disco-serve --model DIR --port 8000

The checkpoint is checked first (config, degree, tokenizer: an error and exit status 2
before any worker starts); then the workers start, the port is bound ("listening on
http://HOST:PORT" on stderr; --port 0 picks a free one), and the model loads on the
scheduler thread while /health answers 503 "loading"; it answers 200 once the weights
are placed and the collectives' readiness check has passed. The server itself is
disco.llm.serve (see docs/serving.md). Exit status: 0 when stopped by SIGINT/SIGTERM,
2 for bad arguments or a checkpoint that cannot be served, 3 when the engine failed (a
worker died or hung): a supervisor restarts it.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Optional, Sequence

from .cli import _note, choose_degree

PROG = "disco-serve"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="a Hugging Face checkpoint directory (with tokenizer.json), a .gguf file, or 'smollm2'")
    p.add_argument("--served-model-name", default=None,
                   help="the name clients pass as `model` (default: the --model folder's or file's name)")
    p.add_argument("--tp", type=int, default=None,
                   help="tensor-parallel degree (workers); default: the launched ranks, else 1")
    p.add_argument("--pp", type=int, default=1,
                   help="pipeline stages: the layers split evenly between them, each on --tp "
                        "workers of its own (tp * pp workers in all)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: a free port (printed)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--kv-dtype", default=None, choices=("float32", "float16", "bfloat16"),
                   help="what the KV cache stores: bfloat16 or float16 halve a float32 model's KV "
                        "memory (keys and values rounded; attention in float32); default: as --dtype")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--quantization", default=None,
                   help="CPU: store the weights of linear layers and embeddings as bf16, f16, q8_0, "
                        "q4_0 or q4_1 (computing in float32), or 'gguf' (a GGUF file's weights as "
                        "stored); default: as --dtype")
    p.add_argument("--kv-tokens", type=int, default=8192,
                   help="KV cache capacity in tokens, over all requests at once (default 8192)")
    p.add_argument("--page-size", type=int, default=16, help="tokens per KV page")
    p.add_argument("--prefill-chunk", type=int, default=512,
                   help="the most prompt tokens one step appends (chunked prefill; 0: whole prompts)")
    p.add_argument("--max-waiting", type=int, default=64,
                   help="requests that may wait for KV pages; past it: HTTP 503 with Retry-After")
    p.add_argument("--step-timeout", type=float, default=120.0,
                   help="seconds one engine step may take before the server gives up (a hung worker)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="seconds open requests get to finish when the server stops")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    from disco.errors import DiscoError
    from ..ir.errors import ShardingError
    try:
        return _run(args)
    except (FileNotFoundError, ValueError, ShardingError, DiscoError, OSError) as e:
        _note(f"error: {e}", PROG)
        return 2
    except KeyboardInterrupt:
        return 130


def _check(args) -> tuple[str, int]:
    """The checkpoint's path and degree, checked before any worker starts."""
    from .fetch import resolve_model
    from .loader import _model, read_config, resolve_quantization
    from disco.llm.tokenizer import load_tokenizer
    try:
        import disco.llm.serve.server  # noqa: F401  (starlette, uvicorn)
    except ImportError as e:
        raise ValueError(f"the web stack is missing ({e}); install the serve extra: "
                         "pip install 'disco-tp[serve]'") from None
    for name in ("kv_tokens", "page_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.prefill_chunk < 0 or args.max_waiting < 0 or not 0 <= args.port < 65536:
        raise ValueError(f"--prefill-chunk ({args.prefill_chunk}) and --max-waiting ({args.max_waiting}) "
                         f"must be >= 0, --port ({args.port}) in 0..65535")
    path = resolve_model(args.model)
    tp = choose_degree(path, args.tp, PROG, pp=args.pp)
    cfg = read_config(path)
    _model(cfg, tp, args.dtype, path, resolve_quantization(args.quantization, path, cfg, args.device, args.pp),
           pp=args.pp)
    if load_tokenizer(path) is None:
        raise ValueError(f"{path!r} has no tokenizer (tokenizer.json, or a GGUF file's); "
                         f"{PROG} takes and answers text, so it needs one")
    return path, tp


def _run(args) -> int:
    path, tp = _check(args)
    import disco
    from disco.llm.serve.server import bind, serve
    from .loader import load
    from disco.start import mpi_environment
    ranks = mpi_environment()
    if ranks is not None and ranks[0] != 0:
        # a worker rank: the launcher forwards SIGINT/SIGTERM to every rank, but the
        # controller (rank 0) stops the server and then its workers, in order
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    session = disco.start(tp * args.pp, device=args.device)   # under mpiexec, ranks other than 0 serve here
    clean = True
    try:
        sock = bind(args.host, args.port)
        name = args.served_model_name or os.path.basename(os.path.normpath(args.model))

        def load_engine():
            return load(path, tp=tp, pp=args.pp, dtype=args.dtype, session=session, device=args.device,
                        kv_dtype=args.kv_dtype,
                        progress=not args.no_progress, quantization=args.quantization,
                        max_tokens=args.kv_tokens, page_size=args.page_size,
                        prefill_chunk=args.prefill_chunk or None)

        code, clean = serve(load_engine, name, sock=sock, max_waiting=args.max_waiting,
                            step_timeout_s=args.step_timeout, shutdown_timeout_s=args.shutdown_timeout,
                            log=lambda m: _note(m, PROG))
        return code
    finally:
        if clean:
            session.shutdown()
        else:       # the scheduler thread is stuck inside the session: leave now (workers die with us)
            sys.stderr.flush()
            os._exit(3)


if __name__ == "__main__":
    sys.exit(main())

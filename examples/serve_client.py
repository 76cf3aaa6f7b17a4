"""Start disco-serve and talk to it with the official `openai` client.

    pip install -e ".[serve]" openai
    python examples/serve_client.py                       # SmolLM2-135M-Instruct on 2 workers
    python examples/serve_client.py --model DIR --tp 2    # any checkpoint with a tokenizer

The server runs as its own process (`python -m compiler.models.serve`, the same as the
`disco-serve` command) on a free loopback port, which it prints; this script waits for
/health, asks for a completion, a chat completion and a streamed chat, prints the
server's metrics line for tokens generated, and stops the server with SIGTERM.
"""
from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time

import httpx
import openai


def start_server(model: str, tp: int) -> tuple[subprocess.Popen, str, str]:
    log = tempfile.NamedTemporaryFile("w+", suffix=".log")
    proc = subprocess.Popen([sys.executable, "-m", "compiler.models.serve", "--model", model, "--tp", str(tp),
                             "--port", "0"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600              # a first run compiles the model
    url = None
    while time.monotonic() < deadline:
        text = open(log.name).read()
        m = re.search(r"listening on (http://\S+) \(model '([^']+)'", text)
        if m:
            url, name = m[1], m[2]
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    return proc, url, name
            except httpx.HTTPError:
                pass
        if proc.poll() is not None:
            raise SystemExit(f"disco-serve exited with {proc.returncode}:\n{text}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("disco-serve was not ready in 600 s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tp", type=int, default=2)
    a = p.parse_args()
    proc, url, model = start_server(a.model, a.tp)
    try:
        print(f"disco-serve at {url}, model {model!r}")
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        done = client.completions.create(model=model, prompt="The capital of France is", max_tokens=16,
                                         temperature=0)
        print("completion:", repr(done.choices[0].text), done.usage)
        chat = client.chat.completions.create(model=model, max_tokens=32, temperature=0, messages=[
            {"role": "user", "content": "What is the capital of France?"}])
        print("chat:", repr(chat.choices[0].message.content))
        print("stream: ", end="")
        for chunk in client.chat.completions.create(model=model, max_tokens=32, temperature=0, stream=True,
                                                    messages=[{"role": "user", "content": "Count to five."}]):
            print(chunk.choices[0].delta.content or "", end="", flush=True)
        print()
        metrics = httpx.get(url + "/metrics").text
        print(next(line for line in metrics.splitlines() if line.startswith("disco_generated_tokens_total")))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())

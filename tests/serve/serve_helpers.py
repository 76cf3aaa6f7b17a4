"""A disco-serve process for the tests: started on a free loopback port with a test tag
in its environment (tests/launch/launch_helpers.py), its port read from stderr, waited
for until /health says ready; its workers found by parent pid; stopped or found dead
with every wait bounded."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "launch"))
from launch_helpers import clean_env, mpiexec_path, needs_mpi, tagged_pids  # noqa: E402,F401

START_TIMEOUT_S = 90


def tiny_checkpoint(directory: str) -> str:
    """The tiny Qwen2 of tests/models with the byte-level BPE tokenizer of tests/llm
    (ChatML template, generation_config.json sampling defaults): as test_cli.py makes it."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "models"))
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "llm"))
    import tiny
    import tok_fixtures
    tok_fixtures.byte_level_dir(directory)
    with open(os.path.join(directory, "tokenizer.json")) as f:
        vocab = 1 + max(json.load(f)["model"]["vocab"].values())
    return tiny.make_checkpoint("qwen2", directory, vocab_size=max(vocab, 423))


class Server:
    """`python -m compiler.models.serve --model CKPT --port 0 *args` (after `launcher`:
    disco-launch's or mpiexec's argv), ready to serve."""

    def __init__(self, checkpoint: str, *args: str, env: dict, log_path: str, launcher: tuple = ()):
        self.tag = uuid.uuid4().hex
        self.log_path = log_path
        self._log = open(log_path, "w+")
        self.proc = subprocess.Popen(
            [*launcher, sys.executable, "-m", "compiler.models.serve", "--model", checkpoint, "--port", "0",
             "--no-progress", *args],
            env=dict(env, DISCO_TEST_TAG=self.tag), stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        try:
            self.url = self._wait_for(r"listening on (http://\S+):(\d+)", lambda m: f"{m[1]}:{m[2]}")
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        self.model = os.path.basename(os.path.normpath(checkpoint))
        self.http = httpx.Client(base_url=self.url, timeout=30)

    @property
    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def _wait_for(self, pattern: str, get):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log)
            if m:
                return get(m)
            if self.proc.poll() is not None:
                raise AssertionError(f"disco-serve exited with {self.proc.returncode}:\n{self.log}")
            time.sleep(0.05)
        raise AssertionError(f"disco-serve did not print {pattern!r} in {START_TIMEOUT_S} s:\n{self.log}")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"disco-serve exited with {self.proc.returncode}:\n{self.log}")
            time.sleep(0.1)
        raise AssertionError(f"disco-serve was not ready in {START_TIMEOUT_S} s:\n{self.log}")

    def workers(self) -> list[int]:
        """The worker processes' pids, in worker order (children of the server started with
        --worker-id N)."""
        found = {}
        for pid in tagged_pids(self.tag):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().decode().split("\0")
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == self.proc.pid and "--worker-id" in argv:
                found[int(argv[argv.index("--worker-id") + 1])] = pid
        return [found[w] for w in sorted(found)]

    def metrics(self) -> dict[str, float]:
        """/metrics as {name{labels}: value}."""
        text = self.http.get("/metrics").text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def wait_metrics(self, want: dict, timeout_s: float = 15.0) -> dict:
        """Poll /metrics until every `want` item holds; the last metrics."""
        deadline = time.monotonic() + timeout_s
        while True:
            m = self.metrics()
            if all(m.get(k) == v for k, v in want.items()) or time.monotonic() > deadline:
                return m
            time.sleep(0.05)

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def wait(self, timeout_s: float = 30) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"disco-serve did not exit in {timeout_s} s:\n{self.log}")

    def kill(self) -> None:
        for pid in [self.proc.pid] + tagged_pids(self.tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.proc.wait(10)

    def leftovers(self, wait_s: float = 5.0) -> list[int]:
        deadline = time.monotonic() + wait_s
        while True:
            left = tagged_pids(self.tag)
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)


def shm_segments(pids) -> list[str]:
    """/dev/shm entries the project names after these processes ("disco-buf-<pid>-...",
    "disco_ccl_disco-<pid>-...": tests/disco/test_failures.py)."""
    return [n for n in os.listdir("/dev/shm") if n.startswith(("disco-", "disco_ccl_"))
            and any(f"-{p}-" in n for p in pids)]


def server_env(cache: str) -> dict:
    return clean_env(DISCO_TP_MODEL_CACHE=cache)

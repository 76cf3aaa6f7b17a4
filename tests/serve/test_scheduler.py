"""The scheduler's fault paths in one process, with a stand-in engine whose steps can fail
or hang on cue and Starlette's TestClient as the client: a failed step that leaves the
session usable (its requests get 500, the server goes on), one that does not (fatal: the
requests get errors, /health says failed, on_fatal is called, new requests get 503), a
step that hangs past step_timeout_s, a load that fails, and /health while loading.
Expectations are hand-derived from the stand-in's rules (one token "a" per step)."""
from __future__ import annotations

import threading
import time
from collections import deque

import pytest

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from disco.errors import WorkerError  # noqa: E402
from disco.llm.serve.app import build_app  # noqa: E402
from disco.llm.serve.scheduler import Scheduler  # noqa: E402

BODY = {"model": "m", "prompt": "hi", "max_tokens": 3}


class Req:
    def __init__(self, i, prompt, n):
        self.id, self.prompt, self.n = i, list(prompt), n
        self.tokens, self.pieces, self.finish_reason = [], [], None

    @property
    def finished(self):
        return self.finish_reason is not None


class Session:
    def __init__(self):
        self.dead = False

    def sync(self):
        if self.dead:
            raise WorkerError("worker 1 (pid 0) died: killed by signal SIGKILL", 1)


class FakeEngine:
    """Each request takes one page and makes one token "a" per step; `fail` (an exception
    to raise once) and `hold` (an Event a step waits on) are the cues."""
    context, topology = 64, "fake"

    def __init__(self, pages=4):
        self.num_pages = self.free_pages = pages
        self.waiting, self.running = deque(), []
        self.session = Session()
        self.fail, self.hold = None, None
        self.closed = False
        self._n = 0

    busy = property(lambda self: bool(self.waiting or self.running))

    def submit(self, prompt, n, text_output=True, **options):
        self._n += 1
        r = Req(self._n, prompt, n or 16)
        self.waiting.append(r)
        return r

    def admit(self):
        while self.waiting and self.free_pages:
            self.free_pages -= 1
            self.running.append(self.waiting.popleft())

    def cancel(self, r):
        if r in self.waiting:
            self.waiting.remove(r)
        if r in self.running:
            self.running.remove(r)
            self.free_pages += 1
        r.finish_reason = r.finish_reason or "cancelled"

    def step(self):
        self.admit()
        if self.hold is not None:
            self.hold.wait(10)
        if self.fail is not None:
            e, self.fail = self.fail, None
            for r in list(self.running):
                r.finish_reason = "error"
                self.cancel(r)
            raise e
        got = list(self.running)
        for r in got:
            r.tokens.append(1)
            r.pieces.append("a")
            if len(r.tokens) == r.n:
                r.finish_reason = "length"
                self.cancel(r)
        return got

    def close(self):
        self.closed = True


def make(engine=None, load=None, **options):
    engine = engine or FakeEngine()
    fatal = threading.Event()
    s = Scheduler(load or (lambda: engine), on_fatal=fatal.set, log=lambda m: None, **options)
    s.start()
    client = TestClient(build_app(s, "m", watchdog_s=0.05))
    return s, engine, fatal, client


def _until(cond, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_requests_run_and_free_their_pages():
    s, engine, fatal, client = make()
    with client:
        _until(lambda: s.state == "ready")
        r = client.post("/v1/completions", json=BODY)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "aaa"
        assert r.json()["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
        assert engine.free_pages == 4
    assert s.stop(5) and engine.closed and s.state == "stopped"


def test_a_failed_step_fails_its_requests_only():
    s, engine, fatal, client = make()
    with client:
        _until(lambda: s.state == "ready")
        engine.fail = RuntimeError("a kernel broke")
        r = client.post("/v1/completions", json=BODY)
        assert r.status_code == 500
        err = r.json()["error"]
        assert err["code"] == "engine_error" and "RuntimeError: a kernel broke" in err["message"]
        assert client.post("/v1/completions", json=BODY).json()["choices"][0]["text"] == "aaa"
        assert client.get("/health").status_code == 200 and not fatal.is_set()
    s.stop(5)


def test_a_dead_worker_is_fatal():
    s, engine, fatal, client = make()
    with client:
        _until(lambda: s.state == "ready")
        engine.session.dead = True
        engine.fail = WorkerError("worker 1 (pid 0) died: killed by signal SIGKILL", 1)
        with client.stream("POST", "/v1/completions", json=dict(BODY, stream=True)) as r:
            events = [line for line in r.iter_lines() if line]
        assert '"code":"engine_error"' in events[-1] and "died" in events[-1]
        assert fatal.wait(5)
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert "WorkerError: worker 1 (pid 0) died" in health.json()["error"]
        again = client.post("/v1/completions", json=BODY)
        assert again.status_code == 503 and "the engine failed" in again.json()["error"]["message"]
        assert client.get("/metrics").text.count("disco_healthy 0") == 1


def test_a_hung_step_is_reported():
    engine = FakeEngine()
    engine.hold = threading.Event()
    s, engine, fatal, client = make(engine, step_timeout_s=0.2)
    with client:
        _until(lambda: s.state == "ready")
        done = {}
        t = threading.Thread(target=lambda: done.setdefault("r", client.post("/v1/completions", json=BODY)))
        t.start()
        assert fatal.wait(5)                       # the watchdog saw the step pass 0.2 s
        health = client.get("/health")
        assert health.status_code == 503 and "has run for more than 0.2 s" in health.json()["error"]
        engine.hold.set()
        t.join(10)
        assert done["r"].status_code in (500, 503)


def test_a_failed_load_and_loading():
    gate = threading.Event()

    def load():
        gate.wait(10)
        raise FileNotFoundError("no model.safetensors in '/x'")
    s, _, fatal, client = make(load=load)
    with client:
        r = client.get("/health")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        busy = client.post("/v1/completions", json=BODY)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
        assert "still loading" in busy.json()["error"]["message"]
        gate.set()
        assert fatal.wait(5)
        r = client.get("/health")
        assert r.status_code == 503 and "FileNotFoundError: no model.safetensors" in r.json()["error"]


def test_the_wait_queue_is_bounded():
    """One page: the first request runs, one may wait, the third is refused with 503."""
    engine = FakeEngine(pages=1)
    engine.hold = threading.Event()
    s, engine, fatal, client = make(engine, max_waiting=1)
    with client:
        _until(lambda: s.state == "ready")
        out = {}
        threads = [threading.Thread(target=lambda i=i: out.setdefault(i, client.post(
            "/v1/completions", json=dict(BODY, max_tokens=2)))) for i in range(3)]
        for t in threads:               # one after the other into the inbox
            t.start()
            time.sleep(0.2)
        engine.hold.set()
        for t in threads:
            t.join(10)
        codes = sorted(r.status_code for r in out.values())
        assert codes == [200, 200, 503]
        refused = [r for r in out.values() if r.status_code == 503][0]
        assert refused.headers["retry-after"] == "1" and refused.json()["error"]["code"] == "overloaded"
        assert engine.free_pages == 1
    s.stop(5)


def test_a_stream_learns_that_the_scheduler_thread_died():
    """The thread ends without posting (as if its failure path broke): a stream waiting for
    its next event gets the 503 from the liveness poll instead of waiting forever."""
    s, engine, fatal, client = make()
    with client:
        _until(lambda: s.state == "ready")
        s._fail = lambda *a, **k: None      # nothing is posted when the step below ends the thread
        engine.fail = SystemExit(1)
        with client.stream("POST", "/v1/completions", json=dict(BODY, stream=True)) as r:
            events = [line for line in r.iter_lines() if line]
        assert r.status_code == 200 and '"code":null' in events[-1]
        assert "the scheduler has stopped" in events[-1]

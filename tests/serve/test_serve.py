"""disco-serve end to end with the official `openai` client: a tiny Qwen2 checkpoint with a
tokenizer on 2 workers, served on a free loopback port by `python -m compiler.models.serve`.

The reference of every greedy answer is the engine run in this process on the same
checkpoint (`compiler.models.load`, 2 workers) with the request alone: what
tests/models/test_generate.py holds to transformers. Checked: a completion, a chat
completion, a stream (OpenAI's chunks, `data: [DONE]`, usage), 32 concurrent streams of
mixed prompt lengths each equal to its alone result with the KV pages back to zero,
malformed requests interleaved with good ones (400 naming the field, the server goes on),
client disconnects (cancelled, pages freed), a full wait queue (503 with Retry-After),
and a worker killed under load (errors to the requests in flight, /health unhealthy,
exit status 3, no process or /dev/shm segment left); --quantization (a bad one exits 2, q4_0
answers as the q4_0 engine); --kv-dtype bfloat16 answers as the engine with that cache.

Requests that must be in flight at a given moment are held there without timing: worker
1 is stopped with SIGSTOP, so the engine's step waits for it, and continued with SIGCONT.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time

import httpx
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from serve_helpers import Server, mpiexec_path, needs_mpi, server_env, shm_segments, tiny_checkpoint  # noqa: E402

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.timeout(240)

GREEDY = dict(temperature=0)
PROMPT = "Once upon a time there was a dragon"
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Numbers 12345 and code, please."}]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("compiled"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(str(tmp_path_factory.mktemp("qwen2-serve")))


@contextlib.contextmanager
def reference_engine(checkpoint, cache, tp=2, **options):
    """The checkpoint on `tp` workers in this process, compiled into the cache the servers use."""
    from compiler import models
    old = os.environ.get("DISCO_TP_MODEL_CACHE")
    os.environ["DISCO_TP_MODEL_CACHE"] = cache
    try:
        with models.load(checkpoint, tp=tp, progress=False, **options) as e:
            yield e
    finally:
        if old is None:
            os.environ.pop("DISCO_TP_MODEL_CACHE", None)
        else:
            os.environ["DISCO_TP_MODEL_CACHE"] = old


@pytest.fixture(scope="module")
def engine(checkpoint, cache):
    """The reference: the same checkpoint on 2 workers in this process (it also compiles
    the model into the cache the servers use)."""
    with reference_engine(checkpoint, cache) as e:
        yield e


def alone(engine, prompt, max_tokens, chat=False, **options):
    """(text, completion tokens, finish reason, prompt tokens) of one request run alone."""
    ids = engine.chat_prompt(prompt) if chat else prompt
    r = engine.submit(ids, max_tokens, text_output=True, **dict(GREEDY, **options))
    engine.run([r])
    return r.text, len(r.tokens), r.finish_reason, len(r.prompt)


@pytest.fixture(scope="module")
def server(checkpoint, cache, engine, tmp_path_factory):
    """Chunked prefill of 16 tokens, so long prompts go in over several steps beside the
    decoding ones."""
    s = Server(checkpoint, "--tp", "2", "--prefill-chunk", "16", env=server_env(cache),
               log_path=str(tmp_path_factory.mktemp("log") / "server.log"))
    yield s
    rc = s.stop()
    assert rc == 0, s.log
    assert not s.leftovers(), s.log


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)


# ---- the API ------------------------------------------------------------------------------

def test_completion(server, client, engine):
    text, n, reason, prompt_tokens = alone(engine, PROMPT, 12)
    out = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=12, temperature=0)
    assert out.object == "text_completion" and out.model == server.model and out.id.startswith("cmpl-")
    assert out.choices[0].text == text and out.choices[0].finish_reason == reason
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == \
        (prompt_tokens, n, prompt_tokens + n)
    assert prompt_tokens == len(engine.tokenizer.encode(PROMPT))
    # token ids as the prompt: the same answer
    again = client.completions.create(model=server.model, prompt=engine.tokenizer.encode(PROMPT),
                                      max_tokens=12, temperature=0)
    assert again.choices[0].text == text


def test_chat_completion(server, client, engine):
    text, n, reason, prompt_tokens = alone(engine, MESSAGES, 10, chat=True)
    assert text == engine.chat(MESSAGES, 10, **GREEDY)
    out = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=10, temperature=0)
    assert out.object == "chat.completion"
    msg = out.choices[0].message
    assert msg.role == "assistant" and msg.content == text and out.choices[0].finish_reason == reason
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (prompt_tokens, n)
    streamed = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=10,
                                              temperature=0, stream=True)
    chunks = list(streamed)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == reason


def test_streamed_completion(server, client, engine):
    text, n, reason, prompt_tokens = alone(engine, PROMPT, 20)
    stream = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=20, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert len(pieces) > 2 and "".join(pieces) == text
    ends = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert ends[-1] == reason and not any(ends[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n
    assert chunks[-1].usage.prompt_tokens == prompt_tokens
    # on the wire: server-sent events, each `data: {json}`, the last `data: [DONE]`
    body = {"model": server.model, "prompt": PROMPT, "max_tokens": 5, "temperature": 0, "stream": True}
    with server.http.stream("POST", "/v1/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert all(json.loads(e[6:])["object"] == "text_completion" for e in events[:-1])


def test_sampling_options_and_stop(server, client, engine):
    """A seed reproduces; a stop string cuts the text where it first appears (the engine's
    answer for the same options)."""
    opts = dict(model=server.model, prompt=PROMPT, max_tokens=16)
    a = client.completions.create(temperature=1.0, top_p=0.9, seed=7, **opts).choices[0].text
    assert a == client.completions.create(temperature=1.0, top_p=0.9, seed=7, **opts).choices[0].text
    assert a == alone(engine, PROMPT, 16, temperature=1.0, top_p=0.9, seed=7)[0]
    text = alone(engine, PROMPT, 16)[0]
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = client.completions.create(stop=[stop], temperature=0, **opts).choices[0]
    assert cut.text == text[:text.index(stop)] and cut.finish_reason == "stop"


def test_models_health_metrics(server):
    models = server.http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [server.model] and models["data"][0]["max_model_len"] == 256
    health = server.http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert "disco: 2 workers" in health.json()["topology"]
    text = server.http.get("/metrics").text
    for name, kind in (("disco_requests_running", "gauge"), ("disco_requests_waiting", "gauge"),
                       ("disco_kv_pages_used", "gauge"), ("disco_generated_tokens_total", "counter"),
                       ("disco_time_to_first_token_seconds", "histogram"),
                       ("disco_inter_token_latency_seconds", "histogram")):
        assert f"# TYPE {name} {kind}\n" in text
    m = server.metrics()
    assert m['disco_time_to_first_token_seconds_bucket{le="+Inf"}'] == m["disco_time_to_first_token_seconds_count"]
    assert m["disco_kv_pages_total"] == 512 and m["disco_healthy"] == 1


@pytest.mark.parametrize("how", ["disco-launch", pytest.param("mpiexec", marks=needs_mpi)])
def test_under_a_launcher(checkpoint, cache, engine, tmp_path, how):
    """`disco-launch -n 2 disco-serve ...` and `mpiexec -n 2 disco-serve ...`: the launched
    ranks are the workers; SIGTERM to the launcher stops the server cleanly (the worker
    ranks leave the stopping to rank 0)."""
    launcher = ((sys.executable, "-m", "launch", "-n", "2", "--mode", "local", "--no-prefix")
                if how == "disco-launch" else (mpiexec_path(), "-n", "2"))
    s = Server(checkpoint, env=server_env(cache), log_path=str(tmp_path / "log"), launcher=launcher)
    try:
        assert "disco: 2 workers" in s.http.get("/health").json()["topology"]
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=60)
        out = c.completions.create(model=s.model, prompt=PROMPT, max_tokens=12, temperature=0)
        assert out.choices[0].text == alone(engine, PROMPT, 12)[0]
    finally:
        rc = s.stop()
    assert rc == 0, s.log
    assert not s.leftovers(), s.log


# ---- continuous batching under load -------------------------------------------------------

def _prompts(engine, count: int) -> list[tuple[str, int]]:
    """`count` prompts cut from a text, of 1 to about 160 tokens, with 4 to 27 new tokens each."""
    import tok_fixtures
    corpus = " ".join(dict.fromkeys(tok_fixtures.CORPUS)) * 2
    out = []
    for i in range(count):
        length = 3 + (i * 97) % 420                    # characters: mixed, long and short interleaved
        start = (i * 53) % 200
        out.append((corpus[start:start + length], 4 + (i * 7) % 24))
    lengths = [len(engine.tokenizer.encode(p)) for p, _ in out]
    assert min(lengths) < 8 and max(lengths) > 120
    return out


def test_32_concurrent_streams_each_equal_alone(server, engine):
    jobs = _prompts(engine, 32)
    want = [alone(engine, p, n) for p, n in jobs]
    before = server.metrics()

    async def one(client, prompt, n):
        stream = await client.completions.create(model=server.model, prompt=prompt, max_tokens=n,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True})
        pieces, usage, reason = [], None, None
        async for c in stream:
            if c.choices:
                pieces.append(c.choices[0].text)
                reason = c.choices[0].finish_reason or reason
            if c.usage:
                usage = c.usage
        return "".join(pieces), usage.completion_tokens, reason, usage.prompt_tokens

    async def run_all():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0,
                                      timeout=120) as client:
            return await asyncio.gather(*(one(client, p, n) for p, n in jobs))

    got = asyncio.run(run_all())
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"request {i} ({w[3]} prompt tokens)"
    m = server.wait_metrics({"disco_kv_pages_used": 0, "disco_requests_running": 0})
    assert m["disco_kv_pages_used"] == 0 and m["disco_requests_running"] == 0
    assert m["disco_requests_waiting"] == 0
    done = sum(w[1] for w in want)
    assert m["disco_generated_tokens_total"] - before["disco_generated_tokens_total"] == done
    assert m["disco_time_to_first_token_seconds_count"] - before["disco_time_to_first_token_seconds_count"] == 32
    # batched: one at a time takes ceil(prompt / 16) steps to the first token, then one a token
    one_at_a_time = sum(-(-w[3] // 16) + w[1] - 1 for w in want)
    assert m["disco_engine_steps_total"] - before["disco_engine_steps_total"] < one_at_a_time / 2


# ---- bad input ----------------------------------------------------------------------------

BAD = [  # (body, status, param, words in the message)
    (b"{not json", 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "must be a JSON object, got array"),
    ({"model": None, "prompt": "hi"}, 400, "model", "`model` must be a string naming the model"),
    ({"model": "gpt-4", "prompt": "hi"}, 404, "model", "'gpt-4' does not exist"),
    ({"prompt": 5}, 400, "prompt", "`prompt` must be a string or an array of token ids, got integer"),
    ({"prompt": "hi", "max_tokens": 0}, 400, "max_tokens", "`max_tokens` must be an integer >= 1, got 0"),
    ({"prompt": "hi", "max_tokens": -3}, 400, "max_tokens", ">= 1, got -3"),
    ({"prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens", "must be an integer >= 1, got string 'ten'"),
    ({"prompt": "hi", "temperature": "hot"}, 400, "temperature", "must be a number in [0, 2], got string"),
    ({"prompt": "hi", "temperature": 3}, 400, "temperature", "in [0, 2], got 3"),
    ({"prompt": "hi", "top_p": 0}, 400, "top_p", "in (0, 1], got 0"),
    ({"prompt": "hi", "seed": 1.5}, 400, "seed", "must be an integer, got number 1.5"),
    ({"prompt": "hi", "stream": "yes"}, 400, "stream", "must be a boolean, got string"),
    ({"prompt": "hi", "stop": 3}, 400, "stop", "`stop` must be a non-empty string or an array"),
    ({"prompt": "hi", "n": 2}, 400, "n", "`n`=2 is not supported"),
    ({"prompt": "hi", "stream_options": {"include_usage": True}}, 400, "stream_options", "only allowed with"),
    ({"prompt": "x " * 400}, 400, "prompt", "does not fit the context window of 256"),
    ({"prompt": [5, 100000]}, 400, "prompt", "outside the vocabulary"),
]
BAD_CHAT = [
    ({"messages": []}, 400, "messages", "`messages` must be a non-empty array"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role", "must be one of"),
    ({"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content", "got integer"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}, 400,
     "max_completion_tokens", ">= 1, got 0"),
]


def test_malformed_requests_interleaved_with_good_ones(server, engine):
    """Every bad request gets its status and an OpenAI error body naming the field, while
    good requests sent between them, at the same time, get their alone answers."""
    text = alone(engine, PROMPT, 12)[0]
    cases = [("/v1/completions", *c) for c in BAD] + [("/v1/chat/completions", *c) for c in BAD_CHAT]
    results: dict = {}

    def bad(i, path, body, *_):
        if isinstance(body, dict):
            body = json.dumps({"model": server.model, **body}).encode()
        results[("bad", i)] = httpx.post(server.url + path, content=body, timeout=60,
                                         headers={"content-type": "application/json"})

    def good(i):
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)
        results[("good", i)] = c.completions.create(model=server.model, prompt=PROMPT, max_tokens=12,
                                                    temperature=0).choices[0].text

    threads = []
    for i, case in enumerate(cases):
        threads.append(threading.Thread(target=bad, args=(i, *case)))
        if i % 3 == 0:
            threads.append(threading.Thread(target=good, args=(i,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, (path, body, status, param, words) in enumerate(cases):
        r = results[("bad", i)]
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert err["param"] == param and words in err["message"], (body, err)
        assert err["type"] in ("invalid_request_error", "not_found_error") or status == 404
    goods = [v for k, v in results.items() if k[0] == "good"]
    assert len(goods) == len(range(0, len(cases), 3)) and all(g == text for g in goods)
    assert server.http.get("/health").status_code == 200
    m = server.wait_metrics({"disco_kv_pages_used": 0})
    assert m["disco_kv_pages_used"] == 0
    # the official client raises its BadRequestError with the body
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        c.completions.create(model=server.model, prompt=PROMPT, max_tokens=0)
    assert info.value.status_code == 400 and info.value.body["param"] == "max_tokens"


# ---- faults ---------------------------------------------------------------------------------

class Stopped:
    """Worker 1 stopped (SIGSTOP) for the block: the engine's next step waits for it."""

    def __init__(self, server):
        self.pid = server.workers()[1]

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:                   # killed meanwhile
            pass


def _until(cond, timeout_s=15.0):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_disconnects_cancel_and_free_pages(server, engine):
    """A stream closed after its first chunks, and a plain request whose client gives up:
    both are cancelled (not run to their 200 tokens) and their pages freed."""
    before = server.metrics()
    body = {"model": server.model, "prompt": PROMPT, "max_tokens": 200, "temperature": 0,
            "ignore_eos": True}
    with server.http.stream("POST", "/v1/completions", json=dict(body, stream=True)) as r:
        lines = (line for line in r.iter_lines() if line)
        first = [json.loads(next(lines)[6:])["choices"][0]["text"] for _ in range(3)]
        with Stopped(server):                         # its next step is held: it cannot finish
            assert len(first) == 3
            r.close()                                 # the client leaves mid-stream
            with pytest.raises(httpx.TimeoutException):   # a client gives up while the step waits
                httpx.post(server.url + "/v1/completions", json=body, timeout=1.0)
    key = 'disco_requests_finished_total{reason="cancelled"}'
    m = server.wait_metrics({key: before.get(key, 0) + 2, "disco_kv_pages_used": 0,
                             "disco_requests_running": 0})
    assert m.get(key) == before.get(key, 0) + 2 and m["disco_kv_pages_used"] == 0
    # run to the end they would have made 400 tokens; either alone 200
    assert m["disco_generated_tokens_total"] - before["disco_generated_tokens_total"] < 200
    assert server.http.get("/health").status_code == 200


@pytest.fixture(scope="module")
def small_server(checkpoint, cache, engine, tmp_path_factory):
    """A KV cache of 4 pages of 16 tokens, room for one request of PROMPT and 40 tokens
    (4 pages) at a time, and one request allowed to wait."""
    s = Server(checkpoint, "--tp", "2", "--kv-tokens", "64", "--max-waiting", "1", env=server_env(cache),
               log_path=str(tmp_path_factory.mktemp("log") / "small.log"))
    yield s
    if s.proc.poll() is None:
        s.kill()


def test_full_queue_answers_503_then_a_killed_worker_stops_the_server(small_server, engine):
    s = small_server
    want = alone(engine, PROMPT, 40)[0]
    opts = dict(model=s.model, prompt=PROMPT, max_tokens=40, temperature=0)
    c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=60)
    out = {}

    def later(name, **kw):
        t = threading.Thread(target=lambda: out.__setitem__(name, _call(c, **opts, **kw)))
        t.start()
        return t

    # 1. A runs (its step held at worker 1), B and C arrive; after the step A holds every
    #    page, B waits, and C finds the queue full: 503 with Retry-After
    with Stopped(s):
        a = c.completions.create(stream=True, **opts)
        tb = later("b")
        time.sleep(0.5)                               # B before C in the scheduler's inbox
        tc = threading.Thread(target=lambda: out.__setitem__(
            "c", httpx.post(s.url + "/v1/completions", json=opts, timeout=60)))
        tc.start()
        time.sleep(0.5)
    tc.join(60)                                       # answered once the held step has ended
    r = out["c"]
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    assert r.json()["error"]["code"] == "overloaded" and "at capacity" in r.json()["error"]["message"]
    assert "".join(ch.choices[0].text for ch in a) == want
    tb.join(60)
    assert out["b"] == want
    s.wait_metrics({"disco_kv_pages_used": 0})

    # 2. under load, worker 1 dies: the requests in flight get errors, /health says so,
    #    and the server exits with status 3 leaving nothing behind
    pids = [s.proc.pid] + s.workers()
    with Stopped(s) as stopped:
        a = c.completions.create(stream=True, **opts)      # running, its step held
        tb = later("b")                                      # waiting for pages
        time.sleep(0.5)
        os.kill(stopped.pid, signal.SIGKILL)
    with pytest.raises(openai.APIError, match="the engine failed"):
        for _ in a:
            pass
    tb.join(60)
    assert isinstance(out["b"], openai.APIStatusError) and out["b"].status_code in (500, 503), out["b"]
    health = _health(s)
    assert health is None or (health.status_code == 503 and health.json()["status"] == "failed")
    rc = s.wait(30)
    assert rc == 3, s.log
    assert "worker 1" in s.log and "died" in s.log and "Traceback" not in s.log, s.log
    assert not s.leftovers(), s.log
    _until(lambda: not shm_segments(pids), 5.0)


def _call(client, **kw):
    try:
        return client.completions.create(**kw).choices[0].text
    except openai.APIError as e:
        return e


def _health(s):
    try:
        return httpx.get(s.url + "/health", timeout=5)
    except httpx.HTTPError:
        return None                                   # already gone


def test_bad_checkpoints_exit_2_before_any_worker(tmp_path, cache):
    """No config.json; a checkpoint without a tokenizer: one line on stderr, status 2."""
    import subprocess
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "models"))
    import tiny
    no_tok = tiny.make_checkpoint("qwen2", str(tmp_path / "no-tok"))
    for model, words in ((str(tmp_path), "no config.json"), (no_tok, "has no tokenizer")):
        p = subprocess.run([sys.executable, "-m", "compiler.models.serve", "--model", model, "--port", "0"],
                           env=server_env(cache), capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert "listening" not in p.stderr


def test_a_quantization_the_server_cannot_use_exits_2(checkpoint, cache):
    """An unknown format, or a format on GPU workers: one line on stderr, status 2,
    before any worker starts."""
    import subprocess
    for flags, words in ((["--quantization", "q9_9"], "quantization='q9_9'"),
                         (["--quantization", "bf16", "--device", "cuda"], "is for CPU workers")):
        p = subprocess.run([sys.executable, "-m", "compiler.models.serve", "--model", checkpoint, "--port", "0",
                            *flags], env=server_env(cache), capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert "listening" not in p.stderr


def test_quantized_server_equals_the_quantized_engine(checkpoint, cache, engine, tmp_path):
    """--quantization q4_0 (on 1 worker: the tiny model's rows are too short to split in
    blocks over 2): greedy completions are those of compiler.models.load with
    quantization="q4_0" in this process, which here differ from float32's from the
    first token (so the flag is not ignored)."""
    with reference_engine(checkpoint, cache, tp=1, quantization="q4_0") as e:
        want = alone(e, PROMPT, 12)
    assert want[0] != alone(engine, PROMPT, 12)[0]
    s = Server(checkpoint, "--tp", "1", "--quantization", "q4_0", env=server_env(cache),
               log_path=str(tmp_path / "server.log"))
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=60)
        r = c.completions.create(model=s.model, prompt=PROMPT, max_tokens=12, temperature=0)
        assert (r.choices[0].text, r.usage.completion_tokens) == want[:2]
    finally:
        assert s.stop() == 0, s.log
    assert not s.leftovers(), s.log


def test_kv_dtype_server_equals_the_kv_dtype_engine(checkpoint, cache, tmp_path):
    """--kv-dtype bfloat16 on 2 workers with chunked prefill: greedy completions are those
    of compiler.models.load(kv_dtype="bfloat16") in this process, the ready line names the
    cache's dtype and size, and /metrics counts its pages back to zero."""
    prompts = [PROMPT, PROMPT + " who lived in a cave by the sea and never left it"]
    with reference_engine(checkpoint, cache, kv_dtype="bfloat16") as e:
        want = [alone(e, p, 12) for p in prompts]
    s = Server(checkpoint, "--tp", "2", "--kv-dtype", "bfloat16", "--prefill-chunk", "8",
               env=server_env(cache), log_path=str(tmp_path / "server.log"))
    try:
        assert s._wait_for(r"ready: .* worker, bfloat16, (\d+) bytes per token", lambda m: m[1]) == "128"
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=60)
        for p, w in zip(prompts, want):
            r = c.completions.create(model=s.model, prompt=p, max_tokens=12, temperature=0)
            assert (r.choices[0].text, r.usage.completion_tokens) == w[:2]
        assert "disco_kv_pages_used 0" in s.http.get("/metrics").text
    finally:
        assert s.stop() == 0, s.log
    assert not s.leftovers(), s.log

"""disco-serve --pp: the tiny Qwen2 (tied head) as two pipeline stages of one worker
each, its completions against the engine run in this process on one worker with the
request alone (which tests/models/test_generate.py holds to transformers); more stages
than layers: status 2 and one line, before any worker starts."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from serve_helpers import Server, server_env, tiny_checkpoint  # noqa: E402

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.timeout(240)

PROMPTS = ["Once upon a time there was a dragon", "Numbers 12345 and code, please."]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("compiled"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(str(tmp_path_factory.mktemp("qwen2-serve-pp")))


def test_two_stages_answer_as_one_worker(checkpoint, cache, tmp_path):
    from compiler import models
    old = os.environ.get("DISCO_TP_MODEL_CACHE")
    os.environ["DISCO_TP_MODEL_CACHE"] = cache
    try:
        with models.load(checkpoint, tp=1, progress=False) as engine:
            want = engine.generate(PROMPTS, max_new_tokens=12, temperature=0)
    finally:
        if old is None:
            os.environ.pop("DISCO_TP_MODEL_CACHE", None)
        else:
            os.environ["DISCO_TP_MODEL_CACHE"] = old
    s = Server(checkpoint, "--pp", "2", env=server_env(cache), log_path=str(tmp_path / "server.log"))
    try:
        for prompt, text in zip(PROMPTS, want):
            r = s.http.post("/v1/completions", json={"model": s.model, "prompt": prompt, "max_tokens": 12,
                                                     "temperature": 0})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == text
        assert "disco: 2 workers" in s.log
    finally:
        rc = s.stop()
    assert rc == 0, s.log
    assert not s.leftovers(), s.log


def test_more_stages_than_layers_exit_2_before_any_worker(checkpoint, cache):
    p = subprocess.run([sys.executable, "-m", "compiler.models.serve", "--model", checkpoint, "--port", "0",
                        "--pp", "3"], env=server_env(cache), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "pp = 3 pipeline stages but num_hidden_layers = 2" in p.stderr
    assert "listening" not in p.stderr and "disco: " not in p.stderr

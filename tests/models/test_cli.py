"""`disco-generate` (compiler/models/cli.py) as users run it: under python, under
disco-launch -n 2 and under mpiexec -n 2, on the tiny Qwen2 checkpoint with a tokenizer.
Its printed text must be the engine's greedy text for the prompt (test_generate.py holds
the engine to transformers), and no process of the job may outlive it."""
from __future__ import annotations

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "llm"))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "launch"))
import tiny  # noqa: E402
from launch_helpers import Job, clean_env, mpiexec_path, needs_mpi  # noqa: E402

PROMPT = "Once upon a time there was a dragon"
ARGS = ["--prompt", PROMPT, "--max-new-tokens", "12", "--ignore-eos", "--temperature", "0",
        "--no-progress"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import tok_fixtures
    d = str(tmp_path_factory.mktemp("qwen2-cli"))
    tok_fixtures.byte_level_dir(d)
    with open(os.path.join(d, "tokenizer.json")) as f:
        vocab = 1 + max(json.load(f)["model"]["vocab"].values())
    return tiny.make_checkpoint("qwen2", d, vocab_size=max(vocab, 423))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return clean_env(DISCO_TP_MODEL_CACHE=str(tmp_path_factory.mktemp("compiled")))


@pytest.fixture(scope="module")
def expected(checkpoint, env):
    """The engine's greedy text for the prompt, on one worker, in this process."""
    from compiler import models
    old = os.environ.get("DISCO_TP_MODEL_CACHE")
    os.environ["DISCO_TP_MODEL_CACHE"] = env["DISCO_TP_MODEL_CACHE"]
    try:
        with models.load(checkpoint, tp=1) as engine:
            return engine.generate(PROMPT, max_new_tokens=12, temperature=0, ignore_eos=True)[0]
    finally:
        if old is None:
            del os.environ["DISCO_TP_MODEL_CACHE"]
        else:
            os.environ["DISCO_TP_MODEL_CACHE"] = old


def _generate_argv():
    return [sys.executable, "-m", "compiler.models"]


def _check(job: Job, expected: str, workers: int):
    assert job.rc == 0, job.err
    assert expected in job.out, (job.out, job.err)
    assert f"disco: {workers} worker" in job.err
    assert not job.leftovers()


def test_under_python(checkpoint, env, expected):
    job = Job(_generate_argv() + ["--model", checkpoint, "--tp", "2", "--stats"] + ARGS, env=env)
    _check(job, expected, 2)
    assert "decode" in job.err and "tokens/s" in job.err


def test_a_degree_that_does_not_work_is_replaced(checkpoint, env, expected):
    """Qwen2's 2 KV heads and 4 query heads do not split over 3 workers: 2 is used, said."""
    job = Job(_generate_argv() + ["--model", checkpoint, "--tp", "3"] + ARGS, env=env)
    _check(job, expected, 2)
    assert "cannot be split over 3 workers" in job.err and "using 2" in job.err


def test_two_pipeline_stages(checkpoint, env, expected):
    """--pp 2: the two layers on a worker each (the tied head on the second): the same text."""
    job = Job(_generate_argv() + ["--model", checkpoint, "--pp", "2"] + ARGS, env=env)
    _check(job, expected, 2)


def test_kv_dtype(checkpoint, env):
    """--kv-dtype bfloat16: the cache's size said with --stats (half float32's bytes per
    token: 2 layers x 1 of 2 kv heads x 16 dims x 2 (k, v) x 2 bytes); a value not offered
    is refused before any worker starts."""
    job = Job(_generate_argv() + ["--model", checkpoint, "--tp", "2", "--kv-dtype", "bfloat16", "--stats"] + ARGS,
              env=env)
    assert job.rc == 0, job.err
    assert "per worker, bfloat16, 128 bytes per token" in job.err and not job.leftovers()
    job = Job(_generate_argv() + ["--model", checkpoint, "--kv-dtype", "int8"] + ARGS, env=env)
    assert job.rc == 2 and "--kv-dtype: invalid choice: 'int8'" in job.err, job.err
    assert "disco: " not in job.err


def test_more_stages_than_layers_is_a_clear_error(checkpoint, env):
    job = Job(_generate_argv() + ["--model", checkpoint, "--pp", "3"] + ARGS, env=env)
    assert job.rc == 2 and "Traceback" not in job.err, job.err
    assert "pp = 3 pipeline stages but num_hidden_layers = 2" in job.err
    assert "disco: " not in job.err         # no worker started
    assert not job.leftovers()


def test_bad_model_is_a_clear_error(tmp_path, env):
    job = Job(_generate_argv() + ["--model", str(tmp_path)] + ARGS, env=env)
    assert job.rc != 0 and "no config.json" in job.err and "Traceback" not in job.err


def test_under_disco_launch(checkpoint, env, expected):
    job = Job([sys.executable, "-m", "launch", "-n", "2", "--mode", "local", "--no-prefix",
               sys.executable, "-m", "compiler.models", "--model", checkpoint] + ARGS, env=env)
    _check(job, expected, 2)


@needs_mpi
def test_under_mpiexec(checkpoint, env, expected):
    job = Job([mpiexec_path(), "-n", "2", sys.executable, "-m", "compiler.models",
               "--model", checkpoint] + ARGS, env=env)
    _check(job, expected, 2)


@needs_mpi
def test_pipeline_stages_with_the_mpi_backend_under_mpiexec(checkpoint, env, expected):
    """--pp 2 on 4 ranks (2 stages of 2), the ranks treated as on other hosts
    (DISCO_MPI_TRANSPORT=remote), so the collectives and the stages' sub-groups are MPI's."""
    job = Job([mpiexec_path(), "-n", "4", sys.executable, "-m", "compiler.models", "--model", checkpoint,
               "--pp", "2"] + ARGS, env=dict(env, DISCO_MPI_TRANSPORT="remote"))
    _check(job, expected, 4)
    assert "collectives mpi" in job.err, job.err

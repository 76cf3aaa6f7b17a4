"""Fixtures the model tests share: a compiled-model cache of each module's own (not the
user's), and worker sessions kept for a module (starting workers is the slow part)."""
from __future__ import annotations

import os

import pytest

import disco


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """$DISCO_TP_MODEL_CACHE set to a new folder for the module's tests; its path."""
    old = os.environ.get("DISCO_TP_MODEL_CACHE")
    os.environ["DISCO_TP_MODEL_CACHE"] = str(tmp_path_factory.mktemp("compiled"))
    yield os.environ["DISCO_TP_MODEL_CACHE"]
    if old is None:
        del os.environ["DISCO_TP_MODEL_CACHE"]
    else:
        os.environ["DISCO_TP_MODEL_CACHE"] = old


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The tiny Llama checkpoint of tiny.py (random weights, transformers' layout), made
    once per module (a module may define its own `llama`)."""
    import tiny
    return tiny.make_checkpoint("llama", str(tmp_path_factory.mktemp("ckpt") / "llama"))


@pytest.fixture(scope="module")
def sessions():
    """sessions(n): one ProcessSession of n workers per n, shared by the module's tests."""
    made = {}

    def get(n):
        if n not in made:
            made[n] = disco.ProcessSession(n)
        return made[n]
    yield get
    for s in made.values():
        s.shutdown()

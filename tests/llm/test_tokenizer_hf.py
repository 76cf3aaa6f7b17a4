"""disco.llm.tokenizer against transformers' AutoTokenizer on the same files (skipped
without transformers): encode with and without special tokens, decode, chat templates
(text and ids, errors), for the fixtures of tok_fixtures.py, for files transformers'
own LlamaTokenizer and Qwen2Tokenizer write, and for tokenizer.json / tokenizer_config.json
disagreeing about BOS/EOS; generation_config.json's defaults against transformers'."""
from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tok_fixtures as F  # noqa: E402
from test_chat_template import BLOCKY, CHAT  # noqa: E402

from disco.errors import ChatTemplateError  # noqa: E402
from disco.llm.generation import GenerationConfig  # noqa: E402
from disco.llm.tokenizer import Tokenizer  # noqa: E402

VARIABLES = "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token }}|{{ messages | length }}"
GENERATION_TAG = ("{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}"
                  "{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}")


def _hf(path):
    return transformers.AutoTokenizer.from_pretrained(path)


def _from_transformers_class(path, cls_name, make):
    """The fixture's vocabulary and merges given to transformers' class, saved by it."""
    model = json.loads(make().to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    cls = getattr(transformers, cls_name)
    cls(vocab=model["vocab"], merges=merges).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    t = tmp_path_factory.mktemp
    return {
        "byte_level": F.byte_level_dir(str(t("bl"))),
        "sentencepiece": F.sentencepiece_dir(str(t("sp"))),
        "hf_llama": _from_transformers_class(str(t("hf_llama")), "LlamaTokenizer",
                                             F.sentencepiece_tokenizer),
        "hf_qwen2": _from_transformers_class(str(t("hf_qwen2")), "Qwen2Tokenizer",
                                             F.byte_level_tokenizer),
    }


KINDS = ["byte_level", "sentencepiece", "hf_llama", "hf_qwen2"]


@pytest.mark.parametrize("kind", KINDS)
def test_encode_decode(kind, dirs):
    ours, theirs = Tokenizer.load(dirs[kind]), _hf(dirs[kind])
    for text in F.TEXTS:
        for special in (True, False):
            ids = ours.encode(text, add_special_tokens=special)
            assert ids == theirs.encode(text, add_special_tokens=special), (text, special)
    rng = np.random.default_rng(5)
    for _ in range(100):
        ids = rng.integers(0, ours.vocab_size, size=int(rng.integers(1, 30))).tolist()
        for skip in (True, False):
            assert ours.decode(ids, skip) == theirs.decode(ids, skip_special_tokens=skip), ids
    assert ours.vocab_size == len(theirs)
    assert ours.special_ids >= set(theirs.all_special_ids)   # theirs: the named ones only
    assert ours.eos_token == theirs.eos_token and ours.bos_token == theirs.bos_token


@pytest.mark.parametrize("kind", ["byte_level", "sentencepiece"])
@pytest.mark.parametrize("template", ["own", "blocky", "variables", "generation_tag"])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chat_templates(kind, template, generation_prompt, dirs, tmp_path):
    path = dirs[kind]
    if template != "own":
        path = str(tmp_path / kind)
        shutil.copytree(dirs[kind], path)
        with open(os.path.join(path, "chat_template.jinja"), "w") as f:
            f.write({"blocky": BLOCKY, "variables": VARIABLES, "generation_tag": GENERATION_TAG}[template])
    ours, theirs = Tokenizer.load(path), _hf(path)
    text = ours.chat_text(CHAT, generation_prompt)
    assert text == theirs.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=generation_prompt)
    assert ours.apply_chat_template(CHAT, generation_prompt) == theirs.apply_chat_template(
        CHAT, add_generation_prompt=generation_prompt, return_dict=False)


def test_template_errors_where_transformers_errs(dirs):
    import jinja2
    ours, theirs = Tokenizer.load(dirs["sentencepiece"]), _hf(dirs["sentencepiece"])
    chat = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(jinja2.TemplateError, match="alternate"):
        theirs.apply_chat_template(chat, tokenize=False)
    with pytest.raises(ChatTemplateError, match="alternate"):
        ours.chat_text(chat)


@pytest.mark.parametrize("cls", [None, "PreTrainedTokenizerFast"])
@pytest.mark.parametrize("config, post_processor", [
    ({"add_bos_token": False}, "keep"),      # the config says no BOS, tokenizer.json adds it
    ({"add_bos_token": True}, None),         # the config says BOS, tokenizer.json has no post-processor
    ({}, None),
    ({"add_eos_token": True}, "keep"),
])
def test_bos_eos_when_the_files_disagree(cls, config, post_processor, dirs, tmp_path):
    path = str(tmp_path / "tok")
    shutil.copytree(dirs["sentencepiece"], path)
    tj = json.load(open(os.path.join(path, "tokenizer.json")))
    if post_processor != "keep":
        tj["post_processor"] = post_processor
    json.dump(tj, open(os.path.join(path, "tokenizer.json"), "w"))
    tc = json.load(open(os.path.join(path, "tokenizer_config.json")))
    tc.pop("add_bos_token"), tc.pop("add_eos_token")
    tc.update(config)
    if cls:
        tc["tokenizer_class"] = cls
    json.dump(tc, open(os.path.join(path, "tokenizer_config.json"), "w"))
    ours, theirs = Tokenizer.load(path), _hf(path)
    for text in F.TEXTS[:3]:
        assert ours.encode(text) == theirs.encode(text)


def test_config_special_tokens_missing_from_tokenizer_json(dirs, tmp_path):
    path = str(tmp_path / "tok")
    shutil.copytree(dirs["byte_level"], path)
    tc = json.load(open(os.path.join(path, "tokenizer_config.json")))
    tc["extra_special_tokens"] = ["<tool_call>", "</tool_call>"]
    tc["bos_token"] = "<|startoftext|>"
    json.dump(tc, open(os.path.join(path, "tokenizer_config.json"), "w"))
    ours, theirs = Tokenizer.load(path), _hf(path)
    text = "<|startoftext|>call <tool_call>{}</tool_call><|im_end|>"
    assert ours.encode(text) == theirs.encode(text)
    ids = ours.encode(text)
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
    assert ours.special_ids >= set(theirs.all_special_ids)


@pytest.mark.parametrize("kind", ["byte_level", "sentencepiece"])
def test_generation_defaults_as_transformers(kind, dirs):
    theirs = transformers.GenerationConfig.from_pretrained(dirs[kind])
    ours = Tokenizer.load(dirs[kind]).generation_config
    if theirs.do_sample:
        assert (ours.temperature, ours.top_k, ours.top_p) == \
            (theirs.temperature, theirs.top_k, theirs.top_p)
    else:
        assert ours.temperature == 0.0
    assert ours.repetition_penalty == (theirs.repetition_penalty or 1.0)
    eos = theirs.eos_token_id
    assert set(eos if isinstance(eos, list) else [eos]) <= ours.eos_token_ids
    # transformers' top_k when sampling and the file names none
    defaults = getattr(transformers.GenerationConfig, "_get_default_generation_params", None)
    hf_top_k = defaults()["top_k"] if defaults else transformers.GenerationConfig().top_k
    assert hf_top_k == GenerationConfig.from_dict({"do_sample": True}).top_k == 50

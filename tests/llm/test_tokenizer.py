"""disco.llm.tokenizer without transformers: loading checkpoint directories and
tokenizers.Tokenizer objects, encode/decode, BOS/EOS, special tokens from the
configuration, and the errors. The comparisons with transformers are in
test_tokenizer_hf.py."""
from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tok_fixtures as F  # noqa: E402

from disco.errors import ChatTemplateError, DiscoError, TokenizerError  # noqa: E402
from disco.llm.generation import GenerationConfig  # noqa: E402
from disco.llm.tokenizer import Tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def bl_dir(tmp_path_factory):
    return F.byte_level_dir(str(tmp_path_factory.mktemp("byte_level")))


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    return F.sentencepiece_dir(str(tmp_path_factory.mktemp("sentencepiece")))


@pytest.mark.parametrize("kind", ["bl", "sp"])
@pytest.mark.parametrize("text", F.TEXTS)
def test_round_trip(kind, text, bl_dir, sp_dir):
    tok = Tokenizer.load(bl_dir if kind == "bl" else sp_dir)
    ids = tok.encode(text)
    expected = text
    for special in ("<s>", "</s>") if kind == "sp" else ("<|im_end|>",):
        expected = expected.replace(special, "")
    if kind == "sp" and text.startswith(" "):
        expected = expected[1:]      # the decoder strips the one space Metaspace would add
    assert tok.decode(ids) == expected
    if kind == "sp":     # Metaspace adds a space unless the text has one
        text = "<s>" + ("" if text.startswith(" ") else " ") + text
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_characters_split_over_tokens(bl_dir, sp_dir):
    # the fixtures are small enough that CJK and emoji take several tokens each
    bl, sp = Tokenizer.load(bl_dir), Tokenizer.load(sp_dir)
    assert len(bl.encode("🦄")) > 1 and len(bl.encode("語")) > 1
    assert [sp.id_to_token(i) for i in sp.encode("🦄", add_special_tokens=False)] == \
        ["▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x84>"]


def test_bos_from_the_post_processor(bl_dir, sp_dir):
    sp, bl = Tokenizer.load(sp_dir), Tokenizer.load(bl_dir)
    assert sp.bos_token == "<s>" and sp.bos_token_id == 1
    assert sp.encode("Hello")[0] == 1 and sp.encode("Hello", add_special_tokens=False)[0] != 1
    assert bl.bos_token is None
    assert bl.bos_token_id == bl.token_to_id("<|endoftext|>")   # generation_config.json's
    assert bl.encode("Hello") == bl.encode("Hello", add_special_tokens=False)


def test_eos_and_generation_defaults(bl_dir, sp_dir):
    bl, sp = Tokenizer.load(bl_dir), Tokenizer.load(sp_dir)
    im_end, eot = bl.token_to_id("<|im_end|>"), bl.token_to_id("<|endoftext|>")
    assert bl.eos_token_ids == {im_end, eot} and sp.eos_token_ids == {2}
    g = bl.generation_config
    assert (g.temperature, g.top_k, g.top_p, g.repetition_penalty) == (0.7, 20, 0.8, 1.05)
    assert g.eos_token_ids == {im_end, eot}
    assert sp.generation_config.temperature == 0.0      # no do_sample: greedy
    assert sp.generation_config.eos_token_ids == {2}


def test_special_tokens_are_split_out_and_skipped(bl_dir):
    tok = Tokenizer.load(bl_dir)
    ids = tok.encode("a<|im_end|>b")
    assert tok.token_to_id("<|im_end|>") in ids
    assert tok.decode(ids) == "ab"
    assert tok.decode(ids, skip_special_tokens=False) == "a<|im_end|>b"


def test_config_tokens_missing_from_tokenizer_json_are_added(tmp_path, bl_dir):
    d = str(tmp_path)
    F.byte_level_dir(d)
    config = json.load(open(os.path.join(d, "tokenizer_config.json")))
    config["extra_special_tokens"] = ["<tool_call>"]
    json.dump(config, open(os.path.join(d, "tokenizer_config.json"), "w"))
    tok = Tokenizer.load(d)
    tool = tok.token_to_id("<tool_call>")
    assert tool is not None and tool in tok.special_ids
    assert tool in tok.encode("x <tool_call> y")
    assert tok.decode(tok.encode("x <tool_call> y")) == "x  y"


def test_chat_template_file_wins_over_config(tmp_path):
    d = F.byte_level_dir(str(tmp_path))
    with open(os.path.join(d, "chat_template.jinja"), "w") as f:
        f.write("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}")
    assert Tokenizer.load(d).chat_text([{"role": "user", "content": "hi"}]) == "[user]hi"


def test_from_a_tokenizers_object():
    """What a GGUF loader does: a tokenizers.Tokenizer and the settings, ids allowed."""
    backend = F.sentencepiece_tokenizer()
    backend.post_processor = None
    before = backend.to_str()
    tok = Tokenizer(backend, special_tokens={"bos_token": 1, "eos_token": 2, "unk_token": 0},
                    extra_special_tokens=["<eot>"], eos_token_ids=[7], add_bos_token=True,
                    chat_template=F.LLAMA2)
    assert backend.to_str() == before                      # the caller's object is unchanged
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>"
    assert tok.eos_token_ids == {2, 7}
    assert tok.encode("Hi")[0] == 1
    eot = tok.token_to_id("<eot>")
    assert eot == backend.get_vocab_size() and eot in tok.special_ids
    assert tok.apply_chat_template([{"role": "user", "content": "Hi"}]) == \
        tok.encode("<s>[INST] Hi [/INST]", add_special_tokens=False)
    no_bos = Tokenizer(backend, special_tokens={"bos_token": "<s>"}, add_bos_token=False)
    assert no_bos.encode("Hi") == tok.encode("Hi")[1:]
    eos_too = Tokenizer(backend, special_tokens={"bos_token": 1, "eos_token": 2},
                        add_bos_token=True, add_eos_token=True)
    assert eos_too.encode("Hi") == tok.encode("Hi") + [2]


def test_generation_config_given_to_the_constructor():
    tok = Tokenizer(F.byte_level_tokenizer(), special_tokens={"eos_token": "<|im_end|>"},
                    generation_config=GenerationConfig(temperature=0.5, eos_token_ids={1}))
    assert tok.eos_token_ids == {1, tok.token_to_id("<|im_end|>")}
    assert tok.generation_config.temperature == 0.5
    assert tok.generation_config.eos_token_ids == tok.eos_token_ids


def test_errors(tmp_path, bl_dir):
    with pytest.raises(TokenizerError, match="no such directory"):
        Tokenizer.load(str(tmp_path / "missing"))
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "tokenizer.model").write_bytes(b"")
    with pytest.raises(TokenizerError, match="no tokenizer.json.*tokenizer.model only"):
        Tokenizer.load(str(tmp_path / "ckpt"))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(TokenizerError, match="GGUF"):
        Tokenizer.load(str(tmp_path / "m.gguf"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot read"):
        Tokenizer.load(str(tmp_path / "bad"))
    tok = Tokenizer.load(bl_dir)
    assert Tokenizer.load(os.path.join(bl_dir, "tokenizer.json")).vocab_size == tok.vocab_size
    with pytest.raises(TokenizerError, match=f"token id {tok.vocab_size} is outside"):
        tok.decode([1, tok.vocab_size])
    with pytest.raises(TokenizerError, match="outside"):
        tok.stream_decoder().push(-1)
    with pytest.raises(TokenizerError, match="expected a str"):
        tok.encode(b"bytes")
    with pytest.raises(TokenizerError, match="no such token id"):
        Tokenizer(F.byte_level_tokenizer(), special_tokens={"bos_token": 10**6})
    with pytest.raises(TokenizerError, match="names no bos_token"):
        Tokenizer(F.byte_level_tokenizer(), add_bos_token=True)
    assert issubclass(TokenizerError, DiscoError) and issubclass(ChatTemplateError, TokenizerError)


def test_no_chat_template(tmp_path):
    tok = Tokenizer.load(F.byte_level_dir(str(tmp_path), chat_template=False))
    with pytest.raises(ChatTemplateError, match="has no chat template.*encode\\(\\)"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert tok.encode("hi")   # plain text still works

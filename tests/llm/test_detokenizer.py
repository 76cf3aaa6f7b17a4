"""The stream decoder against decoding all the tokens at once (the tokenizers library):
real texts whose characters span tokens, random token ids (special tokens, invalid
UTF-8, byte-fallback runs), with and without a prompt, on a byte-level BPE and a
SentencePiece-style (byte fallback) tokenizer."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tok_fixtures as F  # noqa: E402

from disco.llm.tokenizer import Tokenizer  # noqa: E402

REPLACEMENT = "\ufffd"


@pytest.fixture(scope="module", params=["byte_level", "sentencepiece"])
def tok(request, tmp_path_factory):
    make = F.byte_level_dir if request.param == "byte_level" else F.sentencepiece_dir
    return Tokenizer.load(make(str(tmp_path_factory.mktemp(request.param))))


def stream(tok, ids, prompt=(), skip=True):
    decoder = tok.stream_decoder(prompt, skip_special_tokens=skip)
    pieces = [decoder.push(i) for i in ids]
    pieces.append(decoder.flush())
    assert "".join(pieces) == decoder.text
    assert decoder.token_ids == list(ids)
    return pieces


@pytest.mark.parametrize("text", F.TEXTS)
def test_text_pieces_add_up_and_never_show_half_characters(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    pieces = stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids)
    assert not any(REPLACEMENT in p for p in pieces)
    if any(ord(c) > 0x7FF for c in text):   # several tokens per character somewhere
        assert "" in pieces[:-1]


def test_emoji_waits_for_its_last_token(tok):
    ids = tok.encode("a🦄b", add_special_tokens=False)
    pieces = stream(tok, ids)
    shown = [p for p in pieces if p]
    assert "".join(shown) == "a🦄b" and "🦄" in "".join(shown[1:])
    first_emoji_piece = next(i for i, p in enumerate(pieces) if "🦄" in p)
    assert all(p == "" for p in pieces[1:first_emoji_piece]) and first_emoji_piece > 1


@pytest.mark.parametrize("skip", [True, False])
def test_random_ids_equal_decoding_at_once(tok, skip):
    """Random ids hit every awkward case: invalid byte sequences, a valid byte run made
    invalid by its next byte, special tokens between pieces, lone spaces."""
    rng = np.random.default_rng(123)
    for _ in range(300):
        ids = rng.integers(0, tok.vocab_size, size=int(rng.integers(1, 30))).tolist()
        assert "".join(stream(tok, ids, skip=skip)) == tok.decode(ids, skip_special_tokens=skip), ids


def test_random_byte_tokens_mixed_with_text(tok):
    """Mostly multi-byte material: characters cut at every byte, valid and invalid."""
    rng = np.random.default_rng(7)
    pool = sorted({i for t in F.TEXTS for i in tok.encode(t, add_special_tokens=False)}
                  | set(tok.byte_fallback_ids))
    for _ in range(300):
        ids = rng.choice(pool, size=int(rng.integers(1, 25))).tolist()
        assert "".join(stream(tok, ids)) == tok.decode(ids), ids


@pytest.mark.parametrize("text", F.TEXTS[:4])
def test_after_a_prompt_the_text_continues_the_prompt(tok, text):
    ids = tok.encode(text)
    for cut in range(1, len(ids)):
        prompt, new = ids[:cut], ids[cut:]
        before, after = tok.decode(prompt), tok.decode(prompt + new)
        if before.endswith(REPLACEMENT):    # the prompt ends inside a character
            continue
        assert "".join(stream(tok, new, prompt)) == after[len(before):]


def test_sentencepiece_space_after_a_prompt(tmp_path):
    """The one place the two conventions differ: SentencePiece's first space."""
    tok = Tokenizer.load(F.sentencepiece_dir(str(tmp_path)))
    prompt = tok.encode("Once upon a time")
    new = tok.encode(" there was", add_special_tokens=False)
    assert "".join(stream(tok, new)) == tok.decode(new) == "there was"
    assert "".join(stream(tok, new, prompt)) == " there was"


def test_chat_reply_after_a_chat_prompt(tok):
    prompt = tok.apply_chat_template([{"role": "user", "content": "日本語?"}])
    reply = tok.encode("はい、日本語です 🎉", add_special_tokens=False)
    reply += sorted(tok.eos_token_ids)[:1]
    text = "".join(stream(tok, reply, prompt))
    assert text.strip() == "はい、日本語です 🎉"

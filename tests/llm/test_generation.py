"""disco.llm.generation: GenerationConfig read as transformers reads
generation_config.json, and StopChecker against a plain reference (the text so far,
searched after each piece), fed in every possible split of a text."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from disco.errors import GenerationError
from disco.llm.generation import GenerationConfig, StopChecker

EOS = 2


def test_defaults_are_greedy():
    c = GenerationConfig()
    assert c.sampling.greedy and c.max_new_tokens == 256 and c.stop == () and not c.eos_token_ids


def test_from_dict_as_transformers():
    # sampling only with do_sample; then top_k 50 unless named (transformers' default)
    c = GenerationConfig.from_dict({"temperature": 0.6, "top_p": 0.9, "eos_token_id": [1, 5]})
    assert c.temperature == 0.0 and c.eos_token_ids == {1, 5}
    c = GenerationConfig.from_dict({"do_sample": True, "temperature": 0.6, "top_p": 0.9,
                                    "eos_token_id": 7, "repetition_penalty": 1.1,
                                    "max_new_tokens": 99, "top_k": None}, eos_token_ids=[3])
    assert (c.temperature, c.top_k, c.top_p, c.repetition_penalty, c.max_new_tokens) == \
        (0.6, 50, 0.9, 1.1, 99)
    assert c.eos_token_ids == {3, 7}
    assert GenerationConfig.from_dict({"do_sample": True}).temperature == 1.0


def test_load(tmp_path):
    assert GenerationConfig.load(str(tmp_path), [4]) == GenerationConfig(eos_token_ids={4})
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": True, "top_k": 5}))
    assert GenerationConfig.load(str(tmp_path)).top_k == 5
    (tmp_path / "generation_config.json").write_text("{")
    with pytest.raises(GenerationError, match="not valid JSON"):
        GenerationConfig.load(str(tmp_path))


def test_replace_and_errors():
    c = GenerationConfig().replace(temperature=0.5, stop="###")
    assert c.temperature == 0.5 and c.stop == ("###",)
    for bad, match in [(dict(max_new_tokens=0), "max_new_tokens"), (dict(stop=[""]), "stop"),
                       (dict(top_p=2.0), "top_p"), (dict(eos_token_ids=[-1]), "eos_token_id")]:
        with pytest.raises(GenerationError, match=match):
            GenerationConfig(**bad)


def run(checker, pieces, ids=None):
    """Feed pieces (token i gets ids[i], default 100); everything shown, in order."""
    shown = []
    for i, piece in enumerate(pieces):
        shown.append(checker.push(ids[i] if ids else 100, piece))
        if checker.finished:
            break
    shown.append(checker.flush())
    assert "".join(shown) == checker.text
    return shown


def test_eos_ends_and_its_text_is_dropped():
    c = StopChecker(GenerationConfig(eos_token_ids={EOS}))
    assert run(c, ["Hello", " world", "</s>", "more"], [5, 6, EOS, 7]) == ["Hello", " world", "", ""]
    assert c.finish_reason == "stop" and c.num_tokens == 3 and c.stop_string is None


def test_ignore_eos_and_length():
    c = StopChecker(GenerationConfig(eos_token_ids={EOS}, ignore_eos=True, max_new_tokens=3),
                    eos_token_ids=[EOS])
    run(c, ["a", "b", "c", "d"], [EOS, EOS, EOS, EOS])
    assert c.text == "abc" and c.finish_reason == "length" and c.num_tokens == 3


def test_eos_from_the_tokenizer_too():
    c = StopChecker(GenerationConfig(), eos_token_ids=[9])
    run(c, ["a", "b"], [1, 9])
    assert c.text == "a" and c.finish_reason == "stop"


def test_stop_string_across_pieces_is_never_shown():
    c = StopChecker(GenerationConfig(stop=("\nUser:",)))
    shown = run(c, ["Sure.", "\n", "Us", "er", ": hi"])
    assert shown == ["Sure.", "", "", "", "", ""]
    assert c.text == "Sure." and c.finish_reason == "stop" and c.stop_string == "\nUser:"


def test_a_false_start_is_released():
    c = StopChecker(GenerationConfig(stop=("\nUser:",)))
    assert run(c, ["a\n", "Use", "ful"]) == ["a", "", "\nUseful", ""]
    assert c.finish_reason is None


def test_held_text_comes_out_at_the_length_limit():
    c = StopChecker(GenerationConfig(stop=("###",), max_new_tokens=2))
    assert run(c, ["x#", "#"]) == ["x", "##", ""]
    assert c.finish_reason == "length"


def test_flush_takes_the_decoders_tail_and_still_cuts():
    c = StopChecker(GenerationConfig(stop=("END",), max_new_tokens=1))
    c.push(1, "E")
    assert c.finished and c.text == "E"
    assert c.flush("ND tail") == "ND tail"        # after "length": the text is already out
    c = StopChecker(GenerationConfig(stop=("END",)))
    assert c.push(1, "E") == ""
    assert c.flush("ND tail") == "" and c.text == "" and c.stop_string == "END"


def test_push_after_finish():
    c = StopChecker(GenerationConfig(max_new_tokens=1))
    c.push(1, "a")
    with pytest.raises(GenerationError, match="after the sequence finished"):
        c.push(2, "b")


def reference(pieces, stops):
    """The text generation keeps: it stops after the first piece that completes a stop
    string, and the text ends where the earliest of the stop strings present begins."""
    text = ""
    for piece in pieces:
        text += piece
        firsts = [i for i in (text.find(s) for s in stops) if i >= 0]
        if firsts:
            return text[:min(firsts)], True
    return text, False


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet="ab#\n", max_size=30), cuts=st.lists(st.integers(0, 30), max_size=10),
       stops=st.lists(st.text(alphabet="ab#\n", min_size=1, max_size=4), max_size=3))
def test_any_split_equals_the_reference(text, cuts, stops):
    bounds = sorted(set(c for c in cuts if c <= len(text)) | {0, len(text)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    want, stopped = reference(pieces, stops)
    c = StopChecker(GenerationConfig(stop=tuple(stops), max_new_tokens=10**6))
    shown = []
    for piece in pieces:
        shown.append(c.push(100, piece))
        # never ahead of what is settled: shown text is a prefix of the answer
        assert want.startswith("".join(shown))
        if c.finished:
            break
    shown.append(c.flush())
    assert "".join(shown) == c.text == want
    assert (c.finish_reason == "stop") == stopped


def test_the_first_stop_string_completed_wins():
    # "a" completes first (after "#a"), although "#aa" would have begun earlier
    c = StopChecker(GenerationConfig(stop=("a", "#aa")))
    assert run(c, ["#a", "a"]) == ["#", ""] and c.stop_string == "a"
    c = StopChecker(GenerationConfig(stop=("a", "#aa")))
    assert run(c, ["#aa"]) == ["", ""] and c.stop_string == "#aa"

"""disco.llm.serve.protocol: request bodies in, engine settings out, against hand-written
expectations (OpenAI's API reference for the fields and their ranges; vLLM's names for the
extensions); and the answer shapes the openai client parses."""
from __future__ import annotations

import pytest

from disco.llm.serve.protocol import APIError, chunk, parse_chat, parse_completion, response, usage

M = "tiny"


def test_a_completion_body():
    job = parse_completion({"model": M, "prompt": "Hi", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
                            "seed": 3, "stop": "\n", "stream": True, "stream_options": {"include_usage": True},
                            "user": "someone", "top_k": -1, "ignore_eos": True}, M)
    assert (job.kind, job.prompt, job.max_tokens, job.stream, job.include_usage) == ("completion", "Hi", 7, True, True)
    assert job.options == dict(temperature=0.5, top_p=0.9, seed=3, stop=("\n",), top_k=0, ignore_eos=True)
    assert job.id.startswith("cmpl-") and job.model == M


def test_defaults_and_prompt_forms():
    job = parse_completion({"model": M, "prompt": "Hi"}, M)
    assert job.max_tokens == 16 and job.options == {} and not job.stream      # OpenAI's default of 16
    assert parse_completion({"model": M, "prompt": [1, 2, 3]}, M).prompt == [1, 2, 3]
    assert parse_completion({"model": M, "prompt": ["Hi"]}, M).prompt == "Hi"
    assert parse_completion({"model": M, "prompt": [[4, 5]]}, M).prompt == [4, 5]
    assert parse_completion({"model": M, "prompt": "Hi", "max_tokens": None}, M).max_tokens is None
    assert parse_completion({"model": M, "prompt": "Hi", "seed": -1}, M).options["seed"] == 2 ** 64 - 1
    # what the official client sends by default is accepted
    assert parse_completion({"model": M, "prompt": "Hi", "n": 1, "echo": False, "logprobs": None,
                             "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {},
                             "best_of": 1}, M).prompt == "Hi"


def test_a_chat_body():
    job = parse_chat({"model": M, "max_completion_tokens": 4, "max_tokens": 9, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": None}]}, M)
    assert job.max_tokens == 4 and job.id.startswith("chatcmpl-")
    assert job.messages == [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Hello there"},
                            {"role": "assistant", "content": ""}]
    assert parse_chat({"model": M, "messages": [{"role": "user", "content": "x"}]}, M).max_tokens is None


@pytest.mark.parametrize("body, param, message", [
    ("text", None, "must be a JSON object, got string"),
    ({"prompt": "x"}, "model", "`model` must be a string naming the model (this server serves 'tiny'), got null"),
    ({"model": M, "prompt": None}, "prompt", "`prompt` must be a string or an array of token ids, got null"),
    ({"model": M, "prompt": [1, "a"]}, "prompt", "got array"),
    ({"model": M, "prompt": [1, True]}, "prompt", "got array"),
    ({"model": M, "prompt": ["a", "b"]}, "prompt", "`prompt` holds 2 prompts; this server takes one"),
    ({"model": M, "prompt": "x", "max_tokens": True}, "max_tokens", "must be an integer >= 1, got boolean True"),
    ({"model": M, "prompt": "x", "max_tokens": 2.0}, "max_tokens", "got number 2.0"),
    ({"model": M, "prompt": "x", "temperature": -0.1}, "temperature", "a number in [0, 2], got -0.1"),
    ({"model": M, "prompt": "x", "top_p": 1.5}, "top_p", "a number in (0, 1], got 1.5"),
    ({"model": M, "prompt": "x", "top_k": -2}, "top_k", "an integer >= -1, got -2"),
    ({"model": M, "prompt": "x", "min_p": 2}, "min_p", "in [0, 1], got 2"),
    ({"model": M, "prompt": "x", "repetition_penalty": 0}, "repetition_penalty", "a number > 0, got 0"),
    ({"model": M, "prompt": "x", "ignore_eos": 1}, "ignore_eos", "must be a boolean, got integer 1"),
    ({"model": M, "prompt": "x", "stop": ["a", ""]}, "stop", "non-empty string or an array of them"),
    ({"model": M, "prompt": "x", "stop": [1]}, "stop", "got [1]"),
    ({"model": M, "prompt": "x", "n": 3}, "n", "`n`=3 is not supported by this server"),
    ({"model": M, "prompt": "x", "echo": True}, "echo", "not supported"),
    ({"model": M, "prompt": "x", "logprobs": 2}, "logprobs", "not supported"),
    ({"model": M, "prompt": "x", "best_of": 2}, "best_of", "not supported"),
    ({"model": M, "prompt": "x", "presence_penalty": 0.5}, "presence_penalty", "(only 0); `repetition_penalty` is"),
    ({"model": M, "prompt": "x", "logit_bias": {"5": 1}}, "logit_bias", "not supported"),
    ({"model": M, "prompt": "x", "stream_options": "yes", "stream": True}, "stream_options", "must be an object"),
    ({"model": M, "prompt": "x", "stream_options": {}}, "stream_options", "only allowed with `stream`: true"),
])
def test_bad_completion_bodies(body, param, message):
    with pytest.raises(APIError) as info:
        parse_completion(body, M)
    e = info.value
    assert e.status == 400 and e.param == param and message in e.message, e.message
    assert e.body() == {"error": {"message": e.message, "type": "invalid_request_error", "param": param,
                                  "code": None}}


def test_another_model_is_404():
    with pytest.raises(APIError) as info:
        parse_completion({"model": "gpt-4", "prompt": "x"}, M)
    assert info.value.status == 404 and info.value.code == "model_not_found"
    assert "'gpt-4' does not exist; this server serves 'tiny'" in info.value.message


@pytest.mark.parametrize("messages, param, message", [
    (None, "messages", "must be a non-empty array of messages, got null"),
    ([], "messages", "got array"),
    (["hi"], "messages[0]", "must be an object with `role` and `content`, got string"),
    ([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}], "messages[1].role", "got 'bot'"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "messages[0].content[0]",
     "reads text only"),
    ([{"role": "user"}], "messages[0].content", "got null"),
])
def test_bad_chat_bodies(messages, param, message):
    with pytest.raises(APIError) as info:
        parse_chat({"model": M, "messages": messages}, M)
    assert info.value.status == 400 and info.value.param == param and message in info.value.message


def test_answers():
    """The shapes of OpenAI's API reference (what openai's types parse)."""
    job = parse_completion({"model": M, "prompt": "x"}, M)
    use = usage(3, 2)
    assert use == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    r = response(job, "ab", "length", use)
    assert r["object"] == "text_completion" and r["choices"] == [
        {"index": 0, "text": "ab", "logprobs": None, "finish_reason": "length"}] and r["usage"] == use
    assert chunk(job, "a")["choices"][0] == {"index": 0, "text": "a", "logprobs": None, "finish_reason": None}
    chat = parse_chat({"model": M, "messages": [{"role": "user", "content": "x"}], "stream": True,
                       "stream_options": {"include_usage": True}}, M)
    assert response(chat, "ab", "stop", use)["choices"][0]["message"] == {"role": "assistant", "content": "ab"}
    first, mid, last = chunk(chat, "", first=True), chunk(chat, "b"), chunk(chat, None, "stop")
    assert first["object"] == "chat.completion.chunk" and first["usage"] is None
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert mid["choices"][0]["delta"] == {"content": "b"}
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"

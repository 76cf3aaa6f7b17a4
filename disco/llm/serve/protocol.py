"""OpenAI's request and response bodies: what /v1/completions and /v1/chat/completions
accept, checked field by field, and the JSON they answer (whole, or as stream chunks).

A field of the wrong type or out of range is an `APIError` (HTTP 400) naming the field,
what it must be and what was given, in OpenAI's error body. Fields this server does not
know are ignored, as OpenAI's clients send some (`user`, ...); known ones it cannot honour
(`n` > 1, logprobs, penalties other than 0) are refused rather than silently ignored.
Beyond OpenAI's fields it takes vLLM's sampling extensions `top_k`, `min_p`,
`repetition_penalty` and `ignore_eos`. Sampling fields left out take the checkpoint's
defaults (generation_config.json; greedy without one), as vLLM does.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional, Union

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


class APIError(Exception):
    """An answer other than 200, in OpenAI's shape:
    {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def bad(param: Optional[str], message: str) -> APIError:
    return APIError(400, message, param=param)


@dataclass
class Job:
    """One checked request: what to generate and how to answer."""
    kind: str                                    # "completion" or "chat"
    prompt: Union[str, list[int], None] = None   # completions
    messages: Optional[list[dict]] = None        # chat
    max_tokens: Optional[int] = None             # None: the engine's default
    options: dict = field(default_factory=dict)  # Engine.submit's sampling options
    stream: bool = False
    include_usage: bool = False                  # stream_options.include_usage
    id: str = ""
    created: int = 0
    model: str = ""


def _type_name(v: Any) -> str:
    return "null" if v is None else {bool: "boolean", int: "integer", float: "number", str: "string",
                                     list: "array", dict: "object"}.get(type(v), type(v).__name__)


def _get(body: dict, name: str, kind: str, lo: Optional[float] = None, hi: Optional[float] = None,
         lo_open: bool = False):
    """body[name] checked as `kind` ("int", "number", "bool", "str") in [lo, hi] (lo
    excluded with lo_open); None when absent or null."""
    v = body.get(name)
    if v is None:
        return None
    ok = {"int": isinstance(v, int) and not isinstance(v, bool),
          "number": isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": isinstance(v, bool), "str": isinstance(v, str)}[kind]
    want = {"int": "an integer", "number": "a number", "bool": "a boolean", "str": "a string"}[kind]
    rng = ""
    if lo is not None or hi is not None:
        rng = (f" {'>' if lo_open else '>='} {lo}" if hi is None else
               f" in {'(' if lo_open else '['}{lo}, {hi}]" if lo is not None else f" <= {hi}")
    if not ok:
        raise bad(name, f"`{name}` must be {want}{rng}, got {_type_name(v)} {v!r}"[:300])
    if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
        raise bad(name, f"`{name}` must be {want}{rng}, got {v!r}")
    return v


def _unsupported(body: dict, name: str, allowed: tuple, why: str) -> None:
    """body[name] must be absent, null, empty or one of `allowed` (of the same type)."""
    v = body.get(name)
    if v is None or v == {} or v == [] or any(type(v) is type(a) and v == a for a in allowed):
        return
    raise bad(name, f"`{name}`={v!r} is not supported by this server: {why}"[:300])


def _common(body: Any, model: str, kind: str) -> Job:
    if not isinstance(body, dict):
        raise bad(None, f"the request body must be a JSON object, got {_type_name(body)}")
    name = body.get("model")
    if not isinstance(name, str):
        raise bad("model", f"`model` must be a string naming the model (this server serves {model!r}), "
                           f"got {_type_name(name)}")
    if name != model:
        raise APIError(404, f"the model {name!r} does not exist; this server serves {model!r}",
                       param="model", code="model_not_found")
    job = Job(kind=kind, model=model, created=int(time.time()))
    job.id = ("cmpl-" if kind == "completion" else "chatcmpl-") + uuid.uuid4().hex
    n = _get(body, "n", "int", 1)
    if n not in (None, 1):
        raise bad("n", f"`n`={n} is not supported by this server: send one request per choice (n=1)")
    job.stream = bool(_get(body, "stream", "bool"))
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict):
            raise bad("stream_options", f"`stream_options` must be an object, got {_type_name(so)}")
        if not job.stream:
            raise bad("stream_options", "`stream_options` is only allowed with `stream`: true")
        job.include_usage = bool(_get(so, "include_usage", "bool"))
    opts = {}
    for key, kind_, lo, hi, lo_open in (("temperature", "number", 0, 2, False), ("top_p", "number", 0, 1, True),
                                        ("seed", "int", None, None, False), ("top_k", "int", -1, None, False),
                                        ("min_p", "number", 0, 1, False),
                                        ("repetition_penalty", "number", 0, None, True),
                                        ("ignore_eos", "bool", None, None, False)):
        v = _get(body, key, kind_, lo, hi, lo_open)
        if v is not None:
            opts[key] = v
    if opts.get("top_k") == -1:          # vLLM's spelling of "no top-k"
        opts["top_k"] = 0
    if "seed" in opts and opts["seed"] < 0:
        opts["seed"] &= (1 << 64) - 1
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not (isinstance(stops, list) and all(isinstance(s, str) and s for s in stops)):
            raise bad("stop", f"`stop` must be a non-empty string or an array of them, got {stop!r}"[:300])
        if stops:
            opts["stop"] = tuple(stops)
    for key in ("presence_penalty", "frequency_penalty"):
        v = _get(body, key, "number", -2, 2)
        if v not in (None, 0):
            raise bad(key, f"`{key}`={v} is not supported by this server (only 0); "
                           "`repetition_penalty` is")
    _unsupported(body, "logit_bias", (), "no logit biases")
    job.options = opts
    return job


def parse_completion(body: Any, model: str) -> Job:
    """A POST /v1/completions body (see the module docstring)."""
    job = _common(body, model, "completion")
    job.max_tokens = _get(body, "max_tokens", "int", 1)
    if job.max_tokens is None and "max_tokens" not in body:
        job.max_tokens = 16                       # OpenAI's default for completions
    _unsupported(body, "echo", (False,), "the prompt is not repeated")
    _unsupported(body, "logprobs", (), "no log-probabilities")
    _unsupported(body, "best_of", (1,), "one completion per request")
    _unsupported(body, "suffix", ("",), "no insertion")
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]                                  # a batch of one
    if isinstance(p, str):
        job.prompt = p
    elif isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        job.prompt = list(p)
    elif isinstance(p, list) and len(p) > 1 and all(isinstance(t, (str, list)) for t in p):
        raise bad("prompt", f"`prompt` holds {len(p)} prompts; this server takes one per request")
    else:
        raise bad("prompt", f"`prompt` must be a string or an array of token ids, got {_type_name(p)}")
    return job


def parse_chat(body: Any, model: str) -> Job:
    """A POST /v1/chat/completions body (see the module docstring)."""
    job = _common(body, model, "chat")
    mct = _get(body, "max_completion_tokens", "int", 1)
    job.max_tokens = mct if mct is not None else _get(body, "max_tokens", "int", 1)
    _unsupported(body, "logprobs", (False,), "no log-probabilities")
    _unsupported(body, "tools", (), "no tool calls")
    msgs = body.get("messages")
    if not (isinstance(msgs, list) and msgs):
        raise bad("messages", f"`messages` must be a non-empty array of messages, got {_type_name(msgs)}")
    job.messages = [_message(m, i) for i, m in enumerate(msgs)]
    return job


def _message(m: Any, i: int) -> dict:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise bad(where, f"`{where}` must be an object with `role` and `content`, got {_type_name(m)}")
    role, content = m.get("role"), m.get("content")
    if role not in CHAT_ROLES:
        raise bad(f"{where}.role", f"`{where}.role` must be one of {', '.join(CHAT_ROLES)}, got {role!r}"[:300])
    if isinstance(content, list):          # content parts: only text ones
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise bad(f"{where}.content[{j}]", f"`{where}.content[{j}]` must be a text part "
                          f"({{\"type\": \"text\", \"text\": ...}}); this server reads text only")
            texts.append(part["text"])
        content = "".join(texts)
    if content is None and role == "assistant":
        content = ""
    if not isinstance(content, str):
        raise bad(f"{where}.content", f"`{where}.content` must be a string or an array of text parts, "
                                      f"got {_type_name(content)}")
    return {"role": role, "content": content}


# -- answers -------------------------------------------------------------------------------

def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def response(job: Job, text: str, finish_reason: Optional[str], use: dict) -> dict:
    """The whole answer of a request that is not streamed."""
    if job.kind == "completion":
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "logprobs": None, "finish_reason": finish_reason}
        obj = "chat.completion"
    return {"id": job.id, "object": obj, "created": job.created, "model": job.model,
            "choices": [choice], "usage": use}


def chunk(job: Job, text: Optional[str], finish_reason: Optional[str] = None,
          first: bool = False) -> dict:
    """One event of a streamed answer: new text, or the end (finish_reason)."""
    if job.kind == "completion":
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    else:
        delta = {"role": "assistant", "content": text or ""} if first else (
            {"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    out = {"id": job.id, "object": obj, "created": job.created, "model": job.model, "choices": [choice]}
    if job.include_usage:
        out["usage"] = None
    return out


def usage_chunk(job: Job, use: dict) -> dict:
    """The last event when stream_options.include_usage: no choices, the usage."""
    obj = "text_completion" if job.kind == "completion" else "chat.completion.chunk"
    return {"id": job.id, "object": obj, "created": job.created, "model": job.model, "choices": [],
            "usage": use}

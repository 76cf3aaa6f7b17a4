"""Chat templates rendered as transformers renders them.

A checkpoint's chat template (Jinja, from tokenizer_config.json or chat_template.jinja) is
the only description of its prompt format, and templates rely on transformers' rendering
environment: trim_blocks and lstrip_blocks, the loop-control extension, the
`{% generation %}` tag, the globals `raise_exception`, `strftime_now`, and a `tojson`
that does not escape HTML; the variables are `messages`, `add_generation_prompt`,
`tools`, `documents`, and the named special tokens (`bos_token`, `eos_token`, ...).
Anything else renders differently from what the model was trained on, so this module
reproduces that environment (sandboxed: templates come from model repositories).
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Iterable, Mapping, Optional

from ..errors import ChatTemplateError

# message fields a reasoning text may come under; templates read the first (transformers
# copies it under each, as these do)
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def render_chat(template: str, messages: Iterable[Mapping[str, Any]], *,
                add_generation_prompt: bool = True, special_tokens: Mapping[str, str] = {},
                tools: Optional[list] = None, documents: Optional[list] = None,
                **variables) -> str:
    """The prompt text of `messages` ({"role": ..., "content": ...} dicts) by `template`.
    `special_tokens` ({"bos_token": "<s>", ...}) and `variables` are template variables
    (variables win on a clash)."""
    chat = []
    for m in messages:
        if not isinstance(m, Mapping):
            raise ChatTemplateError(f"chat message {m!r}: expected a dict with 'role' and 'content'")
        m = {k: _plain(v) for k, v in m.items() if v is not None}   # None fields: as absent
        reasoning = next((m[k] for k in _REASONING_FIELDS if k in m), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        chat.append(m)
    if not chat:
        raise ChatTemplateError("an empty chat: give at least one message")
    compiled = _compile(template)
    context = {**special_tokens, **_plain(variables)}
    try:
        return compiled.render(messages=chat, tools=_plain(tools), documents=_plain(documents),
                               add_generation_prompt=add_generation_prompt, **context)
    except ChatTemplateError:
        raise
    except Exception as e:   # the template's raise_exception, undefined names, type errors
        raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from e


def _plain(value: Any) -> Any:
    """A copy made of dicts, lists and scalars, so the template cannot change the caller's."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        """`{% generation %}...{% endgeneration %}` marks the assistant's text (for training
        masks); rendering just renders the body."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise ChatTemplateError(f"the chat template refused the chat: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the chat template does not parse: line {e.lineno}: {e.message}") from e

"""disco.llm.chat_template against hand-written prompts: the environment transformers
gives templates (trim/lstrip blocks, loop controls, the generation tag, raise_exception,
tojson without HTML escaping, strftime_now), the special-token variables, and errors.
test_tokenizer_hf.py compares the same templates with transformers."""
from __future__ import annotations

import datetime
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tok_fixtures as F  # noqa: E402

from disco.errors import ChatTemplateError  # noqa: E402
from disco.llm.chat_template import render_chat  # noqa: E402

USER = {"role": "user", "content": "Hi"}
CHAT = [{"role": "system", "content": "Be brief."}, USER,
        {"role": "assistant", "content": " Hello! "}, {"role": "user", "content": "日本語?"}]
LLAMA_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}

# whitespace handled by trim_blocks/lstrip_blocks, loop controls, namespace, tojson
BLOCKY = """{% set ns = namespace(n=0) %}
{% for m in messages %}
    {% if m.role == 'system' %}{% continue %}{% endif %}
    {% set ns.n = ns.n + 1 %}
<{{ m.role }} n={{ ns.n }}>{{ m.content | tojson }}
{% endfor %}
{% if add_generation_prompt %}<assistant>{% endif %}"""


def test_llama2():
    assert render_chat(F.LLAMA2, CHAT, special_tokens=LLAMA_TOKENS) == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] 日本語? [/INST]")


def test_chatml_generation_prompt():
    assert render_chat(F.CHATML, [USER]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert render_chat(F.CHATML, [USER], add_generation_prompt=False).endswith("Hi<|im_end|>\n")


def test_blocks_namespace_tojson():
    messages = CHAT + [{"role": "user", "content": "<b>&\"é\""}]
    assert render_chat(BLOCKY, messages) == (
        '<user n=1>"Hi"\n<assistant n=2>" Hello! "\n<user n=3>"日本語?"\n'
        '<user n=4>"<b>&\\"é\\""\n<assistant>')


def test_generation_tag_and_strftime_and_variables():
    template = ("{{ strftime_now('%Y') }}|{% for m in messages %}{% generation %}{{ m.content }}"
                "{% endgeneration %}{% endfor %}|{{ tools | length }}|{{ extra }}|{{ bos_token }}")
    out = render_chat(template, [USER], tools=[{"name": "f"}], extra="x", special_tokens=LLAMA_TOKENS)
    assert out in {f"{y}|Hi|1|x|<s>" for y in (datetime.date.today().year,
                                                 datetime.date.today().year + 1)}


def test_messages_are_copied_and_none_fields_dropped():
    template = ("{% for m in messages %}{{ m.content }}{{ m.tool_calls is defined }}"
                "{{ m.reasoning_content }}{% endfor %}")
    message = {"role": "assistant", "content": "c", "tool_calls": None, "thinking": "t"}
    assert render_chat(template, [message]) == "cFalset"
    assert message == {"role": "assistant", "content": "c", "tool_calls": None, "thinking": "t"}


def test_raise_exception():
    with pytest.raises(ChatTemplateError, match="refused.*roles must alternate"):
        render_chat(F.LLAMA2, [USER, USER], special_tokens=LLAMA_TOKENS)


def test_errors():
    with pytest.raises(ChatTemplateError, match="does not parse: line 1"):
        render_chat("{% for m in messages %}", [USER])
    with pytest.raises(ChatTemplateError, match="empty chat"):
        render_chat(F.CHATML, [])
    with pytest.raises(ChatTemplateError, match="expected a dict"):
        render_chat(F.CHATML, ["hi"])
    with pytest.raises(ChatTemplateError, match="template failed"):
        render_chat("{{ messages[0].content + 1 }}", [USER])


def test_sandboxed():
    with pytest.raises(ChatTemplateError):
        render_chat("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}", [USER])

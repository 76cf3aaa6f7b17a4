"""Text in and out: a checkpoint's tokenizer, as transformers would load it, without torch.

A Hugging Face checkpoint describes its tokenizer in files: tokenizer.json (the whole
pipeline, run by the `tokenizers` library), tokenizer_config.json (chat template, named
special tokens), generation_config.json (the ids that end a sequence, default sampling).
`Tokenizer.load(dir)` reads them and follows transformers (5.x) where it adds to the
pipeline: the named and extra special tokens of tokenizer_config.json become special
tokens when tokenizer.json lacks them, and tokenizer.json's post-processor alone decides
whether encode adds BOS/EOS (transformers 5 ignores add_bos_token there too). Other
sources (GGUF metadata) build a `tokenizers.Tokenizer` and pass it with the settings to
`Tokenizer(...)`, where add_bos_token/add_eos_token replace the post-processor.

As built: one difference from transformers 5, which rebuilds some families' pipelines
from the vocabulary (LlamaTokenizer with a Metaspace pre-tokenizer): tokenizer.json is
run as written, as the `tokenizers` library, transformers 4 and llama.cpp's converters
do; older Llama files (a Prepend normalizer) then put "▁" after special tokens inside
the text, as SentencePiece did.

    tok = Tokenizer.load("path/to/checkpoint")
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    decoder = tok.stream_decoder(ids)                 # printable text, token by token
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import tokenizers
from tokenizers import AddedToken, processors

from ..errors import ChatTemplateError, TokenizerError
from .chat_template import render_chat
from .generation import GENERATION_CONFIG, GenerationConfig

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# the named special tokens of transformers (template variables when set)
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")

Token = Union[str, int]


class Tokenizer:
    """Encode, decode, chat prompts and streaming text over a `tokenizers.Tokenizer`.

    backend: the pipeline (not changed: a copy is made when tokens must be added).
    special_tokens: named special tokens {"bos_token": "<s>", "eos_token": ..., ...}, as
        strings or ids; ones the vocabulary lacks are added as special tokens.
    extra_special_tokens: more special tokens (added when missing).
    eos_token_ids: ids that end a sequence besides eos_token's.
    add_bos_token / add_eos_token: None keeps the backend's post-processor; a bool
        replaces it with one adding BOS / EOS around encoded text (GGUF's flags).
    chat_template: a Jinja template (str), or {name: template} with a "default".
    generation_config: default generation settings (its EOS ids join eos_token_ids).
    """

    def __init__(self, backend: tokenizers.Tokenizer, *,
                 special_tokens: Mapping[str, Optional[Token]] = {},
                 extra_special_tokens: Iterable[Token] = (),
                 eos_token_ids: Iterable[int] = (),
                 add_bos_token: Optional[bool] = None, add_eos_token: Optional[bool] = None,
                 chat_template: Union[str, Mapping[str, str], None] = None,
                 generation_config: Optional[GenerationConfig] = None,
                 source: str = "a tokenizers.Tokenizer",
                 _added_tokens: Sequence[AddedToken] = ()):
        if not isinstance(backend, tokenizers.Tokenizer):
            raise TokenizerError(f"Tokenizer({type(backend).__name__}): expected a tokenizers.Tokenizer")
        self.source = source
        self.backend = backend
        self._copied = False
        # tokens named by the configuration that the pipeline lacks become special tokens,
        # in transformers' order: added_tokens_decoder, named tokens, extra tokens
        named = {k: self._token_text(v, k) for k, v in special_tokens.items() if v is not None}
        wanted = list(_added_tokens)
        wanted += [AddedToken(t, special=True, normalized=False) for t in named.values()]
        wanted += [AddedToken(self._token_text(t, "extra_special_tokens"), special=True,
                              normalized=False) for t in extra_special_tokens]
        self._add_missing(wanted)
        self.special_tokens = named
        if add_bos_token is not None or add_eos_token is not None:
            self._set_post_processor(bool(add_bos_token), bool(add_eos_token))
        self.chat_template = chat_template
        eos = set(int(i) for i in eos_token_ids)
        if self.eos_token is not None:
            eos.add(self.backend.token_to_id(self.eos_token))
        if generation_config is not None:
            eos |= generation_config.eos_token_ids
        self.eos_token_ids: set[int] = eos
        self.generation_config = (generation_config or GenerationConfig()).replace(
            eos_token_ids=frozenset(eos))
        self.vocab_size = self.backend.get_vocab_size(with_added_tokens=True)
        self._byte_fallback_ids: Optional[frozenset[int]] = None
        self._generation_bos_id: Optional[int] = None
        self.special_ids = frozenset(i for i, t in self.backend.get_added_tokens_decoder().items()
                                     if t.special)

    # ---- loading -----------------------------------------------------------------------

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        """From a checkpoint directory (or its tokenizer.json)."""
        if os.path.isfile(path) and os.path.basename(path) == TOKENIZER_JSON:
            path = os.path.dirname(path) or "."
        elif os.path.isfile(path):
            hint = (" GGUF files carry their tokenizer in metadata (disco.llm.gguf)."
                    if path.endswith(".gguf") else "")
            raise TokenizerError(f"Tokenizer.load({path!r}): expected a checkpoint directory "
                                 f"holding {TOKENIZER_JSON}.{hint}")
        if not os.path.isdir(path):
            raise TokenizerError(f"Tokenizer.load({path!r}): no such directory")
        file = os.path.join(path, TOKENIZER_JSON)
        if not os.path.isfile(file):
            present = sorted(os.listdir(path))
            hint = ""
            if "tokenizer.model" in present:
                hint = (" It has a SentencePiece tokenizer.model only: convert it once with "
                        "transformers (AutoTokenizer.from_pretrained(dir).save_pretrained(dir) "
                        f"writes {TOKENIZER_JSON}).")
            raise TokenizerError(f"Tokenizer.load({path!r}): no {TOKENIZER_JSON} in the directory "
                                 f"(it holds {present[:12]}{' ...' if len(present) > 12 else ''}).{hint}")
        try:
            backend = tokenizers.Tokenizer.from_file(file)
        except Exception as e:
            raise TokenizerError(f"{file}: the tokenizers library cannot read it: {e}") from None
        config = _read_json(os.path.join(path, TOKENIZER_CONFIG))
        decoder = sorted(config.get("added_tokens_decoder", {}).items(), key=lambda kv: int(kv[0]))
        added = [_added_token(v, f"{TOKENIZER_CONFIG} added_tokens_decoder[{k}]") for k, v in decoder]
        special = {name: _token_content(config[name], f"{TOKENIZER_CONFIG} {name}")
                   for name in SPECIAL_TOKEN_NAMES if config.get(name) is not None}
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        if isinstance(extra, Mapping):      # named extras ({"image_token": "<image>"})
            extra = list(extra.values())
        extra = [_token_content(t, f"{TOKENIZER_CONFIG} extra_special_tokens") for t in extra]
        template_file = os.path.join(path, CHAT_TEMPLATE_FILE)
        if os.path.isfile(template_file):   # as transformers: the file wins over the config
            with open(template_file, encoding="utf-8") as f:
                template = f.read()
        else:
            template = config.get("chat_template")
            if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
                template = {t["name"]: t["template"] for t in template}
        tok = cls(backend, special_tokens=special, extra_special_tokens=extra,
                  chat_template=template, source=path, _added_tokens=added)
        tok.generation_config = GenerationConfig.load(path, tok.eos_token_ids)
        tok.eos_token_ids |= tok.generation_config.eos_token_ids
        bos = _read_json(os.path.join(path, GENERATION_CONFIG)).get("bos_token_id")
        tok._generation_bos_id = bos if isinstance(bos, int) else None
        return tok

    @classmethod
    def from_gguf(cls, path: str) -> "Tokenizer":
        """From a GGUF file's metadata (disco.llm.gguf: the vocabulary, merges, special
        tokens, end-of-turn ids and chat template llama.cpp's converter wrote)."""
        from .gguf import gguf_tokenizer_parts
        parts = gguf_tokenizer_parts(path)
        return cls(parts.tokenizer, special_tokens={"bos_token": parts.bos_token,
                                                    "eos_token": parts.eos_token},
                   eos_token_ids=parts.stop_token_ids, chat_template=parts.chat_template,
                   source=path)

    # ---- text <-> ids ------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; add_special_tokens: the post-processor's BOS/EOS."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode({type(text).__name__}): expected a str")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """The text of `ids` (special tokens left out unless skip_special_tokens=False)."""
        return self.backend.decode(self.check_ids(ids), skip_special_tokens=skip_special_tokens)

    def check_ids(self, ids: Iterable[int]) -> list[int]:
        """`ids` as a list of ints, each checked to be in the vocabulary."""
        arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
        if arr.size == 0:
            return []
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise TokenizerError(f"token ids of shape {arr.shape} and dtype {arr.dtype}: "
                                 "expected a sequence of ints")
        if arr.min() < 0 or arr.max() >= self.vocab_size:
            bad = int(arr[(arr < 0) | (arr >= self.vocab_size)][0])
            raise TokenizerError(f"token id {bad} is outside the vocabulary of {self.vocab_size} "
                                 f"tokens ({self.source})")
        return arr.tolist()

    def stream_decoder(self, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = True):
        """A `StreamDecoder` for the tokens that follow `prompt_ids` (detokenizer.py)."""
        from .detokenizer import StreamDecoder
        return StreamDecoder(self, prompt_ids, skip_special_tokens=skip_special_tokens)

    # ---- chat ---------------------------------------------------------------------------

    def chat_text(self, messages: Iterable[Mapping[str, Any]], add_generation_prompt: bool = True,
                  *, tools: Optional[list] = None, **variables) -> str:
        """The prompt text of a chat, by the checkpoint's chat template."""
        template = self.chat_template
        if isinstance(template, Mapping):   # named templates, chosen as transformers does
            name = "tool_use" if tools is not None and "tool_use" in template else "default"
            if name not in template:
                raise ChatTemplateError(f"{self.source}: named chat templates {sorted(template)} "
                                        "and none is called 'default'")
            template = template[name]
        if not template:
            raise ChatTemplateError(
                f"{self.source} has no chat template ({TOKENIZER_CONFIG} has no chat_template and "
                f"there is no {CHAT_TEMPLATE_FILE}): encode the prompt as plain text with encode(), "
                "or give the template (Tokenizer(..., chat_template=...))")
        return render_chat(template, messages, add_generation_prompt=add_generation_prompt,
                           special_tokens=self.special_tokens, tools=tools, **variables)

    def apply_chat_template(self, messages: Iterable[Mapping[str, Any]],
                            add_generation_prompt: bool = True, **kwargs) -> list[int]:
        """Token ids of the chat's prompt: the template's text encoded without adding
        special tokens (the template writes BOS where the model wants it)."""
        return self.encode(self.chat_text(messages, add_generation_prompt, **kwargs),
                           add_special_tokens=False)

    # ---- special tokens ----------------------------------------------------------------

    @property
    def bos_token(self) -> Optional[str]:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> Optional[str]:
        return self.special_tokens.get("eos_token")

    @property
    def bos_token_id(self) -> Optional[int]:
        """The named bos_token's id, else generation_config.json's bos_token_id. For
        information: whether encode adds it is the post-processor's business."""
        if self.bos_token is not None:
            return self.backend.token_to_id(self.bos_token)
        return self._generation_bos_id

    @property
    def byte_fallback_ids(self) -> frozenset[int]:
        """The <0xNN> tokens, when the decoder has a ByteFallback step (a run of them
        decodes as one UTF-8 byte string, or to one "\\ufffd" per byte when invalid)."""
        if self._byte_fallback_ids is None:
            decoder = self.backend.decoder
            state = decoder.__getstate__() if decoder is not None else b""
            self._byte_fallback_ids = frozenset(
                i for t, i in self.backend.get_vocab(with_added_tokens=False).items()
                if _BYTE_TOKEN.fullmatch(t)) if b'"ByteFallback"' in state else frozenset()
        return self._byte_fallback_ids

    def token_to_id(self, token: str) -> Optional[int]:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> Optional[str]:
        return self.backend.id_to_token(int(token_id))

    def __repr__(self):
        return (f"Tokenizer({self.source!r}, vocab={self.vocab_size}, bos={self.bos_token!r}, "
                f"eos_ids={sorted(self.eos_token_ids)}, chat_template={self.chat_template is not None})")

    # ---- helpers -----------------------------------------------------------------------

    def _token_text(self, token: Token, what: str) -> str:
        if isinstance(token, (int, np.integer)):
            text = self.backend.id_to_token(int(token))
            if text is None:
                raise TokenizerError(f"{what}={token}: no such token id in {self.source} "
                                     f"({self.backend.get_vocab_size()} tokens)")
            return text
        if not isinstance(token, str) or not token:
            raise TokenizerError(f"{what}={token!r}: expected a token (str) or its id")
        return token

    def _mutable_backend(self) -> tokenizers.Tokenizer:
        if not self._copied:
            self.backend = tokenizers.Tokenizer.from_str(self.backend.to_str())
            self._copied = True
        return self.backend

    def _add_missing(self, tokens: Sequence[AddedToken]) -> None:
        present = {t.content for t in self.backend.get_added_tokens_decoder().values()}
        for t in tokens:
            if t.content in present:
                continue
            present.add(t.content)
            if t.special:
                self._mutable_backend().add_special_tokens([t])
            else:
                self._mutable_backend().add_tokens([t])

    def _set_post_processor(self, bos: bool, eos: bool) -> None:
        """As transformers' update_post_processor: "[BOS] $A [EOS]" (pairs alike)."""
        ends = []
        for flag, name in ((bos, "bos_token"), (eos, "eos_token")):
            tok = self.special_tokens.get(name)
            if flag and tok is None:
                raise TokenizerError(f"add_{name}=True but {self.source} names no {name}")
            ends.append((tok, self.backend.token_to_id(tok)) if flag else None)
        b, e = (f"{ends[0][0]}:0 " if ends[0] else ""), (f" {ends[1][0]}:0" if ends[1] else "")
        b1, e1 = (f" {ends[0][0]}:1" if ends[0] else ""), (f" {ends[1][0]}:1" if ends[1] else "")
        self._mutable_backend().post_processor = processors.TemplateProcessing(
            single=f"{b}$A:0{e}", pair=f"{b}$A:0{e}{b1} $B:1{e1}",
            special_tokens=[x for x in ends if x is not None])


def _read_json(file: str) -> dict:
    if not os.path.isfile(file):
        return {}
    with open(file, encoding="utf-8") as f:
        try:
            d = json.load(f)
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise TokenizerError(f"{file}: expected a JSON object, found {type(d).__name__}")
    return d


def _token_content(value: Any, where: str) -> str:
    """A token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(f"{where}={value!r}: expected a token string or {{'content': ...}}")


def _added_token(value: Any, where: str) -> AddedToken:
    if not isinstance(value, Mapping) or not isinstance(value.get("content"), str):
        raise TokenizerError(f"{where}={value!r}: expected {{'content': ..., 'special': ...}}")
    flags = {k: bool(value[k]) for k in ("single_word", "lstrip", "rstrip", "normalized", "special")
             if k in value}
    return AddedToken(value["content"], **flags)


def load_tokenizer(path: str) -> Optional[Tokenizer]:
    """The tokenizer of a checkpoint: a directory's tokenizer.json, a GGUF file's metadata;
    None where the checkpoint has none (the engine then takes and gives token ids)."""
    if os.path.isfile(path) and path.endswith(".gguf"):
        return Tokenizer.from_gguf(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, TOKENIZER_JSON)):
        return Tokenizer.load(path)
    return None

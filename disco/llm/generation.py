"""A request's generation settings, and when its sequence ends.

`GenerationConfig` holds what a request may set (length, sampling, stop strings, EOS);
its defaults come from the checkpoint's generation_config.json, read the way transformers
reads it: sampling only when the file says do_sample, and then top_k 50 unless it names
one. `StopChecker` watches one sequence as it streams: it ends at an EOS id, at
max_new_tokens, or at a stop string, and it never lets text out that could turn out to be
the start of a stop string, so a streaming client and the final result agree and neither
shows any part of the stop string.

    checker = StopChecker(config)
    for token in ...:                                   # each new token of the sequence
        print(checker.push(token, decoder.push(token)), end="")
        if checker.finished: break
    print(checker.flush(decoder.flush()))              # what was held back at the end
    checker.text, checker.finish_reason                # "stop" (EOS, stop string) or "length"
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from ..errors import GenerationError
from .sampling import SamplingParams

GENERATION_CONFIG = "generation_config.json"


def token_id_set(value: Any, where: str = "eos_token_id") -> frozenset[int]:
    """An id or a list of ids (generation_config.json's eos_token_id) as a set; None: empty."""
    if value is None:
        return frozenset()
    values = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in values):
        raise GenerationError(f"{where}={value!r}: expected a token id or a list of token ids")
    return frozenset(int(v) for v in values)


@dataclass(frozen=True)
class GenerationConfig:
    """One request's settings. temperature 0 is greedy, as transformers' do_sample=False;
    `stop` strings end the sequence (the text returned stops before them); `eos_token_ids`
    end it unless `ignore_eos`. Change a copy with `config.replace(temperature=0.7)`."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()
    eos_token_ids: frozenset[int] = field(default_factory=frozenset)
    ignore_eos: bool = False

    def __post_init__(self):
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not all(isinstance(s, str) and s for s in stop):
            raise GenerationError(f"GenerationConfig.stop={self.stop!r}: expected non-empty strings")
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "eos_token_ids", token_id_set(list(self.eos_token_ids)))
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise GenerationError(f"GenerationConfig.max_new_tokens={self.max_new_tokens!r}: "
                                  "expected an int >= 1")
        try:
            self.sampling
        except ValueError as e:
            raise GenerationError(f"GenerationConfig: {e}") from None

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              min_p=self.min_p, repetition_penalty=self.repetition_penalty,
                              seed=self.seed)

    def replace(self, **changes) -> "GenerationConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], eos_token_ids: Iterable[int] = ()) -> "GenerationConfig":
        """From generation_config.json's fields; `eos_token_ids` are added to its
        eos_token_id (the tokenizer's EOS). Fields it does not set keep this class's
        defaults; null counts as unset."""
        d = {k: v for k, v in d.items() if v is not None}
        kw: dict[str, Any] = {}
        if "max_new_tokens" in d:
            kw["max_new_tokens"] = d["max_new_tokens"]
        if "repetition_penalty" in d:                  # transformers applies it when greedy too
            kw["repetition_penalty"] = float(d["repetition_penalty"])
        if d.get("do_sample", False):
            kw["temperature"] = float(d.get("temperature", 1.0))
            kw["top_k"] = int(d.get("top_k", 50))
            kw["top_p"] = float(d.get("top_p", 1.0))
            kw["min_p"] = float(d.get("min_p", 0.0))
        kw["eos_token_ids"] = token_id_set(d.get("eos_token_id")) | set(eos_token_ids)
        return cls(**kw)

    @classmethod
    def load(cls, path: str, eos_token_ids: Iterable[int] = ()) -> "GenerationConfig":
        """From `path`/generation_config.json (`path` a directory), or the defaults with
        `eos_token_ids` when there is no such file."""
        file = os.path.join(path, GENERATION_CONFIG)
        if not os.path.isfile(file):
            return cls(eos_token_ids=frozenset(eos_token_ids))
        with open(file, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise GenerationError(f"{file}: not valid JSON ({e})") from None
        return cls.from_dict(d, eos_token_ids)


class StopChecker:
    """When one sequence ends, and which of its text is safe to show.

    Feed it every new token with the text the stream decoder gave for it; it returns the
    text to show now. It ends the sequence at an EOS id (the EOS token's own text is not
    shown), after max_new_tokens tokens, or at the token that completes a stop string
    (the text ends where the earliest stop string then present begins). Text that ends
    with the beginning of a stop string is held back until the next tokens settle it. `finish_reason` is "stop" (EOS or stop string), "length", or
    None while running; `stop_string` the one that matched."""

    def __init__(self, config: GenerationConfig, eos_token_ids: Iterable[int] = ()):
        self.config = config
        self.eos = frozenset() if config.ignore_eos else config.eos_token_ids | set(eos_token_ids)
        self.num_tokens = 0
        self.finish_reason: Optional[str] = None
        self.stop_string: Optional[str] = None
        self.text = ""          # everything returned so far
        self._pending = ""      # received, not yet returned (a possible stop-string start)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def push(self, token_id: int, text: str) -> str:
        """Count `token_id`, take `text` (its piece of the decoded output); the text to show."""
        if self.finished:
            raise GenerationError(f"StopChecker.push({token_id}) after the sequence finished "
                                  f"({self.finish_reason!r}, {self.num_tokens} tokens)")
        self.num_tokens += 1
        if int(token_id) in self.eos:
            self.finish_reason = "stop"
            return self._release(final=True)
        self._pending += text
        out = self._release(final=False)
        if not self.finished and self.num_tokens >= self.config.max_new_tokens:
            self.finish_reason = "length"
            out += self._release(final=True)
        return out

    def flush(self, text: str = "") -> str:
        """At the end of the sequence (or of the decoder: pass `decoder.flush()`), the text
        still to show; stop strings still cut it."""
        if self.stop_string is not None:
            return ""
        self._pending += text
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        pending, cut = self._pending, None
        for s in self.config.stop:
            i = pending.find(s)
            if i >= 0 and (cut is None or i < cut):
                cut, self.stop_string = i, s
        if cut is not None:
            out, self._pending = pending[:cut], ""
            self.finish_reason = "stop"
        else:
            hold = 0 if final else self._stop_prefix_len(pending)
            out, self._pending = pending[:len(pending) - hold], pending[len(pending) - hold:]
        self.text += out
        return out

    def _stop_prefix_len(self, text: str) -> int:
        """The length of the longest end of `text` that begins some stop string."""
        best = 0
        for s in self.config.stop:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

"""Printable text token by token, equal in the end to decoding all the tokens at once.

Decoding a token alone is wrong in general: byte-level BPE and byte fallback split one
character over several tokens (the first ones decode to "\\ufffd"), SentencePiece
decoders strip the space that starts a text, and a byte-fallback run that is valid so far
can be made invalid, as a whole, by the next byte. Decoding everything again at every
step is right but quadratic. `StreamDecoder` decodes a short window (vLLM's incremental
detokenizer): the text of window[prefix:] minus that of window[prefix:read] is new, and
is shown once it does not end inside a character and no byte-fallback run is still open;
the window then slides to start at the tokens just shown, so effects at its start (a
stripped space) cancel.

What the pieces add up to (`decoder.text`; `flush()` gives what is held at the end):
- no prompt: `tokenizer.decode(new_ids)`, as transformers decodes a reply;
- after `prompt_ids`: what the new tokens add to the prompt's text,
  `decode(prompt + new)[len(decode(prompt)):]`, as vLLM and transformers' text-generation
  pipeline return completions. The two differ only where the decoder treats the start of
  a text specially: SentencePiece's leading space ("▁Hello" is "Hello" alone, " Hello"
  after a prompt), and a character whose bytes begin in the prompt.
"""
from __future__ import annotations

from typing import Sequence

REPLACEMENT = "\ufffd"
# how many prompt tokens frame the first new ones (vLLM uses 5)
_PROMPT_CONTEXT = 5


class StreamDecoder:
    """push(token_id) -> the new text to show (maybe ""); flush() -> the rest, at the end."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = True):
        self._tok = tokenizer
        self._backend = tokenizer.backend
        self._skip = frozenset(tokenizer.special_ids) if skip_special_tokens else frozenset()
        self._byte_ids = tokenizer.byte_fallback_ids
        self.token_ids: list[int] = []    # every pushed token
        self.text = ""                    # every piece returned
        context = [t for t in tokenizer.check_ids(prompt_ids) if t not in self._skip]
        start = max(0, len(context) - _PROMPT_CONTEXT)
        # start the frame at a character boundary: its text must not begin with the
        # tail of a character cut off before it
        while start > 0 and self._decode(context[start:]).startswith(REPLACEMENT) \
                and len(context) - start < 4 * _PROMPT_CONTEXT:
            start -= 1
        self._ids = context[start:]       # the window: frame, then the new tokens
        self._prefix = 0
        self._read = len(self._ids)
        # a character the prompt leaves unfinished is the reply's to show
        self._prefix_text = self._decode(self._ids).rstrip(REPLACEMENT)

    def push(self, token_id: int) -> str:
        token_id = self._tok.check_ids([token_id])[0]
        self.token_ids.append(token_id)
        if token_id in self._skip:
            return ""
        self._ids.append(token_id)
        if token_id in self._byte_ids:    # the byte run may still change as a whole
            return ""
        return self._advance(final=False)

    def flush(self) -> str:
        """What is still held (an unfinished character shows as "\\ufffd"); call once the
        sequence has ended."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        full = self._decode(self._ids[self._prefix:])
        if not final and (full.endswith(REPLACEMENT) or len(full) <= len(self._prefix_text)
                          or not full.startswith(self._prefix_text)):
            return ""
        if full.startswith(self._prefix_text):
            piece = full[len(self._prefix_text):]
        else:   # a decoder that rewrote shown text: show what follows the common part
            n = 0
            while n < min(len(full), len(self._prefix_text)) and full[n] == self._prefix_text[n]:
                n += 1
            piece = full[n:]
        self._prefix, self._read = self._read, len(self._ids)
        self._prefix_text = self._decode(self._ids[self._prefix:self._read])
        self.text += piece
        return piece

    def _decode(self, ids: list[int]) -> str:
        return self._backend.decode(ids, skip_special_tokens=False) if ids else ""


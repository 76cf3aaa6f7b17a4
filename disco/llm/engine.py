"""The engine: a compiled language model on a session's workers, generating text.

    with disco.llm.Engine.load("exported_dir", checkpoint="ckpt_dir", session=sess) as engine:
        engine.generate(["Once upon a time"], max_new_tokens=32)       # -> list of str
        engine.generate([[1, 450, 4996]], max_new_tokens=32)           # ids in -> lists of new ids
        for piece in engine.stream("Once upon a time"): print(piece, end="")
        engine.chat([{"role": "user", "content": "Hi"}])               # by the chat template

An exported model (compiler.models writes it) is a folder with the executable
(`model.disco`) and `model.json`: the family and config, the tensor-parallel degree and
dtype, the KV cache layout per worker, and one spec per parameter saying which
checkpoint tensor it comes from and how it is placed (disco/llm/weights.py). Loading
needs only `disco`: each worker reads its own block of every weight from the checkpoint
and makes a paged KV cache for its own KV heads.

Requests run in steps (`submit`, then `step` until they finish; generate and stream do
this for you, a server interleaves them: disco/llm/serve). A step runs every running
sequence once: sequences new since the last step append their prompt, the others their
last token, all in one forward call (`prefill`, which returns only each sequence's last
logits; `decode` when every sequence appends one token). With `prefill_chunk=N` a step
appends at most N prompt tokens in all (chunked prefill): a long prompt goes in over
several steps, in the cache like any other appended tokens, and its first token is
chosen in the step that appends the prompt's end, so the sequences already decoding
wait at most one chunk's time per token rather than a whole prompt's. Tokens are chosen on the
controller from the fetched logits (disco/llm/sampling.py: one generator per request,
so a seed gives the same tokens on any number of workers and in any batch), and every
worker gets them as the next step's input. A request is admitted when the KV pages
its prompt and token budget can need are free, so a running sequence never runs out of
pages; a finished or cancelled one gives its pages back at once.
"""
from __future__ import annotations

import itertools
import json
import os
import time
from collections import deque
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from ..errors import DiscoError
from .generation import GenerationConfig, StopChecker
from .sampling import Sampler

EXECUTABLE = "model.disco"
MODEL_JSON = "model.json"

Prompt = Union[str, Sequence[int]]


class EngineError(DiscoError, ValueError):
    """A request the engine cannot serve (prompt too long, no tokenizer, ...)."""


class Request:
    """One prompt being generated: its settings, its sampler and stop checker, what it has
    produced (`tokens`, and `text` when it was given as text) and why it ended
    (`finish_reason`: "stop", "length", "cancelled"; None while running)."""

    def __init__(self, request_id: int, prompt: list[int], config: GenerationConfig,
                 tokenizer=None, text_output: bool = False):
        self.id = request_id
        self.prompt = prompt
        self.config = config
        self.tokens: list[int] = []
        self.sampler = Sampler(config.sampling, prompt)
        self.stopper = StopChecker(config)
        self.decoder = tokenizer.stream_decoder(prompt) if (text_output and tokenizer) else None
        self.pieces: list[str] = []          # text not yet taken by the caller (stream)
        self.finish_reason: Optional[str] = None
        self.pages = 0                       # KV pages reserved for it while admitted
        self.in_cache = False                # it has a sequence in the KV cache
        self.prefilled = 0                   # prompt tokens appended to the cache so far
        self.submitted_at = time.perf_counter()
        self.first_token_at: Optional[float] = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        return self.stopper.text

    def _take(self, token: int) -> None:
        """Count a new token: text for the caller, and whether the request is done."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.tokens.append(token)
        piece = self.decoder.push(token) if self.decoder else ""
        out = self.stopper.push(token, piece)
        if self.stopper.finished and self.decoder and self.stopper.finish_reason == "length":
            out += self.stopper.flush(self.decoder.flush())
        if out:
            self.pieces.append(out)
        if self.stopper.finished:
            self.finish_reason = self.stopper.finish_reason

    def _end(self, reason: str) -> None:
        """Finished from outside the stop checker (context full, cancelled)."""
        if self.decoder and reason != "cancelled":
            out = self.stopper.flush(self.decoder.flush())
            if out:
                self.pieces.append(out)
        self.finish_reason = reason

    def __repr__(self):
        return (f"Request({self.id}, prompt={len(self.prompt)} tokens, generated={len(self.tokens)}, "
                f"finish_reason={self.finish_reason!r})")


class Engine:
    """See the module docstring. Build one with `Engine.load` (or compiler.models.load).

    max_tokens: KV cache capacity per worker, in tokens over all sequences at once
    (prompt plus generated); page_size: tokens per KV page. kv_dtype: what the KV cache
    stores ("bfloat16" or "float16": half the bytes of a float32 model's cache, keys and
    values rounded as they are appended; None: the model's dtype); attention reads it
    with the model's queries and accumulates in float32. generation_config: the
    defaults of every request (the tokenizer's, from generation_config.json, when None).
    prefill_chunk: the most prompt tokens one step appends, over all sequences (None:
    every new prompt whole, in one step).
    """

    def __init__(self, session, dmod, meta: dict, weights: list, tokenizer=None, *,
                 max_tokens: int = 8192, page_size: int = 16, owns_session: bool = False,
                 generation_config: Optional[GenerationConfig] = None, topology: str = "",
                 prefill_chunk: Optional[int] = None, kv_dtype: Optional[str] = None):
        self.session, self.dmod, self.meta, self.weights = session, dmod, meta, weights
        self.tokenizer = tokenizer
        self.owns_session = owns_session
        self.topology = topology
        self.vocab_size = int(meta["vocab_size"])
        self.context = int(meta.get("max_positions") or 1 << 30)
        eos = set(meta.get("eos_token_ids") or ())
        if generation_config is None:
            generation_config = getattr(tokenizer, "generation_config", None) or GenerationConfig()
        self.generation_config = generation_config.replace(
            eos_token_ids=frozenset(eos | set(generation_config.eos_token_ids)
                                    | set(getattr(tokenizer, "eos_token_ids", ()) or ())))
        layers, kv_heads, head_dim = meta["kv_layout"]
        if max_tokens < 1 or page_size < 1:
            raise EngineError(f"Engine: max_tokens={max_tokens} and page_size={page_size}: "
                              "expected positive ints")
        if prefill_chunk is not None and not (isinstance(prefill_chunk, int) and prefill_chunk >= 1):
            raise EngineError(f"Engine: prefill_chunk={prefill_chunk!r}: expected an int >= 1 or None")
        self.prefill_chunk = prefill_chunk
        self.page_size = page_size
        self.num_pages = -(-max_tokens // page_size)
        self.kv_dtype = check_kv_dtype(kv_dtype, "Engine") or meta["dtype"]
        # keys and values of one token, all of this worker's layers and kv heads
        self.kv_bytes_per_token = 2 * layers * kv_heads * head_dim * (4 if self.kv_dtype == "float32" else 2)
        self.cache = session.get_global_func("disco.kv.create")(
            layers, kv_heads, head_dim, self.num_pages, page_size, self.kv_dtype)
        self._kv = {name: session.get_global_func(f"disco.kv.{name}")
                    for name in ("add_sequence", "remove_sequence", "begin_forward")}
        self._text_vocab = int(getattr(tokenizer, "vocab_size", self.vocab_size))
        self._ids = itertools.count()
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.free_pages = self.num_pages
        self.stats = {"prefill_tokens": 0, "prefill_s": 0.0, "decode_tokens": 0, "decode_s": 0.0,
                      "steps": 0}
        self._closed = False

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def load(cls, exported: str, checkpoint: Optional[str] = None, session=None, tokenizer=None,
             **options: Any) -> "Engine":
        """The exported model in folder `exported`, its weights read from `checkpoint` (the
        checkpoint recorded in model.json by default), on `session` (a new ProcessSession
        of the model's degree when None). `tokenizer`: the checkpoint's when None."""
        from ..executable import load_executable
        meta_path = os.path.join(exported, MODEL_JSON)
        if not os.path.isfile(meta_path):
            raise EngineError(f"{exported!r} is not an exported model: it has no {MODEL_JSON}")
        with open(meta_path) as f:
            meta = json.load(f)
        checkpoint = checkpoint or meta.get("checkpoint")
        if not checkpoint:
            raise EngineError(f"{exported!r}: no checkpoint to read the weights from; pass checkpoint=")
        if tokenizer is None:
            from .tokenizer import load_tokenizer
            tokenizer = load_tokenizer(checkpoint)
        owns = session is None
        workers = int(meta["tp"]) * int(meta.get("pp", 1))     # pp pipeline stages of tp workers
        if session is None:
            from ..session import ProcessSession
            session = ProcessSession(workers)
        try:
            if session.num_workers != workers:
                raise EngineError(f"the model was compiled for {workers} workers but the session has "
                                  f"{session.num_workers}")
            topology = check_ready(session)
            dmod = session.load_module(load_executable(os.path.join(exported, EXECUTABLE)))
            from .weights import place_weights
            weights = place_weights(session, checkpoint, meta["params"], dmod.mesh_shape)
            return cls(session, dmod, meta, weights, tokenizer, owns_session=owns,
                       topology=topology, **options)
        except BaseException:
            if owns:
                session.shutdown()
            raise

    def close(self) -> None:
        """Frees the KV cache and, when the engine started the session, shuts it down."""
        if self._closed:
            return
        self._closed = True
        for r in list(self.running) + list(self.waiting):
            self.cancel(r)
        if self.owns_session:
            self.session.shutdown()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------------

    def submit(self, prompt: Prompt, max_new_tokens: Optional[int] = None, *,
               text_output: Optional[bool] = None, **options: Any) -> Request:
        """Queue a request; it runs in the next steps. `prompt`: text (needs the tokenizer;
        the request then produces text too) or token ids. `text_output`: whether the
        request produces text (`pieces`, `text`; stop strings need it); by default when
        the prompt is text. `options`: GenerationConfig's fields (temperature, top_k,
        top_p, min_p, repetition_penalty, seed, stop, ignore_eos), over the engine's
        defaults."""
        text = isinstance(prompt, str) if text_output is None else bool(text_output)
        ids = self._ids_of(prompt)
        if text and self.tokenizer is None:
            raise EngineError("text output needs a tokenizer; this checkpoint has none "
                              "(tokenizer.json), so pass token ids and read `tokens`")
        if max_new_tokens is not None:
            options["max_new_tokens"] = max_new_tokens
        unknown = set(options) - set(GenerationConfig.__dataclass_fields__) - {"eos_token_ids"}
        if unknown:
            raise EngineError(f"unknown generation options {sorted(unknown)}; expected some of "
                              f"{sorted(GenerationConfig.__dataclass_fields__)}")
        config = self.generation_config.replace(**options)
        if config.stop and not text:
            raise EngineError("stop strings need text output: a text prompt, or text_output=True "
                              "(a token-id prompt produces ids)")
        self._check_prompt(ids)
        request = Request(next(self._ids), ids, config, self.tokenizer, text)
        need = self._pages_needed(request)
        if need > self.num_pages:
            raise EngineError(
                f"a request of {len(ids)} prompt tokens and up to {self._budget(request)} new ones "
                f"needs {need} KV pages of {self.page_size} tokens, but the cache has "
                f"{self.num_pages} (max_tokens={self.num_pages * self.page_size}); lower "
                "max_new_tokens or load the engine with a larger max_tokens")
        self.waiting.append(request)
        return request

    def cancel(self, request: Request) -> None:
        """Stop a request now; its KV pages are freed at once."""
        if request.finished:
            return
        if request in self.waiting:
            self.waiting.remove(request)
        request._end("cancelled")
        self._retire([request])

    def _budget(self, r: Request) -> int:
        """The most tokens it can still generate: its max_new_tokens, within the context."""
        return max(0, min(r.config.max_new_tokens, self.context - len(r.prompt)))

    def _pages_for(self, tokens: int) -> int:
        return -(-tokens // self.page_size)

    def _pages_needed(self, r: Request) -> int:
        return self._pages_for(len(r.prompt) + self._budget(r))

    def _check_prompt(self, ids: list[int]) -> None:
        if not ids:
            raise EngineError("a prompt must have at least one token")
        if len(ids) >= self.context:
            raise EngineError(f"a prompt of {len(ids)} tokens does not fit the context window of "
                              f"{self.context} positions (it must leave room for one new token)")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise EngineError(f"token ids {bad[:5]} are outside the vocabulary (0..{self.vocab_size - 1})")

    def _ids_of(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise EngineError("text prompts need a tokenizer; this checkpoint has none "
                                  "(tokenizer.json), so pass token ids")
            return self.tokenizer.encode(prompt)
        if isinstance(prompt, np.ndarray):
            prompt = prompt.tolist()
        try:
            return [int(t) for t in prompt]
        except (TypeError, ValueError):
            raise EngineError(f"a prompt must be text or a sequence of token ids, got "
                              f"{type(prompt).__name__}") from None

    # -- steps -------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return bool(self.running or self.waiting)

    def admit(self) -> None:
        """Move waiting requests in while their worst-case pages are free (in order: a
        large request is not overtaken forever by small ones). `step` does this first;
        a scheduler calls it to know which requests will have to wait."""
        while self.waiting and self._pages_needed(self.waiting[0]) <= self.free_pages:
            r = self.waiting.popleft()
            r.pages = self._pages_needed(r)
            self.free_pages -= r.pages
            self.running.append(r)

    def _appended(self) -> tuple[list[Request], list[list[int]]]:
        """This step's sequences and what each appends: its last token, or the next part
        of its prompt (all of it, or what is left of `prefill_chunk`, in admission order)."""
        budget = self.prefill_chunk or sum(len(r.prompt) for r in self.running)
        batch, appended = [], []
        for r in self.running:
            if r.prefilled < len(r.prompt):
                n = min(len(r.prompt) - r.prefilled, budget)
                if n == 0:
                    continue
                budget -= n
                appended.append(r.prompt[r.prefilled:r.prefilled + n])
            else:
                appended.append([r.tokens[-1]])
            batch.append(r)
        return batch, appended

    def step(self) -> list[Request]:
        """One forward step of every running sequence (admitting waiting ones first);
        returns the requests that got a token (each's newest is `tokens[-1]`): all of the
        step's but those whose prompt is not all in the cache yet (`prefill_chunk`)."""
        self.admit()
        batch, appended = self._appended()
        if not batch:
            return []
        for r in batch:
            if not r.in_cache:
                self._kv["add_sequence"](self.cache, r.id)
                r.in_cache = True
        prefill = any(r.prefilled < len(r.prompt) for r in batch)
        lengths = [len(a) for a in appended]
        t0 = time.perf_counter()
        try:
            self._kv["begin_forward"](self.cache, [r.id for r in batch], lengths)
            tokens = np.fromiter(itertools.chain.from_iterable(appended), np.int64, sum(lengths))
            if prefill:
                last = np.cumsum(lengths, dtype=np.int64) - 1
                logits = self._fetch(self.dmod["prefill"](tokens, self.cache, last, *self.weights))
            else:
                logits = self._fetch(self.dmod["decode"](tokens, self.cache, *self.weights))
        except BaseException:
            for r in batch:         # the cache's state for these is unknown: end them
                r._end("error")
            self._retire(batch)
            raise
        spent = time.perf_counter() - t0
        kind = "prefill" if prefill else "decode"
        self.stats[f"{kind}_tokens"] += sum(lengths)
        self.stats[f"{kind}_s"] += spent
        self.stats["steps"] += 1
        done, got = [], []
        for r, row, a in zip(batch, logits, appended):
            if r.prefilled < len(r.prompt):
                r.prefilled += len(a)
                if r.prefilled < len(r.prompt):
                    continue            # a chunk of its prompt: no token yet
            got.append(r)
            if r.decoder is not None and self._text_vocab < len(row):
                row = row[:self._text_vocab]     # ids the tokenizer cannot write: never chosen
            r._take(int(r.sampler.choose(row)))
            if not r.finished and len(r.tokens) >= self._budget(r):
                r._end("length")
            if r.finished:
                done.append(r)
        self._retire(done)
        return got

    def _retire(self, requests: Iterable[Request]) -> None:
        for r in requests:
            if r in self.running:
                self.running.remove(r)
                self.free_pages += r.pages
                r.pages = 0
            if r.in_cache:
                r.in_cache = False
                if not self._closed or not self.owns_session:
                    self._kv["remove_sequence"](self.cache, r.id)

    def _fetch(self, ref) -> np.ndarray:
        return np.asarray(ref.fetch(), dtype=np.float32)

    def run(self, requests: Sequence[Request]) -> None:
        """Step until every one of `requests` has finished."""
        try:
            while not all(r.finished for r in requests):
                self.step()
        except BaseException:
            for r in requests:
                self.cancel(r)
            raise

    # -- the user's calls ----------------------------------------------------------------------

    def generate(self, prompts: Union[Prompt, Sequence[Prompt]], max_new_tokens: Optional[int] = None,
                 **options: Any) -> list:
        """New tokens of each prompt, all run together: text prompts give text (what the
        stop strings and EOS leave), token-id prompts lists of new ids (EOS included,
        as transformers' generate). A single prompt is a batch of one. `options`: see
        `submit`."""
        if isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], (int, np.integer))):
            prompts = [prompts]
        requests = []
        try:
            for p in prompts:
                requests.append(self.submit(p, max_new_tokens, **options))
        except BaseException:
            for r in requests:
                self.cancel(r)
            raise
        self.run(requests)
        return [r.text if r.decoder is not None else list(r.tokens) for r in requests]

    def stream(self, prompt: Prompt, max_new_tokens: Optional[int] = None,
               **options: Any) -> Iterator[Union[str, int]]:
        """The new text of a text prompt piece by piece as it is generated (token ids, one
        at a time, for a token-id prompt). Leaving the loop early cancels the request."""
        request = self.submit(prompt, max_new_tokens, **options)
        return self._stream(request)

    def _stream(self, request: Request) -> Iterator[Union[str, int]]:
        seen = 0
        try:
            while True:
                if request.decoder is not None:
                    while request.pieces:
                        yield request.pieces.pop(0)
                else:
                    while seen < len(request.tokens):
                        seen += 1
                        yield request.tokens[seen - 1]
                if request.finished:
                    return
                self.step()
        finally:
            self.cancel(request)

    def chat_prompt(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        """The token ids of a chat, by the checkpoint's chat template."""
        if self.tokenizer is None:
            raise EngineError("chat needs a tokenizer with a chat template; this checkpoint has no tokenizer")
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt)

    def chat(self, messages: Sequence[dict], max_new_tokens: Optional[int] = None, stream: bool = False,
             **options: Any):
        """The assistant's reply to `messages` ([{"role": "user", "content": ...}, ...]) by
        the chat template: text, or its pieces as generated when `stream`."""
        request = self.submit(self.chat_prompt(messages), max_new_tokens, text_output=True, **options)
        if stream:
            return self._stream(request)
        self.run([request])
        return request.text

    def forward(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """Logits of a fresh prefill of each prompt (token ids), numpy (batch, seq, vocab);
        prompts of different lengths are padded with NaN. Running requests are untouched."""
        if len(prompts) > 0 and isinstance(prompts[0], (int, np.integer)):
            prompts = [prompts]
        ids = [self._ids_of(p) for p in prompts]
        for p in ids:
            self._check_prompt(p)
        need = sum(self._pages_for(len(p)) for p in ids)
        if need > self.free_pages:
            raise EngineError(f"forward of {sum(map(len, ids))} tokens needs {need} free KV pages; "
                              f"{self.free_pages} are free")
        seq_ids = [next(self._ids) for _ in ids]
        added = []
        try:
            for s in seq_ids:
                self._kv["add_sequence"](self.cache, s)
                added.append(s)
            self._kv["begin_forward"](self.cache, seq_ids, [len(p) for p in ids])
            tokens = np.concatenate([np.asarray(p, np.int64) for p in ids])
            flat = self._fetch(self.dmod["forward"](tokens, self.cache, *self.weights))
        finally:
            for s in added:
                self._kv["remove_sequence"](self.cache, s)
        out = np.full((len(ids), max(map(len, ids)), flat.shape[-1]), np.nan, np.float32)
        at = 0
        for i, p in enumerate(ids):
            out[i, :len(p)] = flat[at:at + len(p)]
            at += len(p)
        return out

    def kv_line(self) -> str:
        """The KV cache's size per worker, for logs: pages, dtype, bytes."""
        return (f"KV cache {self.num_pages} pages of {self.page_size} tokens per worker, {self.kv_dtype}, "
                f"{self.kv_bytes_per_token} bytes per token, "
                f"{self.num_pages * self.page_size * self.kv_bytes_per_token / 2**20:.1f} MiB")

    def stats_line(self) -> str:
        """Prefill and decode throughput since the last call (then reset)."""
        s = self.stats
        line = (f"prefill {s['prefill_tokens']} tokens in {s['prefill_s']:.3f} s "
                f"({s['prefill_tokens'] / max(s['prefill_s'], 1e-9):.1f} tokens/s), "
                f"decode {s['decode_tokens']} tokens in {s['decode_s']:.3f} s "
                f"({s['decode_tokens'] / max(s['decode_s'], 1e-9):.1f} tokens/s)")
        for k in s:
            s[k] = 0 if isinstance(s[k], int) else 0.0
        return line

    def __repr__(self):
        return (f"Engine({self.meta.get('family')}, tp={self.meta.get('tp')}, dtype={self.meta.get('dtype')}, "
                f"kv_dtype={self.kv_dtype}, running={len(self.running)}, waiting={len(self.waiting)}, "
                f"free_pages={self.free_pages}/{self.num_pages})")


KV_DTYPES = ("float32", "float16", "bfloat16")


def check_kv_dtype(kv_dtype: Optional[str], where: str) -> Optional[str]:
    """`kv_dtype` when it is None or a dtype the KV cache stores; else an EngineError (a
    ValueError) naming the allowed ones, so a loader can check it before workers start."""
    if kv_dtype is not None and kv_dtype not in KV_DTYPES:
        raise EngineError(f"{where}: kv_dtype={kv_dtype!r} is not supported; expected one of "
                          f"{', '.join(map(repr, KV_DTYPES))}, or None for the model's dtype")
    return kv_dtype


def check_ready(session) -> str:
    """Before any weight is read: the collectives work (a tiny all-reduce with a known
    result) and where the workers are; returns the topology line. A broken backend fails
    here in seconds (the collectives' own timeout), naming the backend and the worker,
    not later as a hang."""
    from ..dmodule import prepare_collectives
    n = session.num_workers
    backend = None
    if n > 1:
        backend = prepare_collectives(session, "auto", (n,))
        session.import_module("disco.ccl")
        x = session.scatter(np.arange(1, n + 1, dtype=np.float32).reshape(n, 1))
        want = [n * (n + 1) / 2]
        try:
            out = session.get_global_func("ccl.allreduce")(x, "sum")
            got = [np.asarray(out.fetch(worker=w)).ravel().tolist() for w in range(n)]
        except DiscoError as e:
            raise EngineError(f"readiness check: an all-reduce over the '{backend}' collectives "
                              f"failed: {e}") from None
        wrong = [w for w in range(n) if got[w] != want]
        if wrong:
            raise EngineError(f"readiness check: an all-reduce over the '{backend}' collectives gave "
                              f"{got[wrong[0]]} on worker {wrong[0]}, expected {want}")
    dev = session.get_global_func("disco.worker_device")()
    devices = sorted({str(dev.fetch(worker=w)) for w in range(n)})
    remote = len(session.workers_on_other_hosts)
    where = f"one host and {remote} on others" if remote else "one host"
    return (f"disco: {n} worker{'s' if n != 1 else ''} on {where}, "
            f"collectives {backend or 'none (one worker)'}, devices {', '.join(devices)}")

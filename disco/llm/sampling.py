"""Choosing each sequence's next token from a batch of logits, once, on the controller.

Every worker computes the same logits, so the controller samples once and broadcasts the
tokens; the choice must then be reproducible by itself: a request's seed and its logits
decide its tokens, whatever the batch around it or the process it runs in. Each sequence
owns a `numpy.random.Generator` (PCG64, seeded from the request) that gives one uniform
number per sampled token; greedy decoding draws none.

The steps follow transformers' logits processors, in its order:

    1. repetition penalty   each token already in the sequence (prompt included):
                            a positive logit divided by the penalty, a negative one multiplied
    2. greedy               temperature 0: the first index of the largest logit, done
    3. temperature          logits / temperature
    4. top-k                keep the logits >= the k-th largest (ties at the k-th stay)
    5. top-p                in descending probability, keep tokens while the probability
                            above them is < p (the token that crosses p stays)
    6. min-p                keep tokens whose probability is >= min_p * the largest
    7. draw                 u in [0, 1) from the sequence's generator; the kept tokens in
                            ascending id order, the first whose cumulative probability
                            exceeds u * total

Probabilities are computed in float64 from the float32 logits; ties in probability sort by
token id, so nothing depends on an unstable sort.

    samplers = [Sampler(SamplingParams(temperature=0.7, top_p=0.9, seed=1), prompt_ids)]
    tokens = sample(logits, samplers)      # (batch,) int64; each sampler records its token
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

from ..errors import SamplingError

# top-p without top-k first tries the most likely tokens only, and widens the set until it
# holds probability p: a full sort of a 128k vocabulary per row costs ~10 ms, the
# partition ~1 ms, and the nucleus is usually far smaller than this.
_NUCLEUS_FIRST_TRY = 1024


@dataclass(frozen=True)
class SamplingParams:
    """One request's settings. temperature 0 is greedy (the seed is then unused); top_k 0,
    top_p 1, min_p 0 and repetition_penalty 1 switch their step off; seed None draws from
    the operating system's entropy (not reproducible)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: Optional[int] = None

    def __post_init__(self):
        def bad(name, want):
            raise SamplingError(f"SamplingParams.{name}={getattr(self, name)!r}: expected {want}")
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            bad("temperature", "a finite number >= 0 (0 is greedy)")
        if not (isinstance(self.top_k, (int, np.integer)) and self.top_k >= 0):
            bad("top_k", "an int >= 0 (0 is off)")
        if not 0 < self.top_p <= 1:
            bad("top_p", "a number in (0, 1] (1 is off)")
        if not 0 <= self.min_p <= 1:
            bad("min_p", "a number in [0, 1] (0 is off)")
        if not (self.repetition_penalty > 0 and np.isfinite(self.repetition_penalty)):
            bad("repetition_penalty", "a finite number > 0 (1 is off)")
        if self.seed is not None and not (isinstance(self.seed, (int, np.integer)) and self.seed >= 0):
            bad("seed", "None or an int >= 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Sampler:
    """One sequence's sampling state: its settings, its random generator and the tokens it
    holds so far (for the repetition penalty). `choose` picks a token from the sequence's
    row of logits and records it."""

    def __init__(self, params: SamplingParams = SamplingParams(), prompt_ids: Iterable[int] = ()):
        self.params = params
        self.rng = np.random.Generator(np.random.PCG64(params.seed))
        self._seen: set[int] = set(int(t) for t in prompt_ids)
        self._seen_array: Optional[np.ndarray] = None  # cache of _seen, rebuilt when it grows

    def record(self, token_id: int) -> None:
        """Add a token to the sequence (choose does this for the tokens it picks)."""
        token_id = int(token_id)
        if token_id not in self._seen:
            self._seen.add(token_id)
            self._seen_array = None

    def seen_ids(self) -> np.ndarray:
        """The distinct tokens of the sequence so far, ascending (int64)."""
        if self._seen_array is None:
            self._seen_array = np.array(sorted(self._seen), dtype=np.int64)
        return self._seen_array

    def choose(self, logits: np.ndarray) -> int:
        """The next token from this sequence's (vocab,) logits; recorded in the sequence."""
        token = choose_token(logits, self.params, self.seen_ids(), self.rng)
        self.record(token)
        return token


def sample(logits: np.ndarray, samplers: Sequence[Sampler]) -> np.ndarray:
    """The next token of every sequence: row i of the (batch, vocab) logits by samplers[i]."""
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[0] != len(samplers):
        raise SamplingError(f"sample: logits of shape {logits.shape} for {len(samplers)} samplers: "
                            f"expected (batch, vocab) with batch == {len(samplers)}")
    if logits.dtype.kind != "f" and logits.dtype.name != "bfloat16":
        raise SamplingError(f"sample: logits of dtype {logits.dtype}: expected a float dtype")
    tokens = np.empty(len(samplers), dtype=np.int64)
    for i, s in enumerate(samplers):
        try:
            tokens[i] = s.choose(logits[i])
        except SamplingError as e:
            raise SamplingError(f"sample: row {i}: {e}") from None
    return tokens


def process_logits(logits: np.ndarray, params: SamplingParams,
                   seen_ids: Sequence[int] = ()) -> np.ndarray:
    """Steps 1 and 3-6 on a (vocab,) row: the float32 scores a sample is drawn from, with
    -inf for the tokens filtered out (what transformers' processors give; for tests and
    for inspection: `choose_token` does not build this full row)."""
    scores = _penalized(_row(logits), params.repetition_penalty, np.asarray(seen_ids, np.int64))
    if params.greedy:
        return scores.copy()
    kept, _ = _filter(scores, params)
    out = np.full(scores.shape, -np.inf, dtype=np.float32)
    out[kept] = scores[kept] / np.float32(params.temperature)
    return out


def choose_token(logits: np.ndarray, params: SamplingParams, seen_ids: np.ndarray,
                 rng: Optional[np.random.Generator]) -> int:
    """The token for one (vocab,) row; `seen_ids` the sequence's tokens (for the penalty),
    `rng` its generator (one number drawn unless greedy)."""
    scores = _penalized(_row(logits), params.repetition_penalty, seen_ids)
    if params.greedy:
        return int(np.argmax(scores))
    if rng is None:
        raise SamplingError(f"choose_token: sampling with {params} needs a random generator")
    kept, probs = _filter(scores, params)
    cum = np.cumsum(probs)     # kept ascends by id: the draw depends on no sort order
    u = rng.random()
    i = int(np.searchsorted(cum, u * cum[-1], side="right"))
    return int(kept[min(i, len(kept) - 1)])


def _row(logits) -> np.ndarray:
    row = np.asarray(logits)
    if row.ndim != 1 or row.size == 0 or (row.dtype.kind != "f" and row.dtype.name != "bfloat16"):
        raise SamplingError(f"logits of shape {row.shape} and dtype {row.dtype}: "
                            "expected one non-empty float row per sequence")
    row = row.astype(np.float32, copy=False)
    top = row.max()
    if not np.isfinite(top):
        raise SamplingError(f"logits whose largest value is {top} (NaN, or every token -inf or +inf): "
                            "nothing to sample from")
    return row


def _penalized(row: np.ndarray, penalty: float, seen: np.ndarray) -> np.ndarray:
    """Step 1 (transformers' RepetitionPenaltyLogitsProcessor), on a copy when it applies."""
    if penalty == 1.0 or len(seen) == 0:
        return row
    if seen.min() < 0 or seen.max() >= row.size:
        raise SamplingError(f"sequence holds token ids in [{seen.min()}, {seen.max()}]: outside the "
                            f"vocabulary of {row.size} logits")
    row = row.copy()
    p = np.float32(penalty)
    vals = row[seen]
    row[seen] = np.where(vals < 0, vals * p, vals / p)
    return row


def _filter(scores: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """Steps 3-6: the kept token ids (ascending) and their unnormalised probabilities."""
    x = scores / np.float32(params.temperature)
    vocab = x.size
    if 0 < params.top_k < vocab:
        kth = np.partition(x, vocab - params.top_k)[vocab - params.top_k]
        kept = np.flatnonzero(x >= kth)
    else:
        kept = np.arange(vocab)
    logits = x[kept].astype(np.float64)
    probs = np.exp(logits - logits.max())
    if params.top_p < 1.0:
        sel = _nucleus(kept, probs, params.top_p)
        kept, probs = kept[sel], probs[sel]
    if params.min_p > 0.0:
        sel = probs >= params.min_p * probs.max()   # ratio to the top: normalisation cancels
        kept, probs = kept[sel], probs[sel]
    return kept, probs


def _nucleus(ids: np.ndarray, probs: np.ndarray, p: float) -> np.ndarray:
    """Indices (into ids/probs, ascending) of the smallest set of most probable tokens
    whose mass reaches p, ranked by (probability descending, id ascending)."""
    n, total = probs.size, probs.sum()
    limit = min(n, _NUCLEUS_FIRST_TRY)
    while True:
        if limit < n:
            top = np.argpartition(-probs, limit - 1)[:limit]
            # the partition's boundary may split equal probabilities: take the ties whole
            edge = probs[top].min()
            top = np.flatnonzero(probs >= edge)
        else:
            top = np.arange(n)
        order = top[np.lexsort((ids[top], -probs[top]))]
        cum = np.cumsum(probs[order]) / total
        if cum[-1] >= p or len(top) == n:
            break
        limit = min(n, limit * 8)
    # token i stays when the mass ranked above it is < p
    count = 1 + int(np.searchsorted(cum[:-1], p, side="left"))
    return np.sort(order[:count])

"""The paged KV cache of the model path: keys and values of every running sequence, for
this worker's kv heads, and the attention that reads them.

    cache = PagedKVCache(num_layers=2, num_kv_heads=2, head_dim=64, num_pages=256)
    cache.add_sequence(0); cache.add_sequence(1)
    cache.begin_forward([0, 1], [5, 3])         # prefill: 5 and 3 tokens, rows 0-4 and 5-7
    for layer in range(2):                      # q (8, H, 64), k and v (8, 2, 64), out like q
        cache.attention(layer, q, k, v, out)
    cache.begin_forward([0, 1], [1, 1])         # decode: one token each
    cache.positions()                           # array([5, 3])

Pages. Like vLLM's blocks and MLC-LLM's pages: the storage is `num_pages` fixed-size
pages of `page_size` tokens, allocated once; each sequence has a page table (the pages
holding its history, in order) and takes a free page when its length crosses a page
boundary; `remove_sequence` returns its pages at once. No sequence is ever copied or
reallocated as it grows, and at most one page per sequence is partly empty.
`begin_forward` reserves every page the step needs or, when too few are free, raises
`OutOfPagesError` (with `pages_needed` and `pages_free`) and changes nothing, so a
scheduler can drop or postpone a sequence and retry.

Tensor parallelism. Each worker holds a cache of its own kv heads (KV/N of them) and
attends with its own q heads (H/N); the heads of a group stay on one worker, so no
collective is needed inside attention. The global functions below ("disco.kv.*") let a
session's controller create and drive a cache on every worker, and compiled graph
functions call "disco.kv.attention" by `R.call_dps_packed` (the output passed last).

Kernels (C++, csrc/kv/). Keys and values are two arrays [layer][page][kv_head][slot][dim]:
one page of one kv head is a contiguous page_size x head_dim block. Attention first
writes the step's new keys and values at their positions, then, per (sequence, kv head,
block of up to 16 new tokens), reads that sequence's keys and values once, in tiles of
up to 32 positions within a page (read in place when float32, widened to float32 when
16-bit; q, k, v and out may be float32 over a 16-bit cache, k and v rounded as they
are written), and serves all the q heads of the group from each tile with an online softmax
(running max, running sum, float32 accumulator): no score matrix, fixed scratch for any
history. Decode is memory-bound and reads each cached element once per (sequence, kv
head); the next tile's page is prefetched while one is folded, and the loops are 8-wide
vectors compiled for AVX2/FMA and for baseline x86-64 (picked at load time). Work items
run on a thread pool owned by the cache (threads made once, sleeping between calls),
with the GIL released; by default the cache uses the process's CPUs divided by its
session's workers, so workers sharing a host do not oversubscribe it.
benchmarks/kv_attention.py measures decode against numpy.
"""
from __future__ import annotations

import math
import operator
import os
from typing import Any, Iterable

import numpy as np

from ._context import current_context
from .errors import DiscoError, KVCacheError, OutOfPagesError
from .registry import register_func
from .tensor import as_numpy, dtype_name, is_array_like, np_dtype

__all__ = ["PagedKVCache", "KVCacheError", "OutOfPagesError"]

# Storage dtypes and their codes in csrc/kv/paged_kv_cache.h (DType).
_DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}


def _io_code(dtype: np.dtype) -> int | None:
    """The code of a dtype q, k, v and out may have; None for any other."""
    try:
        return _DTYPE_CODES.get(dtype_name(dtype))
    except DiscoError:
        return None


def default_num_threads() -> int:
    """This process's CPUs divided by the workers of its session (1 outside a session)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:     # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, current_context().num_workers))


def _int(value: Any, what: str, where: str) -> int:
    """A Python int from an int, a numpy integer or a 0-d integer array."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)):
        raise KVCacheError(f"{where}: {what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise KVCacheError(f"{where}: {what} must be an integer, got {type(value).__name__} "
                           f"{value!r}") from None


def _int_list(values: Any, what: str, where: str) -> list[int]:
    """A list of ints from a list, a tuple or a 1-d integer array (what sessions and the VM
    hand over)."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or values.dtype.kind not in "iu":
            raise KVCacheError(f"{where}: {what} must be a 1-d array of integers, got shape "
                               f"{values.shape} {values.dtype}")
        return values.tolist()
    if not isinstance(values, Iterable) or isinstance(values, (str, bytes)):
        raise KVCacheError(f"{where}: {what} must be a list of integers, got "
                           f"{type(values).__name__} {values!r}")
    return [_int(v, f"{what}[{i}]", where) for i, v in enumerate(values)]


class PagedKVCache:
    """Keys and values of the sequences one worker serves, for its kv heads, in pages.

    `num_pages` pages of `page_size` tokens each (every layer has its own copy of each
    page), stored as `dtype` ("float32", "float16" or "bfloat16"; attention accumulates
    in float32). q, k, v and out may be of another of these dtypes: a 16-bit cache under
    a float32 model halves KV memory with no cast in the model's graph (keys and values
    are rounded as they are written). `num_threads`: threads of the attention kernel
    (default: `default_num_threads()`)."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, *, num_pages: int,
                 page_size: int = 16, dtype: str = "float32", num_threads: int | None = None):
        from . import _native
        where = "PagedKVCache"
        name = dtype if isinstance(dtype, str) else dtype_name(np.dtype(dtype))
        if name not in _DTYPE_CODES:
            raise KVCacheError(f"{where}: dtype {dtype!r} is not supported; expected one of "
                               f"{', '.join(_DTYPE_CODES)}")
        self.num_layers = _int(num_layers, "num_layers", where)
        self.num_kv_heads = _int(num_kv_heads, "num_kv_heads", where)
        self.head_dim = _int(head_dim, "head_dim", where)
        self.num_pages = _int(num_pages, "num_pages", where)
        self.page_size = _int(page_size, "page_size", where)
        self.dtype = np_dtype(name)
        threads = default_num_threads() if num_threads is None else _int(num_threads, "num_threads", where)
        self._native = _native.PagedKVCache(self.num_layers, self.num_kv_heads, self.head_dim,
                                            self.num_pages, self.page_size, _DTYPE_CODES[name],
                                            max(1, threads))

    # -- sequences and steps -------------------------------------------------------------

    def add_sequence(self, seq_id: int) -> None:
        """A new, empty sequence; KVCacheError if `seq_id` exists."""
        self._native.add_sequence(_int(seq_id, "seq_id", "PagedKVCache.add_sequence"))

    def remove_sequence(self, seq_id: int) -> None:
        """Forget the sequence and free its pages (reused by the next steps at once)."""
        self._native.remove_sequence(_int(seq_id, "seq_id", "PagedKVCache.remove_sequence"))

    def begin_forward(self, seq_ids, append_lengths) -> None:
        """The next step appends `append_lengths[i]` tokens to `seq_ids[i]`: prefill of
        several sequences of any lengths, or decode (all 1). Reserves the pages and commits
        the new lengths; the step's tokens are the rows of q/k/v/out in this order.
        Raises OutOfPagesError (and changes nothing) when too few pages are free."""
        where = "PagedKVCache.begin_forward"
        self._native.begin_forward(_int_list(seq_ids, "seq_ids", where),
                                   _int_list(append_lengths, "append_lengths", where))

    def positions(self) -> np.ndarray:
        """The position of each token of the current step (int64, a new array), sequence by
        sequence in begin_forward's order: for rotary embeddings."""
        return self._native.positions()

    def attention(self, layer: int, q, k, v, out, scale: float | None = None) -> np.ndarray:
        """Writes the step's keys and values into `layer`'s pages, then attends: for each
        token t of sequence s, out[t, h] = softmax(scale * q[t, h] . K_s^T) V_s over the
        positions of s up to and including t's (causal within the step), with kv head
        h // (H // KV) for q head h. q and out: (T, H, D); k and v: (T, KV, D); T the
        step's tokens, all four of one dtype, the cache's or another (float32 over a 16-bit
        cache: k and v are rounded to the cache's dtype as they are stored). `scale` defaults to 1/sqrt(D).
        Returns `out`."""
        where = f"PagedKVCache.attention(layer={layer!r})"
        layer = _int(layer, "layer", where)
        if not 0 <= layer < self.num_layers:
            raise KVCacheError(f"{where}: layer {layer} is out of range; the cache has "
                               f"{self.num_layers} layers (0..{self.num_layers - 1})")
        rows = self._native.step_rows()      # raises when no step has begun
        q, k, v, out = (self._array(x, name, where) for x, name in
                        ((q, "q"), (k, "k"), (v, "v"), (out, "out")))
        for name, x in (("k", k), ("v", v), ("out", out)):
            if x.dtype != q.dtype:
                raise KVCacheError(f"{where}: {name} has dtype {x.dtype} but q {q.dtype}; q, k, v "
                                   "and out must be of one dtype")
        D, KV = self.head_dim, self.num_kv_heads
        if q.ndim != 3 or q.shape[0] != rows or q.shape[2] != D or q.shape[1] % KV:
            raise KVCacheError(
                f"{where}: q has shape {q.shape}; expected (T, H, D) = ({rows}, H, {D}) with "
                f"T = {rows} tokens in the step begun by begin_forward and H a multiple of the "
                f"cache's {KV} kv heads")
        for name, x in (("k", k), ("v", v)):
            if x.shape != (rows, KV, D):
                raise KVCacheError(f"{where}: {name} has shape {x.shape}; expected (T, KV, D) = "
                                   f"{(rows, KV, D)}")
        if out.shape != q.shape:
            raise KVCacheError(f"{where}: out has shape {out.shape}; expected q's shape {q.shape}")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise KVCacheError(f"{where}: out (shape {out.shape}) must be a C-contiguous, writable "
                               "array; attention writes into it")
        scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
        self._native.attention(layer, np.ascontiguousarray(q), np.ascontiguousarray(k),
                               np.ascontiguousarray(v), out, scale, _DTYPE_CODES[dtype_name(q.dtype)])
        return out

    def _array(self, x, name: str, where: str) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            if not is_array_like(x):
                raise KVCacheError(f"{where}: {name} must be an array, got {type(x).__name__}")
            x = as_numpy(x)
        if _io_code(x.dtype) is None:
            raise KVCacheError(f"{where}: {name} has dtype {x.dtype}; the cache holds "
                               f"{dtype_name(self.dtype)}, and q, k, v and out must be of one of "
                               f"{', '.join(_DTYPE_CODES)}")
        return x

    # -- state -----------------------------------------------------------------------------

    def seq_length(self, seq_id: int) -> int:
        """Tokens in the sequence, those of the current step included."""
        return self._native.seq_length(_int(seq_id, "seq_id", "PagedKVCache.seq_length"))

    def page_table(self, seq_id: int) -> list[int]:
        """The pages holding the sequence's history, in order (diagnostics and tests)."""
        return self._native.pages(_int(seq_id, "seq_id", "PagedKVCache.page_table"))

    def storage(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, values): writable arrays over the cache's own memory, each of shape
        (num_layers, num_pages, num_kv_heads, page_size, head_dim); position p of a
        sequence is at [layer, page_table[p // page_size], :, p % page_size]. For tests,
        benchmarks and copying a cache; not for use while another thread attends."""
        return self._native.storage(self.dtype)

    @property
    def sequences(self) -> list[int]:
        """Ids of the sequences in the cache, ascending."""
        return self._native.sequences()

    @property
    def num_free_pages(self) -> int:
        return self._native.num_free_pages()

    @property
    def num_used_pages(self) -> int:
        return self.num_pages - self._native.num_free_pages()

    @property
    def num_threads(self) -> int:
        return self._native.num_threads

    @property
    def nbytes(self) -> int:
        """Bytes of the key and value storage (address space; pages cost memory once written)."""
        return (2 * self.num_layers * self.num_pages * self.num_kv_heads * self.page_size
                * self.head_dim * self.dtype.itemsize)

    def __repr__(self) -> str:
        return (f"PagedKVCache(layers={self.num_layers}, kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, pages={self.num_used_pages}/{self.num_pages} used, "
                f"page_size={self.page_size}, dtype={dtype_name(self.dtype)}, "
                f"sequences={len(self.sequences)})")


# -- global functions: a session's controller and compiled code drive caches by name -----

def _cache(cache: Any, where: str) -> PagedKVCache:
    if not isinstance(cache, PagedKVCache):
        raise KVCacheError(f"{where}: expected a PagedKVCache (made by disco.kv.create), got "
                           f"{type(cache).__name__}")
    return cache


@register_func("disco.kv.create", override=True)
def create(num_layers, num_kv_heads, head_dim, num_pages, page_size, dtype) -> PagedKVCache:
    """A cache on this worker; `num_kv_heads` is this worker's share."""
    if isinstance(dtype, np.dtype):
        dtype = dtype_name(dtype)
    return PagedKVCache(num_layers, num_kv_heads, head_dim, num_pages=num_pages,
                        page_size=page_size, dtype=dtype)


@register_func("disco.kv.add_sequence", override=True)
def add_sequence(cache, seq_id) -> None:
    _cache(cache, "disco.kv.add_sequence").add_sequence(seq_id)


@register_func("disco.kv.remove_sequence", override=True)
def remove_sequence(cache, seq_id) -> None:
    _cache(cache, "disco.kv.remove_sequence").remove_sequence(seq_id)


@register_func("disco.kv.begin_forward", override=True)
def begin_forward(cache, seq_ids, append_lengths) -> None:
    _cache(cache, "disco.kv.begin_forward").begin_forward(seq_ids, append_lengths)


@register_func("disco.kv.positions", override=True)
def positions(cache) -> np.ndarray:
    """A new int64 array: the positions of the current step's tokens."""
    return _cache(cache, "disco.kv.positions").positions()


@register_func("disco.kv.attention", override=True)
def attention(q, k, v, cache, layer, *scale_and_out) -> None:
    """Destination-passing form of PagedKVCache.attention for R.call_dps_packed:
    (q, k, v, cache, layer, out), or (q, k, v, cache, layer, scale, out) as
    R.kv.attention legalizes (compiler/op/kv.py)."""
    if len(scale_and_out) not in (1, 2):
        raise KVCacheError(f"disco.kv.attention: expected (q, k, v, cache, layer[, scale], out), got "
                           f"{5 + len(scale_and_out)} arguments")
    scale = float(scale_and_out[0]) if len(scale_and_out) == 2 else None
    _cache(cache, "disco.kv.attention").attention(layer, q, k, v, scale_and_out[-1], scale)


def _specialize_attention(args, varies):
    """What a VM plan calls for `attention`: the native kernel straight away, with the
    layer and scale resolved once and q, k, v, out of the recorded dtype (the plan fixes
    their shapes; the native call checks shapes, the step and the layer again). Any
    other cache, or a call the native kernel refuses, takes `attention`, which converts
    what it can or raises its descriptive error. A decode step calls it once per layer."""
    if len(args) not in (6, 7) or any(varies[4:-1]) or not isinstance(args[3], PagedKVCache):
        return None
    q, layer, out = args[0], args[4], args[-1]
    if not all(type(a) is np.ndarray for a in (q, args[1], args[2], out)):
        return None
    dtype = q.dtype
    try:
        layer = int(layer)
        scale = float(args[5]) if len(args) == 7 else 1.0 / math.sqrt(args[3].head_dim)
    except (TypeError, ValueError):
        return None

    io = _io_code(dtype)

    def fast(q, k, v, cache, *rest):
        if type(cache) is not PagedKVCache or io is None:
            return attention(q, k, v, cache, *rest)
        try:
            cache._native.attention(layer, q, k, v, rest[-1], scale, io)
        except (KVCacheError, TypeError):
            # Refused before the cache changed (the native checks come first): the general
            # function converts what it can (e.g. a non-contiguous q) or raises, naming the problem.
            attention(q, k, v, cache, *rest)
    return fast


attention.specialize = _specialize_attention

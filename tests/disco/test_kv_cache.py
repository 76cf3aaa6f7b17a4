"""disco.kv_cache: the paged KV cache and its attention, against a plain numpy reference
(causal softmax attention over each sequence's concatenated history, in float64, grouped
query heads by repeating the kv heads), on its own and driven through sessions."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import disco
from disco.errors import KVCacheError, OutOfPagesError
from disco.kv_cache import PagedKVCache

pytestmark = pytest.mark.timeout(120)

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
# (rtol, atol) of the outputs: inputs are exact in every dtype (the reference reads the same
# rounded values); the kernel accumulates in float32 and rounds the output once.
TOL = {"float32": (1e-5, 1e-5), "float16": (2e-3, 2e-3), "bfloat16": (1.6e-2, 1.6e-2)}


def reference(q, keys, values, start, scale):
    """Attention of new tokens at positions start, start+1, ... of one sequence.
    q (n, H, D); keys and values (L, KV, D): the whole history, new tokens included."""
    n, H, _ = q.shape
    group = H // keys.shape[1]
    k = np.repeat(keys.astype(np.float64), group, axis=1)        # (L, H, D)
    v = np.repeat(values.astype(np.float64), group, axis=1)
    scores = np.einsum("nhd,lhd->nhl", q.astype(np.float64), k) * scale
    visible = np.arange(keys.shape[0])[None, :] <= (start + np.arange(n))[:, None]   # (n, L)
    scores = np.where(visible[:, None, :], scores, -np.inf)
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return np.einsum("nhl,lhd->nhd", p / p.sum(axis=-1, keepdims=True), v)


class Model:
    """What the cache should hold, kept independently: each (sequence, layer)'s keys and
    values so far. step() feeds random q, k, v for one step to `attend` (the code under
    test), and checks its outputs against `reference` on the whole history."""

    def __init__(self, num_layers, num_heads, num_kv_heads, head_dim, dtype, seed=0, stored=None):
        self.L, self.H, self.KV, self.D = num_layers, num_heads, num_kv_heads, head_dim
        self.dtype = dtype
        self.stored = stored        # the cache's dtype when it differs from the inputs'
        self.rng = np.random.default_rng(seed)
        self.hist: dict = {}

    def random(self, *shape):
        return self.rng.standard_normal(shape).astype(DTYPES[self.dtype])

    def step(self, seq_ids, lengths, attend, scale=None):
        T = sum(lengths)
        outs = []
        for layer in range(self.L):
            q, k, v = self.random(T, self.H, self.D), self.random(T, self.KV, self.D), \
                self.random(T, self.KV, self.D)
            out = attend(layer, q, k, v)
            rtol, atol = TOL[self.dtype]
            row = 0
            if self.stored:     # the reference reads what the cache holds: k, v rounded
                k, v = (x.astype(DTYPES[self.stored]).astype(np.float32) for x in (k, v))
            for s, n in zip(seq_ids, lengths):
                old_k, old_v = self.hist.get((s, layer), (k[:0], v[:0]))
                keys = np.concatenate([old_k, k[row:row + n]])
                values = np.concatenate([old_v, v[row:row + n]])
                self.hist[(s, layer)] = (keys, values)
                want = reference(q[row:row + n], keys, values, len(old_k),
                                 1 / math.sqrt(self.D) if scale is None else scale)
                np.testing.assert_allclose(out[row:row + n].astype(np.float64), want, rtol=rtol,
                                           atol=atol, err_msg=f"sequence {s}, layer {layer}")
                row += n
            outs.append(out)
        return outs


def local_attend(cache, **kw):
    def attend(layer, q, k, v):
        out = np.full_like(q, np.nan)
        assert cache.attention(layer, q, k, v, out, **kw) is out
        return out
    return attend


def prefill_then_decode(cache, model, seq_ids, prefill, decode_steps, **kw):
    for s in seq_ids:
        cache.add_sequence(s)
    cache.begin_forward(seq_ids, prefill)
    np.testing.assert_array_equal(cache.positions(), np.concatenate([np.arange(n) for n in prefill]))
    model.step(seq_ids, prefill, local_attend(cache, **kw), **kw)
    for i in range(decode_steps):
        cache.begin_forward(seq_ids, [1] * len(seq_ids))
        np.testing.assert_array_equal(cache.positions(), np.array(prefill) + i)
        assert cache.positions().dtype == np.int64
        model.step(seq_ids, [1] * len(seq_ids), local_attend(cache, **kw), **kw)
    for s, n in zip(seq_ids, prefill):
        assert cache.seq_length(s) == n + decode_steps


@pytest.mark.parametrize("page_size", [1, 4, 16])
@pytest.mark.parametrize("head_dim", [16, 64])
@pytest.mark.parametrize("heads", [(8, 2), (4, 4)], ids=["gqa8-2", "mha4"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_prefill_then_decode_matches_reference(dtype, heads, head_dim, page_size):
    H, KV = heads
    cache = PagedKVCache(3, KV, head_dim, num_pages=80, page_size=page_size, dtype=dtype)
    model = Model(3, H, KV, head_dim, dtype)
    # 5, 17 and 33 tokens cross page boundaries for every page size, 33 also the kernel's
    # 16-token query blocks and 32-position key tiles; decode crosses more of them.
    prefill_then_decode(cache, model, [7, 2, 30], [5, 17, 33], decode_steps=4)
    pages = [cache.page_table(s) for s in (7, 2, 30)]
    assert [len(p) for p in pages] == [math.ceil((n + 4) / page_size) for n in (5, 17, 33)]
    assert len(set(sum(pages, []))) == cache.num_used_pages     # no page is shared


@pytest.mark.parametrize("page_size", [4, 16])
@pytest.mark.parametrize("head_dim", [16, 64, 80])
@pytest.mark.parametrize("inputs,stored", [("float32", "float16"), ("float32", "bfloat16"),
                                           ("float16", "bfloat16"), ("bfloat16", "float32")])
def test_inputs_of_another_dtype_than_the_cache(inputs, stored, head_dim, page_size):
    """A float32 model over a 16-bit cache (or a 16-bit model over another cache): keys
    and values rounded (to nearest even) as they are stored. Against the reference on the
    rounded keys and values, within the inputs' tolerance (float32: 1e-5): only the
    storage is 16-bit, the queries, the accumulation and the output stay float32."""
    cache = PagedKVCache(2, 2, head_dim, num_pages=60, page_size=page_size, dtype=stored)
    model = Model(2, 6, 2, head_dim, inputs, stored=stored)
    prefill_then_decode(cache, model, [3, 9], [5, 33], decode_steps=3)
    keys, values = cache.storage()
    assert keys.dtype == DTYPES[stored] and cache.nbytes == keys.nbytes + values.nbytes
    for layer in range(2):                  # what is stored is the inputs, rounded once
        want = model.hist[(9, layer)][0]
        table = cache.page_table(9)
        got = np.stack([keys[layer, table[p // page_size], :, p % page_size] for p in range(len(want))])
        np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))


def test_a_16_bit_cache_takes_half_the_bytes():
    """The page count is in tokens, so the same pages take half the memory in 16 bits."""
    sizes = {d: PagedKVCache(4, 2, 64, num_pages=8, page_size=16, dtype=d).nbytes for d in DTYPES}
    assert sizes["float32"] == 2 * 4 * 8 * 2 * 16 * 64 * 4
    assert sizes["bfloat16"] == sizes["float16"] == sizes["float32"] // 2


@pytest.mark.parametrize("head_dim", [12, 72, 80, 128])
def test_head_dims_off_the_vector_width(head_dim):
    """The kernel's vector loops work on 8 and 64 floats at a time; other head dims take
    their tails (12: 8 + 4 scalar; 72: 64 + 8; 80: 64 + 2 x 8; 128: 2 x 64)."""
    cache = PagedKVCache(1, 2, head_dim, num_pages=40, page_size=16, dtype="float32")
    prefill_then_decode(cache, Model(1, 4, 2, head_dim, "float32", seed=8), [0, 1], [40, 7],
                        decode_steps=2)


def test_scale_and_a_single_sequence():
    cache = PagedKVCache(1, 2, 16, num_pages=8, page_size=4)
    prefill_then_decode(cache, Model(1, 6, 2, 16, "float32"), [0], [9], decode_steps=2, scale=0.3)


def test_long_histories_on_several_threads_equal_one_thread():
    """Histories long enough for the thread pool (and many key tiles): same result as the
    reference, and bit for bit the same as one thread (an item runs on one thread)."""
    outs = []
    for threads in (1, 3):
        cache = PagedKVCache(1, 4, 64, num_pages=200, page_size=16, num_threads=threads)
        assert cache.num_threads == threads
        model = Model(1, 12, 4, 64, "float32", seed=5)
        for s in range(4):
            cache.add_sequence(s)
        lens = [300, 700, 1, 450]
        cache.begin_forward(range(4), lens)
        outs.append(model.step(range(4), lens, local_attend(cache)))
        for _ in range(2):
            cache.begin_forward(np.arange(4), [1, 1, 1, 1])
            outs.append(model.step(range(4), [1] * 4, local_attend(cache)))
    half = len(outs) // 2
    for a, b in zip(outs[:half], outs[half:]):
        np.testing.assert_array_equal(a, b)


def test_a_forked_child_uses_its_copy_of_the_cache_alone():
    """fork copies only the calling thread: the child's cache attends on that thread and
    can be dropped (its pool's helpers exist only in the parent)."""
    import os
    import time
    cache = PagedKVCache(1, 4, 64, num_pages=300, page_size=16, num_threads=2)
    for s in range(4):
        cache.add_sequence(s)
    cache.begin_forward(range(4), [1000] * 4)             # enough to read for the pool
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4000, 4, 64), dtype=np.float32)
    cache.attention(0, x, x, x, np.empty_like(x))
    cache.begin_forward(range(4), [1] * 4)
    q = rng.standard_normal((4, 4, 64), dtype=np.float32)
    want = cache.attention(0, q, q, q, np.empty_like(q))
    pid = os.fork()
    if pid == 0:                                          # the child: exit status is the verdict
        ok = False
        try:
            ok = np.array_equal(cache.attention(0, q, q, q, np.empty_like(q)), want)
            del cache
        finally:
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_sequences_leave_and_their_pages_are_reused():
    cache = PagedKVCache(2, 2, 16, num_pages=12, page_size=4)
    model = Model(2, 4, 2, 16, "float32", seed=1)
    for s in (0, 1):
        cache.add_sequence(s)
    cache.begin_forward([0, 1], [10, 6])                    # 3 + 2 pages
    model.step([0, 1], [10, 6], local_attend(cache))
    assert (cache.num_used_pages, cache.num_free_pages) == (5, 7)
    freed = cache.page_table(0)
    cache.remove_sequence(0)
    assert (cache.num_used_pages, cache.num_free_pages) == (2, 10)
    assert cache.sequences == [1]
    cache.add_sequence(5)
    cache.begin_forward([1, 5], [1, 12])                   # 5 needs 3 pages: the freed ones
    assert sorted(cache.page_table(5)) == sorted(freed)
    model.step([1, 5], [1, 12], local_attend(cache))       # 5's history is only its own
    assert cache.sequences == [1, 5] and cache.seq_length(5) == 12


def test_a_sequence_does_not_depend_on_the_others():
    """The same sequence gives the same outputs alone in a cache and among others added
    before it and running in the same steps."""
    rng = np.random.default_rng(3)
    H, KV, D = 8, 2, 16
    qkv = [(rng.standard_normal((n, H, D), dtype=np.float32),
            rng.standard_normal((n, KV, D), dtype=np.float32),
            rng.standard_normal((n, KV, D), dtype=np.float32)) for n in (7, 1, 1)]
    alone = PagedKVCache(1, KV, D, num_pages=16, page_size=4)
    alone.add_sequence(9)
    want = []
    for (q, k, v) in qkv:
        alone.begin_forward([9], [len(q)])
        want.append(alone.attention(0, q, k, v, np.empty_like(q)))

    crowd = PagedKVCache(1, KV, D, num_pages=16, page_size=4)
    for s in (0, 1):
        crowd.add_sequence(s)
    crowd.begin_forward([0, 1], [5, 3])
    q5 = rng.standard_normal((8, H, D), dtype=np.float32)
    crowd.attention(0, q5, q5[:, :KV], q5[:, KV:2 * KV], np.empty_like(q5))
    crowd.add_sequence(9)
    for (q, k, v), w in zip(qkv, want):
        n = len(q)
        crowd.begin_forward([0, 9, 1], [2, n, 1])
        other = rng.standard_normal((3, H, D), dtype=np.float32)
        q3 = np.concatenate([other[:2], q, other[2:]])
        k3 = np.concatenate([other[:2, :KV], k, other[2:, :KV]])
        v3 = np.concatenate([other[:2, KV:2 * KV], v, other[2:, KV:2 * KV]])
        out = crowd.attention(0, q3, k3, v3, np.empty_like(q3))
        np.testing.assert_array_equal(out[2:2 + n], w)


def test_out_of_pages_is_clear_and_changes_nothing():
    cache = PagedKVCache(1, 2, 16, num_pages=4, page_size=4)
    model = Model(1, 4, 2, 16, "float32", seed=2)
    for s in (0, 1):
        cache.add_sequence(s)
    cache.begin_forward([0], [3])
    model.step([0], [3], local_attend(cache))
    with pytest.raises(OutOfPagesError, match=r"needs 5 more pages \(sequence 0: 2, sequence 1: 3\) "
                                              r"but only 3 of 4 are free") as info:
        cache.begin_forward([0, 1], [6, 12])
    assert (info.value.pages_needed, info.value.pages_free) == (5, 3)
    assert isinstance(info.value, KVCacheError)
    assert (cache.seq_length(0), cache.seq_length(1), cache.num_free_pages) == (3, 0, 3)
    np.testing.assert_array_equal(cache.positions(), [0, 1, 2])    # the last step stands
    cache.begin_forward([0, 1], [1, 8])                           # fits: 0 + 2 pages
    model.step([0, 1], [1, 8], local_attend(cache))
    assert cache.num_free_pages == 1


def test_errors_name_what_was_wrong():
    cache = PagedKVCache(2, 2, 16, num_pages=8, page_size=4)
    with pytest.raises(KVCacheError, match=r"positions: no step has begun; call begin_forward"):
        cache.positions()
    cache.add_sequence(3)
    with pytest.raises(KVCacheError, match=r"add_sequence: sequence 3 already exists"):
        cache.add_sequence(3)
    with pytest.raises(KVCacheError, match=r"begin_forward: unknown sequence 4; the cache holds "
                                           r"sequences \[3\] \(add it with add_sequence first\)"):
        cache.begin_forward([3, 4], [1, 1])
    for f in (cache.remove_sequence, cache.seq_length):
        with pytest.raises(KVCacheError, match=r"unknown sequence 8"):
            f(8)
    with pytest.raises(KVCacheError, match=r"sequence 3 appears twice in seq_ids"):
        cache.begin_forward([3, 3], [1, 1])
    with pytest.raises(KVCacheError, match=r"2 sequence ids but 1 append lengths"):
        cache.begin_forward([3, 3], [1])
    with pytest.raises(KVCacheError, match=r"append length -1 for sequence 3 is negative"):
        cache.begin_forward([3], [-1])
    with pytest.raises(KVCacheError, match=r"seq_ids\[0\] must be an integer, got float 1.5"):
        cache.begin_forward([1.5], [1])
    q = np.zeros((2, 4, 16), np.float32)
    kv = np.zeros((2, 2, 16), np.float32)
    with pytest.raises(KVCacheError, match=r"attention: no step has begun"):
        cache.attention(0, q, kv, kv, np.empty_like(q))
    assert cache.seq_length(3) == 0                           # nothing above changed it

    cache.begin_forward([3], [3])                             # T = 3
    with pytest.raises(KVCacheError, match=r"attention\(layer=2\): layer 2 is out of range; the "
                                           r"cache has 2 layers \(0..1\)"):
        cache.attention(2, q, kv, kv, np.empty_like(q))
    with pytest.raises(KVCacheError, match=r"layer -1 is out of range"):
        cache.attention(-1, q, kv, kv, np.empty_like(q))
    with pytest.raises(KVCacheError, match=r"q has shape \(2, 4, 16\); expected \(T, H, D\) = "
                                           r"\(3, H, 16\) with T = 3 tokens in the step"):
        cache.attention(0, q, kv, kv, np.empty_like(q))
    q3, kv3 = np.zeros((3, 4, 16), np.float32), np.zeros((3, 2, 16), np.float32)
    with pytest.raises(KVCacheError, match=r"H a multiple of the cache's 2 kv heads"):
        cache.attention(0, np.zeros((3, 3, 16), np.float32), kv3, kv3, np.zeros((3, 3, 16), np.float32))
    with pytest.raises(KVCacheError, match=r"k has shape \(3, 4, 16\); expected \(T, KV, D\) = "
                                           r"\(3, 2, 16\)"):
        cache.attention(0, q3, q3, kv3, np.empty_like(q3))
    with pytest.raises(KVCacheError, match=r"out has shape \(3, 2, 16\); expected q's shape"):
        cache.attention(0, q3, kv3, kv3, np.empty_like(kv3))
    with pytest.raises(KVCacheError, match=r"q has dtype float64; the cache holds float32"):
        cache.attention(0, q3.astype(np.float64), kv3, kv3, np.empty_like(q3))
    with pytest.raises(KVCacheError, match=r"v has dtype float16 but q float32; q, k, v and out "
                                           r"must be of one dtype"):
        cache.attention(0, q3, kv3, kv3.astype(np.float16), np.empty_like(q3))
    half = PagedKVCache(1, 2, 16, num_pages=4, page_size=4, dtype="bfloat16")
    half.add_sequence(0)
    half.begin_forward([0], [3])
    with pytest.raises(KVCacheError, match=r"k has dtype bfloat16 but q float32; q, k, v and out "
                                           r"must be of one dtype"):
        half.attention(0, q3, kv3.astype(ml_dtypes.bfloat16), kv3, np.empty_like(q3))
    with pytest.raises(KVCacheError, match=r"q has dtype int32; the cache holds bfloat16, and q, "
                                           r"k, v and out must be of one of float32, float16, bfloat16"):
        half.attention(0, q3.astype(np.int32), kv3, kv3, np.empty_like(q3))
    with pytest.raises(KVCacheError, match=r"out \(shape \(3, 4, 16\)\) must be a C-contiguous, "
                                           r"writable array"):
        cache.attention(0, q3, kv3, kv3, np.empty((16, 4, 3), np.float32).T)
    with pytest.raises(KVCacheError, match=r"layer must be an integer, got float"):
        cache.attention(0.0, q3, kv3, kv3, np.empty_like(q3))
    with pytest.raises(KVCacheError, match=r"q must be an array, got list"):
        cache.attention(0, [1], kv3, kv3, np.empty_like(q3))
    cache.attention(0, q3, kv3, kv3, np.empty_like(q3))       # still usable

    cache.add_sequence(4)
    cache.begin_forward([4, 3], [1, 1])
    cache.remove_sequence(4)
    with pytest.raises(KVCacheError, match=r"sequence 4 of the last step was removed; call "
                                           r"begin_forward again"):
        cache.attention(0, q3[:2], kv3[:2], kv3[:2], np.empty_like(q3[:2]))

    with pytest.raises(KVCacheError, match=r"dtype 'float64' is not supported; expected one of "
                                           r"float32, float16, bfloat16"):
        PagedKVCache(1, 1, 16, num_pages=1, dtype="float64")
    with pytest.raises(KVCacheError, match=r"num_pages must be at least 1, got 0"):
        PagedKVCache(1, 1, 16, num_pages=0)


def test_native_checks_keep_memory_safe():
    """The bindings check sizes themselves, whatever the Python wrapper lets through."""
    cache = PagedKVCache(1, 2, 16, num_pages=4, page_size=4)
    cache.add_sequence(0)
    cache.begin_forward([0], [2])
    q, kv = np.zeros((2, 4, 16), np.float32), np.zeros((2, 2, 16), np.float32)
    native = cache._native
    with pytest.raises(KVCacheError, match=r"k must be a C-contiguous array of shape \(2, 2, 16\) "
                                           r"with 4-byte elements; got shape \(2, 2, 8\)"):
        native.attention(0, q, kv[:, :, :8].copy(), kv, np.empty_like(q), 1.0, 0)
    with pytest.raises(KVCacheError, match=r"with 4-byte elements; got shape \(2, 4, 16\) with "
                                           r"2-byte elements"):
        native.attention(0, q.astype(np.float16), kv, kv, np.empty_like(q), 1.0, 0)
    with pytest.raises(KVCacheError, match=r"q has 1 tokens but the step begun by begin_forward has 2"):
        native.attention(0, q[:1], kv[:1], kv[:1], np.empty_like(q[:1]), 1.0, 0)
    with pytest.raises(KVCacheError, match=r"layer 1 is out of range"):
        native.attention(1, q, kv, kv, np.empty_like(q), 1.0, 0)
    with pytest.raises(KVCacheError, match=r"unknown io_dtype code 3"):
        native.attention(0, q, kv, kv, np.empty_like(q), 1.0, 3)


# -- the global functions: what the VM and sessions hand over ----------------------------

def test_global_functions_take_vm_and_session_values():
    f = {name: disco.get_global_func(f"disco.kv.{name}") for name in
         ("create", "add_sequence", "remove_sequence", "begin_forward", "positions", "attention")}
    cache = f["create"](np.int64(1), 2, np.array(16), 8, 4, np.dtype("float16"))
    assert isinstance(cache, PagedKVCache) and cache.dtype == np.float16
    f["add_sequence"](cache, np.int64(0))
    f["add_sequence"](cache, 1)
    model = Model(1, 4, 2, 16, "float16", seed=4)

    def attend(layer, q, k, v):
        out = np.zeros_like(q)
        assert f["attention"](q, k, v, cache, np.array(layer), out) is None
        return out

    for ids, lens in (((0, 1), (3, 5)), (np.array([0, 1]), np.array([1, 1], np.int32)), ([1], [2])):
        f["begin_forward"](cache, ids, lens)
        p1, p2 = f["positions"](cache), f["positions"](cache)
        assert p1 is not p2 and p1.dtype == np.int64
        model.step(list(ids), list(lens), attend)
    np.testing.assert_array_equal(p1, [6, 7])
    f["remove_sequence"](cache, 0)
    assert cache.sequences == [1]
    with pytest.raises(KVCacheError, match=r"disco.kv.begin_forward: expected a PagedKVCache "
                                           r"\(made by disco.kv.create\), got int"):
        f["begin_forward"](3, [0], [1])
    with pytest.raises(KVCacheError, match=r"seq_ids must be a 1-d array of integers, got shape "
                                           r"\(2,\) float64"):
        f["begin_forward"](cache, np.array([1.0, 2.0]), [1, 1])


@pytest.mark.parametrize("with_scale", [False, True])
def test_attention_as_a_vm_plan_specializes_it(with_scale):
    """disco.kv.attention's `specialize` (what a VM plan calls: layer and scale resolved
    once): the reference's outputs over prefill and decode steps, on two layers; a call
    the native kernel refuses raises the general function's descriptive error."""
    from disco.kv_cache import attention
    cache = PagedKVCache(2, 2, 16, num_pages=8, page_size=4, dtype="float32")
    cache.add_sequence(0)
    model = Model(2, 4, 2, 16, "float32", seed=6)
    scale = (0.3,) if with_scale else ()
    fast = {}

    def attend(layer, q, k, v):
        out = np.full(q.shape, np.nan, q.dtype)
        args = [q, k, v, cache, layer, *scale, out]
        if layer not in fast:
            fast[layer] = attention.specialize(args, [True, True, True, True, False] + [False] * len(scale) + [True])
        assert fast[layer] is not None and fast[layer](*args) is None
        return out

    for lens in ((5,), (1,), (1,)):
        cache.begin_forward([0], list(lens))
        model.step([0], list(lens), attend, scale=scale[0] if scale else None)
    # a q the native kernel refuses (not C-contiguous) goes through the general function once
    cache.begin_forward([0], [1])
    model.step([0], [1], lambda layer, q, k, v: attend(layer, np.asfortranarray(q), k, v),
               scale=scale[0] if scale else None)
    q = np.zeros((2, 4, 16), np.float32)                 # 2 tokens, the step has 1
    with pytest.raises(KVCacheError, match=r"q has shape \(2, 4, 16\); expected \(T, H, D\) = \(1, H, 16\)"):
        fast[0](q, q[:, :2], q[:, :2], cache, 0, *scale, np.empty_like(q))
    assert attention.specialize([q, q, q, cache, 0, np.empty_like(q)], [True] * 4 + [True, True]) is None


def test_global_functions_are_found_without_importing_the_module():
    """The VM and session workers look the functions up by name only."""
    import subprocess
    import sys
    code = ("import sys, disco; f = disco.get_global_func('disco.kv.create'); "
            "assert 'disco.kv_cache' in sys.modules; print(type(f(1, 1, 8, 2, 4, 'float32')).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "PagedKVCache"
    assert "disco.kv_cache" not in subprocess.run(
        [sys.executable, "-c", "import sys, disco; print(sorted(sys.modules))"],
        capture_output=True, text=True, timeout=60).stdout        # not imported eagerly


# -- through sessions: each worker holds half the kv heads -------------------------------

@pytest.mark.parametrize("kind", [disco.ThreadedSession, disco.ProcessSession],
                         ids=lambda k: k.__name__)
def test_tensor_parallel_cache_through_a_session(kind):
    """Each of 2 workers makes its own cache of KV/2 heads through the global functions and
    attends with its H/2 q heads; the outputs put together along the heads equal the
    single-worker reference."""
    L, H, KV, D = 2, 8, 4, 16
    model = Model(L, H, KV, D, "float32", seed=6)
    with kind(2) as sess:
        fn = {name: sess.get_global_func(f"disco.kv.{name}") for name in
              ("create", "add_sequence", "begin_forward", "positions", "attention")}
        cache = fn["create"](L, KV // 2, D, 32, 4, "float32")
        for s in (4, 2):
            fn["add_sequence"](cache, s)

        def attend(layer, q, k, v):
            out = sess.scatter(np.zeros_like(q), axis=1)
            fn["attention"](sess.scatter(q, axis=1), sess.scatter(k, axis=1),
                            sess.scatter(v, axis=1), cache, layer, out)
            return sess.gather(out, axis=1)

        for ids, lens in (([4, 2], [6, 9]), ([4, 2], [1, 1]), ((2, 4), np.array([1, 2]))):
            fn["begin_forward"](cache, ids, lens)
            pos = fn["positions"](cache)
            assert pos.fetch(0).tolist() == pos.fetch(1).tolist()
            model.step(list(ids), list(lens), attend)
        assert pos.fetch(1).tolist() == [10, 7, 8]


def test_storage_layout_is_layer_page_head_slot_dim():
    """Each new token's k and v land at [layer, page_table[p // S], kv_head, p % S]."""
    cache = PagedKVCache(2, 3, 8, num_pages=10, page_size=4, dtype="bfloat16")
    keys, values = cache.storage()
    assert keys.shape == (2, 10, 3, 4, 8) and keys.dtype == ml_dtypes.bfloat16
    assert cache.nbytes == keys.nbytes + values.nbytes
    rng = np.random.default_rng(7)
    cache.add_sequence(0)
    cache.add_sequence(1)
    cache.begin_forward([1, 0], [3, 6])
    k = rng.standard_normal((9, 3, 8)).astype(ml_dtypes.bfloat16)
    v = rng.standard_normal((9, 3, 8)).astype(ml_dtypes.bfloat16)
    q = rng.standard_normal((9, 6, 8)).astype(ml_dtypes.bfloat16)
    cache.attention(1, q, k, v, np.empty_like(q))
    for s, rows in ((1, range(0, 3)), (0, range(3, 9))):
        table = cache.page_table(s)
        for p, row in enumerate(rows):
            np.testing.assert_array_equal(keys[1, table[p // 4], :, p % 4], k[row])
            np.testing.assert_array_equal(values[1, table[p // 4], :, p % 4], v[row])
    assert not keys[0].any()                      # layer 0 was not written
    del cache                                     # the arrays keep the storage alive
    assert keys[1].any()

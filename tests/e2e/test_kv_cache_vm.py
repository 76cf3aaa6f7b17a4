"""The paged KV cache called from compiled graph functions, as the model code will: the
cache an `R.Object` parameter, attention by `R.call_dps_packed("disco.kv.attention",
(q, k, v, cache, layer))` with the layer an `R.prim_value`, positions by
`R.call_pure_packed("disco.kv.positions", cache)`; built by compiler.build, run by
disco.VirtualMachine over a prefill and decode steps, checked against numpy."""
from __future__ import annotations

import math

import numpy as np

import compiler
import disco
from compiler import script

H, KV, D = 4, 2, 16

SRC = f'''
@I.ir_module
class Module:
    @R.function
    def attend(q: R.Tensor(("t", {H}, {D}), "float32"), k: R.Tensor(("t", {KV}, {D}), "float32"),
               v: R.Tensor(("t", {KV}, {D}), "float32"), cache: R.Object):
        t = T.int64()
        with R.dataflow():
            o0 = R.call_dps_packed("disco.kv.attention", (q, k, v, cache, R.prim_value(0)),
                                   R.Tensor((t, {H}, {D}), "float32"))
            o1 = R.call_dps_packed("disco.kv.attention", (o0, k, v, cache, R.prim_value(1)),
                                   R.Tensor((t, {H}, {D}), "float32"))
            R.output(o1)
        return o1

    @R.function
    def positions(cache: R.Object):
        with R.dataflow():
            p = R.call_pure_packed("disco.kv.positions", cache, sinfo_args=R.Tensor(ndim=1, dtype="int64"))
            R.output(p)
        return p
'''


def reference(q, keys, values, start):
    group = q.shape[1] // keys.shape[1]
    k = np.repeat(keys.astype(np.float64), group, axis=1)
    v = np.repeat(values.astype(np.float64), group, axis=1)
    s = np.einsum("nhd,lhd->nhl", q, k) / math.sqrt(q.shape[2])
    s = np.where((np.arange(len(keys))[None, :] <= start + np.arange(len(q))[:, None])[:, None], s,
                 -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("nhl,lhd->nhd", p / p.sum(-1, keepdims=True), v)


def test_compiled_functions_drive_the_cache():
    vm = disco.VirtualMachine(compiler.build(script.parse(SRC)))
    cache = disco.get_global_func("disco.kv.create")(2, KV, D, 16, 4, "float32")
    for s in (0, 1):
        disco.get_global_func("disco.kv.add_sequence")(cache, s)
    rng = np.random.default_rng(0)
    hist = {}
    for lens in ([5, 3], [1, 1], [1, 1]):
        disco.get_global_func("disco.kv.begin_forward")(cache, (0, 1), lens)
        T = sum(lens)
        starts = [len(hist[(s, 0)][0]) if (s, 0) in hist else 0 for s in (0, 1)]
        np.testing.assert_array_equal(vm["positions"](cache),
                                      np.concatenate([np.arange(n) + b for b, n in zip(starts, lens)]))
        q = rng.standard_normal((T, H, D), dtype=np.float32)
        k = rng.standard_normal((T, KV, D), dtype=np.float32)
        v = rng.standard_normal((T, KV, D), dtype=np.float32)
        out = vm["attend"](q, k, v, cache)
        row = 0
        for s, n in zip((0, 1), lens):       # layer 0 attends with q, layer 1 with its output
            x = q[row:row + n]
            for layer in (0, 1):
                old_k, old_v = hist.get((s, layer), (k[:0], v[:0]))
                keys, values = (np.concatenate([old_k, k[row:row + n]]),
                                np.concatenate([old_v, v[row:row + n]]))
                hist[(s, layer)] = (keys, values)
                x = reference(x, keys, values, len(old_k)).astype(np.float32)
            np.testing.assert_allclose(out[row:row + n], x, rtol=1e-5, atol=1e-5)
            row += n
    assert cache.seq_length(0) == 7 and cache.seq_length(1) == 5

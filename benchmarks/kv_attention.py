"""Decode attention over the paged KV cache against numpy, side by side in one run.

Decode: one new token per sequence; each layer's attention reads every cached key and
value of every sequence once, so it is memory-bound and measured as bandwidth: bytes of
K/V read per second, next to the bandwidth of a plain numpy copy of a large array
(bytes read + written per second) measured in the same run.

Per case (batch 1 and 8, history 512 and 2048; H=12, KV=4, D=64, float32):
- kernel: `PagedKVCache.attention` for one layer (page_size 16): writes the new token's
  k and v into its page, attends over the whole history;
- numpy: the straightforward vectorized implementation on the same history, held
  contiguously per sequence as (B, KV, L, D) (no page table to follow):
  softmax(q K^T * scale) V with q viewed as (B, KV, H/KV, D) and np.matmul.
Each is timed twice. "cold": over as many layers as fill the working set (default 1 GiB
of K/V per implementation, more than this machine's 480 MiB L3), cycling through them as
a model does, so that the K/V come from memory as in a real decode step. "warm": one
layer again and again, its K/V in cache, which shows the compute cost. The cache's
contents are random (written through `storage()`), the numpy arrays hold the same
values, and the outputs are checked to agree before timing. The load average is printed
with the results: on a shared machine other processes take cores and bandwidth from both
sides alike.

    python benchmarks/kv_attention.py                    # writes results/kv_attention.json
    python benchmarks/kv_attention.py --working-set-mib 256 --repeat 3
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from disco.kv_cache import PagedKVCache  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "kv_attention.json")
H, KV, D, PAGE = 12, 4, 64, 16
CASES = [(1, 512), (1, 2048), (8, 512), (8, 2048)]     # (batch, history)


def copy_bandwidth(nbytes: int, repeat: int = 5) -> float:
    """Bytes read + written per second by np.copyto of an nbytes array (median)."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times)


def numpy_decode(q, K, V, scale):
    """q (B, H, D); K, V (B, KV, L, D): out (B, H, D)."""
    B = q.shape[0]
    qg = q.reshape(B, KV, H // KV, D)
    s = np.matmul(qg, K.transpose(0, 1, 3, 2)) * scale          # (B, KV, G, L)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return np.matmul(p, V).reshape(B, H, D)


def per_call_seconds(calls, repeat: int) -> float:
    """Median over `repeat` passes of (one pass over every call) / len(calls)."""
    for c in calls[: max(1, len(calls) // 4)]:
        c()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for c in calls:
            c()
        times.append((time.perf_counter() - t0) / len(calls))
    return statistics.median(times)


def run_case(batch: int, history: int, working_set: int, repeat: int, rng) -> dict:
    kv_bytes = batch * KV * history * D * 2 * 4          # K and V read per layer
    layers = max(1, math.ceil(working_set / kv_bytes))
    pages_per_seq = math.ceil(history / PAGE)
    cache = PagedKVCache(layers, KV, D, num_pages=batch * pages_per_seq, page_size=PAGE)
    seqs = list(range(batch))
    for s in seqs:
        cache.add_sequence(s)
    cache.begin_forward(seqs, [history - 1] * batch)      # the history, written below
    cache.begin_forward(seqs, [1] * batch)                # the decode step
    keys, values = cache.storage()
    block = rng.standard_normal(1 << 20, dtype=np.float32)  # cheap random fill: tile a block
    for a in (keys, values):
        flat = a.reshape(-1)
        for i in range(0, flat.size, block.size):
            n = min(block.size, flat.size - i)
            flat[i:i + n] = np.roll(block, i // block.size + (a is values))[:n]

    # The numpy baseline's contiguous copy of the same history, per layer: (B, KV, L, D).
    pos = np.arange(history)
    tables = np.array([cache.page_table(s) for s in seqs])            # (B, pages)
    pages = tables[:, pos // PAGE]                                    # (B, L)
    slots = pos % PAGE
    q = rng.standard_normal((batch, H, D), dtype=np.float32)
    k_new = rng.standard_normal((batch, KV, D), dtype=np.float32)
    v_new = rng.standard_normal((batch, KV, D), dtype=np.float32)
    Ks, Vs = [], []
    for layer in range(layers):
        # keys[layer][page, kv_head, slot] for every (b, l): (B, L, KV, D) -> (B, KV, L, D)
        K = keys[layer][pages, :, slots[None, :]].transpose(0, 2, 1, 3).copy()
        V = values[layer][pages, :, slots[None, :]].transpose(0, 2, 1, 3).copy()
        K[:, :, -1], V[:, :, -1] = k_new, v_new           # the new token, as the kernel writes it
        Ks.append(K)
        Vs.append(V)

    scale = 1 / math.sqrt(D)
    out = np.empty_like(q)
    cache.attention(0, q, k_new, v_new, out)
    want = numpy_decode(q, Ks[0], Vs[0], scale)
    err = float(np.abs(out - want).max())
    assert err < 1e-4, f"kernel and numpy differ by {err}"

    row = {"batch": batch, "history": history, "layers": layers, "kv_bytes": kv_bytes,
           "max_abs_diff": err, "threads": cache.num_threads}
    warm_calls = max(8, min(layers, 64))
    for mode, kernel_calls, numpy_calls in (
            ("cold", [lambda l=l: cache.attention(l, q, k_new, v_new, out) for l in range(layers)],
             [lambda l=l: numpy_decode(q, Ks[l], Vs[l], scale) for l in range(layers)]),
            ("warm", [lambda: cache.attention(0, q, k_new, v_new, out)] * warm_calls,
             [lambda: numpy_decode(q, Ks[0], Vs[0], scale)] * warm_calls)):
        kernel = per_call_seconds(kernel_calls, repeat)
        base = per_call_seconds(numpy_calls, repeat)
        row[mode] = {"kernel_s": kernel, "numpy_s": base, "speedup": base / kernel,
                     "kernel_Bps": kv_bytes / kernel, "numpy_Bps": kv_bytes / base}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--working-set-mib", type=int, default=1024,
                    help="K/V bytes cycled through per implementation (default 1024)")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    copy_bw = copy_bandwidth(512 << 20)
    print(f"H={H} KV={KV} D={D} float32, page_size {PAGE}; numpy copy of 512 MiB: "
          f"{copy_bw / 1e9:.1f} GB/s (read + write); load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    print(f"{'batch':>5} {'history':>7} {'K/V MiB':>8} {'mode':>5} {'kernel us':>10} {'numpy us':>9} "
          f"{'speedup':>7} {'kernel GB/s':>11} {'numpy GB/s':>10} {'of copy':>7}")
    rows = []
    for batch, history in CASES:
        r = run_case(batch, history, a.working_set_mib << 20, a.repeat, rng)
        rows.append(r)
        for mode in ("cold", "warm"):
            m = r[mode]
            print(f"{batch:>5} {history:>7} {r['kv_bytes'] / 2**20:>8.1f} {mode:>5} "
                  f"{m['kernel_s'] * 1e6:>10.1f} {m['numpy_s'] * 1e6:>9.1f} {m['speedup']:>6.2f}x "
                  f"{m['kernel_Bps'] / 1e9:>11.2f} {m['numpy_Bps'] / 1e9:>10.2f} "
                  f"{m['kernel_Bps'] / copy_bw:>6.0%}")
    print(f"kernel threads: {rows[0]['threads']}; cold: {rows[0]['layers']}..{rows[-1]['layers']} "
          "layers cycled; 'of copy': the kernel's K/V bytes read per second over the copy's bytes "
          "moved per second; load average now "
          f"{os.getloadavg()[0]:.1f}")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"benchmark": "kv_attention.decode", "H": H, "KV": KV, "D": D, "dtype": "float32",
                   "page_size": PAGE, "copy_Bps": copy_bw, "working_set_bytes": a.working_set_mib << 20,
                   "load_average": os.getloadavg()[0], "cases": rows}, f, indent=1)


if __name__ == "__main__":
    main()

#include "ccl/allreduce.h"

#include <vector>

namespace disco {
namespace ccl {

namespace {

// Region q of a chunk of `len` elements: 64-byte aligned pieces, the last one shorter.
struct Regions {
  size_t part;
  Regions(size_t len, int world, size_t es) {
    const size_t align = 64 / es;
    part = ((len + world - 1) / world + align - 1) / align * align;
  }
  size_t lo(size_t len, int q) const { return std::min(len, part * q); }
  size_t hi(size_t len, int q) const { return std::min(len, part * (q + 1)); }
};

// Every rank's input and output lie in the arenas (communicator.h): reduce this rank's
// region straight from the peers' inputs into its output, then copy the other regions
// from the peers' outputs. The last barrier keeps every rank's arrays untouched until
// its peers have finished reading them.
// The all-gather from the peers' outputs in their arenas: copy the other ranks' regions
// of the `len` elements from element `start` (one chunk, or the whole message).
void gather_from_arenas(Communicator& c, const std::vector<int64_t>& out_off, size_t start, size_t len, size_t es,
                        uint8_t* out, bool stream) {
  const Regions rg(len, c.world(), es);
  for (int q = 0; q < c.world(); ++q) {
    const size_t lo = rg.lo(len, q), hi = rg.hi(len, q), at = (start + lo) * es;
    if (q != c.rank() && hi > lo) copy_out(out + at, c.arena(q) + out_off[q] + at, (hi - lo) * es, stream);
  }
}

// Every rank's input and output lie in the arenas (communicator.h): reduce this rank's
// region straight from the peers' inputs into its output, then copy the other regions
// from the peers' outputs. The last barrier keeps every rank's arrays untouched until
// its peers have finished reading them.
void allreduce_in_arenas(Communicator& c, DType t, Op op, size_t n, size_t es, const std::vector<int64_t>& in_off,
                         const std::vector<int64_t>& out_off, bool in_place, uint8_t* out, bool stream) {
  const int W = c.world(), r = c.rank();
  const Regions rg(n, W, es);
  const size_t lo = rg.lo(n, r), hi = rg.hi(n, r);
  std::vector<const void*> srcs;
  // In place, this rank's own input is read first: reduce() writes the output (its own
  // input here) during the first pass over the first two sources.
  if (in_place) srcs.push_back(c.arena(r) + in_off[r] + lo * es);
  for (int p = 0; p < W; ++p) {
    if (!(in_place && p == r)) srcs.push_back(c.arena(p) + in_off[p] + lo * es);
  }
  if (hi > lo) reduce(t, op, out + lo * es, srcs.data(), W, hi - lo);
  c.barrier(Coll::kAllreduce);
  gather_from_arenas(c, out_off, 0, n, es, out, stream);
  if (stream) stream_fence();
  c.barrier(Coll::kAllreduce);
}

}  // namespace

void allreduce(Communicator& c, Meta m, const void* in_v, void* out_v) {
  m.coll = static_cast<int32_t>(Coll::kAllreduce);
  c.ensure_usable(Coll::kAllreduce);
  const auto* in = static_cast<const uint8_t*>(in_v);
  auto* out = static_cast<uint8_t*>(out_v);
  const int W = c.world(), r = c.rank();
  const size_t es = elem_size(m), n = m.dtype >= 0 ? numel(m) : 0;
  const size_t ce = c.chunk_bytes() / es;  // elements per chunk
  const size_t K = (n + ce - 1) / ce;
  auto len_of = [&](size_t k) { return std::min(ce, n - k * ce); };
  // If out overlaps in, a rank cannot read its own region from `in` while writing
  // `out`; stage its own region too and read it from the slot.
  const bool overlap = out < in + n * es && in < out + n * es;
  auto stage = [&](size_t k) {
    const size_t len = len_of(k);
    const Regions rg(len, W, es);
    for (int q = 0; q < W; ++q) {
      if (q == r && !overlap && n * es > c.options().small_bytes) continue;
      const size_t lo = rg.lo(len, q), hi = rg.hi(len, q);
      std::memcpy(c.wbuf(0) + lo * es, in + (k * ce + lo) * es, (hi - lo) * es);
    }
  };

  // In the arenas (communicator.h), out must be in itself or apart from it.
  const bool big = n * es > c.options().small_bytes;
  if (big && (out == in || !overlap)) {
    m.in_off = c.arena_offset(in, n * es);
    m.out_off = c.arena_offset(out, n * es);
  }
  const bool mine_in_arena = m.in_off >= 0 && m.out_off >= 0;
  c.post(m);
  if (K > 0 && m.dtype >= 0 && !mine_in_arena) stage(0);
  c.barrier(Coll::kAllreduce);
  c.check(m, kCheckDType | kCheckOp | kCheckShape);
  const DType t = static_cast<DType>(m.dtype);
  const Op op = static_cast<Op>(m.op);
  std::vector<const void*> srcs(W);
  const bool stream = c.options().stream_bytes > 0 && n * es >= c.options().stream_bytes;

  if (n * es <= c.options().small_bytes) {  // one barrier: everyone reduces everything
    for (int p = 0; p < W; ++p) srcs[p] = c.rbuf(p, 0);
    if (n > 0) reduce(t, op, out, srcs.data(), W, n);
    ++c.allreduce_paths.one_barrier;
    return;
  }
  std::vector<int64_t> in_off(W), out_off(W);
  int in_arenas = 0, outs_in_arenas = 0;  // ranks with input and output, with output, in their arenas
  for (int p = 0; p < W; ++p) {
    in_off[p] = c.peer_meta(p).in_off;
    out_off[p] = c.peer_meta(p).out_off;
    in_arenas += in_off[p] >= 0 && out_off[p] >= 0;
    outs_in_arenas += out_off[p] >= 0;
  }
  if (in_arenas == W) {
    ++c.allreduce_paths.in_arenas;
    return allreduce_in_arenas(c, t, op, n, es, in_off, out_off, out == in, out, stream);
  }
  if (in_arenas > 0) {  // some ranks skipped staging chunk 0 for nothing: all stage it again
    stage(0);
    c.barrier(Coll::kAllreduce);
  }
  // Every rank's output in the arenas (not every input): reduce straight into `out`, and
  // after the last chunk copy the other regions from the peers' outputs in place, then
  // wait at one more barrier until they are done reading this rank's.
  const bool gather_in_place = outs_in_arenas == W;
  ++(gather_in_place ? c.allreduce_paths.outputs_in_arenas : c.allreduce_paths.staged);
  for (size_t i = 1; i <= K + 1; ++i) {
    if (i < K) stage(i);
    if (i <= K) {  // reduce-scatter step for chunk i-1: reduce my region, publish it
      const size_t k = i - 1, len = len_of(k);
      const Regions rg(len, W, es);
      const size_t lo = rg.lo(len, r), hi = rg.hi(len, r);
      for (int p = 0; p < W; ++p) {
        srcs[p] = (p == r && !overlap) ? in + (k * ce + lo) * es : c.rbuf(p, 0) + lo * es;
      }
      if (hi > lo && gather_in_place) {
        reduce(t, op, out + (k * ce + lo) * es, srcs.data(), W, hi - lo);
      } else if (hi > lo) {  // reduce into my slot (in cache), then copy to `out`
        reduce(t, op, c.wbuf(1) + lo * es, srcs.data(), W, hi - lo);
        copy_out(out + (k * ce + lo) * es, c.wbuf(1) + lo * es, (hi - lo) * es, stream);
      }
    }
    if (i >= 2 && !gather_in_place) {  // all-gather step for chunk i-2: copy the others' reduced regions
      const size_t k = i - 2, len = len_of(k);
      const Regions rg(len, W, es);
      for (int q = 0; q < W; ++q) {
        if (q == r) continue;
        const size_t lo = rg.lo(len, q), hi = rg.hi(len, q);
        copy_out(out + (k * ce + lo) * es, c.rbuf(q, 1) + lo * es, (hi - lo) * es, stream);
      }
    }
    if (i <= K) c.barrier(Coll::kAllreduce);
  }
  if (gather_in_place) {
    for (size_t k = 0; k < K; ++k) gather_from_arenas(c, out_off, k * ce, len_of(k), es, out, stream);
    if (stream) stream_fence();
    c.barrier(Coll::kAllreduce);
    return;
  }
  if (stream) stream_fence();
}

}  // namespace ccl
}  // namespace disco

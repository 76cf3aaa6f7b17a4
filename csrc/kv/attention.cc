#include "kv/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "ccl/dtypes.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

namespace disco {
namespace kv {
namespace {

constexpr int64_t kKeyTile = 32;     // positions folded per online-softmax step (at most)
constexpr int64_t kQueryBlock = 16;  // new tokens of one sequence per work item
// Below this many bytes of keys and values to read, a step runs on the calling thread:
// waking the pool would cost more than it saves. A sleeping helper takes tens of us to
// wake; at 256 KB one sequence's decode at 170 positions (12 layers, 4 KV heads, float32)
// took 1.0 ms a step with a helper against 0.57 ms without (one thread; at two, 0.33-0.74
// with one and 0.53-0.58 without, varying with the OpenMP threads spinning meanwhile).
constexpr int64_t kParallelBytes = 2 << 20;

// The folding loops are compiled three times, for x86-64-v4 (AVX-512: the same 8-wide
// vectors, with 32 registers and the EVEX forms; 6% less time on prefill steps than v3),
// for x86-64-v3 (AVX2, FMA) and for the baseline, and the loader picks the one the CPU runs (GCC's function multiversioning), so the
// build needs no -march flag and its result runs anywhere.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define KV_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KV_CLONES
#endif

// 8 floats: GCC/Clang vector extensions, lowered to AVX or to pairs of SSE registers.
// They are passed only between inlined functions of this file, so the ABI note GCC
// gives for 32-byte vectors without AVX does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float v8 __attribute__((vector_size(32)));

inline v8 load8(const float* p) {
  v8 x;
  std::memcpy(&x, p, sizeof x);  // one unaligned load
  return x;
}

inline void store8(float* p, const v8& x) { std::memcpy(p, &x, sizeof x); }

typedef int32_t i8 __attribute__((vector_size(32)));  // casts to and from v8 keep the bits

// x = exp(x) for 8 floats at once (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a
// degree-6 polynomial for e^r, 2^n put into the exponent bits), within 2 ulp of expf.
// Inputs below -87.3 give about 1e-38 instead of 0 (softmax weights: negligible next to
// the maximum's 1); NaN stays NaN.
inline void exp8(v8& x) {
  const v8 lo = v8{} - 87.3f, hi = v8{} + 88.3f;
  x = (v8)(((i8)lo & (x < lo)) | ((i8)x & ~(x < lo)));  // max(x, lo), keeping NaN
  x = (v8)(((i8)hi & (x > hi)) | ((i8)x & ~(x > hi)));  // min(x, hi)
  const v8 fx = x * 1.44269504088896341f + 0.5f;
  i8 n = __builtin_convertvector(fx, i8);                 // truncates towards zero
  n += (i8)(__builtin_convertvector(n, v8) > fx);         // ... so floor: -1 where above
  const v8 nf = __builtin_convertvector(n, v8);
  const v8 r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  v8 y = 1.9875691500e-4f + v8{};
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.f;
  x = (v8)((i8)y + (n << 23));                            // y * 2^n
}

inline float hsum(const v8& a) {
  return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
}

// {hsum(a), hsum(b), hsum(c), hsum(d)} into out[0..4): pairwise shuffles and adds (a
// transpose of the four), cheaper than four horizontal sums.
inline void sum4(const v8& a, const v8& b, const v8& c, const v8& d, float* out) {
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
  const v8 ab = __builtin_shufflevector(a, b, 0, 8, 1, 9, 4, 12, 5, 13) +
                __builtin_shufflevector(a, b, 2, 10, 3, 11, 6, 14, 7, 15);
  const v8 cd = __builtin_shufflevector(c, d, 0, 8, 1, 9, 4, 12, 5, 13) +
                __builtin_shufflevector(c, d, 2, 10, 3, 11, 6, 14, 7, 15);
  const v8 u = __builtin_shufflevector(ab, cd, 0, 1, 8, 9, 4, 5, 12, 13) +
               __builtin_shufflevector(ab, cd, 2, 3, 10, 11, 6, 7, 14, 15);
  out[0] = u[0] + u[4];
  out[1] = u[1] + u[5];
  out[2] = u[2] + u[6];
  out[3] = u[3] + u[7];
#else
  out[0] = hsum(a);
  out[1] = hsum(b);
  out[2] = hsum(c);
  out[3] = hsum(d);
#endif
}

// out[i] = q . k_i for the n keys k_i = k + i * dim. Eight keys at a time: eight
// independent accumulators keep the FMA units busy (one dot product alone would wait on
// its own additions).
inline void scores(const float* q, const float* k, int64_t n, int64_t dim, float* out) {
  int64_t i = 0;
  if (dim % 8 == 0) {
    for (; i + 8 <= n; i += 8) {
      const float* ki = k + i * dim;
      v8 a[8] = {};
      for (int64_t d = 0; d < dim; d += 8) {
        const v8 qd = load8(q + d);
        for (int j = 0; j < 8; ++j) a[j] += qd * load8(ki + j * dim + d);
      }
      sum4(a[0], a[1], a[2], a[3], out + i);
      sum4(a[4], a[5], a[6], a[7], out + i + 4);
    }
  }
  for (; i < n; ++i) {
    const float* ki = k + i * dim;
    v8 a = {};
    int64_t d = 0;
    for (; d + 8 <= dim; d += 8) a += load8(q + d) * load8(ki + d);
    float sum = hsum(a);
    for (; d < dim; ++d) sum += q[d] * ki[d];
    out[i] = sum;
  }
}

// acc = acc * c + sum_i p[i] * v_i for the n values v_i = v + i * dim. The accumulator is
// held in registers, 64 floats (eight vectors, eight independent chains) at a time.
inline void accumulate(float* acc, float c, const float* p, const float* v, int64_t n, int64_t dim) {
  int64_t d0 = 0;
  for (; d0 + 64 <= dim; d0 += 64) {
    v8 a[8];
    for (int j = 0; j < 8; ++j) a[j] = load8(acc + d0 + 8 * j) * c;
    for (int64_t i = 0; i < n; ++i) {
      const float* vi = v + i * dim + d0;
      for (int j = 0; j < 8; ++j) a[j] += p[i] * load8(vi + 8 * j);
    }
    for (int j = 0; j < 8; ++j) store8(acc + d0 + 8 * j, a[j]);
  }
  for (; d0 + 8 <= dim; d0 += 8) {
    v8 a = load8(acc + d0) * c;
    for (int64_t i = 0; i < n; ++i) a += p[i] * load8(v + i * dim + d0);
    store8(acc + d0, a);
  }
  for (; d0 < dim; ++d0) {
    float a = acc[d0] * c;
    for (int64_t i = 0; i < n; ++i) a += p[i] * v[i * dim + d0];
    acc[d0] = a;
  }
}

// Two query rows against the same n keys (rows of one work item share its keys): each
// key vector is loaded once for both, four keys at a time (8 accumulators, 2 queries, 1
// key: 11 of 16 AVX registers). Each score is summed in the same order as scores().
inline void scores2(const float* q0, const float* q1, const float* k, int64_t n, int64_t dim, float* out0,
                    float* out1) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float* ki = k + i * dim;
    v8 a[4] = {}, b[4] = {};
    for (int64_t d = 0; d < dim; d += 8) {
      const v8 x0 = load8(q0 + d), x1 = load8(q1 + d);
      for (int j = 0; j < 4; ++j) {
        const v8 kj = load8(ki + j * dim + d);
        a[j] += x0 * kj;
        b[j] += x1 * kj;
      }
    }
    sum4(a[0], a[1], a[2], a[3], out0 + i);
    sum4(b[0], b[1], b[2], b[3], out1 + i);
  }
  if (i < n) {
    scores(q0, k + i * dim, n - i, dim, out0 + i);
    scores(q1, k + i * dim, n - i, dim, out1 + i);
  }
}

// accumulate() for two rows over the same n values, 32 floats of each at a time (8
// accumulators): each value vector is loaded once for both. dim % 32 == 0.
inline void accumulate2(float* acc0, float* acc1, float c0, float c1, const float* p0, const float* p1,
                        const float* v, int64_t n, int64_t dim) {
  for (int64_t d0 = 0; d0 < dim; d0 += 32) {
    v8 a[4], b[4];
    for (int j = 0; j < 4; ++j) {
      a[j] = load8(acc0 + d0 + 8 * j) * c0;
      b[j] = load8(acc1 + d0 + 8 * j) * c1;
    }
    for (int64_t i = 0; i < n; ++i) {
      const float* vi = v + i * dim + d0;
      const v8 w0 = v8{} + p0[i], w1 = v8{} + p1[i];
      for (int j = 0; j < 4; ++j) {
        const v8 x = load8(vi + 8 * j);
        a[j] += w0 * x;
        b[j] += w1 * x;
      }
    }
    for (int j = 0; j < 4; ++j) {
      store8(acc0 + d0 + 8 * j, a[j]);
      store8(acc1 + d0 + 8 * j, b[j]);
    }
  }
}

// Online-softmax state of one query row.
struct Row {
  const float* q;   // scaled query, float32
  float* acc;       // sum of p_i * v_i so far
  float max;        // largest score so far
  float sum;        // sum of p_i = exp(score_i - max) so far
  int64_t limit;    // the row attends to positions < limit
};

// The row's scores p[0, valid) become its weights exp(score - new max), p[valid, n)
// zeros; its max and sum are updated; returns the factor c that rescales what was summed
// under the old maximum (0 on the first tile: max = -inf).
inline float softmax_step(Row& row, float* p, int64_t valid, int64_t n) {
  float new_max = row.max;
  for (int64_t i = 0; i < valid; ++i) new_max = std::max(new_max, p[i]);
  const float c = new_max > row.max ? std::exp(row.max - new_max) : 1.f;
  float sum = 0.f;
  int64_t i = 0;
  for (; i + 8 <= valid; i += 8) {
    v8 e = load8(p + i) - new_max;
    exp8(e);
    store8(p + i, e);
    sum += hsum(e);
  }
  for (; i < valid; ++i) sum += p[i] = std::exp(p[i] - new_max);
  for (i = valid; i < n; ++i) p[i] = 0.f;
  row.sum = row.sum * c + sum;
  row.max = new_max;
  return c;
}

// Folds positions [p0, p0 + n) into each row: k and v hold their keys and values, n
// rows of `dim` floats each (read straight from a float32 page, or widened from 16 bits).
// Rows go in pairs (scores2, accumulate2) where dim allows; a pair reads its longer
// row's keys for both, the other row's extra weights being zeros.
KV_CLONES void fold_tile(Row* rows, int64_t nrows, int64_t p0, int64_t n, const float* k, const float* v,
                         int64_t dim) {
  float p[kKeyTile], p1[kKeyTile];
  auto one = [&](Row& row) {
    const int64_t valid = std::min(n, row.limit - p0);  // causal: a new token sees no later one
    if (valid <= 0) return;
    scores(row.q, k, valid, dim, p);
    const float c = softmax_step(row, p, valid, valid);
    accumulate(row.acc, c, p, v, valid, dim);
  };
  int64_t r = 0;
  if (dim % 32 == 0) {
    for (; r + 2 <= nrows; r += 2) {
      Row &a = rows[r], &b = rows[r + 1];
      const int64_t va = std::min(n, a.limit - p0), vb = std::min(n, b.limit - p0);
      if (va <= 0 || vb <= 0) {
        one(a);
        one(b);
        continue;
      }
      const int64_t valid = std::max(va, vb);
      scores2(a.q, b.q, k, valid, dim, p, p1);
      const float ca = softmax_step(a, p, va, valid);
      const float cb = softmax_step(b, p1, vb, valid);
      accumulate2(a.acc, b.acc, ca, cb, p, p1, v, valid, dim);
    }
  }
  for (; r < nrows; ++r) one(rows[r]);
}

KV_CLONES void widen_f16_portable(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = ccl::f16_to_f32(x[i]);
}

#if defined(__GNUC__) && defined(__x86_64__)
// F16C converts 8 halves in one instruction; GCC does not vectorise the bit-twiddling
// conversion above, which made float16 caches slower than float32 ones.
__attribute__((target("avx,f16c"))) void widen_f16_f16c(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
  for (; i < n; ++i) y[i] = ccl::f16_to_f32(x[i]);
}
#endif

void widen_f16(const uint16_t* x, float* y, int64_t n) {
#if defined(__GNUC__) && defined(__x86_64__)
  static const bool f16c = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  if (f16c) return widen_f16_f16c(x, y, n);
#endif
  widen_f16_portable(x, y, n);
}

KV_CLONES void widen_bf16(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = ccl::bf16_to_f32(x[i]);
}

// Storage element types: how to read a run of them as float32 and how to round back.
struct F32 {
  using T = float;
  static const float* widen(const float* x, float*, int64_t) { return x; }  // in place
  static float load(float x) { return x; }
  static float store(float x) { return x; }
};
struct F16 {
  using T = uint16_t;
  static const float* widen(const uint16_t* x, float* buf, int64_t n) { return widen_f16(x, buf, n), buf; }
  static float load(uint16_t x) { return ccl::f16_to_f32(x); }
  static uint16_t store(float x) { return ccl::f32_to_f16(x); }
};
struct BF16 {
  using T = uint16_t;
  static const float* widen(const uint16_t* x, float* buf, int64_t n) { return widen_bf16(x, buf, n), buf; }
  static float load(uint16_t x) { return ccl::bf16_to_f32(x); }
  static uint16_t store(float x) { return ccl::f32_to_bf16(x); }
};

inline void prefetch(const void* p, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(static_cast<const char*>(p) + b);
}

struct WorkItem {
  int64_t entry;    // index into the step
  int64_t kv_head;
  int64_t first;    // new tokens [first, last) of the entry
  int64_t last;
};

// E: the storage's element type (keys, values); I: that of q and out.
template <typename E, typename I>
void attend_item(const AttentionArgs& a, const WorkItem& w) {
  using T = typename E::T;
  using Q = typename I::T;
  const int64_t group = a.num_heads / a.num_kv_heads, dim = a.head_dim, S = a.page_size;
  const StepEntry& e = (*a.step)[w.entry];
  const int32_t* table = (*a.page_tables)[w.entry];
  const int64_t ntok = w.last - w.first, nrows = ntok * group;

  // Scratch: scaled queries and accumulators per row; widened keys and values of a tile.
  std::vector<float> scratch(2 * nrows * dim + 2 * kKeyTile * dim, 0.f);
  float* qf = scratch.data();
  float* acc = qf + nrows * dim;
  float* kbuf = acc + nrows * dim;
  float* vbuf = kbuf + kKeyTile * dim;

  // Row t * group + g: new token first + t, q head kv_head * group + g.
  std::vector<Row> rows(nrows);
  const Q* q = static_cast<const Q*>(a.q);
  for (int64_t t = 0; t < ntok; ++t) {
    const int64_t row = e.row + w.first + t;
    for (int64_t g = 0; g < group; ++g) {
      const int64_t r = t * group + g;
      const Q* src = q + (row * a.num_heads + w.kv_head * group + g) * dim;
      for (int64_t d = 0; d < dim; ++d) qf[r * dim + d] = I::load(src[d]) * a.scale;
      rows[r] = Row{qf + r * dim, acc + r * dim, -std::numeric_limits<float>::infinity(), 0.f,
                    e.start + w.first + t + 1};
    }
  }

  // Tiles of up to kKeyTile positions within one page: a page holds a kv head's positions
  // as one contiguous [slot][dim] block, so a tile is a contiguous run of keys (values).
  const T* keys = static_cast<const T*>(a.keys);
  const T* values = static_cast<const T*>(a.values);
  const int64_t end = e.start + w.last;  // the block's last token sees positions < end
  // The tile starting at position p: its length and its offset in the storage.
  auto tile = [&](int64_t p, int64_t* at) {
    *at = (((int64_t)table[p / S] * a.num_kv_heads + w.kv_head) * S + p % S) * dim;
    return std::min({kKeyTile, end - p, (p / S + 1) * S - p});
  };
  int64_t at;
  int64_t n = tile(0, &at);
  for (int64_t p0 = 0; p0 < end; p0 += n) {
    n = tile(p0, &at);
    if (p0 + n < end) {
      // The next tile is in another page, at an address the hardware prefetcher cannot
      // guess: ask for it now, so that it arrives while this one is folded.
      int64_t next_at;
      const int64_t next_n = tile(p0 + n, &next_at);
      prefetch(keys + next_at, next_n * dim * sizeof(T));
      prefetch(values + next_at, next_n * dim * sizeof(T));
    }
    const float* k = E::widen(keys + at, kbuf, n * dim);
    const float* v = E::widen(values + at, vbuf, n * dim);
    fold_tile(rows.data(), nrows, p0, n, k, v, dim);
  }

  Q* out = static_cast<Q*>(a.out);
  for (int64_t t = 0; t < ntok; ++t) {
    const int64_t row = e.row + w.first + t;
    for (int64_t g = 0; g < group; ++g) {
      const Row& r = rows[t * group + g];
      Q* dst = out + (row * a.num_heads + w.kv_head * group + g) * dim;
      const float inv = 1.f / r.sum;
      for (int64_t d = 0; d < dim; ++d) dst[d] = I::store(r.acc[d] * inv);
    }
  }
}

template <typename E, typename I>
void attend_all(const AttentionArgs& a, ThreadPool& pool) {
  std::vector<WorkItem> items;
  int64_t bytes = 0;  // keys and values read, summed over items
  for (int64_t i = 0; i < (int64_t)a.step->size(); ++i) {
    const StepEntry& e = (*a.step)[i];
    for (int64_t first = 0; first < e.count; first += kQueryBlock) {
      const int64_t last = std::min(e.count, first + kQueryBlock);
      for (int64_t h = 0; h < a.num_kv_heads; ++h) items.push_back({i, h, first, last});
      bytes += (e.start + last) * a.num_kv_heads * a.head_dim * 2 * (int64_t)sizeof(typename E::T);
    }
  }
  // Longest histories first, so that the last items to start are the short ones.
  std::stable_sort(items.begin(), items.end(), [&](const WorkItem& x, const WorkItem& y) {
    return (*a.step)[x.entry].start + x.last > (*a.step)[y.entry].start + y.last;
  });
  auto run = [&](int64_t i) { attend_item<E, I>(a, items[i]); };
  if (bytes < kParallelBytes) {
    for (int64_t i = 0; i < (int64_t)items.size(); ++i) run(i);
  } else {
    pool.parallel_for((int64_t)items.size(), run);
  }
}

template <typename E>
void attend_io(const AttentionArgs& a, ThreadPool& pool) {
  switch (a.io_dtype) {
    case DType::kF32: return attend_all<E, F32>(a, pool);
    case DType::kF16: return attend_all<E, F16>(a, pool);
    case DType::kBF16: return attend_all<E, BF16>(a, pool);
  }
}

}  // namespace

void attend(const AttentionArgs& a, ThreadPool& pool) {
  switch (a.dtype) {
    case DType::kF32: return attend_io<F32>(a, pool);
    case DType::kF16: return attend_io<F16>(a, pool);
    case DType::kBF16: return attend_io<BF16>(a, pool);
  }
}

}  // namespace kv
}  // namespace disco

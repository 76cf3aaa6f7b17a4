// The matmul and embedding kernels, written once over simd.h's vectors and included by
// each isa_*.cc, which compiles them for one instruction set. See kernels.h for what
// they compute and how the work is split. Internal linkage throughout (see simd.h).
#pragma once

#include <cstdlib>
#include <cstring>

#include "cpu_kernels/formats.h"
#include "cpu_kernels/kernels.h"
#include "cpu_kernels/simd.h"

namespace disco {
namespace cpu {
namespace {

// ---- reading one block of 32 weights of a row as kNV vectors of float32 ----
//
// Block formats keep an fp16 scale (and minimum) in every block. Converting them one
// block at a time would cost as many vector instructions as the weights themselves, so
// the scales of kScaleRun blocks of a row are converted together (one gather) into
// small float arrays first; a block then broadcasts its own from memory.

constexpr int64_t kScaleRun = 16;

template <Format F>
struct Decode;

// Float formats: no scales.
struct Unscaled {
  static constexpr bool kScaled = false;
  static constexpr bool kPairs = false;
  static void scales(const uint8_t*, int64_t, int64_t, float*, float*) {}
};

template <>
struct Decode<Format::kF32> : Unscaled {
  static void block(const uint8_t* row, int64_t b, const float*, const float*, V out[kNV]) {
    const float* p = reinterpret_cast<const float*>(row) + 32 * b;
    for (int v = 0; v < kNV; ++v) out[v] = vload(p + v * kW);
  }
  static float at(const uint8_t* row, int64_t i) { float f; std::memcpy(&f, row + 4 * i, 4); return f; }
};

template <>
struct Decode<Format::kF16> : Unscaled {
  static void block(const uint8_t* row, int64_t b, const float*, const float*, V out[kNV]) {
    for (int v = 0; v < kNV; ++v) out[v] = load_f16(row + 2 * (32 * b + v * kW));
  }
  static float at(const uint8_t* row, int64_t i) { return f16_scalar(load_u16(row + 2 * i)); }
};

// bfloat16: `block` in order (dequantized rows), `block_pairs` for the matmul: each
// 2 kW weights as their even-indexed, then their odd-indexed ones (load_bf16_pairs),
// multiplied into x reordered the same way once per call (pair_split).
template <>
struct Decode<Format::kBF16> : Unscaled {
  static constexpr bool kPairs = true;
  static void block(const uint8_t* row, int64_t b, const float*, const float*, V out[kNV]) {
    for (int v = 0; v < kNV; ++v) out[v] = load_bf16(row + 2 * (32 * b + v * kW));
  }
  static void block_pairs(const uint8_t* row, int64_t b, V out[kNV]) {
    for (int v = 0; v < kNV; v += 2) load_bf16_pairs(row + 2 * (32 * b + v * kW), out[v], out[v + 1]);
  }
  static float at(const uint8_t* row, int64_t i) {
    const uint32_t u = (uint32_t)load_u16(row + 2 * i) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

// Block formats: scales(row, b0, count, d, m) fills d[j] and m[j] for blocks b0 + j,
// w = q * d + m: m unused (Q8_0, kMinus8 false: the gathered word's high half is not a
// minimum), -8 d (Q4_0, kMinus8) or the stored minimum (Q4_1: the fp16 after d).
template <int kBytes, bool kMinus8>
struct Scaled {
  static constexpr bool kScaled = true;
  static constexpr bool kPairs = false;
  static void scales(const uint8_t* row, int64_t b0, int64_t count, float* d, float* m) {
    const uint8_t* p = row + kBytes * b0;
    if (count == kScaleRun) {
      gather_halves16<kBytes>(p, d, m);   // the word at the block's start: d, then m (Q4_1)
    } else {
      for (int64_t j = 0; j < count; ++j) {
        d[j] = f16_scalar(load_u16(p + kBytes * j));
        m[j] = f16_scalar(load_u16(p + kBytes * j + 2));
      }
    }
    if (kMinus8) for (int64_t j = 0; j < count; ++j) m[j] = -8.f * d[j];
  }
  static float at(const uint8_t*, int64_t) { return 0.f; }  // no tails: k is whole blocks
};

template <>
struct Decode<Format::kQ8_0> : Scaled<34, false> {  // fp16 d, int8 q[32]
  static void block(const uint8_t* row, int64_t b, const float* d, const float*, V out[kNV]) {
    const uint8_t* blk = row + 34 * b;
    const V dv = vset1(*d);
    for (int v = 0; v < kNV; ++v) out[v] = vmul(load_i8(blk + 2 + v * kW), dv);
  }
};

template <>
struct Decode<Format::kQ4_0> : Scaled<18, true> {  // fp16 d, 16 bytes of nibbles
  static void block(const uint8_t* row, int64_t b, const float* d, const float* m, V out[kNV]) {
    const V dv = vset1(*d), mv = vset1(*m);
    load_nibbles(row + 18 * b + 2, out);
    for (int v = 0; v < kNV; ++v) out[v] = vfma(out[v], dv, mv);
  }
};

template <>
struct Decode<Format::kQ4_1> : Scaled<20, false> {  // fp16 d, fp16 m, 16 bytes of nibbles
  static void block(const uint8_t* row, int64_t b, const float* d, const float* m, V out[kNV]) {
    const V dv = vset1(*d), mv = vset1(*m);
    load_nibbles(row + 20 * b + 4, out);
    for (int v = 0; v < kNV; ++v) out[v] = vfma(out[v], dv, mv);
  }
};

// Bytes of a block of 32 weights in format F.
template <Format F>
constexpr int64_t kBlockBytes = F == Format::kF32 ? 128 : F == Format::kF16 || F == Format::kBF16 ? 64
                              : F == Format::kQ8_0 ? 34 : F == Format::kQ4_0 ? 18 : 20;

// ---- register tiles ----

// Tile sizes: NR rows of W by MR rows of x, NR * MR accumulators held in registers
// (32 vector registers with AVX-512, 16 otherwise, with room for a decoded block).
#if defined(DISCO_SIMD_AVX512)
constexpr int decode_nr(int mr) { return mr <= 2 ? 8 : mr <= 4 ? 4 : 2; }
constexpr int kPrefillNR = 4, kPrefillMR = 4;
#else
constexpr int decode_nr(int mr) { return mr <= 1 ? 4 : mr <= 4 ? 2 : 1; }
constexpr int kPrefillNR = 2, kPrefillMR = 4;
#endif

// y[i * ldy + r] = sum_t x[i * k + t] * W_r[t] for r < NR, i < MR, with W_r the row at
// w + r * ws in format F. Blocks of 32: each row's block is decoded once into registers
// and multiplied into the MR accumulators of that row; the k % 32 tail (float formats
// only) is added in scalar code.
template <Format F, int NR, int MR>
void tile(const uint8_t* w, int64_t ws, const float* x, int64_t k, float* y, int64_t ldy) {
  V acc[NR][MR];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) acc[r][i] = vzero();
  const int64_t nb = k / 32;
  alignas(64) float ds[NR][kScaleRun], ms[NR][kScaleRun];
  for (int64_t b0 = 0; b0 < nb; b0 += kScaleRun) {
    const int64_t run = nb - b0 < kScaleRun ? nb - b0 : kScaleRun;
    if (Decode<F>::kScaled)
      for (int r = 0; r < NR; ++r) Decode<F>::scales(w + r * ws, b0, run, ds[r], ms[r]);
    for (int64_t j = 0; j < run; ++j) {
      const int64_t b = b0 + j;
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        // The same block of the next tile's rows: a thread's rows are one contiguous
        // range, and the next tile follows this one. Rows are short (a few hundred bytes
        // in 4 bits), too short for the hardware prefetcher to follow NR of them at once.
        const uint8_t* ahead = w + (NR + r) * ws + b * kBlockBytes<F>;
        __builtin_prefetch(ahead);
        if (kBlockBytes<F> > 64) __builtin_prefetch(ahead + 64);
        V wv[kNV];
        if constexpr (Decode<F>::kPairs) Decode<F>::block_pairs(w + r * ws, b, wv);
        else Decode<F>::block(w + r * ws, b, &ds[r][j], &ms[r][j], wv);
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
          const float* xi = x + i * k + 32 * b;
#pragma GCC unroll 4
          for (int v = 0; v < kNV; ++v) acc[r][i] = vfma(wv[v], vload(xi + v * kW), acc[r][i]);
        }
      }
    }
  }
  for (int r = 0; r < NR; ++r) {
    for (int i = 0; i < MR; ++i) {
      float s = vhsum(acc[r][i]);
      for (int64_t t = nb * 32; t < k; ++t) s += Decode<F>::at(w + r * ws, t) * x[i * k + t];
      y[i * ldy + r] = s;
    }
  }
}

// Rows [j0, j1) of W against MR rows of x, NR rows of W at a time.
template <Format F, int NR, int MR>
void tile_run(const uint8_t* w, int64_t ws, const float* x, int64_t k, float* y, int64_t ldy, int64_t j0,
              int64_t j1) {
  int64_t j = j0;
  for (; j + NR <= j1; j += NR) tile<F, NR, MR>(w + j * ws, ws, x, k, y + j, ldy);
  for (; j < j1; ++j) tile<F, 1, MR>(w + j * ws, ws, x, k, y + j, ldy);
}

// ---- matmul ----

// body(i) for i in [0, n), split statically over nt OpenMP threads. With one thread the
// loop runs here without entering OpenMP at all: even `parallel if (false)` sets up a
// team (a few hundred ns), and a decode step makes hundreds of small calls.
template <class Body>
void parallel_for(int64_t n, int nt, const Body& body) {
  if (nt <= 1) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t i = 0; i < n; ++i) body(i);
}

// x[m][k] with each group of 2 kW elements of its whole blocks reordered as its even-,
// then its odd-indexed elements (the order of Decode::block_pairs); the k % 32 tail as is.
void pair_split(const float* x, int64_t m, int64_t k, float* out) {
  const int64_t whole = k / 32 * 32;
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * k;
    float* oi = out + i * k;
    for (int64_t g = 0; g < whole; g += 2 * kW)
      for (int j = 0; j < kW; ++j) {
        oi[g + j] = xi[g + 2 * j];
        oi[g + kW + j] = xi[g + 2 * j + 1];
      }
    for (int64_t t = whole; t < k; ++t) oi[t] = xi[t];
  }
}

// Decode shapes: all m (<= 8) rows of x against each tile of W, decoded in registers.
template <Format F, int MR>
void matmul_small(const MatmulArgs& a) {
  constexpr int NR = decode_nr(MR);
  const int64_t tiles = (a.n + NR - 1) / NR;
  const float* x = a.x;
  float* split = nullptr;
  if (Decode<F>::kPairs) {  // x reordered once, read for every row of W
    split = static_cast<float*>(std::malloc(sizeof(float) * a.m * a.k));
    if (split == nullptr) throw KernelError("cpu_matmul_nt: out of memory for x (" + std::to_string(a.m * a.k) + " floats)");
    pair_split(a.x, a.m, a.k, split);
    x = split;
  }
  parallel_for(tiles, a.num_threads, [&a, x](int64_t t) {
    const int64_t j0 = t * NR, j1 = j0 + NR < a.n ? j0 + NR : a.n;
    tile_run<F, NR, MR>(a.w, a.w_stride, x, a.k, a.y, a.n, j0, j1);
  });
  std::free(split);
}

template <Format F>
void dequant_row(const uint8_t* row, int64_t k, float* out) {
  const int64_t nb = k / 32;
  alignas(64) float ds[kScaleRun], ms[kScaleRun];
  for (int64_t b0 = 0; b0 < nb; b0 += kScaleRun) {
    const int64_t run = nb - b0 < kScaleRun ? nb - b0 : kScaleRun;
    if (Decode<F>::kScaled) Decode<F>::scales(row, b0, run, ds, ms);
    for (int64_t j = 0; j < run; ++j) {
      V v[kNV];
      Decode<F>::block(row, b0 + j, &ds[j], &ms[j], v);
      for (int t = 0; t < kNV; ++t) vstore(out + 32 * (b0 + j) + t * kW, v[t]);
    }
  }
  for (int64_t t = nb * 32; t < k; ++t) out[t] = Decode<F>::at(row, t);
}

// kPrefillMR rows of x (fewer at the end) against rows [0, rows) of a float32 panel.
template <int MR>
void panel_rows(const uint8_t* panel, int64_t ps, const float* x, int64_t k, float* y, int64_t ldy, int64_t rows) {
  tile_run<Format::kF32, kPrefillNR, MR>(panel, ps, x, k, y, ldy, 0, rows);
}

constexpr int64_t kPanel = 16;  // rows of W converted to float32 at a time (prefill)

// Prefill shapes: each thread converts a panel of kPanel rows of W into float32 once
// (float32 weights are read in place) and multiplies every row of x into it.
template <Format F>
void matmul_large(const MatmulArgs& a) {
  const int64_t panels = (a.n + kPanel - 1) / kPanel;
  const int nt = a.num_threads;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    float* buf = nullptr;
    if (F != Format::kF32) buf = static_cast<float*>(std::malloc(sizeof(float) * kPanel * a.k));
#pragma omp for schedule(static)
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t j0 = p * kPanel, rows = j0 + kPanel < a.n ? kPanel : a.n - j0;
      const uint8_t* panel = a.w + j0 * a.w_stride;
      int64_t ps = a.w_stride;
      if (F != Format::kF32) {
        for (int64_t r = 0; r < rows; ++r) dequant_row<F>(a.w + (j0 + r) * a.w_stride, a.k, buf + r * a.k);
        panel = reinterpret_cast<const uint8_t*>(buf);
        ps = 4 * a.k;
      }
      int64_t i = 0;
      for (; i + kPrefillMR <= a.m; i += kPrefillMR)
        panel_rows<kPrefillMR>(panel, ps, a.x + i * a.k, a.k, a.y + i * a.n + j0, a.n, rows);
      const float* xi = a.x + i * a.k;
      float* yi = a.y + i * a.n + j0;
      switch (a.m - i) {
        case 3: panel_rows<3>(panel, ps, xi, a.k, yi, a.n, rows); break;
        case 2: panel_rows<2>(panel, ps, xi, a.k, yi, a.n, rows); break;
        case 1: panel_rows<1>(panel, ps, xi, a.k, yi, a.n, rows); break;
        default: break;
      }
    }
    std::free(buf);
  }
}

template <Format F>
void matmul_format(const MatmulArgs& a) {
  switch (a.m) {
    case 0: return;
    case 1: return matmul_small<F, 1>(a);
    case 2: return matmul_small<F, 2>(a);
    case 3: return matmul_small<F, 3>(a);
    case 4: return matmul_small<F, 4>(a);
    case 5: return matmul_small<F, 5>(a);
    case 6: return matmul_small<F, 6>(a);
    case 7: return matmul_small<F, 7>(a);
    case 8: return matmul_small<F, 8>(a);
    default: return matmul_large<F>(a);
  }
}

void matmul_nt_impl(const MatmulArgs& a) {
  switch (a.format) {
    case Format::kF32: return matmul_format<Format::kF32>(a);
    case Format::kF16: return matmul_format<Format::kF16>(a);
    case Format::kBF16: return matmul_format<Format::kBF16>(a);
    case Format::kQ8_0: return matmul_format<Format::kQ8_0>(a);
    case Format::kQ4_0: return matmul_format<Format::kQ4_0>(a);
    case Format::kQ4_1: return matmul_format<Format::kQ4_1>(a);
  }
}

// ---- embedding ----

template <Format F>
void embedding_format(const EmbeddingArgs& a) {
  parallel_for(a.rows, a.num_threads, [&a](int64_t r) {
    if (a.ids[r] < 0) std::memset(a.out + r * a.k, 0, sizeof(float) * a.k);  // masked: another slice's row
    else dequant_row<F>(a.w + a.ids[r] * a.w_stride, a.k, a.out + r * a.k);
  });
}

void embedding_impl(const EmbeddingArgs& a) {
  switch (a.format) {
    case Format::kF32: return embedding_format<Format::kF32>(a);
    case Format::kF16: return embedding_format<Format::kF16>(a);
    case Format::kBF16: return embedding_format<Format::kBF16>(a);
    case Format::kQ8_0: return embedding_format<Format::kQ8_0>(a);
    case Format::kQ4_0: return embedding_format<Format::kQ4_0>(a);
    case Format::kQ4_1: return embedding_format<Format::kQ4_1>(a);
  }
}

}  // namespace
}  // namespace cpu
}  // namespace disco

// Matmuls of several rows on Intel AMX (Sapphire Rapids and later): bfloat16 tile
// products with float32 accumulation, about 16 times the multiply-adds per cycle of
// AVX-512 FMA.
//
// Used for bfloat16 weights with more than kMinRows rows of x (prefill, batched decode);
// every other call goes to the AVX-512 kernels. The weights are bfloat16 already; x is
// split into bfloat16 parts x = x0 + x1 + x2 (x0 rounded, x1 the rounded remainder, ...),
// which hold float32 x exactly, so every product is the exact product of float32 x and
// the weight, summed in float32: the numerics of the AVX-512 kernel, at 3 tile products
// per pair of tiles. DISCO_CPU_AMX_X_TERMS=1 keeps x0 only (x rounded to bfloat16, as a
// bfloat16 model computes; 3x the products per second), 2 keeps 16 bits.
//
//   y[m, n] = x[m, k] @ W[n, k]^T:  C tile (16 rows of x by 16 columns of W, float32)
//                                   += A tile (16 rows of x by 32 k, bfloat16)
//                                    * B tile (32 k by 16 columns, in pairs of k: "VNNI")
//
// More than kFewRows rows: each thread takes panels of 32 columns (rows of W), rearranges
// the panel into B tiles (a 16 x 16 transpose of 32-bit pairs per tile, zeros past n and
// k), and runs 2 x 2 tiles of C over all rows of x. Fewer: W is read in place as A tiles
// and x^T is the B side (below). C tiles go straight into y where whole, through a small
// buffer at the edges.
#include "cpu_kernels/kernels.h"

#if defined(DISCO_CPU_HAVE_AMX)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#endif

namespace disco {
namespace cpu {

const IsaKernels* isa_avx512();

#if defined(DISCO_CPU_HAVE_AMX)
namespace {

// At most kMinRows rows of x: the AVX-512 kernels (batch-1 decode, memory bound: at one
// row they take 0.7-1.1x the AMX time, results/amx_matmul.json). Up to kFewRows: W read in
// place, since rearranging it would cost more than the products (at 8 rows AMX takes
// 1/1.3-1/2.3 of the AVX-512 time). More: W rearranged per panel, reused over all rows.
constexpr int64_t kMinRows = 4;
constexpr int64_t kFewRows = 32;
// Float32 weights: past this many rows (below, the AVX-512 kernel reads W at memory speed).
constexpr int64_t kMinRowsF32 = 8;

// Linux hands out the 8 KB of tile state only to processes that ask (arch_prctl).
bool os_allows_amx() {
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
}

// Tiles 0-3: C[i][j] (x tile i, W tile j) at 2 * i + j; 4, 5: A (x); 6, 7: B (W). All 16
// rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int t = 0; t < 8; ++t) colsb[t] = 64, rows[t] = 16;
  }
};

struct TileScope {  // the configuration for this thread, released after (the OS then
  TileScope() {     // need not save the 8 KB of tiles when it switches threads)
    static const TileConfig config;
    _tile_loadconfig(&config);
  }
  ~TileScope() { _tile_release(); }
};

// 16 x 16 32-bit transpose in registers: r[i] holds row i on entry, column i on exit.
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // r[4q + c] now holds, in each 128-bit lane L, column c of the 4 x 4 block of rows
  // 4q..4q+3 in lane L. Gather the lanes: first pairs of row groups, then all four.
  for (int c = 0; c < 4; ++c) {
    t[c] = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x88);       // lanes 0, 2 of rows 0-3 | 4-7
    t[4 + c] = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xdd);   // lanes 1, 3
    t[8 + c] = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x88);
    t[12 + c] = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xdd);
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0x88);        // lane 0: columns c
    r[8 + c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0xdd);    // lane 2: columns 8 + c
    r[4 + c] = _mm512_shuffle_i32x4(t[4 + c], t[12 + c], 0x88);  // lane 1
    r[12 + c] = _mm512_shuffle_i32x4(t[4 + c], t[12 + c], 0xdd);  // lane 3
  }
}

// The 32 bfloat16 at p (the first `valid` of them; zeros after), as 16 pairs.
inline __m512i load_bf16x32(const uint8_t* p, int64_t valid) {
  if (valid >= 32) return _mm512_loadu_si512(p);
  if (valid <= 0) return _mm512_setzero_si512();
  return _mm512_maskz_loadu_epi16((__mmask32)((1ull << valid) - 1), p);
}

// B tiles of the panel of W rows [j0, j0 + 32): out[(kb * 2 + t) * 256 + 16 * r + c] (as
// 32-bit pairs) = W[j0 + 16 t + c][32 kb + 2 r .. + 1], zero past n and k.
void pack_panel_bf16(const MatmulArgs& a, int64_t j0, int64_t kblocks, uint32_t* out) {
  __m512i r[16];
  for (int64_t kb = 0; kb < kblocks; ++kb) {
    const int64_t valid = a.k - 32 * kb;
    for (int t = 0; t < 2; ++t) {
      for (int c = 0; c < 16; ++c) {
        const int64_t row = j0 + 16 * t + c;
        r[c] = row < a.n ? load_bf16x32(a.w + row * a.w_stride + 64 * kb, valid) : _mm512_setzero_si512();
      }
      transpose16(r);
      uint32_t* dst = out + (kb * 2 + t) * 256;
      for (int c = 0; c < 16; ++c) _mm512_store_si512(dst + 16 * c, r[c]);
    }
  }
}

// The float32 of 32 bfloat16 (as produced by _mm512_cvtne2ps_pbh(hi, lo)): lo, hi halves.
inline void bf16x32_to_f32(__m512i b, __m512& lo, __m512& hi) {
  lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(b)), 16));
  hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(b, 1)), 16));
}

// 32 float32 (lo: the first 16, hi: the rest) -> `parts` bfloat16 vectors of 32: part 0
// is the value rounded, part p + 1 the rounded remainder of part p. The remainders are
// exact in float32, and three parts hold all 24 bits of a float32 (bfloat16 has its
// exponent range; parts below 2^-126 are lost, as AMX reads bfloat16 denormals as 0).
inline void split_bf16(__m512 lo, __m512 hi, int parts, __m512i* out) {
  for (int p = 0; p < parts; ++p) {
    out[p] = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
    if (p + 1 < parts) {
      __m512 blo, bhi;
      bf16x32_to_f32(out[p], blo, bhi);
      lo = _mm512_sub_ps(lo, blo);
      hi = _mm512_sub_ps(hi, bhi);
    }
  }
}

// The 32 float32 at p (the first `valid` of them; zeros after) as lo, hi halves.
inline void load_f32x32(const float* p, int64_t valid, __m512& lo, __m512& hi) {
  if (valid >= 32) {
    lo = _mm512_loadu_ps(p);
    hi = _mm512_loadu_ps(p + 16);
  } else if (valid <= 0) {
    lo = hi = _mm512_setzero_ps();
  } else {
    const int64_t l = valid < 16 ? valid : 16, h = valid - l;
    lo = _mm512_maskz_loadu_ps((__mmask16)((1u << l) - 1), p);
    hi = _mm512_maskz_loadu_ps((__mmask16)((1u << h) - 1), p + 16);
  }
}

// x[m][k] float32 -> `terms` planes of bfloat16 rows of kp elements (k rounded up to 32),
// rows up to mp zero: plane p is part p of split_bf16.
void convert_x(const MatmulArgs& a, int64_t mp, int64_t kp, int terms, uint16_t* xb) {
  const int64_t plane = mp * kp;
  for (int64_t i = 0; i < mp; ++i) {
    if (i >= a.m) {
      for (int p = 0; p < terms; ++p) std::memset(xb + p * plane + i * kp, 0, 2 * kp);
      continue;
    }
    const float* src = a.x + i * a.k;
    for (int64_t t = 0; t < kp; t += 32) {
      __m512 lo, hi;
      load_f32x32(src + t, a.k - t, lo, hi);
      __m512i parts[3];
      split_bf16(lo, hi, terms, parts);
      for (int p = 0; p < terms; ++p) _mm512_storeu_si512(xb + p * plane + i * kp + t, parts[p]);
    }
  }
}

// ---- float32 weights: W split like x ----
//
// W = W0 + W1 + W2 and x = x0 + x1 + x2 (split_bf16): of the nine products Wq xp the six
// with p + q <= 2 are summed. Those left out are below 2^-24 |w| |x|, the size of
// float32's own rounding of one product, so the result is float32's to within its error
// bound ("bf16x6": Henry, Tang and Heinecke, "Leveraging the bfloat16 Artificial
// Intelligence Datatype For Higher-Precision Computations", 2019), at 6 tile products
// per pair of tiles against AVX-512's one FMA per 16 products. With x rounded to
// bfloat16 (DISCO_CPU_AMX_X_TERMS=1): the three parts of W against x0.

// The six products Wq xp with p + q <= 2 (p < terms) into the C tiles: hold_w(q) loads
// W part q into its tile registers, hold_x(p) x part p, mul() multiplies what is held.
// Ordered so that each load replaces one held set: 16 tile loads for 24 products.
template <class HoldW, class HoldX, class Mul>
inline void six_products(int terms, const HoldW& hold_w, const HoldX& hold_x, const Mul& mul) {
  hold_w(0);
  for (int p = terms - 1; p >= 0; --p) hold_x(p), mul();  // W0 x2, W0 x1, W0 x0
  hold_w(1), mul();                                       // W1 x0
  hold_w(2), mul();                                       // W2 x0
  if (terms > 1) hold_w(1), hold_x(1), mul();             // W1 x1
}

// B tiles of the panel of W rows [j0, j0 + 32) (float32), one set per part of W: part q
// at out + q * 512 * kblocks, each laid out as pack_panel_bf16's.
void pack_panel_f32(const MatmulArgs& a, int64_t j0, int64_t kblocks, uint32_t* out) {
  __m512i parts[3][16], r[16];
  for (int64_t kb = 0; kb < kblocks; ++kb) {
    const int64_t valid = a.k - 32 * kb;
    for (int t = 0; t < 2; ++t) {
      for (int c = 0; c < 16; ++c) {
        const int64_t row = j0 + 16 * t + c;
        const float* src = row < a.n ? reinterpret_cast<const float*>(a.w + row * a.w_stride) + 32 * kb : nullptr;
        __m512 lo, hi;
        load_f32x32(src, src ? valid : 0, lo, hi);
        __m512i p3[3];
        split_bf16(lo, hi, 3, p3);
        for (int q = 0; q < 3; ++q) parts[q][c] = p3[q];
      }
      for (int q = 0; q < 3; ++q) {
        for (int c = 0; c < 16; ++c) r[c] = parts[q][c];
        transpose16(r);
        uint32_t* dst = out + q * 512 * kblocks + (kb * 2 + t) * 256;
        for (int c = 0; c < 16; ++c) _mm512_store_si512(dst + 16 * c, r[c]);
      }
    }
  }
}

// C tile `T` into y rows [i0, i0 + 16) x columns [j0, j0 + 16), clipped to m x n. A macro:
// the tile intrinsics take their register number as a literal.
#define DISCO_STORE_C(T, a, i0, j0)                                   \
  do {                                                               \
    if ((i0) + 16 <= (a).m && (j0) + 16 <= (a).n) {                  \
      _tile_stored(T, (a).y + (i0) * (a).n + (j0), 4 * (a).n);       \
    } else if ((i0) < (a).m && (j0) < (a).n) {                       \
      alignas(64) float edge[16 * 16];                               \
      _tile_stored(T, edge, 64);                                     \
      copy_edge(a, edge, i0, j0);                                    \
    }                                                                \
  } while (0)

// The part of a 16 x 16 tile of y at (i0, j0) that lies inside m x n.
void copy_edge(const MatmulArgs& a, const float* edge, int64_t i0, int64_t j0) {
  const int64_t rows = a.m - i0 < 16 ? a.m - i0 : 16, cols = a.n - j0 < 16 ? a.n - j0 : 16;
  for (int64_t i = 0; i < rows; ++i) std::memcpy(a.y + (i0 + i) * a.n + j0, edge + 16 * i, 4 * cols);
}

// y for the 32 columns of one packed panel, over rows [i_begin, i_end) of x (whole tiles
// of 16, two at a time, the last alone if odd): per block of k, each plane of each x tile
// against the panel's two B tiles; with W in three parts (float32 W), six_products.
void panel_product(const MatmulArgs& a, const uint16_t* xb, int64_t mp, int64_t kp, int terms,
                   const uint32_t* panel, int wterms, int64_t j0, int64_t i_begin, int64_t i_end) {
  const int64_t kblocks = kp / 32, xstride = 2 * kp, plane = mp * kp, wplane = 512 * kblocks;
  for (int64_t i0 = i_begin; i0 < i_end; i0 += 32) {
    const bool two = i0 + 16 < i_end;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t kb = 0; kb < kblocks; ++kb) {
      const uint32_t* b = panel + kb * 512;
      const uint16_t* x0 = xb + i0 * kp + 32 * kb;
      auto load_w = [&](int q) {
        _tile_loadd(6, b + q * wplane, 64);
        _tile_loadd(7, b + q * wplane + 256, 64);
      };
      auto load_x = [&](int p) {
        _tile_loadd(4, x0 + p * plane, xstride);
        if (two) _tile_loadd(5, x0 + p * plane + 16 * kp, xstride);
      };
      auto mul = [&] {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        if (two) {
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
      };
      if (wterms == 1) {
        load_w(0);
        for (int p = 0; p < terms; ++p) load_x(p), mul();
      } else {
        six_products(terms, load_w, load_x, mul);
      }
    }
    DISCO_STORE_C(0, a, i0, j0);
    DISCO_STORE_C(1, a, i0, j0 + 16);
    if (two) {
      DISCO_STORE_C(2, a, i0 + 16, j0);
      DISCO_STORE_C(3, a, i0 + 16, j0 + 16);
    }
  }
}

// ---- few rows of x (batched decode): W read in place ----
//
// With few rows of x, rearranging W (above) would cost more than the products. Instead
// compute y^T: C tile (16 columns of W by 16 rows of x) += A tile (16 rows of W by 32 k,
// loaded straight from W with its row stride) * B tile (x^T in pairs of k, built once per
// call). The C tiles are transposed on the way out. Needs whole blocks of 32 k (an A tile
// past the row's end would read the next row); the last rows of W (n % 16) are copied into
// a zero-padded tile.

// B tiles of x^T: out[(t * kblocks + kb) * 256 + 16 * r + c] (32-bit pairs) =
// x[16 t + c][32 kb + 2 r .. + 1] in bfloat16, from xb (rows of kp bfloat16, mp rows).
void pack_xt(const uint16_t* xb, int64_t mp, int64_t kp, uint32_t* out) {
  const int64_t kblocks = kp / 32;
  __m512i r[16];
  for (int64_t t = 0; t < mp / 16; ++t)
    for (int64_t kb = 0; kb < kblocks; ++kb) {
      for (int c = 0; c < 16; ++c) r[c] = _mm512_loadu_si512(xb + (16 * t + c) * kp + 32 * kb);
      transpose16(r);
      uint32_t* dst = out + (t * kblocks + kb) * 256;
      for (int c = 0; c < 16; ++c) _mm512_store_si512(dst + 16 * c, r[c]);
    }
}

// y[i0 + c][j0 + r] = tile[r][c] (tile: 16 x 16 float32 of y^T), clipped to m x n.
void store_transposed(const MatmulArgs& a, float* tile, int64_t j0, int64_t i0) {
  __m512i r[16];
  for (int c = 0; c < 16; ++c) r[c] = _mm512_load_si512(tile + 16 * c);
  transpose16(r);
  const int64_t rows = a.m - i0 < 16 ? a.m - i0 : 16, cols = a.n - j0 < 16 ? a.n - j0 : 16;
  const __mmask16 mask = (__mmask16)((1u << cols) - 1);
  for (int64_t i = 0; i < rows; ++i) _mm512_mask_storeu_ps(a.y + (i0 + i) * a.n + j0, mask, (__m512)r[i]);
}

#define DISCO_STORE_CT(T, a, j0, i0)             \
  do {                                           \
    if ((i0) < (a).m && (j0) < (a).n) {          \
      alignas(64) float ct[16 * 16];             \
      _tile_stored(T, ct, 64);                   \
      store_transposed(a, ct, j0, i0);           \
    }                                            \
  } while (0)

// Rows [j0, j0 + 32) of W (the second 16 may be past n: then computed on zeros and not
// stored) against the one or two tiles of x rows, every plane of x. xt: the x^T tiles of
// rows 16 t0.., planes `plane` pairs apart, tiles of one plane kblocks * 256 apart.
void w_rows_product(const MatmulArgs& a, const uint8_t* w0, int64_t ws0, const uint8_t* w1, int64_t ws1,
                    const uint32_t* xt, int64_t plane, int terms, int64_t mtiles, int64_t kblocks, int64_t j0) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t kb = 0; kb < kblocks; ++kb) {
    _tile_loadd(4, w0 + 64 * kb, ws0);
    _tile_loadd(5, w1 + 64 * kb, ws1);
    for (int p = 0; p < terms; ++p) {
      const uint32_t* b = xt + p * plane + kb * 256;
      _tile_loadd(6, b, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 5, 6);
      if (mtiles > 1) {
        _tile_loadd(7, b + kblocks * 256, 64);
        _tile_dpbf16ps(2, 4, 7);
        _tile_dpbf16ps(3, 5, 7);
      }
    }
  }
  DISCO_STORE_CT(0, a, j0, 0);
  DISCO_STORE_CT(1, a, j0 + 16, 0);
  if (mtiles > 1) {
    DISCO_STORE_CT(2, a, j0, 16);
    DISCO_STORE_CT(3, a, j0 + 16, 16);
  }
}

// Rows [j0, j0 + 16) of W as 16 rows of 64 kblocks bytes, zeros past n.
void copy_w_rows(const MatmulArgs& a, int64_t j0, int64_t kblocks, uint8_t* out) {
  for (int64_t r = 0; r < 16; ++r) {
    if (j0 + r < a.n) std::memcpy(out + r * 64 * kblocks, a.w + (j0 + r) * a.w_stride, 64 * kblocks);
    else std::memset(out + r * 64 * kblocks, 0, 64 * kblocks);
  }
}

template <class T>
struct FreeDeleter {
  void operator()(T* p) const { std::free(p); }
};
template <class T>
std::unique_ptr<T, FreeDeleter<T>> aligned_buffer(int64_t count, const char* what) {
  const size_t bytes = (sizeof(T) * count + 63) / 64 * 64;
  T* p = static_cast<T*>(std::aligned_alloc(64, bytes));
  if (p == nullptr) throw KernelError(std::string("cpu_matmul_nt (amx): out of memory for ") + what);
  return std::unique_ptr<T, FreeDeleter<T>>(p);
}

// x's bfloat16 planes (slot 0) and x^T (slot 1), rebuilt on every call. A prefill step
// makes hundreds of calls with megabytes of them each; fresh blocks that size come from
// mmap and are page-faulted in every time (13 faults a prefill token more, float32 on
// 2 workers). Each calling thread keeps its largest so far, up to kKeptBytes; larger
// ones are freed after the call.
struct KeptBuffer {
  void* p = nullptr;
  size_t bytes = 0;
  ~KeptBuffer() { std::free(p); }
};
KeptBuffer& kept_buffer(int slot) {
  thread_local KeptBuffer kept[2];
  return kept[slot];
}
constexpr size_t kKeptBytes = size_t(32) << 20;

template <class T>
class Scratch {
 public:
  Scratch(int slot, int64_t count, const char* what) {
    const size_t bytes = (sizeof(T) * count + 63) / 64 * 64;
    KeptBuffer& kept = kept_buffer(slot);
    if (bytes <= kept.bytes) {
      p_ = static_cast<T*>(kept.p);
      return;
    }
    owned_ = aligned_buffer<T>(count, what);
    p_ = owned_.get();
    if (bytes <= kKeptBytes) {
      std::free(kept.p);
      kept.p = owned_.release();
      kept.bytes = bytes;
    }
  }
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
  std::unique_ptr<T, FreeDeleter<T>> owned_;
};

// More than kFewRows rows: panels of W rearranged (bfloat16) or split (float32) per
// thread, each reused over every row of x.
void matmul_amx_packed(const MatmulArgs& a, int terms) {
  const int wterms = a.format == Format::kF32 ? 3 : 1;
  const int64_t mp = (a.m + 15) / 16 * 16, kp = (a.k + 31) / 32 * 32, kblocks = kp / 32;
  Scratch<uint16_t> xb(0, terms * mp * kp, "x in bfloat16");
  convert_x(a, mp, kp, terms, xb.get());
  const int64_t panels = (a.n + 31) / 32;
  // Rows of x per pass over W: their planes fit in half of L2 (~1 MB), so each panel's
  // products read x from L2 (streaming all of x from L3 per panel bounds the tile unit).
  // Each pass rearranges the panels again, a cost shared by mblock / 16 x tiles; float32
  // panels cost more to split, and 1.5 MB of x pays there (768 x 2048 at 512 rows: 8.5-8.7
  // ms against 9.7-10.6; bfloat16 panels: 3-5% slower so).
  const int64_t budget = (wterms == 3 ? 3 : 2) * (int64_t(1) << 19);
  const int64_t fit = budget / (2 * kp * terms) / 32 * 32;
  const int64_t mblock = fit < 32 ? 32 : fit;
  const int64_t panel_bytes = 4 * 512 * kblocks * wterms;
  const int nt = a.num_threads;
  bool failed = false;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    uint32_t* panel = static_cast<uint32_t*>(std::aligned_alloc(64, panel_bytes));
    if (panel == nullptr) {
#pragma omp atomic write
      failed = true;
    }
    TileScope tiles;
    for (int64_t i_begin = 0; i_begin < mp; i_begin += mblock) {
      const int64_t i_end = i_begin + mblock < mp ? i_begin + mblock : mp;
#pragma omp for schedule(static)
      for (int64_t p = 0; p < panels; ++p) {
        if (panel == nullptr) continue;
        if (wterms == 3) pack_panel_f32(a, 32 * p, kblocks, panel);
        else pack_panel_bf16(a, 32 * p, kblocks, panel);
        panel_product(a, xb.get(), mp, kp, terms, panel, wterms, 32 * p, i_begin, i_end);
      }
    }
    std::free(panel);
  }
  if (failed) throw KernelError("cpu_matmul_nt (amx): out of memory for a panel of W (" +
                                std::to_string(panel_bytes) + " bytes)");
}

void matmul_bf16_amx_few(const MatmulArgs& a, int terms) {
  const int64_t mp = (a.m + 15) / 16 * 16, kp = a.k, kblocks = kp / 32, plane = mp / 16 * kblocks * 256;
  Scratch<uint16_t> xb(0, terms * mp * kp, "x in bfloat16");
  convert_x(a, mp, kp, terms, xb.get());
  Scratch<uint32_t> xt(1, terms * plane, "x^T in bfloat16");
  for (int p = 0; p < terms; ++p) pack_xt(xb.get() + p * mp * kp, mp, kp, xt.get() + p * plane);
  const int64_t whole = a.n / 16, pairs = (whole + 1) / 2, rest = a.n % 16 != 0;
  auto tail = aligned_buffer<uint8_t>(rest ? 16 * 64 * kblocks : 1, "the last rows of W");
  if (rest) copy_w_rows(a, whole * 16, kblocks, tail.get());
  const int nt = a.num_threads;
  const int64_t mtiles = mp / 16, units = pairs + (rest && whole % 2 == 0);
  // Units of 32 rows of W (the whole-tile pairs, then the tail tile with its partner),
  // each against every pair of x tiles in turn: the unit's rows stay in L2 meanwhile.
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    TileScope tiles;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < units; ++p) {
      const int64_t j0 = 32 * p;
      const uint8_t* w0 = j0 / 16 < whole ? a.w + j0 * a.w_stride : tail.get();
      const int64_t ws0 = j0 / 16 < whole ? a.w_stride : 64 * kblocks;
      const bool second_whole = j0 / 16 + 1 < whole;
      const uint8_t* w1 = second_whole ? a.w + (j0 + 16) * a.w_stride : rest ? tail.get() : w0;
      const int64_t ws1 = second_whole ? a.w_stride : rest ? 64 * kblocks : ws0;
      for (int64_t t0 = 0; t0 < mtiles; t0 += 2) {
        MatmulArgs b = a;  // rows 16 t0.. of x and y
        b.m = a.m - 16 * t0;
        b.y = a.y + 16 * t0 * a.n;
        w_rows_product(b, w0, ws0, w1, ws1, xt.get() + t0 * kblocks * 256, plane, terms, mtiles - t0 < 2 ? 1 : 2,
                       kblocks, j0);
      }
    }
  }
}

// Float32 W, at most kFewRows rows of x: as matmul_bf16_amx_few, but W cannot be read
// in place. Each thread splits 32 rows of W a block of k at a time into the A tiles of
// its three parts (6 KB, in L1), against x^T's planes (six_products). W is read once,
// straight from memory.
void matmul_f32_amx_few(const MatmulArgs& a, int terms) {
  const int64_t mp = (a.m + 15) / 16 * 16, kp = (a.k + 31) / 32 * 32, kblocks = kp / 32;
  const int64_t plane = mp / 16 * kblocks * 256;
  const bool two = mp > 16;  // mp <= 32: at most two x tiles
  Scratch<uint16_t> xb(0, terms * mp * kp, "x in bfloat16");
  convert_x(a, mp, kp, terms, xb.get());
  Scratch<uint32_t> xt(1, terms * plane, "x^T in bfloat16");
  for (int p = 0; p < terms; ++p) pack_xt(xb.get() + p * mp * kp, mp, kp, xt.get() + p * plane);
  const int64_t units = (a.n + 31) / 32;
  const int nt = a.num_threads;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    TileScope tiles;
    alignas(64) uint16_t wt[3][2][16 * 32];  // part q, W tile t, 16 rows of 32 k
#pragma omp for schedule(static)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t j0 = 32 * u;
      const float* rows[32];
      for (int r = 0; r < 32; ++r)
        rows[r] = j0 + r < a.n ? reinterpret_cast<const float*>(a.w + (j0 + r) * a.w_stride) : nullptr;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t kb = 0; kb < kblocks; ++kb) {
        const int64_t valid = a.k - 32 * kb;
        for (int r = 0; r < 32; ++r) {
          const float* src = rows[r] ? rows[r] + 32 * kb : nullptr;  // past n: zeros
          if (src) {
            // 32 rows are more streams than the hardware prefetcher follows: ask 2 blocks
            // ahead (a 32-row decode step of the ~100M Llama took 19-20 ms of matmuls so,
            // 22 at 4 blocks, 29-34 at 8 or more or none: farther ahead evicts from L1).
            _mm_prefetch(reinterpret_cast<const char*>(src + 64), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(src + 80), _MM_HINT_T0);
          }
          __m512 lo, hi;
          load_f32x32(src, src ? valid : 0, lo, hi);
          __m512i p3[3];
          split_bf16(lo, hi, 3, p3);
          for (int q = 0; q < 3; ++q) _mm512_store_si512(&wt[q][r / 16][(r % 16) * 32], p3[q]);
        }
        const uint32_t* b = xt.get() + kb * 256;
        auto load_w = [&](int q) {
          _tile_loadd(4, wt[q][0], 64);
          _tile_loadd(5, wt[q][1], 64);
        };
        auto load_x = [&](int p) {
          _tile_loadd(6, b + p * plane, 64);
          if (two) _tile_loadd(7, b + p * plane + kblocks * 256, 64);
        };
        auto mul = [&] {
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 5, 6);
          if (two) {
            _tile_dpbf16ps(2, 4, 7);
            _tile_dpbf16ps(3, 5, 7);
          }
        };
        six_products(terms, load_w, load_x, mul);
      }
      DISCO_STORE_CT(0, a, j0, 0);
      DISCO_STORE_CT(1, a, j0 + 16, 0);
      if (two) {
        DISCO_STORE_CT(2, a, j0, 16);
        DISCO_STORE_CT(3, a, j0 + 16, 16);
      }
    }
  }
}

// The digit environment variable `name` holds, from `lowest` to `highest` (`fallback`
// when unset or empty); anything else is a KernelError naming the variable, the values
// it takes (`expected`: what they mean) and the one given.
int digit_setting(const char* name, char lowest, char highest, int fallback, const std::string& expected) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == 0) return fallback;
  const std::string v = env;
  if (v.size() != 1 || v[0] < lowest || v[0] > highest)
    throw KernelError(std::string(name) + " must be " + expected + "; got '" + v + "'");
  return v[0] - '0';
}

// Planes x is split into (DISCO_CPU_AMX_X_TERMS, read once): 3 (default) holds x exactly,
// so the products are those of float32 x; 1 rounds x to bfloat16 (3x the tile products
// per second in prefill, the numerics of a bfloat16 model); 2 keeps 16 bits of x.
int x_terms() {
  static const int terms =
      digit_setting("DISCO_CPU_AMX_X_TERMS", '1', '3', 3, "1, 2 or 3 (bfloat16 parts x is split into)");
  return terms;
}

// Float32 weights on AMX (split in three parts, above) unless DISCO_CPU_AMX_FLOAT32=0
// (read once): then the AVX-512 kernel and numpy's BLAS take them, as on other CPUs.
bool float32_on_amx() {
  static const bool on =
      digit_setting("DISCO_CPU_AMX_FLOAT32", '0', '1', 1, "0 or 1 (float32 weights on AMX tiles)") == 1;
  return on;
}

void matmul_nt_amx(const MatmulArgs& a) {
  if (a.format == Format::kBF16 && a.m > kMinRows) {
    if (a.m <= kFewRows && a.k % 32 == 0) return matmul_bf16_amx_few(a, x_terms());
    return matmul_amx_packed(a, x_terms());
  }
  if (a.format == Format::kF32 && a.m > kMinRowsF32 && float32_on_amx()) {
    if (a.m <= kFewRows) return matmul_f32_amx_few(a, x_terms());
    return matmul_amx_packed(a, x_terms());
  }
  isa_avx512()->matmul_nt(a);
}

void embedding_amx(const EmbeddingArgs& a) { isa_avx512()->embedding(a); }

}  // namespace
#endif

int amx_x_terms() {
#if defined(DISCO_CPU_HAVE_AMX)
  return x_terms();
#else
  return 0;
#endif
}

const IsaKernels* isa_amx() {
#if defined(DISCO_CPU_HAVE_AMX)
  static const bool usable = isa_avx512() != nullptr && os_allows_amx();
  static const IsaKernels kernels{"amx", &matmul_nt_amx, &embedding_amx, kMinRows,
                                  float32_on_amx() ? kMinRowsF32 : -1};
  return usable ? &kernels : nullptr;
#else
  return nullptr;
#endif
}

}  // namespace cpu
}  // namespace disco

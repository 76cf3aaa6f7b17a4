// The vector operations kernel_impl.h is written in, for the instruction set the
// including translation unit is compiled for: 16 floats (AVX-512), 8 floats (AVX2 + FMA
// + F16C), or 8 floats as a plain array (portable; the compiler vectorises what it can).
// Everything here has internal linkage: the variants are compiled with different flags
// into one module, and an inline function shared between them could be merged by the
// linker into the copy that uses instructions this CPU lacks.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(DISCO_SIMD_AVX512) || defined(DISCO_SIMD_AVX2)
#include <immintrin.h>
#endif

namespace disco {
namespace cpu {
namespace {

#if defined(DISCO_SIMD_AVX512)

constexpr int kW = 16;  // floats per vector
struct V { __m512 v; };
inline V vzero() { return {_mm512_setzero_ps()}; }
inline V vset1(float a) { return {_mm512_set1_ps(a)}; }
inline V vload(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void vstore(float* p, V a) { _mm512_storeu_ps(p, a.v); }
inline V vfma(V a, V b, V c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }  // a * b + c
inline V vmul(V a, V b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline float vhsum(V a) { return _mm512_reduce_add_ps(a.v); }
inline float f16_scalar(uint16_t h) { return _cvtsh_ss(h); }
inline V load_f16(const uint8_t* p) { return {_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p))}; }
inline V load_bf16(const uint8_t* p) {
  const __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(u, 16))};
}
inline V load_i8(const uint8_t* p) {
  return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)))};
}
// 2 kW bfloat16 at p as float32: the even-indexed ones (each the low half of a 32-bit
// word, shifted up) and the odd-indexed ones (the high half, masked): one load and two
// bit operations, no shuffle (the shuffle port limits load_bf16 on one core).
inline void load_bf16_pairs(const uint8_t* p, V& even, V& odd) {
  const __m512i w = _mm512_loadu_si512((const void*)p);
  even.v = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  odd.v = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32((int)0xffff0000u)));
}
// The 32 nibbles of 16 bytes in GGUF's order (low nibbles, then high nibbles).
inline void load_nibbles(const uint8_t* p, V out[2]) {
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
  out[0].v = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)));
  out[1].v = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
}
// The two fp16 halves of the 32-bit words at p + j * S (j < 16) as float32: lo[j], hi[j].
template <int S>
inline void gather_halves16(const uint8_t* p, float* lo, float* hi) {
  const __m512i idx = _mm512_setr_epi32(0, S, 2 * S, 3 * S, 4 * S, 5 * S, 6 * S, 7 * S, 8 * S, 9 * S, 10 * S,
                                        11 * S, 12 * S, 13 * S, 14 * S, 15 * S);
  const __m512i g = _mm512_i32gather_epi32(idx, p, 1);
  _mm512_storeu_ps(lo, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g)));
  _mm512_storeu_ps(hi, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g, 16))));
}

#elif defined(DISCO_SIMD_AVX2)

constexpr int kW = 8;
struct V { __m256 v; };
inline V vzero() { return {_mm256_setzero_ps()}; }
inline V vset1(float a) { return {_mm256_set1_ps(a)}; }
inline V vload(const float* p) { return {_mm256_loadu_ps(p)}; }
inline void vstore(float* p, V a) { _mm256_storeu_ps(p, a.v); }
inline V vfma(V a, V b, V c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline V vmul(V a, V b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline float vhsum(V a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float f16_scalar(uint16_t h) { return _cvtsh_ss(h); }
inline V load_f16(const uint8_t* p) { return {_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p))}; }
inline V load_bf16(const uint8_t* p) {
  const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(u, 16))};
}
inline V load_i8(const uint8_t* p) {
  return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)))};
}
inline void load_bf16_pairs(const uint8_t* p, V& even, V& odd) {
  const __m256i w = _mm256_loadu_si256((const __m256i*)p);
  even.v = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  odd.v = _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32((int)0xffff0000u)));
}
inline void load_nibbles(const uint8_t* p, V out[4]) {
  const __m128i bytes = _mm_loadu_si128((const __m128i*)p);
  const __m256i lo = _mm256_cvtepu8_epi32(bytes);                     // bytes 0..7
  const __m256i hi = _mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8));  // bytes 8..15
  const __m256i m = _mm256_set1_epi32(15);
  out[0].v = _mm256_cvtepi32_ps(_mm256_and_si256(lo, m));  // weights 0..7
  out[1].v = _mm256_cvtepi32_ps(_mm256_and_si256(hi, m));  // 8..15
  out[2].v = _mm256_cvtepi32_ps(_mm256_srli_epi32(lo, 4));  // 16..23
  out[3].v = _mm256_cvtepi32_ps(_mm256_srli_epi32(hi, 4));  // 24..31
}
template <int S>
inline void gather_halves16(const uint8_t* p, float* lo, float* hi) {
  const __m256i idx = _mm256_setr_epi32(0, S, 2 * S, 3 * S, 4 * S, 5 * S, 6 * S, 7 * S);
  // Per 128-bit lane: the low halves of its 4 words into bytes 0..7, the high halves into 8..15.
  const __m256i split = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                         0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
  for (int h = 0; h < 2; ++h) {
    const __m256i g = _mm256_i32gather_epi32((const int*)(p + h * 8 * S), idx, 1);
    const __m256i t = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(g, split), 0xd8);  // lows, highs
    _mm256_storeu_ps(lo + 8 * h, _mm256_cvtph_ps(_mm256_castsi256_si128(t)));
    _mm256_storeu_ps(hi + 8 * h, _mm256_cvtph_ps(_mm256_extracti128_si256(t, 1)));
  }
}

#else  // portable

constexpr int kW = 8;
struct V { float f[kW]; };
inline V vzero() { return V{}; }
inline V vset1(float a) { V r; for (int i = 0; i < kW; ++i) r.f[i] = a; return r; }
inline V vload(const float* p) { V r; std::memcpy(r.f, p, sizeof r.f); return r; }
inline void vstore(float* p, V a) { std::memcpy(p, a.f, sizeof a.f); }
inline V vfma(V a, V b, V c) { for (int i = 0; i < kW; ++i) c.f[i] += a.f[i] * b.f[i]; return c; }
inline V vmul(V a, V b) { for (int i = 0; i < kW; ++i) a.f[i] *= b.f[i]; return a; }
inline float vhsum(V a) {
  return ((a.f[0] + a.f[4]) + (a.f[1] + a.f[5])) + ((a.f[2] + a.f[6]) + (a.f[3] + a.f[7]));
}
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
// IEEE half -> float, exact (infinities, NaN and subnormals included).
inline float f16_scalar(uint16_t h) {
  const uint32_t shifted_exp = 0x7c00u << 13;
  uint32_t o = (uint32_t)(h & 0x7fff) << 13;
  const uint32_t exp = shifted_exp & o;
  o += (uint32_t)(127 - 15) << 23;
  if (exp == shifted_exp) {
    o += (uint32_t)(128 - 16) << 23;
  } else if (exp == 0) {
    o += 1u << 23;
    o = f32_bits(bits_f32(o) - bits_f32(113u << 23));
  }
  return bits_f32(o | ((uint32_t)(h & 0x8000) << 16));
}
inline uint16_t u16_at(const uint8_t* p) { uint16_t h; std::memcpy(&h, p, 2); return h; }
inline V load_f16(const uint8_t* p) { V r; for (int i = 0; i < kW; ++i) r.f[i] = f16_scalar(u16_at(p + 2 * i)); return r; }
inline V load_bf16(const uint8_t* p) {
  V r;
  for (int i = 0; i < kW; ++i) r.f[i] = bits_f32((uint32_t)u16_at(p + 2 * i) << 16);
  return r;
}
inline V load_i8(const uint8_t* p) { V r; for (int i = 0; i < kW; ++i) r.f[i] = (float)(int8_t)p[i]; return r; }
inline void load_bf16_pairs(const uint8_t* p, V& even, V& odd) {
  for (int i = 0; i < kW; ++i) {
    even.f[i] = bits_f32((uint32_t)u16_at(p + 4 * i) << 16);
    odd.f[i] = bits_f32((uint32_t)u16_at(p + 4 * i + 2) << 16);
  }
}
inline void load_nibbles(const uint8_t* p, V out[4]) {
  for (int i = 0; i < 16; ++i) {
    out[i / kW].f[i % kW] = (float)(p[i] & 15);
    out[2 + i / kW].f[i % kW] = (float)(p[i] >> 4);
  }
}
template <int S>
inline void gather_halves16(const uint8_t* p, float* lo, float* hi) {
  for (int j = 0; j < 16; ++j) {
    lo[j] = f16_scalar(u16_at(p + j * S));
    hi[j] = f16_scalar(u16_at(p + j * S + 2));
  }
}

#endif

constexpr int kNV = 32 / kW;  // vectors per block of 32 weights

inline uint16_t load_u16(const uint8_t* p) { uint16_t h; std::memcpy(&h, p, 2); return h; }

}  // namespace
}  // namespace cpu
}  // namespace disco

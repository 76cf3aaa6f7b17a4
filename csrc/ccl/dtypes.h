// Element types and reduction operators of the shared-memory collectives, and the one
// reduction kernel they all use. float16 and bfloat16 are reduced in float32: all
// sources are summed (or multiplied, ...) in float32 and rounded once at the end.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace disco {
namespace ccl {

// Codes shared with disco/ccl/shm.py (_DTYPE_CODES); -1 marks an unsupported dtype.
enum class DType : int32_t { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3, kI8 = 4, kI32 = 5, kI64 = 6 };
constexpr int32_t kNumDTypes = 7;
enum class Op : int32_t { kSum = 0, kProd = 1, kMin = 2, kMax = 3 };
constexpr int32_t kNumOps = 4;

size_t dtype_size(DType t);
const char* dtype_name(DType t);
const char* op_name(Op op);

// dst[i] = op(srcs[0][i], srcs[1][i], ..., srcs[nsrc-1][i]) for i < count, folding the
// sources left to right (the order a numpy reference `reduce(np.add, xs)` uses).
// dst may alias srcs[0] but no other source.
void reduce(DType t, Op op, void* dst, const void* const* srcs, int nsrc, size_t count);

// IEEE half <-> float, written out so that no F16C / AVX512-BF16 is needed.
// Round to nearest even; NaN stays NaN (quiet), infinities and subnormals are kept.
inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline float f16_to_f32(uint16_t h) {
  const uint32_t shifted_exp = 0x7c00u << 13;  // exponent mask after the shift
  uint32_t o = (uint32_t)(h & 0x7fff) << 13;   // exponent and mantissa bits
  const uint32_t exp = shifted_exp & o;
  o += (uint32_t)(127 - 15) << 23;  // rebias the exponent
  if (exp == shifted_exp) {
    o += (uint32_t)(128 - 16) << 23;  // Inf / NaN: extra exponent adjust
  } else if (exp == 0) {
    o += 1u << 23;  // zero / subnormal: renormalise through a float subtraction
    o = f32_bits(bits_f32(o) - bits_f32(113u << 23));
  }
  return bits_f32(o | ((uint32_t)(h & 0x8000) << 16));
}

inline uint16_t f32_to_f16(float f) {
  const uint32_t f32_inf = 255u << 23;
  const uint32_t f16_max = (127u + 16) << 23;  // smallest float that overflows half
  const float denorm_magic = bits_f32(((127 - 15) + (23 - 10) + 1) << 23);
  uint32_t u = f32_bits(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint16_t o;
  if (u >= f16_max) {
    o = u > f32_inf ? 0x7e00 : 0x7c00;  // NaN -> quiet NaN, overflow -> Inf
  } else if (u < (113u << 23)) {
    // Subnormal result: let the FPU round (nearest even) by adding a magic number.
    o = (uint16_t)(f32_bits(bits_f32(u) + denorm_magic) - f32_bits(denorm_magic));
  } else {
    const uint32_t mant_odd = (u >> 13) & 1;  // ties go to even
    u += ((uint32_t)(15 - 127) << 23) + 0xfff;
    u += mant_odd;
    o = (uint16_t)(u >> 13);
  }
  return (uint16_t)(o | (sign >> 16));
}

// bfloat16 is the upper half of a float32.
inline float bf16_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }

inline uint16_t f32_to_bf16(float f) {
  const uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);  // round to nearest even
}

}  // namespace ccl
}  // namespace disco

// Weight formats of the CPU matmul and embedding kernels: how one row of a weight
// matrix W[n, k] is stored. Float formats hold k elements; the GGUF block formats hold
// k / 32 blocks of 32 weights each, byte for byte as llama.cpp writes them (ggml-common.h):
//
//   Q8_0  34 bytes: fp16 d, int8 q[32]                  w_i = q_i * d
//   Q4_0  18 bytes: fp16 d, uint8 qs[16]                w_i = (nibble_i - 8) * d
//   Q4_1  20 bytes: fp16 d, fp16 m, uint8 qs[16]        w_i = nibble_i * d + m
//
// where nibble_i is the low nibble of qs[i] for i < 16 and the high nibble of qs[i - 16]
// otherwise. A row of a block format is its blocks one after another, so a matrix is
// [n][k / 32 * block_bytes] bytes and any range of whole blocks is itself a matrix of
// the same format (tensor-parallel shards cut at block boundaries).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace disco {
namespace cpu {

// Codes shared with disco/cpu_kernels.py (FORMAT_CODES).
enum class Format : int32_t { kF32 = 0, kF16 = 1, kBF16 = 2, kQ8_0 = 3, kQ4_0 = 4, kQ4_1 = 5 };
constexpr int32_t kNumFormats = 6;

constexpr int64_t kQBlock = 32;  // weights per block of every GGUF block format here

struct FormatInfo {
  const char* name;
  int64_t block;        // elements per block (1 for float formats)
  int64_t block_bytes;  // bytes per block
};

inline FormatInfo format_info(Format f) {
  switch (f) {
    case Format::kF32: return {"float32", 1, 4};
    case Format::kF16: return {"float16", 1, 2};
    case Format::kBF16: return {"bfloat16", 1, 2};
    case Format::kQ8_0: return {"q8_0", kQBlock, 34};
    case Format::kQ4_0: return {"q4_0", kQBlock, 18};
    case Format::kQ4_1: return {"q4_1", kQBlock, 20};
  }
  return {"?", 1, 0};
}

// A problem the caller can fix (wrong shape, dtype, k not a multiple of the block):
// disco.errors.KernelError in Python.
struct KernelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Bytes of one row of k weights; throws KernelError when k is not whole blocks.
inline int64_t row_bytes(Format f, int64_t k) {
  const FormatInfo fi = format_info(f);
  if (k % fi.block != 0)
    throw KernelError(std::string(fi.name) + " rows hold whole blocks of " + std::to_string(fi.block) +
                      " weights; k = " + std::to_string(k) + " is not a multiple of " + std::to_string(fi.block) +
                      " (pad the input dimension, or keep this weight in a float format)");
  return k / fi.block * fi.block_bytes;
}

}  // namespace cpu
}  // namespace disco

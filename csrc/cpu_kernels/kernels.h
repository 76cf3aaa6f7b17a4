// CPU kernels for linear layers and embeddings whose weights are stored in 16 bits or in
// GGUF blocks (formats.h). Each reads the weights in their stored format and converts
// them to float32 in registers (never into a float32 copy of the matrix), accumulating
// in float32.
//
//   matmul_nt:  y[m, n] = x[m, k] @ W[n, k]^T     (a linear layer, W in PyTorch's layout)
//   embedding:  out[r, k] = W[ids[r], :]          (rows dequantized as they are read)
//
// Work is split over output columns n (rows of W) with OpenMP: each thread streams a
// contiguous range of W's rows, so decode (m of 1..8, memory bound) reads every weight
// byte once. Decode shapes (m <= 8) keep the m rows of x in L1 and convert each block
// of W in registers; prefill shapes (larger m) convert a panel of W's rows into a
// per-thread float32 buffer once and run a register-tiled float kernel over every row
// of x (the panel is then reused m / 4 times).
//
// The inner loops exist once (kernel_impl.h) and are compiled per instruction set:
// AVX-512 (F, BW, VL, DQ + FMA, F16C), AVX2 (+ FMA, F16C) and portable C++. CMake
// compiles each variant the compiler supports; the running CPU picks the best at load
// time (isa.cc), so the module runs on any x86-64 and on other architectures.
#pragma once

#include <cstdint>

#include "cpu_kernels/formats.h"

namespace disco {
namespace cpu {

enum class Isa : int32_t { kAuto = -1, kGeneric = 0, kAVX2 = 1, kAVX512 = 2 };

struct MatmulArgs {
  Format format;
  int64_t m = 0, n = 0, k = 0;
  const float* x = nullptr;    // [m][k] float32, rows contiguous
  const uint8_t* w = nullptr;  // [n] rows of row_bytes(format, k) bytes ...
  int64_t w_stride = 0;        // ... each w_stride bytes after the previous (>= row bytes)
  float* y = nullptr;          // [m][n] float32
  int num_threads = 1;         // OpenMP threads (1: the calling thread only)
};

struct EmbeddingArgs {
  Format format;
  int64_t rows = 0, k = 0;     // rows gathered, elements per row
  const int64_t* ids = nullptr;  // [rows], each in [0, vocab) (checked by the caller), or -1: a zero row
  const uint8_t* w = nullptr;  // table rows of row_bytes(format, k) bytes ...
  int64_t w_stride = 0;        // ... w_stride bytes apart
  float* out = nullptr;        // [rows][k] float32
  int num_threads = 1;
};

// The kernels of one instruction set (one per isa_*.cc translation unit).
struct IsaKernels {
  const char* name;
  void (*matmul_nt)(const MatmulArgs&);
  void (*embedding)(const EmbeddingArgs&);
  // Matmuls of bfloat16 weights with more rows of x than this run on AMX tiles, x split
  // into amx_x_terms() bfloat16 parts; -1: never.
  int64_t amx_rows = -1;
  // The same for float32 weights (split in three bfloat16 parts too: isa_amx.cc).
  int64_t amx_rows_f32 = -1;
};

// The bfloat16 parts x is split into on AMX tiles: 3 (exact) unless DISCO_CPU_AMX_X_TERMS
// says 1 or 2; 0 where this build has no AMX kernels.
int amx_x_terms();

// The variants compiled into this build, best first, whose instructions this CPU has.
// Never empty: the portable variant is always there.
int num_isas();
const IsaKernels& isa_kernels(int i);
// The variant used when no other is asked for: the best one, unless the environment
// variable DISCO_CPU_ISA names another (generic, avx2, avx512).
const IsaKernels& default_isa();
// The variant named `name`; KernelError naming the available ones if absent.
const IsaKernels& find_isa(const char* name);

// Threads to use for a call: `requested` if > 0, else the OpenMP default. 1 in a process
// forked after this one ran an OpenMP team (GNU OpenMP's threads do not survive fork).
int resolve_threads(int requested);

}  // namespace cpu
}  // namespace disco

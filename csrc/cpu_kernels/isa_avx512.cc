// The kernels of kernel_impl.h compiled for avx512: CMake gives this file the
// instruction-set flags and defines DISCO_CPU_HAVE_AVX512 when the compiler accepts them.
#include "cpu_kernels/kernels.h"

#if defined(DISCO_CPU_HAVE_AVX512)
#define DISCO_SIMD_AVX512 1
#include "cpu_kernels/kernel_impl.h"
#endif

namespace disco {
namespace cpu {

const IsaKernels* isa_avx512() {
#if defined(DISCO_CPU_HAVE_AVX512)
  static const IsaKernels kernels{"avx512", &matmul_nt_impl, &embedding_impl};
  return &kernels;
#else
  return nullptr;
#endif
}

}  // namespace cpu
}  // namespace disco

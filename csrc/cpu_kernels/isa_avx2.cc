// The kernels of kernel_impl.h compiled for avx2: CMake gives this file the
// instruction-set flags and defines DISCO_CPU_HAVE_AVX2 when the compiler accepts them.
#include "cpu_kernels/kernels.h"

#if defined(DISCO_CPU_HAVE_AVX2)
#define DISCO_SIMD_AVX2 1
#include "cpu_kernels/kernel_impl.h"
#endif

namespace disco {
namespace cpu {

const IsaKernels* isa_avx2() {
#if defined(DISCO_CPU_HAVE_AVX2)
  static const IsaKernels kernels{"avx2", &matmul_nt_impl, &embedding_impl};
  return &kernels;
#else
  return nullptr;
#endif
}

}  // namespace cpu
}  // namespace disco

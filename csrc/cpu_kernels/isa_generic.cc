// The kernels of kernel_impl.h in portable C++ (any CPU; compiled without extra flags).
#include "cpu_kernels/kernel_impl.h"

namespace disco {
namespace cpu {

const IsaKernels* isa_generic() {
  static const IsaKernels kernels{"generic", &matmul_nt_impl, &embedding_impl};
  return &kernels;
}

}  // namespace cpu
}  // namespace disco

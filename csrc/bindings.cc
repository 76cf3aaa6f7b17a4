// The one pybind11 module, disco._native. Each part of csrc/ binds itself in its own
// *_bindings.cc through a bind_* function declared here; this file only calls them.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_channel(py::module_& m);  // channel_bindings.cc: command ring, reply slots
void bind_ccl(py::module_& m);      // ccl/ccl_bindings.cc: shared-memory collectives
void bind_kv(py::module_& m);       // kv/kv_bindings.cc: paged KV cache and its attention
void bind_cpu_kernels(py::module_& m);  // cpu_kernels/cpu_kernels_bindings.cc: matmul, embedding
void bind_vm(py::module_& m);       // vm_bindings.cc: planned kernel calls (KernelCall)

PYBIND11_MODULE(_native, m) {
  m.doc() = "Native core of disco: shared-memory command channel and collectives, paged KV cache, CPU kernels, planned kernel calls.";
  bind_channel(m);
  bind_ccl(m);
  bind_kv(m);
  bind_cpu_kernels(m);
  bind_vm(m);
}

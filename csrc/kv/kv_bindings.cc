// Python bindings of the paged KV cache: disco._native.PagedKVCache. disco/kv_cache.py
// is the caller: it checks arguments and writes the user-facing messages; the checks
// here keep the C++ memory-safe whatever a caller passes. Attention runs with the GIL
// released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "kv/paged_kv_cache.h"

namespace py = pybind11;
using namespace disco::kv;

namespace {

std::string shape_text(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// `a` is C-contiguous, of `t`'s element size and of shape `shape`.
void check_array(DType t, const py::array& a, const char* name, std::vector<int64_t> shape, bool writable) {
  bool ok = a.ndim() == (py::ssize_t)shape.size() && (a.flags() & py::array::c_style) &&
            a.itemsize() == (py::ssize_t)dtype_size(t) && (!writable || a.writeable());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = a.shape(i) == shape[i];
  if (!ok) {
    std::string want = "(";
    for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
    throw KVError(std::string("PagedKVCache.attention: ") + name + " must be a C-contiguous" +
                  (writable ? ", writable" : "") + " array of shape " + want + ") with " +
                  std::to_string(dtype_size(t)) + "-byte elements; got shape " + shape_text(a) +
                  " with " + std::to_string(a.itemsize()) + "-byte elements");
  }
}

void check_code(int code, const char* what) {
  if (code < 0 || code > 2) throw KVError("PagedKVCache: unknown " + std::string(what) + " code " + std::to_string(code));
}

}  // namespace

void bind_kv(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const OutOfPages& e) {
      py::object cls = py::module_::import("disco.errors").attr("OutOfPagesError");
      py::object err = cls(e.what());
      err.attr("pages_needed") = e.needed;
      err.attr("pages_free") = e.free;
      PyErr_SetObject(cls.ptr(), err.ptr());
    } catch (const KVError& e) {
      py::object cls = py::module_::import("disco.errors").attr("KVCacheError");
      PyErr_SetString(cls.ptr(), e.what());
    }
  });

  py::class_<PagedKVCache>(m, "PagedKVCache", "The paged KV cache of one worker; see csrc/kv/paged_kv_cache.h.")
      .def(py::init([](int64_t num_layers, int64_t num_kv_heads, int64_t head_dim, int64_t num_pages,
                       int64_t page_size, int dtype, int num_threads) {
             check_code(dtype, "dtype");
             Options o;
             o.num_layers = num_layers;
             o.num_kv_heads = num_kv_heads;
             o.head_dim = head_dim;
             o.num_pages = num_pages;
             o.page_size = page_size;
             o.dtype = static_cast<DType>(dtype);
             o.num_threads = num_threads;
             return new PagedKVCache(o);
           }),
           py::arg("num_layers"), py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("num_pages"),
           py::arg("page_size"), py::arg("dtype"), py::arg("num_threads"))
      .def("add_sequence", &PagedKVCache::add_sequence)
      .def("remove_sequence", &PagedKVCache::remove_sequence)
      .def("begin_forward", &PagedKVCache::begin_forward)
      .def("positions", [](PagedKVCache& c) {
        std::vector<int64_t> pos = c.positions();
        py::array_t<int64_t> a(static_cast<py::ssize_t>(pos.size()));
        if (!pos.empty()) std::memcpy(a.mutable_data(), pos.data(), pos.size() * sizeof(int64_t));
        return a;
      })
      .def("step_rows", &PagedKVCache::step_rows)
      .def("attention", [](PagedKVCache& c, int64_t layer, py::array q, py::array k, py::array v, py::array out,
                           float scale, int io_dtype) {
        const Options& o = c.options();
        check_code(io_dtype, "io_dtype");
        const DType t = static_cast<DType>(io_dtype);
        if (q.ndim() != 3) check_array(t, q, "q", {-1, -1, o.head_dim}, false);  // throws
        const int64_t rows = q.shape(0), heads = q.shape(1);
        check_array(t, q, "q", {rows, heads, o.head_dim}, false);
        check_array(t, k, "k", {rows, o.num_kv_heads, o.head_dim}, false);
        check_array(t, v, "v", {rows, o.num_kv_heads, o.head_dim}, false);
        check_array(t, out, "out", {rows, heads, o.head_dim}, true);
        const void* qp = q.data();
        const void* kp = k.data();
        const void* vp = v.data();
        void* op = out.mutable_data();
        py::gil_scoped_release nogil;
        c.attention(layer, rows, heads, t, qp, kp, vp, op, scale);
      }, py::arg("layer"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("scale"),
         py::arg("io_dtype"))
      .def("seq_length", &PagedKVCache::seq_length)
      .def("sequences", &PagedKVCache::sequences)
      .def("num_free_pages", &PagedKVCache::num_free_pages)
      .def("pages", &PagedKVCache::pages)
      .def("storage", [](py::object self, py::dtype dt) {
        // Arrays over the cache's own memory; each keeps the cache alive.
        PagedKVCache& c = self.cast<PagedKVCache&>();
        const Options& o = c.options();
        if ((size_t)dt.itemsize() != dtype_size(o.dtype)) throw KVError("PagedKVCache.storage: wrong dtype size");
        std::vector<py::ssize_t> shape = {o.num_layers, o.num_pages, o.num_kv_heads, o.page_size, o.head_dim};
        return py::make_tuple(py::array(dt, shape, c.keys(), self), py::array(dt, shape, c.values(), self));
      }, py::arg("dtype"))
      .def_property_readonly("num_threads", [](const PagedKVCache& c) { return c.options().num_threads; });
}

// Python bindings of the CPU kernels: disco._native.cpu_matmul_nt, cpu_embedding,
// cpu_isas. disco/cpu_kernels.py registers them as library calls; the checks here keep
// the C++ memory-safe and name what is wrong (KernelError -> disco.errors.KernelError).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <vector>

#include "cpu_kernels/kernels.h"

namespace py = pybind11;
using namespace disco::cpu;

namespace {

std::string shape_text(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string dtype_text(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// Whether w's dtype is ml_dtypes' bfloat16 (numpy kind 'V', 2 bytes). A decode step makes
// hundreds of calls, so the usual case is a pointer comparison with the dtype seen last;
// the name is compared (a Python call) only when the pointer differs.
bool is_bfloat16(const py::array& w) {
  static PyObject* seen = nullptr;  // a dtype object known to be bfloat16, kept alive
  PyObject* d = reinterpret_cast<PyObject*>(py::detail::array_proxy(w.ptr())->descr);
  if (d == seen) return true;
  if (w.dtype().kind() != 'V' || w.itemsize() != 2 || dtype_text(w) != "bfloat16") return false;
  Py_INCREF(d);
  Py_XDECREF(seen);
  seen = d;
  return true;
}

// The format of a float weight, by its dtype (float32, float16, bfloat16).
Format float_format(const char* fn, const py::array& w) {
  const char kind = w.dtype().kind();
  if (kind == 'f' && w.itemsize() == 4) return Format::kF32;
  if (kind == 'f' && w.itemsize() == 2) return Format::kF16;
  if (is_bfloat16(w)) return Format::kBF16;
  throw KernelError(std::string(fn) + ": a weight of dtype " + dtype_text(w) +
                    " needs its format named (float32, float16 and bfloat16 are found from the dtype)");
}

// code >= 0: a Format; kFromDtype: the float format of w's dtype.
constexpr int kFromDtype = -1;

Format to_format(const char* fn, int code, const py::array& w) {
  if (code == kFromDtype) return float_format(fn, w);
  if (code < 0 || code >= kNumFormats)
    throw KernelError(std::string(fn) + ": unknown weight format code " + std::to_string(code) +
                      "; expected -1 (from the weight's dtype) or 0.." + std::to_string(kNumFormats - 1));
  return static_cast<Format>(code);
}

// The dtype a weight of format f is stored in: float32, float16, bfloat16, or uint8 bytes.
bool weight_dtype_ok(Format f, const py::array& w) {
  const char kind = w.dtype().kind();
  const py::ssize_t size = w.itemsize();
  switch (f) {
    case Format::kF32: return kind == 'f' && size == 4;
    case Format::kF16: return kind == 'f' && size == 2;
    case Format::kBF16: return is_bfloat16(w);
    default: return (kind == 'u' || kind == 'i') && size == 1;
  }
}

const char* weight_dtype_name(Format f) {
  switch (f) {
    case Format::kF32: return "float32";
    case Format::kF16: return "float16";
    case Format::kBF16: return "bfloat16";
    default: return "uint8 (the GGUF blocks' bytes)";
  }
}

// W: 2-D, rows of row_bytes(format, k) contiguous bytes, any row stride >= that.
// Returns the row stride in bytes.
int64_t check_weight(const char* fn, Format f, const py::array& w, int64_t k) {
  const std::string where = std::string(fn) + ": weight";
  if (!weight_dtype_ok(f, w))
    throw KernelError(where + " of format " + format_info(f).name + " must have dtype " + weight_dtype_name(f) +
                      "; got " + dtype_text(w));
  if (w.ndim() != 2) throw KernelError(where + " must be 2-D (rows, row bytes); got shape " + shape_text(w));
  const int64_t rb = row_bytes(f, k);
  if (w.shape(1) * w.itemsize() != rb || (w.shape(1) > 1 && w.strides(1) != w.itemsize()) || w.strides(0) < rb)
    throw KernelError(where + " rows must hold k = " + std::to_string(k) + " weights of format " +
                      format_info(f).name + ", " + std::to_string(rb) + " contiguous bytes; got shape " +
                      shape_text(w) + " of " + dtype_text(w) + " with strides (" + std::to_string(w.strides(0)) +
                      ", " + std::to_string(w.strides(1)) + ")");
  return w.strides(0);
}

void check_f32(const char* fn, const char* name, const py::array& a, bool writable) {
  if (a.dtype().kind() != 'f' || a.itemsize() != 4 || !(a.flags() & py::array::c_style) ||
      (writable && !a.writeable()) || a.ndim() < 1)
    throw KernelError(std::string(fn) + ": " + name + " must be a C-contiguous" + (writable ? ", writable" : "") +
                      " float32 array of at least 1 dimension; got " + dtype_text(a) + " of shape " + shape_text(a));
}

const IsaKernels& pick(const std::string& isa) { return isa.empty() ? default_isa() : find_isa(isa.c_str()); }

// Below this many multiply-adds a call runs on the calling thread: waking a team costs more.
constexpr int64_t kParallelWork = 1 << 15;

void matmul_nt(py::array x, py::array w, py::array out, int format, int num_threads, const std::string& isa) {
  const char* fn = "cpu_matmul_nt";
  const Format f = to_format(fn, format, w);
  check_f32(fn, "x", x, false);
  check_f32(fn, "out", out, true);
  const int64_t k = x.shape(x.ndim() - 1);
  const int64_t ws = check_weight(fn, f, w, k);
  const int64_t n = w.shape(0);
  bool ok = out.ndim() == x.ndim() && out.shape(out.ndim() - 1) == n;
  for (py::ssize_t i = 0; ok && i + 1 < x.ndim(); ++i) ok = out.shape(i) == x.shape(i);
  if (!ok)
    throw KernelError(std::string(fn) + ": out must have shape x.shape[:-1] + (n,) = " + shape_text(x) +
                      "[:-1] + (" + std::to_string(n) + ",); got " + shape_text(out));
  MatmulArgs a;
  a.format = f;
  a.m = 1;
  for (py::ssize_t i = 0; i + 1 < x.ndim(); ++i) a.m *= x.shape(i);
  a.n = n;
  a.k = k;
  a.x = static_cast<const float*>(x.data());
  a.w = static_cast<const uint8_t*>(w.data());
  a.w_stride = ws;
  a.y = static_cast<float*>(out.mutable_data());
  a.num_threads = a.m * n * k < kParallelWork ? 1 : resolve_threads(num_threads);
  const IsaKernels& kern = pick(isa);
  if (k == 0) {  // an empty sum
    std::fill(a.y, a.y + out.size(), 0.f);
    return;
  }
  py::gil_scoped_release nogil;
  kern.matmul_nt(a);
}

// first < 0: every id is a row of w. first >= 0 (a vocabulary-parallel slice holding rows
// [first, first + rows of w) of the whole table): row id - first, zeros for other ids.
void embedding(py::array ids, py::array w, py::array out, int format, int num_threads, const std::string& isa,
               int64_t first) {
  const char* fn = "cpu_embedding";
  const Format f = to_format(fn, format, w);
  check_f32(fn, "out", out, true);
  if (ids.dtype().kind() != 'i' || ids.itemsize() != 8 || !(ids.flags() & py::array::c_style))
    throw KernelError(std::string(fn) + ": ids must be a C-contiguous int64 array; got " + dtype_text(ids) +
                      " of shape " + shape_text(ids));
  const int64_t k = out.shape(out.ndim() - 1);
  const int64_t ws = check_weight(fn, f, w, k);
  bool ok = out.ndim() == ids.ndim() + 1;
  for (py::ssize_t i = 0; ok && i < ids.ndim(); ++i) ok = out.shape(i) == ids.shape(i);
  if (!ok)
    throw KernelError(std::string(fn) + ": out must have shape ids.shape + (k,) = " + shape_text(ids) + " + (" +
                      std::to_string(k) + ",); got " + shape_text(out));
  const int64_t rows = ids.size(), vocab = w.shape(0);
  const int64_t* idp = static_cast<const int64_t*>(ids.data());
  std::vector<int64_t> local;
  if (first >= 0) {  // the kernel's masked rows: -1
    local.resize(rows);
    for (int64_t r = 0; r < rows; ++r) local[r] = idp[r] >= first && idp[r] - first < vocab ? idp[r] - first : -1;
    idp = local.data();
  } else {
    for (int64_t r = 0; r < rows; ++r)
      if (idp[r] < 0 || idp[r] >= vocab)
        throw KernelError(std::string(fn) + ": ids[" + std::to_string(r) + "] = " + std::to_string(idp[r]) +
                          " is outside the table's rows [0, " + std::to_string(vocab) + ")");
  }
  EmbeddingArgs a;
  a.format = f;
  a.rows = rows;
  a.k = k;
  a.ids = idp;
  a.w = static_cast<const uint8_t*>(w.data());
  a.w_stride = ws;
  a.out = static_cast<float*>(out.mutable_data());
  a.num_threads = rows * k < kParallelWork ? 1 : resolve_threads(num_threads);
  const IsaKernels& kern = pick(isa);
  py::gil_scoped_release nogil;
  kern.embedding(a);
}

}  // namespace

void bind_cpu_kernels(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const KernelError& e) {
      py::object cls = py::module_::import("disco.errors").attr("KernelError");
      PyErr_SetString(cls.ptr(), e.what());
    }
  });
  m.def("cpu_matmul_nt", &matmul_nt, py::arg("x"), py::arg("w"), py::arg("out"), py::arg("format"),
        py::arg("num_threads") = 0, py::arg("isa") = "",
        "out[..., n] = x[..., k] @ W[n, k]^T with W stored in `format` (csrc/cpu_kernels/formats.h; -1: "
        "the float format of W's dtype); num_threads 0: OpenMP's default; isa '': the best this CPU runs.");
  m.def("cpu_embedding", &embedding, py::arg("ids"), py::arg("w"), py::arg("out"), py::arg("format"),
        py::arg("num_threads") = 0, py::arg("isa") = "", py::arg("first") = -1,
        "out[..., :] = W[ids[...], :] dequantized to float32 (format as for cpu_matmul_nt); first >= 0: W "
        "holds rows [first, first + len(W)) of a table, other ids give zero rows.");
  // Library calls (disco/cpu_kernels.py): (x, w, out) with the format fixed, positional
  // only. A decode step makes hundreds of these calls; keyword arguments (a partial of
  // cpu_matmul_nt) would cost pybind11 about as much as a small kernel.
  m.def("cpu_matmul_nt_fn", [](int format) {
    const std::string none;
    return py::cpp_function([format, none](py::array x, py::array w, py::array out) {
      matmul_nt(std::move(x), std::move(w), std::move(out), format, 0, none);
    });
  }, py::arg("format"), "cpu_matmul_nt(x, w, out, format) as a function of (x, w, out).");
  // The VM patches kernel argument arrays with data pointers on every planned call;
  // numpy's __array_interface__ builds a dict (dtype text included) for each.
  m.def("data_ptr", [](py::handle a) -> intptr_t {
    if (!py::isinstance<py::array>(a))
      throw py::type_error(std::string("data_ptr: expected a numpy array, got ") + Py_TYPE(a.ptr())->tp_name);
    return reinterpret_cast<intptr_t>(py::detail::array_proxy(a.ptr())->data);
  }, py::arg("a"), "Address of the first element of numpy array a.");
  m.def("cpu_isas", [] {
    std::vector<std::string> names;
    for (int i = 0; i < num_isas(); ++i) names.push_back(isa_kernels(i).name);
    return names;
  }, "Instruction sets of the CPU kernels this build and CPU run, best first.");
  m.def("cpu_amx_rows", [](const std::string& isa, const std::string& dtype) -> int64_t {
    if (dtype == "bfloat16") return pick(isa).amx_rows;
    if (dtype == "float32") return pick(isa).amx_rows_f32;
    return -1;
  }, py::arg("isa") = "", py::arg("dtype") = "bfloat16",
        "Rows of x past which this variant multiplies weights of `dtype` on AMX tiles (-1: never).");
  m.def("cpu_amx_x_terms", &amx_x_terms, "The bfloat16 parts x is split into there (3: exact).");
  m.def("cpu_default_isa", [] { return std::string(default_isa().name); },
        "The instruction set used when a call names none (DISCO_CPU_ISA, else the best).");
}

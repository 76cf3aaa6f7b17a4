// disco._native.KernelCall: one planned call of a compiled kernel (disco/vm/plan.py).
// A kernel has the ABI `void k(void* const* args, const int64_t* dims)`; a plan calls
// each with argument and dims arrays it built once (their pointers patched in place),
// so a call needs nothing but the three addresses. Through ctypes that costs 0.2-0.6 us
// (argument conversion, a foreign-call frame), and a decode step calls ~85 kernels; this
// type's call (vectorcall, no arguments) costs about what calling a Python no-op does.
// Like ctypes, the call releases the GIL (threaded sessions run kernels in parallel).
#include <pybind11/pybind11.h>

#include <cstdint>

namespace py = pybind11;

namespace {

using KernelFn = void (*)(void* const*, const int64_t*);

struct KernelCallObject {
  PyObject_HEAD
  vectorcallfunc vectorcall;
  KernelFn fn;
  void* const* args;
  const int64_t* dims;
  PyObject* func;  // what `fn` came from (a ctypes function): kept alive, and named by profilers
};

PyObject* kc_vectorcall(PyObject* self, PyObject* const*, size_t nargsf, PyObject* kwnames) {
  if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
    PyErr_SetString(PyExc_TypeError, "KernelCall takes no arguments");
    return nullptr;
  }
  auto* k = reinterpret_cast<KernelCallObject*>(self);
  Py_BEGIN_ALLOW_THREADS
  k->fn(k->args, k->dims);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyObject* kc_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  static const char* names[] = {"fn", "args", "dims", "func", nullptr};
  unsigned long long fn = 0, a = 0, d = 0;
  PyObject* func = nullptr;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "KKKO:KernelCall", const_cast<char**>(names), &fn, &a, &d,
                                   &func))
    return nullptr;
  if (fn == 0 || a == 0 || d == 0) {
    PyErr_SetString(PyExc_ValueError, "KernelCall: a null address");
    return nullptr;
  }
  auto* k = reinterpret_cast<KernelCallObject*>(type->tp_alloc(type, 0));
  if (k == nullptr) return nullptr;
  k->vectorcall = kc_vectorcall;
  k->fn = reinterpret_cast<KernelFn>(static_cast<uintptr_t>(fn));
  k->args = reinterpret_cast<void* const*>(static_cast<uintptr_t>(a));
  k->dims = reinterpret_cast<const int64_t*>(static_cast<uintptr_t>(d));
  Py_INCREF(func);
  k->func = func;
  return reinterpret_cast<PyObject*>(k);
}

void kc_dealloc(PyObject* self) {
  auto* k = reinterpret_cast<KernelCallObject*>(self);
  PyObject_GC_UnTrack(self);
  Py_CLEAR(k->func);
  Py_TYPE(self)->tp_free(self);
}

int kc_traverse(PyObject* self, visitproc visit, void* arg) {
  Py_VISIT(reinterpret_cast<KernelCallObject*>(self)->func);
  return 0;
}

int kc_clear(PyObject* self) {
  Py_CLEAR(reinterpret_cast<KernelCallObject*>(self)->func);
  return 0;
}

PyObject* kc_get_func(PyObject* self, void*) {
  PyObject* f = reinterpret_cast<KernelCallObject*>(self)->func;
  if (f == nullptr) Py_RETURN_NONE;
  Py_INCREF(f);
  return f;
}

PyGetSetDef kc_getset[] = {{"func", kc_get_func, nullptr, "the function the kernel's address came from", nullptr},
                           {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyTypeObject KernelCallType = [] {
  PyTypeObject t{};  // zero: every slot not set below
  Py_SET_REFCNT(reinterpret_cast<PyObject*>(&t), 1);
  t.tp_name = "disco._native.KernelCall";
  t.tp_basicsize = sizeof(KernelCallObject);
  t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL;
  t.tp_doc = "KernelCall(fn, args, dims, func): calling it (no arguments) runs the kernel at address fn "
             "as fn(args, dims) with the GIL released; `func` is kept alive.";
  t.tp_new = kc_new;
  t.tp_dealloc = kc_dealloc;
  t.tp_traverse = kc_traverse;
  t.tp_clear = kc_clear;
  t.tp_call = PyVectorcall_Call;
  t.tp_vectorcall_offset = offsetof(KernelCallObject, vectorcall);
  t.tp_getset = kc_getset;
  return t;
}();

}  // namespace

void bind_vm(py::module_& m) {
  if (PyType_Ready(&KernelCallType) < 0) throw py::error_already_set();
  Py_INCREF(&KernelCallType);
  m.add_object("KernelCall", reinterpret_cast<PyObject*>(&KernelCallType));
}

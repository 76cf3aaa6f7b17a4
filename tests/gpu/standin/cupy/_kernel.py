"""`cupy.RawModule` / `RawKernel` of the stand-in: CUDA source runs as its C build.

The stand-in cannot compile CUDA. "Compiling" parses the `extern "C" __global__`
signatures out of the source (so get_function of a missing symbol fails like cupy's,
and every launch is checked against the parameter list NVRTC would see). Running a
kernel needs its C build from the registry in the folder $DISCO_STANDIN_KERNELS:
`<sha256 of the CUDA source>.json` + `.so`, written by tests/gpu/standin/kernel_registry.py
whenever compiler.codegen.cuda.generate_cuda runs under the test hook. Each CUDA kernel
(one top-level loop nest of a PrimFunc) has a C function of the same loop nest with its
thread loops made serial, taking the buffers, then the workspaces, as pointers (the C
kernel ABI of compiler/codegen/c.py).

Launch checks, beyond cupy's own (tuple grid/block, numpy arrays refused, scalars as
CScalar): the argument count, each argument's C type against the parameter (an int64
parameter given an int32 or a float, a double given an int, a `float*` given a
float16 array: on a GPU these read garbage), launch limits, and that every pointer lies
inside a live device allocation large enough for the buffer's shape (host pointers,
freed buffers and short workspaces fail as illegal addresses).
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import operator
import os
import re
import threading

import numpy as np

from . import _runtime as rt
from ._core import ndarray

_SIG = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')
_PTR_TYPES = {"float": ("float32",), "double": ("float64",), "__half": ("float16",),
              "__nv_bfloat16": ("bfloat16", "uint16"), "int8_t": ("int8",), "int16_t": ("int16",),
              "int32_t": ("int32",), "int64_t": ("int64",), "uint8_t": ("uint8",),
              "uint16_t": ("uint16",), "uint32_t": ("uint32",), "uint64_t": ("uint64",),
              "bool": ("bool",), "int": ("int32",), "char": ("int8", "uint8")}
_VALUE_TYPES = {"int64_t": ("int64", "uint64"), "double": ("float64",), "float": ("float32",),
                "int32_t": ("int32",), "int": ("int32",), "uint64_t": ("uint64", "int64")}
_ITEMSIZE = {"bfloat16": 2, "bool": 1}


def _parse(code: str) -> dict:
    """{symbol: [(kind, ctype, decl)]} of the source's kernels; kind "ptr" or "val"."""
    kernels = {}
    for m in _SIG.finditer(code):
        params = []
        for decl in (p.strip() for p in m.group(2).split(",") if p.strip()):
            words = decl.replace("*", " * ").replace("__restrict__", "").replace("const", "").split()
            if "*" in words:
                params.append(("ptr", " ".join(words[:words.index("*")]), decl))
            else:
                params.append(("val", " ".join(words[:-1]), decl))
        kernels[m.group(1)] = params
    return kernels


_REGISTRY: dict[str, dict] = {}
_reg_lock = threading.Lock()


def _registered(code: str) -> dict:
    """The C build of `code` from $DISCO_STANDIN_KERNELS (loaded once per process)."""
    sha = hashlib.sha256(code.encode()).hexdigest()
    with _reg_lock:
        entry = _REGISTRY.get(sha)
        if entry is not None:
            return entry
        folder = os.environ.get("DISCO_STANDIN_KERNELS")
        path = os.path.join(folder, sha + ".json") if folder else None
        if path is None or not os.path.exists(path):
            raise RuntimeError(
                f"stand-in cupy cannot compile CUDA: there is no C build of this CUDA source "
                f"(sha256 {sha[:16]}) in DISCO_STANDIN_KERNELS={folder!r}. Sources produced by "
                "compiler.codegen.cuda.generate_cuda while the tests/gpu hook is active get one "
                "(tests/gpu/standin/kernel_registry.py).")
        with open(path) as f:
            entry = json.load(f)
        lib = ctypes.CDLL(os.path.join(folder, entry["so"]))
        for k in entry["kernels"].values():
            fn = getattr(lib, k["c_symbol"])
            fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p], None
            k["fn"] = fn
        entry["lib"] = lib
        _REGISTRY[sha] = entry
        return entry


class RawModule:
    """cupy.RawModule(code=..., options=...) (see the module docstring)."""

    def __init__(self, *, code=None, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, jitify=None):
        if (code is None) == (path is None):
            raise TypeError("Exactly one of `code` and `path` keyword arguments must be given.")
        if code is not None and not isinstance(code, str):
            raise TypeError(f"Argument 'code' has incorrect type (expected str, got {type(code).__name__})")
        if not isinstance(options, tuple):
            raise TypeError(f"Argument 'options' has incorrect type (expected tuple, got "
                            f"{type(options).__name__})")
        if path is not None:
            raise NotImplementedError("stand-in cupy: RawModule(path=...) loads a cubin/PTX, which "
                                      "cannot run on the CPU")
        for o in options:
            if not isinstance(o, str):
                raise TypeError(f"NVRTC options must be str, got {o!r}")
        self.code, self.options, self.backend = code, options, backend
        self._kernels = None

    def _module(self):
        if self._kernels is None:
            self._kernels = _parse(self.code)
        return self._kernels

    def compile(self, log_stream=None):
        self._module()

    def get_function(self, name):
        if not isinstance(name, str):
            raise TypeError(f"Argument 'name' has incorrect type (expected str, got {type(name).__name__})")
        params = self._module().get(name)
        if params is None:
            raise rt.CUDADriverError("CUDA_ERROR_NOT_FOUND", "named symbol not found",
                                     f"{name!r} is not an extern \"C\" __global__ function of the source")
        return RawKernel._of_module(self, name, params)


class RawKernel:
    """A kernel of a RawModule; `kernel(grid, block, args, shared_mem=0, stream=None)`."""

    def __init__(self, code, name, options=(), backend="nvrtc", **kwargs):
        mod = RawModule(code=code, options=tuple(options), backend=backend)
        self.__dict__.update(RawKernel._of_module(mod, name, mod.get_function(name).params).__dict__)

    @classmethod
    def _of_module(cls, module: RawModule, name: str, params: list):
        k = cls.__new__(cls)
        k.module, k.name, k.__name__, k.params = module, name, name, params
        return k

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None, enable_cooperative_groups=False):
        for what, v in (("grid", grid), ("block", block)):
            if not isinstance(v, tuple):
                raise TypeError(f"Argument '{what}' has incorrect type (expected tuple, got {type(v).__name__})")
        g = [max(1, operator.index(v)) for v in (grid + (1, 1))[:3]]
        b = [max(1, operator.index(v)) for v in (block + (1, 1))[:3]]
        if b[0] * b[1] * b[2] > 1024 or b[0] > 1024 or b[1] > 1024 or b[2] > 64 or g[0] >= 2 ** 31 \
                or g[1] > 65535 or g[2] > 65535:
            raise rt.CUDADriverError("CUDA_ERROR_INVALID_VALUE", "invalid argument",
                                     f"launch of {self.name} with grid {tuple(g)}, block {tuple(b)}")
        if not isinstance(args, tuple):
            raise TypeError(f"stand-in cupy: kernel arguments must be a tuple, got {type(args).__name__}")
        vals = [_c_value(a) for a in args]
        if len(vals) != len(self.params):
            raise TypeError(f"stand-in cupy: kernel {self.name} takes {len(self.params)} parameters, "
                            f"got {len(vals)} arguments")
        for i, ((kind, ctype, decl), (vkind, v, dt)) in enumerate(zip(self.params, vals)):
            _check_param(self.name, i, kind, ctype, decl, vkind, v, dt)
        entry = _registered(self.module.code)
        k = entry["kernels"].get(self.name)
        if k is None:
            raise RuntimeError(f"stand-in cupy: the C build registered for this source has no {self.name!r}")
        fn, ptrs, dims, mems = _c_arguments(self.name, k, [v for _, v, _ in vals])
        rt.launch(lambda: fn(ctypes.addressof(ptrs), ctypes.addressof(dims)), stream, mems)


def _c_value(x):
    """cupy's _pointer(): (kind, value, dtype) of one kernel argument."""
    if x is None:
        return ("ptr", 0, None)
    if isinstance(x, ndarray):
        return ("ptr", x.data.ptr, x.dtype)
    if isinstance(x, np.ndarray):
        if x.size == 1:                     # cupy passes size-1 numpy arrays by value
            return ("val", x.reshape(()).item(), x.dtype)
        raise TypeError(f"You are trying to pass a numpy.ndarray of shape {x.shape} as a kernel "
                        "parameter. Only numpy.ndarrays of size one can be passed by value. If you "
                        "meant to pass a pointer to __global__ memory, you need to pass a "
                        "cupy.ndarray instead.")
    t = type(x)
    if t is bool:
        return ("val", x, np.dtype(np.bool_))
    if t is int:
        return ("val", x, np.dtype(np.uint64 if x >= 0x8000000000000000 else np.int64))
    if t is float:
        return ("val", x, np.dtype(np.float64))
    if t is complex:
        return ("val", x, np.dtype(np.complex128))
    if isinstance(x, np.generic):
        return ("val", x.item(), x.dtype)
    raise TypeError(f"Unsupported type {t}")


def _check_param(kname, i, kind, ctype, decl, vkind, v, dt):
    where = f"stand-in cupy: kernel {kname} parameter {i} `{decl}`"
    if kind == "ptr":
        if vkind == "ptr":
            ok = _PTR_TYPES.get(ctype)
            if dt is not None and ok is not None and dt.name not in ok:
                raise TypeError(f"{where} points to {ctype}, got a {dt.name} cupy array")
        elif dt.name not in ("int64", "uint64"):
            raise TypeError(f"{where} is a pointer; got a {dt.name} value ({dt.itemsize} bytes, where "
                            "the kernel reads an 8-byte address)")
    else:
        if vkind == "ptr":
            raise TypeError(f"{where} is a {ctype} value; got a device array (its address)")
        ok = _VALUE_TYPES.get(ctype)
        if ok is not None and dt.name not in ok:
            raise TypeError(f"{where} is a {ctype}; got a {dt.name} value ({dt.itemsize} bytes): "
                            "the kernel would read a wrong bit pattern")


def _c_arguments(kname, k, values):
    """(C function, pointer array, dims array) for one launch, after checking that every
    pointer covers its buffer (shape from the dims slots, workspace shapes evaluated)."""
    nbuf, nws = len(k["buffers"]), len(k["workspaces"])
    ptrs = [int(v) for v in values[:nbuf + nws]]
    d = list(values[nbuf + nws:])
    nbufdims = sum(b["ndim"] for b in k["buffers"])
    if len(d) != nbufdims + len(k["scalars"]):
        raise RuntimeError(f"stand-in cupy: kernel {kname}: {len(d)} dims slots, the registry expects "
                           f"{nbufdims} + {len(k['scalars'])}")
    env = {"__builtins__": {}, "min": min, "max": max, "d": d}
    ws_shapes = [[int(eval(e, env)) for e in w["shape"]] for w in k["workspaces"]]   # noqa: S307
    shapes, off, mems = [], 0, []
    for b in k["buffers"]:
        shapes.append(d[off:off + b["ndim"]])
        off += b["ndim"]
    for j, (p, spec, shape) in enumerate(zip(ptrs, k["buffers"] + k["workspaces"], shapes + ws_shapes)):
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        nbytes = n * (_ITEMSIZE.get(spec["dtype"]) or np.dtype(spec["dtype"]).itemsize)
        what = f"kernel {kname} {'buffer' if j < nbuf else 'workspace'} {spec.get('name', j)!r} " \
               f"({spec['dtype']}{list(shape)})"
        mem = rt.find_allocation(p, nbytes) if nbytes else None
        mems.append(mem)
        if nbytes and mem is None:
            raise rt.CUDARuntimeError(700, f"{what}: [{p:#x}, +{nbytes}) is not inside a live device "
                                           "allocation (a host pointer, a freed buffer or too small a buffer)")
    floats = {nbufdims + i for i, s in enumerate(k["scalars"]) if s["dtype"].startswith(("float", "bfloat"))}
    c_dims = [int(v) for v in d[:nbufdims]] + [s for shape in ws_shapes for s in shape]
    for i in range(nbufdims, len(d)):
        c_dims.append(int(np.float64(d[i]).view(np.int64)) if i in floats else int(d[i]))
    ptr_arr = (ctypes.c_void_p * max(len(ptrs), 1))(*ptrs)
    dim_arr = (ctypes.c_int64 * max(len(c_dims), 1))(*c_dims)
    return k["fn"], ptr_arr, dim_arr, mems

"""The CUDA device of the runtime: cupy arrays, kernels compiled by NVRTC, cuBLAS
matmul, CUDA graphs, and binding each worker of a session to its GPU.

    vm = disco.VirtualMachine(ex, device="cuda:0")                  # ex = compiler.build(mod, "cuda")
    vm = disco.VirtualMachine(ex, device="cuda", cuda_graph=True)   # replay fixed-shape calls

Tensors on this device are `cupy.ndarray`s; numpy arrays are copied to the device and
anything with `__dlpack__` (torch CUDA tensors) is taken without a copy. An
Executable built for "cuda" carries, in `metadata["cuda"]`, the CUDA source of its
kernels and each tensor program's launch description (compiler/codegen/cuda.py
documents the kernel ABI). The source is compiled once per process by NVRTC through
`cupy.RawModule`, cached by the sha256 of (source, options, device architecture);
cupy also keeps the compiled binary in its own disk cache.

Matmul: DispatchLibrary calls the packed function "disco.blas.matmul"; on this device
the VM resolves a packed name `<name>` to `<name>.cuda` when that is registered, so
"disco.blas.matmul.cuda" (below: cuBLAS through disco.cublas, writing into the VM's
destination buffer, capturable into CUDA graphs) runs instead of the numpy version.

CUDA graphs (`cuda_graph=True`): the first call of a function with given argument
shapes, dtypes and scalar values runs eagerly (recording the VM plan); the second runs
once more (filling the memory pool) and captures a third run on a side stream into a
graph. The graph reads in place the arguments that were the same device arrays on
both calls (weights, KV caches: no copy per call) and copies the others (activations)
into buffers of its own before each replay; passing another array where it reads in
place captures again, with that argument copied. The returned tensors are the graph's
own output buffers: they are overwritten by the next replay of the same function (copy
them to keep them). Functions whose shapes depend on data cannot be captured; pass
`cuda_graph=False` (the default) for them.

This module imports cupy lazily: importing it on a machine without cupy or a GPU
works; using the device raises `DiscoError` saying what is missing.
"""
from __future__ import annotations

import ast
import ctypes
import hashlib
import os
import struct
import sys
import threading
from typing import Any, Callable, Optional

import numpy as np

from . import cublas
from ._context import current_context
from .errors import DiscoError
from .registry import register_func
from .tensor import as_numpy, contiguous, np_dtype

_lock = threading.Lock()
_MODULES: dict[str, Any] = {}       # sha256 -> cupy.RawModule
_graph_capture = threading.local()  # .held: a list while this thread captures a CUDA graph


def hold_for_graph(obj: Any) -> None:
    """Keep `obj` (device memory a kernel of the graph being captured reads or writes)
    alive as long as the graph: freed, the memory pool would hand it to the next
    allocation while replays still write it. A no-op when no capture is under way."""
    held = getattr(_graph_capture, "held", None)
    if held is not None:
        held.append(obj)


def cupy_module():
    """`import cupy`, or DiscoError when cupy or a GPU is missing."""
    try:
        import cupy
    except ImportError as e:
        raise DiscoError("device 'cuda' needs cupy: pip install 'disco-tp[gpu]' (cupy-cuda12x); "
                         f"import failed: {e}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # cupy raises CUDARuntimeError without a driver
        raise DiscoError(f"device 'cuda': no usable GPU ({type(e).__name__}: {e})") from None
    if count < 1:
        raise DiscoError("device 'cuda': no GPU found (cudaGetDeviceCount() = 0)")
    return cupy


def gpu_available() -> bool:
    try:
        cupy_module()
        return True
    except DiscoError:
        return False


def device_index(device: str) -> int:
    """"cuda" -> the current device, "cuda:N" -> N."""
    if device == "cuda":
        return cupy_module().cuda.runtime.getDevice()
    head, _, idx = device.partition(":")
    if head != "cuda" or not idx.isdigit():
        raise DiscoError(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'")
    cp = cupy_module()
    count = cp.cuda.runtime.getDeviceCount()
    if int(idx) >= count:
        raise DiscoError(f"device {device!r}: this machine has {count} GPU(s) (cuda:0..cuda:{count - 1})")
    return int(idx)


# -- compiling ------------------------------------------------------------------------------

def _include_dirs(nvrtc_major: Optional[int] = None) -> list[str]:
    """Where cuda_fp16.h / cuda_bf16.h are for NVRTC (pip wheels or a toolkit): the
    directories whose headers match NVRTC's major version first (headers of another
    CUDA major version may not compile), the others only when none matches."""
    dirs = []
    for base in sys.path:
        for sub in ("nvidia/cuda_runtime/include", "nvidia/cuda_nvrtc/include", "nvidia/cu13/include"):
            dirs.append(os.path.join(base, sub))
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root:
            dirs.append(os.path.join(root, "include"))
    found = [d for d in dict.fromkeys(dirs) if os.path.isfile(os.path.join(d, "cuda_fp16.h"))]
    if nvrtc_major is None:
        return found
    same = [d for d in found if _cuda_major(d) == nvrtc_major]
    return same or found


def _cuda_major(include_dir: str) -> Optional[int]:
    """CUDA_VERSION // 1000 from the directory's cuda.h (None if unknown)."""
    try:
        with open(os.path.join(include_dir, "cuda.h"), errors="replace") as f:
            for line in f:
                if line.startswith("#define CUDA_VERSION"):
                    return int(line.split()[2]) // 1000
    except (OSError, ValueError, IndexError):
        return None
    return None


def _nvrtc_major(cp) -> Optional[int]:
    try:
        return int(cp.cuda.nvrtc.getVersion()[0])
    except Exception:
        return None


def compile_module(source: str, options=("-std=c++17",)):
    """A cupy.RawModule for `source`, compiled once per (source, options, GPU arch)."""
    cp = cupy_module()
    arch = cp.cuda.Device().compute_capability
    opts = tuple(options) + tuple(f"-I{d}" for d in _include_dirs(_nvrtc_major(cp)))
    key = hashlib.sha256("\0".join((source, *opts, arch)).encode()).hexdigest()
    with _lock:
        mod = _MODULES.get(key)
        if mod is None:
            try:
                mod = cp.RawModule(code=source, options=opts)
                mod.compile()
            except Exception as e:
                raise DiscoError(f"NVRTC could not compile the executable's CUDA kernels "
                                 f"(options {opts}): {e}") from None
            _MODULES[key] = mod
    return mod


def device_ptr(a) -> int:
    """The device address of a cupy array's first element."""
    return a.data.ptr


# -- launch expressions -----------------------------------------------------------------------

_OK = (ast.Expression, ast.BinOp, ast.Constant, ast.Name, ast.Load, ast.Subscript, ast.Call,
       ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod)


def compile_launch_expr(text: str) -> Callable[[list], int]:
    """A launch-size expression over the dims list `d` (ints, + - * // %, min, max)."""
    tree = ast.parse(text, mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, _OK):
            raise DiscoError(f"launch expression {text!r}: {type(node).__name__} is not allowed")
        if isinstance(node, ast.Name) and node.id not in ("d", "min", "max"):
            raise DiscoError(f"launch expression {text!r}: unknown name {node.id!r}")
    code = compile(tree, "<launch>", "eval")
    return lambda d: int(eval(code, {"__builtins__": {}, "min": min, "max": max, "d": d}))  # noqa: S307


class CudaFunction:
    """Runs one tensor program: its kernels in order, on the current stream.

    `info` is the JSON launch description (compiler.codegen.cuda.FunctionLaunch)."""

    def __init__(self, module, info: dict):
        self.name = info["name"]
        self.info = info
        self.kernels = [(module.get_function(k["symbol"]), [compile_launch_expr(g) for g in k["grid"]],
                         [compile_launch_expr(b) for b in k["block"]]) for k in info["kernels"]]
        self.workspaces = [(np_dtype(w["dtype"]), [compile_launch_expr(s) for s in w["shape"]])
                           for w in info["workspaces"]]
        self.num_buffers = len(info["buffers"])
        self.num_dims = sum(b["ndim"] for b in info["buffers"]) + len(info["scalars"])
        first_scalar = self.num_dims - len(info["scalars"])
        self.float_slots = {first_scalar + i for i, s in enumerate(info["scalars"])
                            if s["dtype"].startswith(("float", "bfloat"))}
        self._configs: dict = {}     # dims -> (launches, workspaces)

    def _config(self, d: tuple):
        cfg = self._configs.get(d)
        if cfg is None:
            cp = cupy_module()
            dl = list(d)
            ws = [cp.empty(tuple(f(dl) for f in shape), dtype) for dtype, shape in self.workspaces]
            launches = [(k, tuple(f(dl) for f in grid), tuple(f(dl) for f in block))
                        for k, grid, block in self.kernels]
            dims = []
            for i, v in enumerate(d):
                dims.append(np.float64(v) if i in self.float_slots else np.int64(v))
            cfg = (launches, tuple(np.uint64(device_ptr(w)) for w in ws), tuple(dims), ws)
            if len(self._configs) > 64:
                self._configs.clear()
            self._configs[d] = cfg
        return cfg

    def launch(self, ptrs: list[int], dims: list) -> None:
        """Launch with raw device pointers (buffers in order) and the dims slots (float
        scalars as Python floats)."""
        cfg = self._config(tuple(dims))
        launches, ws, dims_args, _ = cfg
        hold_for_graph(cfg)         # its workspaces (the config cache may drop them)
        args = tuple(np.uint64(p or 0) for p in ptrs) + ws + dims_args
        for kernel, grid, block in launches:
            if min(grid) <= 0 or min(block) <= 0:
                continue            # an empty extent: nothing to do
            kernel(grid, block, args)

    def __call__(self, *arrays, scalars=()) -> None:
        """Run on cupy arrays (inputs and outputs, in parameter order)."""
        if len(arrays) != self.num_buffers:
            raise DiscoError(f"kernel {self.name}: takes {self.num_buffers} buffers, got {len(arrays)}")
        for a, b in zip(arrays, self.info["buffers"]):
            if a.ndim != b["ndim"] or not a.flags.c_contiguous:
                raise DiscoError(f"kernel {self.name}: buffer {b['name']!r} expects a contiguous "
                                 f"{b['ndim']}-d {b['dtype']} array, got shape {a.shape}")
        dims = [int(s) for a in arrays for s in a.shape] + list(scalars)
        self.launch([device_ptr(a) for a in arrays], dims)

    def vm_entry(self) -> Callable[[int, int], None]:
        """The VM's kernel ABI: (address of the pointer array, address of the dims array);
        float scalars arrive as the bit pattern of a double in their int64 slot."""
        nbuf, ndims, floats = self.num_buffers, self.num_dims, self.float_slots

        def call(ptrs_addr: int, dims_addr: int) -> None:
            ptrs = (ctypes.c_void_p * max(nbuf, 1)).from_address(ptrs_addr)[:nbuf]
            raw = (ctypes.c_int64 * max(ndims, 1)).from_address(dims_addr)[:ndims]
            dims = [struct.unpack("<d", struct.pack("<q", v))[0] if i in floats else v
                    for i, v in enumerate(raw)]
            self.launch(ptrs, dims)
        return call


def load_functions(ex) -> dict[str, CudaFunction]:
    """The tensor programs of an Executable built for "cuda", by kernel name."""
    meta = (ex.metadata or {}).get("cuda")
    if meta is None:
        raise DiscoError(f"the executable was built for target {getattr(ex, 'target', '?')!r}, which "
                         "has no CUDA kernels; build it with compiler.build(mod, target='cuda')")
    if not meta["functions"]:
        return {}
    module = compile_module(meta["source"], tuple(meta.get("options", ("-std=c++17",))))
    return {name: CudaFunction(module, info) for name, info in meta["functions"].items()}


# -- the VM device -------------------------------------------------------------------------

class CudaDevice:
    """What disco.vm needs from a device (see disco/vm/device.py, CpuDevice), for one GPU."""

    def __init__(self, ex, device: str = "cuda", cuda_graph: bool = False, max_graphs: int = 8):
        self.cp = cupy_module()
        self.tensor_type = self.cp.ndarray
        self.index = device_index(device)
        self.name = f"cuda:{self.index}"
        self.cp.cuda.Device(self.index).use()
        self.cuda_graph = cuda_graph
        self.max_graphs = max_graphs
        self.functions = load_functions(ex) if getattr(ex, "kernels", None) else {}

    def empty(self, shape, dtype):
        return self.cp.empty(tuple(shape), dtype=np_dtype(dtype))

    def shared_empty(self, shape, dtype):
        """What a collective reads (CpuDevice.shared_empty): NCCL reads any device array."""
        return self.empty(shape, dtype)

    @staticmethod
    def ptr(a) -> int:
        return device_ptr(a)

    def is_tensor(self, a) -> bool:
        return isinstance(a, self.cp.ndarray)

    def kernel(self, symbol: str) -> Callable[[int, int], None]:
        f = self.functions.get(symbol)
        if f is None:
            raise DiscoError(f"kernel {symbol!r} is missing from the executable's CUDA module; it has "
                             f"{sorted(self.functions)}")
        return f.vm_entry()

    def to_tensor(self, x: Any):
        return to_device(x, self.cp)

    def packed(self, name: str) -> Optional[Callable]:
        """The CUDA variant `<name>.cuda` of a packed function, if registered."""
        from . import registry
        if name.startswith("disco.blas."):
            import disco.blas  # noqa: F401  (the CPU names the variants shadow)
        return registry.get_global_func(name + ".cuda", allow_missing=True)

    def wrap_handle(self, handle):
        return GraphFunction(handle, self, self.max_graphs) if self.cuda_graph else handle


def to_device(x: Any, cp=None):
    """`x` as a C-contiguous cupy array: cupy arrays as they are, DLPack producers (torch
    CUDA tensors) without a copy, host arrays copied to the current GPU. A 0-d array
    stays 0-d (cupy's ascontiguousarray, like numpy's, would make it 1-d)."""
    cp = cp or cupy_module()
    if not isinstance(x, cp.ndarray):
        mod = type(x).__module__
        if mod.startswith("torch"):
            if getattr(x, "is_cuda", False):
                x = cp.from_dlpack(x.contiguous())
            else:
                x = cp.asarray(as_numpy(x))      # bfloat16 tensors via their bit pattern
        elif not isinstance(x, np.ndarray) and hasattr(x, "__dlpack__") and \
                getattr(x, "__dlpack_device__", lambda: (None,))()[0] == 2:     # kDLCUDA
            x = cp.from_dlpack(x)
        else:
            x = cp.asarray(as_numpy(x))
    return contiguous(x)


class _Graph:
    """One captured call: the graph, how it reads each argument, its outputs, and what
    must outlive it."""

    def __init__(self, graph, direct: dict, staged: dict, out, keep):
        self.graph = graph
        self.direct = direct    # arg index -> the caller's device array the graph reads in place
        self.staged = staged    # arg index -> the graph's own buffer, refilled on each replay
        self.out = out
        self.keep = keep

    def reads_in_place(self, args, cp) -> bool:
        """Whether every argument the graph reads in place is the same array again."""
        return all(args[i] is a or _same_memory(args[i], a, cp) for i, a in self.direct.items())


def _same_memory(x, a, cp) -> bool:
    """Whether x and a are C-contiguous device arrays at one address (shapes match by the
    key): what a graph can read in place (the VM would copy a non-contiguous one)."""
    return isinstance(x, cp.ndarray) and isinstance(a, cp.ndarray) and x.flags.c_contiguous \
        and a.flags.c_contiguous and x.data.ptr == a.data.ptr


class GraphFunction:
    """A VM function whose calls are captured into CUDA graphs, one per argument key
    (see the module docstring).

    The first call with a key runs eagerly (it records the VM plan). The second
    captures: arguments that are the same device array as on the first call (weights,
    caches) are read by the graph in place; the others (activations, host arrays) get
    a buffer of the graph's own, which each replay first fills. A later call that
    passes another array where the graph reads in place captures again, with that
    argument staged."""

    def __init__(self, handle, device: CudaDevice, max_graphs: int = 8):
        self.handle = handle
        self.device = device
        self.max_graphs = max_graphs
        self.graphs: dict = {}
        self.first_seen: dict = {}   # key -> the arguments of its first (eager) call
        self.captures = 0       # number of graphs captured (tests read it)

    @property
    def signature(self) -> str:
        return self.handle.signature

    def _key(self, args):
        key = []
        for a in args:
            if hasattr(a, "shape") and hasattr(a, "dtype"):
                key.append(("t", tuple(a.shape), str(a.dtype)))
            elif isinstance(a, (int, float, bool)):
                key.append(("s", a))
            else:
                return None
        return tuple(key)

    def __call__(self, *args):
        key = self._key(args)
        if key is None:
            return self.handle(*args)
        cp = self.device.cp
        entry = self.graphs.get(key)
        if entry is None or not entry.reads_in_place(args, cp):
            first = self.first_seen.pop(key, None)
            if entry is None and first is None:      # first sighting: run eagerly
                if len(self.first_seen) >= 4 * self.max_graphs:
                    self.first_seen.pop(next(iter(self.first_seen)))
                # held, so that no other array can take their addresses until the second call
                self.first_seen[key] = args
                return self.handle(*args)
            before = entry.direct if entry is not None else dict(enumerate(first))
            in_place = {i for i, a in before.items() if _same_memory(args[i], a, cp)}
            entry = self._capture(args, in_place)
            self.graphs.pop(key, None)
            if len(self.graphs) >= self.max_graphs:
                self.graphs.pop(next(iter(self.graphs)))
            self.graphs[key] = entry
        for i, buf in entry.staged.items():
            buf[...] = to_device(args[i], cp)
        entry.graph.launch(stream=cp.cuda.get_current_stream())
        return entry.out

    def _capture(self, args, in_place: set) -> _Graph:
        cp = self.device.cp
        direct = {i: args[i] for i in in_place}
        staged = {i: to_device(a, cp).copy() for i, a in enumerate(args)
                  if hasattr(a, "shape") and i not in in_place}
        call_args = [direct.get(i, staged.get(i, a)) for i, a in enumerate(args)]
        cp.cuda.get_current_stream().synchronize()
        stream = cp.cuda.Stream(non_blocking=True)
        held: list = []
        with stream:
            self.handle(*call_args)          # fills the memory pool for the outputs
            stream.synchronize()
            _graph_capture.held = held       # temporaries of the captured run (hold_for_graph)
            stream.begin_capture()
            try:
                out = self.handle(*call_args)
            except BaseException:
                _graph_capture.held = None
                try:
                    stream.end_capture()     # the capture is void; the original error says why
                except Exception:
                    pass
                raise
            _graph_capture.held = None
            graph = stream.end_capture()
        stream.synchronize()
        self.captures += 1
        # What the graph's kernels read and write must live as long as it: the plans'
        # intermediates (a plan evicted from the handle's cache would free them), the
        # storages the compiler planned, and what the captured run held (workspaces,
        # matmul temporaries); `direct` keeps the arrays it reads in place.
        keep = (held, list(getattr(self.handle, "plans", {}).values()),
                list(getattr(self.handle, "pool", ())))
        return _Graph(graph, direct, staged, out, keep)

    def __repr__(self) -> str:
        return f"<CUDA-graph VM function {self.signature}>"


# -- library functions ------------------------------------------------------------------------

@register_func("disco.blas.matmul.cuda", override=True)
def matmul(a, b, out) -> None:
    """out = a @ b with cuBLAS. Same-type float operands (and float16 into float32) go
    through disco.cublas, whose calls CUDA graphs can capture (cupy's cannot) and which
    accumulates in float32; other mixes through wider copies."""
    cp = cupy_module()
    for what, x in (("a", a), ("b", b), ("out", out)):
        if not isinstance(x, cp.ndarray):
            raise DiscoError(f"disco.blas.matmul.cuda: {what} must be a cupy array, got {type(x).__name__}")
    if cublas.supports(a.dtype.name, b.dtype.name, out.dtype.name):
        cublas.matmul(a, b, out)
    else:       # e.g. float16 @ float32, integers: in float32 (float64 for 64-bit and integer outputs)
        wide = cp.float64 if out.dtype.kind in "iu" or out.dtype.itemsize == 8 else cp.float32
        aw, bw, prod = a.astype(wide), b.astype(wide), cp.empty(out.shape, wide)
        cublas.matmul(aw, bw, prod)
        out[...] = prod
        hold_for_graph((aw, bw, prod))


@register_func("disco.blas.matmul_nt.cuda", override=True)
def matmul_nt(a, b, out) -> None:
    """out = a @ b.T for a 2-D b: cuBLAS reads b transposed in place (disco.cublas)."""
    cp = cupy_module()
    for what, x in (("a", a), ("b", b), ("out", out)):
        if not isinstance(x, cp.ndarray):
            raise DiscoError(f"disco.blas.matmul_nt.cuda: {what} must be a cupy array, got {type(x).__name__}")
    if cublas.supports(a.dtype.name, b.dtype.name, out.dtype.name):
        cublas.matmul(a, b, out, transpose_b=True)
    else:
        bt = b.T.copy()                 # mixed types go through the general path
        hold_for_graph(bt)
        matmul(a, bt, out)


# -- sessions: one GPU per worker -----------------------------------------------------------

@register_func("disco.cuda.bind_device", override=True)
def bind_device(device_ids=None) -> int:
    """Make this worker's thread use its GPU: device_ids[worker_id] (default: worker_id
    modulo the number of GPUs); records "cuda:N" as the worker context's device."""
    cp = cupy_module()
    ctx = current_context()
    if device_ids is None:
        index = ctx.worker_id % cp.cuda.runtime.getDeviceCount()
    else:
        device_ids = list(device_ids)
        if len(device_ids) < ctx.num_workers:
            raise DiscoError(f"bind_device: {len(device_ids)} device ids {device_ids} for "
                             f"{ctx.num_workers} workers")
        index = int(device_ids[ctx.worker_id])
    cp.cuda.Device(index).use()
    ctx.device = f"cuda:{index}"
    return index


def bind_session_devices(sess, device_ids=None) -> None:
    """Bind every worker of `sess` to its GPU (device_ids of the mesh); call it right
    after starting the session, before anything allocates on a GPU."""
    sess.import_module("disco.cuda")
    sess.get_global_func("disco.cuda.bind_device")(None if device_ids is None else list(device_ids))
    sess.sync()

"""The virtual machine: runs an Executable's graph functions on arrays.

    vm = disco.VirtualMachine(ex, device="cpu")
    y = vm["main"](x, w)          # numpy arrays, torch tensors, DLPack producers

How a call runs. The first call of a function with a given *plan key* (the shapes
and dtypes of its tensor arguments, plus shape and symbolic scalar arguments)
interprets the bytecode while recording it: arguments are checked against the
signature (binding symbolic dims), shapes are evaluated, intermediates allocated and
kernels called, and every step is recorded. The recording becomes an execution
plan, cached per key, in which all that can be decided from the key already is:

- symbolic dims, allocation shapes, kernel `dims` arrays: constants;
- intermediate tensors: allocated once, reused by every later call with that key
  (tensors that are returned are allocated fresh on each call, so results never
  alias storage the next call overwrites). Storages the compiler planned
  (ALLOC_STORAGE, sized for upper bounds) are shared by all plans of a function, so
  one set serves every key; those plans share one lock;
- kernel calls: `disco._native.KernelCall(kernel_addr, args_addr, dims_addr)` over
  prebuilt ctypes arrays (a partial of the device's kernel function on other devices);
  the pointers of values that change per call (arguments, returned tensors,
  results of packed functions) are patched into those arrays once, when the value
  is produced, so calling a kernel costs one native call (which releases the GIL).
- tensors a collective reads (a packed function's `in_place_inputs`, e.g.
  spmd.allreduce's input) come from `device.shared_empty`: on a worker with an shm
  communicator, its arena, so the peers read them in place (disco.ccl.empty). Those
  of at most 16 KiB, of a function that declares `result_is_fresh`, are planned
  like other intermediates (the collective copies them anyway);
- packed functions with a `specialize(args, varies)` attribute: called once when
  the plan is made, with the recorded arguments; the plan calls what it returns
  (e.g. an all-reduce with its communicator, dtype and op resolved) instead.

Shapes the compiler could not prove to fit a kernel's buffers are checked by a
CHECK_KERNEL instruction before the kernel runs; like argument checks, that happens
while recording, so a plan keyed on the same shapes does not repeat it.

A plan run is a flat loop over steps. Functions whose shapes depend on data (a
match_cast binding a symbol from a packed function's result) are not cached and are
interpreted on every call. A VM is not meant to be shared by threads; a call that
finds its plan busy (another thread, re-entry) falls back to interpreting.

Devices: "cpu" (numpy; `CpuDevice`) and "cuda"/"cuda:N" (cupy arrays, NVRTC kernels,
cuBLAS, optional CUDA graphs; `disco.cuda.CudaDevice`, same interface).

The modules, in the order a call meets them:

    machine.py    VirtualMachine, VMFunctionHandle: load, plan keys, the plan cache
    device.py     CpuDevice (the device interface), make_device
    decode.py     an Executable's functions and kernels decoded at load
    exprs.py      the restricted evaluator of shape-expression strings
    matcher.py    signature patterns and their matching (SignatureError)
    recorder.py   the recording interpreter
    plan.py       execution plans and their steps
"""
from .machine import VirtualMachine, VMFunctionHandle

__all__ = ["VirtualMachine", "VMFunctionHandle"]

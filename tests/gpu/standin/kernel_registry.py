"""The C builds that the stand-in cupy runs in place of CUDA kernels (test side).

`install()` wraps `compiler.codegen.cuda.generate_cuda`: while $DISCO_STANDIN_KERNELS
names a folder, every CUDA module generated is also built with the C backend and
registered there as `<sha256 of the CUDA source>.json` + `.so`, which the stand-in's
RawModule (cupy/_kernel.py) loads, in this process or in worker processes that load
the executable from a file.

One C function per CUDA kernel: compiler/codegen/cuda.py makes one kernel of each
top-level statement of a PrimFunc (after the root allocations); here each becomes a
PrimFunc of that statement alone, whose parameters are the buffers, then the
workspaces (the global-scope root allocations, which the CUDA launcher allocates and
passes), then the scalars, and whose block-local buffers (shared/local scopes) are
allocated in its root block. Loops bound to GPU threads become serial loops: running
the threads of a block one after another is a valid schedule of these programs (each
stage's thread loop completes before the next stage's, as a `__syncthreads()` between
them guarantees); reductions across threads keep per-thread partials (see `unbind`).
A per-thread ("local") buffer at the root of a threaded kernel cannot be serialized
that way (the threads would share one copy) and is refused; the default GPU schedule
makes none.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

ENV = "DISCO_STANDIN_KERNELS"
_original = None


def install() -> None:
    """Wrap generate_cuda (idempotent); inert while $DISCO_STANDIN_KERNELS is unset."""
    global _original
    import compiler.codegen.cuda as cuda
    if _original is not None:
        return
    _original = cuda.generate_cuda

    def generate_cuda(prim_funcs):
        mod = _original(prim_funcs)
        folder = os.environ.get(ENV)
        if folder:
            register(mod, prim_funcs, Path(folder))
        return mod
    generate_cuda.__doc__ = _original.__doc__
    generate_cuda.__wrapped__ = _original
    cuda.generate_cuda = generate_cuda


def unbind(stmt):
    """`stmt` with every loop bound to a GPU thread made serial. A reduction across
    threadIdx.x (what compiler/codegen/cuda.py emits as per-thread partials and a block
    all-reduce) keeps that structure: each thread's partial accumulates in a local
    buffer (float32 for half types, as on the GPU), then the partials are combined, so
    that its rounding is close to the GPU's rather than that of one long serial sum."""
    from compiler.ir import tir as T
    from compiler.ir.visitor import rewrite

    def pre(n):
        if isinstance(n, T.For) and n.kind == "thread_binding":
            if n.thread_tag == "threadIdx.x":
                rf = _per_thread_partials(n, lambda s: rewrite(s, pre))
                if rf is not None:
                    return rf
            return dataclasses.replace(n, kind="serial", thread_tag=None, body=rewrite(n.body, pre))
        return None
    return rewrite(stmt, pre)


_OPS = {"+": "Add", "*": "Mul", "max": "Max", "min": "Min"}


def _per_thread_partials(loop, recurse):
    """The serial form of a cross-thread reduction started by `loop`, or None when `loop`
    does not start one (the same pattern as compiler/codegen/cuda.py's _cross_thread)."""
    from compiler.codegen.c_like import loop_nest, reduction_update
    from compiler.ir import expr as E
    from compiler.ir import tir as T
    from compiler.ir.visitor import vars_in
    chain, node = loop_nest(loop)
    if not isinstance(node, T.BlockRealize) or node.block.alloc_buffers:
        return None
    if not (isinstance(loop.min, E.IntImm) and loop.min.value == 0):
        return None
    red = set()
    for iv, value in zip(node.block.iter_vars, node.iter_values):
        if iv.kind == "R":
            red |= vars_in(value)
    found = reduction_update(node)
    if id(loop.loop_var) not in red or found is None or \
            any(c.kind == "thread_binding" for c in chain[1:]):
        return None
    op, rhs = found
    block, init = node.block, node.block.init
    y = block.body.buffer
    acc = "float32" if y.dtype in ("float16", "bfloat16") else y.dtype

    def cast(e, dtype):
        return e if e.dtype == dtype else E.Cast(dtype, e)

    def combine(a, b):
        return getattr(E, _OPS[op])(a, b, acc)
    tx = loop.loop_var
    part = T.Buffer(f"{y.name}_standin_partial", (loop.extent,), acc, "local")
    total = T.Buffer(f"{y.name}_standin_total", (1,), acc, "local")
    true = E.IntImm(1, "bool")
    # phase 1: every thread's partial over the loops under the thread loop
    update = T.BlockRealize(node.iter_values, node.predicate, dataclasses.replace(
        block, name=f"{block.name}_standin_partial", init=None,
        body=T.BufferStore(part, combine(part[tx], cast(recurse(rhs), acc)), (tx,))))
    inner = update
    for c in reversed(chain[1:]):
        inner = dataclasses.replace(c, body=inner)
    partials = dataclasses.replace(loop, kind="serial", thread_tag=None, body=T.SeqStmt((
        T.BufferStore(part, cast(init.value, acc), (tx,)), inner)))
    # phase 2: the partials combined into Y[s] (one store, as thread 0 does)
    r = E.Var(f"{tx.name}_standin_r")
    spatial = [(iv, v) for iv, v in zip(block.iter_vars, node.iter_values) if iv.kind == "S"]
    zero = E.IntImm(0)
    combined = T.BlockRealize(tuple(v for _, v in spatial), true, T.Block(
        f"{block.name}_standin_combine", tuple(iv for iv, _ in spatial), T.SeqStmt((
            T.BufferStore(total, cast(init.value, acc), (zero,)),
            T.For(r, zero, loop.extent, "serial", T.BufferStore(total, combine(total[zero], part[r]),
                                                                (zero,))),
            T.BufferStore(y, cast(total[zero], y.dtype), block.body.indices))),
        alloc_buffers=(total,)))
    return T.BlockRealize((), true, T.Block(f"{block.name}_standin_rfactor", (), T.SeqStmt((
        partials, combined)), alloc_buffers=(part,)))


def kernel_functions(symbol: str, func, launch) -> dict:
    """{CUDA kernel symbol: PrimFunc for the C backend} for one PrimFunc (see the module doc)."""
    from compiler.codegen.c_like import split_params
    from compiler.codegen.cuda import _root
    from compiler.ir import expr as E
    from compiler.ir import tir as T
    allocs, stmts = _root(func)
    if len(stmts) != len(launch.kernels):
        raise AssertionError(f"{symbol}: {len(stmts)} top-level statements, {len(launch.kernels)} kernels")
    workspaces = [b for b in allocs if b.scope == "global"]
    local = tuple(b for b in allocs if b.scope != "global")
    buffers, scalars = split_params(func)
    params = tuple(buffers) + tuple(workspaces) + tuple(scalars)
    out = {}
    for stmt, k in zip(stmts, launch.kernels):
        if any(b.scope == "local" for b in local) and _threaded(stmt):
            raise NotImplementedError(f"stand-in kernels: {symbol} has per-thread buffers at the root of "
                                      "a threaded kernel; serial threads would share them")
        root = T.BlockRealize((), E.IntImm(1, "bool"), T.Block("root", (), unbind(stmt), alloc_buffers=local))
        out[k.symbol] = dataclasses.replace(func, params=params, body=root)
    return out


def _threaded(stmt) -> bool:
    from compiler.ir import tir as T
    from compiler.ir.visitor import rewrite
    found = []

    def pre(n):
        if isinstance(n, T.For) and n.kind == "thread_binding" and n.thread_tag.startswith("threadIdx"):
            found.append(n)
            return n
        return None
    rewrite(stmt, pre)
    return bool(found)


def register(mod, prim_funcs: dict, folder: Path) -> Path:
    """Build and record the C stand-ins of the CUDA module `mod` (made from `prim_funcs`)."""
    from compiler.codegen import build_kernels
    sha = hashlib.sha256(mod.source.encode()).hexdigest()
    path = folder / f"{sha}.json"
    if path.exists():
        return path
    c_funcs, kernels = {}, {}
    for name, func in prim_funcs.items():
        symbol = mod.kernel_names[name]
        launch = mod.functions[symbol]
        for ksym, f in kernel_functions(symbol, func, launch).items():
            c_funcs[ksym] = f
            kernels[ksym] = {"function": symbol, "buffers": launch.buffers,
                             "workspaces": launch.workspaces, "scalars": launch.scalars}
    lib = build_kernels(c_funcs)
    for ksym in kernels:
        kernels[ksym]["c_symbol"] = lib.kernel_names[ksym]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{sha}.{os.getpid()}.tmp"
    shutil.copyfile(lib.so_path, tmp)
    os.replace(tmp, folder / f"{sha}.so")
    tmp.write_text(json.dumps({"so": f"{sha}.so", "kernels": kernels}))
    os.replace(tmp, path)
    return path

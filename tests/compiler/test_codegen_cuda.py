"""CUDA backend, CPU side: the GPU default schedule keeps each program's meaning (run
by the reference TIR interpreter against numpy), the generated CUDA source has the
expected structure and launch configuration, and it compiles with nvcc (one nvcc call
for all kernels; skipped without nvcc). Running the kernels needs a GPU: tests/gpu."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compiler.codegen import build_kernels
from compiler.codegen.c import CodegenError
from compiler.codegen.cuda import generate_cuda
from compiler.ir import IRModule
from compiler.ir import expr as E
from compiler.ir import tir as T
from compiler.schedule import Schedule, ScheduleError
from compiler.schedule import primitives as P
from compiler.transform.gpu_schedule import ITEMS, ROW_THREADS, DefaultGPUSchedule, schedule_gpu

from _op_helpers import assert_all_pass
from _tir_interp import run_prim_func

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))
import te_kernels as K  # noqa: E402

TOL = {"float32": 2e-5, "float16": 2e-3, "bfloat16": 1.6e-2}


def _loops(func):
    out = []

    def visit(n):
        if isinstance(n, T.For):
            out.append(n)
            visit(n.body)
        elif isinstance(n, T.SeqStmt):
            for s in n.stmts:
                visit(s)
        elif isinstance(n, T.BlockRealize):
            visit(n.block.body)
        elif isinstance(n, (T.Allocate, T.LetStmt)):
            visit(n.body)
        elif isinstance(n, T.IfThenElse):
            visit(n.then_case)
    visit(func.body)
    return out


def _alloc_buffers(func):
    return list(func.body.block.alloc_buffers) if isinstance(func.body, T.BlockRealize) else []


def _interp(func, inputs, out_shape, out_dtype):
    out = np.full(out_shape, np.nan, dtype=out_dtype)
    run_prim_func(func, [*inputs, out])
    return out


# -- the schedule keeps the program's meaning -------------------------------------------

CASES = [("softmax", 3, 70, "float32"), ("softmax", 2, 40, "float16"), ("rms_norm", 2, 50, "float32"),
         ("rms_norm", 2, 33, "bfloat16"), ("add_rms_norm", 2, 40, "float16"), ("layer_norm", 2, 45, "float32"),
         ("silu_mul", 3, 37, "float32"), ("rotary", 3, 8, "float32"), ("row_sum", 3, 65, "float32"),
         ("col_sum", 5, 7, "float32"), ("total_sum", 5, 9, "float32")]


@pytest.mark.parametrize("name,n,m,dtype", CASES)
def test_gpu_schedule_matches_numpy(name, n, m, dtype, roundtrip):
    func, ref = K.MAKERS[name](m=m, dtype=dtype)
    sched = schedule_gpu(func)
    roundtrip(IRModule.from_dict({name: sched}))
    inputs = K.inputs_for(name, n, m, dtype)
    expected = ref(*inputs)
    got = _interp(sched, inputs, expected.shape, expected.dtype)
    np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64),
                               rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("name", ["softmax", "rms_norm", "layer_norm", "row_sum"])
def test_row_reductions_become_one_block_per_row(name):
    func, _ = K.MAKERS[name](m=4096)
    sched = schedule_gpu(func)
    loops = _loops(sched)
    assert loops[0].thread_tag == "blockIdx.x"
    assert isinstance(loops[0].extent, E.Var) and loops[0].extent.name == "n"   # one block per row
    tx = [f for f in loops if f.thread_tag == "threadIdx.x"]
    assert tx and all(f.extent == E.IntImm(ROW_THREADS) for f in tx)
    assert not [f for f in loops[1:] if f.thread_tag == "blockIdx.x"]
    # per-row intermediates live in shared memory, with the row dim dropped
    for b in _alloc_buffers(sched):
        assert b.scope == "shared" and all(isinstance(d, E.IntImm) for d in b.shape)
    src = generate_cuda({name: sched}).source
    assert "__shfl_xor_sync" in src and "disco_block_allreduce<float>" in src


def test_rms_norm_fp16_stages_input_row_in_shared_memory():
    func, _ = K.rms_norm(m=4096, dtype="float16")
    sched = schedule_gpu(func)
    shared = {b.name: b for b in _alloc_buffers(sched)}
    assert "X_shared_shared" in shared or "X_shared" in shared
    x_copy = next(b for b in shared.values() if b.name.startswith("X_shared"))
    assert x_copy.shape == (E.IntImm(4096),) and x_copy.dtype == "float16"
    # X is read from global memory once (by the copy), the two stages read the copy
    src = generate_cuda({"rms": sched}).source
    assert src.count("X[") == 1


def test_elementwise_launch_configuration():
    """256 threads a block, each thread `items` elements: a block covers 256 * items."""
    func, _ = K.silu_mul(m=33)
    for items in (1, 4):
        mod = generate_cuda({"silu_mul": schedule_gpu(func, items=items)})
        (k,) = mod.functions["silu_mul"].kernels
        assert k.block == ["256", "1", "1"]
        for n in (1, 7, 100):
            d = [n, 33, n, 33, n, 33]
            grid = eval(k.grid[0], {"d": d, "max": max, "min": min})  # noqa: S307 (our own expression)
            assert grid == -(-n * 33 // (256 * items))


def test_odd_row_width_rounds_threads_to_warps():
    func, _ = K.softmax(m=70)
    mod = generate_cuda({"sm": schedule_gpu(func)})
    (k,) = mod.functions["sm"].kernels
    assert k.grid == ["d[0]", "1", "1"] and k.block == ["96", "1", "1"]


def test_unscheduled_function_runs_as_single_thread_kernels():
    func, _ = K.softmax(m=16)
    mod = generate_cuda({"sm": func})
    kernels = mod.functions["sm"].kernels
    assert len(kernels) == 4 and all(k.grid == ["1"] * 3 and k.block == ["1"] * 3 for k in kernels)
    ws = mod.functions["sm"].workspaces
    assert [w["name"] for w in ws] == ["mx", "e", "s"]
    assert ws[1]["shape"] == ["d[0]", "16"]


def test_codegen_errors_name_the_problem():
    n = E.Var("n")
    A = T.Buffer("A", (n,)); B = T.Buffer("B", (n,))
    i, j = E.Var("i"), E.Var("j")
    # a thread extent that depends on another loop
    inner = T.For(j, E.IntImm(0), i + 1, "thread_binding",
                  T.BufferStore(B, A[j], (j,)), thread_tag="threadIdx.x")
    bad = T.PrimFunc((A, B), T.For(i, E.IntImm(0), n, "thread_binding", inner, thread_tag="blockIdx.x"))
    with pytest.raises(CodegenError, match="not a buffer dim"):
        generate_cuda({"bad": bad})
    # unknown thread tag
    tag = T.PrimFunc((A, B), T.For(i, E.IntImm(0), n, "thread_binding",
                                   T.BufferStore(B, A[i], (i,)), thread_tag="warpIdx.x"))
    with pytest.raises(CodegenError, match="warpIdx.x"):
        generate_cuda({"tag": tag})
    # a symbolic shared buffer
    S = T.Buffer("S", (n,), scope="shared")
    body = T.BlockRealize((), E.IntImm(1, "bool"), T.Block("root", (), T.For(
        i, E.IntImm(0), n, "serial", T.BufferStore(S, A[i], (i,))), alloc_buffers=(S,)))
    with pytest.raises(CodegenError, match="symbolic shape"):
        generate_cuda({"sym": T.PrimFunc((A, B), body)})


# -- cache_read / cache_write -------------------------------------------------------------

def _matmul(n=5, k=12, m=7):
    from compiler import te
    X = te.placeholder((n, k), "float32", "X")
    W = te.placeholder((k, m), "float32", "W")
    r = te.reduce_axis(0, k, "r")
    Y = te.compute((n, m), lambda i, j: te.sum(X[i, r] * W[r, j], axis=r), name="Y")
    return te.create_prim_func([X, W, Y], name="mm")


@pytest.fixture
def _kernel_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DISCO_TP_CACHE", str(tmp_path_factory.getbasetemp() / "kernels"))


@pytest.mark.parametrize("scope", ["shared", "local", "global"])
def test_cache_read_and_write_keep_results(scope, roundtrip, _kernel_cache):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 12)).astype(np.float32)
    w = rng.standard_normal((12, 7)).astype(np.float32)
    sch = Schedule(_matmul())
    xc = sch.cache_read("Y", 0, scope)          # reads: X (0), W (1)
    yc = sch.cache_write("Y", 0, scope)
    func = sch.func
    roundtrip(IRModule.from_dict({"mm": func}))
    assert xc.scope == scope and xc.shape == (E.IntImm(5), E.IntImm(12)) and yc.scope == scope
    blocks = [n.block.name for n in _walk_realizes(func)]
    assert blocks == [xc.name, "Y", f"Y_{scope}"]
    y_block = next(n.block for n in _walk_realizes(func) if n.block.name == "Y")
    loaded = {n.buffer.name for n in _walk_loads(y_block.body)}
    assert "X" not in loaded and xc.name in loaded
    assert y_block.body.buffer is yc
    from test_schedule import run as run_c_kernel     # compiles `func` alone and calls it
    y = np.full((5, 7), np.nan, np.float32)
    run_c_kernel(func, x, w, y)
    np.testing.assert_allclose(y, x @ w, rtol=1e-5, atol=1e-5)
    y2 = _interp(func, [x, w], (5, 7), np.float32)
    np.testing.assert_allclose(y2, x @ w, rtol=1e-5, atol=1e-5)


def test_cache_read_consumer_blocks_and_errors():
    func, _ = K.rms_norm(m=8)
    out, cache = P.cache_read(func, "sq", 0, "shared", consumer_blocks=["Y"])
    for r in _walk_realizes(out):
        if r.block.name in ("sq", "Y"):
            assert "X" not in {n.buffer.name for n in _walk_loads(r.block.body)}
    with pytest.raises(ScheduleError, match="out of range"):
        P.cache_read(func, "sq", 3, "shared")
    with pytest.raises(ScheduleError, match="unknown scope"):
        P.cache_write(func, "sq", 0, "texture")


def _walk_realizes(func):
    from compiler.ir.visitor import walk
    return [n for n in walk(func.body) if isinstance(n, T.BlockRealize) and n.block.iter_vars]


def _walk_loads(stmt):
    from compiler.ir.visitor import walk
    return [n for n in walk(stmt) if isinstance(n, T.BufferLoad)]


def test_default_gpu_schedule_pass_leaves_bound_functions_alone():
    func, _ = K.silu_mul(m=33)
    sched = schedule_gpu(func)
    mod = DefaultGPUSchedule(IRModule.from_dict({"a": func, "b": sched}))
    assert mod["b"] is sched
    assert any(f.thread_tag == "blockIdx.x" for f in _loops(mod["a"]))


# -- nvcc compile check -----------------------------------------------------------------------

def _all_kernels():
    funcs = {}
    for dtype in ("float32", "float16", "bfloat16"):
        for name in ("softmax", "rms_norm", "add_rms_norm", "layer_norm", "silu_mul", "rotary"):
            m = 128 if name == "rotary" else 4096
            funcs[f"{name}_{dtype}"] = schedule_gpu(K.MAKERS[name](m=m, dtype=dtype)[0])
    funcs["row_sum"] = schedule_gpu(K.row_sum(m=1000)[0])
    funcs["col_sum"] = schedule_gpu(K.col_sum()[0])
    funcs["total_sum"] = schedule_gpu(K.total_sum()[0])
    funcs["softmax_unscheduled"] = K.softmax(m=64)[0]
    sch = Schedule(_matmul())
    sch.cache_read("Y", 0, "shared")
    funcs["mm_cached"] = schedule_gpu(sch.func)
    return funcs


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_generated_cuda_compiles_with_nvcc(tmp_path):
    mod = generate_cuda(_all_kernels())
    src = tmp_path / "kernels.cu"
    src.write_text(mod.source)
    out = subprocess.run(["nvcc", "-std=c++17", "--ptx", "-diag-suppress", "177", str(src),
                          "-o", str(tmp_path / "kernels.ptx")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    ptx = (tmp_path / "kernels.ptx").read_text()
    symbols = [k.symbol for f in mod.functions.values() for k in f.kernels]
    assert len(symbols) > 20
    for sym in symbols:
        assert f".entry {sym}(" in ptx, sym
    assert "shfl.sync.bfly" in ptx


# -- every operator: built for "cuda" (nvcc), and the GPU schedule's meaning on the CPU ------

def _unbind(mod: IRModule) -> IRModule:
    """Thread-bound loops as serial loops: the GPU-scheduled programs then build with the
    C backend, which runs them (one thread) so their results can be checked here."""
    import dataclasses

    from compiler.ir.visitor import rewrite

    bound = []

    def pre(n):
        if isinstance(n, T.For) and n.kind == "thread_binding":
            bound.append(n.thread_tag)
            return dataclasses.replace(n, kind="serial", thread_tag=None, body=rewrite(n.body, pre))
        return None
    for name, f in mod.prim_funcs().items():
        mod = mod.with_function(name, dataclasses.replace(f, body=rewrite(f.body, pre)))
    assert "blockIdx.x" in bound and "threadIdx.x" in bound   # the GPU schedule ran
    return mod


def test_every_operator_gpu_scheduled_matches_numpy_on_cpu(_kernel_cache):
    from compiler import build
    from compiler.pipeline import get_pipeline
    from disco.vm import VirtualMachine
    from test_legalize import CASES, case_name, make_module, run_case_at
    vm = VirtualMachine(build(make_module(CASES), "cpu", passes=get_pipeline("cuda") + [_unbind]))
    assert_all_pass(CASES, lambda i, c: run_case_at(vm, i, c, (1, 7)), case_name)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_every_operator_builds_for_cuda_and_compiles_with_nvcc(tmp_path):
    from compiler import build
    from disco.executable import load_executable
    from test_legalize import CASES, make_module
    ex = build(make_module(CASES), "cuda")
    assert ex.target == "cuda" and ex.library is None
    ex.export(tmp_path / "ex.zip")
    meta = load_executable(tmp_path / "ex.zip").metadata["cuda"]
    assert meta == ex.metadata["cuda"]
    assert sorted(meta["functions"]) == sorted(k.name for k in ex.kernels)
    (tmp_path / "k.cu").write_text(meta["source"])
    out = subprocess.run(["nvcc", "-std=c++17", "--ptx", "-diag-suppress", "177", str(tmp_path / "k.cu"),
                          "-o", str(tmp_path / "k.ptx")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    ptx = (tmp_path / "k.ptx").read_text()
    for f in meta["functions"].values():
        for k in f["kernels"]:
            assert f".entry {k['symbol']}(" in ptx, k["symbol"]
    single = [f["name"] for f in meta["functions"].values()
              if all(k["block"] == ["1", "1", "1"] for k in f["kernels"])]
    assert not single, f"left unscheduled (single-thread kernels): {single}"


# -- the runtime's launcher (disco.cuda) without a GPU: ABI decoding and launch sizes ----------

class _FakeKernel:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def __call__(self, grid, block, args):
        self.log.append((self.name, grid, block, args))


class _FakeModule:
    def __init__(self):
        self.log = []

    def get_function(self, name):
        return _FakeKernel(name, self.log)


class _FakeArray:
    _next = [0x7000_0000]

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype
        self.data = type("Mem", (), {"ptr": _FakeArray._next[0]})()
        _FakeArray._next[0] += 0x1000


def test_launcher_decodes_the_vm_abi_and_evaluates_launch_sizes(monkeypatch):
    import ctypes
    import struct

    import disco.cuda as dc
    monkeypatch.setattr(dc, "cupy_module", lambda: type("cp", (), {"empty": staticmethod(_FakeArray)}))
    # a scalar float parameter, and an unscheduled program with workspaces
    n = E.Var("n")
    X = T.Buffer("X", (n, 70)); Y = T.Buffer("Y", (n, 70))
    alpha = E.Var("alpha", "float32")
    i, j = E.Var("i"), E.Var("j")
    scale = T.PrimFunc((X, Y, alpha), T.For(i, E.IntImm(0), n, "serial", T.For(
        j, E.IntImm(0), E.IntImm(70), "serial", T.BufferStore(Y, X[i, j] * alpha, (i, j)))))
    funcs = {"scale": schedule_gpu(scale), "softmax": K.softmax(m=70)[0]}
    mod = generate_cuda(funcs)
    raw = _FakeModule()
    fns = {k: dc.CudaFunction(raw, mod.functions[k].to_json()) for k in funcs}

    entry = fns["scale"].vm_entry()
    ptrs = (ctypes.c_void_p * 2)(0x1000, 0x2000)
    bits = struct.unpack("<q", struct.pack("<d", 0.5))[0]
    dims = (ctypes.c_int64 * 5)(9, 70, 9, 70, bits)
    entry(ctypes.addressof(ptrs), ctypes.addressof(dims))
    (name, grid, block, args), = raw.log
    assert name == "scale" and block == (256, 1, 1) and grid == (-(-9 * 70 // (256 * ITEMS)), 1, 1)
    assert [int(a) for a in args[:2]] == [0x1000, 0x2000]
    assert [int(a) for a in args[2:6]] == [9, 70, 9, 70]
    assert isinstance(args[6], np.float64) and args[6] == 0.5

    raw.log.clear()
    fns["softmax"].launch([0x1000, 0x2000], [3, 70, 3, 70])
    assert [r[0] for r in raw.log] == [f"softmax_k{k}" for k in range(4)]
    assert all(r[1] == (1, 1, 1) and r[2] == (1, 1, 1) for r in raw.log)
    ws = raw.log[0][3][2:5]              # mx (3,), e (3, 70), s (3,): allocated by the launcher
    assert len({int(p) for p in ws}) == 3
    assert [int(a) for a in raw.log[0][3][5:]] == [3, 70, 3, 70]
    raw.log.clear()
    fns["scale"].launch([0x1000, 0x2000], [0, 70, 0, 70, 0.5])   # no rows: a 0-block grid is not launched
    assert raw.log == []


def test_launch_expressions_are_restricted():
    from disco.cuda import compile_launch_expr
    from disco.errors import DiscoError
    assert compile_launch_expr("((d[0] * 33) + 255) // 256")([100]) == 13
    assert compile_launch_expr("max(d[0], d[1])")([3, 4]) == 4
    with pytest.raises(DiscoError, match="not allowed|unknown name"):
        compile_launch_expr("__import__('os')")
    with pytest.raises(DiscoError, match="not allowed"):
        compile_launch_expr("d.__class__")


def _nvrtc():
    """cupy's NVRTC bindings when cupy and libnvrtc are installed (no GPU needed)."""
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
        return nvrtc
    except Exception:
        return None


@pytest.mark.skipif(_nvrtc() is None, reason="cupy's NVRTC is not available")
def test_generated_cuda_compiles_with_nvrtc():
    """The runtime's compiler (NVRTC, no host headers) with the include directories
    disco.cuda picks; nvcc above checks the same source with the host toolchain."""
    import disco.cuda as dc
    nvrtc = _nvrtc()
    inc = dc._include_dirs(nvrtc.getVersion()[0])
    mod = generate_cuda(_all_kernels())
    prog = nvrtc.createProgram(mod.source, "kernels.cu", (), ())
    try:
        nvrtc.compileProgram(prog, ("-std=c++17", "-arch=compute_80", *[f"-I{d}" for d in inc]))
    except Exception as e:
        pytest.fail(f"NVRTC rejected the source ({e}):\n{nvrtc.getProgramLog(prog)[-4000:]}")
    ptx = nvrtc.getPTX(prog)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    for f in mod.functions.values():
        for k in f.kernels:
            assert f".entry {k.symbol}(" in ptx, k.symbol


# -- the VM on device "cuda" without a GPU: a stand-in cupy (numpy arrays) whose kernels are
#    the C builds of the same GPU-scheduled programs (thread loops made serial) -------------

class _CKernelModule:
    """get_function(symbol) -> a launcher that calls the C kernel of the same program with
    the buffer pointers and dims slots of the CUDA ABI (workspaces are the C kernel's own)."""

    def __init__(self, lib, funcs, cuda_mod):
        import ctypes
        self.calls = []
        self.kernels = {}
        for name in funcs:
            sym = cuda_mod.kernel_names[name]
            info = cuda_mod.functions[sym]
            fn = getattr(ctypes.CDLL(str(lib.so_path)), lib.kernel_names[name])
            fn.restype = None
            nbuf, nws = len(info.buffers), len(info.workspaces)
            for k, launch in enumerate(info.kernels):
                self.kernels[launch.symbol] = (fn, nbuf, nws, k == 0)

    def get_function(self, symbol):
        import ctypes
        fn, nbuf, nws, first = self.kernels[symbol]

        def launch(grid, block, args):
            self.calls.append(symbol)
            if not first:       # the C kernel runs the whole program at the first launch
                return
            ptrs = (ctypes.c_void_p * max(nbuf, 1))(*[int(a) for a in args[:nbuf]])
            dims = [a for a in args[nbuf + nws:]]
            buf = (ctypes.c_int64 * max(len(dims), 1))(*[
                int(d) if isinstance(d, np.integer) else np.array(d, np.float64).view(np.int64).item()
                for d in dims])
            fn(ptrs, buf)
        return launch


def _fake_cupy():
    class _Dev:
        def __init__(self, i=0):
            self.id = i

        def use(self):
            pass

    cuda = type("cuda", (), {"Device": _Dev, "runtime": type("rt", (), {
        "getDevice": staticmethod(lambda: 0), "getDeviceCount": staticmethod(lambda: 1)})})
    return type("cp", (), {"ndarray": np.ndarray, "empty": staticmethod(np.empty),
                           "asarray": staticmethod(np.asarray), "matmul": staticmethod(np.matmul),
                           "float32": np.float32,
                           "ascontiguousarray": staticmethod(np.ascontiguousarray), "cuda": cuda})


def test_vm_on_cuda_device_runs_through_the_launcher_abi(monkeypatch, _kernel_cache):
    import disco.cuda as dc
    from compiler import build, op
    from compiler.ir import BlockBuilder, Var
    from compiler.ir.struct_info import TensorStructInfo
    from compiler.pipeline import get_pipeline
    from disco.tensor import data_ptr
    from disco.vm import VirtualMachine

    bb = BlockBuilder()
    n = bb.size_var("n")
    x = Var("x", TensorStructInfo((n, 64), "float32"))
    w = Var("w", TensorStructInfo((64, 96), "float32"))
    g = Var("g", TensorStructInfo((64,), "float32"))
    with bb.function("f", [x, w, g]):
        with bb.dataflow():
            h = bb.emit(op.nn.rms_norm(x, g, axes=[-1], epsilon=1e-5))
            y = bb.emit_output(op.nn.softmax(op.nn.silu(op.matmul(h, w)), axis=-1))
        bb.emit_func_output(y)
    mod = bb.get()
    for p in get_pipeline("cuda"):
        mod = p(mod)
    ex = build(mod, "cuda", passes=[])
    funcs = mod.prim_funcs()
    lib = build_kernels(_unbind(mod).prim_funcs())
    fake = _CKernelModule(lib, funcs, generate_cuda(funcs))
    monkeypatch.setattr(dc, "cupy_module", _fake_cupy)
    monkeypatch.setattr(dc, "compile_module", lambda source, options=(): fake)
    monkeypatch.setattr(dc, "device_ptr", data_ptr)
    # numpy for cuBLAS (disco.cublas is checked by tests/disco/test_cublas_shapes.py and on the GPU)
    monkeypatch.setattr(dc.cublas, "matmul", lambda a, b, out: np.matmul(a, b, out=out))
    vm = VirtualMachine(ex, device="cuda:0")
    assert vm.device.name == "cuda:0"
    rng = np.random.default_rng(0)
    for rows in (3, 5, 3):              # the second call with 3 rows replays the cached plan
        xv = rng.standard_normal((rows, 64)).astype(np.float32)
        wv = (rng.standard_normal((64, 96)) / 8).astype(np.float32)
        gv = (rng.standard_normal(64) + 1).astype(np.float32)
        got = vm["f"](xv, wv, gv)
        h = xv / np.sqrt((xv.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5) * gv
        u = h @ wv
        u = u / (1 + np.exp(-u))
        e = np.exp(u - u.max(-1, keepdims=True))
        np.testing.assert_allclose(got, e / e.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)
    assert {c.split("_k")[0] for c in fake.calls} == {fake_name for fake_name in
                                                      (generate_cuda(funcs).kernel_names[k] for k in funcs)}
    assert len(fake.calls) == 3 * sum(len(f.kernels) for f in generate_cuda(funcs).functions.values())

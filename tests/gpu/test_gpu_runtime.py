"""The CUDA runtime on a GPU: every operator through compiler.build(mod, "cuda") and the
VM on device "cuda" against numpy; cuBLAS matmul dispatch; CUDA graphs; DLPack with
torch; a one-rank NCCL all-reduce/all-gather through a session; a ProcessSession with
one GPU worker running a compiled MLP."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


class _HostVM:
    """A VM on "cuda" whose functions take numpy arrays and return numpy arrays."""

    def __init__(self, vm):
        self.vm = vm

    def __getitem__(self, name):
        import cupy as cp
        f = self.vm[name]

        def call(*args):
            out = f(*[cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args])
            return _host(out)
        return call


def _host(x):
    import cupy as cp
    if isinstance(x, cp.ndarray):
        return cp.asnumpy(x)
    if isinstance(x, (tuple, list)):
        return tuple(_host(v) for v in x)
    return x


@pytest.fixture(scope="module")
def op_vm():
    from compiler import build
    from disco.vm import VirtualMachine
    from test_legalize import CASES, make_module
    return _HostVM(VirtualMachine(build(make_module(CASES), "cuda"), device="cuda:0"))


def _case_ids():
    from test_legalize import CASES, case_name
    return [case_name(i, c) for i, c in enumerate(CASES)]


@pytest.mark.parametrize("i", range(len(_case_ids())), ids=_case_ids())
def test_every_operator_matches_numpy_on_gpu(op_vm, i):
    from test_legalize import CASES, case_name, run_case
    c = CASES[i]
    if c.op == "relax.dequantize" and c.id.startswith("q"):
        pytest.skip("GGUF block formats are CPU only (their kernels are disco.cpu's)")
    rng = np.random.default_rng(i)
    for n in c.ns:
        run_case(op_vm, i, c, n, rng)


def _mlp_module(d=64, f=256):
    from compiler import op
    from compiler.ir import BlockBuilder, Var
    from compiler.ir.struct_info import TensorStructInfo
    bb = BlockBuilder()
    n = bb.size_var("n")
    x = Var("x", TensorStructInfo((n, d), "float32"))
    w1 = Var("w1", TensorStructInfo((d, f), "float32"))
    w2 = Var("w2", TensorStructInfo((f, d), "float32"))
    g = Var("g", TensorStructInfo((d,), "float32"))
    with bb.function("mlp", [x, w1, w2, g]):
        with bb.dataflow():
            h = bb.emit(op.nn.rms_norm(x, g, axes=[-1], epsilon=1e-5))
            u = bb.emit(op.nn.silu(op.matmul(h, w1)))
            y = bb.emit_output(op.add(x, op.matmul(u, w2)))
        bb.emit_func_output(y)
    return bb.get()


def _mlp_ref(x, w1, w2, g):
    x64 = x.astype(np.float64)
    h = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-5) * g
    u = h @ w1
    u = u / (1 + np.exp(-u))
    return x64 + u @ w2


def _mlp_inputs(n, d=64, f=256, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, d)).astype(np.float32),
            (rng.standard_normal((d, f)) / 8).astype(np.float32),
            (rng.standard_normal((f, d)) / 16).astype(np.float32),
            (rng.standard_normal(d) + 1).astype(np.float32)]


def test_mlp_matmul_goes_to_cublas():
    import cupy as cp

    import disco.cuda as dc
    from compiler import build
    from disco.vm import VirtualMachine
    calls = []
    real = dc.matmul
    vm = VirtualMachine(build(_mlp_module(), "cuda"), device="cuda")
    f = vm._packed("disco.blas.matmul")
    assert f is real
    vm._packed_funcs["disco.blas.matmul"] = lambda *a: (calls.append(1), real(*a))[1]
    args = _mlp_inputs(7)
    out = vm["mlp"](*[cp.asarray(a) for a in args])
    assert isinstance(out, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(out), _mlp_ref(*args), rtol=1e-4, atol=1e-4)
    assert len(calls) == 2


def test_cuda_graph_replays_with_new_inputs():
    import cupy as cp

    from compiler import build
    from disco.vm import VirtualMachine
    vm = VirtualMachine(build(_mlp_module(), "cuda"), device="cuda", cuda_graph=True)
    f = vm["mlp"]
    for seed in (1, 2, 3, 4):           # the first call runs eagerly, the second captures
        args = _mlp_inputs(16, seed=seed)
        out = f(*[cp.asarray(a) for a in args])
        np.testing.assert_allclose(cp.asnumpy(out), _mlp_ref(*args), rtol=1e-4, atol=1e-4)
    assert f.captures == 1
    for seed in (5, 6):                 # another shape: another graph
        args = _mlp_inputs(5, seed=seed)
        np.testing.assert_allclose(cp.asnumpy(f(*[cp.asarray(a) for a in args])), _mlp_ref(*args),
                                   rtol=1e-4, atol=1e-4)
    assert f.captures == 2


def test_cuda_graph_reads_weights_in_place_and_recaptures_for_other_arrays():
    """Arguments passed as the same device arrays (weights) are read by the graph in
    place: no copy per replay, and an in-place update is seen; another array in their
    place captures again."""
    import cupy as cp

    from compiler import build
    from disco.vm import VirtualMachine
    f = VirtualMachine(build(_mlp_module(), "cuda"), device="cuda", cuda_graph=True)["mlp"]
    _, w1, w2, g = (cp.asarray(a) for a in _mlp_inputs(8, seed=1))
    for seed in (2, 3, 4):
        x = _mlp_inputs(8, seed=seed)[0]
        out = f(x, w1, w2, g)           # x: a numpy array, copied into the graph's buffer
        np.testing.assert_allclose(cp.asnumpy(out), _mlp_ref(x, *map(cp.asnumpy, (w1, w2, g))),
                                   rtol=1e-4, atol=1e-4)
    assert f.captures == 1
    (entry,) = f.graphs.values()
    assert sorted(entry.direct) == [1, 2, 3] and sorted(entry.staged) == [0]
    w2 *= 0.5                           # updated in place: the next replay sees it
    out = f(x, w1, w2, g)
    np.testing.assert_allclose(cp.asnumpy(out), _mlp_ref(x, *map(cp.asnumpy, (w1, w2, g))),
                               rtol=1e-4, atol=1e-4)
    assert f.captures == 1
    w1_new = w1 * 2                     # another array: captured again, w1 now copied per call
    out = f(x, w1_new, w2, g)
    np.testing.assert_allclose(cp.asnumpy(out), _mlp_ref(x, *map(cp.asnumpy, (w1_new, w2, g))),
                               rtol=1e-4, atol=1e-4)
    assert f.captures == 2
    (entry,) = f.graphs.values()
    assert sorted(entry.direct) == [2, 3] and sorted(entry.staged) == [0, 1]


@pytest.mark.real_gpu
def test_dlpack_round_trip_with_torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    import cupy as cp

    from compiler import build
    from disco.vm import VirtualMachine
    vm = VirtualMachine(build(_mlp_module(), "cuda"), device="cuda")
    args = _mlp_inputs(9)
    targs = [torch.from_numpy(a).cuda() for a in args]
    out = vm["mlp"](*targs)
    assert isinstance(out, cp.ndarray)
    back = torch.from_dlpack(out)
    assert back.is_cuda and tuple(back.shape) == (9, 64)
    np.testing.assert_allclose(back.cpu().numpy(), _mlp_ref(*args), rtol=1e-4, atol=1e-4)
    # that the VM takes the input in place (no copy) is checked by
    # test_gpu_boundary.py::test_torch_cuda_input_is_used_in_place


@pytest.mark.parametrize("kind", ["threaded", "process"])
def test_one_rank_nccl_allreduce_allgather(kind):
    import disco
    from disco.cuda import bind_session_devices
    sess = disco.ThreadedSession(1) if kind == "threaded" else disco.ProcessSession(1)
    with sess:
        bind_session_devices(sess, [0])
        sess.import_module("gpu_worker_funcs")
        sess.init_ccl("nccl")
        x = sess.get_global_func("test.gpu.iota")(8, "float32")
        s = sess.get_global_func("ccl.allreduce")(x, "sum")
        g = sess.get_global_func("ccl.allgather")(x, 0)
        host = sess.get_global_func("test.gpu.to_host")
        np.testing.assert_array_equal(host(s).fetch(0), np.arange(1, 9, dtype=np.float32))
        np.testing.assert_array_equal(host(g).fetch(0), np.arange(1, 9, dtype=np.float32))
        dev = sess.get_global_func("test.gpu.device_of")().fetch(0)
        assert list(dev) == ["cuda:0", 0]


def test_process_session_gpu_worker_runs_compiled_mlp(tmp_path):
    import disco
    from compiler import build
    from disco.cuda import bind_session_devices
    path = tmp_path / "mlp.disco"
    build(_mlp_module(), "cuda").export(path)
    args = _mlp_inputs(12)
    with disco.ProcessSession(1) as sess:
        bind_session_devices(sess, [0])
        sess.import_module("gpu_worker_funcs")
        out = sess.get_global_func("test.gpu.run_vm")(str(path), "mlp", *args).fetch(0)
    np.testing.assert_allclose(out, _mlp_ref(*args), rtol=1e-4, atol=1e-4)


def test_process_session_gpu_worker_runs_the_tensor_parallel_mlp_through_load_module():
    """The distributed issue's Megatron MLP (weights annotated only), built for cuda and
    loaded with sess.load_module on one GPU worker: placements, DModule argument
    placement, the spmd collectives on cupy arrays, and fetch, against numpy."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "e2e"))
    import _tp_models as M

    import disco
    from compiler import build, script
    from disco.cuda import bind_session_devices
    ex = build(script.parse(M.mlp_weights_annotated(1, dim=16, hidden=32, act="gelu", batch="n")),
               "cuda")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 16)).astype(np.float32)
    w1 = rng.standard_normal((16, 32)).astype(np.float32)
    w2 = rng.standard_normal((32, 16)).astype(np.float32)
    with disco.ProcessSession(1) as sess:
        bind_session_devices(sess, [0])
        assert sess.default_ccl_backend() == "nccl"
        dmod = sess.load_module(ex)
        out = dmod["main"](x, w1, w2).fetch()
    out = out.get() if hasattr(out, "get") else np.asarray(out)      # cupy -> numpy
    np.testing.assert_allclose(out, M.mlp_ref(x, w1, w2), rtol=1e-4, atol=1e-4)

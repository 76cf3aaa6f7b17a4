"""What crosses the boundary between host and GPU: numpy arguments on "cuda" (every
call, not only the first), constants, 0-d arrays, results fetched by the controller,
the NCCL unique id, CUDA-graph captures that fail, and two workers sharing one GPU
through host-staged shm collectives. Each was broken once; numpy is the reference."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "e2e"))


def _llama():
    import _tp_models as M

    from compiler import build, script
    return M, build(script.parse(M.llama(1)), "cuda")


def test_numpy_arguments_work_on_every_call_not_only_the_first():
    """The plan cached by the first call must still move numpy arguments to the GPU."""
    import cupy as cp

    from disco.vm import VirtualMachine
    M, ex = _llama()
    f = VirtualMachine(ex, device="cuda")["main"]
    for seed in (1, 2, 3):                # same shapes: the second and third calls run the plan
        host = M.llama_inputs(np.random.default_rng(seed), 6)
        out = f(*host.values())
        assert isinstance(out, cp.ndarray)
        np.testing.assert_allclose(cp.asnumpy(out), M.llama_ref(**host), rtol=1e-4, atol=1e-4)


def test_module_with_constants_runs_on_the_gpu():
    """The Llama layer scales its scores by R.const(0.5): the constant must be a device
    array when the kernel reads it."""
    import cupy as cp

    from disco.vm import VirtualMachine
    M, ex = _llama()
    assert ex.constants, "the test needs a module with constants"
    vm = VirtualMachine(ex, device="cuda")
    assert all(isinstance(c, cp.ndarray) for c in vm.constants)
    host = M.llama_inputs(np.random.default_rng(0), 5)
    out = vm["main"](*[cp.asarray(v) for v in host.values()])
    np.testing.assert_allclose(cp.asnumpy(out), M.llama_ref(**host), rtol=1e-4, atol=1e-4)


def test_zero_d_arguments_stay_zero_d():
    import cupy as cp

    from compiler import op
    from compiler.build import build
    from compiler.ir import BlockBuilder, Var
    from compiler.ir.struct_info import TensorStructInfo
    from disco.cuda import to_device
    from disco.vm import VirtualMachine
    assert to_device(np.float32(3)).shape == ()
    assert to_device(np.array(2.5, np.float32)).shape == ()
    bb = BlockBuilder()
    x = Var("x", TensorStructInfo((), "float32"))
    y = Var("y", TensorStructInfo((4,), "float32"))
    with bb.function("scale", [x, y]):
        with bb.dataflow():
            out = bb.emit_output(op.multiply(y, x))
        bb.emit_func_output(out)
    f = VirtualMachine(build(bb.get(), "cuda"), device="cuda")["scale"]
    y_host = np.arange(4, dtype=np.float32)
    for s in (2.0, 3.0):
        got = f(np.array(s, np.float32), y_host)
        np.testing.assert_allclose(cp.asnumpy(got), y_host * s)


@pytest.mark.real_gpu
def test_torch_cuda_input_is_used_in_place():
    """A torch CUDA tensor enters the VM through DLPack without a copy: a function that
    returns its parameter hands back the very same device memory."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    from compiler.build import build
    from compiler.ir import BlockBuilder, Var
    from compiler.ir.struct_info import TensorStructInfo
    from disco.vm import VirtualMachine
    bb = BlockBuilder()
    x = Var("x", TensorStructInfo((3, 5), "float32"))
    with bb.function("ident", [x]):
        bb.emit_func_output(x)
    t = torch.arange(15, dtype=torch.float32, device="cuda").reshape(3, 5)
    out = VirtualMachine(build(bb.get(), "cuda"), device="cuda")["ident"](t)
    assert out.data.ptr == t.data_ptr()


def test_failed_capture_raises_its_own_error():
    """An error inside the captured call surfaces as itself, not as end_capture's."""
    import cupy as cp

    from disco.cuda import GraphFunction

    class Boom(Exception):
        pass

    calls = []

    class Handle:
        signature = "boom(x)"

        def __call__(self, x):
            calls.append(1)
            if len(calls) == 3:        # the captured run (after an eager call and a warm-up)
                raise Boom("raised while capturing")
            return x * 2

    class Dev:
        pass
    dev = Dev()
    dev.cp = cp
    g = GraphFunction(Handle(), dev)
    x = cp.ones(4, cp.float32)
    np.testing.assert_array_equal(cp.asnumpy(g(x)), np.full(4, 2, np.float32))   # eager
    with pytest.raises(Boom, match="raised while capturing"):
        g(x)


def test_fetch_of_a_gpu_result_gives_numpy(tmp_path):
    """A worker's cupy array reaches the controller as a numpy array (fetch and gather)."""
    import disco
    from disco.cuda import bind_session_devices
    with disco.ProcessSession(1) as sess:
        bind_session_devices(sess, [0])
        sess.import_module("gpu_worker_funcs")
        x = sess.get_global_func("test.gpu.iota")(5, "float32")
        got = x.fetch(worker=0)
        assert type(got) is np.ndarray
        np.testing.assert_array_equal(got, np.arange(1, 6, dtype=np.float32))
        np.testing.assert_array_equal(sess.gather(x), np.arange(1, 6, dtype=np.float32))


def test_nccl_unique_id_is_bytes_through_the_session():
    """cupy 14: get_unique_id() is 128 bytes and NcclCommunicator takes only bytes."""
    import disco
    from disco.ccl.nccl import id_bytes
    from disco.errors import CollectiveError
    assert id_bytes(tuple(range(-64, 64))) == bytes(v % 256 for v in range(-64, 64))
    with pytest.raises(CollectiveError, match="128 bytes, got 3"):
        id_bytes(b"abc")
    with disco.ThreadedSession(1) as sess:
        sess.import_module("disco.ccl.nccl")
        uid = sess.get_global_func("disco.ccl.nccl.unique_id")().fetch(0)
        assert isinstance(uid, bytes) and len(uid) == 128


def test_two_workers_share_one_gpu_through_host_staged_shm():
    """NCCL refuses two ranks on one device: two workers bound to GPU 0 get the shm
    backend, whose collectives copy device arrays through host memory, and the
    tensor-parallel MLP loaded with sess.load_module matches numpy."""
    import _tp_models as M

    import disco
    from compiler import build, script
    from disco.cuda import bind_session_devices
    ex = build(script.parse(M.mlp_weights_annotated(2, dim=16, hidden=32, act="gelu", batch="n")), "cuda")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 16)).astype(np.float32)
    w1 = rng.standard_normal((16, 32)).astype(np.float32)
    w2 = rng.standard_normal((32, 16)).astype(np.float32)
    with disco.ProcessSession(2) as sess:
        bind_session_devices(sess, [0, 0])
        assert sess.default_ccl_backend() == "shm"
        dmod = sess.load_module(ex)
        sess.import_module("gpu_worker_funcs")
        on_device = sess.get_global_func("test.gpu.is_device_array")
        for _ in range(2):           # the second call runs the cached plan
            ref = dmod["main"](x, w1, w2)
            assert on_device(ref).fetch(0) and on_device(ref).fetch(1)     # results stay on the GPU
            out = ref.fetch()
            assert type(out) is np.ndarray
            np.testing.assert_allclose(out, M.mlp_ref(x, w1, w2), rtol=1e-4, atol=1e-4)
        y = sess.get_global_func("test.gpu.iota")(4, "float32")      # (1..4) * (worker + 1)
        s = sess.get_global_func("ccl.allreduce")(y, "sum")
        assert sess.get_global_func("test.gpu.is_device_array")(s).fetch(1)
        np.testing.assert_array_equal(s.fetch(1), np.arange(1, 5, dtype=np.float32) * 3)

"""torch tensors at the runtime's boundary, against numpy references: the VM, a
tensor-parallel DModule, and the collectives inside workers. Skipped without torch
(the project does not depend on it; `pip install torch` to run these)."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import compiler
import disco
from compiler import script

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.timeout(120)

BF16 = np.dtype(ml_dtypes.bfloat16)

LINEAR = '''
@I.ir_module
class Linear:
    @R.function
    def main(x: R.Tensor(("n", 16), "float32"), w: R.Tensor((16, 8), "float32")) -> R.Tensor(("n", 8), "float32"):
        n = T.int64()
        with R.dataflow():
            y = R.nn.relu(R.matmul(x, w))
            R.output(y)
        return y
'''

ADD_BF16 = '''
@I.ir_module
class AddBF16:
    @R.function
    def main(a: R.Tensor((4, 8), "bfloat16"), b: R.Tensor((4, 8), "bfloat16")) -> R.Tensor((4, 8), "bfloat16"):
        with R.dataflow():
            c = R.add(a, b)
            R.output(c)
        return c
'''


@pytest.fixture(scope="module")
def linear():
    return compiler.build(script.parse(LINEAR))


def test_vm_takes_torch_tensors_even_non_contiguous_or_requiring_grad(linear):
    vm = disco.VirtualMachine(linear)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    tw = torch.from_numpy(w).t()                       # (16, 8), not contiguous
    tx = torch.from_numpy(x).requires_grad_(True)
    y = vm["main"](tx, tw)
    assert isinstance(y, np.ndarray)
    np.testing.assert_allclose(y, np.maximum(x @ w.T, 0), rtol=1e-5, atol=1e-5)


def test_vm_takes_bfloat16_torch_tensors():
    vm = disco.VirtualMachine(compiler.build(script.parse(ADD_BF16)))
    a = torch.linspace(-3, 3, 32).reshape(4, 8).to(torch.bfloat16)
    b = torch.full((4, 8), 0.5).to(torch.bfloat16)
    c = vm["main"](a, b)
    assert c.dtype == BF16
    want = (a.float() + b.float()).to(torch.bfloat16).view(torch.int16).numpy()   # torch's rounding
    np.testing.assert_array_equal(c.view(np.int16), want)


def test_vm_rejects_a_tensor_of_another_device_clearly(linear):
    vm = disco.VirtualMachine(linear)
    meta = torch.empty((5, 16), device="meta")
    with pytest.raises(disco.DiscoError, match="torch tensor on meta"):
        vm["main"](meta, np.zeros((16, 8), np.float32))


MLP = '''
@I.ir_module
class MLP:
    I.module_global_infos({"mesh": [R.device_mesh((2,), I.Range(0, 2))]})

    @R.function
    def main(x: R.Tensor(("n", 16), "float32"),
             w1: R.DTensor((16, 32), "float32", "mesh[0]", "S[1]"),
             w2: R.DTensor((32, 16), "float32", "mesh[0]", "S[0]")) -> R.Tensor(("n", 16), "float32"):
        n = T.int64()
        with R.dataflow():
            h = R.nn.relu(R.matmul(x, w1))
            y = R.matmul(h, w2)
            R.output(y)
        return y
'''


@pytest.mark.parametrize("kind", [disco.ThreadedSession, disco.ProcessSession], ids=lambda k: k.__name__)
def test_tensor_parallel_module_on_torch_inputs_and_weights(kind):
    ex = compiler.build(script.parse(MLP))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 16)).astype(np.float32)
    w1 = rng.standard_normal((16, 32)).astype(np.float32) / 4
    w2 = rng.standard_normal((32, 16)).astype(np.float32) / 6
    with kind(2) as sess:
        dmod = sess.load_module(ex)
        weights = dmod.place({"w1": torch.from_numpy(w1), "w2": torch.from_numpy(w2)})
        y = dmod["main"](torch.from_numpy(x), weights["w1"], weights["w2"]).fetch()
    np.testing.assert_allclose(y, np.maximum(x @ w1, 0) @ w2, rtol=1e-4, atol=1e-5)


@disco.register_func("test.torch_collectives", override=True)
def _torch_collectives(dtype_name: str):
    """Worker side: torch tensors straight into disco.ccl (results are numpy)."""
    from disco import ccl
    w = disco.worker_id()
    x = (torch.arange(12, dtype=torch.float32).reshape(3, 4) * (w + 1)).to(getattr(torch, dtype_name))
    summed = ccl.allreduce(x)
    gathered = ccl.allgather(x, axis=1)
    return summed, gathered


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_collectives_take_torch_tensors(dtype):
    """shm collectives on torch tensors, bfloat16 included (numpy's DLPack import
    refuses it; the runtime goes through a 16-bit view)."""
    with disco.ThreadedSession(2) as sess:
        sess.init_ccl("shm")
        r = sess.get_global_func("test.torch_collectives")(dtype)
        summed, gathered = r.fetch(1)
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    want_dtype = BF16 if dtype == "bfloat16" else np.dtype(np.float32)
    assert summed.dtype == want_dtype and gathered.dtype == want_dtype
    np.testing.assert_array_equal(summed.astype(np.float32), base * 3)
    np.testing.assert_array_equal(gathered.astype(np.float32), np.concatenate([base, base * 2], axis=1))


def test_scatter_and_gather_of_a_torch_tensor():
    with disco.ProcessSession(2) as sess:
        t = torch.arange(8.0).reshape(4, 2)
        part = sess.scatter(t)
        np.testing.assert_array_equal(part.fetch(1), t.numpy()[2:])
        np.testing.assert_array_equal(sess.gather(part), t.numpy())

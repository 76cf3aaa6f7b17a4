"""The Executable file format and the VM, without the compiler: executables written
by hand (bytecode + a C kernel compiled with the system compiler), exported to one
file, loaded in a process that cannot import `compiler`."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import ml_dtypes
import numpy as np
import pytest

from disco.errors import DiscoError, SignatureError
from disco.executable import Executable, KernelInfo, Op, VMFunction, load_executable
from disco.vm import VirtualMachine

ADD_ONE_C = r"""
#include <stdint.h>
/* B[i, j] = A[i, j] + 1 (float32); dims = A's shape, B's shape. */
void add_one(void* const* args, const int64_t* dims) {
  const float* a = (const float*)args[0]; float* b = (float*)args[1];
  for (int64_t i = 0; i < dims[0] * dims[1]; ++i) b[i] = a[i] + 1.0f;
}
"""


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DISCO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "disco"))


@pytest.fixture(scope="module")
def so_bytes(tmp_path_factory):
    d = tmp_path_factory.mktemp("so")
    (d / "k.c").write_text(ADD_ONE_C)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", str(d / "k.c"), "-o", str(d / "k.so")], check=True)
    return (d / "k.so").read_bytes()


def tensor(shape, dtype="float32"):
    return {"kind": "tensor", "dtype": dtype, "ndim": len(shape), "shape": shape}


N = ["b", 0, "n"]


def hand_executable(so_bytes, chain=2):
    """main(x: (n, 4)) -> (add_one^chain(x) + c, n * 2) with c a constant, written as bytecode."""
    # registers: 0 = x, 1 = the constant, 2 = result, 3 = n * 2, 4 = the tuple, 100.. = chain
    code = []
    src = 0
    for i in range(chain):
        dst = 100 + i
        code.append([int(Op.ALLOC), dst, "float32", ["h[0]", 4]])
        code.append([int(Op.CALL_KERNEL), 0, [src, dst], []])
        src = dst
    code += [[int(Op.LOAD_CONST), 1, 0],
             [int(Op.ALLOC), 2, "float32", ["h[0]", 4]],
             [int(Op.CALL_KERNEL), 0, [src, 2], []],
             [int(Op.PRIM), 3, "h[0] * 2"],
             [int(Op.MAKE_TUPLE), 4, [2, 3, 1]],
             [int(Op.RET), 4]]
    main = VMFunction("main", [{"name": "x", "pattern": tensor([N, 4])}],
                      {"kind": "object"}, code, 100 + chain, ["n"])
    kernel = KernelInfo("add_one", [{"name": "A", "dtype": "float32", "ndim": 2},
                                    {"name": "B", "dtype": "float32", "ndim": 2}])
    const = np.arange(4, dtype=np.float32).astype(ml_dtypes.bfloat16)
    return Executable({"main": main}, [kernel], so_bytes, [const], {"placements": {"x": "R"}})


def test_hand_written_bytecode_runs(so_bytes):
    vm = VirtualMachine(hand_executable(so_bytes))
    for n in (1, 3, 3, 5):
        x = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
        y, n2, c = vm["main"](x)
        np.testing.assert_allclose(y, x + 3, rtol=1e-6)
        assert n2 == 2 * n and c.dtype == ml_dtypes.bfloat16


def test_export_is_one_zip_with_json_manifest_and_no_pickle(so_bytes, tmp_path):
    ex = hand_executable(so_bytes)
    path = tmp_path / "model.disco"
    ex.export(path)
    assert sorted(os.listdir(tmp_path)) == ["model.disco"]
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("manifest.json"))
    assert names == {"manifest.json", "kernels.so", "const/0.npy"}
    assert manifest["format"] == "disco-executable" and manifest["version"] == 1
    assert manifest["constants"] == [{"file": "const/0.npy", "dtype": "bfloat16"}]
    assert manifest["metadata"] == {"placements": {"x": "R"}}
    back = load_executable(path)
    assert back.functions["main"].code == ex.functions["main"].code
    assert back.constants[0].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(back.constants[0], ex.constants[0])
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(VirtualMachine(back)["main"](x)[0], x + 3)


def test_load_in_process_without_compiler(so_bytes, tmp_path):
    path = tmp_path / "model.disco"
    hand_executable(so_bytes).export(path)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["compiler"] = None          # any import of the compiler fails
        import numpy as np
        import disco
        ex = disco.load_executable({str(path)!r})
        vm = disco.VirtualMachine(ex, device="cpu")
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        y, n2, _ = vm["main"](x)
        assert np.array_equal(y, x + 3) and n2 == 6, (y, n2)
        assert not any(m == "compiler" or m.startswith("compiler.") for m in sys.modules
                       if sys.modules[m] is not None)
        print("ok")
    """)
    env = dict(os.environ, DISCO_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


MATMUL_RELU = """
from compiler.script import I, R, T

@I.ir_module
class Module:
    @R.function
    def main(x: R.Tensor(("n", 64), "float32"), w: R.Tensor((64, 32), "float32")):
        n = T.int64()
        with R.dataflow():
            y = R.nn.relu(R.matmul(x, w))
            R.output(y)
        return y
"""


@pytest.mark.parametrize("pipeline", ["no passes", "default"])
def test_built_executable_exports_and_loads_without_compiler(pipeline, tmp_path, monkeypatch):
    """compiler.build output, exported, run in a process that blocks `compiler`; the default
    pipeline's build calls the BLAS library function (disco.blas), found without it."""
    spec = importlib.util.spec_from_file_location(
        "_vm_seed_module", os.path.join(os.path.dirname(__file__), "..", "compiler", "test_vm.py"))
    tv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tv)
    from compiler.build import build
    path = tmp_path / "seed.disco"
    monkeypatch.setenv("DISCO_TP_CACHE", str(tmp_path / "cc"))
    if pipeline == "no passes":
        ex = build(tv.seed_module(), passes=[])      # the hand-written mm tensor program
    else:
        from compiler import script
        ex = build(script.parse(MATMUL_RELU))
        assert "disco.blas.matmul" in ex.as_text()
    ex.export(path)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["compiler"] = None
        import numpy as np
        from disco.executable import load_executable
        from disco.vm import VirtualMachine
        vm = VirtualMachine(load_executable({str(path)!r}))
        rng = np.random.default_rng(0)
        w = rng.standard_normal((64, 32), dtype=np.float32)
        for n in (1, 7, 128):
            x = rng.standard_normal((n, 64), dtype=np.float32)
            np.testing.assert_allclose(vm["main"](x, w), np.maximum(x @ w, 0), rtol=1e-4, atol=1e-4)
        assert not any(m == "compiler" or m.startswith("compiler.") for m in sys.modules
                       if sys.modules[m] is not None)
        print("ok")
    """)
    env = dict(os.environ, DISCO_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_returned_tensors_are_fresh_each_call(so_bytes):
    vm = VirtualMachine(hand_executable(so_bytes))
    x = np.zeros((2, 4), np.float32)
    y1 = vm["main"](x)[0]
    y2 = vm["main"](x + 10)[0]
    assert not np.shares_memory(y1, y2)
    np.testing.assert_array_equal(y1, x + 3)
    np.testing.assert_array_equal(y2, x + 13)


def test_signature_errors(so_bytes):
    vm = VirtualMachine(hand_executable(so_bytes))
    with pytest.raises(SignatureError, match=r"main: parameter 'x' expects shape \(n, 4\) with "
                                             r"n=2 \(bound by 'x'\), got \(2, 5\)"):
        vm["main"](np.zeros((2, 5), np.float32))
    with pytest.raises(SignatureError, match=r"expects 1 argument \(x\), got 2"):
        vm["main"](np.zeros((2, 4), np.float32), 1)
    assert "main(x: Tensor((n, 4), float32))" in vm["main"].signature


def test_malformed_executables_are_refused(so_bytes, tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("manifest.json", json.dumps({"format": "other"}))
    with pytest.raises(DiscoError, match="not a disco executable"):
        load_executable(bad)
    ex = hand_executable(so_bytes)
    ex.functions["main"].code.insert(0, [int(Op.PRIM), 3, "__import__('os').getpid()"])
    with pytest.raises(DiscoError, match="does not allow"):
        VirtualMachine(ex)


def test_as_text_lists_bytecode(so_bytes):
    text = hand_executable(so_bytes).as_text()
    assert "CALL_KERNEL" in text and "kernel 0: add_one(A: float32[2d], B: float32[2d])" in text


def test_cuda_device_is_a_clear_error(so_bytes):
    # without cupy or a GPU: says what is missing; with one: a CPU executable has no CUDA kernels
    with pytest.raises(DiscoError, match=r"needs cupy|no usable GPU|no GPU found|target 'cpu'"):
        VirtualMachine(hand_executable(so_bytes), device="cuda")

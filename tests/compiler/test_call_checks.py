"""Tensor shapes passed to a tensor program vs. its buffer shapes
(compiler/codegen/verify_calls.py, Op.CHECK_KERNEL in disco/vm/).

A provable mismatch fails the build; one the build cannot decide (a size bound by a
match_cast, an argument of unknown shape) is checked by the VM before the kernel
runs; consistent modules build without a run-time check and compute what numpy does."""
import numpy as np
import pytest

from compiler import build
from compiler.build import BuildError
from compiler.codegen.verify_calls import CallShapeError
from compiler.script import parse
from disco.errors import SignatureError
from disco.vm import VirtualMachine

from test_script import SEED


@pytest.fixture(autouse=True)
def _caches(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("DISCO_TP_CACHE", str(base / "cc"))
    monkeypatch.setenv("DISCO_CACHE_DIR", str(base / "disco"))


SEED_CALL = 'R.call_tir(Module.mm, (X, W), R.Tensor((n, 64), "float32"))'
MM = SEED[:SEED.index("    @R.function")]     # the header and the `mm` PrimFunc


def seed_with_out(out_sinfo: str) -> str:
    """The seed module with the call's out_sinfo replaced."""
    assert SEED_CALL in SEED
    return SEED.replace(SEED_CALL, f"R.call_tir(Module.mm, (X, W), {out_sinfo})")


def inputs(n, rng=np.random.default_rng(0)):
    x = rng.standard_normal((n, 128)).astype("float32")
    w = rng.standard_normal((128, 64)).astype("float32")
    return x, w


def reference(x, w):
    return np.maximum(x.astype("float64") @ w.astype("float64"), 0)


# -- build-time errors ---------------------------------------------------------------

def test_issue_repro_out_sinfo_n_times_2_is_a_build_error(roundtrip):
    mod = parse(seed_with_out('R.Tensor((n * 2, 64), "float32")'))
    roundtrip(mod)
    with pytest.raises(CallShapeError) as info:
        build(mod)
    msg = str(info.value)
    assert isinstance(info.value, BuildError)
    assert msg.startswith("main: call_tir of tensor program 'mm': buffer 'Y' (output 0)")
    assert "has shape (n, 64) where n = n (bound by buffer 'X' (argument 0))" in msg
    assert "expects (n, 64)" in msg and "the call gives (n * 2, 64)" in msg
    assert "dim 0 is n * 2, not n" in msg


@pytest.mark.parametrize("out_sinfo, expected", [
    ('R.Tensor((n, 32), "float32")', "dim 1 is 32, not 64"),
    ('R.Tensor((n + 1, 64), "float32")', "dim 0 is n + 1, not n"),
    ('R.Tensor((n, 64), "float16")', "expects dtype float32, given float16"),
    ('R.Tensor((n, 64, 1), "float32")', "expects a 2-d tensor of shape (n, 64), given a 3-d"),
])
def test_provable_mismatches_name_buffer_and_shapes(out_sinfo, expected, roundtrip):
    mod = parse(seed_with_out(out_sinfo))
    roundtrip(mod)
    with pytest.raises(CallShapeError, match="^main: call_tir of tensor program 'mm': "
                                             r"buffer 'Y' \(output 0\)") as info:
        build(mod, passes=[])
    assert expected in str(info.value)


def test_input_mismatch_against_another_argument(roundtrip):
    # X has 100 columns; mm's X buffer wants 128.
    src = SEED.replace('X: R.Tensor(("n", 128), "float32")', 'X: R.Tensor(("n", 100), "float32")')
    mod = parse(src)
    roundtrip(mod)
    with pytest.raises(CallShapeError, match=r"buffer 'X' \(argument 0\) has shape \(n, 128\)"
                                             r".*the call gives \(n, 100\): dim 1 is 100, not 128"):
        build(mod, passes=[])


DPS = MM + '''
    @R.function
    def main(X: R.Tensor(("n", 128), "float32"), W: R.Tensor((128, 64), "float32")):
        n = T.int64()
        alloc = R.builtin.alloc_tensor(R.shape([OUT]), R.dtype("float32"), R.prim_value(0))
        y = R.memory.call_tir(Module.mm, (X, W), (alloc,))
        return y
'''


def test_destination_passing_call_tir_is_checked(roundtrip):
    bad = parse(DPS.replace("OUT", "n * 2, 64"))
    roundtrip(bad)
    with pytest.raises(CallShapeError, match=r"^main: call_tir of tensor program 'mm': "
                                             r"buffer 'Y' \(output 0\).*the call gives "
                                             r"\(n \* 2, 64\)"):
        build(bad, passes=[])
    good = parse(DPS.replace("OUT", "n, 64"))
    roundtrip(good)
    ex = build(good, passes=[])
    assert "CHECK_KERNEL" not in ex.as_text()
    x, w = inputs(3)
    np.testing.assert_allclose(VirtualMachine(ex)["main"](x, w), x.astype("float64") @ w,
                               rtol=1e-4, atol=1e-4)


# -- run-time checks -----------------------------------------------------------------

MATCH_CAST = MM + '''
    @R.function
    def main(X: R.Tensor(("n", 128), "float32"), W: R.Tensor((128, 64), "float32"),
             Z: R.Tensor("float32", ndim=1)):
        m = T.int64()
        z = R.match_cast(Z, R.Tensor((m,), "float32"))
        with R.dataflow():
            lv0 = R.call_tir(Module.mm, (X, W), R.Tensor((m, 64), "float32"))
            gv0 = R.nn.relu(lv0)
            R.output(gv0)
        return gv0
'''


def test_size_bound_by_match_cast_is_checked_at_call_time(roundtrip):
    mod = parse(MATCH_CAST)
    roundtrip(mod)
    ex = build(mod)                         # m vs n cannot be decided statically
    assert ex.as_text().count("CHECK_KERNEL") == 1
    vm = VirtualMachine(ex)
    x, w = inputs(5)
    np.testing.assert_allclose(vm["main"](x, w, np.zeros(5, "float32")), reference(x, w),
                               rtol=1e-4, atol=1e-4)
    for _ in range(2):                      # a failing call caches no plan: fails every time
        with pytest.raises(SignatureError) as info:
            vm["main"](x, w, np.zeros(10, "float32"))
        assert str(info.value) == (
            "main: call_tir of tensor program 'mm': buffer 'Y' (output 0) expects shape "
            "(n, 64) with n=5 (bound by buffer 'X' (argument 0)), got (10, 64)")
    # the plan for the consistent shapes still runs, for another n too
    np.testing.assert_allclose(vm["main"](x, w, np.zeros(5, "float32")), reference(x, w),
                               rtol=1e-4, atol=1e-4)
    x2, w2 = inputs(7)
    np.testing.assert_allclose(vm["main"](x2, w2, np.ones(7, "float32")), reference(x2, w2),
                               rtol=1e-4, atol=1e-4)


def test_argument_of_unknown_shape_is_checked_at_call_time(roundtrip):
    src = (SEED.replace('X: R.Tensor(("n", 128), "float32")', 'X: R.Tensor("float32", ndim=2), '
                        'N: R.Shape(["n"])'))
    mod = parse(src)
    roundtrip(mod)
    ex = build(mod)
    assert ex.as_text().count("CHECK_KERNEL") == 1     # mm's call; relu's is proved
    vm = VirtualMachine(ex)
    x, w = inputs(4)
    with pytest.raises(SignatureError, match=r"^main: call_tir of tensor program 'mm': buffer 'X' "
                                             r"\(argument 0\) expects shape \(n, 128\) with n=4 .*"
                                             r"got \(4, 100\)"):
        vm["main"](np.zeros((4, 100), "float32"), (4,), w)
    with pytest.raises(SignatureError, match=r"buffer 'Y' \(output 0\) expects shape \(n, 64\) "
                                             r"with n=4 .*got \(3, 64\)"):
        vm["main"](x, (3,), w)
    np.testing.assert_allclose(vm["main"](x, (4,), w), reference(x, w), rtol=1e-4, atol=1e-4)


# -- consistent modules ----------------------------------------------------------------

def test_seed_builds_without_run_time_checks_and_runs(roundtrip):
    mod = parse(SEED)
    roundtrip(mod)
    ex = build(mod)
    assert "CHECK_KERNEL" not in ex.as_text()     # every call proved statically
    vm = VirtualMachine(ex)
    for n in (1, 6):
        x, w = inputs(n)
        np.testing.assert_allclose(vm["main"](x, w), reference(x, w), rtol=1e-4, atol=1e-4)


LEGALIZED = """
from compiler.script import I, R, T

@I.ir_module
class Module:
    @R.function
    def main(x: R.Tensor(("b", "s", 16), "float32"), w: R.Tensor((16, 8), "float32"),
             bias: R.Tensor((8,), "float32")):
        b = T.int64()
        s = T.int64()
        with R.dataflow():
            y = R.matmul(x, w)
            z = R.add(y, bias)
            r = R.nn.relu(z)
            t = R.permute_dims(r, [1, 0, 2])
            u = R.reshape(t, R.shape([s * b, 8]))
            v = R.sum(u, axis=[0])
            R.output(v)
        return v
"""


def test_legalized_module_builds_without_run_time_checks_and_runs(roundtrip):
    mod = parse(LEGALIZED)
    roundtrip(mod)
    ex = build(mod)
    assert "CHECK_KERNEL" not in ex.as_text()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 16)).astype("float32")
    w = rng.standard_normal((16, 8)).astype("float32")
    bias = rng.standard_normal(8).astype("float32")
    want = np.maximum(x.astype("float64") @ w + bias, 0).transpose(1, 0, 2).reshape(6, 8).sum(0)
    np.testing.assert_allclose(VirtualMachine(ex)["main"](x, w, bias), want, rtol=1e-4, atol=1e-4)


TILE = """
from compiler.script import I, R, T

@I.ir_module
class Module:
    @T.prim_func
    def tile2(A: T.Buffer(("m",), "float32"), B: T.Buffer(("k",), "float32"), k: T.int64):
        m = T.int64()
        for i in range(k):
            with T.block("B"):
                vi = T.axis.remap("S", [i])
                B[vi] = A[vi % m]

    @R.function
    def main(X: R.Tensor(("n",), "float32")):
        n = T.int64()
        y = R.call_tir(cls.tile2, (X,), out_sinfo=R.Tensor((n * 2,), "float32"),
                       tir_vars=R.shape([TIR_VAR]))
        return y
"""


def test_tir_vars_are_unified_with_the_buffer_dims_they_share_a_var_with(roundtrip):
    # tile2's k is bound by B's dim (n * 2) and passed again as a scalar.
    ok = parse(TILE.replace("TIR_VAR", "n * 2"))
    roundtrip(ok)
    ex = build(ok, passes=[])
    assert "CHECK_KERNEL" not in ex.as_text()
    np.testing.assert_array_equal(VirtualMachine(ex)["main"](np.arange(3, dtype="float32")),
                                  np.tile(np.arange(3), 2))

    bad = parse(TILE.replace("TIR_VAR", "n"))
    roundtrip(bad)
    with pytest.raises(CallShapeError, match=r"^main: call_tir of tensor program 'tile2': "
                                             r"tir_vars\[0\] gives tile2's k = n, but buffer 'B' "
                                             r"\(output 0\) binds k = n \* 2$"):
        build(bad, passes=[])

    undecided = parse(TILE.replace("TIR_VAR", "n + 3"))   # equal to n * 2 only for n = 3
    roundtrip(undecided)
    vm = VirtualMachine(build(undecided, passes=[]))
    np.testing.assert_array_equal(vm["main"](np.arange(3, dtype="float32")),
                                  np.tile(np.arange(3), 2))
    with pytest.raises(SignatureError, match=r"^main: call_tir of tensor program 'tile2': scalar "
                                             r"'k' \(tir_vars\[0\]\) expects value k with k=4 "
                                             r"\(bound by buffer 'B' \(output 0\)\), got 5$"):
        vm["main"](np.arange(2, dtype="float32"))

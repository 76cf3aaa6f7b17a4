"""DispatchLibrary, DeadCodeElimination and PlanMemory: structure of the modules they
write (hand-derived expectations) and results of the built modules against numpy."""
import sys
from dataclasses import replace

import numpy as np
import pytest

from compiler import build, op
from compiler.ir import assert_structural_equal
from compiler.ir import graph as G
from compiler.ir.builder import BlockBuilder
from compiler.ir.graph import TupleGetItem, Var
from compiler.ir.struct_info import ObjectStructInfo, TensorStructInfo as TS
from compiler.ir.visitor import post_order_visit
from compiler.transform.dead_code import DeadCodeElimination
from compiler.transform.dispatch_library import DispatchLibrary
from compiler.transform.legalize_ops import LegalizeOps
from compiler.transform.plan_memory import PlanMemory
from disco import registry
from disco.errors import DiscoError, SignatureError
from disco.executable import Op as VMOp
from disco.vm import VirtualMachine

@pytest.fixture(autouse=True)
def _caches(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("DISCO_TP_CACHE", str(base / "cc"))
    monkeypatch.setenv("DISCO_CACHE_DIR", str(base / "disco"))


def run(mod, *args, fn="main"):
    return VirtualMachine(build(mod, passes=[]))[fn](*args)


def calls(mod, fn="main"):
    """Names of the operators / extern functions called by graph function `fn`, in order."""
    out = []

    def visit(n):
        if isinstance(n, G.Call):
            out.append(n.op.name if isinstance(n.op, G.Op) else
                       n.op.global_symbol if isinstance(n.op, G.ExternFunc) else n.op.name_hint)
        if isinstance(n, G.ExternFunc):
            out.append(n.global_symbol)
    post_order_visit(mod[fn], visit)
    return out


def bindings(mod, fn="main"):
    return [b for blk in mod[fn].body.blocks for b in blk.bindings]


def one_op_module(make, *sinfos, attrs=None):
    bb = BlockBuilder()
    params = [Var(f"x{i}", s) for i, s in enumerate(sinfos)]
    with bb.function("main", params, attrs=attrs):
        with bb.dataflow():
            y = bb.emit_output(make(*params))
        bb.emit_func_output(y)
    return bb.get()


# -- DispatchLibrary --------------------------------------------------------------------

MATMUL_CASES = [
    ((5, 7), (7, 3)),            # 2-D
    ((2, 5, 7), (7, 3)),         # batched x 2-D
    ((2, 5, 7), (2, 7, 3)),      # batched x batched
    ((1, 5, 7), (4, 7, 3)),      # broadcast batch
]


@pytest.mark.parametrize("dtype,out_dtype", [("float32", None), ("float64", None),
                                             ("float16", None), ("float16", "float32"),
                                             ("float32", "float64")])
@pytest.mark.parametrize("sa,sb", MATMUL_CASES)
def test_dispatch_matmul_matches_numpy(sa, sb, dtype, out_dtype, roundtrip):
    mod = one_op_module(lambda a, b: op.matmul(a, b, out_dtype=out_dtype),
                        TS(sa, dtype), TS(sb, dtype))
    out = DispatchLibrary(mod)
    roundtrip(out)
    assert calls(out) == ["disco.blas.matmul", "relax.call_dps_packed"]   # children first
    assert out["main"].body.body.struct_info == mod["main"].body.body.struct_info
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(sa).astype(dtype), rng.standard_normal(sb).astype(dtype)
    got = run(out, a, b)
    want = a.astype(np.float64) @ b.astype(np.float64)
    assert got.dtype == np.dtype(out_dtype or dtype) and got.shape == want.shape
    tol = 2e-2 if (out_dtype or dtype) == "float16" else 1e-5
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol)


def test_dispatch_symbolic_rows():
    bb = BlockBuilder()
    n = bb.size_var("n")
    mod = one_op_module(op.matmul, TS((n, 16), "float32"), TS((16, 8), "float32"))
    out = DispatchLibrary(mod)
    a = np.random.default_rng(1).standard_normal((9, 16)).astype("float32")
    b = np.random.default_rng(2).standard_normal((16, 8)).astype("float32")
    vm = VirtualMachine(build(out, passes=[]))
    np.testing.assert_allclose(vm["main"](a, b), a @ b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vm["main"](a[:3], b), a[:3] @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sa,sb,dtype", [((5, 7), (7, 3), "int32"), ((7,), (7, 3), "float32"),
                                         ((5, 7), (7,), "float32")])
def test_dispatch_leaves_what_blas_does_not_handle(sa, sb, dtype):
    mod = one_op_module(op.matmul, TS(sa, dtype), TS(sb, dtype))
    out = DispatchLibrary(mod)
    assert_structural_equal(out, mod)
    assert calls(out) == ["relax.matmul"]


def test_left_matmuls_still_build_after_legalize():
    mod = one_op_module(op.matmul, TS((5, 7), "int32"), TS((7, 3), "int32"))
    out = LegalizeOps(DispatchLibrary(mod))
    a = np.arange(35, dtype="int32").reshape(5, 7)
    b = np.arange(21, dtype="int32").reshape(7, 3) - 10
    np.testing.assert_array_equal(run(out, a, b), a @ b)


def test_vm_finds_blas_without_an_import(monkeypatch):
    """The VM imports disco.blas itself: a fresh registry without it still runs."""
    monkeypatch.delitem(sys.modules, "disco.blas", raising=False)
    monkeypatch.setattr(registry, "_FUNCS", {k: v for k, v in registry._FUNCS.items()
                                             if not k.startswith("disco.blas.")})
    mod = DispatchLibrary(one_op_module(op.matmul, TS((3, 4), "float32"), TS((4, 2), "float32")))
    a, b = np.ones((3, 4), "float32"), np.full((4, 2), 2.0, "float32")
    np.testing.assert_array_equal(run(mod, a, b), np.full((3, 2), 8.0, "float32"))


def test_blas_matmul_checks_its_output():
    from disco.blas import matmul
    a = np.ones((3, 4), "float32")
    out = np.empty((2, 3), "float32").T         # right shape, not C-contiguous
    with pytest.raises(DiscoError, match="C-contiguous"):
        matmul(a, np.ones((4, 2), "float32"), out)
    with pytest.raises(DiscoError, match="int32"):
        matmul(a.astype("int32"), np.ones((4, 2), "int32"), np.empty((3, 2), "int32"))
    out = np.empty((3, 2), "float32")
    matmul(a, np.full((4, 2), 0.5, "float32"), out)
    np.testing.assert_array_equal(out, np.full((3, 2), 2.0))


# -- DeadCodeElimination ------------------------------------------------------------------

def dce_module(with_dead: bool):
    """main uses helper; `with_dead` adds unused pure bindings (an op, a tuple, an item),
    an unused private function and an unused public one. An impure call_packed whose
    result is unused, and a match_cast binding a new size, stay either way."""
    bb = BlockBuilder()
    x = Var("x", TS((4, 8), "float32"))
    hx = Var("hx", TS((4, 8), "float32"))
    with bb.function("helper", [hx]):
        with bb.dataflow():
            h = bb.emit_output(op.exp(hx))
        bb.emit_func_output(h)
    helper = bb.get().get_global_var("helper")
    if with_dead:
        px = Var("px", TS((4, 8), "float32"))
        with bb.function("private_unused", [px], attrs={"private": True}):
            bb.emit_func_output(bb.emit(op.negative(px)))
        ux = Var("ux", TS((4, 8), "float32"))
        with bb.function("public_unused", [ux]):
            bb.emit_func_output(bb.emit(op.sqrt(ux)))
        fx = Var("fx", TS((4, 8), "float32"))
        with bb.function("fused_unused", [fx], attrs={"Primitive": True}):
            bb.emit_func_output(bb.emit(op.exp(fx)))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(op.add(x, x))
            if with_dead:
                d = bb.emit(op.multiply(x, x))
                t = bb.emit(G.Tuple((d, a)))
                bb.emit(TupleGetItem(t, 0))
            b = bb.emit_output(op.nn.relu(a))
        m = bb.emit_match_cast(b, TS((bb.size_var("m"), 8), "float32"))
        bb.emit(op.call_packed("test.log", m, sinfo_args=ObjectStructInfo()))
        c = bb.emit(G.Call(helper, (b,)))
        bb.emit_func_output(c)
    return bb.get()


def test_dce_removes_unused_bindings_and_functions(roundtrip):
    before = dce_module(with_dead=True)
    after = DeadCodeElimination(before)
    roundtrip(after)
    expected = dce_module(with_dead=False)
    # public_unused is public: it stays by default; private and Primitive ones go
    assert after.names() == ["helper", "public_unused", "main"]
    private = before["private_unused"]
    exported = replace(private, attrs=private.attrs.replace(global_symbol="private_unused"))
    kept = DeadCodeElimination(before.with_function("private_unused", exported))
    assert "private_unused" in kept.names()       # a global_symbol makes it public
    assert_structural_equal(after["main"], expected["main"])
    assert_structural_equal(after["helper"], expected["helper"])
    only_main = DeadCodeElimination(before, entry_functions=["main"])
    assert_structural_equal(only_main, expected)


def test_dce_keeps_a_fully_used_module_as_is():
    mod = dce_module(with_dead=False)
    assert DeadCodeElimination(mod) is mod or DeadCodeElimination(mod).names() == mod.names()
    assert_structural_equal(DeadCodeElimination(mod), mod)


def test_dce_unknown_entry_is_an_error():
    with pytest.raises(Exception, match="entry function 'nope'"):
        DeadCodeElimination(dce_module(False), entry_functions=["nope"])


def test_dce_drops_tensor_programs_of_removed_bindings():
    """Legalize(M with an unused multiply) minus DCE == Legalize(M without it)."""
    def mod(with_dead):
        bb = BlockBuilder()
        x = Var("x", TS((4, 8), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                a = bb.emit(op.exp(x))
                if with_dead:
                    bb.emit(op.multiply(a, x))
                y = bb.emit_output(op.add(a, x))
            bb.emit_func_output(y)
        return LegalizeOps(bb.get())
    with_dead, without = mod(True), mod(False)
    assert len(with_dead.prim_funcs()) == 3
    assert_structural_equal(DeadCodeElimination(with_dead), without)


# -- PlanMemory ---------------------------------------------------------------------------

def chain_module(shape, ops, attrs=None, dtype="float32"):
    """y = ops[-1](...ops[0](x)) as one binding per op."""
    bb = BlockBuilder()
    x = Var("x", TS(shape, dtype))
    with bb.function("main", [x], attrs=attrs):
        with bb.dataflow():
            y = x
            for f in ops[:-1]:
                y = bb.emit(f(y))
            y = bb.emit_output(ops[-1](y))
        bb.emit_func_output(y)
    return bb.get()


SIX = [op.negative, op.exp, op.negative, op.exp, op.negative, op.exp]


def six_ref(x):
    for f in (np.negative, np.exp) * 3:
        x = f(x)
    return x


def count(mod, name):
    return sum(1 for b in bindings(mod) if isinstance(b.value, G.Call)
               and isinstance(b.value.op, G.Op) and b.value.op.name == name)


def storage_of(mod):
    """var name -> storage var name, for tensors viewing a storage."""
    return {b.var.name_hint: b.value.args[0].name_hint for b in bindings(mod)
            if isinstance(b.value, G.Call) and isinstance(b.value.op, G.Op)
            and b.value.op.name == "relax.memory.alloc_tensor"}


def test_chain_of_six_uses_two_storages(roundtrip):
    mod = PlanMemory(LegalizeOps(chain_module((4, 8), SIX)))
    roundtrip(mod)
    # t1..t5 ping-pong between two storages; t6 is returned: allocated per call
    assert count(mod, "relax.memory.alloc_storage") == 2
    assert count(mod, "relax.memory.alloc_tensor") == 5
    assert count(mod, "relax.builtin.alloc_tensor") == 1
    assert count(mod, "relax.call_tir") == 0 and count(mod, "relax.memory.call_tir") == 6
    owners = list(storage_of(mod).values())
    assert owners[0::2] == [owners[0]] * 3 and owners[1::2] == [owners[1]] * 2
    assert owners[0] != owners[1]
    sizes = [b.value.args[0].values[0].value for b in bindings(mod)
             if isinstance(b.value, G.Call) and b.value.op.name == "relax.memory.alloc_storage"]
    assert sizes == [4 * 8 * 4, 4 * 8 * 4]
    ex = build(mod, passes=[])
    assert sum(ins[0] == VMOp.ALLOC_STORAGE for ins in ex.functions["main"].code) == 2
    x = np.random.default_rng(0).standard_normal((4, 8)).astype("float32")
    np.testing.assert_allclose(VirtualMachine(ex)["main"](x), six_ref(x), rtol=1e-5)


def test_returned_tensors_are_never_overwritten():
    mod = PlanMemory(LegalizeOps(chain_module((4, 8), SIX)))
    vm = VirtualMachine(build(mod, passes=[]))
    x1 = np.random.default_rng(0).standard_normal((4, 8)).astype("float32")
    x2 = np.random.default_rng(1).standard_normal((4, 8)).astype("float32")
    r1 = vm["main"](x1)
    keep = r1.copy()
    r2 = vm["main"](x2)
    r3 = vm["main"](x1)                 # the cached plan again
    np.testing.assert_array_equal(r1, keep)
    np.testing.assert_allclose(r2, six_ref(x2), rtol=1e-5)
    np.testing.assert_array_equal(r3, keep)
    assert not np.shares_memory(r1, r3)


def test_long_lived_tensor_keeps_its_storage():
    """a = exp(x); b = -a; c = exp(b); d = a + c: a lives until d, so b and c cannot
    take its storage (3 storages: a, b, and c which cannot reuse b's while b is read)."""
    bb = BlockBuilder()
    x = Var("x", TS((4, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(op.exp(x))
            b = bb.emit(op.negative(a))
            c = bb.emit(op.exp(b))
            e = bb.emit(op.negative(c))      # b is dead here: e takes b's storage
            d = bb.emit_output(op.add(a, e))
        bb.emit_func_output(d)
    mod = PlanMemory(LegalizeOps(bb.get()))
    owners = storage_of(mod)
    assert count(mod, "relax.memory.alloc_storage") == 3
    va, vb, vc, ve = list(owners.values())
    assert len({va, vb, vc}) == 3 and ve == vb
    x = np.random.default_rng(0).standard_normal((4, 8)).astype("float32")
    np.testing.assert_allclose(run(mod, x), np.exp(x) - np.exp(-np.exp(x)), rtol=1e-5)


def test_storage_is_shared_only_within_a_dtype_class():
    # a float, b int32 (a's storage is busy), c float (a is dead: a's storage), d returned
    ops = [op.exp, lambda t: op.astype(t, "int32"), lambda t: op.astype(t, "float32"),
           op.negative]
    mod = PlanMemory(LegalizeOps(chain_module((4, 8), ops)))
    owners = list(storage_of(mod).values())
    assert count(mod, "relax.memory.alloc_storage") == 2
    assert owners[0] == owners[2] != owners[1]
    x = np.linspace(0, 2, 32, dtype="float32").reshape(4, 8)
    np.testing.assert_array_equal(run(mod, x), -np.exp(x).astype("int32").astype("float32"))


def test_symbolic_size_with_upper_bound_is_planned_statically():
    bb = BlockBuilder()
    n = bb.size_var("n")
    mod = PlanMemory(LegalizeOps(chain_module((n, 8), SIX, attrs={"tir_var_upper_bound": {"n": 64}})))
    sizes = [b.value.args[0].values[0] for b in bindings(mod)
             if isinstance(b.value, G.Call) and b.value.op.name == "relax.memory.alloc_storage"]
    assert [s.value for s in sizes] == [64 * 8 * 4] * 2
    vm = VirtualMachine(build(mod, passes=[]))
    for rows in (1, 5, 64):
        x = np.random.default_rng(rows).standard_normal((rows, 8)).astype("float32")
        np.testing.assert_allclose(vm["main"](x), six_ref(x), rtol=1e-5)
    with pytest.raises(SignatureError, match=r"^main: size n=65 \(bound by 'x'\) exceeds its upper "
                                             r"bound 64 \(function attr tir_var_upper_bound\)"):
        vm["main"](np.zeros((65, 8), "float32"))
    np.testing.assert_allclose(vm["main"](x), six_ref(x), rtol=1e-5)   # still usable


def test_upper_bounds_of_shape_expressions():
    from compiler.ir import expr as E
    from compiler.transform.plan_memory import upper_bound
    n, m = E.Var("n"), E.Var("m")
    b = {"n": 10}
    assert upper_bound(n * 2 + 1, b) == 21
    assert upper_bound(E.min_expr(m, 16), b) == 16           # bounded by the shape itself
    assert upper_bound(E.max_expr(n, 4) * 3, b) == 30
    assert upper_bound(E.FloorDiv(n + 5, E.IntImm(4)), b) == 3
    assert upper_bound(n - 1, b) == 9
    assert upper_bound(n * m, b) == float("inf")
    assert upper_bound(E.IntImm(7) - m, b) == 7                  # sizes are >= 0


def test_symbolic_size_without_bound_is_allocated_at_run_time():
    bb = BlockBuilder()
    n = bb.size_var("n")
    mod = PlanMemory(LegalizeOps(chain_module((n, 8), SIX)))
    assert count(mod, "relax.memory.alloc_storage") == 0
    assert count(mod, "relax.builtin.alloc_tensor") == 6
    ex = build(mod, passes=[])
    assert not any(ins[0] == VMOp.ALLOC_STORAGE for ins in ex.functions["main"].code)
    vm = VirtualMachine(ex)
    for rows in (3, 100):
        x = np.random.default_rng(rows).standard_normal((rows, 8)).astype("float32")
        np.testing.assert_allclose(vm["main"](x), six_ref(x), rtol=1e-5)


def test_values_returned_through_tuples_and_packed_calls_are_not_planned(monkeypatch):
    """a is returned inside a tuple; b goes through a packed function that returns it
    (so the result aliases b); only c, read by nothing outside, is planned."""
    registry.register_func("test.plan.identity", lambda t: t, override=True)
    bb = BlockBuilder()
    x = Var("x", TS((4, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(op.exp(x))
            b = bb.emit(op.negative(x))
            c = bb.emit(op.add(a, b))
            d = bb.emit(op.call_pure_packed("test.plan.identity", b, sinfo_args=TS((4, 8), "float32")))
            e = bb.emit(op.negative(c))
            out = bb.emit_output(G.Tuple((a, d, e)))
        bb.emit_func_output(out)
    mod = PlanMemory(LegalizeOps(bb.get()))
    assert count(mod, "relax.memory.alloc_tensor") == 1          # c only
    assert count(mod, "relax.builtin.alloc_tensor") == 3
    vm = VirtualMachine(build(mod, passes=[]))
    x1 = np.random.default_rng(0).standard_normal((4, 8)).astype("float32")
    r1 = vm["main"](x1)
    keep = [t.copy() for t in r1]
    vm["main"](x1 + 1)
    for got, want in zip(r1, keep):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(r1[0], np.exp(x1), rtol=1e-6)
    np.testing.assert_allclose(r1[1], -x1)
    np.testing.assert_allclose(r1[2], -(np.exp(x1) - x1), rtol=1e-6)


def test_call_dps_packed_outputs_are_planned(roundtrip):
    registry.register_func("test.plan.twice", lambda a, out: np.multiply(a, 2, out=out),
                           override=True)
    ops = [op.exp,
           lambda t: op.call_dps_packed("test.plan.twice", [t], out_sinfo=TS((4, 8), "float32")),
           op.negative, op.exp]
    mod = PlanMemory(LegalizeOps(chain_module((4, 8), ops)))
    roundtrip(mod)
    assert count(mod, "relax.memory.call_dps_packed") == 1
    assert count(mod, "relax.memory.alloc_storage") == 2
    x = np.random.default_rng(0).standard_normal((4, 8)).astype("float32")
    np.testing.assert_allclose(run(mod, x), np.exp(-2 * np.exp(x)), rtol=1e-5)


def test_planned_module_survives_more_passes():
    """PlanMemory twice, DCE and LegalizeOps after it leave a module that still runs."""
    mod = PlanMemory(LegalizeOps(chain_module((4, 8), SIX)))
    again = DeadCodeElimination(LegalizeOps(PlanMemory(mod)))
    assert_structural_equal(again, mod)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype("float32")
    np.testing.assert_allclose(run(again, x), six_ref(x), rtol=1e-5)


def test_planned_executable_exports_and_loads(tmp_path):
    from disco.executable import load_executable
    bb = BlockBuilder()
    n = bb.size_var("n")
    mod = PlanMemory(LegalizeOps(chain_module((n, 8), SIX, attrs={"tir_var_upper_bound": {"n": 16}})))
    build(mod, passes=[]).export(tmp_path / "six.disco")
    ex = load_executable(tmp_path / "six.disco")
    assert "ALLOC_STORAGE" in ex.as_text() and "ALLOC_VIEW" in ex.as_text()
    x = np.random.default_rng(0).standard_normal((7, 8)).astype("float32")
    np.testing.assert_allclose(VirtualMachine(ex)["main"](x), six_ref(x), rtol=1e-5)


def test_tuple_outputs_and_their_items_are_planned():
    """e = exp(x) [S0]; p0, p1 = split(e) [S1, S2: S0 is read]; a = -p0 [S0, e is dead];
    b = exp(p1) [S1, p0 is dead]; c = a + b [S2, p1 is dead]; y = -c returned."""
    bb = BlockBuilder()
    x = Var("x", TS((4, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            e = bb.emit(op.exp(x))
            parts = bb.emit(op.split(e, 2, axis=1))
            a = bb.emit(op.negative(TupleGetItem(parts, 0)))
            b = bb.emit(op.exp(TupleGetItem(parts, 1)))
            c = bb.emit(op.add(a, b))
            y = bb.emit_output(op.negative(c))
        bb.emit_func_output(y)
    mod = PlanMemory(LegalizeOps(bb.get()))
    owners = list(storage_of(mod).values())
    s0, s1, s2 = owners[:3]
    assert len({s0, s1, s2}) == 3 and owners[3:] == [s0, s1, s2]
    x = np.random.default_rng(0).standard_normal((4, 8)).astype("float32")
    ex = np.exp(x)
    np.testing.assert_allclose(run(mod, x), ex[:, :4] - np.exp(ex[:, 4:]), rtol=1e-5)


def test_planned_storages_serve_every_shape_key():
    """One set of storages (sized for the bound) for all argument shapes of a function."""
    bb = BlockBuilder()
    n = bb.size_var("n")
    mod = PlanMemory(LegalizeOps(chain_module((n, 8), SIX, attrs={"tir_var_upper_bound": {"n": 64}})))
    vm = VirtualMachine(build(mod, passes=[]))
    results = []
    for rows in (3, 5, 64, 3):
        x = np.random.default_rng(rows).standard_normal((rows, 8)).astype("float32")
        results.append((vm["main"](x), six_ref(x)))
    for got, want in results:
        np.testing.assert_allclose(got, want, rtol=1e-5)
    pool = vm["main"].pool
    assert len(pool) == 2 and all(s.nbytes == 64 * 8 * 4 for s in pool)


def test_a_returned_view_of_a_storage_is_never_overwritten():
    """Written by hand (PlanMemory never does this): the result views a storage."""
    bb0 = BlockBuilder()
    n = bb0.size_var("n")
    leg = LegalizeOps(chain_module((n, 8), [op.exp]))
    (exp_name,) = leg.prim_funcs()
    bb = BlockBuilder(leg)
    n = bb.size_var("n")                 # each function has its own symbolic sizes
    x = Var("x", TS((n, 8), "float32"))
    with bb.function("returns_view", [x], attrs={"tir_var_upper_bound": {"n": 16}}):
        st = bb.emit(op.memory.alloc_storage([16 * 8 * 4], "float32"))
        with bb.dataflow():
            t = bb.emit(op.memory.alloc_tensor(st, 0, [n, 8], "float32"))
            y = bb.emit_output(op.memory.call_tir(leg.get_global_var(exp_name), [x], [t]))
        bb.emit_func_output(y)
    vm = VirtualMachine(build(bb.get(), passes=[]))
    xs = [np.random.default_rng(i).standard_normal((r, 8)).astype("float32")
          for i, r in enumerate((3, 5, 3, 16))]
    got = [vm["returns_view"](x) for x in xs]
    for g, x in zip(got, xs):
        np.testing.assert_allclose(g, np.exp(x), rtol=1e-6)


MATCH_CAST_BOUNDED = """
from compiler.script import I, R, T

@I.ir_module
class Module:
    @R.function
    def main(x: R.Tensor(("n", 8), "float32")):
        n = T.int64()
        m = T.int64()
        R.func_attr(ATTR)
        with R.dataflow():
            y = R.match_cast(x, R.Tensor((SHAPE, 8), "float32"))
            a = R.exp(y)
            b = R.negative(a)
            c = R.exp(b)
            R.output(c)
        return c
"""


@pytest.mark.parametrize("shape, attr, limit", [
    ("T.min(n, 16)", "{}", None),                            # bounded by the shape itself
    ("m", '{"tir_var_upper_bound": {"m": 16}}', "m"),       # a new symbol with a bound
])
def test_match_cast_bound_is_planned_statically(shape, attr, limit, roundtrip):
    from compiler import script
    from compiler.transform import LegalizeOps
    mod = script.parse(MATCH_CAST_BOUNDED.replace("SHAPE", shape).replace("ATTR", attr))
    roundtrip(mod)
    planned = PlanMemory(LegalizeOps(mod))
    sizes = [b.value.args[0].values[0].value for b in bindings(planned)
             if isinstance(b.value, G.Call) and b.value.op.name == "relax.memory.alloc_storage"]
    assert sizes == [16 * 8 * 4] * 2          # a and b: float32 (16, 8) at most, both live at b
    assert count(planned, "relax.builtin.alloc_tensor") == 1    # the result, which the caller keeps
    vm = VirtualMachine(build(planned, passes=[]))
    for rows in (1, 9, 16):
        x = np.random.default_rng(rows).standard_normal((rows, 8)).astype("float32")
        np.testing.assert_allclose(vm["main"](x), np.exp(-np.exp(x)), rtol=1e-5)
    if limit is not None:
        with pytest.raises(SignatureError, match=r"size m=17 \(bound by match_cast of 'y'\) exceeds "
                                                 r"its upper bound 16"):
            vm["main"](np.zeros((17, 8), "float32"))

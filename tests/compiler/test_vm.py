"""compiler.build + disco.VirtualMachine end to end: hand-built modules (call_tir to
hand-written tensor programs, call_dps_packed to registered functions), run on
numpy arrays and compared with numpy."""

import numpy as np
import pytest

from compiler import build
from compiler.codegen.c import CodegenError
from compiler.ir import expr as E
from compiler.ir import graph as G
from compiler.ir import struct_info as S
from compiler.ir import tir as T
from compiler import op
from compiler.ir.module import IRModule
from disco.errors import SignatureError
from disco.vm import VirtualMachine


@pytest.fixture(autouse=True)
def _caches(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("DISCO_TP_CACHE", str(base / "cc"))
    monkeypatch.setenv("DISCO_CACHE_DIR", str(base / "disco"))


@pytest.fixture
def register():
    """disco.register_func (the registry the VM resolves packed functions in)."""
    from disco import registry
    return registry.register_func


# -- hand-built tensor programs -----------------------------------------------------

def loops(extents, body_fn):
    vs = [E.Var(f"i{k}") for k in range(len(extents))]
    body = body_fn(*vs)
    for v, ext in reversed(list(zip(vs, extents))):
        body = T.For(v, E.IntImm(0), E.as_expr(ext), "serial", body)
    return body


def realize(name, iters, values, body_fn, init_fn=None):
    bvs = [E.Var(f"v{name}{k}") for k in range(len(iters))]
    ivs = tuple(T.IterVar(v, T.Range(E.IntImm(0), E.as_expr(ext)), kind)
                for v, (kind, ext) in zip(bvs, iters))
    blk = T.Block(name, ivs, body_fn(*bvs), init_fn(*bvs) if init_fn else None)
    return T.BlockRealize(tuple(values), E.IntImm(1, "bool"), blk)


def prim_mm(k=64, m=32, dtype="float32"):
    n = E.Var("n")
    X = T.Buffer("X", (n, k), dtype); W = T.Buffer("W", (k, m), dtype); Y = T.Buffer("Y", (n, m), dtype)
    body = loops([n, m, k], lambda i, j, r: realize(
        "Y", [("S", n), ("S", m), ("R", k)], [i, j, r],
        lambda vi, vj, vk: T.BufferStore(Y, Y[vi, vj] + X[vi, vk] * W[vk, vj], (vi, vj)),
        lambda vi, vj, vk: T.BufferStore(Y, E.FloatImm(0.0, dtype), (vi, vj))))
    return T.PrimFunc((X, W, Y), body)


def prim_relu(m=32, dtype="float32"):
    n = E.Var("n")
    A = T.Buffer("A", (n, m), dtype); B = T.Buffer("B", (n, m), dtype)
    body = loops([n, m], lambda i, j: realize(
        "B", [("S", n), ("S", m)], [i, j],
        lambda vi, vj: T.BufferStore(B, E.Max(A[vi, vj], E.FloatImm(0.0, dtype), dtype), (vi, vj))))
    return T.PrimFunc((A, B), body)


def prim_add_scalar():
    """B[i] = A[i] + s, with s a scalar parameter (a tir_var)."""
    n = E.Var("n"); s = E.Var("s")
    A = T.Buffer("A", (n,), "int64"); B = T.Buffer("B", (n,), "int64")
    body = loops([n], lambda i: realize(
        "B", [("S", n)], [i], lambda vi: T.BufferStore(B, A[vi] + s, (vi,))))
    return T.PrimFunc((A, B, s), body)


# -- graph helpers --------------------------------------------------------------------

def tensor(shape, dtype="float32"):
    return S.TensorStructInfo(tuple(shape), dtype)


def call_tir(name, args, out_sinfo, tir_vars=None):
    extra = (G.ShapeExpr(tuple(E.as_expr(v) for v in tir_vars)),) if tir_vars is not None else ()
    return G.Call(G.Op("relax.call_tir"), (G.GlobalVar(name), G.Tuple(tuple(args))) + extra,
                  sinfo_args=(out_sinfo,), struct_info=out_sinfo)


def call_dps(name, args, out_sinfo):
    return G.Call(G.Op("relax.call_dps_packed"), (G.ExternFunc(name), G.Tuple(tuple(args))),
                  sinfo_args=(out_sinfo,), struct_info=out_sinfo)


def function(params, bindings, ret, ret_sinfo=None):
    body = G.SeqExpr((G.DataflowBlock(tuple(bindings)),), ret)
    return G.Function(tuple(params), body, ret_sinfo or ret.struct_info)


def seed_module(k=64, m=32):
    """The seed example, with relu as a second call_tir."""
    n = E.Var("n")
    x = G.Var("x", tensor((n, k))); w = G.Var("w", tensor((k, m)))
    lv0 = G.Var("lv0", tensor((n, m))); gv0 = G.Var("gv0", tensor((n, m)))
    main = function([x, w], [G.VarBinding(lv0, call_tir("mm", [x, w], tensor((n, m)))),
                             G.VarBinding(gv0, call_tir("relu", [lv0], tensor((n, m))))], gv0)
    return IRModule.from_dict({"mm": prim_mm(k, m), "relu": prim_relu(m), "main": main})


@pytest.fixture(scope="module")
def seed_ex(tmp_path_factory):
    return build(seed_module(), passes=[])


# -- tests ------------------------------------------------------------------------------

def test_seed_matches_numpy_for_several_n_from_one_build(seed_ex):
    vm = VirtualMachine(seed_ex)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32), dtype=np.float32)
    for n in (1, 7, 128, 7, 1):
        x = rng.standard_normal((n, 64), dtype=np.float32)
        y = vm["main"](x, w)
        np.testing.assert_allclose(y, np.maximum(x @ w, 0), rtol=1e-4, atol=1e-4)


def test_results_do_not_alias_across_calls(seed_ex):
    vm = VirtualMachine(seed_ex)
    w = np.ones((64, 32), np.float32)
    y1 = vm["main"](np.ones((3, 64), np.float32), w)
    y2 = vm["main"](np.full((3, 64), 2, np.float32), w)
    y3 = vm["main"](np.full((3, 64), 3, np.float32), w)
    assert y1[0, 0] == 64 and y2[0, 0] == 128 and y3[0, 0] == 192
    assert not np.shares_memory(y2, y3)


def test_chain_with_shared_intermediate_storage():
    """mm -> relu -> mm -> relu -> mm: intermediates of equal size share storage in the
    cached plan; results must match numpy on every call."""
    n = E.Var("n")
    x = G.Var("x", tensor((n, 32))); w = G.Var("w", tensor((32, 32)))
    binds, cur = [], x
    for i, kern in enumerate(["mm", "relu", "mm", "relu", "mm"]):
        v = G.Var(f"v{i}", tensor((n, 32)))
        args = [cur, w] if kern == "mm" else [cur]
        binds.append(G.VarBinding(v, call_tir(kern, args, tensor((n, 32)))))
        cur = v
    mod = IRModule.from_dict({"mm": prim_mm(32, 32), "relu": prim_relu(32),
                              "main": function([x, w], binds, cur)})
    vm = VirtualMachine(build(mod, passes=[]))
    rng = np.random.default_rng(5)
    wv = rng.standard_normal((32, 32), dtype=np.float32) / 4
    for n_ in (3, 3, 3, 1, 3):
        xv = rng.standard_normal((n_, 32), dtype=np.float32)
        ref = np.maximum(np.maximum(xv @ wv, 0) @ wv, 0) @ wv
        np.testing.assert_allclose(vm["main"](xv, wv), ref, rtol=1e-4, atol=1e-5)
    assert len(vm["main"].plans) == 2


def test_non_contiguous_and_dlpack_inputs(seed_ex):
    vm = VirtualMachine(seed_ex)
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 64), dtype=np.float32).T          # not contiguous
    x = rng.standard_normal((5, 64), dtype=np.float32)

    class Producer:                                                 # only __dlpack__
        def __init__(self, a): self.a = a
        def __dlpack__(self, **kw): return self.a.__dlpack__(**kw)
        def __dlpack_device__(self): return self.a.__dlpack_device__()

    y = vm["main"](Producer(x), w)
    np.testing.assert_allclose(y, np.maximum(x @ w, 0), rtol=1e-4, atol=1e-4)


def test_signature_errors_name_parameter_symbols_and_shapes(seed_ex):
    vm = VirtualMachine(seed_ex)
    x = np.zeros((7, 64), np.float32)
    with pytest.raises(SignatureError, match=r"main: parameter 'w' expects shape \(64, 32\), got \(64, 33\)"):
        vm["main"](x, np.zeros((64, 33), np.float32))
    with pytest.raises(SignatureError, match=r"parameter 'x' expects dtype float32, got float64"):
        vm["main"](x.astype(np.float64), np.zeros((64, 32), np.float32))
    with pytest.raises(SignatureError, match=r"parameter 'x' expects a 2-d tensor .*got a 3-d"):
        vm["main"](np.zeros((1, 7, 64), np.float32), np.zeros((64, 32), np.float32))
    with pytest.raises(SignatureError, match=r"main expects 2 arguments \(x, w\), got 1"):
        vm["main"](x)
    with pytest.raises(SignatureError, match=r"parameter 'w' expects a tensor"):
        vm["main"](x, 3)


def test_arguments_by_name_as_in_a_python_call(seed_ex):
    vm = VirtualMachine(seed_ex)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 64), dtype=np.float32)
    w = rng.standard_normal((64, 32), dtype=np.float32)
    want = np.maximum(x @ w, 0)
    np.testing.assert_allclose(vm["main"](w=w, x=x), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(vm["main"](x, w=w), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(SignatureError, match=r"^main has no parameter 'W'; its parameters are \(x, w\)$"):
        vm["main"](x, W=w)
    with pytest.raises(SignatureError, match=r"^main: parameter 'x' given both by position \(argument 0\) "
                                             r"and by name$"):
        vm["main"](x, x=x)
    with pytest.raises(SignatureError, match=r"^main: missing argument 'w' \(parameters: x, w\)$"):
        vm["main"](x=x)


def test_symbolic_relation_between_parameters():
    n = E.Var("n")
    x = G.Var("X", tensor((n, 32))); w = G.Var("W", tensor((n, 32)))
    out = G.Var("out", tensor((n, 32)))
    main = function([x, w], [G.VarBinding(out, call_tir("relu", [w], tensor((n, 32))))], out)
    ex = build(IRModule.from_dict({"relu": prim_relu(32), "main": main}), passes=[])
    vm = VirtualMachine(ex)
    with pytest.raises(SignatureError, match=r"main: parameter 'W' expects shape \(n, 32\) with "
                                             r"n=7 \(bound by 'X'\), got \(8, 32\)"):
        vm["main"](np.zeros((7, 32), np.float32), np.zeros((8, 32), np.float32))
    w_ = -np.arange(8 * 32, dtype=np.float32).reshape(8, 32) + 100
    np.testing.assert_array_equal(vm["main"](np.zeros((8, 32), np.float32), w_), np.maximum(w_, 0))


def test_compound_dims_checked_after_binding():
    n = E.Var("n")
    z = G.Var("Z", tensor((n * 2,), "int64")); x = G.Var("X", tensor((n,), "int64"))
    main = function([z, x], [], G.Tuple((z, x), S.TupleStructInfo((z.struct_info, x.struct_info))))
    vm = VirtualMachine(build(IRModule.from_dict({"main": main}), passes=[]))
    a, b = np.arange(6), np.arange(3)
    ra, rb = vm["main"](a, b)
    assert ra is a and rb is b
    with pytest.raises(SignatureError, match=r"parameter 'Z' expects shape \(n \* 2,\) with n=4 "
                                             r"\(bound by 'X'\), got \(6,\)"):
        vm["main"](a, np.arange(4))


def test_call_dps_packed_registered_function(register):
    calls = []

    @register("test_vm.my_matmul")
    def my_matmul(x, w, out):
        calls.append(1)
        np.matmul(x, w, out=out)

    n = E.Var("n")
    x = G.Var("x", tensor((n, 16))); w = G.Var("w", tensor((16, 32)))
    lv = G.Var("lv", tensor((n, 32))); gv = G.Var("gv", tensor((n, 32)))
    main = function([x, w], [G.VarBinding(lv, call_dps("test_vm.my_matmul", [x, w], tensor((n, 32)))),
                             G.VarBinding(gv, call_tir("relu", [lv], tensor((n, 32))))], gv)
    vm = VirtualMachine(build(IRModule.from_dict({"relu": prim_relu(32), "main": main}), passes=[]))
    rng = np.random.default_rng(2)
    wv = rng.standard_normal((16, 32), dtype=np.float32)
    for n_ in (3, 3, 9):
        xv = rng.standard_normal((n_, 16), dtype=np.float32)
        np.testing.assert_allclose(vm["main"](xv, wv), np.maximum(xv @ wv, 0), rtol=1e-5, atol=1e-5)
    assert len(calls) == 3


def test_packed_call_returning_value_and_match_cast(register):
    @register("test_vm.double")
    def double(x):
        return x * 2

    n, m = E.Var("n"), E.Var("m")
    x = G.Var("x", tensor((n, 32)))
    lv = G.Var("lv", S.TensorStructInfo(None, "float32", 2))
    lv2 = G.Var("lv2", tensor((m, 32)))
    gv = G.Var("gv", tensor((m, 32)))
    call = op.call_packed("test_vm.double", x, sinfo_args=lv.struct_info)
    main = G.Function((x,), G.SeqExpr((G.BindingBlock((
        G.VarBinding(lv, call), G.MatchCast(lv2, lv, tensor((m, 32))),
        G.VarBinding(gv, call_tir("relu", [lv2], tensor((m, 32)))))),), gv), tensor((m, 32)))
    vm = VirtualMachine(build(IRModule.from_dict({"relu": prim_relu(32), "main": main}), passes=[]))
    for n_ in (2, 2, 5):
        xv = np.random.default_rng(n_).standard_normal((n_, 32)).astype(np.float32)
        np.testing.assert_allclose(vm["main"](xv), np.maximum(2 * xv, 0))
    assert not vm["main"].plans                # shapes depend on data: interpreted each call


def test_scalars_shapes_and_tuples_in_and_out():
    n, s = E.Var("n"), E.Var("s")
    a = G.Var("a", tensor((n,), "int64"))
    sv = G.Var("s", S.PrimStructInfo("int64", s))
    shp = G.Var("shp", S.ShapeStructInfo((n, 3)))
    b = G.Var("b", tensor((n,), "int64"))
    t = G.Var("t", S.TupleStructInfo((tensor((n,), "int64"), S.PrimStructInfo("int64"))))
    ret = G.Tuple((b, G.PrimValue(s * 2), G.ShapeExpr((n, E.IntImm(3))), G.TupleGetItem(t, 1)))
    main = function([a, sv, shp, t],
                    [G.VarBinding(b, call_tir("add_s", [G.TupleGetItem(t, 0)], tensor((n,), "int64"),
                                              tir_vars=[s]))],
                    ret, S.ObjectStructInfo())
    vm = VirtualMachine(build(IRModule.from_dict({"add_s": prim_add_scalar(), "main": main}),
                              passes=[]))
    for k in (5, 5, 6):
        out = vm["main"](np.arange(4), np.int64(k), (4, 3), (np.arange(4) * 10, 9))
        np.testing.assert_array_equal(out[0], np.arange(4) * 10 + k)
        assert out[1:] == (2 * k, (4, 3), 9)
    assert len(vm["main"].plans) == 2          # one execution plan per (shapes, s) key
    with pytest.raises(SignatureError, match=r"parameter 'shp' expects shape \(n, 3\) with n=4"):
        vm["main"](np.arange(4), 1, (5, 3), (np.arange(4), 1))


def test_tuple_argument_with_wrong_field_count_names_the_count():
    """A tuple argument of the wrong arity is described by its field count, not its contents."""
    n = E.Var("n")
    t = G.Var("t", S.TupleStructInfo((tensor((n, 4)), tensor((n, 4)))))
    y = G.Var("y", tensor((n, 4)))
    main = function([t], [G.VarBinding(y, call_tir("relu", [G.TupleGetItem(t, 0)], tensor((n, 4))))], y)
    vm = VirtualMachine(build(IRModule.from_dict({"relu": prim_relu(4), "main": main}), passes=[]))
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(vm["main"]((x, x)), x)
    with pytest.raises(SignatureError, match=r"parameter 't' expects a tuple of 2 fields .*got a tuple of 1 field$") as info:
        vm["main"]((x,))
    assert "array(" not in str(info.value) and "1." not in str(info.value)
    with pytest.raises(SignatureError, match=r"got a list of 3 fields$"):
        vm["main"]([x, x, x])


def test_call_other_graph_function():
    n = E.Var("n")
    a = G.Var("a", tensor((n, 32))); r = G.Var("r", tensor((n, 32)))
    inner = function([a], [G.VarBinding(r, call_tir("relu", [a], tensor((n, 32))))], r)
    m = E.Var("m")
    x = G.Var("x", tensor((m, 32)))
    y = G.Var("y", tensor((m, 32))); z = G.Var("z", tensor((m, 32)))
    call = lambda v: G.Call(G.GlobalVar("inner"), (v,), struct_info=tensor((m, 32)))
    main = function([x], [G.VarBinding(y, call(x)), G.VarBinding(z, call(y))],
                    G.Tuple((y, z), S.TupleStructInfo((tensor((m, 32)), tensor((m, 32))))))
    ex = build(IRModule.from_dict({"relu": prim_relu(32), "inner": inner, "main": main}), passes=[])
    vm = VirtualMachine(ex)
    xv = np.random.default_rng(3).standard_normal((4, 32)).astype(np.float32)
    for _ in range(2):
        y1, z1 = vm["main"](xv)
        np.testing.assert_array_equal(y1, np.maximum(xv, 0))
        np.testing.assert_array_equal(z1, np.maximum(xv, 0))
        assert not np.shares_memory(y1, z1)


def test_constants_and_bfloat16():
    import ml_dtypes
    c = np.arange(8, dtype=np.float32).reshape(1, 8).astype(ml_dtypes.bfloat16)
    out = G.Var("out", tensor((1, 8), "bfloat16"))
    main = function([], [G.VarBinding(out, call_tir("relu", [G.Constant(c, tensor((1, 8), "bfloat16"))],
                                                    tensor((1, 8), "bfloat16")))], out)
    vm = VirtualMachine(build(IRModule.from_dict({"relu": prim_relu(8, "bfloat16"), "main": main}),
                              passes=[]))
    np.testing.assert_array_equal(vm["main"]().astype(np.float32), c.astype(np.float32))


def test_unlegalized_operator_is_a_clear_build_error():
    x = G.Var("x", tensor((4,)))
    y = G.Var("y", tensor((4,)))
    main = function([x], [G.VarBinding(y, G.Call(G.Op("relax.nn.relu"), (x,), struct_info=tensor((4,))))], y)
    with pytest.raises(CodegenError, match=r"operator R.nn.relu has no legalization yet"):
        build(IRModule.from_dict({"main": main}), passes=[])


def test_exact_seed_with_legalization():
    from compiler.op import get_op
    relu = get_op("relax.nn.relu")
    n = E.Var("n")
    x = G.Var("x", tensor((n, 64))); w = G.Var("w", tensor((64, 32)))
    lv0 = G.Var("lv0", tensor((n, 32))); gv0 = G.Var("gv0", tensor((n, 32)))
    main = function([x, w], [G.VarBinding(lv0, call_tir("mm", [x, w], tensor((n, 32)))),
                             G.VarBinding(gv0, relu(lv0))], gv0)
    ex = build(IRModule.from_dict({"mm": prim_mm(), "main": main}))
    vm = VirtualMachine(ex)
    rng = np.random.default_rng(4)
    wv = rng.standard_normal((64, 32), dtype=np.float32)
    for n_ in (1, 7, 128):
        xv = rng.standard_normal((n_, 64), dtype=np.float32)
        np.testing.assert_allclose(vm["main"](xv, wv), np.maximum(xv @ wv, 0), rtol=1e-4, atol=1e-4)


def test_packed_result_checked_on_every_planned_call(register):
    state = {"rows": None, "k": 0}

    @register("test_vm.maybe_grow")
    def maybe_grow(x):
        state["k"] += 1                 # a fresh array with new values on every call
        return np.concatenate([x, x]) if state["rows"] else x * state["k"]

    n = E.Var("n")
    x = G.Var("x", tensor((n, 32)))
    lv = G.Var("lv", S.TensorStructInfo(None, "float32", 2))
    lv2 = G.Var("lv2", tensor((n, 32)))
    gv = G.Var("gv", tensor((n, 32)))
    call = op.call_packed("test_vm.maybe_grow", x, sinfo_args=lv.struct_info)
    main = G.Function((x,), G.SeqExpr((G.BindingBlock((
        G.VarBinding(lv, call), G.MatchCast(lv2, lv, tensor((n, 32))),
        G.VarBinding(gv, call_tir("relu", [lv2], tensor((n, 32)))))),), gv), tensor((n, 32)))
    vm = VirtualMachine(build(IRModule.from_dict({"relu": prim_relu(32), "main": main}), passes=[]))
    xv = np.ones((2, 32), np.float32)
    for k in range(1, 5):
        np.testing.assert_array_equal(vm["main"](xv), k * xv)
    assert len(vm["main"].plans) == 1
    state["rows"] = True
    with pytest.raises(SignatureError, match=r"match_cast of 'lv2' expects shape \(n, 32\) with "
                                             r"n=2 \(bound by 'x'\), got \(4, 32\)"):
        vm["main"](xv)


def test_a_runtime_object_argument_does_not_stop_plan_caching():
    """An R.Object parameter (the KV cache of a model) is passed as it is and is not part
    of the plan key: the second call with the same shapes replays the plan."""
    from compiler import build, op
    from compiler.ir import BlockBuilder
    from compiler.ir.struct_info import ObjectStructInfo
    from disco.vm import VirtualMachine
    bb = BlockBuilder()
    n = bb.size_var("n")
    x = G.Var("x", tensor((n, 4)))
    o = G.Var("o", ObjectStructInfo())
    with bb.function("f", [x, o]):
        with bb.dataflow():
            y = bb.emit_output(op.add(x, x))
        bb.emit_func_output(y)
    f = VirtualMachine(build(bb.get()))["f"]
    for obj in (object(), object()):
        np.testing.assert_array_equal(f(np.ones((3, 4), np.float32), obj), np.full((3, 4), 2, np.float32))
    assert len(f.plans) == 1


def test_a_result_shape_that_follows_an_object_makes_the_key_interpreted(register):
    """A packed function whose result shape follows a runtime object's state (not the
    arguments' shapes): the call whose shape changed is redone by interpretation, and that
    key stays interpreted; every result is right."""
    from compiler import build, script
    from disco.vm import VirtualMachine

    class Counter:
        n = 3

    register("test.vm.arange_of")(lambda c: np.arange(c.n, dtype=np.int64))
    src = '''
@I.ir_module
class Module:
    @R.function
    def f(c: R.Object):
        with R.dataflow():
            p = R.call_pure_packed("test.vm.arange_of", c, sinfo_args=R.Tensor(ndim=1, dtype="int64"))
            R.output(p)
        return p
'''
    f = VirtualMachine(build(script.parse(src)))["f"]
    c = Counter()
    for n in (3, 3, 5, 2, 2):
        c.n = n
        np.testing.assert_array_equal(f(c), np.arange(n))
    assert not f.plans and len(f.varying) == 1


def _collective_like(register, name, fresh, seen, specialized=None):
    """Registers `name`: a packed function that, like spmd.allreduce, reads its argument
    0 in place (`in_place_inputs`) and returns 3 x; records each input's data pointer."""
    def f(x):
        seen.append(x.ctypes.data)
        return 3 * x
    f.in_place_inputs = (0,)
    if fresh:
        f.result_is_fresh = True
    if specialized is not None:
        def specialize(args, varies):
            specialized.append((args[0].shape, list(varies)))
            def fast(x):
                specialized.append("fast")
                return f(x)
            return fast
        f.specialize = specialize
    register(name)(f)


def _relu_then(name, rows):
    x = G.Var("x", tensor((rows, 32)))
    lv = G.Var("lv", tensor((rows, 32)))
    gv = G.Var("gv", tensor((rows, 32)))
    main = function([x], [G.VarBinding(lv, call_tir("relu", [x], tensor((rows, 32)))),
                          G.VarBinding(gv, op.call_packed(name, lv, sinfo_args=tensor((rows, 32))))], gv)
    return VirtualMachine(build(IRModule.from_dict({"relu": prim_relu(32), "main": main}), passes=[]))


@pytest.mark.parametrize("fresh", [True, False])
@pytest.mark.parametrize("rows", [4, 200])          # 512 bytes; 25600, over SHARED_MIN_BYTES
def test_collective_input_planned_once_when_small_and_not_escaping(register, fresh, rows):
    """A small collective input whose function declares `result_is_fresh` is an ordinary
    planned intermediate: the same buffer on every planned call. Otherwise (it may be the
    result, or it is large and comes from the arena) it is allocated on every call."""
    from disco.vm.recorder import SHARED_MIN_BYTES
    assert (rows * 32 * 4 > SHARED_MIN_BYTES) == (rows == 200)
    seen = []
    name = f"test_vm.collective_like_{fresh}_{rows}"
    _collective_like(register, name, fresh, seen)
    vm = _relu_then(name, rows)
    rng = np.random.default_rng(rows)
    for _ in range(4):
        xv = rng.standard_normal((rows, 32)).astype(np.float32)
        np.testing.assert_array_equal(vm["main"](xv), 3 * np.maximum(xv, 0))
    planned = seen[1:]                  # the first call records
    once = fresh and rows == 4
    assert (len(set(planned)) == 1) == once, (fresh, rows, seen)


def test_packed_function_specialized_by_the_plan(register):
    """`specialize(args, varies)` is asked once, when the plan is made, with the recorded
    arguments; the plan then calls what it returned, the recording call the function."""
    seen, specialized = [], []
    _collective_like(register, "test_vm.specialized", True, seen, specialized)
    vm = _relu_then("test_vm.specialized", 4)
    xv = np.arange(-64, 64, dtype=np.float32).reshape(4, 32)
    for k in range(3):
        np.testing.assert_array_equal(vm["main"](xv), 3 * np.maximum(xv, 0))
    assert specialized == [((4, 32), [False]), "fast", "fast"]
    assert len(seen) == 3


# -- bound trailing arguments (VMFunctionHandle.bind / call_bound) ---------------------

def _mlp_vm():
    """f(x, w1, s, w2) = relu(x @ w1) @ w2 * s: every dim symbolic, s a runtime object
    (passed as it is), so bound arguments of new shapes need new plans."""
    from compiler import build, op
    from compiler.ir import BlockBuilder
    from compiler.ir.struct_info import ObjectStructInfo
    bb = BlockBuilder()
    n, k, h, m = (bb.size_var(c) for c in "nkhm")
    x = G.Var("x", tensor((n, k)))
    w1 = G.Var("w1", tensor((k, h)))
    s = G.Var("s", ObjectStructInfo())
    w2 = G.Var("w2", tensor((h, m)))
    with bb.function("f", [x, w1, s, w2]):
        with bb.dataflow():
            y = bb.emit_output(op.matmul(op.nn.relu(op.matmul(x, w1)), w2))
        bb.emit_func_output(y)
    return VirtualMachine(build(bb.get()))["f"]


def _mlp_ref(x, w1, w2):
    return np.maximum(x @ w1, 0) @ w2


def test_bound_arguments_replay_plans_and_follow_new_shapes_and_values():
    """call_bound(head, bind(1, tail)) computes what the plain call does, against numpy,
    whatever changes between calls: the head's shapes, the bound arrays' values (read
    at each call, like a plain call's), the bound set (same shapes: the same plan,
    rebound; new shapes: a new plan), plain calls in between."""
    f = _mlp_vm()
    rng = np.random.default_rng(11)
    r = lambda *s: rng.standard_normal(s, dtype=np.float32)    # noqa: E731
    w1, w2 = r(8, 16), r(16, 4)
    v1, v2 = r(8, 16), r(16, 4)                                  # same shapes, other values
    u1, u2 = r(6, 5), r(5, 3)                                    # other shapes
    ba, bb_, bc = f.bind(1, (w1, None, w2)), f.bind(1, (v1, None, v2)), f.bind(1, (u1, None, u2))
    assert ba.key is not None and ba.key == bb_.key != bc.key   # the key part depends on shapes only
    for n, b, (a1, a2) in [(3, ba, (w1, w2)), (3, ba, (w1, w2)), (5, ba, (w1, w2)),
                           (3, bb_, (v1, v2)), (3, ba, (w1, w2)), (2, bc, (u1, u2)),
                           (3, ba, (w1, w2)), (3, None, (w1, w2)), (3, ba, (w1, w2)),
                           (3, None, (v1, v2)), (3, bb_, (v1, v2))]:
        x = r(n, a1.shape[0])
        y = f.call_bound((x,), b) if b is not None else f(x, a1, None, a2)
        np.testing.assert_allclose(y, _mlp_ref(x, a1, a2), rtol=1e-4, atol=1e-4)
    w1[:] = r(8, 16)                        # in place: the next call reads the new values
    x = r(3, 8)
    np.testing.assert_allclose(f.call_bound((x,), ba), _mlp_ref(x, w1, w2), rtol=1e-4, atol=1e-4)
    # plans: bound (n 3, shapes of w), (n 5, shapes of w), (n 2, shapes of u), and the
    # plain calls' one; nothing interpreted for good
    assert len(f.plans) == 4 and not f.varying


def test_bound_tensors_are_private_views_whose_key_cannot_go_stale():
    """The bound part of the key is read once; a caller reshaping its array in place
    afterwards does not reach the bound view (same memory, its own shape), so the plan
    replayed for it stays right."""
    f = _mlp_vm()
    rng = np.random.default_rng(12)
    w1 = rng.standard_normal((8, 16), dtype=np.float32)
    w2 = rng.standard_normal((16, 4), dtype=np.float32)
    b = f.bind(1, (w1, None, w2))
    assert b.args[0] is not w1 and np.shares_memory(b.args[0], w1)
    ref1, ref2 = w1.copy(), w2.copy()
    x = rng.standard_normal((3, 8), dtype=np.float32)
    np.testing.assert_allclose(f.call_bound((x,), b), _mlp_ref(x, ref1, ref2), rtol=1e-4, atol=1e-4)
    w1.shape = (16, 8)                      # the caller's object only
    w2.shape = (4, 16)
    np.testing.assert_allclose(f.call_bound((x,), b), _mlp_ref(x, ref1, ref2), rtol=1e-4, atol=1e-4)


def test_bound_arguments_that_cannot_be_keyed_once_are_keyed_per_call():
    """A non-contiguous or non-numpy bound tensor (converted on each call, as a plain
    call does) leaves the binding without a key part: calls compute the whole key;
    results as numpy's. Binding the wrong number of arguments is a SignatureError. (The
    torch tensor where torch is installed: the test dependencies do not include it.)"""
    f = _mlp_vm()
    rng = np.random.default_rng(13)
    w1 = np.asfortranarray(rng.standard_normal((8, 16), dtype=np.float32))
    w2 = rng.standard_normal((16, 4), dtype=np.float32)
    bindings = [f.bind(1, (w1, None, w2))]
    try:
        import torch
        bindings.append(f.bind(1, (torch.from_numpy(w2.T.copy()).T, None, w2.T.copy())))
    except ImportError:
        pass
    for b in bindings:
        assert b.key is None
        a1 = np.asarray(b.args[0])
        x = rng.standard_normal((3, a1.shape[0]), dtype=np.float32)
        np.testing.assert_allclose(f.call_bound((x,), b), _mlp_ref(x, a1, np.asarray(b.args[2])),
                                   rtol=1e-4, atol=1e-4)
    with pytest.raises(SignatureError, match="cannot bind 2 from position 1"):
        f.bind(1, (w1, None))


def test_planned_kernel_steps_are_native_kernel_calls(seed_ex):
    """A plan calls CPU kernels through disco._native.KernelCall (the kernel's address
    and its argument/dims arrays); results as numpy's on every planned call. KernelCall
    takes no arguments and refuses null addresses."""
    import ctypes
    from disco._native import KernelCall
    vm = VirtualMachine(seed_ex)
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 32), dtype=np.float32)
    for _ in range(3):
        x = rng.standard_normal((5, 64), dtype=np.float32)
        np.testing.assert_allclose(vm["main"](x, w), np.maximum(x @ w, 0), rtol=1e-4, atol=1e-4)
    (plan,) = vm["main"].plans.values()
    kernels = [s for s in plan.steps if isinstance(s, KernelCall)]
    assert len(kernels) == 2 and {id(k.func) for k in kernels} == {id(k.fn) for k in vm._kernels}
    with pytest.raises(TypeError, match="no arguments"):
        kernels[0](1)
    fn = ctypes.cast(vm._kernels[0].fn, ctypes.c_void_p).value
    with pytest.raises(ValueError, match="null address"):
        KernelCall(fn, 0, 0, None)

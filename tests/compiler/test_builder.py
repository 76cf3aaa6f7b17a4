"""BlockBuilder: struct info of emitted vars, names, blocks, A-normal form, calls of
functions and tensor programs, errors. Expected struct infos are written out by
hand (not computed by the code under test)."""
import numpy as np
import pytest

from compiler.ir import (BindingBlock, BlockBuilder, Call, CompilerError, Constant, DataflowBlock,
                         DataflowVar, ExternFunc, FuncStructInfo, Function, GlobalVar, MatchCast, Op,
                         PrimFunc, ShapeExpr, ShapeStructInfo, StructInfoError, TensorStructInfo,
                         Tuple, TupleGetItem, TupleStructInfo, Var, VarBinding, arith,
                         assert_structural_equal, derive_call_ret_struct_info, struct_info_free_vars)
from compiler.ir import expr as E
from compiler.ir import tir as T

from compiler import op  # noqa: E402


def tsi(*shape, dtype="float32"):
    return TensorStructInfo(tuple(shape), dtype)


def opaque(name, *args, sinfo):
    """A call whose struct info is given (an operator the test does not rely on)."""
    return Call(Op(name), tuple(args), struct_info=sinfo)


def bindings(func):
    return [b for blk in func.body.blocks for b in blk.bindings]


def test_readme_example(roundtrip):
    bb = BlockBuilder()
    n = bb.size_var("n")
    x = Var("x", tsi(n, 4))
    with bb.function("main", [x], attrs={"global_symbol": "main"}):
        with bb.dataflow():
            lv0 = bb.emit(op.add(x, x))
            gv = bb.emit_output(op.nn.relu(lv0))
        bb.emit_func_output(gv)
    mod = bb.get()
    f = mod["main"]
    assert type(lv0) is DataflowVar and lv0.name_hint == "lv0"
    assert type(gv) is Var and gv.name_hint == "gv0"
    assert_structural_equal(lv0.struct_info, tsi(n, 4))
    assert_structural_equal(gv.struct_info, tsi(n, 4))
    assert_structural_equal(f.ret_struct_info, tsi(n, 4))
    assert f.struct_info == FuncStructInfo((tsi(n, 4),), tsi(n, 4))
    assert f.params == (x,) and f.attrs["global_symbol"] == "main"
    assert len(f.body.blocks) == 1 and isinstance(f.body.blocks[0], DataflowBlock)
    assert [b.var for b in bindings(f)] == [lv0, gv]
    assert f.body.body is gv
    roundtrip(mod)


def test_nested_calls_are_bound_first():
    bb = BlockBuilder()
    x = Var("x", tsi(2, 3))
    with bb.function("main", [x]):
        with bb.dataflow():
            lv = bb.emit(op.add(op.multiply(x, x), x))
            gv = bb.emit_output(lv)
        bb.emit_func_output(gv)
    bs = bindings(bb.get()["main"])
    assert [b.var.name_hint for b in bs] == ["lv0", "lv1", "gv0"]
    assert bs[0].value.op == Op("relax.multiply")
    assert bs[1].value.args == (bs[0].var, x)
    assert lv is bs[1].var


def test_emit_outside_dataflow_gives_plain_vars_and_blocks(roundtrip):
    bb = BlockBuilder()
    x = Var("x", tsi(4))
    with bb.function("f", [x]):
        a = bb.emit(op.add(x, x))
        with bb.dataflow():
            b = bb.emit(op.multiply(a, a))
            c = bb.emit_output(b)
        d = bb.emit(op.add(c, x))
        bb.emit_func_output(d)
    f = bb.get()["f"]
    assert [type(blk) for blk in f.body.blocks] == [BindingBlock, DataflowBlock, BindingBlock]
    assert (type(a), a.name_hint, type(b), b.name_hint) == (Var, "gv0", DataflowVar, "lv0")
    assert (c.name_hint, d.name_hint) == ("gv1", "gv2")
    roundtrip(bb.get())


def test_name_hints_and_params_given_at_output():
    bb = BlockBuilder()
    x = Var("x", tsi(4))
    with bb.function("f"):
        y = bb.emit(op.add(x, x), name_hint="y")
        bb.emit_func_output(y, params=[x])
    f = bb.get()["f"]
    assert y.name_hint == "y" and f.params == (x,)


def test_tuple_output_and_tuple_get_item(roundtrip):
    bb = BlockBuilder()
    x = Var("x", tsi(4))
    y = Var("y", tsi(2, dtype="int32"))
    with bb.function("f", [x, y]):
        t = bb.emit(Tuple((x, y)))
        first = bb.emit(TupleGetItem(t, 1))
        bb.emit_func_output([first, x])
    f = bb.get()["f"]
    assert t.struct_info == TupleStructInfo((tsi(4), tsi(2, dtype="int32")))
    assert first.struct_info == tsi(2, dtype="int32")
    assert f.ret_struct_info == TupleStructInfo((tsi(2, dtype="int32"), tsi(4)))
    roundtrip(bb.get())


def test_match_cast_defines_size_and_later_shapes_use_it(roundtrip):
    bb = BlockBuilder()
    x = Var("x", TensorStructInfo(None, "float32", 2))
    k = bb.size_var("k")
    with bb.function("f", [x]):
        with bb.dataflow():
            y = bb.emit_match_cast(x, tsi(k, 8))
            z = bb.emit(op.add(y, y))
            out = bb.emit_output(z)
        bb.emit_func_output(out)
    f = bb.get()["f"]
    mc = bindings(f)[0]
    assert isinstance(mc, MatchCast) and mc.var is y and mc.value is x
    assert y.struct_info == tsi(k, 8) and type(y) is DataflowVar
    assert_structural_equal(f.ret_struct_info, tsi(k, 8))
    roundtrip(bb.get())


def tir_copy():
    n = E.Var("n")
    A, B = T.Buffer("A", (n, 4)), T.Buffer("B", (n, 4))
    i, j = E.Var("i"), E.Var("j")
    body = T.For(i, E.IntImm(0), n, "serial",
                 T.For(j, E.IntImm(0), E.IntImm(4), "serial", T.BufferStore(B, A[i, j], (i, j))))
    return PrimFunc((A, B), body)


def test_call_tir_and_add_func(roundtrip):
    bb = BlockBuilder()
    gv_copy = bb.add_func(tir_copy(), "copy")
    assert gv_copy == GlobalVar("copy")
    assert bb.add_func(tir_copy(), "copy") == gv_copy          # structurally equal: reused
    other = tir_copy()
    other = PrimFunc(other.params[::-1], other.body)           # B -> A: a different program
    assert bb.add_func(other, "copy") == GlobalVar("copy_1")
    n = bb.size_var("n")
    x = Var("x", tsi(n, 4))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(op.call_tir(gv_copy, (x,), out_sinfo=tsi(n, 4)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    assert mod.names() == ["copy", "copy_1", "main"]
    assert_structural_equal(y.struct_info, tsi(n, 4))
    roundtrip(mod)


def test_call_graph_function_substitutes_sizes(roundtrip):
    bb = BlockBuilder()
    n = bb.size_var("n")
    x = Var("x", tsi(n, 4))
    with bb.function("double_rows", [x]):
        y = bb.emit(opaque("relax.custom_concat", x, x, sinfo=tsi(n * 2, 4)))
        bb.emit_func_output(y)
    m = bb.size_var("m")
    a = Var("a", tsi(m * 3, 4))
    with bb.function("main", [a]):
        r = bb.emit(Call(GlobalVar("double_rows"), (a,)))
        bb.emit_func_output(r)
    shape = r.struct_info.shape
    assert arith.prove_equal(shape[0], m * 6) and arith.prove_equal(shape[1], 4)
    assert shape[0] == arith.simplify(m * 6)                   # simplified, not (m*3)*2


def test_derive_call_ret_struct_info():
    n, m = E.Var("n"), E.Var("m")
    fs = FuncStructInfo((tsi(n, 4), ShapeStructInfo((m,))), tsi(n, m * 2))
    k = E.Var("k")
    ret = derive_call_ret_struct_info(fs, [tsi(k + 1, 4), ShapeStructInfo((E.IntImm(5),))])
    assert arith.prove_equal(ret.shape[0], k + 1) and ret.shape[1] == E.IntImm(10)
    # n appears only inside n * 2 in the params: the result's shape is unknown.
    fs2 = FuncStructInfo((tsi(n * 2),), tsi(n))
    assert derive_call_ret_struct_info(fs2, [tsi(8)]) == TensorStructInfo(None, "float32", 1)
    with pytest.raises(StructInfoError, match="expected 2 arguments, given 1"):
        derive_call_ret_struct_info(fs, [tsi(1, 4)])
    assert struct_info_free_vars(TupleStructInfo((tsi(n, m), tsi(m, n * 2)))) == [n, m]


def test_extern_call_and_normalize_leaves():
    bb = BlockBuilder()
    c = bb.normalize(Constant(np.zeros((2, 3), "float16")))
    assert c.struct_info == tsi(2, 3, dtype="float16")
    s = bb.normalize(ShapeExpr((E.IntImm(2), E.Var("n") * 2)))
    assert isinstance(s.struct_info, ShapeStructInfo) and s.struct_info.ndim == 2
    x = Var("x", tsi(4))
    call = bb.normalize(Call(ExternFunc("my_func"), (x,), sinfo_args=(tsi(8),)))
    assert call.struct_info == tsi(8)
    t = bb.normalize(Tuple((x, c)))
    assert t.struct_info == TupleStructInfo((tsi(4), tsi(2, 3, dtype="float16")))


def test_errors_are_typed_and_say_what_to_do():
    bb = BlockBuilder()
    x = Var("x", tsi(4))
    with pytest.raises(CompilerError, match="no function is being built"):
        bb.emit(op.add(x, x))
    with pytest.raises(CompilerError, match="without bb.emit_func_output"):
        with bb.function("f", [x]):
            bb.emit(op.add(x, x))
    with pytest.raises(CompilerError, match="only valid inside"):
        with bb.function("g", [x]):
            bb.emit_output(op.add(x, x))
    with pytest.raises(CompilerError, match="inside a dataflow block"):
        with bb.function("h", [x]):
            with bb.dataflow():
                bb.emit_func_output(x)
    with pytest.raises(CompilerError, match="dataflow variable 'lv0' outside"):
        with bb.function("k", [x]):
            with bb.dataflow():
                lv = bb.emit(op.add(x, x))
            bb.emit_func_output(lv)
    with pytest.raises(StructInfoError, match="parameter 'p' has no struct info"):
        with bb.function("p", [Var("p")]):
            pass
    with pytest.raises(StructInfoError, match="no such function"):
        with bb.function("q", [x]):
            bb.emit(Call(GlobalVar("missing"), (x,)))
    assert bb.get().names() == []


def test_operator_arguments_that_do_not_fit_name_the_operator():
    """Python's own message would name a closure (`define_reduce.<locals>.constructor()`);
    the operator's error names it and lists the parameters it accepts."""
    x = Var("x", tsi(4))
    params = r"accepted parameters: x, axis=None, keepdims=False"
    cases = [(lambda: op.sum(x, axes=[0]), r"unexpected keyword argument 'axes' \(did you mean axis\?\)"),
             (lambda: op.sum(x, [0], False, 1), r"too many positional arguments"),
             (lambda: op.sum(x, [0], axis=[0]), r"multiple values for argument 'axis'")]
    for build, problem in cases:
        with pytest.raises(StructInfoError, match=r"^R\.sum \(relax\.sum\): " + problem + "; " + params):
            build()
    with pytest.raises(StructInfoError, match=r"R\.call_tir \(relax\.call_tir\): missing a required "
                                              r"argument: 'out_sinfo'; accepted parameters: gvar, "
                                              r"args, out_sinfo, tir_vars=None"):
        op.call_tir(GlobalVar("f"), (x,))
    with pytest.raises(StructInfoError, match=r"R\.add .*missing .*'x2'; accepted parameters: x1, x2"):
        op.add(x)
    # A fitting call still reports the rule's own error, not an argument mismatch.
    with pytest.raises(CompilerError, match=r"R\.sum: axis 3 is out of range"):
        op.sum(x, axis=3)


# Every dtype the project uses (numpy's names, plus bfloat16), written out by hand.
KNOWN_DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "float16", "bfloat16", "float32", "float64"]


def test_struct_info_and_buffers_reject_unknown_dtypes():
    from compiler.ir import DTypeError, PrimStructInfo
    from compiler.script import R as script_R, T as script_T
    for dtype in KNOWN_DTYPES:
        assert TensorStructInfo((4,), dtype).dtype == dtype
        assert PrimStructInfo(dtype).dtype == dtype
        assert T.Buffer("A", (4,), dtype).dtype == dtype
    bad = [(lambda: TensorStructInfo((4,), "flot32"), r"R\.Tensor .*'flot32' \(did you mean float32\?\)"),
           (lambda: script_R.Tensor((4,), "flot32"), r"R\.Tensor .*'flot32'"),
           (lambda: script_R.Tensor(dtype="float8", ndim=2), r"R\.Tensor .*'float8'"),
           (lambda: PrimStructInfo("int33"), r"R\.Prim .*'int33'"),
           (lambda: T.Buffer("A", (4,), "flaot16"), r"T\.Buffer 'A': unknown dtype 'flaot16'"),
           (lambda: script_T.Buffer((4,), "int"), r"T\.Buffer .*'int'"),
           (lambda: TensorStructInfo((4,), None), r"unknown dtype None")]
    for build, message in bad:
        with pytest.raises(DTypeError, match=message + r".*expected one of .*float32"):
            build()


def test_buffer_access_needs_one_index_per_dim():
    from compiler.ir import ShapeError
    n = E.Var("n")
    A = T.Buffer("A", (n, 4))
    i, j = E.Var("i"), E.Var("j")
    assert A[i, j].indices == (i, j)
    assert T.BufferStore(A, E.FloatImm(0.0), (i, j)).indices == (i, j)
    scalar = T.Buffer("s", ())
    assert T.BufferLoad(scalar, ()).indices == ()
    with pytest.raises(ShapeError, match=r"BufferLoad of buffer 'A' with shape \(n, 4\) \(rank 2\): "
                                         r"3 indices given \[i, j, 0\]; expected 2"):
        A[i, j, 0]
    with pytest.raises(ShapeError, match=r"BufferLoad of buffer 'A' .*1 indices given \[\(i \+ 1\)\]"):
        T.BufferLoad(A, (i + 1,))
    with pytest.raises(ShapeError, match=r"BufferStore of buffer 'A' .*\(rank 2\): 1 indices given \[i\]; "
                                         r"expected 2"):
        T.BufferStore(A, E.FloatImm(0.0), (i,))
    with pytest.raises(ShapeError, match=r"BufferLoad of buffer 's' with shape \(\) \(rank 0\): 1 indices"):
        scalar[0]


def test_builder_continues_an_existing_module(roundtrip):
    bb = BlockBuilder()
    bb.add_func(tir_copy(), "copy")
    mod = bb.get()
    bb2 = BlockBuilder(mod)
    x = Var("x", tsi(3))
    with bb2.function("main", [x]):
        bb2.emit_func_output(x)
    mod2 = bb2.get()
    assert mod2.names() == ["copy", "main"]
    assert isinstance(mod2["main"], Function)
    roundtrip(mod2)


def test_builder_output_equals_hand_written_function():
    bb = BlockBuilder()
    n = bb.size_var("n")
    x = Var("x", tsi(n, 4))
    with bb.function("main", [x]):
        with bb.dataflow():
            lv = bb.emit(opaque("relax.my_op", x, sinfo=tsi(n, 4)))
            gv = bb.emit_output(opaque("relax.my_op", lv, sinfo=tsi(n, 4)))
        bb.emit_func_output(gv)
    built = bb.get()["main"]
    # The same function written out by hand, with its own variables.
    m = E.Var("m")
    p = Var("p", tsi(m, 4))
    a, b = DataflowVar("a", tsi(m, 4)), Var("b", tsi(m, 4))
    block = DataflowBlock((VarBinding(a, opaque("relax.my_op", p, sinfo=tsi(m, 4))),
                           VarBinding(b, opaque("relax.my_op", a, sinfo=tsi(m, 4)))))
    from compiler.ir import SeqExpr
    expected = Function((p,), SeqExpr((block,), b, tsi(m, 4)), tsi(m, 4))
    assert_structural_equal(built, expected)

"""compiler.script parse errors: each names the line and column in the user's text and
says what was expected."""
import inspect
import textwrap

import pytest

from compiler.ir import ParseError
from compiler.script import I, R, T, parse


def error_of(text):
    with pytest.raises(ParseError) as info:
        parse(text)
    return info.value


def where(text, needle):
    """1-based (line, column) of the first `needle` in `text`."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i, line.index(needle) + 1
    raise AssertionError(needle)


MODULE = '''
@I.ir_module
class Module:
    @R.function
    def main(x: R.Tensor(("n", 4), "float32")):
        with R.dataflow():
            lv0 = R.add(x, x)
            gv = {expr}
            R.output(gv)
        return gv
'''


def test_unknown_operator_suggests_the_closest():
    text = MODULE.format(expr="R.nn.reluu(lv0)")
    e = error_of(text)
    assert (e.lineno, e.col) == where(text, "R.nn.reluu")
    assert "unknown operator R.nn.reluu; did you mean R.nn.relu?" in str(e)
    assert str(e).startswith(f"line {e.lineno}, column {e.col}: ")
    assert "gv = R.nn.reluu(lv0)" in str(e)   # the source line, with a caret under it


def test_undefined_variable():
    text = MODULE.format(expr="R.add(lv0, lv9)")
    e = error_of(text)
    assert (e.lineno, e.col) == where(text, "lv9")
    assert "use of undefined variable 'lv9'" in str(e)


def test_missing_parameter_annotation():
    text = '''
@R.function
def main(x: R.Tensor((4,), "float32"), w):
    return x
'''
    e = error_of(text)
    assert (e.lineno, e.col) == where(text, "w)")
    assert "expected R.Tensor(...) annotation for parameter 'w'" in str(e)


def test_operator_shape_error_is_reraised_at_the_call():
    text = MODULE.format(expr="R.matmul(lv0, R.const([1.0, 2.0, 3.0], \"float32\"))")
    e = error_of(text)
    assert (e.lineno, e.col) == where(text, "R.matmul")
    assert "R.matmul" in str(e) and "4" in str(e) and "3" in str(e)


def test_dtype_error_names_the_operator():
    text = MODULE.format(expr="R.add(lv0, R.const(1, \"int32\"))")
    e = error_of(text)
    assert e.lineno == where(text, "R.add(lv0, R.const")[0]
    assert "R.add" in str(e) and "int32" in str(e)


def test_arguments_that_do_not_fit_an_operator():
    for expr, message in [
            ("R.sum(lv0, axes=[0])", "R.sum (relax.sum): unexpected keyword argument 'axes' "
                                     "(did you mean axis?); accepted parameters: x, axis=None, "
                                     "keepdims=False"),
            ("R.add(lv0, lv0, lv0)", "R.add (relax.add): too many positional arguments; "
                                     "accepted parameters: x1, x2"),
            ("R.call_tir(cls.main, (lv0,))", "R.call_tir (relax.call_tir): missing a required "
                                             "argument: 'out_sinfo'"),
            ("R.shape([4], 2)", "R.shape: too many positional arguments; accepted parameters: values")]:
        text = MODULE.format(expr=expr)
        e = error_of(text)
        assert (e.lineno, e.col) == where(text, expr), expr
        assert message in str(e), (expr, str(e))


def test_arguments_that_do_not_fit_a_struct_info_constructor():
    text = MODULE.format(expr="R.add(lv0, lv0)").replace(
        'R.Tensor(("n", 4), "float32")', 'R.Tensor(("n", 4), dtyp="float32")')
    e = error_of(text)
    assert (e.lineno, e.col) == where(text, "R.Tensor(")
    assert "R.Tensor: unexpected keyword argument 'dtyp' (did you mean dtype?); accepted " \
           "parameters: shape=None, dtype='float32', ndim=-1" in str(e)


def test_unknown_dtype_in_annotations():
    for old, new in [('R.Tensor(("n", 4), "float32")', 'R.Tensor(("n", 4), "flot32")'),
                     ('R.Tensor(("n", 4), "float32")', 'R.Tensor("flot32")')]:
        text = MODULE.format(expr="R.add(lv0, lv0)").replace(old, new)
        e = error_of(text)
        assert (e.lineno, e.col) == where(text, "R.Tensor(")
        assert "unknown dtype 'flot32' (did you mean float32?)" in str(e)
    text = '''
@T.prim_func
def f(A: T.Buffer((4,), "float32")):
    B = T.alloc_buffer((4,), "flaot16")
    for i in range(4):
        A[i] = T.float32(0)
'''
    assert parse(text.replace("flaot16", "float16")) is not None
    e = error_of(text)
    assert (e.lineno, e.col) == where(text, "T.alloc_buffer")
    assert "unknown dtype 'flaot16' (did you mean float16?)" in str(e)


def test_const_out_of_range_or_ragged():
    for expr, message in [('R.const(300, "int8")', "R.const: value 300 with dtype int8: out of the "
                                                   "range of int8 (-128 to 127)"),
                          ('R.const([[1.0, 2.0], [3.0]], "float32")',
                           "nested lists of unequal lengths")]:
        text = MODULE.format(expr=f"R.add(lv0, {expr})")
        e = error_of(text)
        assert (e.lineno, e.col) == where(text, "R.const"), expr
        assert message in str(e), str(e)


def test_dataflow_variable_used_after_its_block():
    text = '''
@R.function
def main(x: R.Tensor((4,), "float32")):
    with R.dataflow():
        lv = R.exp(x)
        gv = R.exp(lv)
        R.output(gv)
    y = R.add(gv, lv)
    return y
'''
    e = error_of(text)
    line, col = where(text, "R.add(gv, lv)")
    assert (e.lineno, e.col) == (line, col + len("R.add(gv, "))
    assert "dataflow variable 'lv' is used outside its dataflow block" in str(e)


def test_output_of_a_name_not_assigned_in_the_block():
    text = '''
@R.function
def main(x: R.Tensor((4,), "float32")):
    with R.dataflow():
        lv = R.exp(x)
        R.output(gv)
    return lv
'''
    e = error_of(text)
    assert (e.lineno, e.col) == where(text, "gv)")
    assert "R.output: 'gv' is not assigned in this dataflow block" in str(e)


def test_unknown_module_function_and_prim_func_called_directly():
    text = '''
@I.ir_module
class Module:
    @T.prim_func
    def mm(A: T.Buffer((4,), "float32")):
        T.evaluate(0)

    @R.function
    def main(x: R.Tensor((4,), "float32")):
        a = R.call_tir(cls.mmm, (x,), out_sinfo=R.Tensor((4,), "float32"))
        return a
'''
    e = error_of(text)
    assert (e.lineno, e.col) == where(text, "cls.mmm")
    assert "no function 'mmm'; did you mean mm?" in str(e)
    e = error_of(text.replace("R.call_tir(cls.mmm, (x,), out_sinfo=R.Tensor((4,), \"float32\"))", "cls.mm(x)"))
    assert "'mm' is a tensor program; call it with R.call_tir" in str(e)


def test_python_syntax_error_has_position():
    text = "@R.function\ndef main(x: R.Tensor((4,), \"float32\")):\n    return x +\n"
    e = error_of(text)
    assert e.lineno == 3 and "invalid Python syntax" in str(e)


def test_annotation_contradicting_the_value():
    text = MODULE.format(expr="R.nn.relu(lv0)").replace("gv = ", 'gv: R.Tensor(("n", 4), "int32") = ')
    e = error_of(text)
    assert e.lineno == where(text, "gv: R.Tensor")[0]
    assert "annotation does not match the value" in str(e) and "int32" in str(e)


def test_tir_errors():
    text = '''
@T.prim_func
def f(A: T.Buffer((4, 4), "float32")):
    for i, j in T.grid(4, 4):
        with T.block("b"):
            vi, vj = T.axis.remap("SS", [i, j])
            A[vi, vj] = T.float32(0)
'''
    assert parse(text) is not None
    e = error_of(text.replace('"SS"', '"SX"'))
    assert (e.lineno, e.col) == where(text, '"SS"')
    assert "unknown kind 'X'; expected S or R" in str(e)

    e = error_of(text.replace('T.axis.remap("SS", [i, j])', 'T.axis.remap("SS", [i, 3])'))
    assert "is not a loop variable" in str(e)

    e = error_of(text.replace("T.grid(4, 4)", "T.gird(4, 4)"))
    assert (e.lineno, e.col) == where(text, "T.grid")
    assert "unknown loop kind T.gird" in str(e)

    e = error_of(text.replace("A[vi, vj] = T.float32(0)", "A[vi, vj] = T.exq(vi)"))
    assert e.lineno == 7 and "unknown function T.exq" in str(e)

    e = error_of(text.replace('A: T.Buffer((4, 4), "float32")', 'A: R.Tensor((4, 4), "float32")'))
    assert "expected T.Buffer(...) or T.int64 annotation for parameter 'A'" in str(e)

    e = error_of(text.replace('T.Buffer((4, 4), "float32")', 'T.Buffer(("n +", 4), "float32")'))
    assert e.lineno == 3 and "expected a size expression" in str(e)


def test_tir_buffer_access_with_the_wrong_number_of_indices():
    text = '''
@T.prim_func
def f(A: T.Buffer((4, 4), "float32"), B: T.Buffer((4, 4), "float32")):
    for i, j in T.grid(4, 4):
        with T.block("b"):
            vi, vj = T.axis.remap("SS", [i, j])
            B[vi, vj] = A[vi, vj]
'''
    assert parse(text) is not None
    bad_load = text.replace("= A[vi, vj]", "= A[vi]")
    e = error_of(bad_load)
    assert (e.lineno, e.col) == where(bad_load, "A[vi]")
    assert "BufferLoad of buffer 'A' with shape (4, 4) (rank 2): 1 indices given [vi]; " \
           "expected 2" in str(e)
    bad_store = text.replace("B[vi, vj] =", "B[vi, vj, 0] =")
    e = error_of(bad_store)
    assert (e.lineno, e.col) == where(bad_store, "B[vi, vj, 0]")
    assert "BufferStore of buffer 'B' with shape (4, 4) (rank 2): 3 indices given [vi, vj, 0]" in str(e)


def test_indented_text_reports_columns_of_the_original():
    text = textwrap.indent(MODULE.format(expr="R.nn.reluu(lv0)"), "        ")
    e = error_of(text)
    assert (e.lineno, e.col) == where(text, "R.nn.reluu")


def test_decorated_class_reports_lines_of_this_file():
    with pytest.raises(ParseError) as info:
        @I.ir_module
        class Broken:
            @R.function
            def main(x: R.Tensor((4,), "float32")):
                with R.dataflow():
                    y = R.nn.softmaxx(x)
                    R.output(y)
                return y
    e = info.value
    lines, start = inspect.getsourcelines(test_decorated_class_reports_lines_of_this_file)
    offset = next(i for i, line in enumerate(lines) if "R.nn.softmaxx" in line)
    assert e.lineno == start + offset
    assert e.col == lines[offset].index("R.nn.softmaxx") + 1
    assert "did you mean R.nn.softmax?" in str(e)

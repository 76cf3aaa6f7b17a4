"""`R`: graph-function script names. The parser interprets `R.xxx` from the source;
what is defined here makes annotations of a decorated class evaluate in Python,
gives `@R.function`, and forwards every operator (`R.add`, `R.nn.relu`, ...) to
its constructor in compiler.op."""
from __future__ import annotations

from typing import Any

from ..ir import expr as _E
from ..ir import struct_info as _S
from ._deco import decorate

Object = _S.ObjectStructInfo()


def function(func: Any = None, *, pure: bool = True, private: bool = False) -> Any:
    """Decorator: parse a function's source into a graph Function (inside an
    `@I.ir_module` class, the class decorator does it). `pure=False` marks a
    function with side effects."""
    if func is None:
        return lambda f: decorate("R.function", f)
    return decorate("R.function", func)


def _dims(shape: Any) -> Any:
    return None if shape is None else tuple(_E.Var(d) if isinstance(d, str) else _E.as_expr(d)
                                            for d in shape)


def Tensor(shape: Any = None, dtype: str = "float32", ndim: int = -1) -> _S.TensorStructInfo:  # noqa: N802
    """`R.Tensor(("n", 4), "float32")` / `R.Tensor(dtype="float32", ndim=2)`."""
    if isinstance(shape, str):
        shape, dtype = None, shape
    return _S.TensorStructInfo(_dims(shape), dtype, ndim)


def Tuple(*fields: Any) -> _S.TupleStructInfo:  # noqa: N802
    if len(fields) == 1 and isinstance(fields[0], (list, tuple)):
        fields = tuple(fields[0])
    return _S.TupleStructInfo(tuple(fields))


def Shape(values: Any = None, ndim: int = -1) -> _S.ShapeStructInfo:  # noqa: N802
    return _S.ShapeStructInfo(_dims(values), ndim)


def Prim(dtype: str = "int64", value: Any = None) -> _S.PrimStructInfo:  # noqa: N802
    return _S.PrimStructInfo(dtype, None if value is None else _E.as_expr(value))


def Callable(params: Any = None, ret: Any = None, purity: bool = True) -> _S.FuncStructInfo:  # noqa: N802
    return _S.FuncStructInfo(None if params is None else tuple(params), ret or Object, purity)


def DTensor(shape: Any = None, dtype: str = "float32", device_mesh: str = "mesh[0]",  # noqa: N802
            placement: str = "R", ndim: int = -1) -> _S.DTensorStructInfo:
    return _S.DTensorStructInfo(Tensor(shape, dtype, ndim), device_mesh, placement)


def device_mesh(shape: Any, device_ids: Any) -> Any:
    """`R.device_mesh((2,), I.Range(0, 2))`."""
    from ..distributed import DeviceMesh
    return DeviceMesh(tuple(shape), device_ids)


def func_attr(attrs: dict) -> None:
    """`R.func_attr({...})` inside a function body (read by the parser)."""


class _Namespace:
    """`R.nn`, `R.builtin`, ...: operators by script name."""

    def __init__(self, prefix: str):
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        from ..op import script_namespace
        full = f"{self._prefix}.{name}"
        table = script_namespace()
        if full in table:
            return table[full]
        if any(k.startswith(full + ".") for k in table):
            return _Namespace(full)
        raise AttributeError(f"script has no {full}")


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(_Namespace("R"), name)

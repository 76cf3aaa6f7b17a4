"""`T`: tensor-program script names. The parser interprets `T.xxx` from the source;
what is defined here makes annotations of a decorated class evaluate in Python
(`T.Buffer(...)`, `T.int64`) and gives the `@T.prim_func` decorator."""
from __future__ import annotations

from typing import Any

from ..ir import expr as _E
from ..ir import tir as _T
from ._deco import decorate


def prim_func(func: Any = None, **kwargs: Any) -> Any:
    """Decorator: parse a function's source into a PrimFunc (inside an
    `@I.ir_module` class, the class decorator does it)."""
    if func is None:
        return lambda f: decorate("T.prim_func", f)
    return decorate("T.prim_func", func)


def Buffer(shape: Any, dtype: str = "float32", scope: str = "global", name: str = "") -> _T.Buffer:  # noqa: N802
    """`T.Buffer(("n", 128), "float32")` (a parameter annotation)."""
    if not isinstance(shape, (list, tuple)):
        shape = (shape,)
    return _T.Buffer(name, tuple(_E.as_expr(d) if not isinstance(d, str) else _E.Var(d) for d in shape),
                     dtype, scope)


def _scalar(dtype: str):
    def make(value: Any = None) -> Any:
        if value is None:
            return _E.Var("v", dtype)
        if isinstance(value, _E.PrimExpr):
            return value if value.dtype == dtype else _E.Cast(dtype, value)
        return _E.const(float(value) if _E.is_float_dtype(dtype) else value, dtype)
    make.__name__ = dtype
    make.__doc__ = f"`T.{dtype}(value)`: a {dtype} literal or cast; `n = T.{dtype}()` declares a size."
    return make


for _dt in _E.DTYPES:
    globals()[_dt] = _scalar(_dt)
del _dt

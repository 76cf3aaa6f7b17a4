"""The pieces of a model: `Module`, `ModuleList`, `Parameter`, and the `Tensor`s a
module computes with while it is traced.

A model is a tree of modules whose attributes are sub-modules and parameters, found
by name in the order they were set (as in PyTorch); `named_parameters()` gives dotted
names, "model.layers.0.self_attn.q_proj.weight", which are the checkpoint's. Calling a
module while `export` traces it runs its `forward` on `Tensor`s: each operation emits
one binding into the graph function being built and returns the Tensor of its
variable, with symbolic shapes where the export spec has them. Outside a trace there
is nothing to compute on: modules describe a model, `export` turns it into an IRModule.
"""
from __future__ import annotations

import threading
from typing import Any, Iterator, Optional, Sequence, Union

from ..ir import graph as G
from ..ir.builder import BlockBuilder
from ..ir.errors import CompilerError, ShapeError
from ..ir.expr import IntImm, PrimExpr
from ..ir.struct_info import DTensorStructInfo, TensorStructInfo, placement_spec

_local = threading.local()


class _Trace:
    """What a running export knows: the builder, and each parameter's variable."""

    def __init__(self, bb: BlockBuilder, params: dict):
        self.bb = bb
        self.params = params        # id(Parameter) -> G.Var


def trace() -> _Trace:
    t = getattr(_local, "trace", None)
    if t is None:
        raise CompilerError("compiler.nn: tensors exist only while a model is exported "
                            "(model.export(...)); a module was called outside of it")
    return t


def emit(expr: G.Expr, name: Optional[str] = None) -> "Tensor":
    """Bind `expr` in the function being traced; its Tensor."""
    return Tensor(trace().bb.emit(expr, name))


class Tensor:
    """A value of the traced function: a graph variable with its struct info."""

    __slots__ = ("expr",)

    def __init__(self, expr: G.Expr):
        self.expr = expr

    @property
    def _sinfo(self) -> TensorStructInfo:
        s = self.expr.struct_info
        if isinstance(s, DTensorStructInfo):
            return s.tensor
        if not isinstance(s, TensorStructInfo):
            raise CompilerError(f"compiler.nn: {self!r} is not a tensor (struct info {type(s).__name__})")
        return s

    @property
    def shape(self) -> tuple:
        """Dims: ints where known, symbolic expressions otherwise."""
        return tuple(d.value if isinstance(d, IntImm) else d for d in self._sinfo.shape)

    @property
    def dtype(self) -> str:
        return self._sinfo.dtype

    @property
    def ndim(self) -> int:
        return self._sinfo.ndim

    def __repr__(self) -> str:
        name = getattr(self.expr, "name_hint", type(self.expr).__name__)
        return f"nn.Tensor({name})"

    # arithmetic, numpy-style; Python numbers take the tensor's dtype
    def __add__(self, other): return _binary("add", self, other)
    def __radd__(self, other): return _binary("add", other, self)
    def __sub__(self, other): return _binary("subtract", self, other)
    def __rsub__(self, other): return _binary("subtract", other, self)
    def __mul__(self, other): return _binary("multiply", self, other)
    def __rmul__(self, other): return _binary("multiply", other, self)
    def __truediv__(self, other): return _binary("divide", self, other)
    def __matmul__(self, other): return _binary("matmul", self, other)

    def __neg__(self) -> "Tensor":
        from .. import op
        return emit(op.negative(self.expr))

    def reshape(self, *shape) -> "Tensor":
        from .. import op
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return emit(op.reshape(self.expr, op.shape(list(shape))))

    def permute(self, *axes) -> "Tensor":
        from .. import op
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return emit(op.permute_dims(self.expr, list(axes)))

    def astype(self, dtype: str) -> "Tensor":
        from .. import op
        return self if dtype == self.dtype else emit(op.astype(self.expr, dtype))


def as_expr(x: Any, dtype: str) -> G.Expr:
    """A Tensor's expression, or a Python number as a constant of `dtype`."""
    if isinstance(x, Tensor):
        return x.expr
    if isinstance(x, (int, float)):
        from .. import op
        return op.const(x, dtype)
    raise CompilerError(f"compiler.nn: expected a Tensor or a number, got {type(x).__name__}")


def _binary(name: str, a: Any, b: Any) -> Tensor:
    from .. import op
    dtype = a.dtype if isinstance(a, Tensor) else b.dtype
    return emit(getattr(op, name)(as_expr(a, dtype), as_expr(b, dtype)))


class Parameter:
    """A weight of the model: shape, dtype, and optionally its placement over the mesh
    (`shard("S[0]")`, or a plan through `nn.shard`) and the format it is stored in
    (`store("q4_1")`, or a plan through `nn.store_weights`). Its name is where it sits in
    the module tree (`Module.named_parameters`)."""

    def __init__(self, shape: Sequence[int], dtype: str = "float32"):
        self.shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in self.shape):
            raise ShapeError(f"nn.Parameter: negative dim in shape {self.shape}")
        self.dtype = dtype
        self.placement = None
        self.mesh = 0                           # which of the model's meshes: its pipeline stage
        self.format: Optional[str] = None      # a weight format of disco.weight_formats
        self.logical_shape = self.shape         # the weights' shape, whatever the storage

    def store(self, fmt: str) -> "Parameter":
        """Keep the parameter in weight format `fmt` (disco/weight_formats.py: float16,
        bfloat16, q8_0, q4_0, q4_1): its variable is then the stored array (for block
        formats uint8 (..., k // 32 * block_bytes)) and calling it gives
        `R.dequantize(stored, format=fmt)`, the float32 weights, which the CPU pipeline
        reads in place (DispatchCPUKernels). Returns the parameter."""
        from disco.errors import KernelError
        from disco.weight_formats import storage_shape, weight_format
        try:
            f = weight_format(fmt)
            shape = storage_shape(self.logical_shape, f)
        except KernelError as e:
            raise ShapeError(f"nn.Parameter{self.logical_shape}: cannot be stored as {fmt!r}: {e}") from None
        if self.dtype != "float32":
            raise ShapeError(f"nn.Parameter{self.logical_shape}: a stored format needs float32 "
                             f"computation (the kernels take float32 activations); the parameter "
                             f"is {self.dtype}")
        self.format, self.shape, self.dtype = f.name, shape, f.dtype.name
        return self

    def shard(self, placement) -> "Parameter":
        """Place the parameter over the mesh ("S[1]": split dim 1 over mesh axis 0;
        "R": whole on every device). Returns the parameter."""
        self.placement = placement_spec(placement, len(self.shape))
        return self

    def __call__(self) -> Tensor:
        """The parameter's value in the function being traced: its variable, or for a
        stored format the float32 weights (`R.dequantize` of the variable)."""
        var = trace().params[id(self)]
        if self.format is None:
            return Tensor(var)
        from .. import op
        return emit(op.dequantize(var, self.format))

    def __repr__(self) -> str:
        where = f", {''.join(str(p) for p in self.placement)}" if self.placement else ""
        fmt = f", stored {self.format}" if self.format else ""
        return f"nn.Parameter({self.shape}, {self.dtype!r}{where}{fmt})"


class Module:
    """Base of every layer and model (see the module docstring). Subclasses set their
    sub-modules and parameters as attributes in __init__ and define `forward`."""

    def named_children(self) -> Iterator[tuple[str, Union["Module", Parameter]]]:
        for name, value in vars(self).items():
            if isinstance(value, (Module, Parameter)):
                yield name, value

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter) of every parameter, depth first in definition order;
        a parameter reachable twice (tied weights) is listed once, under its first name."""
        seen: set = set()
        for name, p in self._named_parameters(prefix):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def _named_parameters(self, prefix: str) -> Iterator[tuple[str, Parameter]]:
        for name, value in self.named_children():
            full = f"{prefix}{name}"
            if isinstance(value, Parameter):
                yield full, value
            else:
                yield from value._named_parameters(full + ".")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


class ModuleList(Module):
    """Numbered sub-modules: `layers.0`, `layers.1`, ..."""

    def __init__(self, modules: Sequence[Module] = ()):
        self._items = list(modules)

    def named_children(self):
        for i, m in enumerate(self._items):
            yield str(i), m

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> Module:
        return self._items[i]

    def append(self, m: Module) -> None:
        self._items.append(m)


def dim_value(d: Any) -> Any:
    """A dim as an int when it is a constant (IntImm), else as it is."""
    return d.value if isinstance(d, IntImm) else d


PrimLike = Union[int, PrimExpr]

"""`cupy.ndarray` of the stand-in and the array functions the project uses.

An ndarray wraps a numpy view of a device allocation (`_runtime.Memory`). It is not a
numpy subclass and converts to numpy only explicitly, as cupy's does: `np.asarray(x)`
raises TypeError, numpy ufuncs and functions dispatch here (`__array_ufunc__`,
`__array_function__`) and refuse numpy operands, `.get()` / `cupy.asnumpy` copy to the
host. Results that numpy computes as views stay views of the same allocation; other
results get a new allocation, and while the current stream captures a CUDA graph their
contents are garbage until the graph is launched (the work is recorded, not run).
"""
from __future__ import annotations

import numbers
import operator
import warnings

import numpy as np

from . import _runtime as rt

try:
    import ml_dtypes
    _BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    _BF16 = None

_PY_SCALARS = (bool, int, float, complex)


def get_dtype(dtype) -> np.dtype:
    """numpy dtype of what cupy can hold: bool, ints, floats, complex (and ml_dtypes'
    bfloat16, which cupy 14 supports); anything else is cupy's ValueError."""
    dt = np.dtype(dtype) if dtype is not None else np.dtype(np.float64)
    if dt.byteorder == ">":
        raise ValueError(f"Unsupported dtype {dt} with big-endian byte-order")
    if dt.kind in "biufc" or (_BF16 is not None and dt == _BF16):
        return dt
    raise ValueError(f"Unsupported dtype {dt}")


def _is_scalar(x) -> bool:
    return type(x) in _PY_SCALARS or isinstance(x, np.generic)


def _operand(x):
    """A kernel operand: a cupy array's device view or a scalar (cupy's CScalar rules:
    numpy arrays and other objects are refused)."""
    if isinstance(x, ndarray):
        return x._a
    if _is_scalar(x):
        return x
    raise TypeError(f"Unsupported type {type(x)}")


# -- making arrays ---------------------------------------------------------------------------

def _make(a: np.ndarray, mem: rt.Memory) -> "ndarray":
    obj = ndarray.__new__(ndarray)
    obj._a, obj._mem = a, mem
    return obj


def _alloc(shape, dtype) -> "ndarray":
    dt = get_dtype(dtype)
    shape = _shape(shape)
    n = 1
    for s in shape:
        if s < 0:
            raise ValueError("negative dimensions are not allowed")
        n *= s
    mem = rt.Memory(n * dt.itemsize)
    return _make(mem.buf.view(dt).reshape(shape), mem)


def _shape(shape) -> tuple:
    if isinstance(shape, (numbers.Integral, np.integer)):
        return (operator.index(shape),)
    return tuple(operator.index(s) for s in shape)


def _garbage(out: "ndarray") -> None:
    out._mem.buf.fill(0xFF)     # NaN for floats, -1 for ints: contents are undefined


def _new(f, mems=()):
    """Run the host computation `f` and return its result(s) as device arrays: views of
    one of `mems` stay views; others get an allocation (filled now, or recorded when the
    current stream captures)."""
    r = f()
    if isinstance(r, (list, tuple)):
        return type(r)(_result(x, mems, f, i) for i, x in enumerate(r))
    return _result(r, mems, f, None)


def _result(r, mems, f, index):
    r = np.asarray(r)
    if r.size:
        for mem in mems:
            if np.may_share_memory(r, mem.buf):
                return _make(r, mem)
    out = _alloc(r.shape, r.dtype)
    if rt.capturing():
        _garbage(out)
        dst = out._a
        rt.launch(lambda: np.copyto(dst, f() if index is None else f()[index]), mems=[*mems, out._mem])
    else:
        np.copyto(out._a, r)
    return out


def _host_tree(x, mems: list):
    """Device arrays (inside lists/tuples too) as their device views; numpy arrays refused."""
    if isinstance(x, ndarray):
        mems.append(x._mem)
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_host_tree(v, mems) for v in x)
    if isinstance(x, np.ndarray):
        raise TypeError(f"Unsupported type {type(x)}: cupy functions take cupy arrays "
                        "(copy numpy arrays to the device with cupy.asarray)")
    return x


class _Flags:
    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, a: np.ndarray, own: bool):
        self.c_contiguous = bool(a.flags.c_contiguous)
        self.f_contiguous = bool(a.flags.f_contiguous)
        self.owndata = own

    def __getitem__(self, key):
        return getattr(self, {"C_CONTIGUOUS": "c_contiguous", "F_CONTIGUOUS": "f_contiguous",
                              "OWNDATA": "owndata"}[key])

    def __repr__(self):
        return f"  C_CONTIGUOUS : {self.c_contiguous}\n  F_CONTIGUOUS : {self.f_contiguous}\n" \
               f"  OWNDATA : {self.owndata}"


def _index_mems(idx) -> list:
    """The allocations of the cupy index arrays in `idx`."""
    items = idx if isinstance(idx, tuple) else (idx,)
    return [i._mem for i in items if isinstance(i, ndarray)]


def _index(idx):
    """An index with cupy index arrays replaced by their device views."""
    if isinstance(idx, tuple):
        return tuple(i._a if isinstance(i, ndarray) else i for i in idx)
    return idx._a if isinstance(idx, ndarray) else idx


# -- ndarray -----------------------------------------------------------------------------------

class ndarray:
    """A device array (see the module docstring)."""

    __slots__ = ("_a", "_mem", "__weakref__")
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is None:
            shape = _shape(shape)
            new = _alloc(shape[::-1] if order == "F" else shape, dtype)
            self._a, self._mem = (new._a.T if order == "F" else new._a), new._mem
            return
        dt = get_dtype(dtype)
        shape = _shape(shape)
        nbytes = int(np.prod(shape)) * dt.itemsize
        view = rt.host_view(memptr.ptr, nbytes, np.uint8, "ndarray(memptr=)")
        self._a = view.view(dt).reshape(shape) if strides is None else \
            np.lib.stride_tricks.as_strided(view.view(dt), shape, strides)
        self._mem = memptr.mem

    # attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)

    @property
    def flags(self):
        return _Flags(self._a, self._a.size == 0 or self._a.ctypes.data == self._mem.ptr)

    @property
    def data(self):
        from .cuda import MemoryPointer
        off = self._a.ctypes.data - self._mem.ptr if self._mem.ptr else 0
        return MemoryPointer(self._mem, off)

    @property
    def device(self):
        from .cuda import Device
        return Device(self._mem.device_id)

    @property
    def T(self):
        return _make(self._a.T, self._mem)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "descr": self.dtype.descr,
                "data": (self.data.ptr, False), "version": 3,
                "strides": None if self._a.flags.c_contiguous else self.strides, "stream": 1}

    # conversion to the host: explicit only
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def get(self, stream=None, order="C", out=None, blocking=True):
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError("Only numpy.ndarray can be obtained from cupy.ndarray")
            if self.dtype != out.dtype:
                raise TypeError(f"{out.dtype} array cannot be obtained from {self.dtype} array")
            if self.shape != out.shape:
                raise ValueError(f"Shape mismatch. Expected shape: {self.shape}, actual shape: {out.shape}")
        if self.size == 0 and out is None:
            return np.ndarray(self.shape, dtype=self.dtype)
        rt.check_host_transfer("D2H")
        if out is not None:
            np.copyto(out, self._a)
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        if arr.shape != self.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        if arr.dtype != self.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        rt.check_host_transfer("H2D")
        np.copyto(self._a, arr)

    def item(self):
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self.get().item()

    def tolist(self):
        return self.get().tolist()

    def __int__(self):
        return int(self.get())

    def __float__(self):
        return float(self.get())

    def __complex__(self):
        return complex(self.get())

    def __bool__(self):
        if self.size == 0:
            warnings.warn("The truth value of an empty array is ambiguous. Returning False, but in "
                          "future this will result in an error.", DeprecationWarning)
            return False
        if self.size == 1:
            return bool(self.get())
        raise ValueError("The truth value of an array with more than one element is ambiguous. "
                         "Use a.any() or a.all()")

    def __repr__(self):
        return repr(self.get())

    def __str__(self):
        return str(self.get())

    def __reduce__(self):
        return (array, (self.get(),))

    # DLPack: a CUDA tensor, which CPU consumers (numpy) refuse
    def __dlpack_device__(self):
        return (2, self._mem.device_id)      # (kDLCUDA, device)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        raise BufferError("Unsupported device in DLTensor. [stand-in cupy: a device array is not "
                          "exported through DLPack; a CPU consumer such as numpy refuses kDLCUDA memory]")

    # containers
    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def __getitem__(self, idx):
        hidx = _index(idx)
        a = self._a

        def f():
            r = a[hidx]
            if not isinstance(r, np.ndarray):      # an element: cupy gives a 0-d view
                r = a[(hidx if isinstance(hidx, tuple) else (hidx,)) + (Ellipsis,)]
            return r
        return _new(f, [self._mem, *_index_mems(idx)])

    def __setitem__(self, idx, value):
        hidx = _index(idx)
        a = self._a
        mems = [self._mem, *_index_mems(idx)]
        if isinstance(value, ndarray):
            v = value._a
            mems.append(value._mem)
        else:
            # cupy fills from anything that is not a cupy array: only scalars
            # (a numpy array, list, ... is refused: no implicit host-to-device copy)
            v = np.asarray(value, dtype=self.dtype)
            if v.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            v = v[()]
        rt.launch(lambda: a.__setitem__(hidx, v), mems=mems)

    # copies, views, shapes
    def copy(self, order="C"):
        a = self._a
        return _new(lambda: a.copy(order=order), (self._mem,))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        dt = get_dtype(dtype)
        if not copy and dt == self.dtype:
            return self
        a = self._a
        return _new(lambda: a.astype(dt, order=order), (self._mem,))

    def view(self, dtype=None):
        if dtype is None:
            return _make(self._a.view(), self._mem)
        return _make(self._a.view(get_dtype(dtype)), self._mem)

    def reshape(self, *shape, order="C"):
        if len(shape) == 1 and not isinstance(shape[0], (numbers.Integral, np.integer)):
            shape = shape[0]
        a = self._a
        return _new(lambda: a.reshape(shape, order=order), (self._mem,))

    def ravel(self, order="C"):
        a = self._a
        return _new(lambda: a.ravel(order=order), (self._mem,))

    def flatten(self, order="C"):
        return self.copy(order).ravel()

    def transpose(self, *axes):
        return _make(self._a.transpose(*axes), self._mem)

    def swapaxes(self, a1, a2):
        return _make(self._a.swapaxes(a1, a2), self._mem)

    def squeeze(self, axis=None):
        return _make(self._a.squeeze(axis), self._mem)

    def fill(self, value):
        if isinstance(value, ndarray):
            if value.shape != ():
                raise ValueError("non-scalar cupy.ndarray cannot be used for fill")
            v = value._a
        else:
            v = np.asarray(value, dtype=self.dtype)
            if v.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        a = self._a
        mems = [self._mem] + ([value._mem] if isinstance(value, ndarray) else [])
        rt.launch(lambda: a.fill(v[()] if isinstance(v, np.ndarray) else v), mems=mems)

    def take(self, indices, axis=None, out=None):
        return FUNCTIONS["take"](self, indices, axis, out=out)

    # reductions
    def sum(self, axis=None, dtype=None, out=None, keepdims=False):
        return _reduce(np.sum, self, out, axis=axis, dtype=dtype, keepdims=keepdims)

    def prod(self, axis=None, dtype=None, out=None, keepdims=False):
        return _reduce(np.prod, self, out, axis=axis, dtype=dtype, keepdims=keepdims)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False):
        return _reduce(np.mean, self, out, axis=axis, dtype=dtype, keepdims=keepdims)

    def var(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        return _reduce(np.var, self, out, axis=axis, dtype=dtype, ddof=ddof, keepdims=keepdims)

    def std(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        return _reduce(np.std, self, out, axis=axis, dtype=dtype, ddof=ddof, keepdims=keepdims)

    def max(self, axis=None, out=None, keepdims=False):
        return _reduce(np.max, self, out, axis=axis, keepdims=keepdims)

    def min(self, axis=None, out=None, keepdims=False):
        return _reduce(np.min, self, out, axis=axis, keepdims=keepdims)

    def argmax(self, axis=None, out=None, keepdims=False):
        return _reduce(np.argmax, self, out, axis=axis, keepdims=keepdims)

    def argmin(self, axis=None, out=None, keepdims=False):
        return _reduce(np.argmin, self, out, axis=axis, keepdims=keepdims)

    def any(self, axis=None, out=None, keepdims=False):
        return _reduce(np.any, self, out, axis=axis, keepdims=keepdims)

    def all(self, axis=None, out=None, keepdims=False):
        return _reduce(np.all, self, out, axis=axis, keepdims=keepdims)

    def clip(self, min=None, max=None, out=None):
        return FUNCTIONS["clip"](self, min, max, out=out)

    # numpy interoperability: numpy's ufuncs and functions run cupy's
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__":
            return NotImplemented
        f = UFUNCS.get(ufunc.__name__) or (matmul if ufunc is np.matmul else None)
        if f is None:
            return NotImplemented
        outs = kwargs.get("out")
        if isinstance(outs, tuple):
            if len(outs) != 1:
                raise ValueError("The 'out' parameter must have exactly one array value")
            kwargs["out"] = outs[0]
        for x in inputs + ((kwargs["out"],) if kwargs.get("out") is not None else ()):
            if not (_is_scalar(x) or isinstance(x, (ndarray, np.ndarray))):
                return NotImplemented
        return f(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        import cupy
        mod = cupy
        for part in func.__module__.split(".")[1:]:
            mod = getattr(mod, part, None)
        f = getattr(mod, func.__name__, None) if mod is not None else None
        if f is None or f is func:
            return NotImplemented
        if not all(issubclass(t, (ndarray, np.ndarray)) for t in types):
            return NotImplemented
        return f(*args, **kwargs)

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)


def _binary(name, reflected=True, inplace=True):
    def op(self, other):
        if not (isinstance(other, (ndarray, np.ndarray)) or _is_scalar(other)):
            return NotImplemented
        return UFUNCS[name](self, other)

    def rop(self, other):
        if not (isinstance(other, (ndarray, np.ndarray)) or _is_scalar(other)):
            return NotImplemented
        return UFUNCS[name](other, self)

    def iop(self, other):
        if not (isinstance(other, (ndarray, np.ndarray)) or _is_scalar(other)):
            return NotImplemented
        return UFUNCS[name](self, other, out=self)
    return op, rop, iop


for _dunder, _name in [("add", "add"), ("sub", "subtract"), ("mul", "multiply"),
                       ("truediv", "true_divide"), ("floordiv", "floor_divide"), ("mod", "remainder"),
                       ("pow", "power"), ("and", "bitwise_and"), ("or", "bitwise_or"),
                       ("xor", "bitwise_xor"), ("lshift", "left_shift"), ("rshift", "right_shift")]:
    _op, _rop, _iop = _binary(_name)
    setattr(ndarray, f"__{_dunder}__", _op)
    setattr(ndarray, f"__r{_dunder}__", _rop)
    setattr(ndarray, f"__i{_dunder}__", _iop)
for _dunder, _name in [("lt", "less"), ("le", "less_equal"), ("gt", "greater"),
                       ("ge", "greater_equal")]:
    setattr(ndarray, f"__{_dunder}__", _binary(_name)[0])


def _equality(name, other_is_none):
    op = _binary(name)[0]

    def eq(self, other):      # `x == None` is elementwise, as in cupy and numpy
        return full(self.shape, other_is_none, np.bool_) if other is None else op(self, other)
    return eq


ndarray.__eq__, ndarray.__ne__ = _equality("equal", False), _equality("not_equal", True)
for _dunder, _name in [("neg", "negative"), ("pos", "positive"), ("abs", "absolute"),
                       ("invert", "invert")]:
    setattr(ndarray, f"__{_dunder}__", (lambda n: lambda self: UFUNCS[n](self))(_name))
ndarray.__module__ = "cupy"


# -- ufuncs --------------------------------------------------------------------------------------

class ufunc:
    """A cupy ufunc: operands are cupy arrays or scalars (numpy arrays: TypeError)."""

    def __init__(self, np_ufunc):
        self._np = np_ufunc
        self.__name__ = np_ufunc.__name__
        self.nin, self.nout = np_ufunc.nin, np_ufunc.nout

    def __repr__(self):
        return f"<ufunc '{self.__name__}'>"

    def __call__(self, *args, out=None, dtype=None, casting="same_kind", **kwargs):
        if len(args) != self.nin:
            raise TypeError(f"Wrong number of arguments for {self.__name__}")
        hargs = [_operand(a) for a in args]
        opts = dict(kwargs, casting=casting)
        if dtype is not None:
            opts["dtype"] = dtype
        f = self._np
        mems = [a._mem for a in args if isinstance(a, ndarray)]
        if out is not None:
            if not isinstance(out, ndarray):
                raise TypeError("Output arguments must be cupy.ndarray")
            o = out._a
            rt.launch(lambda: f(*hargs, out=o, **opts), mems=[*mems, out._mem])
            return out
        return _new(lambda: f(*hargs, **opts), mems)


UFUNCS: dict[str, ufunc] = {}
for _n in """add subtract multiply divide true_divide floor_divide remainder mod fmod power negative
        positive absolute exp exp2 expm1 log log2 log10 log1p sqrt cbrt square reciprocal sin cos tan
        arcsin arccos arctan arctan2 sinh cosh tanh arcsinh arccosh arctanh maximum minimum fmax fmin
        equal not_equal less less_equal greater greater_equal logical_and logical_or logical_xor
        logical_not bitwise_and bitwise_or bitwise_xor invert left_shift right_shift isnan isinf
        isfinite sign signbit floor ceil trunc rint copysign hypot""".split():
    UFUNCS[_n] = ufunc(getattr(np, _n))
UFUNCS["abs"] = UFUNCS["absolute"]


def matmul(a, b, out=None, dtype=None, **kwargs):
    """cuBLAS-like: half inputs are multiplied with float32 accumulation."""
    ha, hb = _operand(a), _operand(b)
    rt.check_library_call("cuBLAS")
    if not isinstance(a, ndarray) or not isinstance(b, ndarray):
        raise TypeError(f"Unsupported type {type(a if not isinstance(a, ndarray) else b)}")

    def f():
        if ha.dtype == hb.dtype and ha.dtype.itemsize == 2 and ha.dtype.kind in "fV":   # float16, bfloat16
            return np.matmul(ha.astype(np.float32), hb.astype(np.float32)).astype(ha.dtype)
        return np.matmul(ha, hb, dtype=dtype)
    if out is not None:
        if not isinstance(out, ndarray):
            raise TypeError("Output arguments must be cupy.ndarray")
        o = out._a
        want = np.broadcast_shapes(ha.shape[:-2], hb.shape[:-2]) + (ha.shape[-2], hb.shape[-1]) \
            if ha.ndim >= 2 and hb.ndim >= 2 else None
        if want is not None and o.shape != want:
            raise ValueError(f"Output array has an invalid size: {o.shape}, expected {want}")
        rt.launch(lambda: np.copyto(o, f(), casting="same_kind"), mems=[a._mem, b._mem, out._mem])
        return out
    return _new(f, (a._mem, b._mem))


# -- reductions and other functions -----------------------------------------------------------

def _reduce(npf, a, out, **kw):
    if not isinstance(a, ndarray):
        raise TypeError(f"Unsupported type {type(a)}")
    kw = {k: v for k, v in kw.items() if v is not None}
    h = a._a
    if out is not None:
        if not isinstance(out, ndarray):
            raise TypeError("Output arguments must be cupy.ndarray")
        o = out._a
        rt.launch(lambda: npf(h, out=o, **kw), mems=[a._mem, out._mem])
        return out
    return _new(lambda: npf(h, **kw), (a._mem,))


def _function(npf, name=None):
    """A cupy function computed by numpy on the device views of its array arguments."""
    def f(*args, **kwargs):
        mems: list = []
        hargs = _host_tree(list(args), mems)
        out = kwargs.pop("out", None)
        hkw = {k: _host_tree(v, mems) for k, v in kwargs.items()}
        if out is not None:
            if not isinstance(out, ndarray):
                raise TypeError("Output arguments must be cupy.ndarray")
            o = out._a
            rt.launch(lambda: npf(*hargs, out=o, **hkw), mems=[*mems, out._mem])
            return out
        return _new(lambda: npf(*hargs, **hkw), mems)
    f.__name__ = name or npf.__name__
    f.__qualname__ = f.__name__
    f.__module__ = "cupy"
    return f


# exported by cupy/__init__.py (not globals here: they would shadow sum, max, all, ...)
FUNCTIONS = {_n: _function(getattr(np, _n)) for _n in (
    "sum prod mean var std max min amax amin argmax argmin any all cumsum concatenate stack "
    "hstack vstack split array_split moveaxis transpose swapaxes reshape ravel squeeze "
    "expand_dims broadcast_to flip roll tile repeat take where clip allclose isclose "
    "array_equal sort argsort einsum dot outer tril triu diag nonzero count_nonzero").split()}


def ascontiguousarray(a, dtype=None):
    """cupy 14: only cupy arrays; a 0-d array becomes 1-d (shape (1,)), as in numpy."""
    if not isinstance(a, ndarray):
        raise TypeError(f"Argument 'a' has incorrect type (expected cupy._core.core._ndarray_base, "
                        f"got {type(a).__name__})")
    dt = a.dtype if dtype is None else get_dtype(dtype)
    if dt == a.dtype and a._a.flags.c_contiguous:
        return a.reshape(1) if a.ndim == 0 else a
    h = a._a
    return _new(lambda: np.ascontiguousarray(h, dtype=dt).reshape(h.shape or (1,)), (a._mem,))


# -- creation ---------------------------------------------------------------------------------

def empty(shape, dtype=float, order="C"):
    return ndarray(shape, dtype, order=order)


def zeros(shape, dtype=float, order="C"):
    out = empty(shape, dtype, order)
    out.fill(0)
    return out


def ones(shape, dtype=float, order="C"):
    out = empty(shape, dtype, order)
    out.fill(1)
    return out


def full(shape, fill_value, dtype=None, order="C"):
    if dtype is None:
        dtype = fill_value.dtype if isinstance(fill_value, ndarray) else np.array(fill_value).dtype
    out = empty(shape, dtype, order)
    out.fill(fill_value)
    return out


def _like(a, dtype, shape):
    return (a.shape if shape is None else shape), (a.dtype if dtype is None else dtype)


def empty_like(a, dtype=None, order="K", subok=None, shape=None):
    return empty(*_like(a, dtype, shape))


def zeros_like(a, dtype=None, order="K", subok=None, shape=None):
    return zeros(*_like(a, dtype, shape))


def ones_like(a, dtype=None, order="K", subok=None, shape=None):
    return ones(*_like(a, dtype, shape))


def full_like(a, fill_value, dtype=None, order="K", subok=None, shape=None):
    s, d = _like(a, dtype, shape)
    return full(s, fill_value, d)


def arange(start, stop=None, step=1, dtype=None):
    return _new(lambda: np.arange(start, stop, step, dtype=dtype) if stop is not None
                else np.arange(start, step=step, dtype=dtype))


def linspace(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0):
    return _new(lambda: np.linspace(start, stop, num, endpoint, dtype=dtype))


def eye(N, M=None, k=0, dtype=float, order="C"):
    return _new(lambda: np.eye(N, M, k, dtype=dtype))


def identity(n, dtype=float):
    return eye(n, dtype=dtype)


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    """A device array from a cupy array (a device copy) or host data (a host-to-device
    copy; lists holding cupy arrays fail like cupy's, through __array__)."""
    if isinstance(obj, ndarray):
        if copy is False and (dtype is None or get_dtype(dtype) == obj.dtype) and ndmin <= obj.ndim:
            return obj
        h = obj._a
        dt = get_dtype(dtype) if dtype is not None else h.dtype
        return _new(lambda: np.array(h, dtype=dt, order=order if order != "A" else "K", copy=True,
                                     ndmin=ndmin), (obj._mem,))
    if hasattr(obj, "__cuda_array_interface__"):
        raise TypeError(f"stand-in cupy cannot import foreign device memory ({type(obj).__name__})")
    host = np.array(obj, dtype=dtype, order=order if order in ("C", "F") else "K", ndmin=ndmin)
    get_dtype(host.dtype)
    rt.check_host_transfer("H2D")
    out = empty(host.shape, host.dtype, "F" if host.flags.f_contiguous and not host.flags.c_contiguous else "C")
    np.copyto(out._a, host)
    return out


def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    if isinstance(a, ndarray) and (dtype is None or get_dtype(dtype) == a.dtype) and not copy:
        return a
    return array(a, dtype=dtype, copy=True, order=order or "K")


def asanyarray(a, dtype=None, order=None):
    return asarray(a, dtype, order)


def copy(a, order="K"):
    if not isinstance(a, ndarray):
        raise TypeError(f"Unsupported type {type(a)}")
    return a.copy(order="C" if order == "K" else order)


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out, blocking=blocking)
    temp = np.asarray(a, order=order)
    if out is not None:
        out[...] = temp
        return out
    return temp


def from_dlpack(x, *, device=None, copy=None):
    """Only device arrays of this stand-in can be imported (foreign CUDA memory does not
    exist here; host tensors are not imported by DLPack, as in cupy without UMP)."""
    if isinstance(x, ndarray):
        return _make(x._a, x._mem)
    dev = x.__dlpack_device__()[0] if hasattr(x, "__dlpack_device__") else None
    raise BufferError(f"stand-in cupy.from_dlpack: cannot import a {type(x).__name__} on DLPack "
                      f"device type {dev} (only stand-in device arrays; kDLCUDA = 2)")


def get_array_module(*args):
    import cupy
    return cupy if any(isinstance(a, ndarray) for a in args) else np

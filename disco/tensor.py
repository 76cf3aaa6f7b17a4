"""Array helpers at the runtime's boundary: dtype names and conversion to numpy.

On CPU a tensor is a `numpy.ndarray`. Anything else that holds an array (torch
and jax tensors, any `__dlpack__` producer, numpy scalars, Python lists) is
converted by `as_numpy` without a copy where the producer allows it. bfloat16
is numpy's `ml_dtypes.bfloat16`; DLPack producers holding bfloat16 (which
numpy's `from_dlpack` refuses) go through a 16-bit integer view.
"""
from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from .errors import DiscoError

_BY_NAME: dict[str, np.dtype] = {
    name: np.dtype(name) for name in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64")
}
_BY_NAME["bfloat16"] = np.dtype(ml_dtypes.bfloat16)
_NAME_OF: dict[np.dtype, str] = {dt: name for name, dt in _BY_NAME.items()}

DTYPE_NAMES = tuple(_BY_NAME)


def np_dtype(name: str | np.dtype) -> np.dtype:
    """The numpy dtype of a dtype name ("float32", "bfloat16", ...)."""
    if isinstance(name, np.dtype):
        return name
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise DiscoError(f"unknown dtype {name!r}; known: {', '.join(DTYPE_NAMES)}") from None


def dtype_name(dtype: Any) -> str:
    """The project's name for a numpy dtype (or anything `np.dtype` accepts)."""
    dt = dtype if isinstance(dtype, np.dtype) else np.dtype(dtype)
    try:
        return _NAME_OF[dt]
    except KeyError:
        raise DiscoError(f"dtype {dt} has no name in disco; supported: {', '.join(DTYPE_NAMES)}") \
            from None


def _from_torch(x: Any) -> np.ndarray:
    if x.device.type != "cpu":
        raise DiscoError(f"a torch tensor on {x.device} cannot be used on the CPU device; "
                         "move it with .cpu() or run the VM on that device")
    x = x.detach()
    if str(x.dtype) == "torch.bfloat16":
        import torch
        return x.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return x.numpy()


def as_numpy(x: Any) -> np.ndarray:
    """`x` as a numpy array, sharing memory when possible.

    Accepts numpy arrays and scalars, torch tensors, any DLPack producer, and
    nested Python sequences."""
    if type(x) is np.ndarray:
        return x
    if isinstance(x, np.ndarray):
        return x.view(np.ndarray)
    if isinstance(x, np.generic):
        return np.asarray(x)
    if type(x).__module__.startswith("torch"):
        return _from_torch(x)
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (BufferError, TypeError, RuntimeError) as err:
            raise DiscoError(f"cannot import {type(x).__name__} through DLPack: {err}") from err
    if hasattr(x, "__array__") or isinstance(x, (list, tuple, int, float, bool)):
        return np.asarray(x)
    raise DiscoError(f"cannot convert {type(x).__name__} to an array; pass a numpy array, "
                     "a torch tensor or any object with __dlpack__")


def contiguous(a: Any) -> Any:
    """`a` (a numpy or cupy array) if it is C-contiguous, else a C-ordered copy of the same
    array type. Unlike `ascontiguousarray`, which makes 0-d arrays 1-d in numpy and
    cupy alike, 0-d stays 0-d."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def host_array(x: Any) -> np.ndarray:
    """`x` as a C-contiguous numpy array (what the CPU collectives take): `as_numpy`,
    then a copy only if it is not contiguous."""
    return contiguous(as_numpy(x))


def is_device_array(x: Any) -> bool:
    """True for a GPU array (cupy's ndarray), without importing cupy."""
    return type(x).__module__.startswith("cupy") and hasattr(x, "get")


def host_value(x: Any) -> Any:
    """`x` with every GPU array in it (at any depth of tuples and lists) copied to a
    numpy array: what a worker hands to the controller, which may have no GPU (and
    where numpy refuses cupy arrays)."""
    if is_device_array(x):
        return x.get()
    if type(x) in (tuple, list):
        return type(x)(host_value(v) for v in x)
    return x


def is_array_like(x: Any) -> bool:
    """True for arrays and tensors (not Python scalars, tuples or shapes)."""
    return isinstance(x, np.ndarray) or hasattr(x, "__dlpack__") or \
        type(x).__module__.startswith("torch")


# data_ptr(a): the address of numpy array a's first element. Native: the VM calls it for
# every tensor a planned call patches into kernel arguments, and numpy's
# __array_interface__ builds a dict (the dtype's text included) on each access.
from ._native import data_ptr  # noqa: E402

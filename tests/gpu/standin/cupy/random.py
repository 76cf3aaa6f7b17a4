"""`cupy.random` of the stand-in: numpy's generators, the draws copied to the device."""
from __future__ import annotations

import numpy as np

from . import _runtime as rt
from ._core import _new as _new_array


def _new(f):
    rt.check_library_call("cuRAND")
    return _new_array(f)

_rs = np.random.RandomState()


def seed(seed=None):
    _rs.seed(seed)


def standard_normal(size=None, dtype=float):
    return _new(lambda: _rs.standard_normal(size).astype(dtype))


def randn(*size, dtype=float):
    return standard_normal(size, dtype)


def normal(loc=0.0, scale=1.0, size=None, dtype=float):
    return _new(lambda: _rs.normal(loc, scale, size).astype(dtype))


def random(size=None, dtype=float):
    return _new(lambda: _rs.random_sample(size).astype(dtype))


def rand(*size, dtype=float):
    return random(size, dtype)


def uniform(low=0.0, high=1.0, size=None, dtype=float):
    return _new(lambda: _rs.uniform(low, high, size).astype(dtype))


def randint(low, high=None, size=None, dtype=int):
    return _new(lambda: _rs.randint(low, high, size).astype(dtype))


class Generator:
    def __init__(self, seed=None):
        self._g = np.random.default_rng(seed)

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        r = _new(lambda: self._g.standard_normal(size, dtype=dtype))
        if out is not None:
            out[...] = r
            return out
        return r

    def random(self, size=None, dtype=np.float64, out=None):
        return _new(lambda: self._g.random(size, dtype=dtype))

    def normal(self, loc=0.0, scale=1.0, size=None):
        return _new(lambda: self._g.normal(loc, scale, size))

    def uniform(self, low=0.0, high=1.0, size=None, dtype=np.float64):
        return _new(lambda: self._g.uniform(low, high, size).astype(dtype))

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        return _new(lambda: self._g.integers(low, high, size, dtype=dtype, endpoint=endpoint))


def default_rng(seed=None):
    return Generator(seed)

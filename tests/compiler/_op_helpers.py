"""Helpers for the operator tests: build typed vars, check inferred struct info against numpy,
sweep a table of cases reporting every failure.

The reference is numpy run on random arrays of the (concrete) input shapes; symbolic
shapes are checked by evaluating the inferred dims at a binding of their variables.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from compiler.ir import Var, arith
from compiler.ir.expr import IntImm, Var as SizeVar
from compiler.ir.struct_info import TensorStructInfo, TupleStructInfo, tensor_sinfo

RNG = np.random.default_rng(0)


def tvar(shape, dtype: str = "float32", name: str = "x") -> Var:
    """A graph Var of tensor struct info; shape entries may be ints or SizeVars."""
    return Var(name, tensor_sinfo(shape, dtype))


def rand(shape: Sequence[int], dtype: str = "float32") -> np.ndarray:
    if dtype == "bool":
        return RNG.random(shape) < 0.5
    if np.dtype(dtype).kind in "iu":
        return RNG.integers(1, 5, size=shape).astype(dtype)
    return (RNG.random(shape) + 0.5).astype(dtype)


def concrete(dims, binding: Mapping[SizeVar, int]) -> tuple[int, ...]:
    return tuple(int(arith.evaluate(d, dict(binding))) for d in dims)


def check_against_numpy(build: Callable, ref: Callable, shapes: Sequence, dtypes=None,
                        binding: Optional[Mapping[SizeVar, int]] = None,
                        check_dtype: bool = True) -> None:
    """Build the op on vars of `shapes` (symbolic dims bound by `binding`) and compare the
    inferred struct info with numpy's result on random arrays of the concrete shapes."""
    binding = binding or {}
    dtypes = dtypes or ["float32"] * len(shapes)
    args = [tvar(s, d, f"x{i}") for i, (s, d) in enumerate(zip(shapes, dtypes))]
    call = build(*args)
    arrays = [rand(concrete(a.struct_info.shape, binding), d) for a, d in zip(args, dtypes)]
    expected = ref(*arrays)
    compare_sinfo(call.struct_info, expected, binding, check_dtype)


def compare_sinfo(sinfo, expected, binding, check_dtype: bool = True) -> None:
    if isinstance(expected, (list, tuple)):
        assert isinstance(sinfo, TupleStructInfo), sinfo
        assert len(sinfo.fields) == len(expected)
        for s, e in zip(sinfo.fields, expected):
            compare_sinfo(s, e, binding, check_dtype)
        return
    expected = np.asarray(expected)
    assert isinstance(sinfo, TensorStructInfo), sinfo
    assert sinfo.shape is not None, sinfo
    assert concrete(sinfo.shape, binding) == expected.shape, (sinfo.shape, expected.shape)
    if check_dtype:
        assert sinfo.dtype == str(expected.dtype), (sinfo.dtype, expected.dtype)


def static(sinfo) -> tuple[int, ...]:
    assert all(isinstance(d, IntImm) for d in sinfo.shape), sinfo.shape
    return tuple(d.value for d in sinfo.shape)


def same_dims(got, want) -> bool:
    return len(got) == len(want) and all(arith.prove_equal(a, b) for a, b in zip(got, want))


def assert_all_pass(cases: Sequence, check: Callable[[int, Any], None],
                    describe: Callable[[int, Any], str]) -> None:
    """Run `check(i, case)` for every case, then fail once naming every case that raised:
    a sweep over all operators reports each broken one, not only the first."""
    failures = []
    for i, c in enumerate(cases):
        try:
            check(i, c)
        except Exception as e:
            failures.append(f"{describe(i, c)}: {type(e).__name__}: {str(e)[:300]}")
    assert not failures, "\n".join(failures)

"""An Executable's functions and kernels decoded once, when the VM loads them.

Loading does the work that would otherwise repeat on every call: opcodes become
`Op` members, shape expressions compiled functions (exprs.py), patterns `Pattern`s
(matcher.py), kernel indices the kernels themselves; malformed bytecode fails here,
naming the function and the instruction.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import DiscoError
from ..executable import Op, VMFunction
from ..tensor import np_dtype
from .exprs import compile_expr, compile_exprs
from .matcher import KernelCheck, Pattern

if TYPE_CHECKING:
    from .device import CpuDevice


class Function:
    """A VMFunction decoded for execution: expressions compiled, patterns prepared."""

    def __init__(self, f: VMFunction, kernels: list, device: CpuDevice):
        self.name = f.name
        self.vmf = f
        self.num_regs = f.num_regs
        self.num_syms = len(f.sym_names)
        self.sym_names = f.sym_names
        self.upper_bounds = [(i, name, f.upper_bounds[name]) for i, name in enumerate(f.sym_names)
                             if name in f.upper_bounds]
        self.param_names = [p["name"] for p in f.params]
        self.params = [Pattern(p["pattern"], f"{f.name}: parameter {p['name']!r}") for p in f.params]
        self.code = []
        for ins in f.code:
            op = Op(ins[0])
            what = f"{f.name}: {op.name}"
            if op in (Op.PRIM,):
                ins = (op, ins[1], compile_expr(ins[2], what))
            elif op is Op.MAKE_SHAPE:
                ins = (op, ins[1], compile_exprs(ins[2], what))
            elif op is Op.ALLOC:
                ins = (op, ins[1], np_dtype(ins[2]), compile_exprs(ins[3], what))
            elif op is Op.ALLOC_STORAGE:
                ins = (op, ins[1], compile_expr(ins[2], what), ins[3])
            elif op is Op.ALLOC_VIEW:
                ins = (op, ins[1], ins[2], compile_expr(ins[3], what), np_dtype(ins[4]),
                       compile_exprs(ins[5], what))
            elif op is Op.CALL_KERNEL:
                if not 0 <= ins[1] < len(kernels):
                    raise DiscoError(f"{what}: kernel index {ins[1]} out of range "
                                     f"({len(kernels)} kernels)")
                ins = (op, kernels[ins[1]], list(ins[2]), compile_exprs(ins[3], what))
            elif op is Op.MATCH:
                ins = (op, ins[1], Pattern(ins[2], what), ins[3])
            elif op is Op.CHECK_KERNEL:
                if not 0 <= ins[1] < len(kernels):
                    raise DiscoError(f"{what}: kernel index {ins[1]} out of range "
                                     f"({len(kernels)} kernels)")
                ins = (op, KernelCheck(f.name, ins[4], what), list(ins[2]),
                       compile_exprs(ins[3], what))
            else:
                ins = (op, *ins[1:])
            self.code.append(ins)


class Kernel:
    """A kernel of the executable: its description (KernelInfo), the device's callable
    and the dtypes of its buffers."""
    __slots__ = ("info", "fn", "dtypes")

    def __init__(self, info, fn):
        self.info = info
        self.fn = fn
        self.dtypes = [np_dtype(b["dtype"]) for b in info.buffers]

"""LegalizeOps: replace every operator call by a call of a tensor program.

Each operator's legalization lives next to its definition (`@opdef.legalizer` in
compiler/op/<file>.py, contract in compiler/op/registry.py): it returns, usually,
`R.call_tir(gvar, args, out_sinfo)` of a PrimFunc written with compiler.te. This
pass walks every graph function, hands each operator call to its legalizer and
keeps everything else. Tensor programs are shared: one BlockBuilder collects them
for the whole module, so equal programs (two `R.add` of the same shapes, in any
function) become one.

Calls left alone: the graph-level builtins (call_tir, call_dps_packed,
call_pure_packed, call_packed, builtin.alloc_tensor), explicit memory ops
(`relax.memory.*`, written by PlanMemory), collectives and distributed ops without
a legalizer (`relax.ccl.*`, `relax.dist.*`: the runtime runs them), and the
operators named in `skip`. Any other operator without a legalizer is an
error that names the operator, the function and the variable.
"""
from __future__ import annotations

from typing import Iterable

from ..ir.builder import BlockBuilder
from ..ir.errors import CompilerError, LegalizeError
from ..ir.graph import Call, Op, VarBinding
from ..ir.module import IRModule
from ..ir.visitor import ExprMutator
from ..op.registry import get_op

__all__ = ["LegalizeOps", "LegalizeError", "BUILTINS", "is_left_alone"]

BUILTINS = frozenset({"relax.call_tir", "relax.call_dps_packed", "relax.call_pure_packed",
                      "relax.call_packed", "relax.builtin.alloc_tensor"})
_LOW_LEVEL_PREFIXES = ("relax.memory.", "relax.ccl.", "relax.dist.", "relax.kv.")


def is_left_alone(op_name: str) -> bool:
    """Operators that need no tensor program: builtins and memory ops the VM runs
    directly, collectives and distributed ops (lowered elsewhere), the KV cache's ops
    (runtime functions over a runtime object). They stay as they are unless they have a
    legalizer of their own."""
    return op_name in BUILTINS or op_name.startswith(_LOW_LEVEL_PREFIXES)


def LegalizeOps(mod: IRModule, *, skip: Iterable[str] = ()) -> IRModule:
    """`mod` with every legalizable operator call replaced by its tensor program.

    `skip`: operators (canonical "relax.nn.softmax" or script "R.nn.softmax" names)
    to keep as calls, e.g. for a later pass that dispatches them to a library."""
    skipped = {get_op(name).name for name in skip}
    bb = BlockBuilder(mod)
    changed = {}
    for name, func in mod.graph_functions().items():
        new = _Legalizer(bb, name, skipped).visit_expr(func)
        if new is not func:
            changed[name] = new
    for name, new in changed.items():     # after all add_func calls: update_func resets bb's index
        bb.update_func(name, new)
    return bb.get()


class _Legalizer(ExprMutator):
    def __init__(self, bb: BlockBuilder, func_name: str, skipped: set[str]):
        super().__init__()
        self.bb = bb
        self.func_name = func_name
        self.skipped = skipped
        self.var_name = "the return value"

    def visit_var_binding(self, binding: VarBinding):
        outer, self.var_name = self.var_name, f"variable {binding.var.name_hint!r}"
        try:
            return super().visit_var_binding(binding)
        finally:
            self.var_name = outer

    def visit_call(self, call: Call):
        call = super().visit_call(call)
        if not isinstance(call.op, Op):
            return call
        opdef = get_op(call.op.name)
        if opdef.name in self.skipped:
            return call
        if opdef.legalize is None:
            if is_left_alone(opdef.name):
                return call
            raise LegalizeError(f"{self.where(opdef.script)}: operator {opdef.name} has no "
                                f"legalization; add one with @{opdef.constructor.__name__}"
                                f".legalizer in compiler/op, or pass skip=[{opdef.script!r}]")
        try:
            new = opdef.legalize(self.bb, call)
        except CompilerError as e:
            raise LegalizeError(f"{self.where(opdef.script)}: {e}") from e
        if new.struct_info is None:
            raise LegalizeError(f"{self.where(opdef.script)}: the legalizer returned "
                                f"{type(new).__name__} without struct info")
        return new

    def where(self, script: str) -> str:
        return f"LegalizeOps: function {self.func_name!r}, {self.var_name} = {script}(...)"

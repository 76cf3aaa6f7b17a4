"""From a model to an IRModule: `export`, the input specs, and sharding plans.

    mod = nn.export(model, {"prefill": ("forward", {"input_ids": nn.spec.Tensor(("n",), "int64"),
                                                    "cache": nn.spec.Object()}),
                            "decode": ("forward", {...})})

Each entry becomes a graph function that calls a method of the model on its inputs:
the one named in the entry, else the one of the entry's name, else `forward`. The functions take the inputs first, then
every parameter of the model in `named_parameters()` order, as ordinary parameters
(named like the dotted name, dots as underscores), so every pass, the printer and
`compiler.build` work on the result unchanged; the module attr "model_parameters"
keeps the dotted names. Symbolic dims named in the specs ("n") are one size variable
per function: one build serves every length.

With a mesh (`nn.shard(model, mesh, plan)`, or placements set on layers and
`model.mesh`), placed parameters are typed `R.DTensor(shape, dtype, "mesh[0]", p)` and
the mesh goes into the module's global infos; PropagateSharding places the rest.

Pipelines: with several meshes (`nn.pipeline(model, stages, size)`, or a list as
`model.mesh`), each parameter is on the mesh its module was put on (`nn.stage(layer,
1)`: "mesh[1]", replicated there unless placed), and the traced function runs as
stages in that order (compiler/distributed/stages.py: the first operation reading a
parameter of mesh[1] starts stage 1; values the later stages read cross over).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

from ..distributed.mesh import DeviceMesh
from ..ir import graph as G
from ..ir.attrs import Attrs
from ..ir.builder import BlockBuilder
from ..ir.errors import CompilerError, ShardingError
from ..ir.module import IRModule
from ..ir.struct_info import DTensorStructInfo, ObjectStructInfo, TensorStructInfo, placement_spec
from . import core
from .core import Module, Parameter, Tensor


class spec:
    """Input specs of exported functions."""

    @dataclass(frozen=True)
    class Tensor:
        """A tensor input; dims are ints or names of symbolic sizes ("n")."""
        shape: tuple
        dtype: str = "float32"

    @dataclass(frozen=True)
    class Object:
        """A runtime object input (the KV cache)."""


def _param_var_name(dotted: str) -> str:
    return dotted.replace(".", "_")


def _input_var(name: str, s: Any, sizes: dict) -> G.Var:
    if isinstance(s, spec.Tensor):
        dims = tuple(sizes.setdefault(d, BlockBuilder.size_var(d)) if isinstance(d, str) else int(d)
                     for d in s.shape)
        return G.Var(name, TensorStructInfo(dims, s.dtype))
    if isinstance(s, spec.Object):
        return G.Var(name, ObjectStructInfo())
    raise CompilerError(f"nn.export: input {name!r} has spec {s!r}; expected nn.spec.Tensor(shape, "
                        "dtype) or nn.spec.Object()")


def _param_sinfo(name: str, p: Parameter, meshes: Sequence[DeviceMesh]):
    t = TensorStructInfo(p.shape, p.dtype)
    if not meshes or (p.placement is None and len(meshes) == 1):
        return t
    if not 0 <= p.mesh < len(meshes):
        raise ShardingError(f"nn.export: parameter {name!r} is on mesh[{p.mesh}] but the model has "
                            f"{len(meshes)} mesh{'es' if len(meshes) != 1 else ''}")
    mesh = meshes[p.mesh]
    placement = p.placement if p.placement is not None else placement_spec("R" * mesh.ndim, len(p.shape))
    if len(placement) != mesh.ndim:
        raise ShardingError(f"nn.export: parameter {name!r} has placement "
                            f"{''.join(map(str, placement))!r} for a mesh of {mesh.ndim} axes "
                            f"(shape {mesh.shape})")
    return DTensorStructInfo(t, f"mesh[{p.mesh}]", placement)


def meshes_of(model: Module, mesh=None) -> list[DeviceMesh]:
    """The model's meshes: `mesh` (one DeviceMesh or a list), else `model.mesh`; [] for none."""
    mesh = mesh if mesh is not None else getattr(model, "mesh", None)
    if mesh is None:
        return []
    return list(mesh) if isinstance(mesh, (list, tuple)) else [mesh]


def export(model: Module, functions: Mapping[str, Union[Mapping[str, Any], tuple]],
           mesh: Optional[DeviceMesh] = None) -> IRModule:
    """The IRModule of `model`'s methods (see the module docstring). `functions` maps a
    function name to its inputs' specs ({arg: spec}: the method of that name, or
    `forward`) or to (method name, {arg: spec})."""
    meshes = meshes_of(model, mesh)
    named = list(model.named_parameters())
    bb = BlockBuilder()
    for fname, entry in functions.items():
        method_name, specs = entry if isinstance(entry, tuple) else \
            (fname if callable(getattr(model, fname, None)) else "forward", entry)
        method = getattr(model, method_name, None)
        if not callable(method):
            raise CompilerError(f"nn.export: {type(model).__name__} has no method {method_name!r} "
                                f"for function {fname!r}")
        sizes: dict = {}
        inputs = [_input_var(n, s, sizes) for n, s in specs.items()]
        pvars = {id(p): G.Var(_param_var_name(n), _param_sinfo(n, p, meshes)) for n, p in named}
        params = inputs + [pvars[id(p)] for _, p in named]
        core._local.trace = core._Trace(bb, pvars)
        try:
            with bb.function(fname, params):
                with bb.dataflow():
                    out = method(*[Tensor(v) for v in inputs])
                    outs = out if isinstance(out, (tuple, list)) else (out,)
                    emitted = [bb.emit_output(o.expr) for o in outs]
                bb.emit_func_output(emitted if isinstance(out, (tuple, list)) else emitted[0])
        finally:
            core._local.trace = None
    mod = bb.get()
    attrs = dict(mod.attrs) if mod.attrs else {}
    attrs["model_parameters"] = [n for n, _ in named]
    infos = {"mesh": meshes} if meshes else {}
    return IRModule(mod.functions, Attrs(attrs), Attrs(infos) if infos else mod.global_infos)


def shard(model: Module, mesh: Union[DeviceMesh, int], plan: Mapping[str, str]) -> Module:
    """Place `model`'s parameters over `mesh` (a DeviceMesh, or a number of devices for a
    1-D mesh) by a plan: dotted-name patterns ("*.q_proj.weight", fnmatch syntax) ->
    placement ("S[0]"); the first matching pattern wins, unmatched parameters keep what
    their layer set (if anything). Activations are left to propagation. Returns model."""
    if isinstance(mesh, int):
        mesh = DeviceMesh((mesh,), tuple(range(mesh)))
    for name, p in model.named_parameters():
        for pattern, placement in plan.items():
            if fnmatch.fnmatchcase(name, pattern):
                p.placement = placement_spec(placement, len(p.shape))
                break
    model.mesh = mesh
    return model


def stage(module: Union[Module, Parameter], mesh: int) -> Union[Module, Parameter]:
    """Put `module`'s parameters (or one parameter) on the model's mesh `mesh` (an index
    into its list of meshes: a pipeline stage). Returns it."""
    params = [module] if isinstance(module, Parameter) else module.parameters()
    for p in params:
        p.mesh = int(mesh)
    return module


def pipeline(model: Module, stages: int, size: int) -> list[DeviceMesh]:
    """Give `model` one 1-D mesh of `size` devices per pipeline stage, disjoint and in
    order (stage s on devices s * size .. (s + 1) * size - 1), as `model.mesh`; put its
    modules on them with `stage`. Returns the meshes."""
    if not (isinstance(stages, int) and stages >= 1 and isinstance(size, int) and size >= 1):
        raise ShardingError(f"nn.pipeline: stages and size must be positive ints, got {stages!r} and {size!r}")
    model.mesh = [DeviceMesh((size,), range(s * size, (s + 1) * size)) for s in range(stages)]
    return model.mesh


def store_weights(model: Module, plan: Mapping[str, Optional[str]]) -> Module:
    """Keep `model`'s parameters in weight formats by a plan: dotted-name patterns
    (fnmatch syntax) -> format ("q4_1", "bfloat16", ...; None: as declared); the first
    matching pattern wins (see Parameter.store). Returns model."""
    for name, p in model.named_parameters():
        for pattern, fmt in plan.items():
            if fnmatch.fnmatchcase(name, pattern):
                if fmt is not None:
                    p.store(fmt)
                break
    return model


__all__ = ["spec", "export", "shard", "stage", "pipeline", "store_weights"]

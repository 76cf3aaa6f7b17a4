"""Placements: how a tensor lies over each axis of a device mesh. One model for the
compiler (struct info, sharding propagation, lowering, the report) and the runtime
(`DModule` placing arguments and assembling results); the compiler imports it from here.

One placement per mesh axis: `Shard(dim)` splits tensor dim `dim` evenly over the
axis, `Replicate()` keeps a whole copy on each of its devices, `Partial(op)` holds a
pending reduction (each device has a part; the value is their sum, max, min or
product). A `PlacementSpec` is the tuple of them, one per mesh axis. The text form is
the script's and the error messages': "S[1]", "R", "P[sum]", concatenated per mesh
axis ("S[0]R" on a 2-D mesh).

`Layout` is a spec resolved against a mesh shape and a tensor rank: the shard factor
of every dim, local shapes, and each worker's block of the global array.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from .errors import PlacementError

REDUCE_OPS = ("sum", "max", "min", "prod")


@dataclass(frozen=True, slots=True)
class Shard:
    """Tensor dim `dim` split evenly over the mesh axis (the first device the first part)."""
    dim: int

    def __str__(self) -> str:
        return f"S[{self.dim}]"


@dataclass(frozen=True, slots=True)
class Replicate:
    """A whole copy on every device of the mesh axis."""

    def __str__(self) -> str:
        return "R"


@dataclass(frozen=True, slots=True)
class Partial:
    """Every device of the mesh axis holds a part; the value is their `op`-reduction."""
    op: str = "sum"

    def __post_init__(self):
        if self.op not in REDUCE_OPS:
            raise PlacementError(f"Partial: unknown reduction {self.op!r}; expected one of {REDUCE_OPS}")

    def __str__(self) -> str:
        return f"P[{self.op}]"


Placement = Union[Shard, Replicate, Partial]
PlacementSpec = tuple[Placement, ...]   # one entry per mesh axis

_TOKEN = re.compile(r"S\[(-?\d+)\]|R|P\[(\w+)\]")


def parse_placement(text: Union[str, PlacementSpec]) -> PlacementSpec:
    """"S[0]R" -> (Shard(0), Replicate()); a spec is returned as a tuple."""
    if not isinstance(text, str):
        return tuple(text)
    out: list[Placement] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise PlacementError(
                f"bad placement text {text!r} at position {pos}: expected 'S[dim]', 'R' or 'P[op]' "
                f"per mesh axis, e.g. 'S[1]' or 'S[0]R'")
        if m.group(1) is not None:
            out.append(Shard(int(m.group(1))))
        elif m.group(2) is not None:
            out.append(Partial(m.group(2)))
        else:
            out.append(Replicate())
        pos = m.end()
    if not out:
        raise PlacementError("empty placement text; expected one placement per mesh axis, e.g. 'R'")
    return tuple(out)


def format_placement(spec: Union[str, PlacementSpec]) -> str:
    """(Shard(0), Replicate()) -> "S[0]R"."""
    return spec if isinstance(spec, str) else "".join(str(p) for p in spec)


def normalize_placement(spec: Union[str, PlacementSpec], ndim: int) -> PlacementSpec:
    """`spec` with negative shard dims resolved against a tensor of rank `ndim`, checked
    to be in range."""
    spec = parse_placement(spec)
    out = []
    for p in spec:
        if isinstance(p, Shard):
            d = p.dim + ndim if p.dim < 0 else p.dim
            if not 0 <= d < max(ndim, 1):
                raise PlacementError(f"placement {format_placement(spec)}: Shard dim {p.dim} is out of "
                                     f"range for a tensor of rank {ndim}")
            p = Shard(d)
        out.append(p)
    return tuple(out)


def mesh_coordinate(index: int, mesh_shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major coordinate of position `index` (a worker id on a mesh of workers 0..N-1)."""
    coord = []
    for extent in reversed(tuple(mesh_shape)):
        coord.append(index % extent)
        index //= extent
    return tuple(reversed(coord))


class Layout:
    """A placement on a mesh of `mesh_shape` for a tensor of rank `ndim`.

    `factors[d]`: how many parts dim d is split into (the product of the extents of
    the mesh axes that shard it). Dims sharded by several axes are split by the first
    axis, then within that by the next."""

    __slots__ = ("spec", "mesh_shape", "ndim", "factors")

    def __init__(self, placement: Union[str, PlacementSpec, None], mesh_shape: Sequence[int], ndim: int):
        self.mesh_shape = tuple(int(s) for s in mesh_shape)
        spec = parse_placement(placement) if placement is not None else \
            (Replicate(),) * len(self.mesh_shape)
        if len(spec) != len(self.mesh_shape):
            raise PlacementError(f"placement {format_placement(spec)!r} has {len(spec)} entries for a "
                                 f"mesh of shape {self.mesh_shape} ({len(self.mesh_shape)} axes)")
        self.spec = normalize_placement(spec, ndim)
        self.ndim = ndim
        factors = [1] * ndim
        for axis, p in enumerate(self.spec):
            if isinstance(p, Shard):
                factors[p.dim] *= self.mesh_shape[axis]
        self.factors = tuple(factors)

    @property
    def text(self) -> str:
        return format_placement(self.spec)

    @property
    def replicated(self) -> bool:
        return all(isinstance(p, Replicate) for p in self.spec)

    @property
    def partial(self) -> bool:
        return any(isinstance(p, Partial) for p in self.spec)

    def shard_axes(self, dim: int) -> list[int]:
        """The mesh axes that shard tensor dim `dim`, in axis order."""
        return [a for a, p in enumerate(self.spec) if isinstance(p, Shard) and p.dim == dim]

    def single_shard_dim(self) -> Optional[int]:
        """The dim when exactly one mesh axis shards, it spans every device and nothing is
        partial: a plain 1-D split of the array over all workers."""
        shards = [(a, p.dim) for a, p in enumerate(self.spec) if isinstance(p, Shard)]
        if len(shards) == 1 and not self.partial and \
                self.mesh_shape[shards[0][0]] == math.prod(self.mesh_shape):
            return shards[0][1]
        return None

    def local_shape(self, shape: Sequence[Any]) -> tuple:
        """One device's shape: each sharded dim divided by its factor (`//` on whatever
        the dims are: ints, or the compiler's symbolic expressions)."""
        return tuple(d // f if f > 1 else d for d, f in zip(shape, self.factors))

    def check(self, shape: Sequence[int], what: str) -> None:
        """PlacementError naming `what` unless every sharded dim of the integer `shape`
        divides evenly over its devices."""
        for d, f in enumerate(self.factors):
            if f > 1 and shape[d] % f:
                raise PlacementError(
                    f"{what}: dim {d} of shape {tuple(shape)} is {shape[d]}, which is not divisible "
                    f"by the {f} devices it is split over (placement {self.text!r} on a mesh of "
                    f"shape {self.mesh_shape})")

    def block(self, device: int, shape: Sequence[int]) -> tuple[slice, ...]:
        """The block of a global array of `shape` held by the device at position `device`
        of the mesh (row-major)."""
        coord = mesh_coordinate(device, self.mesh_shape)
        start, size = [0] * len(shape), list(shape)
        for a, p in enumerate(self.spec):
            if isinstance(p, Shard):
                size[p.dim] //= self.mesh_shape[a]
                start[p.dim] += coord[a] * size[p.dim]
        return tuple(slice(s, s + n) for s, n in zip(start, size))

    def is_lead(self, device: int) -> bool:
        """Whether the device holds a distinct piece (coordinate 0 along replicated axes)."""
        coord = mesh_coordinate(device, self.mesh_shape)
        return all(c == 0 for c, p in zip(coord, self.spec) if isinstance(p, Replicate))

    def __eq__(self, other) -> bool:
        return isinstance(other, Layout) and (self.spec, self.mesh_shape, self.ndim) == \
            (other.spec, other.mesh_shape, other.ndim)

    def __hash__(self) -> int:
        return hash((self.spec, self.mesh_shape, self.ndim))

    def __repr__(self) -> str:
        return f"Layout({self.text!r}, mesh_shape={self.mesh_shape}, ndim={self.ndim})"

"""Placements: how a tensor is laid out over each axis of a device mesh.

One placement per mesh axis: `Shard(dim)` splits tensor dim `dim` evenly over that
axis, `Replicate()` keeps a full copy on each device of the axis, `Partial(op)`
holds a pending reduction (each device has a partial value; the true value is their
sum/max/...). Text form, as in the script: "S[1]", "R", "P[sum]", concatenated per
mesh axis: "S[0]R" for a 2-D mesh.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from ..ir.errors import ShardingError

REDUCE_OPS = ("sum", "max", "min", "prod")


@dataclass(frozen=True, slots=True)
class Shard:
    dim: int

    def __str__(self) -> str:
        return f"S[{self.dim}]"


@dataclass(frozen=True, slots=True)
class Replicate:
    def __str__(self) -> str:
        return "R"


@dataclass(frozen=True, slots=True)
class Partial:
    op: str = "sum"

    def __post_init__(self):
        if self.op not in REDUCE_OPS:
            raise ShardingError(f"Partial: unknown reduction {self.op!r}; expected one of {REDUCE_OPS}")

    def __str__(self) -> str:
        return f"P[{self.op}]"


Placement = Union[Shard, Replicate, Partial]
PlacementSpec = tuple[Placement, ...]   # one entry per mesh axis

_TOKEN = re.compile(r"S\[(-?\d+)\]|R|P\[(\w+)\]")


def parse_placement(text: str) -> PlacementSpec:
    """"S[0]R" -> (Shard(0), Replicate()). Raises ShardingError on malformed text."""
    if isinstance(text, tuple):
        return text
    out: list[Placement] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ShardingError(
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
        raise ShardingError("empty placement text; expected one placement per mesh axis, e.g. 'R'")
    return tuple(out)


def format_placement(spec: PlacementSpec) -> str:
    return "".join(str(p) for p in spec)


def normalize_placement(spec: PlacementSpec | str, ndim: int) -> PlacementSpec:
    """Resolve negative shard dims against a tensor of rank `ndim` and check bounds."""
    spec = parse_placement(spec) if isinstance(spec, str) else spec
    out = []
    for p in spec:
        if isinstance(p, Shard):
            d = p.dim + ndim if p.dim < 0 else p.dim
            if not 0 <= d < max(ndim, 1):
                raise ShardingError(f"placement {format_placement(spec)}: Shard dim {p.dim} is out of "
                                    f"range for a tensor of rank {ndim}")
            p = Shard(d)
        out.append(p)
    return tuple(out)

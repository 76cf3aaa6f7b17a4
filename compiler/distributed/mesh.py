"""Device meshes: an N-D arrangement of device ids, stored in the module's global
infos under "mesh" and referred to as "mesh[0]", "mesh[1]", ..."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir.errors import ShardingError
from ..ir.struct_info import parse_mesh_ref


@dataclass(frozen=True, slots=True)
class DeviceMesh:
    """`shape` is the mesh's extent per axis; `device_ids` the worker ids, row-major."""
    shape: tuple[int, ...]
    device_ids: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        ids = self.device_ids
        if isinstance(ids, range):
            ids = tuple(ids)
        object.__setattr__(self, "device_ids", tuple(int(i) for i in ids))
        if math.prod(self.shape) != len(self.device_ids):
            raise ShardingError(f"DeviceMesh: shape {self.shape} holds {math.prod(self.shape)} devices "
                                f"but {len(self.device_ids)} device ids were given: {self.device_ids}")

    @property
    def size(self) -> int:
        return len(self.device_ids)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def coordinate(self, worker: int) -> tuple[int, ...]:
        """Mesh coordinate of a worker id."""
        idx = self.device_ids.index(worker)
        coord = []
        for extent in reversed(self.shape):
            coord.append(idx % extent)
            idx //= extent
        return tuple(reversed(coord))


def lookup_mesh(global_infos, ref: str) -> DeviceMesh:
    """The DeviceMesh a reference such as "mesh[0]" names in a module's global infos."""
    key, index = parse_mesh_ref(ref)
    meshes = global_infos.get(key) if global_infos is not None else None
    if not meshes or index >= len(meshes):
        have = len(meshes) if meshes else 0
        raise ShardingError(f"device mesh {ref!r} is not defined: the module's global infos have "
                            f"{have} entr{'y' if have == 1 else 'ies'} under {key!r}; declare it with "
                            f"I.module_global_infos({{'{key}': [R.device_mesh((2,), I.Range(0, 2))]}})")
    return meshes[index]

"""`disco.load_shards(sess, "weights.safetensors", placements)`: each worker gets only
its slice of each tensor.

The workers read the file themselves: each memory-maps it and copies out the block its
placement gives it, so no tensor passes through the controller or the command channel
and no process materialises a whole sharded tensor. (The path must be readable by every
worker: the same host, or a shared file system across hosts.)

The safetensors format is read directly (an 8-byte little-endian header length, a JSON
header of name -> dtype, shape, data_offsets, then the raw data), so loading needs
neither the `safetensors` package nor torch.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Optional, Sequence

import numpy as np

from disco._context import current_context
from disco.errors import DiscoError
from disco.registry import register_func

_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
           "BOOL": "bool"}


def read_header(path: str) -> tuple[dict, int]:
    """The safetensors header of `path` (name -> entry) and the offset where data begins."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, struct.error, ValueError) as e:
        raise DiscoError(f"cannot read safetensors file {path!r}: {e}") from e
    header.pop("__metadata__", None)
    return header, 8 + size


def _np_dtype(code: str, path: str, name: str):
    if code not in _DTYPES:
        raise DiscoError(f"{path!r}: tensor {name!r} has dtype {code}, which disco cannot load "
                         f"(supported: {', '.join(_DTYPES)})")
    if code == "BF16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_DTYPES[code])


def open_tensor(path: str, name: str, header: Optional[dict] = None, start: Optional[int] = None):
    """A read-only memory map of tensor `name` in `path` (no copy)."""
    if header is None:
        header, start = read_header(path)
    if name not in header:
        raise DiscoError(f"{path!r} has no tensor {name!r}; it has {sorted(header)}")
    e = header[name]
    dtype = _np_dtype(e["dtype"], path, name)
    begin, end = e["data_offsets"]
    shape = tuple(e["shape"])
    if end - begin == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)


def _files(path: str) -> list[str]:
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise DiscoError(f"directory {path!r} holds no .safetensors file")
        return files
    return [path]


@register_func("disco.shards.load", override=True)
def _load_on_worker(path: str, name: str, placement: str, mesh_shape):
    """On a worker: its block of tensor `name` under `placement` (copied out of the map)."""
    from disco.dmodule import check_fits
    from disco.placement import Layout
    arr = open_tensor(path, name)
    layout = Layout(placement, tuple(mesh_shape), arr.ndim)
    check_fits(layout, arr.shape, f"{path!r}: tensor {name!r}")
    return np.ascontiguousarray(arr[layout.block(current_context().worker_id, arr.shape)])


def load_shards(sess_or_path: Any, path_or_placements: Any, placements: Any = None, *,
                mesh_shape: Optional[Sequence[int]] = None, names: Optional[Sequence[str]] = None):
    """Place the tensors of a safetensors file (or of every one in a directory) on the
    session's workers: `load_shards(sess, path, placements)` (or `(path, placements, sess)`).

    `placements`: name -> placement text ("S[1]", "R", "S[0]R", ...), or a DModule or an
    Executable (the placements of its "main" recorded at build time; parameters absent
    from the file, such as the inputs, are skipped). Only the named tensors are loaded
    (all of them, replicated, when `placements` is empty); `names` limits the set.
    Returns name -> DTensorRef (fetch() gives the global tensor)."""
    from disco.dmodule import DModule, DTensorRef, adopt, check_fits
    from disco.placement import Layout
    from disco.session.base import Session
    if isinstance(sess_or_path, Session):
        sess, path, placements = sess_or_path, path_or_placements, placements
    else:
        path, placements, sess = sess_or_path, path_or_placements, placements
    if not isinstance(sess, Session):
        raise DiscoError(f"load_shards: expected a Session, got {type(sess).__name__}")
    if hasattr(placements, "metadata") and hasattr(placements, "functions"):   # an Executable
        dist = placements.metadata.get("distributed") or {}
        main = dist.get("functions", {}).get("main", {})
        mesh_shape = mesh_shape or dist.get("mesh_shape")
        placements = {p["name"]: p["placement"] for p in main.get("params", ())
                      if p.get("placement") is not None}
        required = False
    else:
        required = not isinstance(placements, DModule)   # a module's inputs need not be in the file
    if isinstance(placements, DModule):
        mesh_shape = mesh_shape or placements.mesh_shape
        placements = placements.placements("main")
    placements = dict(placements or {})
    mesh_shape = tuple(mesh_shape or (sess.num_workers,))
    import math
    sess.check_mesh_size(math.prod(mesh_shape), f"load_shards({path!r})")
    sess.import_module("disco.shards")
    loader = sess.get_global_func("disco.shards.load")
    out: dict[str, DTensorRef] = {}
    for file in _files(os.fspath(path)):
        header, _ = read_header(file)
        for name, entry in header.items():
            if names is not None and name not in names:
                continue
            if names is None and placements and name not in placements:
                continue
            text = placements.get(name, "R" * len(mesh_shape))
            layout = Layout(text, mesh_shape, len(entry["shape"]))
            check_fits(layout, entry["shape"], f"{file!r}: tensor {name!r}")
            ref = loader(os.path.abspath(file), name, text, list(mesh_shape))
            out[name] = adopt(ref, layout)
    missing = [n for n in (names if names is not None else placements if required else ())
               if n not in out]
    if missing:
        raise DiscoError(f"load_shards: {os.fspath(path)!r} has no tensor named {missing}")
    sess.sync()
    return out


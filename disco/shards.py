"""`disco.load_shards(sess, "weights.safetensors", placements)`: each worker gets only
its slice of each tensor.

The workers read the file themselves: each reads only the bytes of the rows of its block
(disco.llm.checkpoint, with pread), so no tensor passes through the controller or the
command channel and no process materialises a whole sharded tensor. (The path must be
readable by every worker: the same host, or a shared file system across hosts.) The
controller reads the headers only.

Model weights, whose parameters may differ from the checkpoint's tensors (padded,
regrouped), are loaded by disco.llm.weights through the same reader.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from disco._context import current_context
from disco.errors import DiscoError
from disco.llm.checkpoint import open_checkpoint
from disco.registry import register_func


@register_func("disco.shards.load", override=True)
def _load_on_worker(path: str, name: str, placement: str, mesh_shape):
    """On a worker: its block of tensor `name` of the safetensors file `path` under
    `placement`, reading only that block's rows."""
    from disco.dmodule import check_fits
    from disco.llm.weights import read_block
    from disco.placement import Layout
    with open_checkpoint(path) as ckpt:
        shape = ckpt.shape(name)
        layout = Layout(placement, tuple(mesh_shape), len(shape))
        check_fits(layout, shape, f"{path!r}: tensor {name!r}")
        return read_block(ckpt, name, list(layout.block(current_context().worker_id, shape)),
                          ckpt.dtype(name))


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
    with open_checkpoint(path) as ckpt:
        for name in ckpt.names():
            if names is not None and name not in names:
                continue
            if names is None and placements and name not in placements:
                continue
            file, shape = ckpt.file_of(name), ckpt.shape(name)
            text = placements.get(name, "R" * len(mesh_shape))
            layout = Layout(text, mesh_shape, len(shape))
            check_fits(layout, shape, f"{file!r}: tensor {name!r}")
            ref = loader(os.path.abspath(file), name, text, list(mesh_shape))
            out[name] = adopt(ref, layout)
    missing = [n for n in (names if names is not None else placements if required else ())
               if n not in out]
    if missing:
        raise DiscoError(f"load_shards: {os.fspath(path)!r} has no tensor named {missing}")
    sess.sync()
    return out


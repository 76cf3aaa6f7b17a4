"""Each worker's block of every parameter, read from the checkpoint through the maps
the compiled model describes.

A parameter spec is JSON-able (compiler.models' `CausalLM.weight_specs()` makes them):

    {"name": "model.layers.0.self_attn.k_proj.weight",    # the parameter
     "source": "model.layers.0.self_attn.k_proj.weight",  # the checkpoint tensor it is made from
     "shape": [256, 64], "dtype": "float32",              # the parameter's global shape, dtype
     "placement": "S[0]",                                 # one per mesh axis ("R": whole everywhere)
     "maps": [{"axis": 0, "op": "repeat_heads", "heads": 2, "repeat": 2}]}

A parameter of one stage of a pipeline has `"device_ids"` (the workers of its stage)
and `"mesh_shape"` (its stage's mesh over them): only those workers load it, each its
block by its index among them; the others hold None.

A parameter kept in a stored weight format (disco/weight_formats.py) has `"format"`
("q4_1", "bfloat16", ...), and its shape and dtype are the stored array's (uint8
(n, k // 32 * block_bytes) for block formats). A block of one is cut at whole blocks
and read from the checkpoint's own blocks when the checkpoint stores the tensor in that
format (`read_raw`, a GGUF file), else read in float32 and quantized here.

`maps` say how the parameter differs from its source, each along one axis, applied to
the source in list order. Each is an index map: the parameter's index along the axis
-> the index of the tensor before the map, or -1 for a zero:

- {"op": "pad", "size": N}: the axis padded with zeros to N (a vocabulary padded to a
  multiple of the degree): i -> i if i < n else -1;
- {"op": "repeat_heads", "heads": H, "repeat": R}: the axis is H heads of n / H each,
  every one repeated R times in a row (KV heads for more devices than KV heads): head
  e -> head e // R;
- {"op": "regroup", "parts": P, "groups": G}: the axis is P parts (GPT-2's fused
  q | k | v), each of G contiguous groups, reordered group-major: group g of part 0,
  group g of part 1, ..., then group g + 1 (so G devices each hold whole heads of all
  parts).

Several parameters may name the same source (tied weights). A device's block is its
`Layout.block` of the parameter; the maps turn the block's index range on each axis
into source indices, so the device reads only the rows it needs (contiguous runs of
source rows, `Checkpoint.read`). Columns (every axis after the first) cannot be read
alone from a row-major file: rows are read a chunk at a time (`CHUNK_BYTES`) and the
block's columns copied out, so memory stays at the block plus one chunk. A block of
whole rows already in the parameter's dtype is read straight into the array returned.

`check_specs(ckpt, specs)` checks the specs against a checkpoint from its headers
alone; the global function "disco.llm.load_weights" (path, specs, mesh_shape) runs on
every worker and returns its blocks; `place_weights(sess, path, specs)` calls it and
gives the controller a DTensorRef per parameter.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
import math
import os
import sys
from typing import Any, Optional, Sequence, Union

import numpy as np

from disco._context import current_context
from disco.errors import PlacementError
from disco.memory import HugePageArena
from disco.placement import Layout, parse_placement
from disco.registry import register_func
from disco.weight_formats import FORMATS, logical_shape, quantize, take_block

from .checkpoint import Checkpoint, CheckpointError, open_checkpoint

CHUNK_BYTES = 16 << 20           # source bytes read at a time when taking columns

DTYPES = ("float32", "float16", "bfloat16")     # parameter and source dtypes

# Tensors a checkpoint may hold that no parameter uses: buffers computed at run time
# (rotary frequencies, GPT-2's causal mask), never weights.
KNOWN_BUFFERS = ("*.rotary_emb.inv_freq", "*.attn.bias", "*.attn.masked_bias")

_MAP_KEYS = {"pad": ("size",), "repeat_heads": ("heads", "repeat"), "regroup": ("parts", "groups")}

Index = Union[slice, np.ndarray]     # a block's index range along one source axis


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


# -- specs ------------------------------------------------------------------------------


def _check_spec(spec: Any) -> None:
    """CheckpointError unless `spec` is a well-formed parameter spec."""
    what = f"weight spec {spec.get('name')!r}" if isinstance(spec, dict) else "weight spec"
    if not isinstance(spec, dict):
        raise CheckpointError(f"{what}: expected a dict, got {type(spec).__name__}")
    for key in ("name", "source", "shape", "dtype", "placement", "maps"):
        if key not in spec:
            raise CheckpointError(f"{what}: no {key!r} key; a spec has name, source, shape, dtype, "
                                  f"placement and maps")
    shape = spec["shape"]
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise CheckpointError(f"{what}: shape must be a list of non-negative ints, got {shape!r}")
    fmt = spec.get("format")
    if fmt is not None:
        if fmt not in FORMATS:
            raise CheckpointError(f"{what}: format {fmt!r} is not one of {', '.join(FORMATS)}")
        if spec["dtype"] != FORMATS[fmt].dtype.name:
            raise CheckpointError(f"{what}: a {fmt} parameter is stored as "
                                  f"{FORMATS[fmt].dtype.name}, but its dtype is {spec['dtype']!r}")
        if FORMATS[fmt].quantized:
            if len(shape) != 2:
                raise CheckpointError(f"{what}: a {fmt} parameter is a 2-D matrix, got shape {shape}")
            if shape[1] % FORMATS[fmt].block_bytes:
                raise CheckpointError(f"{what}: a {fmt} row is whole blocks of "
                                      f"{FORMATS[fmt].block_bytes} bytes; shape {shape}")
            if any(m["op"] == "regroup" or _axis(m, 2) == 1 for m in spec["maps"]
                   if isinstance(m, dict) and isinstance(m.get("axis"), int)):
                raise CheckpointError(f"{what}: maps along the columns of a {fmt} parameter "
                                      f"are not supported ({spec['maps']})")
    elif spec["dtype"] not in DTYPES:
        raise CheckpointError(f"{what}: dtype {spec['dtype']!r} is not one of {DTYPES}")
    parse_placement(spec["placement"])
    if ("device_ids" in spec) != ("mesh_shape" in spec):
        raise CheckpointError(f"{what}: a pipeline stage's parameter has both 'device_ids' and "
                              f"'mesh_shape' (its stage's workers and mesh), got only one")
    if "device_ids" in spec:
        ids, ms = spec["device_ids"], spec["mesh_shape"]
        if (not isinstance(ids, list) or not isinstance(ms, list) or not ms
                or not all(isinstance(i, int) and i >= 0 for i in ids + ms)
                or len(set(ids)) != len(ids) or len(ids) != math.prod(ms)):
            raise CheckpointError(f"{what}: device_ids {ids!r} must be distinct worker ids, one per "
                                  f"device of mesh_shape {ms!r}")
    for m in spec["maps"]:
        op = m.get("op") if isinstance(m, dict) else None
        if op not in _MAP_KEYS:
            raise CheckpointError(f"{what}: map {m!r} has no known op; ops: {sorted(_MAP_KEYS)}")
        for key in ("axis",) + _MAP_KEYS[op]:
            if not isinstance(m.get(key), int):
                raise CheckpointError(f"{what}: map {m!r} needs an int {key!r}")
        if not -len(shape) <= m["axis"] < len(shape):
            raise CheckpointError(f"{what}: map {m!r}: axis out of range for shape {tuple(shape)}")


def logical_spec(spec: dict) -> dict:
    """`spec` as the float32 weights it stands for: for a block format, the logical shape
    (n, k) and dtype float32 (what is read from the checkpoint before quantizing)."""
    fmt = spec.get("format")
    if fmt is None or not FORMATS[fmt].quantized:
        return spec
    return dict(spec, shape=list(logical_shape(tuple(spec["shape"]), fmt)), dtype="float32")


def _axis(m: dict, ndim: int) -> int:
    return m["axis"] + ndim if m["axis"] < 0 else m["axis"]


def _map_size(m: dict, n: int) -> Optional[int]:
    """The axis's size after map `m` of an axis of size `n`; None if `m` cannot apply."""
    op = m["op"]
    if op == "pad":
        return m["size"] if n <= m["size"] else None
    if op == "repeat_heads":
        return n * m["repeat"] if m["heads"] > 0 and m["repeat"] > 0 and n % m["heads"] == 0 else None
    parts, groups = m["parts"], m["groups"]
    return n if parts > 0 and groups > 0 and n % (parts * groups) == 0 else None


def _map_index(m: dict, n: int, i: np.ndarray) -> np.ndarray:
    """Map `m` (of an axis of size `n` before it): indices `i` after it (all >= 0) -> the
    indices before it, -1 for a zero."""
    op = m["op"]
    if op == "pad":
        return np.where(i < n, i, -1)
    if op == "repeat_heads":
        size = n // m["heads"]                                   # head size
        return (i // size) // m["repeat"] * size + i % size
    parts, groups = m["parts"], m["groups"]
    part, group = n // parts, n // (parts * groups)
    block = i // group                                           # g * parts + p
    return (block % parts) * part + (block // parts) * group + i % group


def _expected_source(spec: dict) -> str:
    """The source shape `spec` fits, as text ("(1000, 64)", "(<=1004, 64)")."""
    dims: list = list(spec["shape"])
    for m in reversed(spec["maps"]):
        a = _axis(m, len(dims))
        d = dims[a]
        if isinstance(d, int):
            dims[a] = {"pad": f"<={d}", "repeat_heads": d // max(m.get("repeat", 1), 1)}.get(m["op"], d)
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def _sizes(spec: dict, source_shape: Sequence[int]) -> Optional[list[int]]:
    """Each map's input size along its axis, walking from the source; None unless the
    maps take the source shape to the parameter's."""
    shape, sizes = list(source_shape), []
    if len(shape) != len(spec["shape"]):
        return None
    for m in spec["maps"]:
        a = _axis(m, len(shape))
        sizes.append(shape[a])
        shape[a] = _map_size(m, shape[a])
        if shape[a] is None:
            return None
    return sizes if shape == list(spec["shape"]) else None


def resolve(ckpt: Checkpoint, names: set, source: str) -> Optional[str]:
    """The checkpoint's name for `source`: itself, or without its first component (a
    base model saved without its LM wrapper: GPT-2's "h.0.attn.c_attn.weight" for
    "transformer.h.0.attn.c_attn.weight"); None if neither is there."""
    if source in names:
        return source
    short = source.split(".", 1)[-1]
    return short if "." in source and short in names else None


def _source_problem(ckpt: Checkpoint, names: set, spec: dict) -> tuple[Optional[str], Optional[str]]:
    """(the checkpoint tensor, None) or (None, what is wrong with it for `spec`)."""
    spec = logical_spec(spec)
    name, source = spec["name"], spec["source"]
    found = resolve(ckpt, names, source)
    if found is None:
        close = difflib.get_close_matches(source, sorted(names), n=5, cutoff=0.6)
        return None, (f"no tensor {source!r} (for parameter {name!r})" +
                      (f"; close names: {close}" if close else ""))
    file = ckpt.file_of(found)
    code = getattr(ckpt, "dtype_code", None)
    try:
        dt = ckpt.dtype(found)
    except CheckpointError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        given = code(found) if code else dt
        return None, (f"tensor {found!r} in {file!r} has dtype {given}; parameter {name!r} can be "
                      f"read from {', '.join(DTYPES)} only")
    shape = tuple(ckpt.shape(found))
    if _sizes(spec, shape) is None:
        maps = f" before its maps {spec['maps']}" if spec["maps"] else ""
        return None, (f"tensor {found!r} in {file!r} has shape {shape}; expected "
                      f"{_expected_source(spec)} from the checkpoint (parameter {name!r} of shape "
                      f"{tuple(spec['shape'])}{maps})")
    return found, None


def check_specs(ckpt: Checkpoint, specs: Sequence[dict], complete: bool = True) -> list[str]:
    """The checkpoint tensor of every spec, checked from the headers alone; one
    CheckpointError listing every problem: a malformed spec, a missing tensor (with close
    names), a shape the maps do not take to the parameter's, a dtype that cannot be
    read, and (when `complete`: the specs are the whole model) a tensor no parameter
    uses that is not a known buffer."""
    names = set(ckpt.names())
    problems, found = [], []
    for spec in specs:
        _check_spec(spec)
        tensor, problem = _source_problem(ckpt, names, spec)
        found.append(tensor)
        if problem:
            problems.append(problem)
    if complete:
        used = set(found)
        extra = [n for n in ckpt.names() if n not in used and
                 not any(fnmatch.fnmatchcase(n, p) for p in KNOWN_BUFFERS)]
        for n in extra[:10]:
            problems.append(f"tensor {n!r} in {ckpt.file_of(n)!r} is used by no parameter (is the "
                            f"checkpoint of another model or configuration?)")
        if len(extra) > 10:
            problems.append(f"... and {len(extra) - 10} more tensors used by no parameter")
    if problems:
        raise CheckpointError(f"checkpoint {ckpt.path!r} does not fit the model's {len(specs)} "
                              f"parameters:\n  " + "\n  ".join(problems))
    return found


# -- one block --------------------------------------------------------------------------


def _block_index(spec: dict, sizes: list[int], block: tuple[slice, ...]) -> list[Index]:
    """Per axis, the source indices of `block` (a slice where the axis has no maps, or
    they give one contiguous range; else an int64 array, -1 for zeros)."""
    ndim = len(spec["shape"])
    out: list[Index] = []
    for a, sl in enumerate(block):
        chain = [(m, n) for m, n in zip(spec["maps"], sizes) if _axis(m, ndim) == a]
        if not chain:
            out.append(sl)
            continue
        i = np.arange(sl.start, sl.stop, dtype=np.int64)
        for m, n in reversed(chain):
            valid = i >= 0
            i = np.where(valid, _map_index(m, n, np.where(valid, i, 0)), -1)
        if len(i) and i[0] >= 0 and np.array_equal(i, np.arange(i[0], i[0] + len(i))):
            out.append(slice(int(i[0]), int(i[0]) + len(i)))
        else:
            out.append(i)
    return out


def _runs(rows: Index) -> list[tuple[int, int, int]]:
    """(first source row, end, first output row) of each run of consecutive source rows."""
    if isinstance(rows, slice):
        return [(rows.start, rows.stop, 0)] if rows.stop > rows.start else []
    if not len(rows):
        return []
    cont = np.concatenate([[False], (rows[1:] == rows[:-1] + 1) & (rows[:-1] >= 0)])
    starts = np.flatnonzero(~cont)
    ends = np.append(starts[1:], len(rows))
    return [(int(rows[s]), int(rows[s]) + int(e - s), int(s)) for s, e in zip(starts, ends) if rows[s] >= 0]


def _take(piece: np.ndarray, cols: list[Index]) -> np.ndarray:
    """`piece` (rows of the source) with the block's index along every later axis."""
    piece = piece[(slice(None),) + tuple(c if isinstance(c, slice) else slice(None) for c in cols)]
    for a, c in enumerate(cols, start=1):
        if not isinstance(c, slice):
            piece = np.take(piece, np.maximum(c, 0), axis=a)
    return piece


def read_block(ckpt: Checkpoint, tensor: str, index: list[Index], dtype: np.dtype) -> np.ndarray:
    """The block of checkpoint tensor `tensor` at source `index` (one entry per axis), in
    `dtype`, -1 entries zero."""
    src_shape, src_dtype = tuple(ckpt.shape(tensor)), ckpt.dtype(tensor)
    if not src_shape:
        return ckpt.read(tensor).astype(dtype, copy=False)
    rows, cols = index[0], index[1:]
    whole_rows = all(isinstance(c, slice) and (c.start, c.stop) == (0, n) for c, n in zip(cols, src_shape[1:]))
    if isinstance(rows, slice) and whole_rows and src_dtype == dtype:
        return ckpt.read(tensor, rows)          # exactly the block, read into the array returned
    shape = tuple(i.stop - i.start if isinstance(i, slice) else len(i) for i in index)
    out = np.empty(shape, dtype)
    chunk = max(1, CHUNK_BYTES // max(1, math.prod(src_shape[1:]) * src_dtype.itemsize))
    for first, end, at in _runs(rows):
        for r in range(first, end, chunk):
            n = min(chunk, end - r)
            out[at + r - first: at + r - first + n] = _take(ckpt.read(tensor, slice(r, r + n)), cols)
    for a, i in enumerate(index):               # zeros where a map says -1
        if not isinstance(i, slice) and (i < 0).any():
            out[(slice(None),) * a + (i < 0,)] = 0
    return out


def load_block(ckpt: Checkpoint, spec: dict, mesh_shape: Sequence[int], device: int) -> np.ndarray:
    """The block of parameter `spec` that device `device` of a mesh of `mesh_shape`
    holds (its `Layout.block`), in the spec's dtype, read from `ckpt` through the maps."""
    _check_spec(spec)
    tensor, problem = _source_problem(ckpt, set(ckpt.names()), spec)
    if problem:
        raise CheckpointError(f"checkpoint {ckpt.path!r}: {problem}")
    shape = tuple(spec["shape"])
    layout = Layout(spec["placement"], mesh_shape, len(shape))
    try:
        layout.check(shape, f"parameter {spec['name']!r}")
    except PlacementError as e:
        raise CheckpointError(str(e)) from None
    block = layout.block(device, shape)
    fmt = spec.get("format")
    if fmt is not None and FORMATS[fmt].quantized:
        return _load_stored_block(ckpt, tensor, spec, block)
    sizes = _sizes(spec, ckpt.shape(tensor))
    index = _block_index(spec, sizes, block)
    return read_block(ckpt, tensor, index, _dtype(spec["dtype"]))


def _load_stored_block(ckpt: Checkpoint, tensor: str, spec: dict, block: tuple) -> np.ndarray:
    """The block (rows, byte columns) of a parameter stored in a block format: the
    checkpoint's own blocks when it stores the tensor in that format (a GGUF file), else
    its float block quantized here. Column bounds must fall on whole blocks (a
    row-parallel split of k into shards of whole 32-weight groups)."""
    fmt = FORMATS[spec["format"]]
    rows, cols = block
    if cols.start % fmt.block_bytes or cols.stop % fmt.block_bytes:
        k = spec["shape"][1] // fmt.block_bytes * fmt.block
        raise CheckpointError(
            f"parameter {spec['name']!r}: a {fmt.name} weight splits its input dim only between "
            f"blocks of {fmt.block} weights, but this device's bytes {cols.start}:{cols.stop} of "
            f"{spec['shape'][1]} cut a block (k = {k}, {k // fmt.block} blocks, not divisible by "
            f"the shard count); use a degree that divides {k // fmt.block}")
    logical = logical_spec(spec)
    lcols = slice(cols.start // fmt.block_bytes * fmt.block, cols.stop // fmt.block_bytes * fmt.block)
    index = _block_index(logical, _sizes(logical, ckpt.shape(tensor)), (rows, lcols))
    if getattr(ckpt, "stored_format", lambda _: None)(tensor) != fmt.name:
        return quantize(read_block(ckpt, tensor, index, np.dtype(np.float32)), fmt)
    src_rows, cut = index[0], (lcols.start, lcols.stop)
    n = src_rows.stop - src_rows.start if isinstance(src_rows, slice) else len(src_rows)
    out = np.zeros((n, (cut[1] - cut[0]) // fmt.block * fmt.block_bytes), np.uint8)  # zero bytes: zero weights
    for first, end, at in _runs(src_rows):
        out[at:at + end - first] = take_block(ckpt.read_raw(tensor, slice(first, end)), fmt, cols=cut)
    return out


# -- on the workers, and from the controller --------------------------------------------


def _progress(items: list, show: bool):
    if not show:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc="loading weights", unit="param", file=sys.stderr, leave=False)


@register_func("disco.llm.load_weights", override=True)
def load_weights(checkpoint_path: str, specs: Union[str, Sequence[dict]], mesh_shape: Sequence[int]) -> tuple:
    """On a worker: its block of every parameter of `specs` (a list, or its JSON text), in
    spec order, read from the checkpoint at `checkpoint_path`. Worker 0 shows a progress
    bar when its stderr is a terminal (and tqdm is installed). GPU workers get device
    arrays (each block moved as soon as it is read)."""
    ctx = current_context()
    specs = json.loads(specs) if isinstance(specs, str) else list(specs)
    mesh_shape = tuple(int(s) for s in mesh_shape)
    if ctx.worker_id >= math.prod(mesh_shape):
        raise CheckpointError(f"load_weights: worker {ctx.worker_id} is outside the mesh of shape "
                              f"{mesh_shape}")
    if ctx.device.startswith("cuda"):
        from disco.cuda import to_device as move
    else:
        move = HugePageArena().copy     # weights on 2 MB pages: decode streams them all
    blocks = []
    with open_checkpoint(checkpoint_path) as ckpt:
        check_specs(ckpt, specs)
        show = ctx.worker_id == 0 and sys.stderr.isatty()
        for spec in _progress(specs, show):
            if "device_ids" in spec:        # a pipeline stage's: its workers only
                if ctx.worker_id not in spec["device_ids"]:
                    blocks.append(None)
                    continue
                b = load_block(ckpt, spec, spec["mesh_shape"], spec["device_ids"].index(ctx.worker_id))
            else:
                b = load_block(ckpt, spec, mesh_shape, ctx.worker_id)
            blocks.append(move(b))
    return tuple(blocks)


def place_weights(sess, checkpoint_path: str, specs: Sequence[dict],
                  mesh_shape: Optional[Sequence[int]] = None) -> list:
    """Every worker of `sess` loads its blocks of `specs` from the checkpoint
    ("disco.llm.load_weights"); returns a DTensorRef per spec, in order (arguments for a
    DModule's functions; `fetch()` assembles a parameter; a pipeline stage's parameter
    is a StageTensorRef on its stage's workers). The controller reads only
    the checkpoint's headers, to check the specs first (errors raised here, not on
    the workers). The path must be readable by every worker."""
    from disco.dmodule import adopt
    mesh_shape = tuple(mesh_shape or (sess.num_workers,))
    sess.check_mesh_size(math.prod(mesh_shape), f"place_weights({checkpoint_path!r})")
    path = os.path.abspath(os.fspath(checkpoint_path))
    specs = list(specs)
    with open_checkpoint(path) as ckpt:
        check_specs(ckpt, specs)
    layouts = [Layout(s["placement"], tuple(s.get("mesh_shape", mesh_shape)), len(s["shape"])) for s in specs]
    for s, layout in zip(specs, layouts):
        layout.check(s["shape"], f"parameter {s['name']!r}")
        outside = [w for w in s.get("device_ids", ()) if w >= sess.num_workers]
        if outside:
            raise CheckpointError(f"parameter {s['name']!r} belongs to the pipeline stage on workers "
                                  f"{s['device_ids']}, but the session has {sess.num_workers} workers")
    sess.import_module("disco.dmodule")
    blocks = sess.get_global_func("disco.llm.load_weights")(path, json.dumps(specs), list(mesh_shape))
    get = sess.get_global_func("disco.dmodule.tuple_get")
    out = [adopt(get(blocks, i), layout, s.get("device_ids")) for i, (s, layout) in enumerate(zip(specs, layouts))]
    del blocks
    sess.sync()
    return out

"""Sharding rules: how each operator's tensor dims correspond, einsum-style (each op
attaches its rule beside its struct-info rule; compiler.distributed uses them).

An operator's sharding rule (`@opdef.sharding`, beside its struct-info rule) maps a
call to a `DimSpec`: one label per dim of every tensor operand and of the result.
Dims that share a label are split the same way; the rule is direction-free, so
PropagateSharding uses it forwards (inputs -> result) and backwards (result ->
inputs) alike:

- a label on the result and on inputs: sharding it on the inputs shards the result
  along that dim (elementwise, batch/row/column dims of matmul, ...);
- a label on inputs only, listed in `reduce`: sharding it gives a `Partial(op)`
  result (matmul's contraction dim -> P[sum]; sum/mean -> P[sum]; max/min ->
  P[max]/P[min]; take on a vocabulary-sharded table -> P[sum] through a masked
  lookup). `mean` is a Partial *sum*: the lowering divides each shard's partial
  mean by the shard count (or sums and divides by the global extent);
- a label on inputs only and not in `reduce`, or `None`: the dim must be replicated
  (softmax/norm axes, broadcast dims of size 1, concat/slice axes, ...).

Tensor operands are the call's arguments with tuples flattened (concat's fields),
non-tensor arguments (shapes, scalars given as PrimValue) are skipped; `inputs` has
one entry per tensor operand. A result that is a tuple (split) uses `output` for
every field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..ir import arith
from ..ir.struct_info import StructInfo, TensorStructInfo, TupleStructInfo, tensor_view
from disco.placement import Partial, Placement, Replicate, Shard

Label = Optional[str]
Labels = tuple[Label, ...]


@dataclass(frozen=True)
class DimSpec:
    """Labels of each tensor operand's dims and of the result's dims."""
    inputs: tuple[Labels, ...]
    output: Labels
    reduce: dict = field(default_factory=dict)     # label -> "sum" | "max" | "min" | "prod"

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(tuple(x) for x in self.inputs))
        object.__setattr__(self, "output", tuple(self.output))

    # placements under the rule, on one mesh axis

    def required_inputs(self, label: Label) -> list[Placement]:
        """For sharding `label` (None: nothing) on a mesh axis: each operand's placement
        on that axis."""
        return [Shard(labels.index(label)) if label is not None and label in labels else Replicate()
                for labels in self.inputs]

    def produced_output(self, label: Label) -> Optional[Placement]:
        """The result's placement on the mesh axis when `label` is sharded there; None
        when the label cannot be sharded (it must be replicated instead)."""
        if label is None:
            return Replicate()
        if label in self.output:
            return Shard(self.output.index(label))
        if label in self.reduce:
            return Partial(self.reduce[label])
        return None

    def shardable_labels(self) -> list[str]:
        """Labels that may be sharded: on the result, or reduced into a Partial."""
        seen: list[str] = []
        for labels in list(self.inputs) + [self.output]:
            for lab in labels:
                if lab is not None and lab not in seen and (lab in self.output or lab in self.reduce):
                    seen.append(lab)
        return seen


# -- reading a call ----------------------------------------------------------------------


tensor_of = tensor_view     # a Tensor's or DTensor's (global) tensor struct info, else None


def tensor_operands(call) -> list:
    """The call's tensor-valued argument expressions, tuples flattened, in order."""
    from ..ir import graph as G
    out = []
    for a in call.args:
        if isinstance(a, G.Tuple):
            out.extend(f for f in a.fields if tensor_of(f.struct_info) is not None)
        elif tensor_of(a.struct_info) is not None:
            out.append(a)
    return out


def _ndims(call) -> list[int]:
    return [tensor_of(a.struct_info).ndim for a in tensor_operands(call)]


def result_tensor(sinfo: StructInfo) -> Optional[TensorStructInfo]:
    if isinstance(sinfo, TupleStructInfo):
        return tensor_of(sinfo.fields[0]) if sinfo.fields else None
    return tensor_of(sinfo)


def _names(prefix: str, n: int) -> Labels:
    return tuple(f"{prefix}{i}" for i in range(n))


def _axes(axis: Any, ndim: int) -> list[int]:
    if axis is None:
        return list(range(ndim))
    if isinstance(axis, (list, tuple)):
        return sorted(int(a) % ndim for a in axis)
    return [int(axis) % ndim]


def _is_one(d) -> bool:
    return arith.as_int(d) == 1


# -- rules shared by many operators -----------------------------------------------------


def elementwise(call) -> DimSpec:
    """One tensor in, same dims out (unary math, astype, *_like)."""
    nd = _ndims(call)
    labels = _names("d", nd[0]) if nd else ()
    return DimSpec([labels] + [() for _ in nd[1:]], labels)


def broadcast(call) -> DimSpec:
    """Numpy broadcasting: dims aligned from the right; an input's size-1 dim that is
    broadcast against a larger one cannot be sharded (label None)."""
    out = result_tensor(call.struct_info)
    ops = [tensor_of(a.struct_info) for a in tensor_operands(call)]
    n = out.ndim
    out_labels = _names("d", n)
    inputs = []
    for t in ops:
        lab = []
        for i in range(t.ndim):
            j = n - t.ndim + i
            d = t.shape[i] if t.shape is not None else None
            od = out.shape[j] if out.shape is not None else None
            if d is not None and _is_one(d) and not (od is not None and _is_one(od)):
                lab.append(None)
            else:
                lab.append(out_labels[j])
        inputs.append(tuple(lab))
    return DimSpec(inputs, out_labels)


def creation(call) -> DimSpec:
    """Results made from shapes and scalars (full, zeros, arange): replicated."""
    out = result_tensor(call.struct_info)
    return DimSpec([() for _ in tensor_operands(call)], (None,) * max(out.ndim, 0))


def opaque(call) -> DimSpec:
    """No knowledge of the operator: every operand and the result replicated."""
    out = result_tensor(call.struct_info)
    return DimSpec([(None,) * n for n in _ndims(call)], (None,) * max(out.ndim if out else 0, 0))


def reduction(kind: Optional[str]):
    """sum/mean/max/min/prod (kind = the Partial op; mean -> "sum", the lowering scales)
    or argmax/argmin (kind None: a sharded reduced dim must be gathered)."""

    def rule(call) -> DimSpec:
        n = _ndims(call)[0]
        labels = _names("d", n)
        axes = _axes(call.attrs.get("axis"), n)
        keep = call.attrs.get("keepdims", False)
        out = tuple((None if i in axes else labels[i]) for i in range(n)
                    if keep or i not in axes)
        reduce = {labels[i]: kind for i in axes} if kind else {}
        return DimSpec([labels], out, reduce)

    return rule


def normalize_over(axes_attr: str):
    """softmax/log_softmax/rms_norm/layer_norm: the normalized dims need the whole row
    (replicated); other dims pass through. Extra operands (weight, gamma, beta) cover
    the trailing normalized dims and are replicated."""

    def rule(call) -> DimSpec:
        nd = _ndims(call)
        n = nd[0]
        labels = list(_names("d", n))
        for a in _axes(call.attrs.get(axes_attr, -1), n):
            labels[a] = None
        return DimSpec([tuple(labels)] + [(None,) * k for k in nd[1:]], tuple(labels))

    return rule


def matmul(call) -> DimSpec:
    """x1 (..., m, k) @ x2 (..., k, n) -> (..., m, n); k is summed (Partial)."""
    a, b = (tensor_of(x.struct_info) for x in tensor_operands(call))
    out = result_tensor(call.struct_info)
    k = "k"
    la = ["m", k] if a.ndim >= 2 else [k]
    lb = [k, "n"] if b.ndim >= 2 else [k]
    batch = out.ndim - (1 if a.ndim >= 2 else 0) - (1 if b.ndim >= 2 else 0)
    bl = _names("b", batch)
    def batch_labels(t):
        nb = t.ndim - 2
        lab = []
        for i in range(max(nb, 0)):
            j = batch - nb + i
            d, od = t.shape[i] if t.shape else None, out.shape[j] if out.shape else None
            lab.append(None if d is not None and _is_one(d) and not (od is not None and _is_one(od))
                       else bl[j])
        return lab
    ia = batch_labels(a) + la
    ib = batch_labels(b) + lb
    o = list(bl) + (["m"] if a.ndim >= 2 else []) + (["n"] if b.ndim >= 2 else [])
    return DimSpec([ia, ib], o, {k: "sum"})


def permute(call) -> DimSpec:
    n = _ndims(call)[0]
    labels = _names("d", n)
    axes = call.attrs.get("axes")
    axes = list(range(n))[::-1] if axes is None else [int(a) % n for a in axes]
    return DimSpec([labels], tuple(labels[a] for a in axes))


def expand_dims(call) -> DimSpec:
    n = _ndims(call)[0]
    labels = list(_names("d", n))
    out_n = result_tensor(call.struct_info).ndim
    new = set(_axes(call.attrs.get("axis"), out_n))
    it = iter(labels)
    return DimSpec([labels], [None if i in new else next(it) for i in range(out_n)])


def squeeze(call) -> DimSpec:
    t = tensor_of(tensor_operands(call)[0].struct_info)
    labels = _names("d", t.ndim)
    axis = call.attrs.get("axis")
    if axis is None:
        gone = {i for i, d in enumerate(t.shape or ()) if _is_one(d)}
    else:
        gone = set(_axes(axis, t.ndim))
    return DimSpec([labels], [labels[i] for i in range(t.ndim) if i not in gone])


def reshape(call) -> DimSpec:
    """Dims are grouped where the products match; in a group of merged/split dims only
    the outermost input dim and the outermost output dim share a label (sharding it
    splits the flattened block into contiguous chunks); other dims are replicated."""
    src = tensor_of(tensor_operands(call)[0].struct_info)
    dst = result_tensor(call.struct_info)
    ins = list(src.shape or ())
    outs = list(dst.shape or ())
    li: list[Label] = [None] * len(ins)
    lo: list[Label] = [None] * len(outs)
    if src.shape is None or dst.shape is None:
        return DimSpec([li], lo)
    i = j = 0
    g = 0
    while i < len(ins) and j < len(outs):
        if _is_one(ins[i]) and not _is_one(outs[j]):
            i += 1
            continue
        if _is_one(outs[j]) and not _is_one(ins[i]):
            j += 1
            continue
        i0, j0 = i, j
        pi, pj = ins[i], outs[j]
        i += 1
        j += 1
        ok = True
        while not arith.prove_equal(pi, pj):
            ci, cj = arith.as_int(pi), arith.as_int(pj)
            if ci is not None and cj is not None:
                if ci < cj and i < len(ins):
                    pi = pi * ins[i]; i += 1
                elif cj < ci and j < len(outs):
                    pj = pj * outs[j]; j += 1
                else:
                    ok = False
                    break
            else:
                ok = False
                break
        if not ok:
            break
        if not (_is_one(ins[i0]) or _is_one(outs[j0])):
            li[i0] = lo[j0] = f"g{g}"
        g += 1
    return DimSpec([li], lo)


def concat(call) -> DimSpec:
    nd = _ndims(call)
    if not nd:      # the fields come as one tuple-typed value: no per-field dims to label
        return opaque(call)
    n = nd[0]
    labels = list(_names("d", n))
    labels[_axes(call.attrs.get("axis", 0), n)[0]] = None
    return DimSpec([tuple(labels)] * len(nd), tuple(labels))


def split(call) -> DimSpec:
    """Every field of the result shares the input's dims except the split axis."""
    n = _ndims(call)[0]
    labels = list(_names("d", n))
    labels[_axes(call.attrs.get("axis", 0), n)[0]] = None
    return DimSpec([tuple(labels)], tuple(labels))


def strided_slice(call) -> DimSpec:
    n = _ndims(call)[0]
    labels = list(_names("d", n))
    for a in _axes(call.attrs.get("axes"), n):
        labels[a] = None
    return DimSpec([tuple(labels)], tuple(labels))


def take(call) -> DimSpec:
    """take(x, indices, axis): result dims = x[:axis] + indices + x[axis+1:]. A table
    sharded along axis 0 (vocabulary-parallel embedding) gives a Partial sum: each
    device looks up only the rows it holds and zero elsewhere (the lowering emits a
    masked take, R.ccl.masked_take)."""
    x, idx = (tensor_of(a.struct_info) for a in tensor_operands(call))
    axis = call.attrs.get("axis")
    xl = list(_names("x", x.ndim))
    il = list(_names("i", idx.ndim))
    if axis is None:        # flattened lookup
        return DimSpec([[None] * x.ndim, il], il)
    axis = int(axis) % x.ndim
    out = xl[:axis] + il + xl[axis + 1:]
    reduce = {xl[axis]: "sum"} if axis == 0 else {}
    return DimSpec([xl, il], out, reduce)


def rotary(call) -> DimSpec:
    """x (..., seq, heads, head_dim), cos/sin (seq, head_dim): seq and heads may be
    sharded; head_dim is rotated in halves and stays whole."""
    nd = _ndims(call)
    n = nd[0]
    xl = list(_names("d", n))
    xl[-1] = None
    return DimSpec([xl, [xl[-3], None], [xl[-3], None]], xl)


def call_tir_rule(call, prim_func) -> DimSpec:
    """Placements of a tensor program from its access patterns: a loop variable used
    as a plain index of the output buffer and of an input buffer is a shared spatial
    dim; a loop variable that indexes inputs only is a reduction dim, which is summed
    (a Partial sum result) when the program is one `init 0; Y = Y + f(...)` block
    and must be replicated otherwise; any other index expression
    (i + 1, i * 2, a constant) makes that dim replicated."""
    from ..ir import tir as T
    from ..ir.visitor import post_order_visit
    nin = len(tensor_operands(call))
    bufs = [p for p in prim_func.params if isinstance(p, T.Buffer)]
    in_bufs, out_bufs = bufs[:nin], bufs[nin:]
    loads: dict = {}
    stores: dict = {}

    def visit(node):
        if isinstance(node, T.BufferLoad):
            loads.setdefault(node.buffer.name, []).append(node.indices)
        elif isinstance(node, T.BufferStore):
            stores.setdefault(node.buffer.name, []).append(node.indices)

    post_order_visit(prim_func.body, visit)
    from ..ir.expr import Var as SymVar

    def plain(indices_list, ndim):
        """Per dim: the loop var name used consistently as the whole index, else None."""
        if not indices_list:
            return [None] * ndim
        out = []
        for d in range(ndim):
            names = {idx[d].name if isinstance(idx[d], SymVar) else None for idx in indices_list}
            out.append(names.pop() if len(names) == 1 else None)
        return out

    out_labels: Labels = ()
    if out_bufs:
        ob = out_bufs[0]
        out_labels = tuple(plain(stores.get(ob.name, []), len(ob.shape)))
        for other in out_bufs[1:]:
            if tuple(plain(stores.get(other.name, []), len(other.shape))) != out_labels:
                out_labels = (None,) * len(ob.shape)
    summed = _summed_iterators(prim_func, out_bufs, out_labels)
    keep = {l for l in out_labels if l is not None} | set(summed)
    inputs = []
    for b in in_bufs:
        lab = plain(loads.get(b.name, []), len(b.shape))
        inputs.append(tuple(l if l in keep else None for l in lab))
    return DimSpec(inputs, out_labels, {l: "sum" for l in summed})


def _summed_iterators(prim_func, out_bufs, out_labels) -> list[str]:
    """Reduction iterators of a program that is one block of the form
    `with T.init(): Y[i..] = 0` / `Y[i..] = Y[i..] + f(inputs)`: a sum whose partial
    sums over slices of those iterators add up to the whole (sharding one gives P[sum])."""
    from ..ir import expr as E
    from ..ir import tir as T
    from ..ir.visitor import post_order_visit
    blocks: list = []
    post_order_visit(prim_func.body, lambda n: blocks.append(n) if isinstance(n, T.Block) else None)
    if len(out_bufs) != 1 or len(blocks) != 1:
        return []
    blk, out = blocks[0], out_bufs[0]
    init, body = blk.init, blk.body
    if not (isinstance(init, T.BufferStore) and isinstance(body, T.BufferStore)
            and init.buffer is out and body.buffer is out
            and isinstance(init.value, (E.IntImm, E.FloatImm)) and init.value.value == 0
            and _same_vars(init.indices, body.indices) and isinstance(body.value, E.Add)):
        return []
    a, b = body.value.a, body.value.b
    acc, rest = (a, b) if isinstance(a, T.BufferLoad) and a.buffer is out else (b, a)
    if not (isinstance(acc, T.BufferLoad) and acc.buffer is out and
            _same_vars(acc.indices, body.indices)):
        return []
    uses: list = []
    post_order_visit(rest, lambda n: uses.append(n) if isinstance(n, T.BufferLoad)
                     and n.buffer is out else None)
    if uses:
        return []
    spatial = {l for l in out_labels if l is not None}
    return [iv.var.name for iv in blk.iter_vars if iv.kind == "R" and iv.var.name not in spatial]


def _same_vars(xs, ys) -> bool:
    return len(xs) == len(ys) and all(x is y for x, y in zip(xs, ys))


__all__ = ["DimSpec", "elementwise", "broadcast", "creation", "opaque", "reduction",
           "normalize_over", "matmul", "permute", "expand_dims", "squeeze", "reshape", "concat",
           "split", "strided_slice", "take", "rotary", "call_tir_rule", "tensor_operands", "tensor_of",
           "result_tensor"]

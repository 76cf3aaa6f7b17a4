"""Shape-manipulating operators: reshape, permute_dims, expand_dims, squeeze, concat,
split, strided_slice, take, broadcast_to, where, astype.

Axes are kept in the attributes as the user wrote them (negative axes stay
negative, so the printed text matches the source) and normalised by the rules.
Symbolic dims follow the policy in infer.py, except reshape, which (as TVM)
requires the element counts to be provably equal (a -1 dim: the count provably
divisible by the other dims), and split into equal sections, which requires the dim
provably divisible. Slicing and splitting at symbolic points assume the bounds are
in range (numpy would clamp them); with constant dims and bounds the result is
exact, clamping included.
"""
from __future__ import annotations

from typing import Any

from ..ir import arith
from ..ir.errors import ShapeError, StructInfoError
from ..ir.expr import IntImm, PrimExpr, as_expr, fmt_expr, fmt_shape, fmt_sinfo
from ..ir.graph import Call
from ..ir.struct_info import StructInfo, TensorStructInfo, TupleStructInfo
from .. import te
from . import infer as I
from ._legalize import axes_of, broadcast_compute, call_te, int_attr, out_shape
from .registry import BROADCAST, ELEMWISE, INJECTIVE, make_call, register_op
from . import sharding as _sharding

_BIG = 2**31 - 1   # bounds at or past this mean "to the end" (as in TVM / numpy slices)


# reshape ----------------------------------------------------------------------------


@register_op("relax.reshape", script="R.reshape", args=("x", "shape"), pattern=INJECTIVE)
def reshape(x, shape) -> Call:
    """`R.reshape(x, R.shape([n * 2, 16]))`; one dim may be -1 (inferred)."""
    op = "R.reshape"
    return make_call("relax.reshape", (I.as_expr_arg(op, x, "x"), I.as_shape_arg(op, shape)))


@reshape.infer
def _reshape(call: Call) -> StructInfo:
    op = "R.reshape"
    x = I.tensor_arg(op, call, 0, "x")
    new = I.shape_values(op, call.args[1], "shape")
    if new is None:
        return I.unknown_tensor(x.dtype, I.shape_ndim(op, call.args[1], "shape"))
    holes = [i for i, d in enumerate(new) if I.is_const(d, -1)]
    bad = [d for d in new if isinstance(d, IntImm) and d.value < -1]
    if len(holes) > 1 or bad:
        raise ShapeError(f"{op}: new shape {fmt_shape(new)} may hold at most one -1 and no "
                         f"other negative dims")
    if x.shape is None:
        return I.unknown_tensor(x.dtype, len(new)) if holes else TensorStructInfo(new, x.dtype)
    in_count = I.product(x.shape)
    if holes:
        dim = _inferred_dim(op, x.shape, new, in_count, holes[0])
        new = new[:holes[0]] + (dim,) + new[holes[0] + 1:]
    else:
        out_count = I.product(new)
        if not I.dims_equal(in_count, out_count):
            # As TVM: a reshape must keep the element count provably (not only possibly).
            hint = "" if I.dims_differ(in_count, out_count) else \
                " (cannot prove them equal; state the relation with R.match_cast)"
            raise ShapeError(f"{op}: cannot reshape x of shape {fmt_shape(x.shape)} "
                             f"({fmt_expr(in_count)} elements) to {fmt_shape(new)} "
                             f"({fmt_expr(out_count)} elements); expected equal counts{hint}")
    return TensorStructInfo(new, x.dtype)



def _inferred_dim(op: str, shape: tuple, new: tuple, in_count: PrimExpr, hole: int) -> PrimExpr:
    """The dim a -1 in `new` stands for: the element count divided by the other dims.
    As TVM, the division must be provably exact; a possibly inexact one (`n * 4`
    elements into rows of 3) is an error, not a silently rounded dim."""
    known = I.product([d for i, d in enumerate(new) if i != hole])
    if I.is_const(known, 1):
        return in_count
    where = (f"{op}: cannot reshape x of shape {fmt_shape(shape)} "
             f"({fmt_expr(in_count)} elements) to {fmt_shape(new)}")
    if I.is_const(known, 0):
        raise ShapeError(f"{where}: the other dims have 0 elements, so -1 is undetermined")
    if isinstance(known, IntImm) and isinstance(in_count, IntImm):
        if in_count.value % known.value:
            raise ShapeError(f"{where}: {in_count.value} is not divisible by {known.value}")
    elif not arith.prove_divisible(in_count, known):
        raise ShapeError(f"{where}: cannot prove {fmt_expr(in_count)} is divisible by "
                         f"{fmt_expr(known)}, so -1 has no exact size; state the relation "
                         f"with R.match_cast (e.g. to a shape whose element count is a "
                         f"multiple of {fmt_expr(known)})")
    return arith.simplify(in_count // known)


reshape.sharding(_sharding.reshape)


def _reshape_groups(out: tuple, inp: tuple) -> list[tuple[range, range]] | None:
    """The dims of the output and of the input in matching runs (the same element
    count, provably), shortest first: [(out dims, input dims), ...]; None when no such
    split exists beyond the whole shape."""
    groups, i, j = [], 0, 0
    while i < len(out) or j < len(inp):
        i0, j0 = i, j
        if i == len(out) or j == len(inp):
            return None
        a, b = [out[i]], [inp[j]]
        i, j = i + 1, j + 1
        while not I.dims_equal(I.product(a), I.product(b)):
            # grow the side whose product is (provably) the smaller; else give up
            pa, pb = I.product(a), I.product(b)
            ca, cb = arith.as_int(pa), arith.as_int(pb)
            if ca is not None and cb is not None:
                grow_out = ca < cb
            elif arith.prove_divisible(pb, pa):
                grow_out = True
            elif arith.prove_divisible(pa, pb):
                grow_out = False
            else:
                return None
            if grow_out:
                if i == len(out):
                    return None
                a.append(out[i])
                i += 1
            else:
                if j == len(inp):
                    return None
                b.append(inp[j])
                j += 1
        # unit dims after a run belong to it (they add no elements)
        groups.append((range(i0, i), range(j0, j)))
    return groups


def reshape_index(i: tuple, out: tuple, inp: tuple) -> tuple:
    """The input's index of output element `i` of a row-major reshape: run by run of
    dims that keep their element count (a split or a merge), so that a reshape that
    splits or merges some dims reads `x[i0, i1 // 64, i1 % 64]`, not an index through
    the flat offset of the whole tensor (whose div/mod chains defeat the C compiler's
    vectorizer)."""
    groups = _reshape_groups(tuple(out), tuple(inp))
    if groups is None:
        return te.unravel_index(te.ravel_index(i, out), inp)
    idx: list = []
    for go, gi in groups:
        sub_out = [out[k] for k in go]
        sub_in = [inp[k] for k in gi]
        idx.extend(te.unravel_index(te.ravel_index([i[k] for k in go], sub_out), sub_in))
    return tuple(idx)


@reshape.legalizer
def _reshape_legalize(bb, call: Call):
    # out[i] = x[unravel(ravel(i, out shape), x shape)]: row-major order is kept.
    shape = out_shape(call)
    return call_te(bb, call, lambda x: te.compute(
        shape, lambda *i: x[reshape_index(i, shape, x.shape)], name="reshape"), call.args[0])

# permute_dims, expand_dims, squeeze -----------------------------------------------------


@register_op("relax.permute_dims", script="R.permute_dims", args=("x",), attrs=("axes",),
             pattern=INJECTIVE)
def permute_dims(x, axes=None) -> Call:
    """`R.permute_dims(x, [1, 0])`; axes=None reverses the dims."""
    return make_call("relax.permute_dims", (I.as_expr_arg("R.permute_dims", x, "x"),),
                     {"axes": I.freeze_axes(axes)})


@permute_dims.infer
def _permute_dims(call: Call) -> StructInfo:
    op = "R.permute_dims"
    x = I.tensor_arg(op, call, 0, "x")
    axes = call.attrs.get("axes")
    if axes is not None and x.ndim >= 0 and len(axes) != x.ndim:
        raise ShapeError(f"{op}: axes {list(axes)} has {len(axes)} entries but x has {x.ndim} "
                         f"dims (shape {fmt_sinfo(x)})")
    ndim = len(axes) if axes is not None else x.ndim
    if ndim < 0:
        return I.unknown_tensor(x.dtype)
    order = tuple(reversed(range(ndim))) if axes is None else \
        I.normalize_axes(op, axes, ndim, "axes", x)
    if x.shape is None:
        return I.unknown_tensor(x.dtype, ndim)
    return TensorStructInfo(tuple(x.shape[a] for a in order), x.dtype)



permute_dims.sharding(_sharding.permute)


@permute_dims.legalizer
def _permute_dims_legalize(bb, call: Call):
    def f(x):
        axes = call.attrs.get("axes")
        order = tuple(reversed(range(x.ndim))) if axes is None else \
            tuple(int_attr(a) % x.ndim for a in axes)

        def element(*i):
            idx = [None] * x.ndim
            for k, a in enumerate(order):     # output dim k is x's dim a
                idx[a] = i[k]
            return x[tuple(idx)]
        return te.compute(out_shape(call), element, name="permute_dims")
    return call_te(bb, call, f, call.args[0])

@register_op("relax.expand_dims", script="R.expand_dims", args=("x",), attrs=("axis",),
             pattern=INJECTIVE)
def expand_dims(x, axis) -> Call:
    """`R.expand_dims(x, axis)`: insert size-1 dims at `axis` (int or list; output positions)."""
    return make_call("relax.expand_dims", (I.as_expr_arg("R.expand_dims", x, "x"),),
                     {"axis": I.freeze_axes(axis)})


@expand_dims.infer
def _expand_dims(call: Call) -> StructInfo:
    op = "R.expand_dims"
    x = I.tensor_arg(op, call, 0, "x")
    axis = call.attrs["axis"]
    axes = (axis,) if not isinstance(axis, tuple) else axis
    if x.ndim < 0:
        return I.unknown_tensor(x.dtype)
    ndim = x.ndim + len(axes)
    where = set(I.normalize_axes(op, axes, ndim, "axis", x))
    if x.shape is None:
        return I.unknown_tensor(x.dtype, ndim)
    dims = iter(x.shape)
    return TensorStructInfo(tuple(IntImm(1) if i in where else next(dims) for i in range(ndim)),
                            x.dtype)



expand_dims.sharding(_sharding.expand_dims)


@expand_dims.legalizer
def _expand_dims_legalize(bb, call: Call):
    shape = out_shape(call)
    new = set(axes_of(call.attrs["axis"], len(shape), "R.expand_dims"))
    return call_te(bb, call, lambda x: te.compute(
        shape, lambda *i: x[tuple(v for k, v in enumerate(i) if k not in new)], name="expand_dims"),
        call.args[0])

@register_op("relax.squeeze", script="R.squeeze", args=("x",), attrs=("axis",),
             pattern=INJECTIVE)
def squeeze(x, axis=None) -> Call:
    """`R.squeeze(x, axis=None)`: drop size-1 dims (all of them when axis is None)."""
    return make_call("relax.squeeze", (I.as_expr_arg("R.squeeze", x, "x"),),
                     {"axis": I.freeze_axes(axis)})


@squeeze.infer
def _squeeze(call: Call) -> StructInfo:
    op = "R.squeeze"
    x = I.tensor_arg(op, call, 0, "x")
    axis = call.attrs.get("axis")
    if x.shape is None:
        if axis is None or x.ndim < 0:
            return I.unknown_tensor(x.dtype)
        axes = I.normalize_axes(op, axis, x.ndim, "axis", x)
        return I.unknown_tensor(x.dtype, x.ndim - len(axes))
    if axis is None:
        if any(not isinstance(d, IntImm) for d in x.shape):
            # A symbolic dim may be 1 at run time: the rank is not known (as in TVM).
            return I.unknown_tensor(x.dtype)
        return TensorStructInfo(tuple(d for d in x.shape if d.value != 1), x.dtype)
    axes = I.normalize_axes(op, axis, x.ndim, "axis", x)
    for a in axes:
        if I.dims_differ(x.shape[a], 1):
            raise ShapeError(f"{op}: cannot squeeze axis {a} of x with shape {fmt_shape(x.shape)}"
                             f": its size is {fmt_expr(x.shape[a])}, expected 1")
    return TensorStructInfo(tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype)



squeeze.sharding(_sharding.squeeze)


@squeeze.legalizer
def _squeeze_legalize(bb, call: Call):
    def f(x):
        axis = call.attrs.get("axis")
        gone = {d for d, s in enumerate(x.shape) if isinstance(s, IntImm) and s.value == 1} \
            if axis is None else set(axes_of(axis, x.ndim, "R.squeeze"))

        def element(*i):
            it = iter(i)
            return x[tuple(IntImm(0) if d in gone else next(it) for d in range(x.ndim))]
        return te.compute(out_shape(call), element, name="squeeze")
    return call_te(bb, call, f, call.args[0])

# concat, split ------------------------------------------------------------------------


@register_op("relax.concat", script="R.concat", args=("tensors",), attrs=("axis",),
             pattern=INJECTIVE)
def concat(tensors, axis=0) -> Call:
    """`R.concat((a, b), axis=0)`; `tensors` is a Tuple expression or a list of tensors."""
    return make_call("relax.concat", (I.as_expr_arg("R.concat", tensors, "tensors"),),
                     {"axis": I.freeze_axes(axis)})


@concat.infer
def _concat(call: Call) -> StructInfo:
    op = "R.concat"
    tup = call.args[0].struct_info
    if not isinstance(tup, TupleStructInfo):
        raise StructInfoError(f"{op}: tensors must be a tuple of tensors, got "
                              f"{type(tup).__name__}")
    if not tup.fields:
        raise ShapeError(f"{op}: tensors is empty; expected at least one tensor")
    named = [(f"tensors[{i}]", I.as_tensor(op, s, f"tensors[{i}]")) for i, s in enumerate(tup.fields)]
    dtype = I.same_dtype(op, named)
    ndims = {s.ndim for _, s in named if s.ndim >= 0}
    if len(ndims) > 1:
        given = ", ".join(f"{n} has shape {fmt_sinfo(s)}" for n, s in named)
        raise ShapeError(f"{op}: ranks differ: {given}; expected equal ranks")
    if not ndims:
        return I.unknown_tensor(dtype)
    ndim = ndims.pop()
    axis = I.normalize_axis(op, call.attrs["axis"], ndim, "axis", named[0][1], "tensors[0]")
    if any(s.shape is None for _, s in named):
        return I.unknown_tensor(dtype, ndim)
    first_name, first = named[0]
    for name, s in named[1:]:
        for i in range(ndim):
            if i != axis and I.dims_differ(first.shape[i], s.shape[i]):
                raise ShapeError(f"{op}: {first_name} has shape {fmt_shape(first.shape)} and "
                                 f"{name} has shape {fmt_shape(s.shape)}; dim {i} differs "
                                 f"(only axis {axis} may differ)")
    total: PrimExpr = named[0][1].shape[axis]
    for _, s in named[1:]:
        total = total + s.shape[axis]
    shape = first.shape[:axis] + (arith.simplify(total),) + first.shape[axis + 1:]
    return TensorStructInfo(shape, dtype)



concat.sharding(_sharding.concat)


@concat.legalizer
def _concat_legalize(bb, call: Call):
    def f(parts):
        shape = out_shape(call)
        axis = axes_of(call.attrs["axis"], len(shape), "R.concat")[0]
        offsets = [IntImm(0)]
        for t in parts[:-1]:
            offsets.append(arith.simplify(offsets[-1] + t.shape[axis]))

        def element(*i):
            def load(j):
                idx = list(i)
                idx[axis] = i[axis] - offsets[j] if j else i[axis]
                return parts[j][tuple(idx)]
            # Nested selects, last part innermost; only the chosen side is read.
            value = load(len(parts) - 1)
            for j in range(len(parts) - 2, -1, -1):
                value = te.select(i[axis] < offsets[j + 1], load(j), value)
            return value
        return te.compute(shape, element, name="concat")
    return call_te(bb, call, f, call.args[0])

@register_op("relax.split", script="R.split", args=("x",), attrs=("indices_or_sections", "axis"),
             pattern=INJECTIVE)
def split(x, indices_or_sections, axis=0) -> Call:
    """`R.split(x, 2, axis=1)` (equal sections) or `R.split(x, [2, 5])` (split points).

    Returns a call whose value is a tuple of tensors."""
    ios = indices_or_sections
    ios = tuple(as_expr(i) if not isinstance(i, int) else i for i in ios) \
        if isinstance(ios, (list, tuple)) else I.freeze_axes(ios)
    return make_call("relax.split", (I.as_expr_arg("R.split", x, "x"),),
                     {"indices_or_sections": ios, "axis": I.freeze_axes(axis)})


@split.infer
def _split(call: Call) -> StructInfo:
    op = "R.split"
    x = I.tensor_arg(op, call, 0, "x")
    ios = call.attrs["indices_or_sections"]
    count = len(ios) + 1 if isinstance(ios, tuple) else ios
    if not isinstance(count, int) or count < 1:
        raise ShapeError(f"{op}: indices_or_sections must be a positive int or a list of "
                         f"split points, got {ios!r}")
    if x.ndim < 0:
        return TupleStructInfo(tuple(I.unknown_tensor(x.dtype) for _ in range(count)))
    axis = I.normalize_axis(op, call.attrs["axis"], x.ndim, "axis", x)
    if x.shape is None:
        return TupleStructInfo(tuple(I.unknown_tensor(x.dtype, x.ndim) for _ in range(count)))
    dim = x.shape[axis]
    if isinstance(ios, int):
        extents = [_section(op, x.shape, axis, ios)] * ios
    else:
        bounds = [IntImm(0)] + [as_expr(i) for i in ios] + [dim]
        extents = [_extent(dim, bounds[i], bounds[i + 1], 1) for i in range(len(ios) + 1)]
    return TupleStructInfo(tuple(
        TensorStructInfo(x.shape[:axis] + (e,) + x.shape[axis + 1:], x.dtype) for e in extents))



def _section(op: str, shape: tuple, axis: int, sections: int) -> PrimExpr:
    """Length of each of `sections` equal parts of `shape[axis]`. The dim must be
    provably divisible (numpy rejects unequal splits; `n // 2` parts of an odd `n`
    would silently drop an element)."""
    dim = shape[axis]
    if sections == 1:
        return dim
    where = (f"{op}: cannot split axis {axis} of x with shape {fmt_shape(shape)} into "
             f"{sections} equal sections")
    if isinstance(dim, IntImm):
        if dim.value % sections:
            raise ShapeError(f"{where} ({dim.value} is not divisible by {sections})")
        return IntImm(dim.value // sections)
    if not arith.prove_divisible(dim, sections):
        raise ShapeError(f"{where}: cannot prove {fmt_expr(dim)} is divisible by {sections}; "
                         f"state the relation with R.match_cast (e.g. to a dim "
                         f"`m * {sections}`) or give split points")
    return arith.simplify(dim // sections)


split.sharding(_sharding.split)


@split.legalizer
def _split_legalize(bb, call: Call):
    def f(x):
        axis = axes_of(call.attrs["axis"], x.ndim, "R.split")[0]
        dim = x.shape[axis]
        ios = call.attrs["indices_or_sections"]
        outs = call.struct_info.fields
        if isinstance(ios, tuple):
            starts = [IntImm(0)] + [_start(dim, b, 1) for b in ios]
        else:
            starts = [arith.simplify(j * outs[0].shape[axis]) if j else IntImm(0) for j in range(ios)]
        return [_slice_compute(x, s.shape, {axis: (b, 1)}, f"split_{j}")
                for j, (s, b) in enumerate(zip(outs, starts))]
    return call_te(bb, call, f, call.args[0])


def _slice_compute(x, shape, starts: dict, name: str):
    """out[i] = x[i], except x[start + i * stride] on the axes in `starts`."""
    def index(d: int, v: PrimExpr) -> PrimExpr:
        if d not in starts:
            return v
        start, stride = starts[d]
        step = v if stride == 1 else v * stride
        return step if isinstance(start, IntImm) and start.value == 0 else start + step

    return te.compute(shape, lambda *i: x[tuple(index(d, v) for d, v in enumerate(i))], name=name)


def _start(dim: PrimExpr, begin: Any, stride: int) -> PrimExpr:
    """The first index `range(dim)[begin::stride]` reads: exact for constants (numpy
    clamping); symbolic dims or bounds are assumed in range, as in `_extent`."""
    b = as_expr(begin)
    if isinstance(dim, IntImm) and isinstance(b, IntImm):
        return IntImm(slice(b.value, None, stride).indices(dim.value)[0])
    if isinstance(b, IntImm):
        if b.value >= _BIG:
            return dim if stride > 0 else arith.simplify(dim - 1)
        if b.value < 0:
            return arith.simplify(dim + b)
    return b

def _extent(dim: PrimExpr, begin: Any, end: Any, stride: int) -> PrimExpr:
    """Length of `range(dim)[begin:end:stride]`: exact for constants, in-bounds otherwise."""
    b, e = as_expr(begin), as_expr(end)
    if isinstance(dim, IntImm) and isinstance(b, IntImm) and isinstance(e, IntImm):
        return IntImm(len(range(*slice(b.value, e.value, stride).indices(dim.value))))
    if isinstance(b, IntImm) and b.value < 0:
        b = dim + b
    if isinstance(e, IntImm):
        if stride > 0 and e.value >= _BIG:
            e = dim
        elif stride < 0 and e.value <= -_BIG:
            e = IntImm(-1)
        elif e.value < 0:
            e = dim + e
    n = e - b if stride > 0 else b - e
    step = abs(stride)
    if step != 1:
        n = (n + (step - 1)) // step
    return arith.simplify(n)


# strided_slice, take ---------------------------------------------------------------------


@register_op("relax.strided_slice", script="R.strided_slice", args=("x",),
             attrs=("axes", "begin", "end", "strides", "assume_inbound"), pattern=INJECTIVE)
def strided_slice(x, axes, begin, end, strides=None, assume_inbound=False) -> Call:
    """`R.strided_slice(x, axes=[1], begin=[0], end=[n], strides=[1])`.

    begin/end entries may be symbolic (PrimExpr); strides must be non-zero ints."""
    op = "R.strided_slice"
    axes_t, begin_t, end_t = (tuple(_bound(v) for v in (a if isinstance(a, (list, tuple)) else [a]))
                              for a in (axes, begin, end))
    strides_t = None if strides is None else tuple(
        _bound(v) for v in (strides if isinstance(strides, (list, tuple)) else [strides]))
    lens = {len(axes_t), len(begin_t), len(end_t)} | ({len(strides_t)} if strides_t else set())
    if len(lens) != 1:
        raise ShapeError(f"{op}: axes, begin, end and strides must have equal lengths, got "
                         f"axes={list(axes_t)}, begin={list(begin_t)}, end={list(end_t)}, "
                         f"strides={strides_t and list(strides_t)}")
    return make_call("relax.strided_slice", (I.as_expr_arg(op, x, "x"),),
                     {"axes": axes_t, "begin": begin_t, "end": end_t, "strides": strides_t,
                      "assume_inbound": bool(assume_inbound)})


def _bound(v: Any) -> Any:
    v = I._int_attr(v)
    return v if isinstance(v, (int, PrimExpr)) else as_expr(v)


@strided_slice.infer
def _strided_slice(call: Call) -> StructInfo:
    op = "R.strided_slice"
    x = I.tensor_arg(op, call, 0, "x")
    a = call.attrs
    strides = a["strides"] or (1,) * len(a["axes"])
    for s in strides:
        if not isinstance(s, int) or s == 0:
            raise ShapeError(f"{op}: strides must be non-zero ints, got {list(strides)}")
    if x.ndim < 0:
        return I.unknown_tensor(x.dtype)
    axes = I.normalize_axes(op, a["axes"], x.ndim, "axes", x)
    if x.shape is None:
        return I.unknown_tensor(x.dtype, x.ndim)
    shape = list(x.shape)
    for ax, b, e, s in zip(axes, a["begin"], a["end"], strides):
        shape[ax] = _extent(x.shape[ax], b, e, s)
    return TensorStructInfo(tuple(shape), x.dtype)



strided_slice.sharding(_sharding.strided_slice)


@strided_slice.legalizer
def _strided_slice_legalize(bb, call: Call):
    def f(x):
        a = call.attrs
        strides = a["strides"] or (1,) * len(a["axes"])
        axes = [int_attr(ax) % x.ndim for ax in a["axes"]]
        starts = {ax: (_start(x.shape[ax], b, int_attr(s)), int_attr(s))
                  for ax, b, s in zip(axes, a["begin"], strides)}
        return _slice_compute(x, out_shape(call), starts, "strided_slice")
    return call_te(bb, call, f, call.args[0])

@register_op("relax.take", script="R.take", args=("x", "indices"), attrs=("axis",),
             pattern=INJECTIVE)
def take(x, indices, axis=None) -> Call:
    """`R.take(x, indices, axis=0)`: gather along `axis` (flattened x when axis is None)."""
    return make_call("relax.take", (I.as_expr_arg("R.take", x, "x"),
                                    I.as_expr_arg("R.take", indices, "indices")),
                     {"axis": I.freeze_axes(axis)})


@take.infer
def _take(call: Call) -> StructInfo:
    op = "R.take"
    x = I.tensor_arg(op, call, 0, "x")
    idx = I.tensor_arg(op, call, 1, "indices")
    I.require_int(op, "indices", idx)
    axis = call.attrs.get("axis")
    if axis is None:
        return TensorStructInfo(idx.shape, x.dtype, idx.ndim)
    if x.ndim < 0:
        return I.unknown_tensor(x.dtype)
    axis = I.normalize_axis(op, axis, x.ndim, "axis", x)
    if x.shape is None or idx.shape is None:
        return I.unknown_tensor(x.dtype, -1 if idx.ndim < 0 else x.ndim - 1 + idx.ndim)
    return TensorStructInfo(x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype)



take.sharding(_sharding.take)


@take.legalizer
def _take_legalize(bb, call: Call):
    def f(x, indices):
        axis = call.attrs.get("axis")

        def position(v, size):
            v = te.cast(v, "int64")
            return te.select(v < 0, v + size, v)     # negative indices count from the end

        if axis is None:
            total = I.product(x.shape)
            return te.compute(out_shape(call), lambda *i: x[te.unravel_index(
                position(indices[i], total), x.shape)], name="take")
        ax = axes_of(axis, x.ndim, "R.take")[0]
        k = indices.ndim

        def element(*i):
            pos = position(indices[i[ax:ax + k]], x.shape[ax])
            return x[i[:ax] + (pos,) + i[ax + k:]]
        return te.compute(out_shape(call), element, name="take")
    return call_te(bb, call, f, call.args[0], call.args[1])

# broadcast_to, where, astype -----------------------------------------------------------


@register_op("relax.broadcast_to", script="R.broadcast_to", args=("x", "shape"),
             pattern=BROADCAST)
def broadcast_to(x, shape) -> Call:
    """`R.broadcast_to(x, R.shape([n, 4]))` with numpy rules."""
    op = "R.broadcast_to"
    return make_call("relax.broadcast_to", (I.as_expr_arg(op, x, "x"), I.as_shape_arg(op, shape)))


@broadcast_to.infer
def _broadcast_to(call: Call) -> StructInfo:
    op = "R.broadcast_to"
    x = I.tensor_arg(op, call, 0, "x")
    target = I.shape_values(op, call.args[1], "shape")
    if target is None:
        return I.unknown_tensor(x.dtype, I.shape_ndim(op, call.args[1], "shape"))
    if x.ndim > len(target):
        raise ShapeError(f"{op}: x has shape {fmt_sinfo(x)} with more dims than the target "
                         f"shape {fmt_shape(target)}")
    if x.shape is not None:
        for i in range(1, x.ndim + 1):
            d, t = x.shape[-i], target[-i]
            if not I.is_const(d, 1) and I.dims_differ(d, t):
                raise ShapeError(f"{op}: cannot broadcast x of shape {fmt_shape(x.shape)} to "
                                 f"{fmt_shape(target)}: dim {-i} is {fmt_expr(d)}, expected "
                                 f"1 or {fmt_expr(t)}")
    return TensorStructInfo(target, x.dtype)



broadcast_to.sharding(_sharding.broadcast)


@broadcast_to.legalizer
def _broadcast_to_legalize(bb, call: Call):
    return call_te(bb, call, lambda x: broadcast_compute(
        lambda v: v, x, shape=out_shape(call), name="broadcast_to"), call.args[0])

@register_op("relax.where", script="R.where", args=("condition", "x1", "x2"), pattern=BROADCAST)
def where(condition, x1, x2) -> Call:
    """`R.where(condition, x1, x2)`: condition is bool; the three shapes broadcast."""
    op = "R.where"
    return make_call("relax.where", (I.as_expr_arg(op, condition, "condition"),
                                     I.as_expr_arg(op, x1, "x1"), I.as_expr_arg(op, x2, "x2")))


@where.infer
def _where(call: Call) -> StructInfo:
    op = "R.where"
    named = [(n, I.tensor_arg(op, call, i, n)) for i, n in enumerate(("condition", "x1", "x2"))]
    if named[0][1].dtype != "bool":
        from ..ir.errors import DTypeError
        raise DTypeError(f"{op}: condition must have dtype bool, got {named[0][1].dtype}")
    dtype = I.same_dtype(op, named[1:])
    shape = I.broadcast_shapes(op, named)
    return I.unknown_tensor(dtype, I.broadcast_ndim(named)) if shape is None else \
        TensorStructInfo(shape, dtype)



where.sharding(_sharding.broadcast)


@where.legalizer
def _where_legalize(bb, call: Call):
    return call_te(bb, call, lambda c, a, b: broadcast_compute(
        te.select, c, a, b, shape=out_shape(call), name="where"), *call.args)

@register_op("relax.astype", script="R.astype", args=("x",), attrs=("dtype",), pattern=ELEMWISE)
def astype(x, dtype) -> Call:
    """`R.astype(x, "float16")`."""
    return make_call("relax.astype", (I.as_expr_arg("R.astype", x, "x"),),
                     {"dtype": I.check_dtype("R.astype", dtype)})


@astype.infer
def _astype(call: Call) -> StructInfo:
    x = I.tensor_arg("R.astype", call, 0, "x")
    return TensorStructInfo(x.shape, call.attrs["dtype"], x.ndim)


astype.sharding(_sharding.elementwise)


@astype.legalizer
def _astype_legalize(bb, call: Call):
    dtype = call.attrs["dtype"]
    return call_te(bb, call, lambda x: te.compute(
        out_shape(call), lambda *i: te.cast(x[i], dtype), name="astype"), call.args[0])

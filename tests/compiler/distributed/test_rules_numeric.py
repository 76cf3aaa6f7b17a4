"""Every sharding rule checked by numbers, as PyTorch's DTensor tests check theirs with
an operator database: for each operator case of test_legalize (random inputs, a numpy
reference), and for every label the operator's rule lets a mesh axis shard, the inputs
are split as the rule requires over simulated shards, numpy computes each shard's
part, and the parts are put together as the rule says the result is placed
(concatenated along a Shard dim, reduced for a Partial). That must equal numpy on the
whole inputs. A rule that claims a dim can be sharded when it cannot fails here."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # test_legalize's cases

from compiler.distributed.placement import Partial, Shard  # noqa: E402
from compiler.ir import Var  # noqa: E402
from compiler.ir.struct_info import TensorStructInfo  # noqa: E402
from compiler.op import get_op  # noqa: E402
from compiler.op.sharding import tensor_operands  # noqa: E402
from test_legalize import CASES, case_name, normal  # noqa: E402

N = 8               # the size "n" takes: divisible by the shard counts below
SHARDS = (2, 4)
_REDUCE = {"sum": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply}


def _concrete(shape):
    return tuple({"n": N, "m": 1}.get(d, d) for d in shape)


def _setup(c):
    """The case's call on concrete shapes, its operands' arrays (or None for a constant),
    and the numpy inputs."""
    rng = np.random.default_rng(7)
    arrays = [gen(rng, _concrete(s), d) for s, d, gen in c.inputs]
    extra = [normal(rng, _concrete(s), d) for s, d in c.needs]
    params = [Var(f"x{k}", TensorStructInfo(_concrete(s), d)) for k, (s, d, _) in enumerate(c.inputs)]
    needs = [Var(f"v{k}", TensorStructInfo(_concrete(s), d)) for k, (s, d) in enumerate(c.needs)]
    call = c.make(N, *params, *needs)
    by_var = {id(p): a for p, a in zip(params, arrays)}
    operands = [by_var.get(id(o)) for o in tensor_operands(call)]
    return call, operands, arrays, extra


def _shard(a: np.ndarray, p, k: int, i: int) -> np.ndarray:
    return np.split(a, k, axis=p.dim)[i] if isinstance(p, Shard) else a


def _local_ref(c, local_inputs, extra, out_shape):
    """Numpy on one shard's inputs. Operators whose shape argument is the result's
    shape take the local one (as LowerToLocalView rewrites it)."""
    name = c.op
    if name == "relax.reshape":
        return local_inputs[0].reshape(out_shape)
    if name == "relax.broadcast_to":
        return np.broadcast_to(local_inputs[0], out_shape)
    return c.ref(*local_inputs, *extra)


def _masked_take(table, idx, start):
    """A vocabulary-sharded lookup: rows this shard holds, zeros for the others
    (R.ccl.masked_take)."""
    local = idx.astype(np.int64) - start
    inside = (local >= 0) & (local < table.shape[0])
    out = np.take(table, np.where(inside, local, 0), axis=0)
    out[~inside] = 0
    return out


def _combine(parts, produced, name, k):
    if isinstance(produced, Shard):
        return np.concatenate(parts, axis=produced.dim)
    total = parts[0].astype(np.float64) if parts[0].dtype.kind == "f" else parts[0]
    for p in parts[1:]:
        total = _REDUCE[produced.op](total, p)
    return total / k if name == "relax.mean" else total    # mean: a Partial sum the lowering scales


def _checks():
    """(case index, label, shard count) for every label a rule lets shard."""
    out = []
    for i, c in enumerate(CASES):
        rule = get_op(c.op).sharding_rule
        if rule is None:
            continue
        call, *_ = _setup(c)
        for label in rule(call).shardable_labels():
            for k in SHARDS:
                out.append((i, label, k))
    return out


CHECKS = _checks()


def test_every_rule_is_checked_on_some_case():
    """Each operator with a sharding rule that lets some dim be sharded has a case here."""
    checked = {CASES[i].op for i, _, _ in CHECKS}
    for i, c in enumerate(CASES):
        rule = get_op(c.op).sharding_rule
        if rule is not None and rule(_setup(c)[0]).shardable_labels():
            assert c.op in checked, case_name(i, c)
    assert {"relax.matmul", "relax.add", "relax.sum", "relax.take", "relax.reshape", "relax.concat",
            "relax.split", "relax.nn.softmax", "relax.nn.rotary_embedding"} <= checked


@pytest.mark.parametrize("i,label,k", CHECKS,
                         ids=[f"{case_name(i, CASES[i])}-{label}-{k}" for i, label, k in CHECKS])
def test_sharded_parts_give_the_whole_result(i, label, k):
    c = CASES[i]
    call, operands, arrays, extra = _setup(c)
    spec = get_op(c.op).sharding_rule(call)
    req, produced = spec.required_inputs(label), spec.produced_output(label)
    for a, p in zip(operands, req):
        if isinstance(p, Shard) and (a is None or a.shape[p.dim] % k):
            pytest.skip(f"operand dim {p.dim} does not split over {k} (the solver leaves it whole)")
    want = c.ref(*arrays, *extra)
    fields = want if isinstance(want, tuple) else (want,)
    if isinstance(produced, Shard) and any(f.shape[produced.dim] % k for f in fields):
        pytest.skip(f"result dim {produced.dim} does not split over {k}")
    local_shape = list(np.shape(fields[0]))
    if isinstance(produced, Shard):
        local_shape[produced.dim] //= k
    parts = []
    for w in range(k):
        local = list(arrays)
        for a, p in zip(operands, req):
            if a is not None:
                j = next(n for n, x in enumerate(arrays) if x is a)
                local[j] = _shard(a, p, k, w)
        if c.op == "relax.take" and isinstance(produced, Partial):
            got = _masked_take(local[0], arrays[1], w * (arrays[0].shape[0] // k))
        else:
            got = _local_ref(c, local, extra, tuple(local_shape))
        parts.append(got if isinstance(got, tuple) else (got,))
    tol = c.tol * (10 if isinstance(produced, Partial) else 1)
    for f, want_f in enumerate(fields):
        got_f = _combine([np.asarray(p[f]) for p in parts], produced, c.op, k)
        assert got_f.shape == np.shape(want_f), f"{case_name(i, c)}: shape {got_f.shape} vs {np.shape(want_f)}"
        np.testing.assert_allclose(np.asarray(got_f, np.float64), np.asarray(want_f, np.float64),
                                   rtol=tol, atol=tol, err_msg=f"{case_name(i, c)}, label {label!r}, {k} shards")


def test_a_wrong_rule_is_caught():
    """The check is not vacuous: a rule that lets softmax's normalized axis be sharded
    gives parts that do not make the whole."""
    c = next(c for c in CASES if c.op == "relax.nn.softmax" and not c.id)
    call, operands, arrays, extra = _setup(c)
    x = arrays[0]
    parts = [c.ref(p) for p in np.split(x, 2, axis=1)]
    assert not np.allclose(np.concatenate(parts, axis=1), c.ref(x), atol=1e-3)

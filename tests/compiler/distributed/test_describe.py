"""compiler.distributed.describe: the sharding report at every stage of a module
(annotated, propagated, lowered), against hand-computed placements, local shapes and
bytes each device receives (all-reduce 2(p-1)/p of the tensor, reduce-scatter (p-1)/p of
it, all-gather (p-1)/p of the gathered result; Shard(i)->Shard(j) an all-gather and a
local slice, as the lowering runs it)."""
from __future__ import annotations

import pytest

from compiler import script
from compiler.distributed import PropagateSharding, describe
from compiler.distributed.lowering import DistributedLowering
from compiler.ir.errors import ShardingError
from compiler.transform import LegalizeOps

import _tp_models as M

# Megatron MLP on 4 devices, only the weights annotated: x (4, 8), hidden 16.
SRC = M.mlp_weights_annotated(4, dim=8, hidden=16, act="relu", batch=4)
# y is (4, 8) float32 = 128 bytes per device; a ring all-reduce over 4 devices moves
# 2 * 3/4 * 128 = 192 bytes per device.
ALLREDUCE_BYTES = 192


def test_report_of_annotated_module():
    mod = script.parse(SRC)
    rep = describe(mod, "main")
    out_name = [n for n in rep.placements if n not in ("x", "w1", "w2", "h", "a", "y")]
    assert len(out_name) == 1                           # the all-reduced result
    assert rep.placements == {"x": "R", "w1": "S[1]", "w2": "S[0]", "h": "S[1]", "a": "S[1]",
                              "y": "P[sum]", out_name[0]: "R"}
    assert rep.local_shapes["w1"] == (8, 4) and rep.local_shapes["w2"] == (4, 8)
    assert rep.local_shapes["h"] == (4, 4) and rep.local_shapes["y"] == (4, 8)
    assert rep.collectives == [(out_name[0], "allreduce", ALLREDUCE_BYTES)]
    text = str(rep)
    for name in rep.placements:
        assert name in text
    assert "allreduce" in text and str(ALLREDUCE_BYTES) in text and "P[sum]" in text


def _table(rep):
    return rep.mesh, rep.mesh_shape, rep.placements, rep.global_shapes, rep.local_shapes, rep.collectives


# Every conversion on 4 devices (x (8, 12), w (12, 8) float32), as LowerToLocalView runs
# them: a S[0]->S[1] is an all-gather of the whole (8, 12) = 384 bytes, 3/4 received,
# then a free local slice (no all-to-all); c S[1]->R the same all-gather; e P[sum]->S[0]
# a reduce-scatter of the (8, 8) partial sums, 3/4 of 256; mr a (8,) all-reduce, 2*3/4
# of 32; f R->S[0] a local slice (nothing moves, not listed).
CONVERSIONS_COLLECTIVES = [("a", "allgather", 288), ("c", "allgather", 288),
                           ("e", "reduce_scatter", 192), ("mr", "allreduce", 48)]
# 2x2 mesh, r S[0]S[1] -> RR of (8, 12) float32: mesh axis 1 is gathered first, into
# S[0]R (4, 12) = 192 bytes per device, 1/2 received; then axis 0 into (8, 12) = 384
# bytes, 1/2 received. Both steps are the conversion of r.
MESH2X2_COLLECTIVES = [("r", "allgather", 96), ("r", "allgather", 192)]


@pytest.mark.parametrize("src,collectives", [
    (SRC, [(None, "allreduce", ALLREDUCE_BYTES)]),     # a name PropagateSharding makes up
    (M.conversions(4), CONVERSIONS_COLLECTIVES),
    (M.mesh2x2(), MESH2X2_COLLECTIVES),
], ids=["mlp", "conversions", "mesh2x2"])
def test_report_is_the_same_at_every_stage(roundtrip, src, collectives):
    mod = script.parse(src)
    before = describe(mod)
    got = [(None if want[0] is None else name, kind, nbytes)
           for (name, kind, nbytes), want in zip(before.collectives, collectives)]
    assert len(before.collectives) == len(collectives) and got == collectives
    placed = PropagateSharding(mod)
    roundtrip(placed)
    assert _table(describe(placed)) == _table(before)
    lowered = DistributedLowering(mod)
    roundtrip(lowered)                    # the recorded placements survive the script
    assert _table(describe(lowered)) == _table(before)
    legalized = LegalizeOps(lowered)      # collectives are packed spmd.* calls by now
    assert "R.ccl." not in legalized.script()
    assert _table(describe(legalized)) == _table(before)


def test_annotated_name_is_listed_beside_its_variable_at_every_stage():
    mod = script.parse(M.mlp_activation_annotated(2, dim=8, hidden=16, act="relu", annotated="hs"))
    for stage in (mod, DistributedLowering(mod)):
        rep = describe(stage)
        names = list(rep.placements)
        assert names[names.index("h") + 1] == "hs"
        assert rep.placements["hs"] == rep.placements["h"] == "S[1]"
        assert rep.global_shapes["hs"] == ("n", 16) and rep.local_shapes["hs"] == ("n", 8)
        assert rep.placements["w1"] == "S[1]" and rep.placements["w2"] == "S[0]"


def test_report_symbolic_sizes_and_unknown_function():
    mod = script.parse(M.mlp_weights_annotated(4, dim=8, hidden=16, act="relu", batch="n"))
    rep = describe(mod)
    # y is (n, 8) float32 = 32n bytes; 2 * 3/4 * 32n = 48n
    assert [(k, b) for _, k, b in rep.collectives] == [("allreduce", "(n * 48)")]
    assert rep.local_shapes["h"] == ("n", 4)
    with pytest.raises(ShardingError, match="prefill"):
        describe(mod, "prefill")

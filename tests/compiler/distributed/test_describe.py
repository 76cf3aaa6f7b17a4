"""compiler.distributed.describe: the sharding report at every stage of a module
(annotated, propagated, lowered), against hand-computed placements, local shapes and
bytes moved (all-reduce 2(p-1)/p of the tensor, all-gather (p-1)/p of the result)."""
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


def test_report_is_the_same_at_every_stage(roundtrip):
    mod = script.parse(SRC)
    before = describe(mod)
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

"""PropagateSharding and describe on a module with two meshes (issue 17, part 1): each
stage is placed on its own mesh, a value crossing the boundary is converted onto the
next mesh once. Expectations by hand from Megatron-style tensor parallelism per stage."""
from __future__ import annotations

import pytest

from compiler import script
from compiler.distributed import PropagateSharding, describe
from compiler.ir import graph as G
from compiler.ir.errors import ShardingError
from compiler.ir.struct_info import DTensorStructInfo

import _tp_models as M


def bindings(mod, func="main"):
    return [b for blk in mod[func].body.blocks for b in blk.bindings]


def typed(mod, func="main") -> dict:
    """name -> (mesh, placement) of every parameter and bound variable."""
    f = mod[func]
    out = {}
    for v in list(f.params) + [b.var for b in bindings(mod, func)]:
        s = v.struct_info
        assert isinstance(s, DTensorStructInfo), v
        out[v.name_hint] = (s.device_mesh, s.placement_text)
    return out


def conversions(mod, func="main") -> list:
    """(source mesh, source placement, target mesh, target placement) of each redistribute."""
    out = []
    for b in bindings(mod, func):
        if isinstance(b.value, G.Call) and b.value.op.name == "relax.dist.redistribute":
            s = b.value.args[0].struct_info
            out.append((s.device_mesh, s.placement_text, b.value.attrs["device_mesh"],
                        b.value.attrs["placement"]))
    return out


def two_stage(batch="n", meshes=((2,), (2,)), starts=None):
    return script.parse(M.pipeline_module_text(M.mlp_two_stages(128, batch), meshes, starts))


def test_two_stage_mlp_places_each_stage_on_its_mesh(roundtrip):
    out = PropagateSharding(two_stage())
    roundtrip(out)
    p = typed(out)
    assert p["w1"] == ("mesh[0]", "S[1]") and p["w2"] == ("mesh[0]", "S[0]")
    assert p["w3"] == ("mesh[1]", "S[1]") and p["w4"] == ("mesh[1]", "S[0]")
    assert p["x"] == ("mesh[0]", "R")
    assert p["h1"] == p["a1"] == ("mesh[0]", "S[1]") and p["y1"] == ("mesh[0]", "P[sum]")
    assert p["h2"] == p["a2"] == ("mesh[1]", "S[1]") and p["y2"] == ("mesh[1]", "P[sum]")
    # one all-reduce per stage, one transfer between the stages, in program order
    assert conversions(out) == [("mesh[0]", "P[sum]", "mesh[0]", "R"),
                                ("mesh[0]", "R", "mesh[1]", "R"),
                                ("mesh[1]", "P[sum]", "mesh[1]", "R")]
    ret = out["main"].ret_struct_info
    assert (ret.device_mesh, ret.placement_text) == ("mesh[1]", "R")


def test_describe_shows_stages_meshes_and_bytes_between_stages():
    r = describe(two_stage(batch=8))
    assert r.stages == [("mesh[0]", (2,), (0, 1)), ("mesh[1]", (2,), (2, 3))]
    assert r.meshes["w1"] == "mesh[0]" and r.meshes["w4"] == "mesh[1]" and r.meshes["w3s"] == "mesh[1]"
    assert r.placements["w3"] == "S[1]" and r.local_shapes["w3"] == (128, 64)
    # an 8x128 float32 activation: 4096 bytes to each of the two receiving devices
    assert r.transfers == [("y1_s1", "mesh[0]", "mesh[1]", 4096, 8192)]
    # all-reduce 2(p-1)/p of 4096 bytes on each stage
    assert [(k, b) for _, k, b in r.collectives] == [("allreduce", 4096), ("allreduce", 4096)]
    text = str(r)
    assert "stage 1: mesh[1] (mesh shape (2,)) on devices [2, 3]" in text
    assert "mesh[0] -> mesh[1]: 4096 bytes to each device, 8192 in all" in text


def test_sharded_value_crosses_after_a_gather(roundtrip):
    """A stage's S[1] output crosses as it is; the conversion onto the next mesh starts
    from S[1] (LowerToLocalView gathers on the sending mesh)."""
    body = '''
    @R.function
    def main(x: R.Tensor((8, 16), "float32"), w1: R.DTensor((16, 32), "float32", "mesh[0]", "S[1]"), w2: R.DTensor((32, 16), "float32", "mesh[1]", "S[0]")) -> R.Tensor((8, 16), "float32"):
        with R.dataflow():
            h = R.matmul(x, w1)
            a = R.nn.relu(h)
            y = R.matmul(a, w2)
            R.output(y)
        return y
'''
    out = PropagateSharding(script.parse(M.pipeline_module_text(body)))
    roundtrip(out)
    conv = conversions(out)
    assert conv[0] == ("mesh[0]", "S[1]", "mesh[1]", "R")
    # the receiving stage slices the replicated value back to S[1] for the row-parallel w2
    assert conv[1] == ("mesh[1]", "R", "mesh[1]", "S[1]")
    assert typed(out)["y"] == ("mesh[1]", "P[sum]")


def test_overlapping_meshes_are_an_error():
    with pytest.raises(ShardingError, match=r"mesh\[0\] \(devices \[0, 1, 2\]\) and mesh\[1\] "
                                            r"\(devices \[2, 3\]\) share devices \[2\]"):
        PropagateSharding(two_stage(meshes=((3,), (2,)), starts=(0, 2)))


def test_tuple_across_a_boundary_is_an_error():
    body = '''
    @R.function
    def main(x: R.Tensor((8, 16), "float32"), w1: R.DTensor((16, 16), "float32", "mesh[0]", "S[1]"), w2: R.DTensor((16, 16), "float32", "mesh[1]", "S[1]")) -> R.Tensor((8, 16), "float32"):
        with R.dataflow():
            h = R.matmul(x, w1)
            sp = R.split(h, indices_or_sections=2, axis=1)
            y = R.matmul(h, w2)
            z = R.concat((sp[0], sp[1]), axis=1)
            o = R.add(y, z)
            R.output(o)
        return o
'''
    with pytest.raises(ShardingError, match=r"tuple 'sp' made on mesh\[0\] is read whole by the stage on "
                                            r"mesh\[1\].*cannot split a tuple"):
        PropagateSharding(script.parse(M.pipeline_module_text(body)))


def test_mesh_used_again_after_another_stage_is_an_error():
    body = '''
    @R.function
    def main(x: R.Tensor((8, 16), "float32"), w1: R.DTensor((16, 16), "float32", "mesh[0]", "S[1]"), w2: R.DTensor((16, 16), "float32", "mesh[1]", "S[1]")) -> R.Tensor((8, 16), "float32"):
        with R.dataflow():
            h = R.matmul(x, w1)
            y = R.matmul(h, w2)
            z = R.dist.annotate_sharding(y, "mesh[0]", "R")
            R.output(z)
        return z
'''
    with pytest.raises(ShardingError, match=r"mesh\[0\] is used again after the stage on mesh\[1\]"):
        PropagateSharding(script.parse(M.pipeline_module_text(body)))


def test_describe_after_lowering_shows_every_stage_and_the_transfers():
    """describe(lowered, "main") of the stage programs (DistributedLowering, then
    LegalizeOps) gives the report of the placed function: each stage's mesh, not only
    the first, and the bytes between stages; a stage program alone is on its own mesh."""
    from compiler.distributed import DistributedLowering
    from compiler.transform import LegalizeOps
    before = describe(two_stage(batch=8))
    lowered = DistributedLowering(two_stage(batch=8))
    for mod in (lowered, LegalizeOps(lowered)):
        r = describe(mod, "main")
        assert r.stages == before.stages and r.transfers == before.transfers
        assert r.meshes == before.meshes and r.placements == before.placements
        assert r.local_shapes == before.local_shapes and r.collectives == before.collectives
        s1 = describe(mod, "main__stage1")
        assert (s1.mesh, s1.mesh_shape) == ("mesh[1]", (2,)) and "w3" in s1.placements and "w1" not in s1.placements

"""PropagateSharding's choice of the cheapest conversion by bytes, and its deterministic
tie-break. Every expectation is derived by hand from the cost model (bytes each device
receives, from the per-device size: all-gather (p-1)/p of the gathered tensor; a
Shard(i)->Shard(j) conversion is an all-gather then a free local slice; replicate ->
shard is free) and the documented candidate order (labels sharded on inputs, in
operand order; then the result's; then none)."""
from __future__ import annotations

import pytest

from compiler.distributed import describe

from test_propagate import conversions, placements, propagate


def matmul_x_w(cols: int, x: str = "S[1]", w: str = "S[1]", rows: int = 8) -> str:
    """y = x (rows, 1024) @ w (1024, cols), both column-sharded (by default)."""
    return f'''
    @R.function
    def main(x: R.DTensor(({rows}, 1024), "float32", "mesh[0]", "{x}"), w: R.DTensor((1024, {cols}), "float32", "mesh[0]", "{w}")):
        with R.dataflow():
            y = R.matmul(x, w)
            R.output(y)
        return y
'''


# On 2 devices, the matmul shards either
#  - its contraction dim (x's S[1] kept): w must become S[0], an all-gather of the whole
#    w (1024 * cols * 4 bytes, 1/2 received: 2048 * cols) then a slice; y is P[sum];
#  - or its column dim (w's S[1] kept): x must become R, an all-gather of x
#    (8 * 1024 * 4 = 32768 bytes, 1/2 received: 16384); y is S[1].
# 2048 * cols < 16384 for cols < 8; equal at 8; larger above.
GATHER_X = 8 * 1024 * 4 // 2


@pytest.mark.parametrize("cols", [4, 16])
def test_matmul_converts_the_operand_that_moves_fewer_bytes(roundtrip, cols):
    out = propagate(matmul_x_w(cols), roundtrip)
    p = placements(out)
    convert_w = 2048 * cols
    if convert_w < GATHER_X:        # cols 4: 8192 < 16384 bytes
        assert p["y"] == "P[sum]"
        # w S[1] -> S[0], then the P[sum] result is all-reduced on return
        assert conversions(out) == [("S[1]", "S[0]"), ("P[sum]", "R")]
        kinds = describe(out).collectives
        assert [(k, b) for _, k, b in kinds[:1]] == [("allgather", convert_w)]
    else:                           # cols 16: 32768 > 16384 bytes
        assert p["y"] == "S[1]"
        assert conversions(out) == [("S[1]", "R")]                 # x gathered
        assert [(k, b) for _, k, b in describe(out).collectives] == [("allgather", GATHER_X)]


def test_matmul_tie_goes_to_the_first_operands_label(roundtrip):
    # cols 8: converting w (2048 * 8) and gathering x (16384) move the same bytes; the
    # first candidate is x's sharded label (the contraction dim), so x keeps S[1], w is
    # converted to S[0] and y is P[sum] -- on every run
    scripts = set()
    for _ in range(3):
        out = propagate(matmul_x_w(8), roundtrip)
        assert placements(out)["y"] == "P[sum]"
        assert conversions(out) == [("S[1]", "S[0]"), ("P[sum]", "R")]
        scripts.add(out.script())
    assert len(scripts) == 1


@pytest.mark.parametrize("order,kept", [("a, b", "S[0]"), ("b, a", "S[1]")])
def test_elementwise_tie_goes_to_operand_order(roundtrip, order, kept):
    # a S[0] and b S[1], both (4, 4) float32: making either match the other is an
    # all-gather of 64 bytes (1/2 received) and a slice, 32 bytes both ways; replicating
    # both costs 64. The first operand's placement wins.
    out = propagate(f'''
    @R.function
    def main(a: R.DTensor((4, 4), "float32", "mesh[0]", "S[0]"), b: R.DTensor((4, 4), "float32", "mesh[0]", "S[1]")):
        with R.dataflow():
            y = R.add({order})
            R.output(y)
        return y
''', roundtrip)
    assert placements(out)["y"] == kept
    other = "S[1]" if kept == "S[0]" else "S[0]"
    assert conversions(out) == [(other, kept)]
    assert [(k, b) for _, k, b in describe(out).collectives] == [("allgather", 32)]


def test_cost_counts_the_per_device_size_on_a_2d_mesh(roundtrip):
    # 2x2 mesh; x (8, 1024) S[1]S[0]: columns over mesh axis 0, rows over axis 1;
    # w (1024, 6) S[1]R. On mesh axis 0 the matmul shards either
    #  - the contraction (x's label): w S[1] -> S[0] there, an all-gather of w's
    #    per-device part (w is whole on axis 1: 1024 * 6 * 4 bytes, 1/2 received: 12288);
    #  - or the columns (w's label): x S[1] -> R there; x's rows stay split over axis 1,
    #    so the gathered per-device part is (4, 1024) = 16384 bytes, 1/2 received: 8192.
    # The columns win (with x's global size, 16384, the contraction would have won).
    # On axis 1, x's rows (label m) shard y's rows for free.
    out = propagate(matmul_x_w(6, x="S[1]S[0]", w="S[1]R"), roundtrip, mesh=(2, 2))
    assert placements(out)["y"] == "S[1]S[0]"
    assert conversions(out) == [("S[1]S[0]", "RS[0]")]
    assert [(k, b) for _, k, b in describe(out).collectives] == [("allgather", 8192)]

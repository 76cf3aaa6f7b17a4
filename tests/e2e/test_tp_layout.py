"""Where each worker's piece lies (disco.placement, disco.spmd), against hand-derived
expectations for 1-D and 2-D meshes."""
from __future__ import annotations

import numpy as np
import pytest

from disco import spmd
from disco.dmodule import place
from disco.errors import PlacementError, SessionError
from disco.placement import (Layout, Partial, Replicate, Shard, format_placement, normalize_placement,
                             parse_placement)


def test_mesh_coordinates_are_row_major():
    assert [spmd.mesh_coordinate(w, (2, 2)) for w in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [spmd.mesh_coordinate(w, (4,)) for w in range(4)] == [(0,), (1,), (2,), (3,)]


def test_group_members_along_each_axis():
    # mesh (2, 3): worker = 3 * row + col
    assert spmd.group_members(4, (2, 3), 0) == [1, 4]          # column 1
    assert spmd.group_members(4, (2, 3), 1) == [3, 4, 5]       # row 1
    assert spmd.group_members(2, (4,), 0) == [0, 1, 2, 3]


def test_placement_text_round_trips():
    assert parse_placement("S[0]R") == (Shard(0), Replicate())
    assert parse_placement("P[sum]") == (Partial("sum"),)
    assert format_placement((Shard(1), Partial("max"))) == "S[1]P[max]"
    assert normalize_placement("S[-1]", 3) == (Shard(2),)
    with pytest.raises(PlacementError, match="bad placement text 'X'"):
        parse_placement("X")
    with pytest.raises(PlacementError, match="Shard dim 2 is out of range for a tensor of rank 2"):
        normalize_placement("S[2]", 2)
    with pytest.raises(PlacementError, match="unknown reduction 'mean'"):
        parse_placement("P[mean]")
    with pytest.raises(PlacementError, match=r"2 entries for a mesh of shape \(4,\)"):
        Layout("S[0]R", (4,), 2)


def test_local_shapes():
    assert Layout("S[0]S[1]", (2, 4), 2).local_shape((8, 12)) == (4, 3)
    assert Layout("S[1]S[1]", (2, 2), 2).local_shape((8, 12)) == (8, 3)
    assert Layout("P[sum]", (4,), 2).local_shape((8, 12)) == (8, 12)


def test_blocks_of_a_2x2_layout():
    a = np.arange(8 * 12).reshape(8, 12)
    lay = Layout("S[0]S[1]", (2, 2), 2)
    assert lay.factors == (2, 2)
    np.testing.assert_array_equal(a[lay.block(1, a.shape)], a[:4, 6:])
    np.testing.assert_array_equal(a[lay.block(2, a.shape)], a[4:, :6])
    # the same dim split by both axes: axis 0 halves first, axis 1 within
    lay = Layout("S[1]S[1]", (2, 2), 2)
    assert [lay.block(w, a.shape)[1] for w in range(4)] == [slice(0, 3), slice(3, 6), slice(6, 9),
                                                            slice(9, 12)]
    # replicated along mesh axis 1: workers 0 and 1 hold the same rows
    lay = Layout("S[0]R", (2, 2), 2)
    assert lay.block(0, a.shape) == lay.block(1, a.shape) == (slice(0, 4), slice(0, 12))
    assert [lay.is_lead(w) for w in range(4)] == [True, False, True, False]


def test_layout_divisibility_message():
    Layout("S[1]", (4,), 2).check((4, 8), "w")
    with pytest.raises(PlacementError, match=r"w: dim 1 of shape \(4, 6\) is 6, which is not divisible "
                                             r"by the 4 devices it is split over"):
        Layout("S[1]", (4,), 2).check((4, 6), "w")
    with pytest.raises(SessionError, match=r"w: dim 1 of shape \(4, 6\) is 6, which is not divisible"):
        place(None, np.zeros((4, 6)), Layout("S[1]", (4,), 2), "w")    # refused before sending


def _fails_on_worker_1(x):
    import disco
    if disco.worker_id() == 1:
        raise ValueError("worker 1 refuses this block")
    return x


@pytest.mark.parametrize("placement", ["S[0]", "R"])
def test_fetch_of_a_failed_value_raises_the_calls_own_error(placement):
    """DTensorRef.fetch of a value whose call failed on one worker raises that call's
    error: through the gather itself for a split over every worker (no sync first), after
    a sync for other layouts (a replicated value is fetched from worker 0 alone)."""
    import disco
    from disco.dmodule import adopt
    disco.register_func("test_tp_layout.fails_on_worker_1", _fails_on_worker_1, override=True)
    with disco.ThreadedSession(2) as s:
        x = s.scatter(np.ones((4, 2), np.float32))
        ref = adopt(s.get_global_func("test_tp_layout.fails_on_worker_1")(x), Layout(placement, (2,), 2))
        with pytest.raises(Exception, match="worker 1 refuses this block"):
            ref.fetch()

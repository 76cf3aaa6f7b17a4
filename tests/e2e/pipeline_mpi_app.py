"""Run under `mpiexec -n 4` by test_tp_mpi.py: the two-stage MLP of issue 17 (stage 0
on ranks 0-1, stage 1 on ranks 2-3, 2-way tensor parallelism in each) on an MPISession
with the mpi backend, whose stage collectives run on MPI sub-communicators; checked
against numpy, one call and 8 micro-batches; prints "ALL OK"."""
from __future__ import annotations

import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

import disco  # noqa: E402


@disco.register_func("pipeline_mpi_app.stage_backends", override=True)
def stage_backends() -> list:
    """(backend, rank, world) of each stage communicator of this worker."""
    from disco._context import current_context
    groups = current_context().state.get("spmd_stage_groups") or {}
    return [(c.backend, c.rank, c.world) for c in groups.values()]


def main() -> None:
    sess = disco.start()            # ranks other than 0 serve and never return
    assert isinstance(sess, disco.MPISession), type(sess)
    with sess:
        from compiler import build, script
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import _tp_models as M
        assert sess.num_workers == 4, sess.num_workers
        rng = np.random.default_rng(0)
        ws = [(rng.standard_normal((128, 128)) / 12).astype(np.float32) for _ in range(4)]
        ex = build(script.parse(M.pipeline_module_text(M.mlp_two_stages(128, 8))))
        h = sess.load_module(ex, ccl_backend="mpi")["main"]
        got = sess.get_global_func("pipeline_mpi_app.stage_backends")()
        assert [got.fetch(w) for w in range(4)] == [[("mpi", 0, 2)], [("mpi", 1, 2)],
                                                     [("mpi", 0, 2)], [("mpi", 1, 2)]]
        x = rng.standard_normal((8, 128)).astype(np.float32)
        np.testing.assert_allclose(h(x, *ws).fetch(), M.mlp_two_stages_ref(x, *ws), rtol=1e-4, atol=1e-4)
        print("mpi: two-stage mlp ok")
        xs = rng.standard_normal((64, 128)).astype(np.float32)
        np.testing.assert_allclose(h.run_microbatches(xs, *ws, micro_batches=8).fetch(),
                                   M.mlp_two_stages_ref(xs, *ws), rtol=1e-4, atol=1e-4)
        print("mpi: 8 micro-batches ok")
    print("ALL OK")


if __name__ == "__main__":
    main()

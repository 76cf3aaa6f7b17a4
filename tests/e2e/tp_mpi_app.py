"""Run under mpiexec by test_tp_mpi.py: a tensor-parallel MLP and Llama layer on an
MPISession (ccl backends mpi and shm), checked against numpy; prints "ALL OK".

    tp_mpi_app.py EXPECTED_AUTO [--auto-only]

EXPECTED_AUTO is the backend the test expects `load_module`'s ccl_backend="auto" to
choose for this launch (shm when all ranks share rank 0's host, mpi with ranks on
other hosts); every worker's communicator is checked against it. --auto-only skips the
explicit-backend runs."""
from __future__ import annotations

import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

import disco  # noqa: E402


@disco.register_func("tp_mpi_app.ccl_backend", override=True)
def ccl_backend() -> str:
    """This worker's collective backend."""
    from disco import ccl
    return ccl.communicator().backend


def main(expected_auto: str, auto_only: bool) -> None:
    sess = disco.start()            # ranks other than 0 serve and never return
    assert isinstance(sess, disco.MPISession), type(sess)
    with sess:
        import compiler
        from compiler import script
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import _tp_models as M
        k = sess.num_workers
        rng = np.random.default_rng(0)
        x = rng.standard_normal((5, 16)).astype(np.float32)
        w1 = (rng.standard_normal((16, 32)) * 0.3).astype(np.float32)
        w2 = (rng.standard_normal((32, 16)) * 0.3).astype(np.float32)
        mlp = compiler.build(script.parse(M.mlp(k)))

        y = sess.load_module(mlp)["main"](x, w1, w2).fetch()  # ccl_backend="auto", the first to init
        np.testing.assert_allclose(y, M.mlp_ref(x, w1, w2), rtol=1e-4, atol=1e-5)
        chosen = sess.get_global_func("tp_mpi_app.ccl_backend")()
        backends = [chosen.fetch(w) for w in range(k)]
        assert backends == [expected_auto] * k, (backends, expected_auto)
        print(f"auto: {expected_auto} on {k} ranks, mlp ok")
        if auto_only:
            print("ALL OK")
            return

        llama = compiler.build(script.parse(M.llama(k)))
        inputs = M.llama_inputs(rng, 6)
        for backend in ("mpi", "shm"):
            y = sess.load_module(mlp, ccl_backend=backend)["main"](x, w1, w2).fetch()
            np.testing.assert_allclose(y, M.mlp_ref(x, w1, w2), rtol=1e-4, atol=1e-5)
            y = sess.load_module(llama, ccl_backend=backend)["main"](*inputs.values()).fetch()
            np.testing.assert_allclose(y, M.llama_ref(**inputs), rtol=1e-4, atol=1e-4)
            print(f"{backend}: mlp and llama layer ok on {k} ranks")
    print("ALL OK")


if __name__ == "__main__":
    main(sys.argv[1], "--auto-only" in sys.argv[2:])

"""Run under mpiexec by test_mpi_ccl.py: every collective of the `mpi` backend through an
MPISession, each worker's result fetched and saved (npz) for the test to check with numpy."""
from __future__ import annotations

import sys

import ml_dtypes
import numpy as np

import disco

DTYPES = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64,
          "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def inputs(n: int, name: str) -> np.ndarray:
    """The array scattered by rows: worker w holds rows 2w, 2w+1 of shape (2n, 3n)."""
    rng = np.random.default_rng(sum(map(ord, name)))
    if name.startswith("int"):
        return rng.integers(-50, 50, (2 * n, 3 * n)).astype(DTYPES[name])
    return rng.standard_normal((2 * n, 3 * n)).astype(DTYPES[name])


def main(path: str) -> None:
    sess = disco.start()
    with sess:
        n = sess.num_workers
        sess.init_ccl("mpi")
        f = {name: sess.get_global_func(f"ccl.{name}") for name in (
            "allreduce", "allgather", "reduce_scatter", "broadcast_from_worker0", "scatter_from_worker0",
            "gather_to_worker0", "barrier")}
        out = {}
        for name in DTYPES:
            x = sess.scatter(inputs(n, name))
            calls = {
                "allreduce_sum": f["allreduce"](x, "sum"), "allreduce_max": f["allreduce"](x, "max"),
                "allreduce_prod": f["allreduce"](x, "prod"), "allreduce_min": f["allreduce"](x, "min"),
                "reduce_scatter_prod_1": f["reduce_scatter"](x, "prod", 1),
                "reduce_scatter_min_1": f["reduce_scatter"](x, "min", 1),
                "allgather_0": f["allgather"](x, 0), "allgather_1": f["allgather"](x, 1),
                "reduce_scatter_1": f["reduce_scatter"](x, "sum", 1),
                "broadcast": f["broadcast_from_worker0"](x), "scatter_1": f["scatter_from_worker0"](x, 1),
                "gather_1": f["gather_to_worker0"](x, 1),
            }
            f["barrier"]()
            for key, ref in calls.items():
                for w in range(n):
                    value = ref.fetch(w)
                    if value is None:
                        out[f"{name}/{key}/{w}/none"] = np.zeros(0)
                    else:
                        assert value.dtype == DTYPES[name], (key, value.dtype)
                        out[f"{name}/{key}/{w}"] = value.astype(np.float64)
        big = sess.scatter(np.arange(n * 300_000, dtype=np.float32).reshape(n, -1))  # 1.2 MB per worker
        out["big/allreduce/last"] = f["allreduce"](big, "sum").fetch(n - 1).astype(np.float64)
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])

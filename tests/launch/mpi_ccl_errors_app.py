"""Run under mpiexec by test_launch_mpi_ccl.py: collectives of the `mpi` backend whose
arguments are unusable on one worker or differ between workers. Each must raise on
every worker (not hang); the session stays usable. Prints one line per case: the
error text each worker raised, then a correct all-reduce's result."""
from __future__ import annotations

import numpy as np

import disco


@disco.register_func("mpi_errors.case", override=True)
def case(name: str):
    """Run collective case `name` on this worker; its error text, or "ok"."""
    from disco import ccl
    w = disco.worker_id()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    try:
        if name == "axis_on_one":              # worker 1: axis 2 of a 2-d array
            ccl.allgather(x, 2 if w == 1 else 1)
        elif name == "shape_differs":          # worker 1 holds a (2, 5) array
            ccl.allreduce(np.zeros((2, 5), np.float32) if w == 1 else x, "sum")
        elif name == "op_differs":
            ccl.allreduce(x, "max" if w == 1 else "sum")
        elif name == "unknown_op_on_one":
            ccl.reduce_scatter(x, "mean" if w == 1 else "sum", 0)
        elif name == "scatter_uneven":         # worker 0's array does not split over 2
            ccl.scatter_from_worker0(np.zeros((3, 4), np.float32) if w == 0 else None, 0)
        elif name == "broadcast_none":
            ccl.broadcast_from_worker0(None)
        else:
            raise ValueError(name)
    except disco.errors.CollectiveError as e:
        return str(e)
    return "ok"


def main() -> None:
    with disco.start() as sess:
        sess.init_ccl("mpi")
        run = sess.get_global_func("mpi_errors.case")
        for name in ("axis_on_one", "shape_differs", "op_differs", "unknown_op_on_one",
                     "scatter_uneven", "broadcast_none"):
            r = run(name)
            print(f"{name}: " + " | ".join(r.fetch(w) for w in range(sess.num_workers)), flush=True)
        x = sess.scatter(np.arange(8, dtype=np.float32).reshape(2, 4))
        print("after:", sess.get_global_func("ccl.allreduce")(x, "sum").fetch(1).tolist(), flush=True)


if __name__ == "__main__":
    main()

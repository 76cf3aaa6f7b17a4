"""Run under mpiexec by test_mpi_session.py: the Session API on an MPISession, each result
checked against numpy or a hand-derived value; prints one line per check and "ALL OK"."""
from __future__ import annotations

import numpy as np

import disco
from disco.errors import WorkerError
from disco.registry import UnknownFunctionError


@disco.register_func("mpi_session_app.fail_on", override=True)
def fail_on(worker: int, msg: str):
    if disco.worker_id() == worker:
        raise ValueError(f"{msg} on worker {worker}")
    return disco.worker_id()


@disco.register_func("mpi_session_app.scale", override=True)
def scale(x, k):
    return x * (disco.worker_id() + 1) * k


def main() -> None:
    sess = disco.start()
    assert isinstance(sess, disco.MPISession), type(sess)
    with sess:
        n = sess.num_workers
        sess.import_module("mpi_session_app")
        wid = sess.get_global_func("disco.worker_id")()
        assert [wid.fetch(w) for w in range(n)] == list(range(n))
        assert sess.get_global_func("disco.num_workers")().fetch(n - 1) == n
        print("worker ids ok")

        small, big = np.arange(12.0).reshape(4, 3), np.ones((n * 64, 1024), np.float32)  # big: > 64 KiB
        for arr in (small, big):
            b = sess.broadcast(arr)
            np.testing.assert_array_equal(b.fetch(n - 1), arr)
            s = sess.get_global_func("mpi_session_app.scale")(b, 2.0)
            np.testing.assert_array_equal(s.fetch(n - 1), arr * n * 2.0)
            np.testing.assert_array_equal(sess.gather(s), np.concatenate([arr * (w + 1) * 2.0 for w in range(n)]))
        print("broadcast, DRef arguments, large arrays, gather ok")

        full = np.arange(n * 6 * 5, dtype=np.int64).reshape(n * 6, 5)
        sc = sess.scatter(full)
        for w in range(n):
            np.testing.assert_array_equal(sc.fetch(w), full[6 * w:6 * w + 6])
        print("scatter ok")

        fail = sess.get_global_func("mpi_session_app.fail_on")
        fail(n - 1, "boom")
        try:
            sess.sync()
            raise AssertionError("no WorkerError")
        except WorkerError as e:
            assert e.worker_id == n - 1 and "boom on worker" in str(e) and "ValueError" in e.remote_traceback, e
        r = fail(0, "again")
        try:
            sess.sync()
            raise AssertionError("no WorkerError")
        except WorkerError as e:
            assert e.worker_id == 0, e
        assert r.fetch(n - 1) == n - 1  # the session stays usable
        try:
            sess.get_global_func("mpi_session_app.scal")
            raise AssertionError("no UnknownFunctionError")
        except UnknownFunctionError as e:
            assert "mpi_session_app.scale" in str(e), e
        print("errors ok")

        del b, s, sc, r, wid  # frees go out with the next command
        for _ in range(2000):  # pipelined calls, more commands than one ring lap of frees
            x = sess.get_global_func("mpi_session_app.scale")(small, 1.0)
        np.testing.assert_array_equal(x.fetch(n - 1), small * n)
        sess.sync()
        print("pipelined calls and frees ok")
    print("ALL OK")


if __name__ == "__main__":
    main()

"""Compiled pipeline transfers run: a module with R.ccl.send / R.ccl.recv built by
compiler.build and run by the VM on every worker of a ProcessSession (shm), stage 0 on
workers 0-1 sending its shards to stage 1 on workers 2-3, checked against the inputs."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

import disco
from compiler import build, script

pytestmark = pytest.mark.timeout(120)

SRC = '''
@I.ir_module
class M:
    @R.function(pure=False)
    def main(x: R.Tensor(("n", 8), "float32")):
        n = T.int64()
        s = R.ccl.send(R.multiply(x, R.const(2.0, "float32")), senders=[0, 1], receivers=[2, 3])
        y = R.ccl.recv(R.shape([n, 8]), dtype="float32", senders=[0, 1], receivers=[2, 3])
        return y
'''


def test_two_stage_transfer_through_the_vm(tmp_path):
    path = tmp_path / "p2p.disco"
    build(script.parse(SRC)).export(path)
    data = np.frombuffer(path.read_bytes(), np.uint8)
    full = np.arange(4 * 3 * 8, dtype=np.float32).reshape(4, 3, 8)
    with disco.ProcessSession(4) as sess:
        sess.init_ccl("shm")
        for m in ("disco.spmd", "disco.dmodule"):
            sess.import_module(m)
        vm = sess.get_global_func("disco.dmodule.load")(data, hashlib.sha256(data).hexdigest())
        x = sess.get_global_func("disco.dmodule.unstack")(sess.scatter(full))     # worker w: full[w]
        y = sess.get_global_func("disco.dmodule.call")(vm, "main", x)
        np.testing.assert_array_equal(y.fetch(2), full[0] * 2)
        np.testing.assert_array_equal(y.fetch(3), full[1] * 2)
        assert y.fetch(0) is None and y.fetch(1) is None


SHAPE_FIRST = '''
@I.ir_module
class M:
    @R.function(pure=False)
    def main(x: R.Tensor(("n", 8), "float32")):
        m = T.int64()
        s = R.ccl.send(x, senders=[0], receivers=[1], with_shape=True)
        y = R.ccl.recv(R.shape([-1, {dim}]), dtype="float32", senders=[0], receivers=[1])
        z = R.match_cast(y, R.Tensor((m, {dim}), "float32"))
        return z
'''


def _run_on_two(src, arrays):
    """Run `main` of `src` on 2 workers, worker w's x being arrays[w]; the DRef of the results."""
    ex = build(script.parse(src))
    data = np.frombuffer(ex.to_bytes(), np.uint8)
    sess = disco.ProcessSession(2)
    sess.init_ccl("shm")
    for m in ("disco.spmd", "disco.dmodule"):
        sess.import_module(m)
    vm = sess.get_global_func("disco.dmodule.load")(data, hashlib.sha256(data).hexdigest())
    x = sess.get_global_func("disco.dmodule.unstack")(sess.scatter(np.stack(arrays)))
    return sess, sess.get_global_func("disco.dmodule.call")(vm, "main", x)


def test_a_symbolic_dim_is_learnt_from_the_sender():
    """The receiver's program has no way to know n: the sender's shape comes first, for
    each call's own n."""
    for n in (1, 5):
        full = np.arange(2 * n * 8, dtype=np.float32).reshape(2, n, 8)
        sess, y = _run_on_two(SHAPE_FIRST.format(dim=8), list(full))
        with sess:
            np.testing.assert_array_equal(y.fetch(1), full[0])


def test_a_known_dim_that_differs_from_the_senders_is_an_error():
    """The receiver's known dim (6) is checked against the shape the sender sent (8)."""
    sess, y = _run_on_two(SHAPE_FIRST.replace("[-1, {dim}]", "[-1, 6]").format(dim=6),
                          [np.zeros((3, 8), np.float32)] * 2)
    with sess, pytest.raises(disco.DiscoError, match=r"worker 1: R.ccl.recv from worker 0 expected shape "
                                                    r"\[-1, 6\] \(-1: any\), but the sender's array has "
                                                    r"shape \[3, 8\]"):
        y.fetch(1)

"""disco.load_shards: tensors of a safetensors file (written by the `safetensors`
package) placed on the workers by name; then used as weights of a DModule. The
controller reads only the file's header: the workers read their own slices."""
from __future__ import annotations

import struct
import threading

import numpy as np
import pytest

import compiler
import disco
from compiler import script
from disco.errors import DiscoError

import _tp_models as M

st = pytest.importorskip("safetensors.numpy")


@pytest.fixture(scope="module", params=["threaded", "process"])
def sess2(request):
    s = (disco.ThreadedSession if request.param == "threaded" else disco.ProcessSession)(2)
    yield s
    s.shutdown()


def test_load_shards_places_each_worker_slice(sess2, tmp_path):
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 32)).astype(np.float32)
    w2 = rng.standard_normal((32, 16)).astype(np.float32)
    bias = rng.standard_normal((16,)).astype(np.float32)
    path = tmp_path / "weights.safetensors"
    st.save_file({"w1": w1, "w2": w2, "bias": bias}, str(path))
    refs = disco.load_shards(sess2, str(path), {"w1": "S[1]", "w2": "S[0]", "bias": "R"})
    assert sorted(refs) == ["bias", "w1", "w2"]
    np.testing.assert_array_equal(refs["w1"].fetch_local(1), w1[:, 16:])
    np.testing.assert_array_equal(refs["w2"].fetch_local(0), w2[:16])
    np.testing.assert_array_equal(refs["bias"].fetch_local(1), bias)
    np.testing.assert_array_equal(refs["w1"].fetch(), w1)

    # the placed weights feed a compiled module directly (argument order of the other form)
    ex = compiler.build(script.parse(M.mlp(2)))
    dmod = sess2.load_module(ex)
    refs = disco.load_shards(str(tmp_path), dmod, sess2)       # a directory; the module's placements
    assert sorted(refs) == ["w1", "w2"]
    assert sorted(disco.load_shards(sess2, str(path), ex)) == ["w1", "w2"]   # the executable's
    x = rng.standard_normal((3, 16)).astype(np.float32)
    y = dmod["main"](x, refs["w1"], refs["w2"]).fetch()
    np.testing.assert_allclose(y, M.mlp_ref(x, w1, w2), rtol=1e-4, atol=1e-4)


def test_load_shards_errors(sess2, tmp_path):
    path = tmp_path / "w.safetensors"
    st.save_file({"w": np.zeros((3, 4), np.float32)}, str(path))
    with pytest.raises(DiscoError, match=r"no tensor named \['v'\]"):
        disco.load_shards(sess2, str(path), {"v": "R"})
    with pytest.raises(Exception, match=r"tensor 'w'.*dim 0 of shape \(3, 4\) is 3, which is not "
                                        r"divisible by the 2 devices"):
        disco.load_shards(sess2, str(path), {"w": "S[0]"})


class _CountingFile:
    """A file opened by disco.llm.checkpoint (headers): counts the bytes read, by thread."""

    def __init__(self, f, reads: list):
        self._f, self._reads = f, reads

    def read(self, *args):
        data = self._f.read(*args)
        self._reads.append((threading.get_ident(), len(data)))
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_load_shards_controller_reads_only_the_header(sess2, tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((256, 512)).astype(np.float32)        # 512 KiB of data
    b = rng.standard_normal((512,)).astype(np.float32)
    path = tmp_path / "big.safetensors"
    st.save_file({"w": w, "b": b}, str(path))
    with open(path, "rb") as f:                                  # the format's header size
        (header_len,) = struct.unpack("<Q", f.read(8))
    assert header_len < 1024

    import os

    import disco.llm.safetensors_header as checkpoint
    controller = threading.get_ident()
    reads: list = []            # (thread, bytes) read through open() in disco.llm.safetensors_header
    data: list = []             # (thread, bytes) of tensor data read (os.preadv)
    real_open, real_preadv = open, os.preadv
    monkeypatch.setattr(checkpoint, "open", lambda *a, **k: _CountingFile(real_open(*a, **k), reads),
                        raising=False)

    def preadv(fd, buffers, offset):
        n = real_preadv(fd, buffers, offset)
        data.append((threading.get_ident(), n))
        return n

    monkeypatch.setattr(os, "preadv", preadv)
    refs = disco.load_shards(sess2, str(path), {"w": "S[1]", "b": "R"})

    assert sum(n for t, n in reads if t == controller) == 8 + header_len
    assert controller not in [t for t, _ in data]
    if isinstance(sess2, disco.ThreadedSession):     # the workers' reads are seen here too:
        # w's columns are split, so each worker reads every row (a chunk at a time); b whole
        assert sum(n for _, n in data) == sess2.num_workers * (w.nbytes + b.nbytes)
    np.testing.assert_array_equal(refs["w"].fetch_local(1), w[:, 256:])
    np.testing.assert_array_equal(refs["b"].fetch_local(0), b)

"""disco.start(device=...): 'cpu', 'cuda' and 'cuda:N' (as a VirtualMachine takes them)
are accepted; anything else is refused before a worker starts. Without cupy or a GPU
the error says so, not that the device name is wrong."""
from __future__ import annotations

import re

import pytest

import disco
from disco.cuda import gpu_available
from disco.errors import DiscoError, SessionError

pytestmark = pytest.mark.timeout(120)
BAD_NAME = re.escape("disco.start: device must be 'cpu', 'cuda' (worker i on GPU i) or 'cuda:N' (worker i on GPU N + i)")


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    """A plain `python` run (pytest may itself be under mpiexec or disco-launch)."""
    for var in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK",
                "DISCO_NUM_WORKERS", "DISCO_PREFIX_OUTPUT"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "cuda:0:1", "cpu:0", "", 0, None])
def test_malformed_devices_are_refused_naming_the_value(device):
    with pytest.raises(SessionError, match=BAD_NAME + f", got {re.escape(repr(device))}$"):
        disco.start(2, device=device)


@pytest.mark.skipif(gpu_available(), reason="checks the error of a machine without cupy or GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_devices_without_gpu_say_there_is_none(device):
    with pytest.raises(DiscoError) as info:
        disco.start(2, device=device)
    message = str(info.value)
    assert not re.search(BAD_NAME, message), message
    assert re.search(r"needs cupy|no usable GPU|no GPU found", message), message


@pytest.mark.skipif(not gpu_available(), reason="needs cupy and a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_devices_bind_worker_i_to_gpu_n_plus_i(device):
    import cupy

    count = cupy.cuda.runtime.getDeviceCount()
    first = 0 if device == "cuda" else int(device.split(":")[1])
    if first >= count:
        with pytest.raises(DiscoError, match=rf"'cuda:{first}' but this host has {count} GPU"):
            disco.start(2, device=device)
        return
    with disco.start(2, device=device) as sess:
        bound = sess.get_global_func("disco.start.bind_gpu")(first)  # binding again returns the index
        assert [bound.fetch(w) for w in range(2)] == [first % count, (first + 1) % count]

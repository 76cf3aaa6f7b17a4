"""GPU tests (every test here is marked `gpu`).

Where the real cupy with a usable GPU is importable, they run on it. Otherwise they run
on the stand-in cupy (tests/gpu/standin/cupy: its own array type, NCCL with cupy 14's
types, kernels as C builds of the same tensor programs; see its docstring), and tests
marked `real_gpu` (NVRTC, real timings, torch CUDA tensors) are skipped with the reason.

The stand-in is visible only while a module of tests/gpu runs: a module-scoped autouse
fixture puts tests/gpu/standin on sys.path (worker processes of a ProcessSession get
the controller's sys.path) and sets DISCO_STANDIN_KERNELS, and takes both away after
the module, with the stand-in's modules out of sys.modules (kept aside, so that the
next module of tests/gpu gets the same module objects: caches such as disco.cuda's
compiled modules hold stand-in objects) and whatever cupy modules were loaded before
(a real cupy without a GPU) put back. The hook that builds the C stand-ins of
generated CUDA (standin/kernel_registry.py) wraps compiler.codegen.cuda.generate_cuda
and is inert while DISCO_STANDIN_KERNELS is unset.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "standin"

# test_legalize's operator cases, the te kernels and worker functions are shared
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[0] / "compiler"))


def real_gpu_reason() -> str | None:
    """None where the real cupy and a usable GPU are present, else why not."""
    try:
        import cupy
    except ImportError:
        return "cupy is not installed (pip install 'disco-tp[gpu]')"
    if getattr(cupy, "__standin__", False):     # e.g. the stand-in on an inherited PYTHONPATH
        _take_cupy_modules()
        return "the cupy on sys.path is the stand-in"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver / no device
        return f"no usable GPU ({type(e).__name__}: {e})"
    return None if count > 0 else "no GPU"


def _take_cupy_modules() -> dict:
    """Remove cupy's modules (cupy, cupyx, cupy_backends) from sys.modules; returns them."""
    names = [m for m in sys.modules if m.split(".")[0] in ("cupy", "cupyx", "cupy_backends")]
    return {m: sys.modules.pop(m) for m in names}


NO_REAL_GPU = real_gpu_reason()
if NO_REAL_GPU is not None:
    from standin import kernel_registry
    kernel_registry.install()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE not in Path(str(item.fspath)).resolve().parents:
            continue
        item.add_marker(pytest.mark.gpu)
        if NO_REAL_GPU is not None and item.get_closest_marker("real_gpu"):
            item.add_marker(pytest.mark.skip(reason=f"needs a real GPU and cupy; running on the "
                                                    f"stand-in cupy ({NO_REAL_GPU})"))


_kept: dict = {}      # the stand-in's modules between modules of tests/gpu


@pytest.fixture(scope="module", autouse=True)
def _cupy_for_gpu_tests(tmp_path_factory):
    """The stand-in cupy for this module (where there is no real GPU)."""
    if NO_REAL_GPU is None:
        yield
        return
    base = tmp_path_factory.getbasetemp()
    env = {"DISCO_STANDIN_KERNELS": str(base / "standin_kernels"), "DISCO_TP_CACHE": str(base / "kernels")}
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    outside = _take_cupy_modules()          # e.g. a real cupy that found no GPU
    sys.path.insert(0, str(STANDIN))
    sys.modules.update(_kept)
    try:
        yield
    finally:
        sys.path.remove(str(STANDIN))
        _kept.update(_take_cupy_modules())
        sys.modules.update(outside)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(autouse=True)
def _kernel_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DISCO_TP_CACHE", str(tmp_path_factory.getbasetemp() / "kernels"))

"""GPU tests: every test here is marked `gpu` and skipped, with the reason, where cupy
or a usable GPU is missing (so the suite passes on machines without one)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# test_legalize's operator cases, the te kernels and worker functions are shared
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compiler"))


def gpu_skip_reason() -> str | None:
    try:
        import cupy
    except ImportError:
        return "cupy is not installed (pip install 'disco-tp[gpu]')"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver / no device
        return f"no usable GPU ({type(e).__name__}: {e})"
    return None if count > 0 else "no GPU"


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    reason = None
    checked = False
    for item in items:
        if here not in Path(str(item.fspath)).resolve().parents:
            continue
        item.add_marker(pytest.mark.gpu)
        if not checked:
            reason, checked = gpu_skip_reason(), True
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _kernel_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DISCO_TP_CACHE", str(tmp_path_factory.getbasetemp() / "kernels"))

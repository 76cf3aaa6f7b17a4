"""Lets the distributed compiler tests `import _tp_models`: the tensor-parallel models
live once, in tests/e2e/_tp_models.py, beside the end-to-end tests that run them (the
test tree has no packages, so the folder goes on sys.path, as pytest does for tests/e2e)."""
import sys
from pathlib import Path

_E2E = str(Path(__file__).resolve().parents[2] / "e2e")
if _E2E not in sys.path:
    sys.path.insert(0, _E2E)

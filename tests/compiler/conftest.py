"""Shared fixtures for compiler tests.

The script round trip (`parse(mod.script())` structurally equal to `mod`) is applied
to every module the tests make, three ways:
- `roundtrip(mod)`: a fixture tests call on modules they construct;
- every module a `BlockBuilder.get()` returns during a test is checked when the test
  ends (autouse fixture below);
- `compiler.build` checks its input and every pass's output (tests/conftest.py sets
  DISCO_TP_CHECK_ROUNDTRIP=1).
"""
from __future__ import annotations

import pytest

from compiler.ir import IRModule, assert_structural_equal


def check_roundtrip(mod: IRModule) -> IRModule:
    """Print `mod`, parse it back, and check structural equality; returns the
    parsed module. A script package that fails to import fails the test."""
    from compiler.script import parse
    text = mod.script()
    parsed = parse(text)
    try:
        assert_structural_equal(parsed, mod)
    except AssertionError as e:
        raise AssertionError(f"script round trip changed the module: {e}\n--- script ---\n{text}") from None
    return parsed


@pytest.fixture
def roundtrip():
    return check_roundtrip


@pytest.fixture(autouse=True)
def _roundtrip_builder_modules(monkeypatch):
    """Check the round trip of every module `BlockBuilder.get()` returned in the test."""
    from compiler.ir.builder import BlockBuilder
    made: list[IRModule] = []
    original = BlockBuilder.get

    def recording_get(self):
        mod = original(self)
        made.append(mod)
        return mod

    monkeypatch.setattr(BlockBuilder, "get", recording_get)
    yield
    seen: set[int] = set()
    for mod in made:
        if id(mod) not in seen:
            seen.add(id(mod))
            check_roundtrip(mod)

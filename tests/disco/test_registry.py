"""The global function registry."""
from __future__ import annotations

import subprocess
import sys

import pytest

import disco
from disco.errors import DiscoError
from disco.registry import UnknownFunctionError, remove_global_func

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def name():
    n = "test_registry.f"
    remove_global_func(n)
    yield n
    remove_global_func(n)


def test_register_get_list(name):
    @disco.register_func(name)
    def f(x):
        return x + 1

    assert f(1) == 2  # the decorator returns the function itself
    assert disco.get_global_func(name) is f
    assert name in disco.list_global_funcs()
    assert disco.list_global_funcs() == sorted(disco.list_global_funcs())


def test_register_direct_form(name):
    g = disco.register_func(name, len)
    assert g is len and disco.get_global_func(name) is len


def test_duplicate_raises_unless_override(name):
    disco.register_func(name)(abs)
    with pytest.raises(DiscoError, match=r"'test_registry.f' is already registered.*override=True"):
        disco.register_func(name)(len)
    assert disco.get_global_func(name) is abs
    disco.register_func(name, override=True)(len)
    assert disco.get_global_func(name) is len


def test_reregistering_same_function_is_fine(name):
    """Registering the same function again (a module imported twice) neither raises
    nor changes what the name finds."""
    assert disco.register_func(name)(abs) is abs
    assert disco.register_func(name)(abs) is abs  # no DiscoError: it is the same function
    assert disco.get_global_func(name) is abs
    assert disco.list_global_funcs().count(name) == 1


def test_missing_name_lists_close_names(name):
    disco.register_func(name)(abs)
    with pytest.raises(UnknownFunctionError, match=r"'test_registry.g'.*close names: test_registry.f"):
        disco.get_global_func("test_registry.g")
    with pytest.raises(KeyError):  # also a KeyError, for callers that expect one
        disco.get_global_func("test_registry.g")
    assert disco.get_global_func("test_registry.g", allow_missing=True) is None


@pytest.mark.parametrize("bad", ["", None, 3])
def test_bad_names(bad):
    with pytest.raises(DiscoError, match="non-empty str"):
        disco.register_func(bad)(abs)


def test_not_callable(name):
    with pytest.raises(DiscoError, match="expected a callable, got int"):
        disco.register_func(name, 3)


def test_worker_identity_functions_are_registered():
    assert disco.get_global_func("disco.worker_id")() == disco.worker_id() == 0
    assert disco.get_global_func("disco.num_workers")() == disco.num_workers() == 1


def test_import_is_light():
    code = ("import sys, disco; heavy = [m for m in ('compiler', 'disco.vm', 'disco.session', 'numpy') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

"""Issue 15, case 1: the kernel caches never load a shared object another user could
have planted, fall back to a private temporary directory (with a warning) when theirs
is unsafe, unwritable or cannot be created, and leave no temporary files behind.

A planted object has a constructor that writes a marker file, so "it ran" is seen
directly; the genuine one is an ordinary kernel library."""
import hashlib
import os
import subprocess
import warnings

import pytest

import disco.executable as executable
from disco.errors import DiscoError
from disco.private_dir import CacheWarning

GENUINE_C = "int answer(void) { return 42; }\n"
PLANTED_C = r"""
#include <stdio.h>
#include <stdlib.h>
int answer(void) { return 666; }
__attribute__((constructor)) static void planted(void) {
  FILE* f = fopen(getenv("DISCO_TEST_MARKER"), "w");
  if (f) { fputs("planted code ran", f); fclose(f); }
}
"""
OTHER_UID = 65534  # nobody
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner to another user needs root")


def build(tmp_path, name, source) -> bytes:
    (tmp_path / f"{name}.c").write_text(source)
    subprocess.run(["cc", "-shared", "-fPIC", str(tmp_path / f"{name}.c"), "-o", str(tmp_path / f"{name}.so")],
                   check=True)
    return (tmp_path / f"{name}.so").read_bytes()


@pytest.fixture
def libs(tmp_path, monkeypatch):
    """(genuine bytes, planted bytes, marker path); a fresh table of loaded libraries."""
    marker = tmp_path / "marker"
    monkeypatch.setenv("DISCO_TEST_MARKER", str(marker))
    monkeypatch.setattr(executable, "_LOADED", {})
    return build(tmp_path, "genuine", GENUINE_C), build(tmp_path, "planted", PLANTED_C), marker


def plant(directory, genuine: bytes, planted: bytes) -> None:
    """The planted object under the name the genuine bytes are cached as."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{hashlib.sha256(genuine).hexdigest()[:32]}.so").write_bytes(planted)


def load(genuine: bytes):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lib = executable._dlopen_bytes(genuine)
    return lib, [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]


def test_world_writable_cache_is_not_used(libs, tmp_path, monkeypatch):
    genuine, planted, marker = libs
    monkeypatch.setenv("DISCO_CACHE_DIR", str(tmp_path / "shared"))
    plant(tmp_path / "shared" / "kernels", genuine, planted)
    os.chmod(tmp_path / "shared" / "kernels", 0o777)
    lib, warned = load(genuine)
    assert lib.answer() == 42 and not marker.exists()
    assert len(warned) == 1 and "writable by group or others (mode 777)" in warned[0]


@needs_root
def test_other_users_cache_is_not_used(libs, tmp_path, monkeypatch):
    genuine, planted, marker = libs
    monkeypatch.setenv("DISCO_CACHE_DIR", str(tmp_path / "theirs"))
    plant(tmp_path / "theirs" / "kernels", genuine, planted)
    os.chmod(tmp_path / "theirs" / "kernels", 0o755)
    os.chown(tmp_path / "theirs" / "kernels", OTHER_UID, OTHER_UID)
    lib, warned = load(genuine)
    assert lib.answer() == 42 and not marker.exists()
    assert f"owned by uid {OTHER_UID}" in warned[0]


def test_symlinked_cache_is_not_used(libs, tmp_path, monkeypatch):
    genuine, planted, marker = libs
    plant(tmp_path / "elsewhere", genuine, planted)
    (tmp_path / "link").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "link" / "kernels")
    monkeypatch.setenv("DISCO_CACHE_DIR", str(tmp_path / "link"))
    lib, warned = load(genuine)
    assert lib.answer() == 42 and not marker.exists()
    assert "symbolic link" in warned[0]


def test_planted_file_in_private_cache_is_replaced(libs, tmp_path, monkeypatch):
    """A file whose bytes differ from the library's (its name is their hash) is rewritten."""
    genuine, planted, marker = libs
    monkeypatch.setenv("DISCO_CACHE_DIR", str(tmp_path / "mine"))
    plant(tmp_path / "mine" / "kernels", genuine, planted)
    os.chmod(tmp_path / "mine" / "kernels", 0o700)
    lib, warned = load(genuine)
    assert lib.answer() == 42 and not marker.exists() and warned == []


@pytest.mark.parametrize("how", ["a file in the way", "cannot be created"])
def test_unusable_cache_falls_back_with_a_warning(libs, tmp_path, monkeypatch, how):
    genuine, _, _ = libs
    if how == "a file in the way":
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / "kernels").write_text("")
        monkeypatch.setenv("DISCO_CACHE_DIR", str(tmp_path / "c"))
    else:   # even root cannot create directories in /proc
        monkeypatch.delenv("DISCO_CACHE_DIR", raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        monkeypatch.setenv("HOME", "/proc/self/nonexistent-home")
    lib, warned = load(genuine)
    assert lib.answer() == 42
    assert len(warned) == 1 and ("not a directory" in warned[0] or "cannot be created" in warned[0]), warned


def test_failed_write_leaves_no_tmp(libs, tmp_path, monkeypatch):
    genuine, _, _ = libs
    monkeypatch.setenv("DISCO_CACHE_DIR", str(tmp_path / "c"))

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(DiscoError, match=r"cannot write the executable's kernels to .*No space left"):
        executable._dlopen_bytes(genuine)
    assert os.listdir(tmp_path / "c" / "kernels") == []


def test_new_cache_dir_is_private(libs, tmp_path, monkeypatch):
    genuine, _, _ = libs
    monkeypatch.setenv("DISCO_CACHE_DIR", str(tmp_path / "new"))
    load(genuine)
    mode = os.stat(tmp_path / "new" / "kernels").st_mode & 0o777
    assert mode == 0o700
    assert all(os.stat(tmp_path / "new" / "kernels" / f).st_mode & 0o077 == 0
               for f in os.listdir(tmp_path / "new" / "kernels"))


# -- the compiler's cache ----------------------------------------------------------------

def test_compiler_cache_rebuilds_what_others_could_write(tmp_path, monkeypatch):
    from compiler.codegen import cc
    monkeypatch.setenv("DISCO_TP_CACHE", str(tmp_path / "cc"))
    source = "int answer_cc(void) { return 7; }\n"
    first = cc.compile_shared_object(source)
    assert os.stat(tmp_path / "cc").st_mode & 0o777 == 0o700
    count = cc.compile_count
    assert cc.compile_shared_object(source) == first and cc.compile_count == count   # a trusted hit
    os.chmod(first, 0o666)                                                          # others could write it
    assert cc.compile_shared_object(source) == first and cc.compile_count == count + 1
    os.chmod(tmp_path / "cc", 0o777)                                                # the whole directory
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        moved = cc.compile_shared_object(source)
    assert moved.parent != first.parent and cc.compile_count == count + 2
    assert any("writable by group or others" in str(w.message) for w in caught)

"""Compile C source into a shared object with the system C compiler, with a disk cache.

The cache key is the sha256 of (source, flags, compiler version, and the macros the
compiler predefines for `-march=native` here, which name the host's instruction set: a
cache shared by machines with different CPUs never hands one an object built for the
other); the object lives under `$DISCO_TP_CACHE` (default `~/.cache/disco-tp/kernels`)
as `<key>.so`, next to its source `<key>.c`. Writes are atomic (a temporary file renamed into place),
so concurrent builds of the same source from several processes are safe.

The key names the source, not the object, so a cached object is trusted by where it
is: the directory must be private (disco/private_dir.py: ours, not writable by others,
else a private temporary one with a warning) and the object a regular file of ours that
no one else can write; anything else is rebuilt.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from disco.private_dir import private_dir, why_not_trusted_file

from ..ir.errors import CompilerError

BASE_FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fopenmp", "-std=c11",
              # No errno from math calls (sqrtf inlines) and reassociation of float
              # reductions, so that sums and dot products vectorize. Infinities and NaNs
              # keep their meaning (no -ffinite-math-only): softmax masks use -inf.
              "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math")
LIBS = ("-lm",)

# Number of times the C compiler was actually invoked in this process (tests read it).
compile_count = 0


class CCompileError(CompilerError):
    """The C compiler rejected generated source; the message holds its diagnostics."""


def cache_dir() -> Path:
    """$DISCO_TP_CACHE or ~/.cache/disco-tp/kernels when private, else a private
    temporary directory (see the module docstring)."""
    root = os.environ.get("DISCO_TP_CACHE")
    path = Path(root) if root else Path(os.path.expanduser("~")) / ".cache" / "disco-tp" / "kernels"
    return Path(private_dir(str(path), "compiled-kernels"))


def compiler_command() -> str:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise CCompileError(f"no C compiler: {cc!r} is not on PATH (set $CC to a gcc or clang)")
    return cc


@functools.lru_cache(maxsize=None)
def compiler_version(cc: str) -> str:
    out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


@functools.lru_cache(maxsize=None)
def native_target(cc: str) -> str:
    """What `-march=native` means on this host: the compiler's predefined macros
    (__AVX2__, __AVX512F__, ...), which gcc and clang both print with -dM -E."""
    out = subprocess.run([cc, "-march=native", "-dM", "-E", "-x", "c", os.devnull],
                         capture_output=True, text=True, timeout=60)
    return "\n".join(sorted(out.stdout.splitlines()))


@functools.lru_cache(maxsize=None)
def _libmvec_flags(cc: str) -> tuple[str, ...]:
    """Vector math (glibc's libmvec) when the toolchain has it."""
    out = subprocess.run([cc, "-print-file-name=libmvec.so"], capture_output=True, text=True, timeout=60)
    path = out.stdout.strip()
    return ("-DDISCO_USE_LIBMVEC", "-lmvec") if os.path.isabs(path) and os.path.exists(path) else ()


def compile_flags(cc: str | None = None) -> tuple[str, ...]:
    cc = cc or compiler_command()
    return BASE_FLAGS + _libmvec_flags(cc)


def compile_shared_object(source: str) -> Path:
    """Path of a shared object built from `source` (from the cache when present)."""
    global compile_count
    cc = compiler_command()
    flags = compile_flags(cc)
    key = hashlib.sha256("\0".join([source, " ".join(flags), compiler_version(cc),
                                    native_target(cc)]).encode()).hexdigest()
    directory = cache_dir()
    target = directory / f"{key}.so"
    if target.exists() and why_not_trusted_file(str(target)) is None:
        return target
    with tempfile.TemporaryDirectory(prefix="disco-cc-", dir=directory) as tmp:
        src = Path(tmp) / f"{key}.c"
        src.write_text(source)
        out = Path(tmp) / f"{key}.so"
        cmd = [cc, *flags, str(src), "-o", str(out), *LIBS]
        compile_count += 1
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise CCompileError(_format_error(cmd, result.stderr, source))
        os.chmod(out, 0o700)  # whatever the umask: a cached object only we can write
        os.replace(src, directory / f"{key}.c")
        os.replace(out, target)
    return target


def _format_error(cmd: list[str], stderr: str, source: str) -> str:
    lines = source.splitlines()
    shown = []
    for m in re.finditer(r"\.c:(\d+):(?:\d+:)? (?:fatal )?error", stderr):
        n = int(m.group(1))
        if n in shown:
            continue
        shown.append(n)
        if len(shown) > 5:
            break
    excerpt = []
    for n in shown:
        for k in range(max(1, n - 2), min(len(lines), n + 2) + 1):
            mark = ">>" if k == n else "  "
            excerpt.append(f"{mark} {k:5d} | {lines[k - 1]}")
        excerpt.append("   ...")
    return ("C compiler failed on generated kernel source\n"
            f"command: {' '.join(cmd)}\n{stderr.strip()}\n"
            + ("offending source lines:\n" + "\n".join(excerpt) if excerpt else ""))

"""The Executable: what `compiler.build` produces and `disco.VirtualMachine` runs.

It holds, for each graph function, its bytecode and signature; the compiled
kernels (one shared object, with each kernel's name and parameter list); the
constants (numpy arrays); and a metadata dict (e.g. parameter placements).
Everything except the shared object and the constants is plain JSON data, so
`export(path)` writes one zip file:

    manifest.json     {"format": "disco-executable", "version": 1, "functions": {...},
                       "kernels": [...], "library": "kernels.so" | null,
                       "constants": [{"file": "const/0.npy", "dtype": "bfloat16"}, ...],
                       "metadata": {...}}
    kernels.so        the kernels (CPU)
    const/<i>.npy     constants (non-numpy dtypes stored as same-width unsigned ints)

and `load_executable(path)` reads it back without importing `compiler` and
without pickle.

Bytecode
--------
A function's code is a list of instructions `[opcode, operands...]` over a register
file (parameters are registers 0..P-1) and a heap of symbolic integers (the values
of `n`, `m`, ... bound from argument shapes). Shape expressions are Python
expression strings over the heap `h`, e.g. "h[0] * 2" (checked at load: only
integer arithmetic, comparisons, min/max). The instruction set is `Op` below.

Memory: ALLOC gives a fresh tensor; ALLOC_STORAGE a byte buffer and ALLOC_VIEW a
tensor viewing it at a byte offset (memory planned by the compiler: tensors with
disjoint lifetimes view the same storage). The VM allocates storages once per
plan key and reuses them across calls, except storages whose views are returned.

Shape patterns (signatures and match_cast) are JSON objects:

    {"kind": "tensor", "dtype": "float32" | null, "ndim": 2 | -1, "shape": [dim, ...] | null}
    {"kind": "shape", "ndim": 2 | -1, "values": [dim, ...] | null}
    {"kind": "prim", "dtype": "int64", "value": dim | null}
    {"kind": "tuple", "fields": [pattern, ...]}
    {"kind": "object"}

where a dim is an int, ["b", heap_index, "n"] (binds symbol n: its first bare
occurrence) or ["e", "h[0] * 2", "n * 2"] (checks against an expression).

CHECK_KERNEL precedes a CALL_KERNEL (same kernel, registers and scalar expressions)
whose argument shapes the compiler could not prove to fit the kernel's buffers. Its
`check` is {"tir": PrimFunc name, "syms": [name, ...], "buffers": [{"where": "buffer
'Y' (output 0)", "pattern": tensor pattern}, ...], "scalars": [{"where", "pattern":
prim pattern}, ...]}: patterns over a heap of the kernel's own size vars. The VM
matches the arrays and scalars against them when it records a plan (once per plan
key), raising SignatureError on a mismatch.
"""
from __future__ import annotations

import ctypes
import hashlib
import io
import json
import os
import threading
import zipfile
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Optional

import numpy as np

from .errors import DiscoError, ExecutableError
from .private_dir import private_dir, why_not_trusted_file, write_atomic
from .tensor import dtype_name, np_dtype

FORMAT = "disco-executable"
VERSION = 1


class Op(IntEnum):
    """VM instructions. Operands follow the opcode in the instruction list."""
    LOAD_CONST = 0   # dst, const_index
    LOAD_IMM = 1     # dst, value (JSON scalar: int, float, str, bool, null)
    PRIM = 2         # dst, expr                      -> Python int/float from the heap
    MAKE_SHAPE = 3   # dst, [expr, ...]               -> tuple of ints
    MATCH = 4        # src, pattern, what             check src, bind new symbols
    ALLOC = 5        # dst, dtype, [expr, ...]        empty tensor
    CALL_KERNEL = 6  # kernel_index, [reg, ...], [expr, ...]   args (ins + outs), scalar args
    CALL_PACKED = 7  # dst | -1, name, [reg, ...]      a function of disco's registry
    CALL_FUNC = 8    # dst, name, [reg, ...]           another graph function
    MAKE_TUPLE = 9   # dst, [reg, ...]
    TUPLE_GET = 10   # dst, src, index
    RET = 11         # src
    ALLOC_STORAGE = 12  # dst, nbytes_expr, dtype     flat byte buffer (PlanMemory's storage)
    ALLOC_VIEW = 13     # dst, storage, offset_expr, dtype, [expr, ...]   tensor viewing storage
    CHECK_KERNEL = 14   # kernel_index, [reg, ...], [expr, ...], check   (see below)


@dataclass
class VMFunction:
    """One graph function: signature (param names and patterns, return pattern) and code."""
    name: str
    params: list[dict]            # [{"name": "X", "pattern": {...}}, ...]
    ret: dict                     # pattern of the returned value
    code: list[list]              # instructions
    num_regs: int
    sym_names: list[str] = field(default_factory=list)   # heap slot -> symbol name
    # symbol name -> the largest value the memory plan assumed (function attr
    # tir_var_upper_bound); the VM refuses larger values when the call binds them
    upper_bounds: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        d = {"name": self.name, "params": self.params, "ret": self.ret, "code": self.code,
             "num_regs": self.num_regs, "sym_names": self.sym_names}
        if self.upper_bounds:
            d["upper_bounds"] = self.upper_bounds
        return d

    @staticmethod
    def from_json(d: dict) -> "VMFunction":
        code = [list(ins) for ins in d["code"]]
        for ins in code:
            try:
                Op(ins[0])
            except ValueError:
                raise DiscoError(f"function {d['name']!r}: unknown opcode {ins[0]!r}") from None
        return VMFunction(d["name"], d["params"], d["ret"], code, d["num_regs"],
                          list(d.get("sym_names", [])),
                          {str(k): int(v) for k, v in (d.get("upper_bounds") or {}).items()})

    def signature_text(self) -> str:
        params = ", ".join(f"{p['name']}: {format_pattern(p['pattern'])}" for p in self.params)
        return f"{self.name}({params}) -> {format_pattern(self.ret)}"


@dataclass
class KernelInfo:
    """A compiled kernel: its symbol in the shared object, its buffer params
    ([{"name", "dtype", "ndim"}]) and the names of its scalar params (int64)."""
    name: str
    buffers: list[dict]
    scalars: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"name": self.name, "buffers": self.buffers, "scalars": self.scalars}

    @staticmethod
    def from_json(d: dict) -> "KernelInfo":
        return KernelInfo(d["name"], d["buffers"], list(d.get("scalars", [])))


@dataclass
class Executable:
    """Bytecode, kernels, constants and metadata of a built module."""
    functions: dict[str, VMFunction]
    kernels: list[KernelInfo] = field(default_factory=list)
    library: Optional[bytes] = field(default=None, repr=False)   # the kernels (CPU .so)
    constants: list[np.ndarray] = field(default_factory=list, repr=False)
    metadata: dict[str, Any] = field(default_factory=dict)
    target: str = "cpu"

    def __post_init__(self):
        self._lib = None
        self._lib_lock = threading.Lock()
        self._bytes: Optional[bytes] = None

    # -- introspection ---------------------------------------------------------
    def signature(self, name: str) -> str:
        return self._function(name).signature_text()

    def _function(self, name: str) -> VMFunction:
        try:
            return self.functions[name]
        except KeyError:
            raise DiscoError(f"executable has no function {name!r}; it has "
                             f"{sorted(self.functions)}") from None

    def as_text(self) -> str:
        """A readable listing of every function's bytecode."""
        lines = []
        for f in self.functions.values():
            lines.append(f"def {f.signature_text()}:  # {f.num_regs} registers")
            for pc, ins in enumerate(f.code):
                ops = ", ".join(json.dumps(o) if not isinstance(o, str) else o for o in ins[1:])
                lines.append(f"  {pc:4d}  {Op(ins[0]).name:<12s} {ops}")
        for i, k in enumerate(self.kernels):
            bufs = ", ".join(f"{b['name']}: {b['dtype']}[{b['ndim']}d]" for b in k.buffers)
            lines.append(f"kernel {i}: {k.name}({bufs}" +
                         (f"; {', '.join(k.scalars)})" if k.scalars else ")"))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.as_text()

    # -- the shared object -----------------------------------------------------
    def load_library(self) -> Optional[ctypes.CDLL]:
        """dlopen the kernels (once), from a content-hashed file in the cache."""
        if self.library is None:
            return None
        with self._lib_lock:
            if self._lib is None:
                self._lib = _dlopen_bytes(self.library)
            return self._lib

    # -- the file format -------------------------------------------------------
    def manifest(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION, "target": self.target,
            "functions": {k: f.to_json() for k, f in self.functions.items()},
            "kernels": [k.to_json() for k in self.kernels],
            "library": "kernels.so" if self.library is not None else None,
            "constants": [{"file": f"const/{i}.npy", "dtype": dtype_name(c.dtype)}
                          for i, c in enumerate(self.constants)],
            "metadata": self.metadata,
        }

    def to_bytes(self) -> bytes:
        """The bytes `export` writes (made once): what a session sends its workers."""
        if self._bytes is None:
            buf = io.BytesIO()
            self.export(buf)
            self._bytes = buf.getvalue()
        return self._bytes

    def export(self, path) -> None:
        """Write the executable to one file (a zip; see the module docstring): a path or a
        writable binary file object."""
        manifest = self.manifest()
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("manifest.json", json.dumps(manifest, indent=1))
            if self.library is not None:
                z.writestr("kernels.so", self.library)
            for entry, c in zip(manifest["constants"], self.constants):
                buf = io.BytesIO()
                np.save(buf, _storable(np.asarray(c, order="C")), allow_pickle=False)  # keeps 0-d
                z.writestr(entry["file"], buf.getvalue())


def _storable(a: np.ndarray) -> np.ndarray:
    """Dtypes numpy cannot save natively (bfloat16) go as unsigned ints of their width."""
    if a.dtype.kind == "V" or a.dtype.type.__module__.startswith("ml_dtypes"):
        return a.view(f"uint{a.dtype.itemsize * 8}")
    return a


def load_executable(path: str | os.PathLike | bytes) -> Executable:
    """Read a file written by `Executable.export` (a path, or the file's bytes as
    `Executable.to_bytes` gives them). Needs only `disco` (and numpy)."""
    if isinstance(path, (bytes, bytearray, memoryview)):
        source, path = io.BytesIO(path), "<executable bytes>"
    else:
        source = path
    try:
        z = zipfile.ZipFile(source, "r")
    except (OSError, zipfile.BadZipFile) as err:
        raise ExecutableError(f"cannot read executable {os.fspath(path)!r}: {err}") from err
    with z:
        try:
            manifest = json.loads(z.read("manifest.json"))
        except KeyError:
            raise ExecutableError(f"{os.fspath(path)!r} is not a disco executable "
                                  "(no manifest.json)") from None
        except (ValueError, RecursionError) as e:
            raise ExecutableError(f"{os.fspath(path)!r}: manifest.json is not valid JSON: {e}") from None
        _check_manifest(manifest, os.fspath(path))
        try:
            library = z.read(manifest["library"]) if manifest.get("library") else None
            constants = []
            for i, entry in enumerate(manifest["constants"]):
                a = np.load(io.BytesIO(z.read(entry["file"])), allow_pickle=False)
                constants.append(a.view(np_dtype(entry["dtype"])))
            functions = {k: VMFunction.from_json(f) for k, f in manifest["functions"].items()}
            kernels = [KernelInfo.from_json(k) for k in manifest["kernels"]]
        except DiscoError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError, zipfile.BadZipFile) as e:
            raise ExecutableError(f"{os.fspath(path)!r}: malformed executable: {type(e).__name__}: {e}") from None
    return Executable(functions, kernels, library, constants, manifest.get("metadata", {}),
                      manifest.get("target", "cpu"))


# Top-level manifest keys and their JSON types (library may be null, metadata and target may be absent).
_MANIFEST_KEYS = {"format": str, "version": int, "functions": dict, "kernels": list,
                  "library": (str, type(None)), "constants": list}


def _check_manifest(manifest, path: str) -> None:
    """ExecutableError naming `path` and the key unless `manifest` has the file format's
    keys with their types (the module docstring)."""
    if not isinstance(manifest, dict):
        raise ExecutableError(f"{path!r}: manifest.json is a JSON {type(manifest).__name__}, expected an object")
    if manifest.get("format") != FORMAT:
        raise ExecutableError(f"{path!r} is not a disco executable (format {manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise ExecutableError(f"{path!r}: executable format version {manifest.get('version')} not supported "
                              f"(this disco reads {VERSION})")
    for key, kind in _MANIFEST_KEYS.items():
        if key not in manifest:
            raise ExecutableError(f"{path!r}: manifest.json has no {key!r} (a damaged or hand-edited file?)")
        if not isinstance(manifest[key], kind):
            raise ExecutableError(f"{path!r}: manifest.json's {key!r} is a {type(manifest[key]).__name__}, "
                                  f"expected {getattr(kind, '__name__', 'a string or null')}")
    for what, items, fields in (("function", list(manifest["functions"].values()),
                                 ("name", "params", "ret", "code", "num_regs")),
                                ("kernel", manifest["kernels"], ("name", "buffers")),
                                ("constant", manifest["constants"], ("file", "dtype"))):
        for i, item in enumerate(items):
            missing = [f for f in fields if not isinstance(item, dict) or f not in item]
            if missing:
                raise ExecutableError(f"{path!r}: manifest.json's {what} {i} lacks {missing}")
    if not isinstance(manifest.get("metadata", {}), dict):
        raise ExecutableError(f"{path!r}: manifest.json's 'metadata' is not an object")


# -- shared objects ------------------------------------------------------------------

_LOADED: dict[str, ctypes.CDLL] = {}
_LOADED_LOCK = threading.Lock()


def cache_dir() -> str:
    """Where loaded kernel libraries are written: $DISCO_CACHE_DIR or ~/.cache/disco,
    under "kernels" (not yet checked; `kernel_dir` is what is used)."""
    base = os.environ.get("DISCO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "disco")
    return os.path.join(base, "kernels")


def kernel_dir() -> str:
    """`cache_dir()` if it is private to this user, else a private temporary directory
    (disco/private_dir.py says why)."""
    return private_dir(cache_dir(), "kernels")


def _dlopen_bytes(data: bytes) -> ctypes.CDLL:
    """dlopen `data` from the cache: the file named by its sha256 is loaded only when it
    is ours, writable by no one else and holds exactly `data` (else it is rewritten)."""
    digest = hashlib.sha256(data).hexdigest()[:32]
    with _LOADED_LOCK:
        lib = _LOADED.get(digest)
        if lib is not None:
            return lib
        directory = kernel_dir()
        name = f"{digest}.so"
        path = os.path.join(directory, name)
        if not _holds(path, data):
            try:  # write then rename: concurrent workers never see a half-written file
                path = write_atomic(directory, name, data)
            except OSError as err:
                raise DiscoError(f"cannot write the executable's kernels to {path}: {err}") from err
        try:
            lib = ctypes.CDLL(path)
        except OSError as err:
            raise DiscoError(f"cannot load the executable's kernels from {path}: {err}") from err
        _LOADED[digest] = lib
        return lib


def _holds(path: str, data: bytes) -> bool:
    """Whether `path` is a regular file of ours, writable only by us, holding `data`."""
    try:
        if why_not_trusted_file(path) is not None:
            return False
        with open(path, "rb") as f:
            return f.read(len(data) + 1) == data
    except OSError:
        return False


# -- patterns as text ----------------------------------------------------------------

def format_dim(d: Any) -> str:
    if isinstance(d, (int, str)):
        return str(d)
    return d[2]


def format_shape(dims: list) -> str:
    inner = ", ".join(format_dim(d) for d in dims)
    return f"({inner},)" if len(dims) == 1 else f"({inner})"


def format_pattern(p: dict) -> str:
    kind = p["kind"]
    if kind == "tensor":
        shape = format_shape(p["shape"]) if p.get("shape") is not None else f"ndim={p['ndim']}"
        return f"Tensor({shape}, {p.get('dtype') or 'any'})"
    if kind == "shape":
        return f"Shape({format_shape(p['values'])})" if p.get("values") is not None \
            else f"Shape(ndim={p['ndim']})"
    if kind == "prim":
        v = p.get("value")
        return f"Prim({p['dtype']}" + (f", {format_dim(v)})" if v is not None else ")")
    if kind == "tuple":
        return "Tuple(" + ", ".join(format_pattern(f) for f in p["fields"]) + ")"
    return "Object"

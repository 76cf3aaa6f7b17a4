"""A checkpoint's tensors by name, read in slices, whatever the file format.

`Checkpoint` is the interface the weight loader (weights.py) reads through; a format
provides `open_checkpoint`'s subclass: Hugging Face safetensors directories (one file,
or several with model.safetensors.index.json), and GGUF files (gguf.py).

    ckpt = open_checkpoint("path/to/dir_or_file.gguf")
    ckpt.names()                      # tensor names (Hugging Face's, for GGUF too)
    ckpt.shape(name), ckpt.dtype(name)
    ckpt.read(name, rows=slice(a, b))  # rows a..b of the tensor (dim 0), a numpy array

`SafetensorsCheckpoint` reads the format directly (an 8-byte little-endian header
length, a JSON header of name -> dtype, shape, data_offsets, then the raw row-major
data), so it needs neither the `safetensors` package nor torch. Opening reads the
headers only; `read` reads exactly the bytes of the rows asked for with `os.preadv`
into the array it returns: no memory map, so nothing of the file counts in the
process's memory but what was asked for.
"""
from __future__ import annotations

import json
import math
import os
import threading
from typing import Optional, Sequence

import numpy as np

from disco.errors import CheckpointError, DiscoError  # noqa: F401 (CheckpointError: re-exported)
from disco.llm.safetensors_header import (SAFETENSORS_DTYPES, Entry as _Entry, np_dtype as _np_dtype,  # noqa: F401
                                          read_entries as _entries)


class Checkpoint:
    """Tensors by name; read() returns a new numpy array (the caller may keep it)."""

    path: str

    def names(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, name: str) -> np.dtype:
        raise NotImplementedError

    def file_of(self, name: str) -> str:
        """The file holding `name` (for error messages)."""
        return self.path

    def read(self, name: str, rows: Optional[slice] = None) -> np.ndarray:
        """Rows `rows` (a slice of dim 0; all when None) of tensor `name`, reading no more
        of the file than those rows."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SafetensorsCheckpoint(Checkpoint):
    """The tensors of one or several safetensors files (see the module docstring).
    `path` is what was opened (for messages); `files` the files, in order."""

    def __init__(self, path: str, files: Sequence[str]):
        self.path = os.fspath(path)
        self.files = [os.fspath(f) for f in files]
        self._entries: dict[str, _Entry] = {}
        for f in self.files:
            for name, e in _entries(f).items():
                if name in self._entries:
                    raise CheckpointError(f"checkpoint {self.path!r}: tensor {name!r} is in both "
                                          f"{self._entries[name].file!r} and {f!r}")
                self._entries[name] = e
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    @staticmethod
    def from_index(index: str) -> "SafetensorsCheckpoint":
        """A sharded checkpoint: the files of model.safetensors.index.json's weight_map,
        each tensor checked to be in the file the index names."""
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"cannot read the weight_map of index {index!r}: {e!r}") from e
        base = os.path.dirname(os.path.abspath(index))
        files = list(dict.fromkeys(os.path.join(base, f) for f in weight_map.values()))
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise CheckpointError(f"index {index!r} names files that do not exist: {missing}")
        ckpt = SafetensorsCheckpoint(index, files)
        for name, f in weight_map.items():
            e = ckpt._entries.get(name)
            if e is None or e.file != os.path.join(base, f):
                where = f"it is in {e.file!r}" if e is not None else "no file of the index has it"
                ckpt.close()
                raise CheckpointError(f"index {index!r} puts tensor {name!r} in {f!r}, but {where}")
        return ckpt

    def names(self) -> list[str]:
        return list(self._entries)

    def _entry(self, name: str) -> _Entry:
        e = self._entries.get(name)
        if e is None:
            import difflib
            close = difflib.get_close_matches(name, list(self._entries), n=5, cutoff=0.6)
            raise CheckpointError(f"checkpoint {self.path!r} has no tensor {name!r}" +
                                  (f"; close names: {close}" if close else ""))
        return e

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def dtype(self, name: str) -> np.dtype:
        e = self._entry(name)
        return _np_dtype(e.code, e.file, name)

    def dtype_code(self, name: str) -> str:
        """The file's dtype code ("BF16", ...), also for dtypes disco cannot read."""
        return self._entry(name).code

    def file_of(self, name: str) -> str:
        return self._entry(name).file

    def read(self, name: str, rows: Optional[slice] = None) -> np.ndarray:
        e = self._entry(name)
        dtype = _np_dtype(e.code, e.file, name)
        if rows is None or not e.shape:
            first, count = 0, (e.shape[0] if e.shape else 1)
            shape = e.shape
        else:
            first, stop, step = rows.indices(e.shape[0])
            if step != 1:
                raise CheckpointError(f"{e.file!r}: tensor {name!r}: rows must be a contiguous slice, "
                                      f"got step {step}")
            count = max(stop - first, 0)
            shape = (count,) + e.shape[1:]
        out = np.empty(shape, dtype)
        row_bytes = math.prod(e.shape[1:]) * dtype.itemsize
        self._pread(e, out, e.offset + first * row_bytes, name)
        return out

    def _pread(self, e: _Entry, out: np.ndarray, offset: int, name: str) -> None:
        """Fill `out` (C-contiguous) with the file's bytes from `offset`."""
        if out.nbytes == 0:
            return
        view = memoryview(out.reshape(-1).view(np.uint8))
        fd, done = self._fd(e.file), 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], offset + done)
            if n <= 0:
                raise CheckpointError(f"{e.file!r}: the file ended while reading tensor {name!r} "
                                      f"(byte {offset + done}); it is truncated")
            done += n

    def _fd(self, file: str) -> int:
        fd = self._fds.get(file)
        if fd is None:
            with self._lock:
                fd = self._fds.get(file)
                if fd is None:
                    try:
                        fd = self._fds[file] = os.open(file, os.O_RDONLY)
                    except OSError as e:
                        raise CheckpointError(f"cannot open {file!r}: {e}") from e
        return fd

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"SafetensorsCheckpoint({self.path!r}, {len(self._entries)} tensors in {len(self.files)} files)"


INDEX = "model.safetensors.index.json"


def open_checkpoint(path) -> Checkpoint:
    """The checkpoint at `path`: a directory holding model.safetensors.index.json (a
    sharded checkpoint), else model.safetensors, else its *.safetensors files; a
    .safetensors file; an index .json file; a .gguf file (gguf.py)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, INDEX)):
            return SafetensorsCheckpoint.from_index(os.path.join(path, INDEX))
        if os.path.isfile(os.path.join(path, "model.safetensors")):
            return SafetensorsCheckpoint(path, [os.path.join(path, "model.safetensors")])
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
        if files:
            return SafetensorsCheckpoint(path, files)
        raise CheckpointError(f"directory {path!r} holds no {INDEX}, model.safetensors or other "
                              f".safetensors file")
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path!r}: no such file or directory")
    if path.endswith(".json"):
        return SafetensorsCheckpoint.from_index(path)
    if path.endswith(".gguf"):
        try:
            from .gguf import GGUFCheckpoint
        except ImportError as e:
            raise CheckpointError(f"{path!r}: reading GGUF files needs disco.llm.gguf ({e})") from e
        return GGUFCheckpoint(path)
    return SafetensorsCheckpoint(path, [path])

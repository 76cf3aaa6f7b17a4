"""A checkpoint's tensors by name, read in slices, whatever the file format.

`Checkpoint` is the interface the weight loader (weights.py) reads through; a format
provides `open_checkpoint`'s subclass: Hugging Face safetensors directories (one file,
or several with model.safetensors.index.json), and GGUF files (gguf.py).

    ckpt = open_checkpoint("path/to/dir_or_file.gguf")
    ckpt.names()                      # tensor names (Hugging Face's, for GGUF too)
    ckpt.shape(name), ckpt.dtype(name)
    ckpt.read(name, rows=slice(a, b))  # rows a..b of the tensor (dim 0), a numpy array
"""
from __future__ import annotations

from typing import Optional

import numpy as np


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

"""The header of a safetensors file, read and checked before any tensor data is.

A safetensors file is an 8-byte little-endian header length, a JSON object
(name -> {"dtype", "shape", "data_offsets"}, plus an optional "__metadata__" of
strings), then the data. The file may come from anywhere, so every field is checked
here, once: the header length against the file's size, the JSON's types, each entry's
keys, dtype code, shape (non-negative ints) and data_offsets (two ints, inside the
data, exactly shape x itemsize bytes, not overlapping another tensor). Whatever is
wrong raises `CheckpointError` naming the file, the tensor and what was expected;
nothing else escapes (no KeyError, OverflowError or MemoryError from a hostile file).
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

import numpy as np

from disco.errors import CheckpointError

# safetensors dtype codes -> numpy dtype names (ml_dtypes' for the 16- and 8-bit floats)
SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}
# Bytes per element of the codes the format defines (also those disco cannot convert),
# so data_offsets are checked whatever the dtype.
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
            "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "U64": 8, "U32": 4, "U16": 2, "C64": 8}
ENTRY_KEYS = {"dtype", "shape", "data_offsets"}
MAX_HEADER_BYTES = 100 << 20   # what the safetensors library itself accepts
MAX_NDIM = 64


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one tensor lies: its file, dtype code, shape and the absolute byte offset
    and length of its data."""
    file: str
    code: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def np_dtype(code: str, file: str, name: str) -> np.dtype:
    """numpy's dtype for a safetensors code; CheckpointError for one disco cannot read."""
    kind = SAFETENSORS_DTYPES.get(code)
    if kind is None:
        raise CheckpointError(f"{file!r}: tensor {name!r} has dtype {code}, which disco cannot read "
                              f"(supported: {', '.join(SAFETENSORS_DTYPES)})")
    if kind in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes
        return np.dtype(getattr(ml_dtypes, kind))
    return np.dtype(kind)


def _json_header(path: str) -> tuple[dict, int, int]:
    """(header object, data start, file size); the length checked before it is read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path!r} is not a safetensors file: {size} bytes, fewer than the "
                                      "8 of the header length")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(
                    f"{path!r}: header length {length} does not fit: the file has {size - 8} bytes after "
                    f"the length and a header may take at most {MAX_HEADER_BYTES} (truncated or not "
                    "a safetensors file?)")
            raw = f.read(length)
    except OSError as e:
        raise CheckpointError(f"cannot read safetensors file {path!r}: {e}") from e
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:   # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"{path!r}: the safetensors header is not valid JSON: "
                              f"{type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path!r}: the safetensors header is a JSON {type(header).__name__}, "
                              "expected an object of tensor entries")
    return header, 8 + length, size


def _int_list(value, what: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise CheckpointError(f"{where}: {what} must be a list of integers, given {value!r:.120}")
    return tuple(value)


def _entry(path: str, name: str, e, start: int, size: int) -> Entry:
    where = f"{path!r}: tensor {name!r}"
    if not isinstance(e, dict) or set(e) != ENTRY_KEYS:
        got = sorted(e) if isinstance(e, dict) else type(e).__name__
        raise CheckpointError(f"{where}: a header entry must have exactly the keys "
                              f"{sorted(ENTRY_KEYS)}, given {got}")
    code = e["dtype"]
    if not isinstance(code, str) or code not in ITEMSIZE:
        raise CheckpointError(f"{where}: unknown dtype {code!r:.60}; the format's codes are "
                              f"{', '.join(ITEMSIZE)}")
    shape = _int_list(e["shape"], "shape", where)
    if len(shape) > MAX_NDIM or any(d < 0 for d in shape):
        raise CheckpointError(f"{where}: shape {list(shape)} must have at most {MAX_NDIM} "
                              "non-negative dimensions")
    offsets = _int_list(e["data_offsets"], "data_offsets", where)
    if len(offsets) != 2:
        raise CheckpointError(f"{where}: data_offsets must be [begin, end], given {list(offsets)}")
    begin, end = offsets
    data = size - start
    if not 0 <= begin <= end <= data:
        raise CheckpointError(f"{where}: data_offsets {[begin, end]} lie outside the file's {data} bytes "
                              "of data (a truncated file?)")
    want = math.prod(shape) * ITEMSIZE[code]
    if end - begin != want:
        raise CheckpointError(f"{where}: shape {list(shape)} of dtype {code} takes {want} bytes, "
                              f"its data_offsets {[begin, end]} give {end - begin}")
    return Entry(path, code, shape, start + begin, end - begin)


def read_entries(path: str) -> dict[str, Entry]:
    """Every tensor of safetensors file `path`, checked (see the module docstring)."""
    path = os.fspath(path)
    header, start, size = _json_header(path)
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise CheckpointError(f"{path!r}: __metadata__ must be an object of strings, "
                              f"given {meta!r:.120}")
    entries = {name: _entry(path, name, e, start, size) for name, e in header.items()}
    spans = sorted((e.offset, e.offset + e.nbytes, n) for n, e in entries.items() if e.nbytes)
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        if begin < end:
            raise CheckpointError(f"{path!r}: the data of tensors {a!r} and {b!r} overlap "
                                  f"(bytes {begin - start} to {end - start} of the data)")
    return entries

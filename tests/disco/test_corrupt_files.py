"""Issue 15, case 4: corrupt safetensors files and executables raise the project's
errors (CheckpointError, ExecutableError) naming the file, the tensor and what was
wrong -- never OverflowError, MemoryError, KeyError, or another tensor's bytes.

The fuzz tests feed random and mutated files to the reader and to disco.load_shards
on a session: each either reads tensors equal to what was written (when the mutation
kept the file valid) or raises CheckpointError."""
import io
import json
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import disco
from disco.errors import CheckpointError, DiscoError, ExecutableError
from disco.llm.checkpoint import open_checkpoint


def write(path, header, data: bytes = b"", length=None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def entry(dtype="F32", shape=(1,), offsets=(0, 4)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def read_all(path):
    with open_checkpoint(path) as c:
        return {n: c.read(n) for n in c.names()}


# (name, header, data, header length or None, the message expected)
CASES = [
    ("length 2^63", {}, b"", 1 << 63, r"header length 9223372036854775808 does not fit: the file has 2 bytes"),
    ("length 2^40", {}, b"", 1 << 40, r"header length 1099511627776 does not fit"),
    ("a JSON list", [1, 2], b"", None, r"header is a JSON list, expected an object"),
    ("no shape", {"a": {"dtype": "F32", "data_offsets": [0, 4]}}, bytes(4), None,
     r"tensor 'a': a header entry must have exactly the keys \['data_offsets', 'dtype', 'shape'\], "
     r"given \['data_offsets', 'dtype'\]"),
    ("4 bytes for 2 floats", {"a": entry(shape=(2,), offsets=(0, 4)), "b": entry(offsets=(4, 8))}, bytes(8), None,
     r"tensor 'a': shape \[2\] of dtype F32 takes 8 bytes, its data_offsets \[0, 4\] give 4"),
    ("[0, 0] for a float", {"a": entry(offsets=(0, 0))}, bytes(4), None,
     r"tensor 'a': shape \[1\] of dtype F32 takes 4 bytes, its data_offsets \[0, 0\] give 0"),
    ("truncated data", {"a": entry(shape=(4,), offsets=(0, 16))}, bytes(4), None,
     r"tensor 'a': data_offsets \[0, 16\] lie outside the file's 4 bytes of data \(a truncated file\?\)"),
    ("float offsets", {"a": entry(offsets=(0.0, 4))}, bytes(4), None, r"data_offsets must be a list of integers"),
    ("negative dims", {"a": entry(shape=(-1, -4), offsets=(0, 16))}, bytes(16), None, r"non-negative dimensions"),
    ("a dtype list", {"a": entry(dtype=["F32"])}, bytes(4), None, r"unknown dtype \['F32'\]"),
    ("an unknown dtype", {"a": entry(dtype="Q9")}, bytes(4), None, r"unknown dtype 'Q9'"),
    ("overlapping", {"a": entry(), "b": entry()}, bytes(4), None, r"the data of tensors 'a' and 'b' overlap"),
    ("deep JSON", b"[" * 100_000, b"", None, r"not valid JSON: RecursionError"),
    ("not UTF-8", b"\xff\xfe{}", b"", None, r"not valid JSON"),
    ("bad metadata", {"__metadata__": [1], "a": entry()}, bytes(4), None, r"__metadata__ must be an object of strings"),
    ("huge shape", {"a": entry(shape=(1 << 62, 1 << 62))}, bytes(4), None, r"takes \d+ bytes"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_safetensors(case, tmp_path):
    _, header, data, length, message = case
    path = write(tmp_path / "m.safetensors", header, data, length)
    with pytest.raises(CheckpointError, match=r"'.*m\.safetensors'.*" + message):
        read_all(path)


def test_short_file(tmp_path):
    (tmp_path / "s.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match=r"'.*s\.safetensors' is not a safetensors file: 2 bytes"):
        read_all(tmp_path / "s.safetensors")


def test_valid_file_reads_back(tmp_path):
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([7, 8], np.int64)
    header = {"__metadata__": {"format": "pt"}, "a": entry(shape=(2, 3), offsets=(0, 24)),
              "b": entry("I64", (2,), (24, 40)), "e": entry(shape=(0, 3), offsets=(40, 40))}
    got = read_all(write(tmp_path / "v.safetensors", header, a.tobytes() + b.tobytes()))
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)
    assert got["e"].shape == (0, 3)


def test_load_shards_raises_checkpoint_error(tmp_path):
    path = write(tmp_path / "w.safetensors", {"a": entry(shape=(2,), offsets=(0, 4))}, bytes(8))
    with disco.ThreadedSession(2) as sess:
        with pytest.raises(CheckpointError, match=r"tensor 'a': shape \[2\] of dtype F32 takes 8 bytes"):
            disco.load_shards(sess, str(path), {"a": "R"})


# -- fuzz --------------------------------------------------------------------------------

def _good_file() -> bytes:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(4, dtype=np.float16)
    header = {"a": entry(shape=(3, 4), offsets=(0, 48)), "b": entry("F16", (4,), (48, 56))}
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + a.tobytes() + b.tobytes()


GOOD = _good_file()
EXPECTED = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.arange(4, dtype=np.float16)}

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=20)
entries = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "Q", ""]) | json_values,
    "shape": st.lists(st.integers(-3, 1 << 40), max_size=4) | json_values,
    "data_offsets": st.lists(st.integers(-8, 1 << 62), max_size=3) | json_values,
    "extra": json_values})


def _check(path):
    """CheckpointError, or tensors whose bytes are exactly those their header entry
    points at (read here independently of the reader); nothing else."""
    try:
        got = read_all(path)
    except CheckpointError:
        return
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    for name, value in got.items():
        begin, end = header[name]["data_offsets"]
        assert value.tobytes() == raw[8 + length + begin:8 + length + end], name


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(max_size=6), entries | json_values, max_size=4), st.binary(max_size=64),
       st.none() | st.integers(0, 1 << 64 - 1))
def test_fuzz_random_headers(tmp_path, header, data, length):
    _check(write(tmp_path / "f.safetensors", header, data, length))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, len(GOOD)))
def test_fuzz_mutated_file(tmp_path, flips, keep):
    data = bytearray(GOOD)
    for at, byte in flips:
        data[at] = byte
    path = tmp_path / "g.safetensors"
    path.write_bytes(bytes(data[:keep]) if keep < len(GOOD) // 2 else bytes(data))
    _check(path)


@pytest.fixture(scope="module")
def sess():
    with disco.ThreadedSession(2) as s:
        yield s


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(8, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_fuzz_load_shards(tmp_path, sess, flips):
    data = bytearray(GOOD)
    for at, byte in flips:
        data[at] = byte
    path = tmp_path / "l.safetensors"
    path.write_bytes(bytes(data))
    try:
        refs = disco.load_shards(sess, str(path), {})
    except DiscoError as e:
        assert isinstance(e, CheckpointError) or "load_shards" in str(e), e
        return
    for name, ref in refs.items():
        assert ref.fetch().shape == read_all(path)[name].shape


# -- executables -------------------------------------------------------------------------

def _executable_bytes(manifest) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("manifest.json", json.dumps(manifest))
    return buf.getvalue()


GOOD_MANIFEST = {"format": "disco-executable", "version": 1, "target": "cpu",
                 "functions": {"main": {"name": "main", "params": [], "ret": {"kind": "object"},
                                        "code": [[11, 0]], "num_regs": 1}},
                 "kernels": [], "library": None, "constants": [], "metadata": {}}


def test_good_manifest_loads():
    ex = disco.load_executable(_executable_bytes(GOOD_MANIFEST))
    assert list(ex.functions) == ["main"]


@pytest.mark.parametrize("key", ["functions", "kernels", "library", "constants"])
def test_manifest_missing_key(key):
    manifest = {k: v for k, v in GOOD_MANIFEST.items() if k != key}
    with pytest.raises(ExecutableError, match=rf"'<executable bytes>': manifest.json has no '{key}'"):
        disco.load_executable(_executable_bytes(manifest))


@pytest.mark.parametrize("change, message", [
    ({"functions": []}, r"manifest.json's 'functions' is a list, expected dict"),
    ({"functions": {"main": {"name": "main"}}}, r"function 0 lacks \['params', 'ret', 'code', 'num_regs'\]"),
    ({"constants": [{"file": "const/0.npy", "dtype": "float32"}]}, r"malformed executable: KeyError"),
    ({"kernels": [5]}, r"kernel 0 lacks \['name', 'buffers'\]"),
    ({"metadata": []}, r"'metadata' is not an object"),
])
def test_manifest_malformed(change, message):
    with pytest.raises(ExecutableError, match=message):
        disco.load_executable(_executable_bytes({**GOOD_MANIFEST, **change}))

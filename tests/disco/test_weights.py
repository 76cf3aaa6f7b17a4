"""disco.llm.weights and disco.llm.checkpoint: each device's block of a parameter, read
from safetensors files through the spec's maps, against numpy constructions of the whole
transformed tensor (pad, repeated heads, regrouped columns) for 1, 2 and 4 devices;
sharded checkpoints with an index; float16 and bfloat16 sources; what is read from the
file; the error messages; two workers of a session; each worker's peak memory."""
from __future__ import annotations

import json
import mmap
import os
import re
import struct
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import disco
from disco.errors import WorkerError
from disco.llm import weights
from disco.llm.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from disco.llm.synthetic import llama_specs, write_random_checkpoint
from disco.llm.weights import check_specs, load_block, place_weights

pytestmark = pytest.mark.timeout(120)

BF16 = np.dtype(ml_dtypes.bfloat16)
CODES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", BF16: "BF16",
         np.dtype(np.int64): "I64"}


def save(tensors: dict, path) -> str:
    """A safetensors file (an 8-byte header length, a JSON header, the raw bytes),
    written here so that bfloat16 needs no torch."""
    header, offset = {}, 0
    for name, a in tensors.items():
        header[name] = {"dtype": CODES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a).tobytes())
    return str(path)


def spec(name, shape, placement="R", maps=(), source=None, dtype="float32") -> dict:
    return {"name": name, "source": source or name, "shape": list(shape), "dtype": dtype,
            "placement": placement, "maps": list(maps)}


# -- the transformed tensors, built directly with numpy ---------------------------------


def padded(w, n, axis=0):
    widths = [(0, 0)] * w.ndim
    widths[axis] = (0, n - w.shape[axis])
    return np.pad(w, widths)


def repeated(w, heads, r, axis=0):
    """Each of `heads` heads (blocks along `axis`) `r` times in a row."""
    s = w.shape
    x = w.reshape(s[:axis] + (heads, s[axis] // heads) + s[axis + 1:])
    return np.repeat(x, r, axis=axis).reshape(s[:axis] + (s[axis] * r,) + s[axis + 1:])


def regrouped(w, parts, groups):
    """Last axis: parts x groups x rest -> groups x parts x rest."""
    *lead, n = w.shape
    x = w.reshape(*lead, parts, groups, n // (parts * groups))
    return np.swapaxes(x, -3, -2).reshape(*lead, n)


RNG = np.random.default_rng(0)
SOURCES = {
    "emb": RNG.standard_normal((10, 8)).astype(np.float32),      # a vocabulary of 10
    "k": RNG.standard_normal((6, 8)).astype(np.float32),         # 2 heads of 3 rows
    "kb": RNG.standard_normal((6,)).astype(np.float32),
    "qkv": RNG.standard_normal((8, 24)).astype(np.float32),      # GPT-2's c_attn: (in, q|k|v)
    "qkvb": RNG.standard_normal((24,)).astype(np.float32),
    "o": RNG.standard_normal((8, 12)).astype(np.float32),
}
S = SOURCES


def pad(n, axis=0):
    return {"axis": axis, "op": "pad", "size": n}


def rep(h, r, axis=0):
    return {"axis": axis, "op": "repeat_heads", "heads": h, "repeat": r}


def regroup(p, g, axis=-1):
    return {"axis": axis, "op": "regroup", "parts": p, "groups": g}


# (source, maps, the whole parameter from numpy)
CASES = {
    "pad": ("emb", [pad(12)], padded(S["emb"], 12)),
    "repeat_heads": ("k", [rep(2, 2)], repeated(S["k"], 2, 2)),
    "repeat_heads x4": ("k", [rep(2, 4)], repeated(S["k"], 2, 4)),
    "repeat_heads bias": ("kb", [rep(2, 2)], repeated(S["kb"], 2, 2)),
    "regroup 1": ("qkv", [regroup(3, 1)], S["qkv"]),
    "regroup 2": ("qkv", [regroup(3, 2)], regrouped(S["qkv"], 3, 2)),
    "regroup 4": ("qkv", [regroup(3, 4)], regrouped(S["qkv"], 3, 4)),
    "regroup 4 bias": ("qkvb", [regroup(3, 4)], regrouped(S["qkvb"], 3, 4)),
    "none": ("o", [], S["o"]),
    "pad and regroup": ("emb", [pad(12), regroup(2, 2)], regrouped(padded(S["emb"], 12), 2, 2)),
    "repeat then pad": ("k", [rep(2, 2), pad(16)], padded(repeated(S["k"], 2, 2), 16)),
    "pad columns": ("o", [pad(16, axis=-1)], padded(S["o"], 16, axis=1)),
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    c = open_checkpoint(save(SOURCES, tmp_path_factory.mktemp("w") / "model.safetensors"))
    yield c
    c.close()


def joined(ckpt, sp, tp) -> np.ndarray:
    """Every device's block of a mesh of `tp`, each checked to have its share of the
    shape, joined along the split dim (checked equal where replicated)."""
    blocks = [load_block(ckpt, sp, (tp,), d) for d in range(tp)]
    assert all(b.dtype == np.dtype(sp["dtype"]) or sp["dtype"] == "bfloat16" for b in blocks)
    if sp["placement"] == "R":
        for b in blocks[1:]:
            np.testing.assert_array_equal(b, blocks[0])
        return blocks[0]
    dim = int(sp["placement"][2:-1])
    for b in blocks:
        assert b.shape[dim] * tp == sp["shape"][dim] and b.flags.c_contiguous
    return np.concatenate(blocks, axis=dim)


@pytest.mark.parametrize("chunk", [16 << 20, 40], ids=["chunk16MiB", "chunk40B"])
@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("case", list(CASES))
def test_blocks_put_together_are_the_transformed_tensor(ckpt, monkeypatch, case, tp, chunk):
    monkeypatch.setattr(weights, "CHUNK_BYTES", chunk)       # 40 bytes: many chunks per block
    source, maps, whole = CASES[case]
    for placement in ["R"] + [f"S[{d}]" for d in range(whole.ndim)]:
        dim = int(placement[2:-1]) if placement != "R" else None
        if dim is not None and whole.shape[dim] % tp:
            continue
        sp = spec("p", whole.shape, placement, maps, source=source)
        np.testing.assert_array_equal(joined(ckpt, json.loads(json.dumps(sp)), tp), whole,
                                      err_msg=f"{case}, {placement} on {tp} devices")


class Recording(Checkpoint):
    """A checkpoint that records the rows of every read."""

    def __init__(self, inner):
        self.inner, self.path, self.reads = inner, inner.path, []

    def names(self):
        return self.inner.names()

    def shape(self, name):
        return self.inner.shape(name)

    def dtype(self, name):
        return self.inner.dtype(name)

    def read(self, name, rows=None):
        out = self.inner.read(name, rows)
        self.reads.append((name, len(out)))
        return out


def test_a_device_reads_only_its_rows(ckpt, monkeypatch):
    """Row blocks: each device reads just its rows, once; column blocks: every row, a
    chunk at a time."""
    rec = Recording(ckpt)
    for d in range(4):
        rec.reads.clear()
        load_block(rec, spec("p", (12, 8), "S[0]", [pad(12)], source="emb"), (4,), d)
        assert sum(n for _, n in rec.reads) == [3, 3, 3, 1][d]     # 10 real rows, 2 padded
        rec.reads.clear()
        load_block(rec, spec("p", (12, 8), "S[0]", [rep(2, 2)], source="k"), (4,), d)
        assert rec.reads == [("k", 3)]                              # its one head
    monkeypatch.setattr(weights, "CHUNK_BYTES", 2 * 12 * 4)         # two rows of "o"
    rec.reads.clear()
    load_block(rec, spec("p", (8, 12), "S[1]", source="o"), (2,), 1)
    assert rec.reads == [("o", 2)] * 4


def test_preadv_reads_only_the_block(tmp_path, monkeypatch):
    """The file's bytes read for a row block are the block's, nothing else."""
    w = np.arange(64 * 16, dtype=np.float32).reshape(64, 16)
    path = save({"w": w}, tmp_path / "model.safetensors")
    count = []
    real = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, off: count.append(real(fd, bufs, off)) or count[-1])
    with open_checkpoint(path) as c:
        b = load_block(c, spec("w", (64, 16), "S[0]"), (4,), 2)
    np.testing.assert_array_equal(b, w[32:48])
    assert sum(count) == b.nbytes


@pytest.mark.parametrize("target", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("source", [np.float16, ml_dtypes.bfloat16, np.float32])
def test_float16_and_bfloat16_sources(tmp_path, source, target):
    w = (RNG.standard_normal((8, 12)) * 3).astype(source)
    path = save({"w": w, "b": w[0].copy()}, tmp_path / "model.safetensors")
    want = w.astype(np.float32).astype(weights._dtype(target))
    with open_checkpoint(path) as c:
        assert c.dtype("w") == np.dtype(source)
        for placement in ("R", "S[0]", "S[1]"):
            got = joined(c, spec("w", (8, 12), placement, dtype=target), 2)
            assert got.dtype == weights._dtype(target)
            np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
        got = joined(c, spec("w", (8, 16), "S[1]", [pad(16, axis=1)], dtype=target), 4)
        np.testing.assert_array_equal(got.astype(np.float32), padded(want.astype(np.float32), 16, 1))


def test_sharded_checkpoint_with_index(tmp_path):
    first = {"a": S["emb"], "b": S["k"]}
    second = {"c": S["qkv"]}
    save(first, tmp_path / "model-00001-of-00002.safetensors")
    save(second, tmp_path / "model-00002-of-00002.safetensors")
    save({"stray": S["o"]}, tmp_path / "consolidated.safetensors")      # not in the index
    index = {"metadata": {"total_size": 0},
             "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                            "c": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with open_checkpoint(tmp_path) as c:
        assert sorted(c.names()) == ["a", "b", "c"]
        assert c.file_of("c").endswith("model-00002-of-00002.safetensors")
        specs = [spec("a", (12, 8), "S[0]", [pad(12)]), spec("b", (6, 8), "S[1]"),
                 spec("c", (8, 24), "S[1]", [regroup(3, 2)])]
        assert check_specs(c, specs) == ["a", "b", "c"]
        np.testing.assert_array_equal(joined(c, specs[2], 2), regrouped(S["qkv"], 3, 2))
        np.testing.assert_array_equal(joined(c, specs[0], 4), padded(S["emb"], 12))
    with open_checkpoint(tmp_path / "model.safetensors.index.json") as c:       # the index itself
        assert len(c.names()) == 3

    index["weight_map"]["b"] = "model-00002-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"puts tensor 'b' in 'model-00002-of-00002.safetensors', "
                                              r"but it is in '.*model-00001-of-00002.safetensors'"):
        open_checkpoint(tmp_path)
    index["weight_map"]["c"] = "model-00003-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"names files that do not exist: \['.*model-00003-of-00002"):
        open_checkpoint(tmp_path)
    os.remove(tmp_path / "model.safetensors.index.json")
    with open_checkpoint(tmp_path) as c:          # no index, no model.safetensors: every file
        assert sorted(c.names()) == ["a", "b", "c", "stray"]
    save({"only": S["o"]}, tmp_path / "model.safetensors")
    with open_checkpoint(tmp_path) as c:          # model.safetensors before the others
        assert c.names() == ["only"]


def test_prefixless_names_and_known_buffers(tmp_path):
    """GPT-2's hub checkpoint names lack the "transformer." of the LM wrapper, and hold
    the attention mask buffers, which no parameter uses."""
    path = save({"h.0.attn.c_attn.weight": S["qkv"], "h.0.attn.bias": np.zeros((4, 4), np.float32),
                 "h.0.attn.masked_bias": np.zeros((), np.float32),
                 "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, np.float32)},
                tmp_path / "model.safetensors")
    sp = spec("transformer.h.0.attn.c_attn.weight", (8, 24), "S[1]", [regroup(3, 2)])
    with open_checkpoint(path) as c:
        assert check_specs(c, [sp]) == ["h.0.attn.c_attn.weight"]
        np.testing.assert_array_equal(joined(c, sp, 2), regrouped(S["qkv"], 3, 2))


def test_error_messages(ckpt, tmp_path):
    file = ckpt.file_of("emb")
    with pytest.raises(CheckpointError, match=r"no tensor 'embb' \(for parameter 'p'\); close names: \['emb'\]"):
        check_specs(ckpt, [spec("p", (10, 8), source="embb")], complete=False)
    with pytest.raises(CheckpointError, match=r"tensor 'emb' in '" + re.escape(file) + r"' has shape \(10, 8\); expected "
                                              r"\(12, 8\) from the checkpoint \(parameter 'p' of shape \(12, 8\)\)"):
        load_block(ckpt, spec("p", (12, 8), source="emb"), (1,), 0)
    with pytest.raises(CheckpointError, match=r"expected \(<=8, 8\) from the checkpoint \(parameter 'p' of shape "
                                              r"\(8, 8\) before its maps"):
        load_block(ckpt, spec("p", (8, 8), maps=[pad(8)], source="emb"), (1,), 0)
    with pytest.raises(CheckpointError, match=r"expected \(4, 8\) from the checkpoint"):
        load_block(ckpt, spec("p", (8, 8), maps=[rep(2, 2)], source="k"), (1,), 0)
    with pytest.raises(CheckpointError, match=r"dim 0 of shape \(10, 8\) is 10, which is not divisible by the 4"):
        load_block(ckpt, spec("p", (10, 8), "S[0]", source="emb"), (4,), 0)
    with pytest.raises(CheckpointError, match=r"map .* has no known op"):
        load_block(ckpt, spec("p", (10, 8), maps=[{"axis": 0, "op": "transpose"}], source="emb"), (1,), 0)
    with pytest.raises(CheckpointError, match=r"dtype 'int8' is not one of"):
        load_block(ckpt, spec("p", (10, 8), source="emb", dtype="int8"), (1,), 0)
    # a whole model's specs: every tensor must be used, all problems in one message
    specs = [spec(n, a.shape, source=n) for n, a in SOURCES.items() if n not in ("o", "kb")]
    with pytest.raises(CheckpointError, match=r"(?s)tensor 'kb' in .* is used by no parameter.*"
                                              r"tensor 'o' in .* is used by no parameter"):
        check_specs(ckpt, specs)
    path = save({"w": np.zeros((2, 3), np.int64)}, tmp_path / "int.safetensors")
    with open_checkpoint(path) as c, pytest.raises(
            CheckpointError, match=r"tensor 'w' in '.*int.safetensors' has dtype I64; parameter 'w' can be read "
                                   r"from float32, float16, bfloat16 only"):
        load_block(c, spec("w", (2, 3)), (1,), 0)
    with pytest.raises(CheckpointError, match=r"no checkpoint at '.*nowhere'"):
        open_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"holds no model.safetensors.index.json, model.safetensors"):
        open_checkpoint(tmp_path / "empty")
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", 40) + b"{not json")
    with pytest.raises(CheckpointError, match=r"'.*bad.safetensors': header length 40 does not fit: the file has 9"):
        open_checkpoint(tmp_path / "bad.safetensors")


def _model_files(tmp_path):
    """A checkpoint and the specs of a small model of every map, with the whole
    parameters from numpy."""
    path = save(SOURCES, tmp_path / "model.safetensors")
    specs = [spec("emb", (12, 8), "S[0]", [pad(12)]), spec("k", (12, 8), "S[0]", [rep(2, 2)]),
             spec("kb", (12,), "S[0]", [rep(2, 2)]), spec("qkv", (8, 24), "S[1]", [regroup(3, 2)]),
             spec("qkvb", (24,), "S[0]", [regroup(3, 2)]), spec("o", (8, 12), "S[1]"),
             spec("head", (12, 8), "S[0]", [pad(12)], source="emb")]     # tied: the same source
    whole = [padded(S["emb"], 12), repeated(S["k"], 2, 2), repeated(S["kb"], 2, 2),
             regrouped(S["qkv"], 3, 2), regrouped(S["qkvb"], 3, 2), S["o"], padded(S["emb"], 12)]
    return path, specs, whole


@pytest.mark.parametrize("kind", [disco.ThreadedSession, disco.ProcessSession])
def test_workers_load_their_own_blocks(tmp_path, kind):
    path, specs, whole = _model_files(tmp_path)
    with kind(2) as sess:
        refs = place_weights(sess, path, specs)
        for sp, ref, w in zip(specs, refs, whole):
            dim = int(sp["placement"][2:-1])
            for d in range(2):
                np.testing.assert_array_equal(ref.fetch_local(d), np.split(w, 2, axis=dim)[d],
                                              err_msg=f"{sp['name']} on worker {d}")
            np.testing.assert_array_equal(ref.fetch(), w)
        # the controller checks the specs from the headers before the workers read anything
        with pytest.raises(CheckpointError, match=r"no tensor 'missing'"):
            place_weights(sess, path, specs + [spec("x", (2,), source="missing")])
        # the worker function checks too
        bad = sess.get_global_func("disco.llm.load_weights")(path, json.dumps(specs[:-2]), [2])
        with pytest.raises(WorkerError, match=r"tensor 'o' in .* is used by no parameter"):
            sess.sync()
        del bad


def test_a_pipeline_stages_workers_load_its_parameters(tmp_path):
    """Specs naming their stage's workers (device_ids, mesh_shape): stage 0's on workers
    0-1, stage 1's on 2-3, each its block by its index in the stage; the others hold
    None; fetch() puts the stage's blocks together."""
    path, specs, whole = _model_files(tmp_path)
    for i, sp in enumerate(specs):
        sp.update(device_ids=[0, 1] if i < 3 else [2, 3], mesh_shape=[2])
    with disco.ThreadedSession(4) as sess:
        refs = place_weights(sess, path, specs)
        for sp, ref, w in zip(specs, refs, whole):
            dim = int(sp["placement"][2:-1])
            for k, worker in enumerate(sp["device_ids"]):
                np.testing.assert_array_equal(ref.fetch(worker), np.split(w, 2, axis=dim)[k],
                                              err_msg=f"{sp['name']} on worker {worker}")
            assert all(ref.fetch(worker) is None for worker in range(4) if worker not in sp["device_ids"])
            np.testing.assert_array_equal(ref.fetch(), w)
        with pytest.raises(CheckpointError, match=r"parameter 'o' belongs to the pipeline stage on workers "
                                                  r"\[4, 5\], but the session has 4 workers"):
            place_weights(sess, path, specs[:5] + [dict(specs[5], device_ids=[4, 5])] + specs[6:])
    with open_checkpoint(path) as c:
        with pytest.raises(CheckpointError, match=r"weight spec 'o': a pipeline stage's parameter has both "
                                                  r"'device_ids' and 'mesh_shape'"):
            check_specs(c, [{k: v for k, v in specs[5].items() if k != "mesh_shape"}], complete=False)
        with pytest.raises(CheckpointError, match=r"weight spec 'o': device_ids \[2, 3, 4\] must be distinct "
                                                  r"worker ids, one per device of mesh_shape \[2\]"):
            check_specs(c, [dict(specs[5], device_ids=[2, 3, 4])], complete=False)


def test_load_weights_is_found_without_an_import():
    code = ("import sys, disco; f = disco.get_global_func('disco.llm.load_weights'); "
            "print(f.__module__, 'compiler' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["disco.llm.weights", "False"]


# -- peak memory ------------------------------------------------------------------------

MIB = 1 << 20
OVERHEAD = 64 * MIB


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak resident size from /proc")
def test_peak_memory_of_each_worker(tmp_path):
    """Two worker processes load a 300 MB Llama-shaped checkpoint (vocabulary-parallel
    embedding and head, column- and row-parallel projections). Measured per worker: the
    growth of its peak resident set (VmHWM, reset through /proc/self/clear_refs just
    before the load) over its resident set then. The checkpoint is read with pread, not
    mapped, so none of the file's pages count: the growth is the worker's own memory
    (the blocks it keeps and what it needed on the way). Each keeps about half the
    checkpoint; the bound is 0.6 of the checkpoint plus a fixed 64 MiB."""
    specs = llama_specs()
    path = str(tmp_path / "model.safetensors")
    size = write_random_checkpoint(path, specs)
    assert 250 * MIB < size < 350 * MIB
    with disco.ProcessSession(2) as sess:
        load = sess.get_global_func("disco.llm.load_weights")         # imports the module first
        marks = sess.get_global_func("disco.memory.mark")()
        before = [marks.fetch(w) for w in range(2)]
        blocks = load(path, json.dumps(specs), [2])
        peaks = sess.get_global_func("disco.memory.peak")()
        sess.sync()
        growth = [peaks.fetch(w) * 1024 - before[w][0] * 1024 for w in range(2)]
        kept = sum(int(np.prod(s["shape"])) * 4 // (2 if s["placement"] != "R" else 1) for s in specs)
        print(f"\ncheckpoint {size / MIB:.0f} MiB; each worker keeps {kept / MIB:.0f} MiB; peak growth "
              f"{[round(g / MIB) for g in growth]} MiB (reset worked: {[b[1] for b in before]})")
        for w in range(2):
            assert growth[w] < 0.6 * size + OVERHEAD, f"worker {w}: {growth[w] / MIB:.0f} MiB"
            assert growth[w] > 0.9 * kept        # the measure sees the blocks themselves
        del blocks


# -- weights on huge pages --------------------------------------------------------------


def _vma_of(address: int) -> dict:
    """The /proc/self/smaps fields of the mapping holding `address`."""
    with open("/proc/self/smaps") as f:
        fields, hit = {}, False
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                if hit:
                    return fields
                lo, hi = (int(v, 16) for v in head.split("-"))
                hit, fields = lo <= address < hi, {}
            elif hit:
                fields[head.rstrip(":")] = line.split()[1]
    return fields if hit else {}


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads the mappings from /proc")
def test_huge_page_arena_copies_onto_huge_page_mappings():
    """Copies equal the arrays, C-contiguous and 64-byte aligned, in mappings the kernel
    may back with 2 MB pages (THPeligible: the madvise took; whether it has free huge
    pages is the machine's business). Small arrays are not copied, nor arrays numpy
    already asks huge pages for."""
    from disco.memory import HugePageArena
    arena = HugePageArena()
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((300, 257)).astype(np.float32), rng.standard_normal((1000, 70)).astype(ml_dtypes.bfloat16),
              np.asfortranarray(rng.standard_normal((129, 130)))]
    copies = [arena.copy(a) for a in arrays]
    for a, c in zip(arrays, copies):
        assert c is not a and c.dtype == a.dtype and c.shape == a.shape and c.flags.c_contiguous
        assert c.ctypes.data % 64 == 0
        np.testing.assert_array_equal(c, a)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            assert _vma_of(c.ctypes.data).get("THPeligible") == "1"
    small, big = np.ones(10, np.float32), np.zeros(HugePageArena.NUMPY_HUGE // 4, np.float32)
    assert arena.copy(small) is small and arena.copy(big) is big
    many = [arena.copy(arrays[0]) for _ in range(HugePageArena.CHUNK // arrays[0].nbytes + 2)]  # a second chunk
    assert all((m == arrays[0]).all() for m in many) and len({m.ctypes.data for m in many}) == len(many)

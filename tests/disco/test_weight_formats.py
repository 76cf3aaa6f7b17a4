"""disco.weight_formats against the gguf package, the independent reference for GGUF's
block layouts: quantize byte for byte, dequantize value for value, and blocks of
quantized weights (tensor-parallel shards) that are the same weights."""
import gguf
import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT

from disco.errors import KernelError
from disco.weight_formats import (FORMATS, dequantize, logical_shape, quantize, storage_shape,
                                  take_block, weight_format)

QUANTIZED = ["q8_0", "q4_0", "q4_1"]


def gguf_type(name):
    return getattr(GT, name.upper())


def sample(rng, shape):
    """Gaussian weights, with blocks that test the quantizers' edges: all zeros, one
    constant, a single outlier, and values on rounding ties of the q8_0 grid."""
    w = rng.standard_normal(shape).astype(np.float32)
    flat = w.reshape(-1, 32)
    flat[0] = 0
    if len(flat) > 3:
        flat[1] = 0.75
        flat[2] = 0.01
        flat[2, 5] = -40.0
        flat[3] = np.arange(-16, 16, dtype=np.float32) * np.float32(127 / 16) / 16 + 0.5 / 16
    return w


@pytest.mark.parametrize("name", QUANTIZED)
@pytest.mark.parametrize("shape", [(8, 32), (24, 160), (2, 3, 96)])
def test_quantize_matches_gguf_bytes(name, shape):
    w = sample(np.random.default_rng(1), shape)
    ours = quantize(w, name)
    ref = gguf.quants.quantize(w, gguf_type(name))
    assert ours.dtype == np.uint8 and ours.shape == ref.shape == storage_shape(shape, name)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("name", QUANTIZED)
def test_dequantize_matches_gguf_values(name):
    q = quantize(sample(np.random.default_rng(2), (16, 128)), name)
    ours = dequantize(q, name)
    np.testing.assert_array_equal(ours, gguf.quants.dequantize(q, gguf_type(name)))
    assert ours.shape == logical_shape(q.shape, name) == (16, 128)


def test_float_formats_are_casts():
    w = np.random.default_rng(3).standard_normal((4, 7)).astype(np.float32)
    assert quantize(w, "bf16").dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(dequantize(quantize(w, "float16"), "float16"), w.astype(np.float16))
    assert storage_shape((4, 7), "bfloat16") == (4, 7)


def test_quantization_error_is_bounded():
    """q8_0 rounds to the nearest step of max|w| / 127; q4_1 to (max - min) / 15 (plus
    the fp16 rounding of the scales)."""
    w = np.random.default_rng(4).standard_normal((64, 256)).astype(np.float32)
    blocks = w.reshape(-1, 32)
    err8 = np.abs(dequantize(quantize(w, "q8_0"), "q8_0") - w).reshape(-1, 32)
    assert (err8 <= np.abs(blocks).max(1, keepdims=True) / 127 * 0.51 + 1e-3).all()
    err4 = np.abs(dequantize(quantize(w, "q4_1"), "q4_1") - w).reshape(-1, 32)
    step = (blocks.max(1, keepdims=True) - blocks.min(1, keepdims=True)) / 15
    assert (err4 <= step * 0.51 + 1e-2).all()


@pytest.mark.parametrize("name", QUANTIZED + ["bfloat16", "float32"])
def test_take_block_is_the_same_weights(name):
    w = np.random.default_rng(5).standard_normal((12, 192)).astype(np.float32)
    q = quantize(w, name)
    full = dequantize(q, name)
    for rows, cols in [((0, 12), (0, 192)), ((4, 8), (0, 192)), ((0, 12), (64, 128)), ((3, 11), (32, 192))]:
        blk = take_block(q, name, rows, cols)
        assert blk.dtype == q.dtype and blk.flags.c_contiguous or cols == (0, 192)
        np.testing.assert_array_equal(dequantize(blk, name), full[rows[0]:rows[1], cols[0]:cols[1]])
    # A shard of a GGUF tensor is the GGUF quantization of the shard: groups never straddle.
    if name in QUANTIZED:
        np.testing.assert_array_equal(take_block(q, name, cols=(96, 192)),
                                      gguf.quants.quantize(w[:, 96:], gguf_type(name)))


def test_take_block_refuses_to_split_a_block():
    q = quantize(np.ones((4, 128), np.float32), "q4_1")
    with pytest.raises(KernelError, match=r"block boundaries.*\(16, 64\).*multiples of 32"):
        take_block(q, "q4_1", cols=(16, 64))
    with pytest.raises(KernelError, match="must lie in"):
        take_block(q, "q4_1", rows=(0, 5))


def test_k_must_be_whole_blocks():
    with pytest.raises(KernelError, match=r"k=48 is not a multiple of 32"):
        quantize(np.ones((2, 48), np.float32), "q8_0")
    with pytest.raises(KernelError, match="unknown weight format 'q5_k'; known: float32"):
        weight_format("q5_k")


def test_format_table_matches_gguf_sizes():
    for name in QUANTIZED:
        f = FORMATS[name]
        assert (f.block, f.block_bytes) == gguf.GGML_QUANT_SIZES[gguf_type(name)]

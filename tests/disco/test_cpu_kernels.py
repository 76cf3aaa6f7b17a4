"""The CPU matmul and embedding kernels (disco.cpu_kernels) against numpy: weights
dequantized by the gguf package (float formats: cast by numpy), then a float64 matmul.

Tolerance, per output: the kernels round each weight once (w = q d + m in one FMA) and
sum k float32 products in some order, so |y - ref| <= (k + 1) u B + O(u^2) with
u = 2^-24 and B = sum_t |x_t| (|q_t d| + |m|) (Higham's bound for any summation order,
the weight's rounding relative to the magnitudes it is made of). The tests allow twice
that. Every compiled instruction-set variant this CPU runs is tested, on 1 and 2 threads."""
import os
import subprocess
import sys

import gguf
import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT

from disco import cpu_kernels as ck
from disco import get_global_func
from disco.errors import KernelError
from disco.weight_formats import FORMATS, quantize, take_block

QUANTIZED = ["q8_0", "q4_0", "q4_1"]
ISAS = ck.isas()
U = 2.0 ** -24


def reference_weights(q, name):
    """(W, M): the weights as float64 (gguf's dequantization for block formats) and the
    per-weight magnitude of the offset the kernel adds (|m| for q4_1, 8|d| for q4_0)."""
    if name not in QUANTIZED:
        return q.astype(np.float64), np.zeros(q.shape)
    w = gguf.quants.dequantize(q, getattr(GT, name.upper())).astype(np.float64)
    f = FORMATS[name]
    blocks = q.reshape(-1, f.block_bytes)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float64)
    off = {"q8_0": 0 * d, "q4_0": 8 * np.abs(d),
           "q4_1": np.abs(blocks[:, 2:4].copy().view(np.float16).astype(np.float64))}[name]
    return w, np.repeat(off, 32, axis=1).reshape(w.shape)


def bf16_parts(x, terms):
    """x's first `terms` bfloat16 parts as the AMX kernels split it: x rounded, then the
    rounded remainder, ... (three parts hold float32 x exactly)."""
    rest, parts = x.astype(np.float32), []
    for _ in range(terms):
        part = rest.astype(ml_dtypes.bfloat16).astype(np.float32)
        parts.append(part.astype(np.float64))
        rest = rest - part
    return parts


def check(y, x, q, name, isa=None):
    """y against the float64 product. Where variant `isa` (default: the one used) runs
    on AMX tiles (bfloat16 or float32 weights, more than ck.amx_rows(isa, dtype) rows), x
    is the sum of its ck.amx_x_terms() bfloat16 parts and float32 W of its three, and of
    the products of x part p and W part q those with p + q <= 2 are summed (isa_amx.cc),
    each separately: that many times k terms."""
    w, off = reference_weights(q, name)
    x64 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    if name in ("bfloat16", "float32") and -1 < ck.amx_rows(isa, name) < x64.shape[0]:
        xs = bf16_parts(x64, ck.amx_x_terms())
        ws = bf16_parts(w, 3) if name == "float32" else [w]
        pairs = [(p, r) for p in range(len(xs)) for r in range(len(ws)) if p + r <= 2]
        ref = sum(xs[p] @ ws[r].T for p, r in pairs)
        terms = len(pairs)
        if name == "bfloat16":
            x64 = sum(xs)       # the bound over x as multiplied (float32's: over x itself)
    else:
        ref, terms = x64 @ w.T, 1
    bound = np.abs(x64) @ (np.abs(w) + 2 * off).T       # |q d| <= |w| + |m|
    tol = 2 * (terms * x.shape[-1] + 1) * U * bound + 1e-30
    err = np.abs(y.reshape(ref.shape) - ref)
    assert (err <= tol).all(), f"max error {err.max():.3g}, allowed {tol[err.argmax() // tol.shape[1]].max():.3g}"


def weights(name, n, k, seed=0):
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32) * 0.1
    return quantize(w, name)


# (n, k): n never a multiple of the tile widths; k odd for float formats (scalar tails);
# the last shape is large enough for two threads at m = 1 (smaller calls run on one).
SHAPES = {"float": [(37, 45), (9, 3), (201, 257)], "quantized": [(37, 96), (3, 32), (201, 320)]}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("m", [1, 3, 8, 130])
def test_matmul_nt_matches_numpy(isa, name, m):
    kind = "quantized" if name in QUANTIZED else "float"
    for n, k in SHAPES[kind]:
        q = weights(name, n, k)
        x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
        y1 = ck.matmul_nt(x, q, fmt=name, num_threads=1, isa=isa)
        check(y1, x, q, name, isa)
        # Threads split the output columns: every output is the same sum, bit for bit.
        y2 = ck.matmul_nt(x, q, fmt=name, num_threads=2, isa=isa)
        np.testing.assert_array_equal(y1, y2)


@pytest.mark.skipif("amx" not in ISAS, reason="this CPU or build has no AMX tiles")
@pytest.mark.parametrize("terms", [1, 2, 3])
def test_amx_products_of_x_split_into_bfloat16_parts(terms, tmp_path):
    """The AMX paths, whole and partial tiles, for each DISCO_CPU_AMX_X_TERMS (read once
    per process, so each runs in a fresh one): k a multiple of 32 (W read in place, up to
    32 rows of x) and not (W rearranged); n past whole tiles. The default (3) holds x
    exactly, so the float32 bound of the other variants holds; 1 part fails it."""
    script = tmp_path / "amx_check.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(os.path.dirname(__file__))!r})
import numpy as np
import pytest
from test_cpu_kernels import check, weights, ck
assert ck.amx_rows("amx") == 4 and ck.amx_rows("avx512") == -1 and ck.amx_x_terms() == {terms}
for m in (5, 16, 17, 32, 33, 130):
    for n, k in [(16, 64), (37, 96), (33, 2048), (201, 320), (40, 45)]:
        q = weights("bfloat16", n, k, seed=n)
        x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
        y1 = ck.matmul_nt(x, q, num_threads=1, isa="amx")
        check(y1, x, q, "bfloat16", "amx")
        if {terms} == 1 and k <= 320:  # x in float32 fails (wider k: the bound is too loose to tell)
            with pytest.raises(AssertionError):
                check(y1, x, q, "bfloat16", "avx512")
        if {terms} == 3:
            check(y1, x, q, "bfloat16", "avx512")
        np.testing.assert_array_equal(ck.matmul_nt(x, q, num_threads=2, isa="amx"), y1)
print("ok")
""")
    env = dict(os.environ, DISCO_CPU_AMX_X_TERMS=str(terms))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.mark.skipif("amx" not in ISAS, reason="this CPU or build has no AMX tiles")
@pytest.mark.parametrize("terms", [1, 3])
def test_amx_float32_weights_split_into_bfloat16_parts(terms, tmp_path):
    """Float32 W on AMX: W in three bfloat16 parts, x in `terms`, the six (three) products
    of parts p + q <= 2, against float64 sums of exactly those products; with x exact (3)
    the result is also within the float32 bound of the exact product. Both paths (up to
    32 rows of x, W split a block at a time; more, W split per panel), partial tiles, k
    not a multiple of 32, 2 threads equal to 1; 8 rows and fewer stay on AVX-512."""
    script = tmp_path / "amx_f32_check.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(os.path.dirname(__file__))!r})
import numpy as np
from test_cpu_kernels import check, weights, ck
assert ck.amx_rows("amx", "float32") == 8 and ck.amx_rows("avx512", "float32") == -1
for m in (8, 9, 16, 17, 32, 33, 130):
    for n, k in [(16, 64), (37, 96), (33, 2048), (201, 320), (40, 45)]:
        q = weights("float32", n, k, seed=n)
        x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
        y1 = ck.matmul_nt(x, q, num_threads=1, isa="amx")
        check(y1, x, q, "float32", "amx")
        if {terms} == 3:
            check(y1, x, q, "float32", "avx512")
        if m == 8:
            np.testing.assert_array_equal(y1, ck.matmul_nt(x, q, num_threads=1, isa="avx512"))
        np.testing.assert_array_equal(ck.matmul_nt(x, q, num_threads=2, isa="amx"), y1)
print("ok")
""")
    env = dict(os.environ, DISCO_CPU_AMX_X_TERMS=str(terms))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_amx_float32_setting(tmp_path):
    """DISCO_CPU_AMX_FLOAT32=0 leaves float32 weights to AVX-512 and the BLAS (amx_rows
    -1, the results of the avx512 variant); a bad value is an error naming it."""
    if "amx" not in ISAS:
        pytest.skip("this CPU or build has no AMX tiles")
    code = ("import numpy as np; from disco import cpu_kernels as ck; "
            "x = np.ones((20, 64), np.float32) / 3; w = np.ones((16, 64), np.float32) / 7; "
            "assert ck.amx_rows('amx', 'float32') == -1 and ck.amx_rows('amx') == 4; "
            "assert (ck.matmul_nt(x, w, isa='amx') == ck.matmul_nt(x, w, isa='avx512')).all(); print('ok')")
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, DISCO_CPU_AMX_FLOAT32="0"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, DISCO_CPU_AMX_FLOAT32="yes"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "DISCO_CPU_AMX_FLOAT32 must be 0 or 1" in done.stderr and "got 'yes'" in done.stderr


def test_amx_x_terms_setting_is_checked(tmp_path):
    if "amx" not in ISAS:
        pytest.skip("this CPU or build has no AMX tiles")
    env = dict(os.environ, DISCO_CPU_AMX_X_TERMS="4")
    code = ("import numpy as np, ml_dtypes; from disco import cpu_kernels as ck; "
            "ck.matmul_nt(np.ones((8, 64), np.float32), np.ones((4, 64), ml_dtypes.bfloat16))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "DISCO_CPU_AMX_X_TERMS must be 1, 2 or 3" in done.stderr and "got '4'" in done.stderr


@pytest.mark.parametrize("name", ["bfloat16", "q4_1"])
def test_matmul_nt_leading_dims_and_wide_k(name):
    q = weights(name, 50, 2048, seed=1)
    x = np.random.default_rng(1).standard_normal((2, 3, 2048)).astype(np.float32)
    out = np.full((2, 3, 50), np.nan, np.float32)
    assert ck.matmul_nt(x, q, out, fmt=name) is out
    check(out, x, q, name, ck.default_isa())


@pytest.mark.parametrize("name", QUANTIZED + ["float16"])
def test_tensor_parallel_shards_are_exact(name):
    """Row shards (column-parallel layers) give the same outputs bit for bit; column
    shards cut at block boundaries (row-parallel layers) give partial sums that add up to
    the whole product."""
    q = weights(name, 64, 256, seed=2)
    x = np.random.default_rng(2).standard_normal((4, 256)).astype(np.float32)
    whole = ck.matmul_nt(x, q, fmt=name)
    rows = [ck.matmul_nt(x, take_block(q, name, rows=(r, r + 16)), fmt=name) for r in range(0, 64, 16)]
    np.testing.assert_array_equal(np.concatenate(rows, axis=1), whole)
    parts = [ck.matmul_nt(np.ascontiguousarray(x[:, c:c + 128]), take_block(q, name, cols=(c, c + 128)), fmt=name)
             for c in (0, 128)]
    check(parts[0] + parts[1], x, q, name)


def test_float_format_from_dtype_and_library_names():
    q = weights("bfloat16", 16, 64)
    x = np.ones((1, 64), np.float32)
    out = np.empty((1, 16), np.float32)
    get_global_func("disco.cpu.matmul_nt")(x, q, out)
    check(out, x, q, "bfloat16")
    q4 = weights("q4_1", 16, 64)
    get_global_func(ck.MATMUL_NT["q4_1"])(x, q4, out)
    check(out, x, q4, "q4_1")
    assert ck.MATMUL_NT["q8_0"] == "disco.cpu.matmul_nt_q8_0" and ck.EMBEDDING["bfloat16"] == "disco.cpu.embedding"


def test_float32_auto_takes_the_kernel_up_to_its_rows_then_the_blas():
    """disco.cpu.matmul_nt_auto (float32 linear layers): up to FLOAT32_KERNEL_ROWS rows of
    x the kernel's result bit for bit, past it numpy's, unless the default variant puts
    float32 weights on AMX tiles (then the kernel's at every row count); all within the
    float32 bound."""
    auto = get_global_func("disco.cpu.matmul_nt_auto")
    q = weights("float32", 201, 257)
    rows = ck.FLOAT32_KERNEL_ROWS
    on_amx = ck.amx_rows(dtype="float32") >= 0
    for m in (1, rows, rows + 1):
        x = np.random.default_rng(m).standard_normal((m, 257)).astype(np.float32)
        out = np.empty((m, 201), np.float32)
        auto(x, q, out)
        check(out, x, q, "float32")
        picked = ck.matmul_nt(x, q) if m <= rows or on_amx else x @ q.T
        np.testing.assert_array_equal(out, picked, err_msg=f"{m} rows (kernel up to {rows}, AMX {on_amx})")


def test_errors_name_the_problem():
    x = np.ones((2, 48), np.float32)
    with pytest.raises(KernelError, match="k = 48 is not a multiple of 32"):
        ck.matmul_nt(x, np.zeros((4, 54), np.uint8), fmt="q8_0")
    with pytest.raises(KernelError, match="format q4_1 must hold|rows must hold k = 64 weights of format q4_1"):
        ck.matmul_nt(np.ones((1, 64), np.float32), np.zeros((4, 36), np.uint8), fmt="q4_1")
    with pytest.raises(KernelError, match="must have dtype bfloat16; got float16"):
        ck.matmul_nt(x, np.zeros((4, 48), np.float16), fmt="bf16")
    with pytest.raises(KernelError, match=r"out must have shape .*got \(2, 5\)"):
        ck.matmul_nt(x, np.zeros((4, 48), np.float32), np.empty((2, 5), np.float32))
    with pytest.raises(KernelError, match="x must be a C-contiguous"):
        ck.matmul_nt(np.ones((48, 2), np.float32).T, np.zeros((4, 48), np.float32))
    with pytest.raises(KernelError, match="needs its format named"):
        ck.matmul_nt(x, np.zeros((4, 48), np.uint8))
    with pytest.raises(KernelError, match="no CPU kernels for instruction set 'neon'"):
        ck.matmul_nt(x, np.zeros((4, 48), np.float32), isa="neon")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(FORMATS))
def test_embedding_reads_rows_in_their_format(isa, name):
    """Rows as gguf dequantizes them: exactly, except q4_1, whose kernel rounds q d + m
    once (one FMA) where gguf rounds twice: within an ulp of |q d| + |m|."""
    k = 96 if name in QUANTIZED else 75
    q = weights(name, 40, k, seed=3)
    w, off = reference_weights(q, name)
    ids = np.array([[3, 0, 39], [3, 17, 8]], np.int32)
    out = ck.embedding(ids, q, fmt=name, num_threads=2, isa=isa)
    assert out.shape == (2, 3, k) and out.dtype == np.float32
    if name == "q4_1":
        np.testing.assert_array_less(np.abs(out - w[ids]), 2 * U * (np.abs(w[ids]) + 2 * off[ids]) + 1e-30)
    else:
        np.testing.assert_array_equal(out, w[ids].astype(np.float32))
    with pytest.raises(KernelError, match=r"ids\[1\] = 40 is outside the table's rows \[0, 40\)"):
        ck.embedding(np.array([1, 40]), q, fmt=name)


def test_embedding_library_call():
    q = weights("q8_0", 10, 64)
    out = np.empty((2, 64), np.float32)
    get_global_func("disco.cpu.embedding_q8_0")(np.array([9, 1]), q, out)
    np.testing.assert_array_equal(out, reference_weights(q, "q8_0")[0][[9, 1]].astype(np.float32))
    bf = quantize(np.ones((3, 5), np.float32), "bfloat16")
    assert bf.dtype == np.dtype(ml_dtypes.bfloat16)
    get_global_func("disco.cpu.embedding")(np.array([2]), bf, out[:1, :5].copy())

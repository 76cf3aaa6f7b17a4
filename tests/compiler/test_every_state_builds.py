"""Every state of a module builds and runs (docs/design.md): a transformer block written
with high-level operators, built from each state the CPU pipeline can leave it in,
gives the numpy reference's result.

States: the high-level module (default pipeline); the legalized, unscheduled module
built as is (`passes=[]`); a variant calling a user-registered function through
`call_dps_packed`; the module after every prefix of `compiler.pipeline.get_pipeline()`
and after several subsets and orders of its passes (each built with the default
pipeline, and built as is where nothing is left to legalize).
"""
import numpy as np
import pytest

from compiler import build, op
from compiler.ir import graph as G
from compiler.ir.builder import BlockBuilder
from compiler.ir.graph import Var
from compiler.ir.struct_info import TensorStructInfo as TS
from compiler.ir.visitor import post_order_visit
from compiler.pipeline import STAGES, get_pipeline
from disco import registry
from disco.vm import VirtualMachine

D, H, HD, F = 32, 4, 8, 64         # hidden, heads, head dim, MLP width
UPPER = 64                          # tir_var_upper_bound of the sequence length


@pytest.fixture(autouse=True)
def _caches(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("DISCO_TP_CACHE", str(base / "cc"))
    monkeypatch.setenv("DISCO_CACHE_DIR", str(base / "disco"))


def _swiglu(gate, up, out):
    np.multiply(gate / (1 + np.exp(-gate)), up, out=out)


registry.register_func("test.every_state.swiglu", _swiglu, override=True)


def block_module(packed_swiglu=False):
    """rms_norm -> q/k/v matmuls -> rotary -> softmax attention (causal mask input) ->
    o-proj + residual -> rms_norm -> SwiGLU MLP + residual, over a symbolic length s."""
    bb = BlockBuilder()
    s = bb.size_var("s")
    x = Var("x", TS((s, D), "float32"))
    mask = Var("mask", TS((s, s), "float32"))
    cos, sin = Var("cos", TS((s, HD), "float32")), Var("sin", TS((s, HD), "float32"))
    g1, g2 = Var("g_attn", TS((D,), "float32")), Var("g_mlp", TS((D,), "float32"))
    wq, wk, wv, wo = (Var(n, TS((D, D), "float32")) for n in ("wq", "wk", "wv", "wo"))
    wg, wu = (Var(n, TS((D, F), "float32")) for n in ("w_gate", "w_up"))
    wd = Var("w_down", TS((F, D), "float32"))
    params = [x, mask, cos, sin, g1, g2, wq, wk, wv, wo, wg, wu, wd]
    with bb.function("main", params, attrs={"tir_var_upper_bound": {"s": UPPER}}):
        with bb.dataflow():
            h = bb.emit(op.nn.rms_norm(x, g1, axes=[-1], epsilon=1e-5))
            q, k, v = (bb.emit(op.reshape(bb.emit(op.matmul(h, w)), [s, H, HD]))
                       for w in (wq, wk, wv))
            q = bb.emit(op.nn.rotary_embedding(q, cos, sin))
            k = bb.emit(op.nn.rotary_embedding(k, cos, sin))
            qh = bb.emit(op.permute_dims(q, [1, 0, 2]))
            kt = bb.emit(op.permute_dims(k, [1, 2, 0]))
            vh = bb.emit(op.permute_dims(v, [1, 0, 2]))
            sc = bb.emit(op.multiply(op.matmul(qh, kt), op.const(HD ** -0.5, "float32")))
            p = bb.emit(op.nn.softmax(op.add(sc, mask), axis=-1))
            o = bb.emit(op.matmul(p, vh))
            o = bb.emit(op.reshape(op.permute_dims(o, [1, 0, 2]), [s, D]))
            r = bb.emit(op.add(x, op.matmul(o, wo)))
            h2 = bb.emit(op.nn.rms_norm(r, g2, axes=[-1], epsilon=1e-5))
            gate, up = bb.emit(op.matmul(h2, wg)), bb.emit(op.matmul(h2, wu))
            if packed_swiglu:
                act = bb.emit(op.call_dps_packed("test.every_state.swiglu", [gate, up],
                                                 out_sinfo=TS((s, F), "float32")))
            else:
                act = bb.emit(op.multiply(op.nn.silu(gate), up))
            out = bb.emit_output(op.add(r, op.matmul(act, wd)))
        bb.emit_func_output(out)
    return bb.get()


def inputs(seq, seed):
    rng = np.random.default_rng(seed)

    def w(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype("float32")
    mask = np.triu(np.full((seq, seq), -1e4, "float32"), 1)
    pos = np.arange(seq)[:, None] / 10000 ** (np.arange(0, HD, 2) / HD)[None]
    ang = np.concatenate([pos, pos], -1)
    return [w(seq, D), mask, np.cos(ang).astype("float32"), np.sin(ang).astype("float32"),
            1 + w(D, scale=0.1), 1 + w(D, scale=0.1),
            *(w(D, D, scale=D ** -0.5) for _ in range(4)),
            w(D, F, scale=D ** -0.5), w(D, F, scale=D ** -0.5), w(F, D, scale=F ** -0.5)]


def reference(args):
    """The block in float64 numpy, written from the definitions of the operators."""
    x, mask, cos, sin, g1, g2, wq, wk, wv, wo, wg, wu, wd = (a.astype(np.float64) for a in args)
    s = x.shape[0]

    def rms(t, g):
        return t / np.sqrt((t * t).mean(-1, keepdims=True) + 1e-5) * g

    def rotary(t):            # rotate-half (Llama): t * cos + rotate_half(t) * sin
        half = np.concatenate([-t[..., HD // 2:], t[..., :HD // 2]], -1)
        return t * cos[:, None, :] + half * sin[:, None, :]
    h = rms(x, g1)
    q, k, v = ((h @ w).reshape(s, H, HD) for w in (wq, wk, wv))
    q, k = rotary(q), rotary(k)
    sc = q.transpose(1, 0, 2) @ k.transpose(1, 2, 0) * HD ** -0.5 + mask
    p = np.exp(sc - sc.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = (p @ v.transpose(1, 0, 2)).transpose(1, 0, 2).reshape(s, D)
    r = x + o @ wo
    h2 = rms(r, g2)
    gate = h2 @ wg
    return r + (gate / (1 + np.exp(-gate)) * (h2 @ wu)) @ wd


CASES = [(5, 0), (UPPER, 1), (5, 2)]     # the third call replays the first one's plan


def check_runs(mod, passes=None):
    vm = VirtualMachine(build(mod, passes=passes))
    results = []
    for seq, seed in CASES:
        args = inputs(seq, seed)
        got = vm["main"](*args)
        np.testing.assert_allclose(got, reference(args), rtol=2e-4, atol=2e-4)
        results.append((got, got.copy()))
    for got, copy in results:          # no later call overwrote an earlier result
        np.testing.assert_array_equal(got, copy)


_RUNNABLE = {"relax.call_tir", "relax.call_dps_packed", "relax.call_pure_packed",
             "relax.call_packed", "relax.builtin.alloc_tensor"}


def is_low_level(mod) -> bool:
    """Whether the VM can run `mod` as is (every operator call is one it runs directly)."""
    ops = set()
    for f in mod.graph_functions().values():
        post_order_visit(f, lambda n: ops.add(n.op.name) if isinstance(n, G.Call)
                         and isinstance(n.op, G.Op) else None)
    return all(o in _RUNNABLE or o.startswith("relax.memory.") for o in ops)


def apply(mod, names):
    passes = {p.__name__: p for p in get_pipeline()}
    for n in names:
        mod = passes[n](mod)
    return mod


STAGE_NAMES = [n for _, n in STAGES["cpu"]]
PIPELINE = [p.__name__ for p in get_pipeline()]     # the stages, in order


def test_high_level_module_with_the_default_pipeline(roundtrip):
    mod = block_module()
    roundtrip(mod)
    check_runs(mod)


def test_legalized_unscheduled_module_built_as_is():
    mod = apply(block_module(), ["LegalizeOps"])
    assert is_low_level(mod)
    check_runs(mod, passes=[])


@pytest.mark.parametrize("state", ["high-level", "legalized"])
def test_user_function_through_call_dps_packed(state):
    mod = block_module(packed_swiglu=True)
    if state == "high-level":
        check_runs(mod)
    else:
        check_runs(apply(mod, ["LegalizeOps"]), passes=[])


@pytest.mark.parametrize("k", range(len(PIPELINE) + 1),
                         ids=lambda k: "+".join(PIPELINE[:k]) or "nothing")
def test_after_each_prefix_of_the_pipeline(k, roundtrip):
    """The state after the first k stages of get_pipeline() builds with the default
    pipeline, and as is once nothing is left to legalize."""
    names = PIPELINE[:k]
    state = apply(block_module(), names)
    roundtrip(state)
    check_runs(state)
    if is_low_level(state):
        check_runs(state, passes=[])
    else:
        assert "LegalizeOps" not in names, "operators left after LegalizeOps"


SUBSETS = [
    ("LegalizeOps", "PlanMemory"),
    ("DispatchLibrary", "LegalizeOps", "PlanMemory"),
    ("LegalizeOps", "DeadCodeElimination"),
    ("LegalizeOps", "DefaultSchedule"),
    ("LegalizeOps", "PlanMemory", "DefaultSchedule", "DeadCodeElimination"),
    ("PlanMemory", "DispatchLibrary", "LegalizeOps"),
    ("LegalizeOps", "PlanMemory", "PlanMemory"),
    ("LegalizeOps", "FuseOps"),
    ("LegalizeOps", "FuseOps", "FuseTIR"),
    ("DispatchLibrary", "LegalizeOps", "FuseOps", "FuseTIR", "PlanMemory"),
]


@pytest.mark.parametrize("names", SUBSETS, ids=lambda ns: "+".join(ns))
def test_after_subsets_and_orders_of_the_passes(names, roundtrip):
    state = apply(block_module(), names)
    roundtrip(state)
    assert is_low_level(state)
    check_runs(state, passes=[])
    check_runs(state)


def test_full_pipeline_has_every_stage():
    assert [p.__name__ for p in get_pipeline()] == STAGE_NAMES

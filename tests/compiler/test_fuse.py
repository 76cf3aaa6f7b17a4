"""FuseOps and FuseTIR: which calls end up in which group (hand-derived from the pattern
kinds), the shape of the merged tensor programs, and results of fused modules built
and run against numpy, over a symbolic row count."""
import numpy as np
import pytest

from compiler import build, op
from compiler.ir import graph as G
from compiler.ir import tir as T
from compiler.ir.builder import BlockBuilder
from compiler.ir.graph import Var
from compiler.ir.struct_info import TensorStructInfo as TS
from compiler.op.registry import COMM_REDUCE, ELEMWISE, OPAQUE
from compiler.ir.visitor import walk
from compiler.transform import (DefaultSchedule, DispatchLibrary, FuseOps, FuseTIR,
                                LegalizeOps)
from compiler.transform.fuse_ops import op_pattern
from disco.vm import VirtualMachine

EPS = 1e-5


@pytest.fixture(autouse=True)
def _caches(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("DISCO_TP_CACHE", str(base / "cc"))
    monkeypatch.setenv("DISCO_CACHE_DIR", str(base / "disco"))


def module(shapes, body):
    """main(p0, p1, ...) over symbolic rows `n`; `body(bb, *params)` returns the
    output expression(s); list items that are Vars are returned as they are."""
    bb = BlockBuilder()
    n = bb.size_var("n")
    params = [Var(f"p{i}", TS(tuple(n if d == "n" else d for d in s), "float32"))
              for i, s in enumerate(shapes)]
    with bb.function("main", params):
        with bb.dataflow():
            out = body(bb, *params)
            if isinstance(out, list):
                out = [o if isinstance(o, Var) and not isinstance(o, G.DataflowVar)
                       else bb.emit_output(o) for o in out]
            else:
                out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get()


def calls_in(func):
    """The callees of a graph function's bindings, in order: a tensor program's name for
    call_tir, the function's name for a call of a graph function, the extern name for
    call_dps_packed."""
    out = []
    for block in func.body.blocks:
        for b in block.bindings:
            v = b.value
            if not isinstance(v, G.Call):
                continue
            if isinstance(v.op, G.GlobalVar):
                out.append(v.op.name_hint)
            elif v.op.name in ("relax.call_tir", "relax.call_dps_packed"):
                target = v.args[0]
                out.append(getattr(target, "name_hint", None) or target.global_symbol)
    return out


def groups(mod):
    """{Primitive function name: [tensor programs it calls, in order]}."""
    return {name: calls_in(f) for name, f in mod.graph_functions().items() if f.attrs.get("Primitive")}


def fuse(mod, roundtrip, library=False):
    mod = LegalizeOps(DispatchLibrary(mod) if library else mod)
    fused = FuseOps(mod)
    roundtrip(fused)
    return mod, fused


def rms(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * w


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def silu(x):
    return x / (1 + np.exp(-x))


def rotary(x, cos, sin):
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


def run(mod, inputs, passes):
    out = VirtualMachine(build(mod, passes=passes))["main"](*inputs)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def rand(shapes, n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(tuple(n if d == "n" else d for d in s)).astype("float32")
            for s in shapes]


# -- patterns ---------------------------------------------------------------------------------

def test_op_pattern_of_legalized_and_hand_written_programs():
    mod = LegalizeOps(module([("n", 8), (8,)], lambda bb, x, w: [
        bb.emit(op.exp(x)), op.nn.rms_norm(x, w, axes=[-1])]))
    progs = mod.prim_funcs()
    assert progs["rms_norm"].attrs["op_pattern"] == OPAQUE      # as registered
    assert op_pattern(progs["rms_norm"]) == COMM_REDUCE         # refined: blocks with a reduction
    assert op_pattern(progs["exp"]) == ELEMWISE
    bare = T.PrimFunc(progs["exp"].params, progs["exp"].body)   # no attr: never fused
    assert op_pattern(bare) == OPAQUE


# -- grouping -----------------------------------------------------------------------------

DECODER_SHAPES = [("n", 16), ("n", 16), (16,), (16, 24), ("n", 24)]


def decoder_piece(bb, x, r, g, w, y):
    """add -> rms_norm -> matmul -> silu * y"""
    a = bb.emit(op.add(x, r))
    h = bb.emit(op.nn.rms_norm(a, g, axes=[-1], epsilon=EPS))
    m = bb.emit(op.matmul(h, w))
    return op.multiply(op.nn.silu(m), y)


def decoder_reference(x, r, g, w, y):
    return silu(rms(x + r, g) @ w) * y


def test_add_rms_norm_matmul_silu_mul_groups(roundtrip):
    # Legalized matmul is OUT_EWISE_FUSABLE: silu and multiply are its epilogue;
    # rms_norm (a reduction) takes the add before it; matmul does not take rms_norm.
    _, fused = fuse(module(DECODER_SHAPES, decoder_piece), roundtrip)
    assert groups(fused) == {"fused_add_rms_norm": ["add", "rms_norm"],
                             "fused_matmul_silu_multiply": ["matmul", "silu", "multiply"]}
    assert calls_in(fused["main"]) == ["fused_add_rms_norm", "fused_matmul_silu_multiply"]


def test_library_matmul_splits_the_groups(roundtrip):
    # With matmul sent to BLAS (opaque), silu * y is a group of its own.
    _, fused = fuse(module(DECODER_SHAPES, decoder_piece), roundtrip, library=True)
    assert groups(fused) == {"fused_add_rms_norm": ["add", "rms_norm"],
                             "fused_silu_multiply": ["silu", "multiply"]}
    assert calls_in(fused["main"]) == ["fused_add_rms_norm", "disco.blas.matmul",
                                       "fused_silu_multiply"]


def test_diamond_is_one_group_with_one_output(roundtrip):
    def body(bb, x, y):
        e = bb.emit(op.exp(x))
        b = bb.emit(op.add(e, y))
        c = bb.emit(op.multiply(e, y))
        return op.add(b, c)
    _, fused = fuse(module([("n", 8), ("n", 8)], body), roundtrip)
    assert groups(fused) == {"fused_exp_add_multiply_add": ["exp", "add", "multiply", "add"]}
    sub = fused["fused_exp_add_multiply_add"]
    assert isinstance(sub.body.body, G.Var)                   # one output, not a tuple
    assert calls_in(fused["main"]) == ["fused_exp_add_multiply_add"]


def test_value_used_outside_the_group_becomes_an_output(roundtrip):
    # a = x + r feeds rms_norm (same group) and is also returned: the group returns
    # (a, rms_norm(a)) and main reads both fields.
    def body(bb, x, r, g):
        a = bb.emit_output(op.add(x, r))
        return [a, op.nn.rms_norm(a, g, axes=[-1], epsilon=EPS)]
    _, fused = fuse(module([("n", 16), ("n", 16), (16,)], body), roundtrip)
    sub = fused["fused_add_rms_norm"]
    assert isinstance(sub.body.body, G.Tuple) and len(sub.body.body.fields) == 2
    getitems = [b.value.index for b in fused["main"].body.blocks[0].bindings
                if isinstance(b.value, G.TupleGetItem)]
    assert getitems == [0, 1]


def test_no_cycle_through_an_opaque_consumer(roundtrip):
    # a = x + y; b = blas(a, w) depends on a; c = a * b would close a cycle if it joined
    # a's group, so a stays alone and c starts a group with the exp after it.
    def body(bb, x, w):
        a = bb.emit(op.add(x, x))
        b = bb.emit(op.matmul(a, w))
        c = bb.emit(op.multiply(a, b))
        return op.exp(c)
    _, fused = fuse(module([("n", 8), (8, 8)], body), roundtrip, library=True)
    assert groups(fused) == {"fused_multiply_exp": ["multiply", "exp"]}
    assert calls_in(fused["main"]) == ["add", "disco.blas.matmul", "fused_multiply_exp"]


def test_two_reductions_do_not_fuse_and_injective_chains_do(roundtrip):
    def body(bb, x, g):
        return op.nn.softmax(op.nn.rms_norm(x, g, axes=[-1]), axis=-1)
    _, fused = fuse(module([("n", 8), (8,)], body), roundtrip)
    assert groups(fused) == {}

    def chain(bb, x, cos, sin):
        q = bb.emit(op.reshape(x, [x.struct_info.shape[0], 2, 8]))
        q = bb.emit(op.nn.rotary_embedding(q, cos, sin))
        return op.permute_dims(q, [1, 0, 2])
    _, fused = fuse(module([("n", 16), ("n", 8), ("n", 8)], chain), roundtrip)
    assert groups(fused) == {"fused_reshape_rotary_embedding_permute_dims":
                             ["reshape", "rotary_embedding", "permute_dims"]}


def test_equal_groups_share_one_function_and_one_program(roundtrip):
    # Two layers' add + rms_norm, separated by a BLAS matmul (an add right after
    # rms_norm would be its epilogue instead).
    def body(bb, x, y, g, w):
        h1 = bb.emit(op.nn.rms_norm(bb.emit(op.add(x, y)), g, axes=[-1]))
        m = bb.emit(op.matmul(h1, w))
        return op.nn.rms_norm(bb.emit(op.add(m, y)), g, axes=[-1])
    mod = module([("n", 8), ("n", 8), (8,), (8, 8)], body)
    _, fused = fuse(mod, roundtrip, library=True)
    assert groups(fused) == {"fused_add_rms_norm": ["add", "rms_norm"]}
    assert calls_in(fused["main"]) == ["fused_add_rms_norm", "disco.blas.matmul", "fused_add_rms_norm"]
    merged = FuseTIR(fused)
    roundtrip(merged)
    assert calls_in(merged["main"]) == ["fused_add_rms_norm", "disco.blas.matmul", "fused_add_rms_norm"]
    assert sorted(merged.prim_funcs()) == ["fused_add_rms_norm"]
    x, y, g, w = rand([("n", 8), ("n", 8), (8,), (8, 8)], 3)
    want = rms(rms(x + y, g) @ w + y, g)
    got = run(merged, [x, y, g, w], passes=[])
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4)


# -- merged programs --------------------------------------------------------------------------

def blocks_of(func):
    return [n.block.name for n in walk(func.body) if isinstance(n, T.BlockRealize) and n.block.name != "root"]


def root_allocs(func):
    return [b.name for b in func.body.block.alloc_buffers]


def test_fuse_tir_inlines_the_internal_add_into_rms_norm(roundtrip):
    def body(bb, x, r, g):
        return op.nn.rms_norm(op.add(x, r), g, axes=[-1], epsilon=EPS)
    _, fused = fuse(module([("n", 16), ("n", 16), (16,)], body), roundtrip)
    merged = FuseTIR(fused)
    roundtrip(merged)
    # The Primitive function and the programs only it called are gone.
    assert list(merged.graph_functions()) == ["main"]
    assert sorted(merged.prim_funcs()) == ["fused_add_rms_norm"]
    prog = merged["fused_add_rms_norm"]
    assert blocks_of(prog) == ["rms_norm_sq", "rms_norm"]      # no stage writes the sum x + r
    assert root_allocs(prog) == ["rms_norm_sq"]
    x, r, g, out = prog.params
    assert x.shape[0] is r.shape[0] is out.shape[0]             # one n for every buffer
    reads = {n.buffer.name for n in walk(prog.body) if isinstance(n, T.BufferLoad)}
    assert reads == {"p0", "p1", "p2", "rms_norm_sq"}


def test_fuse_tir_keeps_a_stage_whose_value_is_returned(roundtrip):
    def body(bb, x, r, g):
        a = bb.emit_output(op.add(x, r))
        return [a, op.nn.rms_norm(a, g, axes=[-1], epsilon=EPS)]
    _, fused = fuse(module([("n", 16), ("n", 16), (16,)], body), roundtrip)
    prog = FuseTIR(fused)["fused_add_rms_norm"]
    assert blocks_of(prog) == ["add", "rms_norm_sq", "rms_norm"]
    assert [p.name for p in prog.params] == ["p0", "p1", "p2", "add", "rms_norm"]


def test_fuse_tir_elementwise_chain_is_one_stage_and_matmul_keeps_its_reduction(roundtrip):
    _, fused = fuse(module(DECODER_SHAPES, decoder_piece), roundtrip)
    merged = FuseTIR(fused)
    roundtrip(merged)
    prog = merged["fused_matmul_silu_multiply"]
    assert blocks_of(prog) == ["matmul", "multiply"]           # silu inlined into multiply
    assert root_allocs(prog) == ["matmul"]
    assert calls_in(merged["main"]) == ["fused_add_rms_norm", "fused_matmul_silu_multiply"]
    assert all(not f.attrs.get("Primitive") for f in merged.graph_functions().values())


# -- numerics ----------------------------------------------------------------------------------

FUSED = [LegalizeOps, FuseOps, FuseTIR]
FUSED_SCHEDULED = FUSED + [DefaultSchedule]

CASES = {
    "rms_norm": ([("n", 64), (64,)], lambda bb, x, g: op.nn.rms_norm(x, g, axes=[-1], epsilon=EPS),
                 lambda x, g: [rms(x, g)]),
    "softmax": ([("n", 64)], lambda bb, x: op.nn.softmax(op.multiply(x, op.const(2.0, "float32"))),
                lambda x: [softmax(2 * x)]),
    "silu_mul": ([("n", 64), ("n", 64)], lambda bb, x, y: op.multiply(op.nn.silu(x), y),
                 lambda x, y: [silu(x) * y]),
    "add_rms_norm": ([("n", 64), ("n", 64), (64,)],
                     lambda bb, x, r, g: (lambda a: [a, op.nn.rms_norm(a, g, axes=[-1], epsilon=EPS)])(
                         bb.emit_output(op.add(x, r))),
                     lambda x, r, g: [x + r, rms(x + r, g)]),
    "rotary_chain": ([("n", 32), ("n", 8), ("n", 8)],
                     lambda bb, x, c, s: op.permute_dims(op.nn.rotary_embedding(
                         op.reshape(op.add(x, x), [x.struct_info.shape[0], 4, 8]), c, s), [1, 0, 2]),
                     lambda x, c, s: [rotary((2 * x).reshape(-1, 4, 8), c, s).transpose(1, 0, 2)]),
    "decoder_piece": (DECODER_SHAPES, decoder_piece, lambda *a: [decoder_reference(*a)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fused_results_match_numpy(name, roundtrip):
    shapes, body, ref = CASES[name]
    mod = module(shapes, body)
    fused = FuseTIR(FuseOps(LegalizeOps(mod)))
    roundtrip(fused)
    assert not any(f.attrs.get("Primitive") for f in fused.graph_functions().values())
    for passes in (FUSED, FUSED_SCHEDULED):
        ex_vm = VirtualMachine(build(mod, passes=passes))["main"]
        for n in (1, 37):                     # one symbolic n, two sizes
            inputs = rand(shapes, n, seed=n)
            got = ex_vm(*inputs)
            got = list(got) if isinstance(got, (list, tuple)) else [got]
            want = ref(*[a.astype(np.float64) for a in inputs])
            assert len(got) == len(want)
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_fused_only_state_builds_unfused_calls_through_the_vm():
    # After FuseOps alone the VM calls the Primitive functions as graph functions.
    shapes, body, ref = CASES["add_rms_norm"]
    mod = FuseOps(LegalizeOps(module(shapes, body)))
    inputs = rand(shapes, 5)
    got = run(mod, inputs, passes=[])
    for g, w in zip(got, ref(*inputs)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


# -- DefaultSchedule of fused programs: row merging ---------------------------------------------

def scheduled(mod, roundtrip):
    out = DefaultSchedule(FuseTIR(FuseOps(LegalizeOps(mod))))
    roundtrip(out)
    return out


def test_row_stages_merge_under_one_parallel_loop(roundtrip):
    shapes, body, ref = CASES["add_rms_norm"]
    mod = module(shapes, body)
    prog = scheduled(mod, roundtrip)["fused_add_rms_norm"]
    stmts = prog.body.block.body
    assert isinstance(stmts, T.For) and stmts.kind == "parallel"      # one loop over rows
    row = stmts.body
    assert isinstance(row, T.Allocate) and row.buffer.name == "rms_norm_sq"   # per-row scalar
    assert [int(d) for d in row.buffer.shape] == [1]
    inner = row.body.stmts
    assert [n.block.name for s in inner for n in walk(s) if isinstance(n, T.BlockRealize)] == \
        ["add", "rms_norm_sq", "rms_norm"]
    assert prog.body.block.alloc_buffers == ()
    inputs = rand(shapes, 9)
    for g, w in zip(run(mod, inputs, FUSED_SCHEDULED), ref(*inputs)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_rows_not_merged_when_a_stage_reads_another_row(roundtrip):
    # x - sum(x, axis=0) on a square matrix: the sum's "rows" are columns; the
    # subtract reads s[j] in row i, so the stages must stay apart.
    def body(bb, x):
        return op.subtract(x, op.sum(x, axis=[0], keepdims=False))
    mod = module([(16, 16)], body)
    out = scheduled(mod, roundtrip)
    (prog,) = out.prim_funcs().values()
    stmts = prog.body.block.body
    assert isinstance(stmts, T.SeqStmt) and len(stmts.stmts) == 2
    (x,) = rand([(16, 16)], 0)
    got = run(mod, [x], FUSED_SCHEDULED)[0]
    np.testing.assert_allclose(got, x - x.sum(0), rtol=1e-5, atol=1e-5)


def test_matmul_epilogue_keeps_its_own_nests(roundtrip):
    prog = scheduled(module(DECODER_SHAPES, decoder_piece), roundtrip)["fused_matmul_silu_multiply"]
    stmts = prog.body.block.body
    assert isinstance(stmts, T.SeqStmt) and len(stmts.stmts) >= 2
    assert [b.name for b in prog.body.block.alloc_buffers] == ["matmul"]


def test_deep_chain_that_reads_twice_stays_bounded(roundtrip):
    # silu reads its input twice: inlining 12 of them into each other would make an
    # expression of 2^12 loads; FuseTIR keeps some stages as local buffers instead.
    def body(bb, x):
        v = x
        for _ in range(12):
            v = bb.emit(op.nn.silu(v))
        return v
    mod = module([("n", 8)], body)
    merged = FuseTIR(FuseOps(LegalizeOps(mod)))
    roundtrip(merged)
    (prog,) = merged.prim_funcs().values()
    assert sum(1 for _ in walk(prog.body)) < 20000
    assert 1 < len(prog.body.block.body.stmts) < 12
    (x,) = rand([("n", 8)], 4)
    want = x.astype(np.float64)
    for _ in range(12):
        want = silu(want)
    np.testing.assert_allclose(run(merged, [x], passes=[DefaultSchedule])[0], want, rtol=1e-4, atol=1e-5)


def test_fuse_tir_leaves_a_primitive_function_plan_memory_rewrote(roundtrip):
    from compiler.transform import PlanMemory
    shapes, body, ref = CASES["add_rms_norm"]
    planned = PlanMemory(FuseOps(LegalizeOps(module(shapes, body))))
    out = FuseTIR(planned)
    roundtrip(out)
    assert list(groups(out)) == ["fused_add_rms_norm"]          # still a graph function
    inputs = rand(shapes, 6)
    for g, w in zip(run(out, inputs, passes=[]), ref(*inputs)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["add_rms_norm", "softmax", "silu_mul"])
def test_fused_programs_keep_their_meaning_under_the_gpu_schedule(name, roundtrip):
    # The CUDA pipeline runs FuseTIR's output through DefaultGPUSchedule; reductions
    # become one thread block per row. Checked with the reference TIR interpreter.
    from _tir_interp import run_prim_func
    from compiler.ir import IRModule
    from compiler.transform.gpu_schedule import schedule_gpu
    shapes, body, ref = CASES[name]
    small = [tuple(8 if d == 64 else d for d in s) for s in shapes]
    merged = FuseTIR(FuseOps(LegalizeOps(module(small, body))))
    (prog_name, prog), = merged.prim_funcs().items()
    sched = schedule_gpu(prog)
    roundtrip(IRModule.from_dict({prog_name: sched}))
    first = sched.body.block.body
    first = first.stmts[0] if isinstance(first, T.SeqStmt) else first
    assert isinstance(first, T.For) and first.thread_tag == "blockIdx.x"
    inputs = rand(small, 3)
    want = ref(*[a.astype(np.float64) for a in inputs])
    outs = [np.full(w.shape, np.nan, np.float32) for w in want]
    main = merged["main"]
    (call,) = [b.value for b in main.body.blocks[0].bindings if isinstance(b.value, G.Call)]
    by_param = {id(p): a for p, a in zip(main.params, inputs)}
    args = [a.data if isinstance(a, G.Constant) else by_param[id(a)] for a in call.args[1].fields]
    run_prim_func(sched, [*args, *outs])
    for g, w in zip(outs, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)

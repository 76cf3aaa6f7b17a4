"""Tensor-parallel test models as script text, each with a numpy reference; the one
place the distributed compiler tests and the end-to-end tests take their models from.

Most models are in the form PropagateSharding produces (every variable with its DTensor
placement, conversions explicit); `k` is the mesh size (1, 2 or 4) and sizes are
parameters, so an IR test can use small shapes and an end-to-end test runnable ones.
The `*_annotated` builders are what an author writes (PropagateSharding fills in the
rest). Tests outside tests/e2e import this module by name: see
tests/compiler/distributed/conftest.py."""
from __future__ import annotations

import math

import numpy as np

HEADER = '''
@I.ir_module
class M:
    I.module_global_infos({{"mesh": [R.device_mesh({mesh}, I.Range(0, {size}))]}})
'''


def module_text(body: str, mesh=(2,)) -> str:
    """`body` (one or more functions) in a module with one device mesh of shape `mesh`."""
    return HEADER.format(mesh=str(tuple(mesh)), size=math.prod(mesh)) + body


def _mod(body: str, k: int, mesh=None) -> str:
    return module_text(body, mesh or (k,))


def D(shape, placement, dtype="float32") -> str:
    return f'R.DTensor({shape}, "{dtype}", "mesh[0]", "{placement}")'


def _dims(shape, quoted: bool) -> str:
    """A shape as script text: symbolic dims (str) quoted in a signature, bare in a body."""
    parts = [f'"{d}"' if quoted and isinstance(d, str) else str(d) for d in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _symbols(shape) -> str:
    """The `n = T.int64()` lines that bind a signature's symbolic dims in the body."""
    return "".join(f"        {d} = T.int64()\n" for d in dict.fromkeys(shape) if isinstance(d, str))


# -- Megatron MLP: w1 column-parallel, w2 row-parallel, one all-reduce -------------------------

def mlp(k: int, dim: int = 16, hidden: int = 32, act: str = "gelu") -> str:
    """x (n, dim) replicated; `act` is an R.nn operator applied to the hidden layer."""
    return _mod(f'''
    @R.function
    def main(x: {D(f'("n", {dim})', "R")}, w1: {D(f"({dim}, {hidden})", "S[1]")}, w2: {D(f"({hidden}, {dim})", "S[0]")}) -> {D(f'("n", {dim})', "R")}:
        n = T.int64()
        with R.dataflow():
            h: {D(f"(n, {hidden})", "S[1]")} = R.matmul(x, w1)
            a: {D(f"(n, {hidden})", "S[1]")} = R.nn.{act}(h)
            y: {D(f"(n, {dim})", "P[sum]")} = R.matmul(a, w2)
            z: {D(f"(n, {dim})", "R")} = R.dist.redistribute(y, "mesh[0]", "R")
            R.output(z)
        return z
''', k)


def mlp_ref(x, w1, w2):
    from math import erf
    h = x @ w1
    g = 0.5 * h * (1 + np.vectorize(erf)(h / np.sqrt(2)))
    return (g.astype(np.float32) @ w2)


def _project_heads(src: str, q_heads: int, kv_heads: int, head: int = 4) -> str:
    """Body lines: column-parallel q/kk/v projections of `src` (weights wq, wk, wv) and
    their (n, heads, head) views q3, k3, v3, all sharded over heads."""
    lines = [f'{name}: {D(f"(n, {heads * head})", "S[1]")} = R.matmul({src}, {w})'
             for name, w, heads in (("q", "wq", q_heads), ("kk", "wk", kv_heads), ("v", "wv", kv_heads))]
    lines += [f'{name}: {D(f"(n, {heads}, {head})", "S[1]")} = R.reshape({of}, R.shape([n, {heads}, {head}]))'
              for name, of, heads in (("q3", "q", q_heads), ("k3", "kk", kv_heads), ("v3", "v", kv_heads))]
    return ("\n" + " " * 12).join(lines)


# -- self-attention, heads sharded: q/k/v column-parallel, output row-parallel ----------------

def attention(k: int) -> str:
    return _mod(f'''
    @R.function
    def main(x: {D('("n", 16)', "R")}, wq: {D("(16, 16)", "S[1]")}, wk: {D("(16, 16)", "S[1]")}, wv: {D("(16, 16)", "S[1]")}, wo: {D("(16, 16)", "S[0]")}) -> {D('("n", 16)', "R")}:
        n = T.int64()
        with R.dataflow():
            {_project_heads("x", q_heads=4, kv_heads=4)}
            qt: {D("(4, n, 4)", "S[0]")} = R.permute_dims(q3, axes=[1, 0, 2])
            kt: {D("(4, 4, n)", "S[0]")} = R.permute_dims(k3, axes=[1, 2, 0])
            vt: {D("(4, n, 4)", "S[0]")} = R.permute_dims(v3, axes=[1, 0, 2])
            s: {D("(4, n, n)", "S[0]")} = R.matmul(qt, kt)
            s2: {D("(4, n, n)", "S[0]")} = R.multiply(s, R.const(0.5, "float32"))
            p: {D("(4, n, n)", "S[0]")} = R.nn.softmax(s2, axis=-1)
            o: {D("(4, n, 4)", "S[0]")} = R.matmul(p, vt)
            ot: {D("(n, 4, 4)", "S[1]")} = R.permute_dims(o, axes=[1, 0, 2])
            o2: {D("(n, 16)", "S[1]")} = R.reshape(ot, R.shape([n, 16]))
            y: {D("(n, 16)", "P[sum]")} = R.matmul(o2, wo)
            z: {D("(n, 16)", "R")} = R.dist.redistribute(y, "mesh[0]", "R")
            R.output(z)
        return z
''', k)


def softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def attention_ref(x, wq, wk, wv, wo):
    n = x.shape[0]
    q, kk, v = [(x @ w).reshape(n, 4, 4).transpose(1, 0, 2) for w in (wq, wk, wv)]
    p = softmax(q @ kk.transpose(0, 2, 1) * 0.5)
    return (p @ v).transpose(1, 0, 2).reshape(n, 16) @ wo


# -- Llama decoder layer: RMSNorm, rotary, GQA (8 q heads, 4 kv heads), SwiGLU ----------------

def llama(k: int) -> str:
    return _mod(f'''
    @R.function
    def main(x: {D('("n", 32)', "R")}, cos: {D('("n", 4)', "R")}, sin: {D('("n", 4)', "R")}, mask: {D('("n", "n")', "R")}, g1: {D("(32,)", "R")}, wq: {D("(32, 32)", "S[1]")}, wk: {D("(32, 16)", "S[1]")}, wv: {D("(32, 16)", "S[1]")}, wo: {D("(32, 32)", "S[0]")}, g2: {D("(32,)", "R")}, wg: {D("(32, 64)", "S[1]")}, wu: {D("(32, 64)", "S[1]")}, wd: {D("(64, 32)", "S[0]")}) -> {D('("n", 32)', "R")}:
        n = T.int64()
        with R.dataflow():
            h: {D("(n, 32)", "R")} = R.nn.rms_norm(x, g1, axes=[-1], epsilon=1e-5)
            {_project_heads("h", q_heads=8, kv_heads=4)}
            qr: {D("(n, 8, 4)", "S[1]")} = R.nn.rotary_embedding(q3, cos, sin)
            kr: {D("(n, 4, 4)", "S[1]")} = R.nn.rotary_embedding(k3, cos, sin)
            q4: {D("(n, 4, 2, 4)", "S[1]")} = R.reshape(qr, R.shape([n, 4, 2, 4]))
            qt: {D("(4, 2, n, 4)", "S[0]")} = R.permute_dims(q4, axes=[1, 2, 0, 3])
            kt: {D("(4, 4, n)", "S[0]")} = R.permute_dims(kr, axes=[1, 2, 0])
            kt4: {D("(4, 1, 4, n)", "S[0]")} = R.expand_dims(kt, axis=[1])
            s: {D("(4, 2, n, n)", "S[0]")} = R.matmul(qt, kt4)
            s2: {D("(4, 2, n, n)", "S[0]")} = R.multiply(s, R.const(0.5, "float32"))
            s3: {D("(4, 2, n, n)", "S[0]")} = R.add(s2, mask)
            p: {D("(4, 2, n, n)", "S[0]")} = R.nn.softmax(s3, axis=-1)
            vt: {D("(4, n, 4)", "S[0]")} = R.permute_dims(v3, axes=[1, 0, 2])
            vt4: {D("(4, 1, n, 4)", "S[0]")} = R.expand_dims(vt, axis=[1])
            o: {D("(4, 2, n, 4)", "S[0]")} = R.matmul(p, vt4)
            ot: {D("(n, 4, 2, 4)", "S[1]")} = R.permute_dims(o, axes=[2, 0, 1, 3])
            o2: {D("(n, 32)", "S[1]")} = R.reshape(ot, R.shape([n, 32]))
            a: {D("(n, 32)", "P[sum]")} = R.matmul(o2, wo)
            ar: {D("(n, 32)", "R")} = R.dist.redistribute(a, "mesh[0]", "R")
            x2: {D("(n, 32)", "R")} = R.add(x, ar)
            h2: {D("(n, 32)", "R")} = R.nn.rms_norm(x2, g2, axes=[-1], epsilon=1e-5)
            gate: {D("(n, 64)", "S[1]")} = R.matmul(h2, wg)
            up: {D("(n, 64)", "S[1]")} = R.matmul(h2, wu)
            act: {D("(n, 64)", "S[1]")} = R.nn.silu(gate)
            gu: {D("(n, 64)", "S[1]")} = R.multiply(act, up)
            d: {D("(n, 32)", "P[sum]")} = R.matmul(gu, wd)
            dr: {D("(n, 32)", "R")} = R.dist.redistribute(d, "mesh[0]", "R")
            out: {D("(n, 32)", "R")} = R.add(x2, dr)
            R.output(out)
        return out
''', k)


def rms_norm(x, g):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * g


def rotary(x, cos, sin):
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


def llama_inputs(rng, n):
    pos = np.arange(n)[:, None] * (1.0 / 10000 ** (np.arange(0, 4, 2) / 4))[None, :]
    ang = np.concatenate([pos, pos], -1)
    mask = np.triu(np.full((n, n), -1e9, np.float32), 1)
    w = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    return dict(x=w(n, 32), cos=np.cos(ang).astype(np.float32), sin=np.sin(ang).astype(np.float32),
                mask=mask, g1=(1 + w(32)), wq=w(32, 32), wk=w(32, 16), wv=w(32, 16), wo=w(32, 32),
                g2=(1 + w(32)), wg=w(32, 64), wu=w(32, 64), wd=w(64, 32))


def llama_ref(x, cos, sin, mask, g1, wq, wk, wv, wo, g2, wg, wu, wd):
    n = x.shape[0]
    h = rms_norm(x, g1)
    q = rotary((h @ wq).reshape(n, 8, 4), cos, sin)
    kk = rotary((h @ wk).reshape(n, 4, 4), cos, sin)
    v = (h @ wv).reshape(n, 4, 4)
    kk, v = np.repeat(kk, 2, axis=1), np.repeat(v, 2, axis=1)       # GQA: kv head h // 2
    q, kk, v = (t.transpose(1, 0, 2) for t in (q, kk, v))
    p = softmax(q @ kk.transpose(0, 2, 1) * 0.5 + mask)
    x2 = x + (p @ v).transpose(1, 0, 2).reshape(n, 32) @ wo
    h2 = rms_norm(x2, g2)
    gate = h2 @ wg
    return x2 + ((gate / (1 + np.exp(-gate))) * (h2 @ wu)) @ wd


# -- vocabulary-parallel embedding + column-parallel LM head (logits all-gathered) ------------

def vocab(k: int) -> str:
    return _mod(f'''
    @R.function
    def main(ids: {D('("n",)', "R", "int64")}, table: {D("(16, 8)", "S[0]")}, wh: {D("(8, 16)", "S[1]")}) -> {D('("n", 16)', "R")}:
        n = T.int64()
        with R.dataflow():
            e: {D("(n, 8)", "P[sum]")} = R.take(table, ids, axis=0)
            er: {D("(n, 8)", "R")} = R.dist.redistribute(e, "mesh[0]", "R")
            logits: {D("(n, 16)", "S[1]")} = R.matmul(er, wh)
            full: {D("(n, 16)", "R")} = R.dist.redistribute(logits, "mesh[0]", "R")
            R.output(full)
        return full
''', k)


# -- 2x2 mesh: rows over mesh axis 0, columns over mesh axis 1 --------------------------------

def mesh2x2() -> str:
    return _mod(f'''
    @R.function
    def main(x: {D("(8, 16)", "S[0]R")}, w: {D("(16, 12)", "RS[1]")}) -> R.Tuple({D("(8, 12)", "RR")}, {D("(8, 12)", "S[0]S[1]")}):
        with R.dataflow():
            y: {D("(8, 12)", "S[0]S[1]")} = R.matmul(x, w)
            z: {D("(8, 12)", "S[0]S[1]")} = R.exp(y)
            r: {D("(8, 12)", "RR")} = R.dist.redistribute(z, "mesh[0]", "RR")
            t: R.Tuple({D("(8, 12)", "RR")}, {D("(8, 12)", "S[0]S[1]")}) = (r, z)
            R.output(t)
        return t
''', 4, mesh=(2, 2))


# -- data-parallel rows over a symbolic batch (the divisibility check) ------------------------

def rows(k: int) -> str:
    return _mod(f'''
    @R.function
    def main(x: {D('("n", 8)', "S[0]")}, w: {D("(8, 8)", "R")}) -> {D('("n", 8)', "S[0]")}:
        n = T.int64()
        with R.dataflow():
            y: {D("(n, 8)", "S[0]")} = R.matmul(x, w)
            z: {D("(n, 8)", "S[0]")} = R.nn.relu(y)
            R.output(z)
        return z
''', k)


# -- every conversion: Shard(0)->Shard(1), Shard->Replicate, Partial->Shard (reduce-scatter),
#    Replicate->Shard (local slice), mean over a sharded dim (a Partial sum) ------------------

def conversions(k: int) -> str:
    out = f'R.Tuple({D("(8, 12)", "R")}, {D("(8, 8)", "S[0]")}, {D("(8,)", "R")}, {D("(8, 12)", "S[0]")})'
    return _mod(f'''
    @R.function
    def main(x: {D("(8, 12)", "S[0]")}, w: {D("(12, 8)", "S[0]")}) -> {out}:
        with R.dataflow():
            a: {D("(8, 12)", "S[1]")} = R.dist.redistribute(x, "mesh[0]", "S[1]")
            b: {D("(8, 12)", "S[1]")} = R.exp(a)
            c: {D("(8, 12)", "R")} = R.dist.redistribute(b, "mesh[0]", "R")
            d: {D("(8, 8)", "P[sum]")} = R.matmul(b, w)
            e: {D("(8, 8)", "S[0]")} = R.dist.redistribute(d, "mesh[0]", "S[0]")
            m: {D("(8,)", "P[sum]")} = R.mean(b, axis=[1], keepdims=False)
            mr: {D("(8,)", "R")} = R.dist.redistribute(m, "mesh[0]", "R")
            f: {D("(8, 12)", "S[0]")} = R.dist.redistribute(c, "mesh[0]", "S[0]")
            t: {out} = (c, e, mr, f)
            R.output(t)
        return t
''', k)


# -- what an author writes (PropagateSharding fills in the rest) ------------------------------

def mlp_weights_annotated(k: int, dim: int = 16, hidden: int = 32, act: str = "gelu", batch="n") -> str:
    """Only the two weights carry placements; `batch` is x's row count, a symbol or an int."""
    x = _dims((batch, dim), quoted=True)
    return _mod(f'''
    @R.function
    def main(x: R.Tensor({x}, "float32"), w1: {D(f"({dim}, {hidden})", "S[1]")}, w2: {D(f"({hidden}, {dim})", "S[0]")}) -> R.Tensor({x}, "float32"):
{_symbols((batch,))}        with R.dataflow():
            h = R.matmul(x, w1)
            a = R.nn.{act}(h)
            y = R.matmul(a, w2)
            R.output(y)
        return y
''', k)


def mlp_activation_annotated(k: int, dim: int = 16, hidden: int = 32, act: str = "gelu", annotated: str = "hs") -> str:
    """Only the hidden activation is annotated (bound to `annotated`); the weights'
    placements are inferred."""
    return _mod(f'''
    @R.function
    def main(x: R.Tensor(("n", {dim}), "float32"), w1: R.Tensor(({dim}, {hidden}), "float32"), w2: R.Tensor(({hidden}, {dim}), "float32")) -> R.Tensor(("n", {dim}), "float32"):
        n = T.int64()
        with R.dataflow():
            h = R.matmul(x, w1)
            {annotated} = R.dist.annotate_sharding(h, "mesh[0]", "S[1]")
            a = R.nn.{act}({annotated})
            y = R.matmul(a, w2)
            R.output(y)
        return y
''', k)


# -- one conversion, optionally after an elementwise operator ---------------------------------

def redistribute(src: str, dst: str, shape=(8, 12), mesh=(2,), unary: str | None = None) -> str:
    """x (placement `src`) converted to `dst`; symbolic dims in `shape` are str. With
    `unary` (e.g. "R.exp"), y = unary(x) keeps `src` and z is the converted y."""
    sig, body = _dims(shape, quoted=True), _dims(shape, quoted=False)
    steps, last = [], "x"
    if unary:
        steps.append(f'y: {D(body, src)} = {unary}(x)')
        last = "y"
    out = "z" if unary else "y"
    steps.append(f'{out}: {D(body, dst)} = R.dist.redistribute({last}, "mesh[0]", "{dst}")')
    lines = "".join(f"            {line}\n" for line in steps)
    return module_text(f'''
    @R.function
    def main(x: {D(sig, src)}) -> {D(sig, dst)}:
{_symbols(shape)}        with R.dataflow():
{lines}            R.output({out})
        return {out}
''', mesh)


# -- R.call_tir / R.call_dps_packed in a sharded module ----------------------------------------

def seed_calltir(k: int, x: str = "R", w: str = "S[1]", rows="n", inner: int = 128,
                 cols: int = 64) -> str:
    """The seed example (a hand-written matmul tensor program, then relu) with placements
    on X (rows x inner) and W (inner x cols) only; `rows` is a symbol or an int."""
    r = f'"{rows}"' if isinstance(rows, str) else str(rows)
    sym = f"        {rows} = T.int64()\n" if isinstance(rows, str) else ""
    return _mod(f'''
    @T.prim_func
    def mm(X: T.Buffer(({r}, {inner}), "float32"), W: T.Buffer(({inner}, {cols}), "float32"), Y: T.Buffer(({r}, {cols}), "float32")):
{sym}        for i, j, k in T.grid({rows}, {cols}, {inner}):
            with T.block("Y"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    Y[vi, vj] = T.float32(0)
                Y[vi, vj] = Y[vi, vj] + X[vi, vk] * W[vk, vj]

    @R.function
    def main(X: {D(_dims((rows, inner), True), x)}, W: {D(_dims((inner, cols), True), w)}):
{sym}        with R.dataflow():
            lv0 = R.call_tir(M.mm, (X, W), R.Tensor({_dims((rows, cols), False)}, "float32"))
            gv0 = R.nn.relu(lv0)
            R.output(gv0)
        return gv0
''', k)


def seed_ref(x, w):
    return np.maximum(x @ w, 0)


DPS_FUNC = "tp_models.matmul_plus_one"


def _matmul_plus_one(x, w, out):
    np.matmul(x, w, out=out)
    out += 1


PATHS_FUNC = "tp_models.allreduce_paths"


def _allreduce_paths():
    from disco import ccl
    return ccl.communicator().allreduce_paths()


def register_worker_funcs() -> None:
    """Registers DPS_FUNC and PATHS_FUNC (a worker's shm all-reduce path counts) in this
    process (workers: sess.import_module("_tp_models"))."""
    import disco
    disco.register_func(DPS_FUNC, _matmul_plus_one, override=True)
    disco.register_func(PATHS_FUNC, _allreduce_paths, override=True)


register_worker_funcs()


def dps_packed(k: int) -> str:
    """A call_dps_packed to DPS_FUNC between a column-parallel matmul and a
    row-parallel one: the external call sees the whole (replicated) tensor."""
    return _mod(f'''
    @R.function
    def main(x: {D('("n", 16)', "R")}, w1: {D("(16, 32)", "S[1]")}, w2: {D("(32, 16)", "R")}, w3: {D("(16, 8)", "S[0]")}):
        n = T.int64()
        with R.dataflow():
            h = R.nn.relu(R.matmul(x, w1))
            p = R.call_dps_packed("{DPS_FUNC}", (h, w2), R.Tensor((n, 16), "float32"))
            y = R.matmul(p, w3)
            R.output(y)
        return y
''', k)


def dps_packed_ref(x, w1, w2, w3):
    return (np.maximum(x @ w1, 0) @ w2 + 1) @ w3


# -- the Llama layer as an author writes it: placements on the weights only -------------------

def llama_weights_annotated(k: int, q_heads: int = 4, kv_heads: int = 2, head: int = 16) -> str:
    """RMSNorm, rotary, grouped-query attention (kv head j serves q heads j*g .. j*g+g-1,
    g = q_heads // kv_heads), SwiGLU; hidden = q_heads * head, MLP 2 * hidden. Only the
    seven projection weights carry placements (column-parallel S[1], row-parallel S[0])."""
    dim, kv, g = q_heads * head, kv_heads * head, q_heads // kv_heads
    mlp = 2 * dim
    t = lambda *shape: f'R.Tensor({_dims(shape, quoted=True)}, "float32")'  # noqa: E731
    return _mod(f'''
    @R.function
    def main(x: {t("n", dim)}, cos: {t("n", head)}, sin: {t("n", head)}, g1: {t(dim)}, g2: {t(dim)}, wq: {D(f"({dim}, {dim})", "S[1]")}, wk: {D(f"({dim}, {kv})", "S[1]")}, wv: {D(f"({dim}, {kv})", "S[1]")}, wo: {D(f"({dim}, {dim})", "S[0]")}, wg: {D(f"({dim}, {mlp})", "S[1]")}, wu: {D(f"({dim}, {mlp})", "S[1]")}, wd: {D(f"({mlp}, {dim})", "S[0]")}) -> {t("n", dim)}:
        n = T.int64()
        with R.dataflow():
            h = R.nn.rms_norm(x, g1, axes=[-1], epsilon=1e-5)
            q = R.nn.rotary_embedding(R.reshape(R.matmul(h, wq), R.shape([n, {q_heads}, {head}])), cos, sin)
            k = R.nn.rotary_embedding(R.reshape(R.matmul(h, wk), R.shape([n, {kv_heads}, {head}])), cos, sin)
            v = R.reshape(R.matmul(h, wv), R.shape([n, {kv_heads}, {head}]))
            kr = R.reshape(R.broadcast_to(R.reshape(k, R.shape([n, {kv_heads}, 1, {head}])), R.shape([n, {kv_heads}, {g}, {head}])), R.shape([n, {q_heads}, {head}]))
            vr = R.reshape(R.broadcast_to(R.reshape(v, R.shape([n, {kv_heads}, 1, {head}])), R.shape([n, {kv_heads}, {g}, {head}])), R.shape([n, {q_heads}, {head}]))
            s = R.matmul(R.permute_dims(q, axes=[1, 0, 2]), R.permute_dims(kr, axes=[1, 2, 0]))
            pr = R.nn.softmax(R.multiply(s, R.const(0.25, "float32")), axis=-1)
            o = R.reshape(R.permute_dims(R.matmul(pr, R.permute_dims(vr, axes=[1, 0, 2])), axes=[1, 0, 2]), R.shape([n, {dim}]))
            attn = R.matmul(o, wo)
            x2 = R.add(x, attn)
            h2 = R.nn.rms_norm(x2, g2, axes=[-1], epsilon=1e-5)
            m = R.multiply(R.nn.silu(R.matmul(h2, wg)), R.matmul(h2, wu))
            down = R.matmul(m, wd)
            y = R.add(x2, down)
            R.output(y)
        return y
''', k)


def llama_weights_annotated_inputs(rng, n, q_heads: int = 4, kv_heads: int = 2, head: int = 16):
    dim, kv = q_heads * head, kv_heads * head
    pos = np.arange(n)[:, None] * (1.0 / 10000 ** (np.arange(0, head, 2) / head))[None, :]
    ang = np.concatenate([pos, pos], -1)
    w = lambda *s: (rng.standard_normal(s) * 0.15).astype(np.float32)  # noqa: E731
    return dict(x=w(n, dim), cos=np.cos(ang).astype(np.float32), sin=np.sin(ang).astype(np.float32),
                g1=(1 + w(dim)), g2=(1 + w(dim)), wq=w(dim, dim), wk=w(dim, kv), wv=w(dim, kv),
                wo=w(dim, dim), wg=w(dim, 2 * dim), wu=w(dim, 2 * dim), wd=w(2 * dim, dim))


def llama_weights_annotated_ref(x, cos, sin, g1, g2, wq, wk, wv, wo, wg, wu, wd):
    n, dim = x.shape
    head = cos.shape[1]
    q_heads, kv_heads = dim // head, wk.shape[1] // head
    h = rms_norm(x, g1)
    q = rotary((h @ wq).reshape(n, q_heads, head), cos, sin)
    kk = rotary((h @ wk).reshape(n, kv_heads, head), cos, sin)
    v = (h @ wv).reshape(n, kv_heads, head)
    g = q_heads // kv_heads
    kk, v = np.repeat(kk, g, axis=1), np.repeat(v, g, axis=1)       # GQA: kv head j // g
    q, kk, v = (t.transpose(1, 0, 2) for t in (q, kk, v))
    p = softmax(q @ kk.transpose(0, 2, 1) * 0.25)
    x2 = x + (p @ v).transpose(1, 0, 2).reshape(n, dim) @ wo
    h2 = rms_norm(x2, g2)
    gate = h2 @ wg
    return x2 + ((gate / (1 + np.exp(-gate))) * (h2 @ wu)) @ wd


# -- self-attention as an author writes it: q/k/v column-parallel, output row-parallel -------

def attention_weights_annotated(k: int) -> str:
    """`attention`'s model (4 heads of 4, x (n, 16)) with placements on the weights only."""
    return _mod(f'''
    @R.function
    def main(x: R.Tensor(("n", 16), "float32"), wq: {D("(16, 16)", "S[1]")}, wk: {D("(16, 16)", "S[1]")}, wv: {D("(16, 16)", "S[1]")}, wo: {D("(16, 16)", "S[0]")}) -> R.Tensor(("n", 16), "float32"):
        n = T.int64()
        with R.dataflow():
            q = R.permute_dims(R.reshape(R.matmul(x, wq), R.shape([n, 4, 4])), axes=[1, 0, 2])
            kt = R.permute_dims(R.reshape(R.matmul(x, wk), R.shape([n, 4, 4])), axes=[1, 2, 0])
            v = R.permute_dims(R.reshape(R.matmul(x, wv), R.shape([n, 4, 4])), axes=[1, 0, 2])
            p = R.nn.softmax(R.multiply(R.matmul(q, kt), R.const(0.5, "float32")), axis=-1)
            o = R.reshape(R.permute_dims(R.matmul(p, v), axes=[1, 0, 2]), R.shape([n, 16]))
            y = R.matmul(o, wo)
            R.output(y)
        return y
''', k)


# -- vocabulary-parallel embedding + column-parallel LM head as an author writes it ----------

def vocab_weights_annotated(k: int, gathered: bool = True) -> str:
    """`vocab`'s model with placements on the table (S[0]) and the head (S[1]) only. With
    `gathered` the declared result type asks for whole logits on every device (the
    column-parallel head's S[1] result is all-gathered); otherwise the result keeps S[1]
    and the controller assembles it when fetched."""
    ret = D('("n", 16)', "R") if gathered else 'R.Tensor(("n", 16), "float32")'
    return _mod(f'''
    @R.function
    def main(ids: R.Tensor(("n",), "int64"), table: {D("(16, 8)", "S[0]")}, wh: {D("(8, 16)", "S[1]")}) -> {ret}:
        n = T.int64()
        with R.dataflow():
            e = R.take(table, ids, axis=0)
            logits = R.matmul(e, wh)
            R.output(logits)
        return logits
''', k)


# -- 2-D tensor parallelism on a 2x2 mesh: weights sharded over both mesh axes -----------------

def mlp2d_weights_annotated(dim: int = 16, hidden: int = 32, out: int = 8) -> str:
    """x (n, dim) @ w1 (S[0]S[1]: rows over mesh axis 0, columns over axis 1), gelu,
    @ w2 (S[1]S[0]: columns over axis 0, rows over axis 1)."""
    return _mod(f'''
    @R.function
    def main(x: R.Tensor(("n", {dim}), "float32"), w1: {D(f"({dim}, {hidden})", "S[0]S[1]")}, w2: {D(f"({hidden}, {out})", "S[1]S[0]")}) -> R.Tensor(("n", {out}), "float32"):
        n = T.int64()
        with R.dataflow():
            h = R.matmul(x, w1)
            a = R.nn.gelu(h)
            y = R.matmul(a, w2)
            R.output(y)
        return y
''', 4, mesh=(2, 2))


PIPELINE_HEADER = '''
@I.ir_module
class M:
    I.module_global_infos({{"mesh": [{meshes}]}})
'''


def pipeline_module_text(body: str, meshes=((2,), (2,)), starts=None) -> str:
    """`body` in a module with one mesh per pipeline stage: mesh i of shape meshes[i] on
    the devices after the previous meshes' (or from starts[i])."""
    parts, first = [], 0
    for i, shape in enumerate(meshes):
        lo = starts[i] if starts is not None else first
        n = math.prod(shape)
        parts.append(f"R.device_mesh({tuple(shape)}, I.Range({lo}, {lo + n}))")
        first = lo + n
    return PIPELINE_HEADER.format(meshes=", ".join(parts)) + body


def mlp_two_stages(dim: int = 128, batch="n", act: str = "relu") -> str:
    """The acceptance MLP of issue 17: four dim x dim weights, w1/w2 on mesh[0] (w1 S[1]),
    w3/w4 on mesh[1] (w3 S[1]); only w1 and w3 are annotated, the rest is propagated."""
    x = _dims((batch, dim), quoted=True)
    sym = _symbols((batch,))
    return f'''
    @R.function
    def main(x: R.Tensor({x}, "float32"), w1: R.Tensor(({dim}, {dim}), "float32"), w2: R.Tensor(({dim}, {dim}), "float32"), w3: R.Tensor(({dim}, {dim}), "float32"), w4: R.Tensor(({dim}, {dim}), "float32")) -> R.Tensor({x}, "float32"):
{sym}        with R.dataflow():
            w1s = R.dist.annotate_sharding(w1, "mesh[0]", "S[1]")
            h1 = R.matmul(x, w1s)
            a1 = R.nn.{act}(h1)
            y1 = R.matmul(a1, w2)
            w3s = R.dist.annotate_sharding(w3, "mesh[1]", "S[1]")
            h2 = R.matmul(y1, w3s)
            a2 = R.nn.{act}(h2)
            y2 = R.matmul(a2, w4)
            R.output(y2)
        return y2
'''


def mlp_two_stages_ref(x, w1, w2, w3, w4):
    relu = lambda v: np.maximum(v, 0)
    return relu(relu(x @ w1) @ w2 @ w3) @ w4

"""compiler.nn: module trees and their dotted parameter names, export to an IRModule that
prints and parses back, symbolic lengths, sharding where a layer is defined and by a
plan (both ending as parameter placements that propagation completes), against numpy."""
from __future__ import annotations

import numpy as np
import pytest

import disco
from compiler import build, nn
from compiler.distributed import DeviceMesh, describe
from compiler.ir.errors import CompilerError, ShardingError
from disco.vm import VirtualMachine


class MLP(nn.Module):
    def __init__(self, d=16, h=32, col=None, row=None):
        self.up = nn.Linear(d, h, bias=True, shard=col)
        self.down = nn.Linear(h, d, shard=row)

    def forward(self, x):
        return self.down(nn.F.silu(self.up(x)))


class Stack(nn.Module):
    def __init__(self):
        self.layers = nn.ModuleList([MLP(), MLP()])
        self.norm = nn.RMSNorm(16)

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return self.norm(x)


SPEC = {"main": {"x": nn.spec.Tensor(("n", 16), "float32")}}


def _mlp_ref(x, p):
    u = x @ p["up.weight"].T + p["up.bias"]
    return (u / (1 + np.exp(-u))) @ p["down.weight"].T


def _random_params(model, seed=0):
    rng = np.random.default_rng(seed)
    return {n: (rng.standard_normal(p.shape) * 0.3).astype(np.float32) for n, p in model.named_parameters()}


def test_dotted_names_follow_the_module_tree():
    names = [n for n, _ in Stack().named_parameters()]
    assert names == ["layers.0.up.weight", "layers.0.up.bias", "layers.0.down.weight",
                     "layers.1.up.weight", "layers.1.up.bias", "layers.1.down.weight", "norm.weight"]


def test_tied_parameters_are_listed_once():
    m = MLP()
    m.tied = m.up.weight
    assert [n for n, _ in m.named_parameters()].count("up.weight") == 1
    assert "tied" not in [n for n, _ in m.named_parameters()]


def test_export_round_trips_and_one_build_serves_every_length(roundtrip):
    model = Stack()
    mod = nn.export(model, SPEC)
    roundtrip(mod)
    assert list(mod.attrs["model_parameters"]) == [n for n, _ in model.named_parameters()]
    vm = VirtualMachine(build(mod))
    p = _random_params(model)
    for n in (1, 5, 9):
        x = np.random.default_rng(n).standard_normal((n, 16)).astype(np.float32)
        want = x
        for i in range(2):
            want = want + _mlp_ref(want, {k[len(f"layers.{i}."):]: v for k, v in p.items()
                                          if k.startswith(f"layers.{i}.")})
        want = want / np.sqrt((want ** 2).mean(-1, keepdims=True) + 1e-6) * p["norm.weight"]
        np.testing.assert_allclose(vm["main"](x, *p.values()), want, rtol=1e-4, atol=1e-4)


def test_calling_a_module_outside_export_is_an_error():
    with pytest.raises(CompilerError, match="tensors exist only while a model is exported"):
        MLP().up.weight()


@pytest.mark.parametrize("how", ["layers", "plan"])
def test_sharding_in_model_code_gives_megatron_on_two_workers(how):
    if how == "layers":
        model = MLP(col="S[0]", row="S[1]")
        model.mesh = DeviceMesh((2,), (0, 1))
    else:
        model = nn.shard(MLP(), 2, {"*.up.weight": "S[0]", "up.bias": "S[0]", "down.weight": "S[1]"})
    mod = nn.export(model, SPEC)
    report = describe(mod)
    assert [kind for _, kind, _ in report.collectives] == ["allreduce"]
    p = _random_params(model, 1)
    x = np.random.default_rng(2).standard_normal((6, 16)).astype(np.float32)
    with disco.ThreadedSession(2) as sess:
        out = sess.load_module(build(mod))["main"](x, *p.values()).fetch()
    np.testing.assert_allclose(out, _mlp_ref(x, p), rtol=1e-4, atol=1e-4)


def test_a_plan_placement_that_does_not_fit_the_parameter_fails():
    with pytest.raises(ShardingError, match="Shard dim 2 is out of range for a tensor of rank 2"):
        nn.shard(MLP(), 2, {"up.weight": "S[2]"})


def test_modules_put_on_pipeline_stages_run_as_two_stages():
    """nn.pipeline gives one mesh per stage, nn.stage puts a module's parameters on one
    (replicated there unless placed); the export runs as a pipeline: the second layer
    and the norm on worker 1, against numpy, for two token counts."""
    model = Stack()
    meshes = nn.pipeline(model, 2, 1)
    assert meshes == [DeviceMesh((1,), (0,)), DeviceMesh((1,), (1,))]
    nn.stage(model.layers[1], 1)
    nn.stage(model.norm, 1)
    mod = nn.export(model, SPEC)
    text = mod.script()
    assert 'layers_0_up_weight: R.DTensor((32, 16), "float32", "mesh[0]", "R")' in text
    assert 'layers_1_up_weight: R.DTensor((32, 16), "float32", "mesh[1]", "R")' in text
    assert 'norm_weight: R.DTensor((16,), "float32", "mesh[1]", "R")' in text
    p = _random_params(model, 3)
    with disco.ProcessSession(2) as sess:
        dmod = sess.load_module(build(mod), ccl_backend="shm")
        for n in (5, 2):
            x = np.random.default_rng(n).standard_normal((n, 16)).astype(np.float32)
            h = x
            for i in range(2):
                h = h + _mlp_ref(h, {k[len(f"layers.{i}."):]: v for k, v in p.items() if k.startswith(f"layers.{i}.")})
            ref = h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + 1e-6) * p["norm.weight"]
            np.testing.assert_allclose(dmod["main"](x, *p.values()).fetch(), ref, rtol=1e-4, atol=1e-4)


def test_pipeline_arguments_are_checked():
    with pytest.raises(ShardingError, match=r"nn.pipeline: stages and size must be positive ints, got 0 and 2"):
        nn.pipeline(Stack(), 0, 2)
    model = Stack()
    nn.pipeline(model, 2, 1)
    nn.stage(model.norm, 2)
    with pytest.raises(ShardingError, match=r"parameter 'norm.weight' is on mesh\[2\] but the model has 2 meshes"):
        nn.export(model, SPEC)

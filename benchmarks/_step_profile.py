"""Imported on workers by benchmarks/prefill_cpu.py --profile: wraps every step of the VM's
plans to add its thread CPU time to a table by kernel / packed function name, read back
with the global function `bench.step_profile` (reset=True to clear)."""
import functools
import time

import disco
from disco.vm.plan import _KernelCall
from disco.vm import plan as _plan

_TABLE: dict = {}


def _name_of(step, kernels):
    if isinstance(step, functools.partial) or (_KernelCall and isinstance(step, _KernelCall)):
        return "kernel " + kernels.get(id(step.func), "?")
    code = getattr(step, "__code__", None)
    if code is not None and step.__closure__:
        cells = dict(zip(code.co_freevars, step.__closure__))
        if "name" in cells:
            return "packed " + str(cells["name"].cell_contents)
    return "other " + getattr(code, "co_name", "?") if code else "other"


def _wrap(step, name):
    clock = time.thread_time

    def timed():
        t = clock()
        step()
        e = _TABLE.setdefault(name, [0, 0.0])
        e[0] += 1
        e[1] += clock() - t
    return timed


_orig = _plan.Plan.__init__


def _init(self, rec, *a, **k):
    _orig(self, rec, *a, **k)
    kernels = {id(kk.fn): kk.info.name for kk in rec.vm._kernels}
    self.steps = [_wrap(s, _name_of(s, kernels)) for s in self.steps]


_plan.Plan.__init__ = _init


@disco.register_func("bench.step_profile")
def step_profile(reset=False):
    out = {k: list(v) for k, v in _TABLE.items()}
    if reset:
        _TABLE.clear()
    return out

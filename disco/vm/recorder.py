"""The recording interpreter: runs a call's bytecode once and records what it did.

Interpreting is the slow, general path (every check, every shape evaluated); the
record it leaves (`events`) is what `finalize` turns into an execution plan
(plan.py) that later calls with the same plan key replay. Calls whose shapes depend
on data are interpreted on every call. See the package docstring
(disco/vm/__init__.py) for how a call runs.
"""
from __future__ import annotations

import ctypes
import threading
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ..errors import DiscoError
from ..executable import Op
from .decode import Function, Kernel
from .matcher import Matcher, got_text
from .plan import BYTES, Plan, normalize, view

if TYPE_CHECKING:
    from .machine import VirtualMachine


# Collective inputs up to this size are planned like other intermediates (see
# Recorder.collective_inputs); shm's all-reduce copies up to 16 KiB (small_bytes) anyway.
SHARED_MIN_BYTES = 16 << 10


class Recorder:
    """Interprets a function call while recording what it does (see the package docstring).

    Values live in a flat list of slots shared by all frames: a callee's parameters are
    its caller's slots, so calls are inlined into one plan."""

    def __init__(self, vm: VirtualMachine):
        self.vm = vm
        self.vals: list = []
        self.events: list = []        # effects and producers, in execution order
        self.volatile: set = set()    # slots whose value is not fixed by the plan key
        self.tuples: dict = {}        # slot -> field slots, for tuples made here
        self.allocs: dict = {}        # slot -> (shape, dtype)
        self.storages: dict = {}      # slot -> nbytes, storages made here (ALLOC_STORAGE)
        self.pool: Optional[list] = None   # the handle's storages, when this call may use them
        self.pool_slots: dict = {}    # slot -> index in the pool
        self.views: dict = {}         # slot -> its storage's slot (ALLOC_VIEW)
        self.param_slots: list = []
        self.cacheable = True

    def new(self, v: Any) -> int:
        self.vals.append(v)
        return len(self.vals) - 1

    def call_top(self, fn: Function, args) -> int:
        h, binders = [0] * fn.num_syms, {}
        m = Matcher(fn, h, binders, self.vm.device)
        conv = [m.convert(p, a, f"parameter {n!r}", True)
                for p, a, n in zip(fn.params, args, fn.param_names)]
        m.finish()
        self.param_slots = [self.new(v) for v in conv]
        return self.body(fn, list(self.param_slots), h, binders)

    def call_inner(self, fn: Function, slots: list) -> int:
        h, binders = [0] * fn.num_syms, {}
        m = Matcher(fn, h, binders, self.vm.device)
        for p, s, n in zip(fn.params, slots, fn.param_names):
            m.convert(p, self.vals[s], f"parameter {n!r}", False)
        m.finish()
        return self.body(fn, list(slots), h, binders)

    def body(self, fn: Function, arg_slots: list, h: list, binders: dict) -> int:
        vals, vm = self.vals, self.vm
        regs = arg_slots + [None] * (fn.num_regs - len(arg_slots))
        for ins in fn.code:
            op = ins[0]
            if op is Op.CALL_KERNEL:
                self.kernel(fn, ins[1], [regs[r] for r in ins[2]], ins[3](h))
            elif op is Op.CHECK_KERNEL:      # checked when recording: plans need not repeat it
                ins[1].run([vals[regs[r]] for r in ins[2]], ins[3](h), vm.device)
            elif op is Op.ALLOC:
                shape = ins[3](h)
                s = regs[ins[1]] = self.new(vm.device.empty(shape, ins[2]))
                self.allocs[s] = (shape, ins[2])
                self.events.append(("alloc", s))
            elif op is Op.ALLOC_VIEW:
                st, offset, dtype, shape = regs[ins[2]], ins[3](h), ins[4], ins[5](h)
                s = regs[ins[1]] = self.new(view(fn.name, vals[st], offset, shape, dtype))
                self.views[s] = st
                self.events.append(("view", s, st, offset, shape, dtype, fn.name))
            elif op is Op.ALLOC_STORAGE:
                nbytes = int(ins[2](h))
                s = regs[ins[1]] = self.new(self.storage(nbytes))
                self.storages[s] = nbytes
                self.events.append(("storage", s, nbytes))
            elif op is Op.CALL_PACKED:
                dst, name, slots = ins[1], ins[2], [regs[r] for r in ins[3]]
                func = vm._packed(name)
                r = normalize(func(*[vals[s] for s in slots]))
                s = None
                if dst >= 0:
                    s = regs[dst] = self.new(r)
                    self.volatile.add(s)
                guard = (r.shape, r.dtype) if vm.device.is_tensor(r) else None
                self.events.append(("packed", func, name, slots, s, guard))
            elif op is Op.LOAD_CONST:
                regs[ins[1]] = self.new(vm.constants[ins[2]])
            elif op is Op.LOAD_IMM:
                regs[ins[1]] = self.new(ins[2])
            elif op is Op.PRIM or op is Op.MAKE_SHAPE:
                regs[ins[1]] = self.new(ins[2](h))
            elif op is Op.MAKE_TUPLE:
                slots = [regs[r] for r in ins[2]]
                s = regs[ins[1]] = self.new(tuple(vals[f] for f in slots))
                self.tuples[s] = slots
                if any(f in self.volatile for f in slots):
                    self.volatile.add(s)
                self.events.append(("tuple", s, slots))
            elif op is Op.TUPLE_GET:
                src, idx = regs[ins[2]], ins[3]
                if src in self.tuples:      # a tuple made here: alias its field
                    regs[ins[1]] = self.tuples[src][idx]
                    continue
                t = vals[src]
                if not isinstance(t, tuple) or not -len(t) <= idx < len(t):
                    raise DiscoError(f"{fn.name}: TUPLE_GET {idx} of {got_text(t)}")
                s = regs[ins[1]] = self.new(t[idx])
                self.volatile.add(s)
                self.events.append(("get", s, src, idx))
            elif op is Op.MATCH:
                s, pat, what = regs[ins[1]], ins[2], ins[3]
                before = len(binders)
                m = Matcher(fn, h, binders, vm.device)
                m.convert(pat, vals[s], f"match_cast of {what!r}", False)
                m.finish()
                if s in self.volatile:
                    if len(binders) != before:
                        self.cacheable = False   # shapes depend on data: interpret each call
                    self.events.append(("match", s, fn, pat, what, list(h), dict(binders)))
            elif op is Op.CALL_FUNC:
                regs[ins[1]] = self.call_inner(vm._fn(ins[2]), [regs[r] for r in ins[3]])
            elif op is Op.RET:
                return regs[ins[1]]
            else:  # pragma: no cover - Op is closed
                raise DiscoError(f"{fn.name}: unknown instruction {op!r}")
        raise DiscoError(f"{fn.name}: bytecode ends without RET")

    def storage(self, nbytes: int) -> Any:
        """A storage of at least `nbytes`: the pool's k-th one for the k-th ALLOC_STORAGE of
        the call (every call of a function runs the same ones in the same order)."""
        pool = self.pool
        if pool is None:
            return self.vm.device.empty((nbytes,), BYTES)
        k = len(self.pool_slots)
        if k == len(pool):
            pool.append(None)
        buf = pool[k]
        if buf is None or buf.nbytes < nbytes:
            buf = pool[k] = self.vm.device.empty((nbytes,), BYTES)
        self.pool_slots[len(self.vals)] = k     # the slot `new` gives it next
        return buf

    def escaping(self, ret: int) -> set:
        """Allocations and storages the result may hold: those it returns (directly or in
        tuples), and those handed to a packed function whose result may be one of them
        (any packed function's, unless it declares `result_is_fresh`: its result never
        holds its arguments, as a collective's)."""
        escaping: set = set()

        def walk(s):
            if s in self.tuples:
                for f in self.tuples[s]:
                    walk(f)
            elif s in self.allocs:
                escaping.add(s)
            elif s in self.views:
                escaping.add(self.views[s])
        walk(ret)
        for ev in self.events:
            if ev[0] == "packed" and ev[4] is not None and not getattr(ev[1], "result_is_fresh", False):
                for s in ev[3]:
                    walk(s)
        return escaping

    def nbytes(self, s: int) -> int:
        """Bytes of allocation or storage slot `s`."""
        if s in self.storages:
            return self.storages[s]
        shape, dtype = self.allocs[s]
        n = dtype.itemsize
        for d in shape:
            n *= d
        return n

    def collective_inputs(self) -> set:
        """Allocations and storages holding what a collective reads (the arguments at
        its packed function's `in_place_inputs`). Those over SHARED_MIN_BYTES are made with
        `device.shared_empty` afresh by every call of the plan (shm: in the arena, read by
        the peers in place; a plan holding them would pin arena space for its life).
        Smaller ones are copied by the collective anyway (shm's one-barrier path), so when
        they do not escape they are allocated once, like any intermediate: a decode step
        saves an arena allocation per all-reduce."""
        shared: set = set()
        for ev in self.events:
            if ev[0] == "packed":
                for i in getattr(ev[1], "in_place_inputs", ()):
                    if i < len(ev[3]):
                        s = ev[3][i]
                        s = self.views.get(s, s)
                        if (s in self.allocs or s in self.storages) and self.nbytes(s) > SHARED_MIN_BYTES:
                            shared.add(s)
        return shared

    def release_pool(self, ret: int) -> None:
        """Give up pool storages the result may view: the caller keeps them, so later
        calls must not write them."""
        for s in self.escaping(ret):
            k = self.pool_slots.get(s)
            if k is not None:
                self.pool[k] = None

    def kernel(self, fn: Function, k: Kernel, slots: list, scalars: tuple) -> None:
        arrays = [self.vals[s] for s in slots]
        info = k.info
        if len(arrays) != len(k.dtypes):
            raise DiscoError(f"{fn.name}: kernel {info.name} takes {len(k.dtypes)} buffers, "
                             f"got {len(arrays)}")
        for a, dt, b in zip(arrays, k.dtypes, info.buffers):
            if not self.vm.device.is_tensor(a) or a.dtype != dt or a.ndim != b["ndim"] \
                    or not a.flags.c_contiguous:
                raise DiscoError(f"{fn.name}: kernel {info.name} buffer {b['name']!r} expects a "
                                 f"contiguous {b['ndim']}-d {b['dtype']} array, got {got_text(a)}")
        dims = [d for a in arrays for d in a.shape] + [int(v) for v in scalars]
        ptrs = (ctypes.c_void_p * max(len(arrays), 1))(*[self.vm.device.ptr(a) for a in arrays])
        dimsarr = (ctypes.c_int64 * max(len(dims), 1))(*dims)
        k.fn(ctypes.addressof(ptrs), ctypes.addressof(dimsarr))
        self.events.append(("kernel", k, slots, ptrs, dimsarr))

    def finalize(self, ret: int, lock: Optional[threading.Lock] = None) -> Plan:
        """Turn the recording into a plan; see the package docstring."""
        escaping = self.escaping(ret) | self.collective_inputs()
        # A returned view: its storage, and every view of it, are made afresh each call.
        escaping |= {v for v, st in self.views.items() if st in escaping}
        dynamic = set(self.param_slots) | self.volatile | escaping
        for ev in self.events:           # tuples of fresh values are rebuilt each call
            if ev[0] == "tuple" and any(f in dynamic for f in ev[2]):
                dynamic.add(ev[1])
        self.share_storage(escaping)
        patches: dict = {s: [] for s in dynamic}
        for ev in self.events:
            if ev[0] == "kernel":
                for i, s in enumerate(ev[2]):
                    if s in dynamic:
                        patches[s].append((ev[3], i))
        return Plan(self, ret, dynamic, escaping, patches, lock)

    def share_storage(self, escaping: set) -> None:
        """Intermediates whose lives do not overlap share storage (same byte size).

        Only tensors used solely as kernel or packed-call arguments take part; those in
        tuples, match_casts or results keep their own. Rewrites the recorded pointers."""
        last_use: dict = {}
        pinned = set(escaping)
        for i, ev in enumerate(self.events):
            kind = ev[0]
            if kind == "kernel":
                for s in ev[2]:
                    last_use[s] = i
            elif kind == "packed":
                for s in ev[3]:
                    last_use[s] = i
            elif kind == "tuple":
                pinned.update(ev[2])
            elif kind in ("match", "get"):
                pinned.add(ev[1] if kind == "match" else ev[2])
        free: dict = {}                   # nbytes -> [flat uint8 storage]
        owner: dict = {}                  # slot -> its flat storage
        dying: dict = {}                  # event index -> slots to free after it
        moved: dict = {}
        for i, ev in enumerate(self.events):
            if ev[0] == "alloc" and ev[1] not in pinned:
                s = ev[1]
                a = self.vals[s]
                pool = free.get(a.nbytes)
                if pool:
                    base = pool.pop()
                    self.vals[s] = moved[s] = base.view(a.dtype).reshape(a.shape)
                else:
                    base = a.reshape(-1).view(np.uint8)
                owner[s] = base
                dying.setdefault(last_use.get(s, i), []).append(s)
            for s in dying.pop(i, ()):
                free.setdefault(owner[s].nbytes, []).append(owner[s])
        if moved:
            for ev in self.events:
                if ev[0] == "kernel":
                    for j, s in enumerate(ev[2]):
                        if s in moved:
                            ev[3][j] = self.vm.device.ptr(moved[s])

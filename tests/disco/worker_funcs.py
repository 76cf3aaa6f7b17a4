"""Functions the session tests run on workers; imported there with sess.import_module."""
from __future__ import annotations

import time

import numpy as np

import disco
from disco._context import current_context


@disco.register_func("test.add")
def add(a, b):
    return a + b


@disco.register_func("test.echo")
def echo(*args):
    return args


@disco.register_func("test.identity")
def identity(x):
    return x


@disco.register_func("test.times_worker")
def times_worker(x):
    """x * (worker_id + 1): differs per worker."""
    return x * (disco.worker_id() + 1)


@disco.register_func("test.worker_info")
def worker_info():
    return (disco.worker_id(), disco.num_workers())


@disco.register_func("test.add_inplace")
def add_inplace(x, v):
    x += v
    return x


@disco.register_func("test.counter_add")
def counter_add(k):
    """Append k to this worker's log (to check order of pipelined calls)."""
    log = current_context().state.setdefault("test.log", [])
    log.append(k)


@disco.register_func("test.counter_log")
def counter_log():
    return tuple(current_context().state.pop("test.log", []))


class Tracked:
    """Counts live instances per worker, to observe DRef frees."""

    def __init__(self):
        self.state = current_context().state
        self.state["test.live"] = self.state.get("test.live", 0) + 1

    def __del__(self):
        self.state["test.live"] -= 1


@disco.register_func("test.make_tracked")
def make_tracked():
    return Tracked()


@disco.register_func("test.live_count")
def live_count():
    return current_context().state.get("test.live", 0)


@disco.register_func("test.fail_on")
def fail_on(worker, message):
    if disco.worker_id() == worker:
        raise ValueError(f"{message} on worker {worker}")
    return disco.worker_id()


@disco.register_func("test.raise_exit")
def raise_exit(kind):
    raise {"exit": SystemExit(3), "interrupt": KeyboardInterrupt()}[kind]


@disco.register_func("test.sleep")
def sleep(seconds):
    time.sleep(seconds)


@disco.register_func("test.unpicklable")
def unpicklable():
    return lambda: None


@disco.register_func("test.arange")
def arange(n, dtype):
    return np.arange(n, dtype=dtype) + disco.worker_id()


@disco.register_func("test.imported")
def imported(name):
    import sys
    return name in sys.modules


@disco.register_func("test.getenv")
def getenv(name):
    import os
    return os.environ.get(name)


@disco.register_func("test.ones_per_worker")
def ones_per_worker(shapes):
    """np.ones(shapes[worker_id]): a different array on each worker."""
    return np.ones(shapes[disco.worker_id()], np.float32)


@disco.register_func("test.allreduce_into")
def allreduce_into(x, out_shapes):
    """disco.ccl.allreduce(x, out=...) into a new array of shape out_shapes[worker_id]."""
    from disco import ccl
    return ccl.allreduce(x, out=np.empty(out_shapes[disco.worker_id()], x.dtype))


# -- a backend whose workers must share a value made on worker 0 (as NCCL's unique id) --

from disco import ccl as _ccl  # noqa: E402


@disco.register_func("test.make_token", override=True)
def make_token(seed: int):
    """Worker 0: a value only it can make (its pid and a seed); the others: None."""
    import os
    return (os.getpid(), seed) if disco.worker_id() == 0 else None


class TokenCommunicator(_ccl.Communicator):
    """Records the options its workers were made with; `session_setup` fetches worker
    0's token through the session, as the NCCL backend does with its unique id."""
    backend = "test_token"

    def __init__(self, group_name, rank, world, token=None, label=""):
        super().__init__(rank, world)
        self.token, self.label = token, label

    @staticmethod
    def session_setup(sess, options):
        seed = options.pop("seed", 0)
        token = sess.get_global_func("test.make_token")(seed).fetch(worker=0)
        return dict(options, token=tuple(token))


_ccl.register_backend("test_token", TokenCommunicator)


@disco.register_func("test.ccl_state", override=True)
def ccl_state():
    comm = _ccl.communicator()
    return comm.backend, comm.token, comm.label


@disco.register_func("test.set_device", override=True)
def set_device(device: str) -> None:
    """Record `device` as this worker's (what disco.cuda.bind_device does on a GPU);
    "{w}" in it stands for the worker id ("cuda:{w}": worker i on GPU i)."""
    ctx = current_context()
    ctx.device = device.format(w=ctx.worker_id)


@disco.register_func("test.hang_on")
def hang_on(worker: int) -> int:
    """Never return on `worker` (a hung function); return 0 elsewhere."""
    from disco._context import current_context
    if current_context().worker_id == worker:
        while True:
            time.sleep(3600)
    return 0

"""The NCCL backend of disco.ccl (`sess.init_ccl("nccl")`), through cupy.cuda.nccl.

Setup: worker 0 creates the NCCL unique id (`nccl.get_unique_id()`) and every worker
must get it. `sess.init_ccl("nccl")` fetches it from worker 0 through the session and
hands it to every worker as `unique_id=` (`session_setup`), which works for workers on
one host or on several (MPISession). Code that calls `disco.ccl.init("nccl", group)`
inside its workers without a session exchanges it through a short-lived group of
backend `bootstrap` (default shm, same host only; "mpi" across hosts). Each worker
then builds its `NcclCommunicator(world, uid, rank)` on its current GPU, so bind the
workers to their GPUs first (`disco.cuda.bind_session_devices`).

Every collective runs on the worker's current cupy stream and takes cupy arrays
(numpy arrays and DLPack producers are copied to the GPU first); results are cupy
arrays. dtypes: float16, float32, float64, int8, uint8, int32, uint32, int64, uint64
(bfloat16 when given as `dtype="bfloat16"` on uint16 storage). NCCL errors raise
CollectiveError naming the operation and the worker.
"""
from __future__ import annotations

import numpy as np

from disco.ccl import OPS, Communicator, register_backend
from disco.errors import CollectiveError
from disco.registry import register_func

_META_SLOTS = 16        # ndim, dtype code, dims... for broadcasts of unknown shape
_DTYPES = ("float16", "float32", "float64", "int8", "uint8", "int32", "uint32", "int64", "uint64",
           "bfloat16")


def _nccl():
    try:
        from cupy.cuda import nccl
    except ImportError as e:
        raise CollectiveError(f"ccl backend 'nccl' needs cupy with NCCL (pip install cupy-cuda12x): {e}") from None
    if not getattr(nccl, "available", True):
        raise CollectiveError("ccl backend 'nccl': cupy was built without NCCL support")
    return nccl


def _dtype_table(nccl) -> dict:
    table = {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64,
             "int8": nccl.NCCL_INT8, "uint8": nccl.NCCL_UINT8, "int32": nccl.NCCL_INT32,
             "uint32": nccl.NCCL_UINT32, "int64": nccl.NCCL_INT64, "uint64": nccl.NCCL_UINT64}
    if hasattr(nccl, "NCCL_BFLOAT16"):
        table["bfloat16"] = nccl.NCCL_BFLOAT16
    return table


def _op_table(nccl) -> dict:
    return {"sum": nccl.NCCL_SUM, "prod": nccl.NCCL_PROD, "min": nccl.NCCL_MIN, "max": nccl.NCCL_MAX}


def id_bytes(uid) -> bytes:
    """An NCCL unique id as the 128 bytes `NcclCommunicator` takes (cupy 14 accepts only
    bytes), from bytes or from the sequence of ints older cupy versions returned."""
    if isinstance(uid, (bytes, bytearray)):
        b = bytes(uid)
    else:
        try:
            b = bytes(int(v) % 256 for v in uid)    # older cupy: 128 ints (signed chars)
        except (TypeError, ValueError):
            raise CollectiveError(f"nccl: a unique id must be 128 bytes, got {type(uid).__name__}") \
                from None
    if len(b) != 128:
        raise CollectiveError(f"nccl: a unique id must be 128 bytes, got {len(b)}")
    return b


@register_func("disco.ccl.nccl.unique_id", override=True)
def unique_id() -> bytes | None:
    """On worker 0: a new NCCL unique id, 128 bytes (the global function
    "disco.ccl.nccl.unique_id"); None on the other workers."""
    from disco._context import current_context
    if current_context().worker_id != 0:
        return None
    return id_bytes(_nccl().get_unique_id())


class NcclCommunicator(Communicator):
    backend = "nccl"

    @staticmethod
    def session_setup(sess, options: dict) -> dict:
        """Controller side of `sess.init_ccl("nccl")`: worker 0's unique id for everyone."""
        if sess.num_workers > 1 and options.get("unique_id") is None:
            sess.import_module("disco.ccl.nccl")
            uid = sess.get_global_func("disco.ccl.nccl.unique_id")().fetch(worker=0)
            options = dict(options, unique_id=id_bytes(uid))
        return options

    def __init__(self, group_name: str, rank: int, world: int, *, unique_id=None,
                 bootstrap: str = "shm", timeout_s: float = 120.0):
        super().__init__(rank, world)
        import cupy
        self.cp = cupy
        self.nccl = _nccl()
        self._dtypes, self._ops = _dtype_table(self.nccl), _op_table(self.nccl)   # once, not per call
        if unique_id is None:
            unique_id = self._exchange_id(group_name, bootstrap, timeout_s)
        try:
            self.comm = self.nccl.NcclCommunicator(world, id_bytes(unique_id), rank)
        except Exception as e:
            raise CollectiveError(f"nccl: NcclCommunicator(world={world}, rank={rank}) failed on worker "
                                  f"{rank}: {e}") from None

    def _exchange_id(self, group_name: str, bootstrap: str, timeout_s: float):
        """Worker 0's unique id, broadcast to every worker over a temporary group."""
        if self.world == 1:
            return self.nccl.get_unique_id()
        from disco import ccl
        if bootstrap not in ccl._BACKENDS and bootstrap in ccl._LAZY:
            import importlib
            importlib.import_module(ccl._LAZY[bootstrap])
        factory = ccl._BACKENDS.get(bootstrap)
        if factory is None:
            raise CollectiveError(f"nccl: unknown bootstrap backend {bootstrap!r} for the unique id")
        uid = None
        if self.rank == 0:      # the 128 bytes travel as a uint8 array over the bootstrap group
            uid = np.frombuffer(id_bytes(self.nccl.get_unique_id()), dtype=np.uint8).copy()
        boot = factory(group_name + "-nccl-id", self.rank, self.world)
        try:
            got = boot.broadcast_from_worker0(uid)
        finally:
            boot.close()
        return np.asarray(got, dtype=np.uint8).tobytes()

    def close(self) -> None:
        comm = getattr(self, "comm", None)
        if comm is not None:
            try:
                comm.destroy()
            finally:
                self.comm = None

    # -- helpers ------------------------------------------------------------------------
    def _array(self, x, what: str):
        from disco.cuda import to_device
        if x is None:
            raise CollectiveError(f"nccl {what} on worker {self.rank}: got None, expected an array")
        return to_device(x, self.cp)

    def _call(self, what: str, fn, *args):
        if self.comm is None:
            raise CollectiveError(f"nccl {what} on worker {self.rank}: the communicator is closed")
        try:
            fn(*args)
        except Exception as e:
            raise CollectiveError(f"nccl {what} failed on worker {self.rank} (world {self.world}): "
                                  f"{type(e).__name__}: {e}") from None

    def empty(self, shape, dtype="float32"):
        """An uninitialised cupy array on this worker's GPU (what NCCL reads)."""
        return self.cp.empty(shape, dtype)

    def _stream(self) -> int:
        return self.cp.cuda.get_current_stream().ptr

    def _dtype(self, name: str) -> int:
        code = self._dtypes.get(name)
        if code is None:
            raise CollectiveError(f"ccl backend 'nccl': dtype {name} is not supported; supported: "
                                  f"{sorted(self._dtypes)}")
        return code

    def _op(self, op: str) -> int:
        code = self._ops.get(op)
        if code is None:
            raise CollectiveError(f"ccl backend 'nccl': unknown op {op!r}; expected one of {OPS}")
        return code

    def _out(self, what: str, out, shape, dtype):
        if out is None:
            return self.cp.empty(shape, dtype)
        if tuple(out.shape) != tuple(shape) or out.dtype != dtype or not out.flags.c_contiguous:
            raise CollectiveError(f"nccl {what} on worker {self.rank}: out has shape {tuple(out.shape)} "
                                  f"{out.dtype}, expected contiguous {tuple(shape)} {dtype}")
        return out

    def _axis(self, what: str, x, axis: int) -> int:
        if not -x.ndim <= axis < x.ndim:
            raise CollectiveError(f"nccl {what} on worker {self.rank}: axis {axis} out of range for "
                                  f"a {x.ndim}-d array")
        return axis % x.ndim

    # -- collectives ----------------------------------------------------------------------
    def allreduce(self, x, op="sum", out=None, dtype=None):
        x = self._array(x, "allreduce")
        out = self._out("allreduce", out, x.shape, x.dtype)
        self._call("allreduce", self.comm.allReduce, x.data.ptr, out.data.ptr, x.size,
                   self._dtype(dtype or x.dtype.name), self._op(op), self._stream())
        return out

    def allgather(self, x, axis=0, out=None):
        x = self._array(x, "allgather")
        axis = self._axis("allgather", x, axis)
        buf = self.cp.empty((self.world,) + tuple(x.shape), x.dtype)
        self._call("allgather", self.comm.allGather, x.data.ptr, buf.data.ptr, x.size,
                   self._dtype(x.dtype.name), self._stream())
        res = self.cp.concatenate(list(buf), axis=axis)
        if out is None:
            return res
        self._out("allgather", out, res.shape, res.dtype)[...] = res
        return out

    def reduce_scatter(self, x, op="sum", axis=0, out=None):
        x = self._array(x, "reduce_scatter")
        axis = self._axis("reduce_scatter", x, axis)
        if x.shape[axis] % self.world:
            raise CollectiveError(f"nccl reduce_scatter on worker {self.rank}: dim {axis} of shape "
                                  f"{tuple(x.shape)} does not split evenly over {self.world} workers")
        xt = self.cp.ascontiguousarray(self.cp.moveaxis(x, axis, 0))
        part = (xt.shape[0] // self.world,) + tuple(xt.shape[1:])
        recv = self.cp.empty(part, x.dtype)
        self._call("reduce_scatter", self.comm.reduceScatter, xt.data.ptr, recv.data.ptr, recv.size,
                   self._dtype(x.dtype.name), self._op(op), self._stream())
        res = self.cp.ascontiguousarray(self.cp.moveaxis(recv, 0, axis))
        if out is None:
            return res
        self._out("reduce_scatter", out, res.shape, res.dtype)[...] = res
        return out

    def _bcast_meta(self, x):
        """Worker 0's shape and dtype on every worker."""
        meta = np.zeros(_META_SLOTS, np.int64)
        if self.rank == 0:
            if x.ndim > _META_SLOTS - 2:
                raise CollectiveError(f"nccl broadcast: {x.ndim}-d arrays are not supported")
            meta[0], meta[1] = x.ndim, _DTYPES.index(x.dtype.name)
            meta[2:2 + x.ndim] = x.shape
        dm = self.cp.asarray(meta)
        self._call("broadcast (shape)", self.comm.bcast, dm.data.ptr, _META_SLOTS,
                   self.nccl.NCCL_INT64, 0, self._stream())
        meta = self.cp.asnumpy(dm)
        return tuple(int(v) for v in meta[2:2 + int(meta[0])]), _DTYPES[int(meta[1])]

    def broadcast_from_worker0(self, x=None):
        if self.rank == 0:
            x = self._array(x, "broadcast_from_worker0")
        shape, dtype = self._bcast_meta(x)
        buf = x.copy() if self.rank == 0 else self.cp.empty(shape, dtype)
        self._call("broadcast_from_worker0", self.comm.bcast, buf.data.ptr, buf.size,
                   self._dtype(dtype), 0, self._stream())
        return buf

    def scatter_from_worker0(self, x=None, axis=0):
        full = self.broadcast_from_worker0(x)
        axis = self._axis("scatter_from_worker0", full, axis)
        if full.shape[axis] % self.world:
            raise CollectiveError(f"nccl scatter_from_worker0: dim {axis} of shape {tuple(full.shape)} "
                                  f"does not split evenly over {self.world} workers")
        return self.cp.ascontiguousarray(self.cp.split(full, self.world, axis=axis)[self.rank])

    def gather_to_worker0(self, x, axis=0):
        res = self.allgather(x, axis)
        return res if self.rank == 0 else None

    def barrier(self):
        one = self.cp.ones(1, self.cp.int32)
        self._call("barrier", self.comm.allReduce, one.data.ptr, one.data.ptr, 1,
                   self.nccl.NCCL_INT32, self.nccl.NCCL_SUM, self._stream())
        self.cp.cuda.get_current_stream().synchronize()


register_backend("nccl", NcclCommunicator)

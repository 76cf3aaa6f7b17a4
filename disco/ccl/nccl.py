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

Point-to-point: `send(x, dst)` posts, inside one NCCL group, a header of 16 int64
(sequence number on the pair, dtype, byte count, shape; or a problem with the sender's
arguments, whose text is the payload) and then x's bytes. `recv(shape, dtype, src)`
receives the header, waits for it on the host (polling an event until `timeout_s`; on
timeout the communicator is aborted, since NCCL cannot take back a posted receive, and
every later call says so), checks it, and receives the payload into the output, or into
a scratch buffer when the header differs, then raises naming both workers: the pair
stays in step. NCCL's sends wait on the GPU until the peer receives, so a cycle (every
worker sends to the next, then receives) would deadlock: transfers between pipeline
stages, which never form cycles, are what this is for.
"""
from __future__ import annotations

import numpy as np

from disco.ccl import OPS, Communicator, register_backend
from disco.errors import CollectiveError
from disco.registry import register_func

_META_SLOTS = 16        # ndim, dtype code, dims... for broadcasts of unknown shape
_HEADER = 16            # send/recv header: seq, problem flag, dtype index, nbytes, ndim, dims...
_P2P_DTYPES = ("float16", "float32", "float64", "bfloat16", "int8", "uint8", "int16", "uint16", "int32",
               "uint32", "int64", "uint64", "bool", "complex64", "complex128")
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

    @staticmethod
    def sub_group(group_name: str, members, rank: int, secret: str) -> "NcclCommunicator":
        """The group of workers `members` (disco.ccl.sub_group): a communicator of its own,
        whose unique id its first member makes and hands to the others over a temporary
        shm group (`_exchange_id`), so the members must share a host. Not run here yet
        (no GPU in this project's test machines)."""
        return NcclCommunicator(group_name, rank, len(members), bootstrap="shm")

    def __init__(self, group_name: str, rank: int, world: int, *, unique_id=None,
                 bootstrap: str = "shm", timeout_s: float = 120.0):
        super().__init__(rank, world)
        import cupy
        self.cp = cupy
        self.nccl = _nccl()
        self._dtypes, self._ops = _dtype_table(self.nccl), _op_table(self.nccl)   # once, not per call
        self.timeout_s = float(timeout_s)
        self._sent, self._received = [0] * world, [0] * world
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

    # -- point-to-point (see the module docstring) ------------------------------------------
    def _peer_check(self, what: str, peer: int, role: str) -> None:
        if self.comm is None:
            raise CollectiveError(f"ccl.{what}: the nccl communicator of worker {self.rank} is closed (or was "
                                  "aborted after a timeout); call sess.init_ccl again")
        if not 0 <= peer < self.world or peer == self.rank:
            why = "itself; a worker cannot send to or receive from itself" if peer == self.rank else \
                f"not a worker of this group of {self.world}"
            raise CollectiveError(f"ccl.{what}: worker {self.rank} gave {role} {peer}, which is {why}")

    def _post_send(self, header: np.ndarray, payload, dst: int) -> None:
        h = self.cp.asarray(header)
        stream = self._stream()
        self.nccl.groupStart()
        try:
            self._call("send", self.comm.send, h.data.ptr, _HEADER, self.nccl.NCCL_INT64, dst, stream)
            if payload is not None and payload.nbytes:
                self._call("send", self.comm.send, payload.data.ptr, payload.nbytes, self.nccl.NCCL_UINT8, dst,
                           stream)
        finally:
            self.nccl.groupEnd()

    def send(self, x, dst):
        self._peer_check("send", dst, "dst")
        header = np.zeros(_HEADER, np.int64)
        header[0] = self._sent[dst]
        self._sent[dst] += 1
        problem = None
        try:
            x = self._array(x, "send")
            x = x if x.flags.c_contiguous else x.copy()     # (ascontiguousarray makes 0-d 1-d)
            if x.dtype.name not in _P2P_DTYPES or x.ndim > _HEADER - 5:
                raise CollectiveError(f"cannot send an array of dtype {x.dtype} and {x.ndim} dims (supported: "
                                      f"{', '.join(_P2P_DTYPES)}; at most {_HEADER - 5} dims)")
        except Exception as e:  # noqa: BLE001 - posted to the receiver, then raised here
            problem = str(e) if isinstance(e, CollectiveError) else f"{type(e).__name__}: {e}"
        if problem is not None:
            text = self.cp.asarray(np.frombuffer(problem.encode()[:4096], np.uint8))
            header[1], header[3] = 1, text.nbytes
            self._post_send(header, text, dst)
            raise CollectiveError(f"ccl.send: invalid arguments on worker {self.rank}: {problem}")
        header[2], header[3], header[4] = _P2P_DTYPES.index(x.dtype.name), x.nbytes, x.ndim
        header[5:5 + x.ndim] = x.shape
        self._post_send(header, x, dst)

    def _recv_bytes(self, buf, nbytes: int, src: int, deadline: float, what: str) -> None:
        """Receive `nbytes` into `buf` and wait for them (until `deadline`; then abort)."""
        import time
        stream = self.cp.cuda.get_current_stream()
        self.nccl.groupStart()
        try:
            self._call("recv", self.comm.recv, buf.data.ptr, nbytes, self.nccl.NCCL_UINT8, src, stream.ptr)
        finally:
            self.nccl.groupEnd()
        done = self.cp.cuda.Event(disable_timing=True)
        done.record(stream)
        nap = 2e-5
        while not done.done:
            if time.monotonic() > deadline:
                comm, self.comm = self.comm, None
                try:
                    comm.abort()
                except Exception:  # noqa: BLE001 - the timeout is what to report
                    pass
                raise CollectiveError(f"ccl.recv: worker {self.rank} timed out after {self.timeout_s:g} s waiting "
                                      f"for {what} from worker {src} (did worker {src} call ccl.send(x, "
                                      f"{self.rank})?); the nccl communicator is aborted, call sess.init_ccl "
                                      "again")
            time.sleep(nap)
            nap = min(nap * 2, 1e-3)

    def recv(self, shape, dtype, src, out=None):
        import time
        self._peer_check("recv", src, "src")
        shape = tuple(int(d) for d in (shape if np.ndim(shape) else (shape,)))
        name = np.dtype(dtype).name if not (isinstance(dtype, str) and dtype == "bfloat16") else "bfloat16"
        want = f"a {name} array of shape {shape}"
        who = f"ccl.recv: worker {self.rank}"
        out = self._out("recv", out, shape, dtype)
        deadline = time.monotonic() + self.timeout_s
        h = self.cp.empty(_HEADER, self.cp.int64)
        self._recv_bytes(h, _HEADER * 8, src, deadline, want)
        header = self.cp.asnumpy(h)
        seq, invalid, code, nbytes, ndim = (int(v) for v in header[:5])
        self._received[src] += 1
        sent_shape = tuple(int(v) for v in header[5:5 + ndim])
        match = not invalid and name in _P2P_DTYPES and code == _P2P_DTYPES.index(name) and sent_shape == shape
        target = out if match else self.cp.empty(nbytes, self.cp.uint8)
        if nbytes:
            self._recv_bytes(target, nbytes, src, deadline, want)
        if invalid:
            text = self.cp.asnumpy(target).tobytes().decode(errors="replace")
            raise CollectiveError(f"{who} expected {want} from worker {src}, which could not send it: invalid "
                                  f"arguments on worker {src}: {text}")
        if not match:
            raise CollectiveError(f"{who} expected {want} from worker {src}, but worker {src} sent a "
                                  f"{_P2P_DTYPES[code]} array of shape {sent_shape} (its message {seq} to worker "
                                  f"{self.rank}; dropped, so the next recv from worker {src} gets its next "
                                  "message)")
        return out


register_backend("nccl", NcclCommunicator)

"""MPISession: the workers are the ranks of an MPI job (mpiexec / mpirun).

Rank 0 is the controller and also hosts worker 0 (a thread, as in ThreadedSession);
rank r is worker r. `disco.start()` builds this on rank 0 and runs `serve_rank` on
the other ranks; nothing else in the runtime knows about MPI.

Commands, same host. Ranks on the controller's host attach to its shared-memory
channel through /proc/<controller pid>/fd/<fd> (checked by device and inode), so they
run the very same ring, codec and worker loop as a ProcessSession, at the same cost.

Commands, other hosts. A rank that cannot map the segment gets every command over MPI
as well (pickled, DRefs as ids, sent non-blocking so calls stay pipelined), and a
relay thread in rank 0 stands in for it on the ring: it consumes that rank's copy of
each command and copies the rank's MPI reply into its reply slot. The base Session's
waiting, errors and freeing are therefore unchanged.

Liveness. A rank is on rank 0's host when both see the same kernel boot and pid
namespace (`_host_identity`), so that a pid names the same process to both. Rank 0
holds a pidfd of every such rank, whichever way its commands travel: a death is seen
at the next wait (every 50 ms) and raised as WorkerError; the rank watches the
controller's pid and exits when it is gone, even from inside a blocked collective.
Ranks on other hosts have no pid to watch: they and rank 0 exchange heartbeats over
MPI (`_Pulse`, every BEAT_EVERY_S); rank 0 raises WorkerError for one silent for
SILENCE_LIMIT_S (DISCO_MPI_SILENCE_LIMIT_S), and a rank whose controller is silent
that long exits. A heartbeat thread needs the GIL, so the limit leaves room for a
worker's long GIL-holding call (importing ml_dtypes takes ~2 s). Across hosts the MPI
launcher also ends the job when a rank dies (its default).

DISCO_MPI_TRANSPORT (for tests and benchmarks on one host): "mpi" sends every rank's
commands over MPI, the other-hosts command path; "remote" moreover treats every rank
as on another host (heartbeats instead of pidfds, `workers_on_other_hosts` lists all).
"""
from __future__ import annotations

import atexit
import io
import os
import pickle
import select
import struct
import sys
import threading
import time
import traceback
import weakref

from disco import _native
from disco._context import WorkerContext, set_worker_context
from disco.errors import SessionError, WorkerError
from disco.session.base import DRef, Session
from disco.session.protocol import (INLINE_ARRAY_BYTES, NEXT_DECODE_FAILED, NEXT_NOTHING_MISSING,
                                    Op, Spill, Transfer)
from disco.session.worker import serve

TAG_BOOT, TAG_CMD, TAG_REPLY, TAG_BEAT = 7301, 7302, 7303, 7304
_CLOSE = 0  # op of the MPI-only message that tells a remote rank the channel closed
BOOT_TIMEOUT_S = float(os.environ.get("DISCO_MPI_BOOT_TIMEOUT_S", "60"))
BEAT_EVERY_S = 0.5  # heartbeats between rank 0 and each relayed rank
SILENCE_LIMIT_S = float(os.environ.get("DISCO_MPI_SILENCE_LIMIT_S", "10"))
_TRANSPORTS = ("auto", "mpi", "remote")


def _expects_reply(op: int, b: int, w: int) -> bool:
    """Whether worker `w` answers command `op` (protocol.py's table)."""
    return op in (Op.GET_FUNC, Op.GATHER, Op.SYNC, Op.IMPORT, Op.SHUTDOWN) or (op == Op.FETCH and b == w)


def _recv_bytes(comm, source: int, tag: int, deadline: float | None, check=None, what: str = "a message"):
    """Receive one pickled message, polling (MPI's blocking receive spins a core), so that
    `check()` can raise and a deadline can end the wait."""
    from mpi4py import MPI

    status = MPI.Status()
    t0 = time.monotonic()
    sleep = 0.0
    while not comm.Iprobe(source=source, tag=tag, status=status):
        now = time.monotonic()
        if deadline is not None and now > deadline:
            raise SessionError(f"MPISession: no {what} from rank {source} within "
                               f"{deadline - t0:.0f} s; is every rank running disco.start()?")
        if check is not None:
            check()
        if now - t0 > 0.002:  # spin 2 ms, then sleep in growing steps up to 1 ms
            sleep = min(1e-3, sleep + 5e-5)
            time.sleep(sleep)
    buf = bytearray(status.Get_count(MPI.BYTE))
    comm.Recv([buf, MPI.BYTE], source=status.Get_source(), tag=tag)
    return buf


class _Pulse:
    """Heartbeats with peers that no pidfd can watch (other hosts, see the module doc):
    send one to each peer every BEAT_EVERY_S, note when each was last heard, and name a
    peer silent for longer than `limit_s`. Before a peer's first heartbeat it may take
    `first_within_s` (the other side may still be starting). A heartbeat counts as heard
    when it is read, so a listener that was itself held up does not blame its peers."""

    _BEAT = b"\x01"

    def __init__(self, comm, peers, limit_s: float = SILENCE_LIMIT_S, first_within_s: float | None = None):
        now = time.monotonic()
        self._comm, self.limit_s = comm, limit_s
        self._first_within_s = limit_s if first_within_s is None else first_within_s
        self._heard = {p: now for p in peers}
        self._heard_once: set[int] = set()
        self._sends: list = []
        self._next_beat = self._next_tick = now

    def tick(self) -> tuple[int, float] | None:
        """Send the heartbeats that are due, read those that came; (peer, seconds silent)
        of a peer silent for too long, else None. Cheap to call often (acts every 20 ms)."""
        now = time.monotonic()
        if now < self._next_tick:
            return None
        self._next_tick = now + 0.02
        if now >= self._next_beat:
            self._sends = [r for r in self._sends if not r.Test()]
            self._sends += [self._comm.Isend([self._BEAT, _byte()], dest=p, tag=TAG_BEAT) for p in self._heard]
            self._next_beat = now + BEAT_EVERY_S
        for p in self._heard:
            if self._drain(p):
                self._heard[p] = now
                self._heard_once.add(p)
        for p, heard in self._heard.items():
            limit = self.limit_s if p in self._heard_once else self._first_within_s
            if now - heard > limit:
                return p, now - heard
        return None

    def _drain(self, peer: int) -> bool:
        """Read every heartbeat waiting from `peer`; whether there was one."""
        got, buf = False, bytearray(len(self._BEAT))
        while self._comm.Iprobe(source=peer, tag=TAG_BEAT):
            self._comm.Recv([buf, _byte()], source=peer, tag=TAG_BEAT)
            got = True
        return got


class _DRefPickler(pickle.Pickler):
    def persistent_id(self, obj):
        # every DRef by its id, subclasses too (DTensorRef, StageTensorRef: a model's
        # weights), which would otherwise be pickled with their session
        return obj._id if isinstance(obj, DRef) else None


class _RefUnpickler(pickle.Unpickler):
    def __init__(self, data, objects: dict):
        super().__init__(io.BytesIO(data))
        self.objects, self.missing = objects, NEXT_NOTHING_MISSING

    def persistent_load(self, ref_id):
        if ref_id in self.objects:
            return self.objects[ref_id]
        if self.missing == NEXT_NOTHING_MISSING:
            self.missing = ref_id
        return None


_HEADER = struct.Struct("<qqqq")  # seq, op, a, b; then the pickled payload


def _encode_command(seq: int, op: int, a: int, b: int, payload) -> bytes:
    f = io.BytesIO()
    f.write(_HEADER.pack(seq, op, a, b))
    _DRefPickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(payload)
    return f.getvalue()


class MPISession(Session):
    """Workers are the ranks of `comm` (default COMM_WORLD); build it on rank 0 while
    every other rank calls `serve_rank(comm)` (disco.start() does both). See `Session`."""

    def __init__(self, comm=None, *, device: str = "cpu", **options):
        from mpi4py import MPI

        comm = MPI.COMM_WORLD if comm is None else comm
        if comm.rank != 0:
            raise SessionError(f"MPISession is made on rank 0 only, this is rank {comm.rank}; "
                               "the other ranks call disco.session.mpi.serve_rank() (disco.start() does)")
        if comm.size > 1 and MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            raise SessionError("MPISession needs MPI_THREAD_MULTIPLE (worker 0 and a relay are threads of "
                               f"rank 0); this MPI gives level {MPI.Query_thread()}")
        self._comm = comm.Dup()  # collective: serve_rank dups too; keeps our tags private
        self.device = device
        self._relayed: list[int] = []  # workers whose commands go over MPI
        self._other_hosts: list[int] = []  # workers watched by heartbeats, not pidfds
        self._sends: list = []  # (request, buffer) of commands in flight to remote ranks
        self._thread: threading.Thread | None = None
        self._relay: _Relay | None = None
        self._pidfds: dict[int, int] = {}
        self._crashes: dict[int, str] = {}
        super().__init__(comm.size, **options)
        me = weakref.ref(self)
        atexit.register(lambda: (s := me()) is not None and s._at_exit())

    @property
    def workers_on_other_hosts(self) -> tuple[int, ...]:
        """Workers on other hosts than rank 0 (all of them with DISCO_MPI_TRANSPORT=remote);
        empty when every worker shares rank 0's host, so that same-host means such as
        the shm collectives reach them all."""
        return tuple(self._other_hosts)

    # -- Session hooks ----------------------------------------------------------------
    def _start_workers(self) -> None:
        n, fd = self.num_workers, self._chan.fd
        st = os.fstat(fd)
        transport = os.environ.get("DISCO_MPI_TRANSPORT", "auto")
        if transport not in _TRANSPORTS:
            raise SessionError(f"MPISession: DISCO_MPI_TRANSPORT must be one of {list(_TRANSPORTS)}, "
                               f"got {transport!r}")
        host = None if transport == "remote" else _host_identity()
        info = pickle.dumps({"pid": os.getpid(), "fd": fd, "dev": st.st_dev, "ino": st.st_ino,
                             "transport": transport, "device": self.device, "host": host})
        sends = [self._comm.Isend([info, _byte()], dest=r, tag=TAG_BOOT) for r in range(1, n)]
        self._thread = threading.Thread(target=_run_worker0, args=(fd, n, self.device, self._crashes),
                                        name="disco-worker-0", daemon=True)
        self._thread.start()
        self.pids = [os.getpid()] + [0] * (n - 1)
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        for r in range(1, n):
            pid, on_ring, same_host = pickle.loads(
                _recv_bytes(self._comm, r, TAG_BOOT, deadline, what="start-up reply"))
            self.pids[r] = pid
            if same_host:
                self._pidfds[r] = os.pidfd_open(pid)
            else:
                self._other_hosts.append(r)
            if not on_ring:
                self._relayed.append(r)
        for req in sends:
            req.Wait()
        if self._relayed:
            self._relay = _Relay(self, self._relayed, self.pids, self._other_hosts)

    def _check_workers(self) -> WorkerError | None:
        if self._thread is not None and not self._thread.is_alive() and not self._closed:
            tb = self._crashes.get(0)
            return WorkerError(f"{self.name}: worker 0 (a thread of rank 0) ended unexpectedly"
                               + (f":\n{tb}" if tb else ""), 0, tb)
        if self._pidfds:
            ready, _, _ = select.select(list(self._pidfds.values()), [], [], 0)
            for w, fd in self._pidfds.items():
                if fd in ready:
                    return WorkerError(f"{self.name}: worker {w} (MPI rank {w}, pid {self.pids[w]}) died; "
                                       "the session is unusable and the job should end", w, None)
        if self._relay is not None and self._relay.error is not None:
            return WorkerError(f"{self.name}: {self._relay.error}", self._relay.error_worker, None)
        return None

    def _stop_workers(self, timeout_s: float) -> None:
        if self._failure is not None:
            self._send_remote(0, _CLOSE, 0, 0, None)  # remote ranks get no SHUTDOWN then
        deadline = time.monotonic() + timeout_s
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._relay is not None:
            self._relay.stop(max(0.0, deadline - time.monotonic()))
        for fd in self._pidfds.values():
            os.close(fd)  # same-host ranks leave on SHUTDOWN or when the channel closes
        self._pidfds = {}
        self._sends = [(r, d) for r, d in self._sends if not r.Test()]

    # -- commands to ranks on other hosts ---------------------------------------------
    def _post(self, op: int, a: int, b: int, payload) -> int:
        seq = super()._post(op, a, b, payload)
        if self._relayed:
            self._send_remote(seq, op, a, b, payload)
        return seq

    def _post_free(self, ids: tuple) -> int:
        seq = super()._post_free(ids)
        if self._relayed:
            self._send_remote(seq, Op.FREE, 0, 0, ids)
        return seq

    def _send_remote(self, seq: int, op: int, a: int, b: int, payload) -> None:
        if not self._relayed:
            return
        data = _encode_command(seq, op, a, b, payload)
        self._sends = [(r, d) for r, d in self._sends if not r.Test()]
        for rank in self._relayed:
            self._sends.append((self._comm.Isend([data, _byte()], dest=rank, tag=TAG_CMD), data))

    def _at_exit(self) -> None:
        """At interpreter exit: shut down; after a worker death end the whole job (a
        blocked MPI call would otherwise hang MPI_Finalize)."""
        failed = self._failure is not None
        self.shutdown()
        if failed:
            sys.stdout.flush()
            sys.stderr.flush()
            self._comm.Abort(1)


def _byte():
    from mpi4py import MPI
    return MPI.BYTE


def _run_worker0(fd: int, n: int, device: str, crashes: dict[int, str]) -> None:
    try:
        chan = _native.Channel.attach(fd, 0)
        ctx = WorkerContext(worker_id=0, num_workers=n, device=device)
        set_worker_context(ctx)  # thread-local: the controller thread stays the controller
        serve(chan, ctx)
    except BaseException:
        crashes[0] = traceback.format_exc()


class _Relay:
    """Rank 0's stand-in on the ring for the ranks on other hosts (see the module doc)."""

    def __init__(self, sess: MPISession, ranks: list[int], pids: list[int], heartbeat_with: list[int]):
        self.error: str | None = None
        self.error_worker = -1
        self._comm = sess._comm
        self._pids = pids
        self._pulse = _Pulse(self._comm, heartbeat_with)
        self._stop = threading.Event()
        self._chans = {}
        self._transfers = {}
        for w in ranks:
            chan = _native.Channel.attach(sess._chan.fd, w)
            t = self._transfers[w] = Transfer()
            t.codec = chan
            chan.set_codec(None, None, t.encode, _discard, None, INLINE_ARRAY_BYTES)
            self._chans[w] = chan
        self._thread = threading.Thread(target=self._loop, name="disco-mpi-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _check(self) -> None:
        """Called in every wait of the relay: end it on stop(), fail it for a silent rank."""
        if self._stop.is_set():
            raise _Stopped()
        silent = self._pulse.tick()
        if silent is not None:
            raise _Silent(*silent)

    def _loop(self) -> None:
        w = -1
        try:
            first, *others = self._chans
            while not self._stop.is_set():
                cmd = self._chans[first].next(0.05)
                if cmd is None:
                    if self._chans[first].closed:
                        return
                    self._check()  # a rank that dies while the session is idle is named at the next wait
                    continue
                for w in self._transfers:
                    self._transfers[w].release()  # the controller read our last replies
                for w in others:  # the same message in the other relayed slots
                    while self._chans[w].next(0.05) is None:
                        self._check()
                op, seq, _, b = cmd[0], cmd[1], cmd[2], cmd[3]
                for w in self._chans:
                    if _expects_reply(op, b, w):
                        data = _recv_bytes(self._comm, w, TAG_REPLY, None, self._check, "reply")
                        rseq, status, value = pickle.loads(data)
                        if rseq != seq:
                            raise SessionError(f"reply to command {rseq} while waiting for {seq}")
                        try:
                            self._chans[w].send_reply(seq, status, value)
                        except OverflowError:
                            self._chans[w].send_reply(seq, status, Spill(value))
                if op == Op.SHUTDOWN:
                    return  # the relayed ranks answered SHUTDOWN and go quiet now
        except _Stopped:
            pass
        except _Silent as e:
            self.error_worker = e.rank
            self.error = (f"worker {e.rank} (MPI rank {e.rank}, pid {self._pids[e.rank]} on another host) sent "
                          f"no heartbeat for {e.silent_s:.1f} s (limit {self._pulse.limit_s:g} s, "
                          "DISCO_MPI_SILENCE_LIMIT_S): it died, hangs holding the GIL, or its host or network "
                          "failed; the session is unusable and the job should end")
        except BaseException as e:
            self.error_worker = w
            self.error = f"relay for MPI rank {w} failed: {type(e).__name__}: {e}"


class _Stopped(Exception):
    pass


class _Silent(Exception):
    """A rank on another host sent no heartbeat for too long."""

    def __init__(self, rank: int, silent_s: float):
        super().__init__(rank, silent_s)
        self.rank, self.silent_s = rank, silent_s


def _discard(value):
    return None  # the relay never looks at payloads; do not map their buffers


# -- the worker ranks ---------------------------------------------------------------------
class _MPIChannel:
    """The worker side of a channel, over MPI: what `serve` needs of `_native.Channel`."""

    def __init__(self, comm):
        self._comm = comm
        self._objects: dict = {}
        self.closed = False

    def set_codec(self, dref_type, owner, ext_encode, ext_decode, objects, inline_bytes) -> None:
        self._objects = objects

    def handle_hot_commands(self, funcs, objects, failed) -> None:
        """The native channel's accelerator for CALL, FREE and SYNC; over MPI, `serve`
        runs them (a command's MPI receive and unpickling dwarf the loop's cost)."""

    def next(self, timeout_s: float):
        try:
            data = _recv_bytes(self._comm, 0, TAG_CMD, time.monotonic() + timeout_s)
        except SessionError:
            return None
        seq, op, a, b = _HEADER.unpack_from(data)
        if op == _CLOSE:
            self.closed = True
            return None
        u = _RefUnpickler(memoryview(data)[_HEADER.size:], self._objects)
        try:
            payload = u.load()
        except Exception as e:  # reported by the worker loop like a codec error
            return (op, seq, a, b, e, NEXT_DECODE_FAILED)
        return (op, seq, a, b, payload, u.missing)

    def send_reply(self, seq: int, status: int, value) -> None:
        if isinstance(value, Spill):
            value = value.value
        self._comm.Send([pickle.dumps((seq, int(status), value), protocol=pickle.HIGHEST_PROTOCOL), _byte()],
                        dest=0, tag=TAG_REPLY)


def serve_rank(comm=None, device: str = "cpu") -> int:
    """Run worker `comm.rank` until the controller (rank 0) shuts the session down.

    Returns 0 then; if the controller dies, the process exits (status 1) from here."""
    from mpi4py import MPI

    comm = (MPI.COMM_WORLD if comm is None else comm).Dup()
    w, n = comm.rank, comm.size
    info = pickle.loads(_recv_bytes(comm, 0, TAG_BOOT, time.monotonic() + BOOT_TIMEOUT_S, what="start-up message"))
    device = info.get("device", device)
    mine = None if info["transport"] == "remote" else _host_identity()
    controller = _pidfd(info["pid"]) if mine is not None and mine == info["host"] else None
    chan = _attach_ring(info, w) if controller is not None and info["transport"] == "auto" else None
    comm.Send([pickle.dumps((os.getpid(), chan is not None, controller is not None)), MPI.BYTE], dest=0, tag=TAG_BOOT)
    ctx = WorkerContext(worker_id=w, num_workers=n, device=device)
    set_worker_context(ctx, process_wide=True)
    chan = _MPIChannel(comm) if chan is None else chan
    if controller is not None:
        _start_watcher(info["pid"])
        _serve_watching_pid(chan, ctx, controller, info["pid"])
    else:
        _serve_with_heartbeats(chan, ctx, comm, info["pid"])
    sys.stdout.flush()
    sys.stderr.flush()
    return 0


def _serve_watching_pid(chan, ctx: WorkerContext, controller_fd: int, controller_pid: int) -> None:
    """Serve a rank on the controller's host until SHUTDOWN or the controller's death."""
    alive = lambda: not select.select([controller_fd], [], [], 0)[0]  # noqa: E731
    serve(chan, ctx, alive=alive)
    if not alive():  # no MPI_Finalize: it would wait for the dead controller forever
        w = ctx.worker_id
        sys.stderr.write(f"disco worker {w} (MPI rank {w}, pid {os.getpid()}): the controller "
                         f"(rank 0, pid {controller_pid}) died; exiting\n")
        sys.stderr.flush()
        os._exit(1)


def _serve_with_heartbeats(chan, ctx: WorkerContext, comm, controller_pid: int) -> None:
    """Serve a rank on another host, exchanging heartbeats with rank 0 from a thread."""
    stop = threading.Event()
    beats = threading.Thread(target=_watch_controller, args=(comm, controller_pid, stop), daemon=True,
                             name=f"disco-mpi-heartbeat-{ctx.worker_id}")
    beats.start()
    try:
        serve(chan, ctx)
    finally:
        stop.set()
        beats.join()


def _watch_controller(comm, controller_pid: int, stop: threading.Event) -> None:
    """Until `stop`: heartbeats with rank 0; if rank 0 falls silent (it died, or its host
    or the network did), end this process, even if it is blocked in MPI."""
    pulse = _Pulse(comm, [0], first_within_s=BOOT_TIMEOUT_S)  # rank 0 starts beating once all ranks booted
    while not stop.wait(0.05):
        silent = pulse.tick()
        if silent is not None:
            sys.stderr.write(f"disco worker {comm.rank} (MPI rank {comm.rank}, pid {os.getpid()}): no heartbeat "
                             f"from the controller (rank 0, pid {controller_pid}) for {silent[1]:.1f} s (limit "
                             f"{pulse.limit_s:g} s, DISCO_MPI_SILENCE_LIMIT_S); it died or stopped responding; "
                             "exiting\n")
            sys.stderr.flush()
            os._exit(1)


def _host_identity() -> tuple | None:
    """Equal on two ranks exactly when a pid names the same process to both: the same
    kernel boot and pid namespace. None where /proc does not tell."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        ns = os.stat("/proc/self/ns/pid")
    except OSError:
        return None
    return boot, ns.st_dev, ns.st_ino


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _attach_ring(info: dict, w: int):
    """The controller's channel if this rank can map its segment, else None."""
    try:
        fd = os.open(f"/proc/{info['pid']}/fd/{info['fd']}", os.O_RDWR)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (info["dev"], info["ino"]):
            return None
        return _native.Channel.attach(fd, w)
    finally:
        os.close(fd)


_WATCHER = """
import os, select, signal, sys
controller, worker, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
try:
    w = os.pidfd_open(worker)
except OSError:
    sys.exit(0)
try:
    c = os.pidfd_open(controller)
except OSError:
    c = None  # already gone
if c is None or w not in select.select([c, w], [], [])[0]:
    if not select.select([w], [], [], grace)[0]:
        sys.stderr.write(f"disco: controller pid {controller} died; ending worker pid {worker}\\n")
        os.kill(worker, signal.SIGKILL)
"""


def _start_watcher(controller_pid: int, grace_s: float = 2.0) -> None:
    """End this rank if the controller dies, even while it is blocked in an MPI call (or in
    an MPI_Finalize that waits for the controller) holding the GIL: a small separate
    process waits on both pids and sends SIGKILL after `grace_s`."""
    import subprocess

    _watchers.append(subprocess.Popen(
        [sys.executable, "-c", _WATCHER, str(controller_pid), str(os.getpid()), str(grace_s)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))


_watchers: list = []  # keeps the Popen objects (and their warnings) away from the GC

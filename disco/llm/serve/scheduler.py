"""The scheduler: one thread that owns the engine, and the handles the web side holds.

The engine is driven from one thread only (it and its session are not thread-safe).
The web side (an asyncio event loop) puts commands in the scheduler's inbox, a
thread-safe queue: submit a request, cancel one, stop. Between two engine steps the
scheduler takes every command waiting, so a new request joins the running batch at the
next step boundary (continuous batching: the engine admits it when its worst-case KV
pages are free, prefills it, in chunks of `prefill_chunk` prompt tokens when set, and
from then on it decodes with the others); a finished or cancelled request leaves the
batch and frees its pages at once. What a step produced goes back to each request's
`Handle` on the event loop: text, the end with the finish reason and usage, or an
error; all of one step's events in one `loop.call_soon_threadsafe` (each such call
writes to the loop's wake-up socket, and the workers wait while the scheduler thread
posts: one call a request a step cost more than the rest of the posting).

Back-pressure: a request that cannot be admitted now waits in the engine's queue; past
`max_waiting` such requests a new one is refused (the web side answers HTTP 503 with
Retry-After) instead of queueing without bound.

Faults: a bad request is refused when submitted (the engine's ValueErrors, HTTP 400).
A step that raises ends its batch's requests with an error; the session is then probed
(`sync`), and if that fails too (a worker died) the scheduler fails: every request in
flight gets an error, new ones are refused, `on_fatal` is called (the server exits
non-zero). A step that takes longer than `step_timeout_s` (a worker hung) is reported
by `stalled()`, which the web side polls, with the same outcome.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
import traceback
from typing import Callable, Optional

from .metrics import Metrics
from .protocol import APIError, Job, usage

LOADING, READY, FAILED, STOPPED = "loading", "ready", "failed", "stopped"


class Handle:
    """One request as the web side sees it. `events` (an asyncio.Queue, read on the event
    loop) receives ("text", str), then ("end", finish_reason, usage) or ("error",
    APIError). `accepted` resolves when the scheduler has taken the request (or refused
    it: then it holds the APIError)."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop):
        self.job = job
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.accepted: asyncio.Future = loop.create_future()
        self.arrived = time.perf_counter()
        # the scheduler thread's own
        self.request = None              # the engine's Request
        self.last_token_at: Optional[float] = None
        self.ended = False

    def _post(self, *event) -> None:
        self._call(self.events.put_nowait, event)

    @staticmethod
    def _post_all(posts: list) -> None:
        """Post each (handle, event) of `posts` with one wake-up of each event loop."""
        by_loop: dict = {}
        for h, event in posts:
            by_loop.setdefault(h.loop, []).append((h.events, event))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:        # the event loop is closed: nobody is listening
                pass

    def _accept(self, error: Optional[APIError] = None) -> None:
        def settle():
            if not self.accepted.done():
                if error is None:
                    self.accepted.set_result(True)
                else:
                    self.accepted.set_exception(error)
        self._call(settle)

    def _call(self, fn, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:            # the event loop is closed: nobody is listening
            pass


def _put_all(items: list) -> None:
    for events, event in items:
        events.put_nowait(event)


class Scheduler:
    """See the module docstring. `load`: makes the engine, on the scheduler thread (the
    weights load while the web side already answers /health with "loading")."""

    def __init__(self, load: Callable[[], object], *, max_waiting: int = 64,
                 step_timeout_s: float = 120.0, on_fatal: Optional[Callable[[], None]] = None,
                 log: Callable[[str], None] = print):
        if max_waiting < 0:
            raise ValueError(f"Scheduler: max_waiting={max_waiting}: expected an int >= 0")
        self._load = load
        self.max_waiting = max_waiting
        self.step_timeout_s = step_timeout_s
        self.on_fatal = on_fatal or (lambda: None)
        self.log = log
        self.state = LOADING
        self.error: Optional[str] = None
        self.engine = None
        self.topology = ""
        self.context = 0
        self.metrics = Metrics(self._gauges)
        self._inbox: queue.Queue = queue.Queue()
        self._handles: dict[int, Handle] = {}         # engine request id -> handle, in flight
        self._snapshot = dict(running=0, waiting=0, pages_used=0, pages_total=0)
        self._step_started: Optional[float] = None
        self._thread = threading.Thread(target=self._main, name="disco-serve-scheduler", daemon=True)
        # the event loops' own: handles waiting in next_event, and each loop's liveness poll
        self._readers: set[Handle] = set()
        self._polls: dict = {}

    # -- the web side's calls (event loop thread) ----------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def unavailable(self) -> Optional[APIError]:
        """The 503 to answer while not ready (loading, failed, stopping), else None."""
        if self.state == READY:
            return None
        why = {LOADING: "the model is still loading", FAILED: f"the engine failed ({self.error})",
               STOPPED: "the server is shutting down"}[self.state]
        return APIError(503, f"the server cannot take requests: {why}", type="service_unavailable",
                        code=self.state, headers={"Retry-After": "5"} if self.state == LOADING else {})

    async def submit(self, job: Job) -> Handle:
        """Hand `job` to the scheduler; returns its handle once taken, or raises the
        APIError of a refusal (400 bad request, 503 queue full or not ready)."""
        refused = self.unavailable()
        if refused is not None:
            raise refused
        handle = Handle(job, asyncio.get_running_loop())
        self._inbox.put(("submit", handle))
        await self.wait(handle.accepted)
        return handle

    async def wait(self, awaitable):
        """Await `awaitable`, checking every second that the scheduler still serves (it
        posts to every handle when it fails; this covers its thread dying outright)."""
        fut = asyncio.ensure_future(awaitable)
        try:
            while True:
                done, _ = await asyncio.wait({fut}, timeout=1.0)
                if done:
                    return fut.result()
                self.check_alive()
        finally:
            if not fut.done():
                fut.cancel()

    async def next_event(self, handle: Handle) -> tuple:
        """The next event of `handle` (a stream's: one per engine step). Like
        `wait(handle.events.get())`, but one timer per event loop checks every second that
        the scheduler still serves, for all handles waiting, instead of a task and a timer
        per event (most of what the event loop did per event besides the socket write)."""
        events = handle.events
        if not events.empty():
            return events.get_nowait()
        self.check_alive()
        self._readers.add(handle)
        if handle.loop not in self._polls:
            self._polls[handle.loop] = handle.loop.call_later(1.0, self._poll, handle.loop)
        try:
            return await events.get()
        finally:
            self._readers.discard(handle)

    def _poll(self, loop: asyncio.AbstractEventLoop) -> None:
        """next_event's check, on `loop`: a scheduler thread that has ended sends its readers
        the 503 (it posts to every handle when it fails; this covers its dying outright)."""
        del self._polls[loop]
        readers = [h for h in self._readers if h.loop is loop]
        try:
            self.check_alive()
        except APIError as e:
            for h in readers:
                h.events.put_nowait(("error", e))
            return
        if readers:
            self._polls[loop] = loop.call_later(1.0, self._poll, loop)

    def check_alive(self) -> None:
        """Raises the 503 of a scheduler whose thread has ended (nothing will be posted)."""
        if self.state != LOADING and not self._thread.is_alive():
            raise self.unavailable() or APIError(503, "the scheduler has stopped", type="service_unavailable")

    def cancel(self, handle: Handle) -> None:
        """The client is gone: stop its request and free its pages (at the next step boundary)."""
        self._inbox.put(("cancel", handle))

    def stalled(self) -> bool:
        """True when a step has run past step_timeout_s (a worker hangs): the scheduler is
        marked failed."""
        started = self._step_started
        if started is None or time.perf_counter() - started < self.step_timeout_s:
            return False
        if self.state == READY:
            self.state, self.error = FAILED, f"an engine step has run for more than {self.step_timeout_s:g} s"
            self.log(f"error: {self.error}; giving up")
        return True

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Ask the thread to end (requests in flight get errors, the engine is closed);
        True if it did within timeout_s."""
        self._inbox.put(("stop", None))
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    # -- the scheduler thread ----------------------------------------------------------------

    def _main(self) -> None:
        try:
            self.engine = self._load()
            self.topology = getattr(self.engine, "topology", "")
            self.context = self.engine.context
            self._publish()
            self.state = READY
            kv = getattr(self.engine, "kv_line", None)
            self.log(f"ready: {self.topology}" + (f"; {kv()}" if kv else ""))
            while self.state == READY and self._serve_commands(block=not self.engine.busy):
                if self.engine.busy:
                    self._step()
            if self.state == FAILED:     # stalled() gave up on a step while it ran
                self._fail(self.error)
        except BaseException as e:       # a failed load, a dead worker, or a bug here
            self._fail(f"{type(e).__name__}: {e}", traceback.format_exc())

    def _serve_commands(self, block: bool) -> bool:
        """Take the inbox's commands (waiting up to 0.5 s for one when idle); False on stop."""
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return True
        while True:
            kind, handle = item
            if kind == "stop":
                self._shut_down()
                return False
            (self._take if kind == "submit" else self._cancel)(handle)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                self._publish()
                return True

    def _take(self, h: Handle) -> None:
        job, engine = h.job, self.engine
        try:
            if job.kind == "chat":
                prompt = engine.chat_prompt(job.messages)
            else:
                prompt = job.prompt
            r = engine.submit(prompt, job.max_tokens, text_output=True, **job.options)
        except ValueError as e:         # the engine's, the tokenizer's, the sampler's: the request's fault
            h._accept(APIError(400, str(e), param="messages" if job.kind == "chat" else "prompt"))
            return
        engine.admit()
        if r in engine.waiting and len(engine.waiting) > self.max_waiting:
            engine.cancel(r)
            self.metrics.reject("overloaded")
            h._accept(APIError(503, f"the server is at capacity: {len(engine.running)} requests running "
                                    f"and {self.max_waiting} waiting for KV pages; retry later",
                               type="service_unavailable", code="overloaded",
                               headers={"Retry-After": "1"}))
            return
        h.request = r
        self._handles[r.id] = h
        self.metrics.admitted(len(r.prompt))
        h._accept()

    def _cancel(self, h: Handle) -> None:
        r = h.request
        if r is None or h.ended:
            return
        self.engine.cancel(r)
        self._end(h, "cancelled")

    def _end(self, h: Handle, reason: str) -> None:
        h.ended = True
        self._handles.pop(h.request.id, None)
        self.metrics.done(reason)

    def _step(self) -> None:
        self._step_started = time.perf_counter()
        try:
            got = self.engine.step()
        except Exception as e:
            self._step_started = None
            self._step_failed(e)
            return
        self._step_started = None
        if self.state != READY:          # given up on while it ran: no more answers from it
            return
        now = time.perf_counter()
        gaps, posts = [], []
        for r in got:
            h = self._handles.get(r.id)
            if h is None:
                continue
            if h.last_token_at is None:
                self.metrics.first_token(now - h.arrived)
            else:
                gaps.append(now - h.last_token_at)
            h.last_token_at = now
            if r.pieces:
                posts.append((h, ("text", "".join(r.pieces))))
                r.pieces.clear()
            if r.finished:
                posts.append((h, ("end", r.finish_reason, usage(len(r.prompt), len(r.tokens)))))
                self._end(h, r.finish_reason)
        Handle._post_all(posts)
        self.metrics.tokens(len(got), gaps)
        self._publish()

    def _step_failed(self, e: Exception) -> None:
        """The engine ended the step's requests with "error". Tell them; then find out
        whether the session still works (a dead worker makes this raise too)."""
        message = f"the engine failed during a step: {type(e).__name__}: {e}"
        self.log(f"error: {message}")
        for h in list(self._handles.values()):
            if h.request.finish_reason == "error":
                h._post("error", APIError(500, message, type="server_error", code="engine_error"))
                self._end(h, "error")
        self.engine.session.sync()      # raises when the session is unusable -> _fail

    def _fail(self, message: str, details: str = "") -> None:
        first = self.state != FAILED
        self.state, self.error = FAILED, self.error or message
        if first:
            self.log(f"error: {message}" + (f"\n{details}" if details and "WorkerError" not in message else ""))
        err = APIError(500, f"the engine failed: {self.error}; the server is shutting down",
                       type="server_error", code="engine_failed")
        for h in list(self._handles.values()):
            h._post("error", err)
            self._end(h, "error")
        self._refuse_inbox()
        self._publish()
        self.on_fatal()

    def _refuse_inbox(self) -> None:
        while True:
            try:
                kind, h = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "submit":
                h._accept(self.unavailable())

    def _shut_down(self) -> None:
        self.state = STOPPED
        err = APIError(503, "the server is shutting down", type="service_unavailable", code="stopped")
        for h in list(self._handles.values()):
            h._post("error", err)
            self._end(h, "cancelled")
        self._refuse_inbox()
        self.engine.close()
        self._publish()

    def _publish(self) -> None:
        e = self.engine
        if e is None:
            return
        self._snapshot = dict(running=len(e.running), waiting=len(e.waiting) + self._inbox.qsize(),
                              pages_used=e.num_pages - e.free_pages, pages_total=e.num_pages)

    def _gauges(self) -> dict:
        return dict(self._snapshot, healthy=self.state == READY)

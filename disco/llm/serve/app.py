"""The HTTP side: a Starlette application over a `Scheduler`.

    POST /v1/completions, /v1/chat/completions   OpenAI's bodies (protocol.py); `stream`: true
                                                 answers server-sent events, OpenAI's chunks
                                                 then `data: [DONE]`
    GET  /v1/models                              the one model served
    GET  /health                                 200 when ready, else 503 (loading, failed)
    GET  /metrics                                Prometheus text (metrics.py)

A client that goes away cancels its request: a stream is cancelled by Starlette when the
connection closes (the generator's `finally`), a plain request by a task that waits for
the ASGI `http.disconnect` message while the answer is made.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .protocol import APIError, chunk, parse_chat, parse_completion, response, usage_chunk
from .scheduler import READY, Handle, Scheduler


def build_app(scheduler: Scheduler, model: str, watchdog_s: float = 1.0) -> Starlette:
    """The application serving `scheduler`'s engine under the name `model`."""
    created = int(time.time())

    async def completions(request: Request) -> Response:
        return await _generate(request, parse_completion)

    async def chat_completions(request: Request) -> Response:
        return await _generate(request, parse_chat)

    async def _generate(request: Request, parse: Callable) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise APIError(400, f"the request body is not valid JSON: {e}") from None
        job = parse(body, model)
        handle = await scheduler.submit(job)
        if job.stream:
            return StreamingResponse(_events(handle), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _whole(handle, request)

    async def _whole(handle: Handle, request: Request) -> Response:
        gone = asyncio.ensure_future(_disconnected(request))
        got = None
        try:
            text = []
            while True:
                got = got or asyncio.ensure_future(handle.events.get())
                done, _ = await asyncio.wait({got, gone}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                if got not in done:
                    if gone in done:
                        return Response(status_code=499)       # nobody reads it
                    scheduler.check_alive()
                    continue
                event, got = got.result(), None
                if event[0] == "text":
                    text.append(event[1])
                elif event[0] == "end":
                    return JSONResponse(response(handle.job, "".join(text), event[1], event[2]))
                else:
                    raise event[1]
        finally:
            gone.cancel()
            if got is not None:
                got.cancel()
            scheduler.cancel(handle)     # a no-op when it ended; else (the client left) frees its pages

    async def _events(handle: Handle):
        job = handle.job
        finished = False
        try:
            if job.kind == "chat":
                yield _sse(chunk(job, "", first=True))
            while not finished:
                # the events already here (a step's text and the end) go out in one write
                out = []
                event = await scheduler.next_event(handle)
                while True:
                    if event[0] == "text":
                        out.append(_sse(chunk(job, event[1])))
                    elif event[0] == "end":
                        finished = True
                        out.append(_sse(chunk(job, None, finish_reason=event[1])))
                        if job.include_usage:
                            out.append(_sse(usage_chunk(job, event[2])))
                        out.append("data: [DONE]\n\n")
                    else:
                        finished = True
                        out.append(_sse(event[1].body()))
                    if finished or handle.events.empty():
                        break
                    event = handle.events.get_nowait()
                yield "".join(out)
        except APIError as e:              # the scheduler stopped answering
            finished = True
            yield _sse(e.body())
        finally:
            if not finished:               # the client left (or the server is stopping)
                scheduler.cancel(handle)

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": model, "object": "model", "created": created, "owned_by": "disco-tp",
             "max_model_len": scheduler.context or None}]})

    async def health(request: Request) -> Response:
        if scheduler.state == READY:
            return JSONResponse({"status": "ok", "topology": scheduler.topology})
        body = {"status": scheduler.state}
        if scheduler.error:
            body["error"] = scheduler.error
        return JSONResponse(body, status_code=503)

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(scheduler.metrics.render(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    async def api_error(request: Request, exc: APIError) -> Response:
        if exc.status == 400:
            scheduler.metrics.reject("bad_request")
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                     type=kind).body(), status_code=exc.status_code)

    async def watchdog():
        while True:
            await asyncio.sleep(watchdog_s)
            if scheduler.stalled():
                scheduler.on_fatal()
                return

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.ensure_future(watchdog())
        try:
            yield
        finally:
            task.cancel()

    return Starlette(routes=[
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ], exception_handlers={APIError: api_error, HTTPException: http_error}, lifespan=lifespan)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _disconnected(request: Request) -> None:
    """Returns when the client has closed the connection (the body was read already, so
    the next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return

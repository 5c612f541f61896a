"""`create_app(settings, worker) -> FastAPI`: routers, error handlers, request context, lifespan.

Nothing heavy happens at import; the engine worker loads the model on its own thread once the app starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from http import HTTPStatus

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware

from engine.engine import Engine
from engine.tokenizer import Tokenizer
from engine.worker import EngineWorker
from server import errors
from server.metrics import Metrics
from server.routes import chat, completions, health, metrics, models, timings
from server.service import AppState
from server.settings import Settings
from server.timing_store import TimingStore

log = logging.getLogger("deltaserve")


class _BodyTooLarge(Exception):
    pass


access_log = logging.getLogger("deltaserve.access")


class RequestContext:
    """Pure ASGI middleware: X-Request-Id (echoed or generated), arrival time, body size cap (413), a
    last-resort 500 in the OpenAI envelope carrying the request id, and the access log: one line a request once
    its response is complete (uvicorn's, off, writes it when the response starts), with the status, the whole
    duration of a streamed response and the request id that /v1/timings/{id} takes."""

    def __init__(self, app, max_body: int, count_error: Callable[[str], None]):
        self.app, self.max_body, self.count_error = app, max_body, count_error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        rid = headers.get(b"x-request-id", b"").decode("latin-1").strip()[:128] or uuid.uuid4().hex
        scope.setdefault("state", {}).update(request_id=rid, received=time.perf_counter())
        started, status = False, 0

        async def send_with_id(message):
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        size = 0

        async def receive_capped():
            nonlocal size
            message = await receive()
            size += len(message.get("body", b""))
            if size > self.max_body:
                raise _BodyTooLarge
            return message

        length = headers.get(b"content-length", b"0")
        try:
            if not length.isdigit():
                raise errors.invalid("Invalid Content-Length header.")
            if int(length) > self.max_body:
                raise _BodyTooLarge
            await self.app(scope, receive_capped, send_with_id)
        except _BodyTooLarge:
            err = errors.ApiError(413, f"The request body exceeds {self.max_body} bytes.", code="request_too_large")
            await self._fail(err, started, send_with_id)
        except errors.ApiError as err:
            await self._fail(err, started, send_with_id)
        except Exception:
            log.exception("unhandled error in request %s", rid)
            err = errors.ApiError(500, f"Internal server error (request id {rid}).", type="server_error",
                                  code="internal_error")
            await self._fail(err, started, send_with_id)
        finally:
            _log_access(scope, status, rid)

    async def _fail(self, err: errors.ApiError, started: bool, send) -> None:
        self.count_error(err.type)
        if started:
            return
        body = json.dumps(err.body()).encode()
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": err.status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})


def _log_access(scope, status: int, rid: str) -> None:
    """One line a finished request, uvicorn's (client - "METHOD path HTTP/v" status phrase) followed by the
    duration and the request id; status - if none went out."""
    if access_log.isEnabledFor(logging.INFO):
        host, port = scope.get("client") or ("-", 0)
        path = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
        try:
            phrase = f"{status} {HTTPStatus(status).phrase}"
        except ValueError:  # none went out (0), or a code without a name
            phrase = str(status or "-")
        ms = (time.perf_counter() - scope["state"]["received"]) * 1e3
        access_log.info('%s:%s - "%s %s HTTP/%s" %s %.1f ms (request %s)', host, port, scope["method"], path,
                        scope.get("http_version", "1.1"), phrase, ms, rid)


def attach(state: AppState, engine: Engine) -> None:
    """Fill in what is known once the model is loaded (called off the event loop)."""
    info = engine.info
    state.tokenizer = Tokenizer(info.model_dir)
    state.vocab_size = engine.model.args.vocab_size
    state.context_length = state.settings.context_length or engine.model.args.max_position_embeddings
    state.backend, state.prefill = info.backend, info.prefill
    path = info.prefill.method
    state.metrics.set_info(dtype=info.dtype, backend=info.backend, prefill_path=path,
                           chunk_size=str(info.prefill.chunk_size) if path == "chunked" else "")


def create_app(settings: Settings, worker: EngineWorker, on_load_failure: Callable[[], None] = lambda: None):
    state = AppState(settings=settings, worker=worker, store=TimingStore(settings.timing_store_size),
                     metrics=Metrics(settings.model_id, lambda: worker.running, lambda: worker.waiting))

    async def wait_for_engine() -> None:
        await run_in_threadpool(worker.loaded.wait)
        if worker.load_error is not None:
            log.error("could not load the model: %s", worker.load_error)
            on_load_failure()
            return
        await run_in_threadpool(attach, state, worker.engine)
        state.attached = True
        for line in worker.engine.describe():
            log.info(line)
        log.info("ready: serving %s on the OpenAI API", settings.model_id)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        task = asyncio.create_task(wait_for_engine())
        yield
        task.cancel()
        await run_in_threadpool(worker.stop)

    app = FastAPI(title="deltaserve", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible server for Qwen3.5 on MLX, with per-request timings.")
    app.state.ds = state
    errors.install(app)
    for module in (completions, chat, models, timings, health, metrics):
        app.include_router(module.router)
    if settings.cors_origin:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-request-id"])
    app.add_middleware(RequestContext, max_body=settings.max_body_bytes, count_error=state.metrics.error)
    return app

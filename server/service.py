"""The asyncio side of one engine request: admission, events from the engine thread, cancellation on
disconnect, and the timing record + metrics when it ends."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request

from engine.generate import GenerationResult, PrefillOptions
from engine.sampling import SamplingParams
from engine.tokenizer import Tokenizer
from engine.worker import EngineWorker, Event, Failed, Finished, Job, NotReady, QueueFull, Scores, Token
from server.errors import ApiError, invalid, not_ready, overloaded
from server.metrics import Metrics
from server.schemas import TimingRecord, Timings
from server.settings import Settings
from server.timing_store import TimingStore


@dataclass
class AppState:
    """Everything the routes share; lives on `app.state.ds`."""

    settings: Settings
    worker: EngineWorker
    store: TimingStore
    metrics: Metrics
    tokenizer: Tokenizer | None = None  # the server's own copy (the engine thread has another)
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)
    context_length: int = 0
    vocab_size: int = 0
    backend: str = "cpu"
    prefill: PrefillOptions = field(default_factory=PrefillOptions)
    attached: bool = False  # set once the loaded engine's facts above are filled in

    def require_ready(self) -> None:
        if not (self.worker.ready.is_set() and self.attached):
            raise not_ready("the model is still loading" if self.worker.load_error is None else "loading failed")


_BACKGROUND: set[asyncio.Task] = set()  # strong references to drain tasks of abandoned runs


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


async def watch_disconnect(request: Request, run: EngineRun) -> None:
    """Cancel `run` when the client goes away (ASGI http.disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    run.cancel()


class EngineRun:
    """One prompt's job on the engine, seen from the event loop."""

    def __init__(self, state: AppState, *, endpoint: str, response_id: str, request_id: str, received: float,
                 prompt: list[int], params: SamplingParams, score_top_k: int | None = None):
        self.state, self.endpoint, self.response_id, self.request_id = state, endpoint, response_id, request_id
        self.received, self.prompt, self.params = received, prompt, params
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.job = Job(prompt, params, lambda ev: loop.call_soon_threadsafe(self._events.put_nowait, ev), score_top_k,
                       handed_over=threading.Event())
        self.submitted = self.first_token = self.last_token = self.finished = None
        self.last: GenerationResult | None = None
        self.scores: Scores | None = None
        self.finish_reason: str | None = None
        self.error: Failed | None = None

    def submit(self) -> EngineRun:
        self.submitted = time.perf_counter()  # parsed and validated: from here on the wait is the engine's
        try:
            self.state.worker.submit(self.job)
        except QueueFull:
            self.state.metrics.error("server_is_overloaded")
            raise overloaded(self.state.settings.retry_after_seconds) from None
        except NotReady as e:
            raise not_ready(str(e)) from None
        return self

    def cancel(self) -> None:
        self.job.cancel.set()
        self.job.handed_over.set()

    @property
    def admitted(self) -> float | None:
        """When the engine took the job (None while it waits in the queue)."""
        return self.job.admitted

    async def events(self, keepalive: float | None = None) -> AsyncIterator[Event | None]:
        """Engine events in order (None after `keepalive` quiet seconds); ends after Finished or Failed."""
        pending: asyncio.Future | None = None
        try:
            while True:
                pending = pending or asyncio.ensure_future(self._events.get())
                done, _ = await asyncio.wait({pending}, timeout=keepalive)
                if not done:
                    yield None
                    continue
                event, pending = pending.result(), None
                self._note(event)
                yield event
                # the consumer asks for the next event: it has sent this one on (a streamed chunk is written)
                if isinstance(event, Token):
                    self.job.handed_over.set()
                if isinstance(event, Finished | Failed):
                    return
        finally:
            self.job.handed_over.set()
            if pending is not None:
                pending.cancel()
            if self.finished is None:  # the consumer stopped early (disconnect): stop the engine, and
                self.cancel()  # still record how the request ended once the engine says so
                task = asyncio.get_running_loop().create_task(self._drain())
                _BACKGROUND.add(task)
                task.add_done_callback(_BACKGROUND.discard)

    async def _drain(self) -> None:
        while self.finished is None:
            self._note(await self._events.get())

    def _note(self, event: Event) -> None:
        m = self.state.metrics
        if isinstance(event, Scores):
            self.scores = event
        elif isinstance(event, Token):
            if event.result.token is not None:
                if self.first_token is None:
                    self.first_token = event.t
                elif self.last is not None:
                    m.itl.labels(m.model).observe(event.result.decode_seconds - self.last.decode_seconds)
                self.last_token = event.t
            self.last = event.result
        elif isinstance(event, Finished):
            self.finished = event.t
            last_reason = self.last.finish_reason if self.last is not None else None
            self.finish_reason = "cancelled" if event.reason == "cancelled" else last_reason or event.reason
            self._record(200 if self.finish_reason != "cancelled" else 499)
        elif isinstance(event, Failed):
            self.finished, self.error, self.finish_reason = event.t, event, "error"
            self._record(400 if event.client_error else 500)

    def raise_if_failed(self) -> None:
        if self.error is not None:
            if self.error.client_error:
                raise invalid(str(self.error.error))
            raise ApiError(500, f"Internal error in the engine (request id {self.request_id}).", type="server_error",
                           code="engine_error")

    # ------------------------------------------------------------------ timing

    def timings(self) -> Timings:
        r, end = self.last, self.finished or time.perf_counter()
        prompt_s = r.prefill_seconds if r else (self.scores.seconds if self.scores else 0.0)
        n = r.generation_tokens if r else 0
        decode_s = r.decode_seconds if r else 0.0
        path = r.prefill_path if r else self.state.prefill.path_for_prompt(len(self.prompt))
        chunk = (r.chunk_size if r else (self.state.prefill.chunk_size if path == "chunked" else None))
        return Timings(
            prompt_n=len(self.prompt),
            prompt_ms=prompt_s * 1e3,
            prompt_per_token_ms=prompt_s * 1e3 / len(self.prompt) if self.prompt else 0.0,
            prompt_per_second=len(self.prompt) / prompt_s if prompt_s else 0.0,
            predicted_n=n,
            predicted_ms=decode_s * 1e3,
            predicted_per_token_ms=decode_s * 1e3 / (n - 1) if n > 1 else 0.0,
            predicted_per_second=(n - 1) / decode_s if n > 1 and decode_s else 0.0,
            queue_ms=((self.admitted or end) - self.received) * 1e3,
            ttft_ms=(self.first_token - self.received) * 1e3 if self.first_token else None,
            total_ms=(end - self.received) * 1e3,
            prefill_path=path,
            chunk_size=chunk,
            backend=self.state.backend,
        )

    def _phases(self) -> dict[str, float | None]:
        def rel(t: float | None) -> float | None:
            return None if t is None else (t - self.received) * 1e3

        prefill_start = self.first_token - self.last.prefill_seconds if self.first_token and self.last else None
        points = {"submitted": self.submitted, "admitted": self.admitted, "prefill_start": prefill_start,
                  "first_token": self.first_token, "last_token": self.last_token, "finished": self.finished}
        return {k: rel(v) for k, v in points.items()}

    def _record(self, status: int) -> None:
        t, m, model = self.timings(), self.state.metrics, self.state.metrics.model
        generated = self.last.generation_tokens if self.last else 0
        self.state.store.add(TimingRecord(
            id=self.response_id, request_id=self.request_id, endpoint=self.endpoint, model=self.state.settings.model_id,
            created=int(time.time()), finish_reason=self.finish_reason, prompt_tokens=len(self.prompt),
            completion_tokens=generated, timings=t, phases_ms=self._phases(),
        ))
        m.observe_request(self.endpoint, status, self.finish_reason)
        if self.finish_reason == "cancelled":
            m.cancellations.labels(model).inc()
        if self.admitted is None:
            return
        m.queue_time.labels(model).observe(t.queue_ms / 1e3)
        m.e2e.labels(model).observe(t.total_ms / 1e3)
        if t.prompt_ms > 0:
            m.prompt_tokens.labels(model).inc(len(self.prompt))
            m.prompt_len.labels(model).observe(len(self.prompt))
            m.prefill_time.labels(model, t.prefill_path).observe(t.prompt_ms / 1e3)
            m.prefill_tps.labels(model, t.prefill_path).observe(t.prompt_per_second)
        if t.ttft_ms is not None:
            m.ttft.labels(model).observe(t.ttft_ms / 1e3)
        m.generation_tokens.labels(model).inc(generated)
        m.gen_len.labels(model).observe(generated)

"""The generation worker: one thread owns the Engine and runs jobs from a bounded queue, one at a time.

MLX arrays belong to the thread that made them, so the model is loaded and used only here; callers get
plain Python values through each job's `emit` callback (called on this thread). One job at a time keeps
every request's output exactly what it would be alone; a batching scheduler can replace `_run` later.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.engine import Engine
from engine.errors import Cancelled, DeltaserveError
from engine.generate import GenerationResult, PromptScores
from engine.sampling import SamplingParams

log = logging.getLogger("deltaserve")
FIRST_TOKEN_WAIT = 0.002  # seconds the engine thread gives a caller to pass the first token on


class QueueFull(Exception):
    """The bounded queue is full: the caller should answer 503 with Retry-After."""


class NotReady(Exception):
    """The model is still loading (or failed to load)."""


@dataclass
class Progress:
    done: int
    total: int


@dataclass
class Token:
    result: GenerationResult
    t: float  # perf_counter when the token was handed out (device synchronised)


@dataclass
class Scores:
    scores: PromptScores
    seconds: float  # the scoring pass over the prompt (device synchronised)


@dataclass
class Finished:
    t: float
    reason: str  # "stop", "length" (from the last token) or "cancelled"


@dataclass
class Failed:
    error: Exception
    client_error: bool  # True for a DeltaserveError (the request's fault), False for an engine failure
    t: float = 0.0


Event = Progress | Token | Scores | Finished | Failed


@dataclass
class Job:
    """One request for the engine: score the prompt (when `score_top_k` is set) and/or generate."""

    prompt: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    score_top_k: int | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    # perf_counter when the job left the queue: set, not emitted, so the caller's thread is not woken up to
    # compete for the GIL while this thread builds the prefill (read with the job's later events)
    admitted: float | None = None
    # Set by the caller once it has passed the first token on (the server: once its chunk is written): until then
    # (at most FIRST_TOKEN_WAIT) the engine thread waits with the GIL released instead of building the next decode
    # step, which otherwise held the first token back in the event loop (~1 ms on a CPU host). None: no wait.
    handed_over: threading.Event | None = None

    @property
    def generates(self) -> bool:
        return self.score_top_k is None or self.params.max_tokens > 0


class EngineWorker:
    def __init__(self, load: Callable[[], Engine], max_queue: int = 64, warm_up: bool = True):
        self._load, self._warm_up = load, warm_up
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._main, name="deltaserve-engine", daemon=True)
        self.loaded = threading.Event()  # set once loading ended, successfully or not
        self.ready = threading.Event()  # set once the model is loaded and warm
        self.engine: Engine | None = None
        self.load_error: BaseException | None = None
        self.running = 0

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def start(self) -> EngineWorker:
        """Start loading on the engine thread (once; later calls do nothing)."""
        if not self._thread.is_alive() and not self.loaded.is_set():
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the running job, drop the rest, and end the thread."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel.set()
                job.emit(Finished(time.perf_counter(), "cancelled"))
        self._queue.put(None)
        self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        if not self.ready.is_set():
            raise NotReady("the model is still loading" if self.load_error is None else "the model failed to load")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull from None

    def _main(self) -> None:
        try:
            self.engine = self._load()
            if self._warm_up:
                t0 = time.perf_counter()
                self.engine.warm_up()
                log.info("warmed up in %.1f s", time.perf_counter() - t0)
            self.ready.set()
        except BaseException as e:  # reported by whoever waits on `loaded`
            self.load_error = e
        finally:
            self.loaded.set()
        while self.load_error is None and (job := self._queue.get()) is not None:
            self.running = 1
            try:
                self._run(job)
            finally:
                self.running = 0

    def _run(self, job: Job) -> None:
        job.admitted = time.perf_counter()
        try:
            self._execute(job)
        except Cancelled:
            job.emit(Finished(time.perf_counter(), "cancelled"))
        except DeltaserveError as e:
            job.emit(Failed(e, client_error=True, t=time.perf_counter()))
        except Exception as e:
            log.exception("engine failure")
            job.emit(Failed(e, client_error=False, t=time.perf_counter()))

    def _execute(self, job: Job) -> None:
        def on_step(done: int, total: int) -> None:
            if job.cancel.is_set():
                raise Cancelled
            job.emit(Progress(done, total))

        if job.cancel.is_set():
            raise Cancelled
        if job.score_top_k is not None:
            t0 = time.perf_counter()
            scores = self.engine.score(job.prompt, job.score_top_k, on_step)
            job.emit(Scores(scores, time.perf_counter() - t0))
        reason = "length"
        if job.generates:
            for n, result in enumerate(self.engine.generate(job.prompt, job.params, on_step)):
                if job.cancel.is_set():
                    raise Cancelled
                job.emit(Token(result, time.perf_counter()))  # token None: prefill-only (max_tokens 0)
                if n == 0 and job.handed_over is not None and result.finish_reason is None:
                    job.handed_over.wait(FIRST_TOKEN_WAIT)  # the time to first token is the one a client sees
                else:
                    # Release the GIL at once, so the event loop can send this token before this thread goes on
                    # queueing the next step (Python-heavy where decode is op by op; else up to a 5 ms switch wait).
                    time.sleep(0)
                reason = result.finish_reason or reason
        job.emit(Finished(time.perf_counter(), reason))

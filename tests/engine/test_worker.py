"""The generation worker's hand-off of the first token: a streaming caller gets it before the engine thread goes
on to the next decode step (whose Python work held the first token back in the event loop)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import pytest

from engine.generate import GenerationResult
from engine.sampling import SamplingParams
from engine.worker import FIRST_TOKEN_WAIT, EngineWorker, Finished, Job, Token


class RecordingEvent(threading.Event):
    """A threading.Event that logs its waits into the shared trace."""

    def __init__(self, trace: list):
        super().__init__()
        self.trace = trace

    def wait(self, timeout: float | None = None) -> bool:
        self.trace.append(("wait", timeout))
        return super().wait(timeout)


class StandInEngine:
    """Yields `n` results and logs each step it starts into the trace (the worker only calls generate)."""

    def __init__(self, trace: list, n: int):
        self.trace, self.n = trace, n

    def generate(self, prompt, params, on_step) -> Iterator[GenerationResult]:
        for i in range(self.n):
            self.trace.append(("step", i))
            yield GenerationResult(text=str(i), token=i, prompt_tokens=len(prompt),
                                   finish_reason="length" if i == self.n - 1 else None)


def run_job(n: int, handshake: bool) -> list:
    trace: list = []
    events: queue.Queue = queue.Queue()

    def emit(ev):
        if isinstance(ev, Token):
            trace.append(("token", ev.result.token))
        events.put(ev)

    worker = EngineWorker(lambda: StandInEngine(trace, n), warm_up=False).start()
    assert worker.ready.wait(10)
    job = Job([1, 2, 3], SamplingParams(max_tokens=n), emit,
              handed_over=RecordingEvent(trace) if handshake else None)
    worker.submit(job)
    while not isinstance(events.get(timeout=10), Finished):
        pass
    worker.stop()
    return trace


def test_the_engine_waits_for_the_first_token_to_be_handed_over_before_the_next_step():
    trace = run_job(3, handshake=True)
    # one bounded wait, after the first token and before the second step: never unbounded (a caller that stops
    # reading must not stall the engine) and never again for later tokens
    assert trace == [("step", 0), ("token", 0), ("wait", FIRST_TOKEN_WAIT), ("step", 1), ("token", 1), ("step", 2),
                     ("token", 2)]
    assert 0 < FIRST_TOKEN_WAIT <= 0.01


@pytest.mark.parametrize("n, handshake", [(1, True), (3, False)], ids=["first-token-is-the-last", "no-handshake"])
def test_no_wait_when_nothing_follows_or_nobody_hands_over(n, handshake):
    assert ("wait", FIRST_TOKEN_WAIT) not in run_job(n, handshake)


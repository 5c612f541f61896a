"""The generation worker's hand-off of a job's first token: no decode work until the consumer has sent it on (or
a bounded wait has passed), so a streamed first token is not held up behind decode steps."""

from __future__ import annotations

import queue
import threading
import time

import pytest

import engine.worker as worker_module
from engine.sampling import SamplingParams
from engine.worker import EngineWorker, Finished, Job, Token


@pytest.fixture(scope="module")
def worker(demo_engine):
    w = EngineWorker(lambda: demo_engine, warm_up=False).start()
    assert w.ready.wait(60), w.load_error
    yield w
    w.stop()


def _job(sent: threading.Event | None, max_tokens: int = 4) -> tuple[Job, queue.Queue]:
    events: queue.Queue = queue.Queue()
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return Job([1, 2, 3, 4, 5], params, events.put, first_token_sent=sent), events


def _tokens_until_finished(events: queue.Queue) -> list[Token]:
    tokens = []
    while not isinstance(ev := events.get(timeout=60), Finished):
        if isinstance(ev, Token):
            tokens.append(ev)
    return tokens


def _first_token(events: queue.Queue) -> Token:
    while not isinstance(ev := events.get(timeout=60), Token):
        pass
    return ev


def test_no_second_token_before_the_first_is_sent(worker, monkeypatch):
    monkeypatch.setattr(worker_module, "FIRST_TOKEN_WAIT_S", 30.0)
    sent = threading.Event()
    job, events = _job(sent)
    worker.submit(job)
    first = _first_token(events)
    with pytest.raises(queue.Empty):  # the engine is waiting for the consumer
        events.get(timeout=0.5)
    sent.set()
    rest = _tokens_until_finished(events)
    assert first.result.token is not None and len(rest) == 3


def test_a_consumer_that_never_answers_costs_only_the_bounded_wait(worker, monkeypatch):
    monkeypatch.setattr(worker_module, "FIRST_TOKEN_WAIT_S", 0.2)
    job, events = _job(threading.Event())
    worker.submit(job)
    first = _first_token(events)
    second = _first_token(events)
    assert second.t - first.t >= 0.2
    assert len(_tokens_until_finished(events)) == 2


def test_jobs_without_a_consumer_signal_do_not_wait(worker, monkeypatch):
    monkeypatch.setattr(worker_module, "FIRST_TOKEN_WAIT_S", 30.0)
    job, events = _job(None)
    t0 = time.perf_counter()
    worker.submit(job)
    assert len(_tokens_until_finished(events)) == 4
    assert time.perf_counter() - t0 < 10

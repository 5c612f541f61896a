"""Server pieces that need no running server: reasoning split, timing store, settings, schemas, the hand-over of a
run's first token."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from engine.generate import DEFAULT_PREFILL_STEP, PREFILL_STEP_BY_BACKEND, GenerationResult, default_prefill_step
from engine.sampling import SamplingParams
from engine.worker import EngineWorker, Token
from server.metrics import Metrics
from server.schemas import TimingRecord, Timings, lone_surrogate
from server.service import AppState, EngineRun
from server.settings import Settings
from server.streaming import ReasoningSplitter
from server.timing_store import TimingStore


def _feed_all(splitter: ReasoningSplitter, pieces: list[str]) -> tuple[str, str]:
    r, c = zip(*(splitter.feed(p) for p in pieces), strict=True)
    fr, fc = splitter.flush()
    return "".join(r) + fr, "".join(c) + fc


@pytest.mark.parametrize(
    "in_reasoning, text, reasoning, content",
    [
        (True, "let me think</think>\n\nThe answer.", "let me think", "The answer."),
        (False, "<think>hmm</think>ok", "hmm", "ok"),
        (False, "plain answer", "", "plain answer"),
        (False, "<thin", "", "<thin"),  # an unfinished tag at the end is content
        (True, "never closed", "never closed", ""),
        (False, "a </think> b", "", "a </think> b"),  # no open tag: nothing to close
    ],
)
def test_reasoning_split_at_every_piece_boundary(in_reasoning, text, reasoning, content):
    for size in (1, 2, 3, 7, len(text)):
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        assert _feed_all(ReasoningSplitter(in_reasoning), pieces) == (reasoning, content), size


def _record(i: int) -> TimingRecord:
    t = Timings(prompt_n=1, prompt_ms=1, prompt_per_token_ms=1, prompt_per_second=1, predicted_n=0, predicted_ms=0,
                predicted_per_token_ms=0, predicted_per_second=0, queue_ms=0, ttft_ms=None, total_ms=1,
                prefill_path="serial", chunk_size=None, backend="cpu")
    return TimingRecord(id=f"cmpl-{i}", request_id=f"rid-{i}", endpoint="/v1/completions", model="demo", created=0,
                        finish_reason="stop", prompt_tokens=1, completion_tokens=0, timings=t, phases_ms={})


def test_timing_store_is_bounded_and_remembers_evictions():
    store = TimingStore(2)
    for i in range(3):
        store.add(_record(i))
    assert store.get("cmpl-0") is None and store.was_evicted("cmpl-0") and store.was_evicted("rid-0")
    assert store.get("rid-2").id == "cmpl-2" and [r.id for r in store.recent(5)] == ["cmpl-2", "cmpl-1"]
    assert not store.was_evicted("never-seen")


@pytest.mark.parametrize("field, value", [("chunk_size", 48), ("port", -1), ("dtype", "int8"), ("max_queue", 0),
                                          ("prefill_step", 0)])
def test_bad_settings_fail_at_start_up(field, value):
    with pytest.raises(ValidationError):
        Settings(**{field: value})


def test_settings_defaults_are_safe():
    s = Settings()
    assert s.host == "127.0.0.1" and s.api_key is None and s.prefill_options().method == "serial"


def test_prefill_step_defaults_to_the_backends_and_a_given_one_wins():
    assert default_prefill_step("cuda") == PREFILL_STEP_BY_BACKEND["cuda"]
    assert default_prefill_step("metal") == default_prefill_step("cpu") == DEFAULT_PREFILL_STEP
    assert Settings().prefill_options().step_size == default_prefill_step()  # this machine's backend
    assert Settings(prefill_step=96).prefill_options().step_size == 96


@pytest.mark.parametrize("body, where", [
    ({"model": "m", "prompt": "fine \U0001f600"}, None),  # a surrogate pair decodes to one code point
    ({"model": "m", "prompt": "\ud83d"}, "prompt"),
    ({"prompt": ["a", "b\udfff"]}, "prompt.1"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]}, "messages.0.content.0.text"),
    ({"logit_bias": {"\ud800": 1}}, "logit_bias"),  # a key: its object's path
    ({"prompt": [[1, 2], ["x\ud800"]]}, "prompt.1.0"),
    ({"prompt": [1, "\ud800"]}, None),  # a list that starts with a number is a token-id list (the schema refuses mixes)
])
def test_lone_surrogates_are_found_with_their_field_path(body, where):
    assert lone_surrogate(body) == where


def test_the_surrogate_check_walks_any_depth():
    """Iterative: nesting as deep as a JSON parser could hand over does not reach Python's recursion limit."""
    inner = deep = []
    for _ in range(50_000):
        inner.append([])
        inner = inner[0]
    inner.append("\ud800")
    assert lone_surrogate({"stop": deep}) == "stop." + ".".join(["0"] * 50_001)


class ThreeTokens:
    """A stand-in engine (the worker only calls generate): three results, the last one finishing."""

    def generate(self, prompt, params, on_step):
        for i in range(3):
            yield GenerationResult(text=str(i), token=i, finish_reason="length" if i == 2 else None)


def test_the_first_token_is_handed_over_once_its_consumer_has_sent_it():
    """EngineRun sets the job's hand-over (which the engine thread waits on before its next decode step) when its
    consumer asks for the event after the first token, i.e. once that token's chunk is written; not before."""

    async def scenario() -> list[bool]:
        worker = EngineWorker(ThreeTokens, warm_up=False).start()
        assert worker.ready.wait(10)
        state = AppState(settings=Settings(), worker=worker, store=TimingStore(4),
                         metrics=Metrics("m", lambda: 0, lambda: 0))
        run = EngineRun(state, endpoint="/v1/completions", response_id="r", request_id="q", received=0.0,
                        prompt=[1, 2], params=SamplingParams(max_tokens=3)).submit()
        seen = []
        async for event in run.events():
            if isinstance(event, Token):
                seen.append(run.job.handed_over.is_set())  # while the consumer still holds this token
        worker.stop()
        return seen

    assert asyncio.run(scenario()) == [False, True, True]

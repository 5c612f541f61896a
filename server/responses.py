"""Building response bodies from engine results: usage, logprobs, and the shared SSE driver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fastapi import Request

from engine.generate import GenerationResult
from engine.worker import Progress, Scores, Token
from server.errors import ApiError
from server.schemas import CompletionLogprobs, TokenLogprob, TopLogprob, Usage
from server.service import AppState, EngineRun, watch_disconnect
from server.streaming import DONE, comment, sse, sse_error


def token_text(state: AppState, token: int) -> str:
    with state.tokenizer_lock:
        return state.tokenizer.token_text(token)


def top_dict(state: AppState, top: list[tuple[int, float]]) -> dict[str, float]:
    """{token text: logprob}, most likely first; tokens that share a text keep the highest logprob."""
    out: dict[str, float] = {}
    for t, lp in top:
        out.setdefault(token_text(state, t), lp)
    return out


def usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens,
                 completion_tokens_details={"reasoning_tokens": reasoning_tokens})


def completion_logprobs(state: AppState, prompt: list[int] | None, scores: Scores | None,
                        results: list[GenerationResult], offset: int = 0) -> CompletionLogprobs:
    """Classic logprobs: with echo the prompt tokens come first (the first has no logprob). `text_offset`: each
    token's character offset in the response text (`offset`: the text before these tokens), counted from the text
    each token released, so a character split over tokens counts once (their U+FFFD texts would count each)."""
    tokens, lps, tops, released = [], [], [], []
    if prompt is not None and scores is not None:
        s = scores.scores
        tokens += [token_text(state, t) for t in prompt]
        lps += s.logprobs
        tops += [None if top is None else top_dict(state, top) for top in s.top_logprobs]
        released += prompt_pieces(state, prompt)
    for r in results:
        tokens.append(token_text(state, r.token))
        lps.append(r.logprob)
        tops.append(top_dict(state, r.top_logprobs))
        released.append(r.text)
    offsets = []
    for piece in released:
        offsets.append(offset)
        offset += len(piece)
    return CompletionLogprobs(tokens=tokens, token_logprobs=lps, top_logprobs=tops, text_offset=offsets)


def prompt_pieces(state: AppState, prompt: list[int]) -> list[str]:
    """The text each prompt token releases when the prompt is decoded as a stream (together: its decode)."""
    with state.tokenizer_lock:
        detok = state.tokenizer.detokenizer()
        pieces = [detok.add(t) for t in prompt]
        pieces[-1] += detok.flush()
    return pieces


def chat_logprobs(state: AppState, results: list[GenerationResult]) -> list[TokenLogprob]:
    def top(t: int, lp: float) -> TopLogprob:
        with state.tokenizer_lock:
            text, raw = state.tokenizer.token_text(t), state.tokenizer.token_bytes(t)
        return TopLogprob(token=text, logprob=lp, bytes=list(raw))

    return [TokenLogprob(**top(r.token, r.logprob).model_dump(), top_logprobs=[top(t, lp) for t, lp in r.top_logprobs])
            for r in results]


async def collect(run: EngineRun, request: Request) -> list[GenerationResult]:
    """Wait for a non-streamed run, cancelling it if the client disconnects meanwhile."""
    watcher = asyncio.create_task(watch_disconnect(request, run))
    results = []
    try:
        async for event in run.events():
            if isinstance(event, Token) and event.result.token is not None:
                results.append(event.result)
    finally:
        watcher.cancel()
    run.raise_if_failed()
    return results


@dataclass
class ChoiceStream:
    """How one choice's engine events become chunks: `prelude` first, then per event, then `finish()`."""

    on_token: Callable[[GenerationResult], list[dict]]
    on_scores: Callable[[Scores], list[dict]]
    finish: Callable[[], list[dict]]
    prelude: list[dict] = field(default_factory=list)


async def stream_choices(runs: list[EngineRun], keepalive: float, choice: Callable[[int, EngineRun], ChoiceStream],
                         closing: Callable[[], list[dict]]) -> AsyncIterator[str]:
    """SSE body of a response's choices one after another (the engine runs one job at a time): each run's chunks
    (`choice(index, run)` makes them), then `closing()` (the usage chunk), then [DONE]. The caller submits the first
    run, so a full queue is still an HTTP status; a later run refused, or an engine error, ends the stream with
    `data: {"error": ...}`. A client that goes away closes this generator: the running choice is cancelled and
    the later ones never start."""
    for index, run in enumerate(runs):
        if index:
            try:
                run.submit()
            except ApiError as err:
                yield sse_error(err)
                return
        async for text in drive_stream(run, keepalive, choice(index, run)):
            yield text
        if run.error is not None:
            return
    for chunk in closing():
        yield sse(chunk)
    yield DONE


async def drive_stream(run: EngineRun, keepalive: float, handlers: ChoiceStream) -> AsyncIterator[str]:
    """One choice's SSE chunks: its prelude, keep-alive / prefill-progress comments, chunks per token, its
    closing chunks. An engine error after the 200 went out becomes `data: {"error": ...}`."""
    on_token, on_scores, finish, prelude = handlers.on_token, handlers.on_scores, handlers.finish, handlers.prelude
    for chunk in prelude:
        yield sse(chunk)
    async for event in run.events(keepalive):
        if event is None:
            yield comment("keep-alive")
        elif isinstance(event, Progress):
            yield comment(f"prefill {event.done}/{event.total}")
        elif isinstance(event, Scores):
            for chunk in on_scores(event):
                yield sse(chunk)
        elif isinstance(event, Token) and event.result.token is not None:
            for chunk in on_token(event.result):
                yield sse(chunk)
    try:
        run.raise_if_failed()
    except ApiError as err:
        yield sse_error(err)
        return
    for chunk in finish():
        yield sse(chunk)

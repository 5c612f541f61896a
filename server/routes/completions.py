"""POST /v1/completions: text completion, prompt scoring (echo + logprobs), streaming."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from server.deps import check_model, get_state, received, request_id, require_api_key
from server.errors import ERROR_RESPONSES, invalid
from server.prompts import check_common, completion_prompts, resolve_max_tokens
from server.responses import ChoiceStream, collect, completion_logprobs, stream_choices, usage
from server.schemas import CompletionChoice, CompletionRequest, CompletionResponse
from server.service import AppState, EngineRun, new_id
from server.streaming import SSE_HEADERS

router = APIRouter(tags=["completions"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)


@router.post("/v1/completions", response_model=CompletionResponse)
async def create_completion(body: CompletionRequest, request: Request):
    state = get_state(request)
    _check(state, body)
    prompts = await completion_prompts(state, body.prompt)
    response_id = new_id("cmpl")
    # choice i * n + j: prompt i's j-th sample (OpenAI's order); each is one engine job with its own timing record
    runs = [_run(state, body, request, p, j, response_id if not i and not j else f"{response_id}-{i * body.n + j}")
            for i, p in enumerate(prompts) for j in range(body.n)]
    if body.stream:
        runs[0].submit()
        return StreamingResponse(_stream(state, body, runs, response_id, sum(map(len, prompts))),
                                 media_type="text/event-stream", headers=SSE_HEADERS)
    choices = []
    for i, run in enumerate(runs):
        choices.append(await _choice(state, body, run.submit(), request, i))
        if run.finish_reason == "cancelled":  # the client went away: the later choices are not run
            break
    n_prompt, n_gen = sum(map(len, prompts)), sum(r.last.generation_tokens if r.last else 0 for r in runs)
    return CompletionResponse(id=response_id, created=int(time.time()), model=state.settings.model_id,
                              choices=choices, usage=usage(n_prompt, n_gen), timings=runs[0].timings())


def _check(state: AppState, body: CompletionRequest) -> None:
    state.require_ready()
    check_model(state, body.model)
    check_common(state, body)
    if body.best_of not in (None, 1):
        raise invalid("Only best_of=1 is supported.", param="best_of")
    if body.suffix:
        raise invalid("suffix is not supported.", param="suffix")
    if body.echo and body.max_tokens == 0 and body.logprobs is None:
        raise invalid("echo with max_tokens=0 scores the prompt: set logprobs (0-20).", param="logprobs")


def _run(state: AppState, body: CompletionRequest, request: Request, prompt: list[int], choice: int,
         rid: str) -> EngineRun:
    max_tokens = resolve_max_tokens(state, len(prompt), body.max_tokens)
    score = body.logprobs if body.echo and body.logprobs is not None else None
    return EngineRun(state, endpoint="/v1/completions", response_id=rid, request_id=request_id(request),
                     received=received(request), prompt=prompt,
                     params=body.to_sampling_params(max_tokens, body.logprobs, choice), score_top_k=score)


async def _choice(state: AppState, body: CompletionRequest, run: EngineRun, request: Request,
                  index: int) -> CompletionChoice:
    results = await collect(run, request)
    prefix = _decode(state, run.prompt) if body.echo else ""
    logprobs = None
    if body.logprobs is not None:
        echo_prompt = run.prompt if body.echo else None
        logprobs = completion_logprobs(state, echo_prompt, run.scores, results)
    text = prefix + "".join(r.text for r in results)
    return CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=run.finish_reason)


def _decode(state: AppState, ids: list[int]) -> str:
    with state.tokenizer_lock:
        return state.tokenizer.decode(ids)


def _stream(state: AppState, body: CompletionRequest, runs: list[EngineRun], response_id: str, n_prompt: int):
    """The choices' chunks one choice after another (each chunk names its choice), then the usage chunk."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    base = {"id": response_id, "object": "text_completion", "created": int(time.time()),
            "model": state.settings.model_id}

    def choice(index: int, run: EngineRun) -> ChoiceStream:
        def chunk(text: str, logprobs=None, finish_reason=None) -> dict:
            c = {**base, "choices": [{"index": index, "text": text, "logprobs": logprobs,
                                      "finish_reason": finish_reason}]}
            return {**c, "usage": None} if include_usage else c

        def on_scores(scores) -> list[dict]:
            nonlocal sent
            text = _decode(state, run.prompt)
            lp = completion_logprobs(state, run.prompt, scores, []).model_dump() if body.logprobs is not None else None
            sent += len(text)
            return [chunk(text, lp)]

        def on_token(r) -> list[dict]:
            # One chunk per generated token, as vLLM sends them, even when its text is still held back (part of a
            # UTF-8 character, a possible stop string): the client sees each token when it is made.
            nonlocal sent
            if r.token is None:  # prefill only (max_tokens 0)
                return []
            lp = completion_logprobs(state, None, None, [r], sent).model_dump() if body.logprobs is not None else None
            sent += len(r.text)
            return [chunk(r.text, lp)]

        def finish() -> list[dict]:
            return [{**chunk("", finish_reason=run.finish_reason), "timings": run.timings().model_dump()}]

        # echo without logprobs has no scoring pass to carry the prompt text: send it first
        prelude = [chunk(_decode(state, run.prompt))] if body.echo and run.job.score_top_k is None else []
        sent = len(prelude[0]["choices"][0]["text"]) if prelude else 0  # characters sent: the next text_offset
        return ChoiceStream(on_token, on_scores, finish, prelude)

    def closing() -> list[dict]:
        n_gen = sum(run.last.generation_tokens if run.last else 0 for run in runs)
        return [{**base, "choices": [], "usage": usage(n_prompt, n_gen).model_dump()}] if include_usage else []

    return stream_choices(runs, state.settings.keepalive_seconds, choice, closing)

"""POST /v1/chat/completions: chat template, reasoning split, logprobs, streaming."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from server.deps import check_model, get_state, received, request_id, require_api_key
from server.errors import ERROR_RESPONSES, invalid
from server.prompts import chat_ids, check_common, check_ids, opens_reasoning, resolve_max_tokens
from server.responses import ChoiceStream, chat_logprobs, collect, stream_choices, usage
from server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
)
from server.service import AppState, EngineRun, new_id
from server.streaming import SSE_HEADERS, ReasoningSplitter

router = APIRouter(tags=["chat"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    state = get_state(request)
    _check(state, body)
    prompt = await chat_ids(state, _messages(body), body.chat_template_kwargs)
    check_ids(state, prompt)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    top = (body.top_logprobs or 0) if body.logprobs else None
    max_tokens = resolve_max_tokens(state, len(prompt), requested)
    response_id = new_id("chatcmpl")
    # one engine job a choice (n > 1: each its own sample and timing record, ids after the first suffixed)
    runs = [EngineRun(state, endpoint="/v1/chat/completions", response_id=f"{response_id}-{j}" if j else response_id,
                      request_id=request_id(request), received=received(request), prompt=prompt,
                      params=body.to_sampling_params(max_tokens, top, j)) for j in range(body.n)]
    opens = opens_reasoning(state, prompt)
    if body.stream:
        runs[0].submit()
        return StreamingResponse(_stream(state, body, runs, response_id, opens), media_type="text/event-stream",
                                 headers=SSE_HEADERS)
    choices, n_generated, n_reasoning = [], 0, 0
    for j, run in enumerate(runs):
        results = await collect(run.submit(), request)
        reasoning, content, reasoning_tokens = _split(ReasoningSplitter(opens), results)
        message = AssistantMessage(content=content, reasoning_content=reasoning or None)
        logprobs = ChatLogprobs(content=chat_logprobs(state, results)) if body.logprobs else None
        choices.append(ChatChoice(index=j, message=message, logprobs=logprobs, finish_reason=run.finish_reason))
        n_generated, n_reasoning = n_generated + len(results), n_reasoning + reasoning_tokens
        if run.finish_reason == "cancelled":  # the client went away: the later choices are not run
            break
    return ChatCompletionResponse(id=response_id, created=int(time.time()), model=state.settings.model_id,
                                  choices=choices, usage=usage(len(prompt), n_generated, n_reasoning),
                                  timings=runs[0].timings())


def _check(state: AppState, body: ChatCompletionRequest) -> None:
    state.require_ready()
    check_model(state, body.model)
    check_common(state, body)
    if body.top_logprobs is not None and not body.logprobs:
        raise invalid("top_logprobs needs logprobs=true.", param="top_logprobs")
    if body.response_format is not None and body.response_format.type != "text":
        raise invalid(f"response_format {body.response_format.type!r} is not supported.", param="response_format")
    if body.tools:
        raise invalid("Tool calling is not supported by this server.", param="tools")


def _messages(body: ChatCompletionRequest) -> list[dict]:
    """Messages as template dicts; text parts are joined with newlines, other parts are refused."""
    out = []
    for i, m in enumerate(body.messages):
        d = m.model_dump(exclude_none=True)
        if isinstance(m.content, list):
            if any(p.type != "text" for p in m.content):
                raise invalid("Only text content parts are supported (this is a text-only model).",
                              param=f"messages.{i}.content")
            d["content"] = "\n".join(p.text for p in m.content)
        out.append(d)
    return out


def _split(splitter: ReasoningSplitter, results) -> tuple[str, str, int]:
    reasoning, content, n_reasoning = [], [], 0
    for r in results:
        rd, cd = splitter.feed(r.text)
        reasoning.append(rd)
        content.append(cd)
        n_reasoning += splitter.in_reasoning
    rd, cd = splitter.flush()
    return "".join(reasoning) + rd, "".join(content) + cd, n_reasoning


def _stream(state: AppState, body: ChatCompletionRequest, runs: list[EngineRun], response_id: str, opens: bool):
    """The choices' chunks one choice after another (each begins with its role delta and names its choice), then
    the usage chunk."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    base = {"id": response_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": state.settings.model_id}
    n_reasoning = 0  # over all choices

    def choice(index: int, run: EngineRun) -> ChoiceStream:
        splitter = ReasoningSplitter(opens)
        pending_logprobs: list = []  # logprobs of tokens whose text is still held back

        def chunk(delta: dict, finish_reason=None, logprobs=None) -> dict:
            c = {**base, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                      "finish_reason": finish_reason}]}
            return {**c, "usage": None} if include_usage else c

        def take_logprobs():
            if not body.logprobs:
                return None
            out = {"content": [lp.model_dump() for lp in pending_logprobs]}
            pending_logprobs.clear()
            return out

        def on_token(r) -> list[dict]:
            nonlocal n_reasoning
            if body.logprobs:
                pending_logprobs.extend(chat_logprobs(state, [r]))
            rd, cd = splitter.feed(r.text)
            n_reasoning += splitter.in_reasoning
            delta = {k: v for k, v in (("reasoning_content", rd), ("content", cd)) if v}
            return [chunk(delta, logprobs=take_logprobs())] if delta else []

        def finish() -> list[dict]:
            rd, cd = splitter.flush()
            delta = {k: v for k, v in (("reasoning_content", rd), ("content", cd)) if v}
            return [{**chunk(delta, run.finish_reason, take_logprobs()), "timings": run.timings().model_dump()}]

        return ChoiceStream(on_token, lambda s: [], finish, [chunk({"role": "assistant", "content": ""})])

    def closing() -> list[dict]:
        if not include_usage:
            return []
        n_gen = sum(run.last.generation_tokens if run.last else 0 for run in runs)
        return [{**base, "choices": [], "usage": usage(len(runs[0].prompt), n_gen, n_reasoning).model_dump()}]

    return stream_choices(runs, state.settings.keepalive_seconds, choice, closing)

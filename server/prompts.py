"""Turning request prompts into token ids, and the checks that must happen before anything is queued."""

from __future__ import annotations

from typing import Any

from fastapi.concurrency import run_in_threadpool

from engine.errors import InvalidInputError
from server.errors import ApiError, invalid
from server.service import AppState
from server.streaming import THINK_OPEN

MAX_STOP_STRINGS = 16


async def encode(state: AppState, text: str) -> list[int]:
    def work() -> list[int]:
        with state.tokenizer_lock:
            return state.tokenizer.encode(text)

    return await run_in_threadpool(work)


async def chat_ids(state: AppState, messages: list[dict[str, Any]], template_kwargs: dict[str, Any]) -> list[int]:
    kwargs = dict(template_kwargs)
    enable_thinking = bool(kwargs.pop("enable_thinking", False))

    def work() -> list[int]:
        with state.tokenizer_lock:
            return state.tokenizer.apply_chat_template(messages, enable_thinking=enable_thinking, **kwargs)

    try:
        return await run_in_threadpool(work)
    except InvalidInputError as e:
        raise invalid(str(e), param="messages") from None


def opens_reasoning(state: AppState, prompt: list[int]) -> bool:
    """True when the rendered prompt ends inside an open think block (the model continues reasoning)."""
    with state.tokenizer_lock:
        tail = state.tokenizer.decode(prompt[-8:])
    return tail.rstrip().endswith(THINK_OPEN)


async def completion_prompts(state: AppState, prompt: str | list) -> list[list[int]]:
    """The four OpenAI prompt forms -> one token-id list per prompt. The schema has already made a list
    homogeneous (one of list[str], list[int], list[list[int]]), so its first element tells the form."""
    if isinstance(prompt, str):
        prompts = [await encode(state, prompt)]
    elif prompt and isinstance(prompt[0], int):
        prompts = [list(prompt)]
    elif prompt and isinstance(prompt[0], str):
        prompts = [await encode(state, p) for p in prompt]
    elif prompt and isinstance(prompt[0], list):
        prompts = [list(p) for p in prompt]
    else:
        raise invalid("prompt must be a non-empty string, list of strings, list of token ids, or list of those",
                      param="prompt")
    for ids in prompts:
        check_ids(state, ids)
    return prompts


def check_ids(state: AppState, ids: list[int]) -> None:
    if not ids:
        raise invalid("The prompt is empty: give at least one token.", param="prompt")
    if min(ids) >= 0 and max(ids) < state.vocab_size:  # at C speed: a long prompt is on the time to first token
        return
    bad = next((i for i, t in enumerate(ids) if not 0 <= t < state.vocab_size), None)
    if bad is not None:
        raise invalid(f"Token id {ids[bad]} at prompt position {bad} is outside the vocabulary "
                      f"(0..{state.vocab_size - 1}).", param="prompt")


def resolve_max_tokens(state: AppState, n_prompt: int, requested: int | None) -> int:
    """max_tokens after the context check; never truncates a prompt silently."""
    n_ctx = state.context_length
    default = min(state.settings.max_tokens_default, max(n_ctx - n_prompt, 0))
    max_tokens = default if requested is None else requested
    if n_prompt + max_tokens > n_ctx or n_prompt >= n_ctx:
        raise ApiError(
            400,
            f"This model's maximum context length is {n_ctx} tokens; the request has {n_prompt} prompt tokens "
            f"and asks for {max_tokens} more. Shorten the prompt or lower max_tokens.",
            code="context_length_exceeded", param="max_tokens" if requested else "prompt",
            extra={"n_prompt_tokens": n_prompt, "n_ctx": n_ctx},
        )
    return max_tokens


def check_common(state: AppState, body: Any) -> None:
    """Parameters we do not implement are rejected, not ignored."""
    if len(body.stops()) > MAX_STOP_STRINGS:
        raise invalid(f"At most {MAX_STOP_STRINGS} stop strings are supported.", param="stop")
    for key in body.logit_bias or {}:
        if not key.lstrip("-").isdigit() or not 0 <= int(key) < state.vocab_size:
            raise invalid(f"logit_bias key {key!r} is not a token id of this model.", param="logit_bias")
    if any(t >= state.vocab_size for t in body.stop_token_ids):
        raise invalid("stop_token_ids holds a token id outside the vocabulary.", param="stop_token_ids")

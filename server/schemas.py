"""Wire schemas, in OpenAI's field order (https://platform.openai.com/docs/api-reference).

Requests reject unknown fields (a typo should not be silently ignored) and read a null field as its default, as
OpenAI's API does. Our extensions — vLLM-style
sampling fields and the per-request `timings` object — sit in marked blocks with descriptions.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.sampling import SamplingParams
from server.errors import ApiError

NonNegInt = Annotated[int, Field(ge=0)]
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(data: Any) -> str | None:
    """The field path (`messages.0.content`) of the first string in a parsed JSON body that holds a UTF-16
    surrogate code point (only a lone one survives JSON decoding), or None. Iterative (a body nested as deep as
    the JSON parser allows must not exhaust Python's stack here), and a list that starts with a number is taken
    as a token-id list and skipped: it costs nothing on a long prompt of ids (a list mixing numbers and strings
    fails the schema anyway)."""
    stack: list[tuple[tuple, Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and _SURROGATE.search(value):
                return ".".join(map(str, path)) or "body"
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                if isinstance(key, str) and not key.isascii() and _SURROGATE.search(key):
                    return ".".join(map(str, path)) or "body"
                stack.append(((*path, key), item))
        elif isinstance(value, list) and value and not isinstance(value[0], int | float):
            stack.extend(((*path, i), value[i]) for i in range(len(value) - 1, -1, -1))
    return None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by completions and chat (OpenAI's, then our extensions)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        """A field given as null takes its default, as OpenAI's API reads it (clients such as LangChain send
        `"temperature": null`); a required one is then reported missing."""
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    @model_validator(mode="before")
    @classmethod
    def _unicode_text(cls, data: Any) -> Any:
        """A string holding a lone UTF-16 surrogate (JSON's `"\\ud83d"` without its pair) is no Unicode text, so
        no tokenizer encodes it: a 400 naming the field, not an engine failure."""
        if (where := lone_surrogate(data)) is not None:
            raise ApiError(400, f"The string at '{where}' is not valid Unicode: it holds a lone UTF-16 surrogate "
                                "(a \\ud800-\\udfff escape without its pair).", param=where)
        return data

    model: str
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    max_tokens: NonNegInt | None = None
    n: int = Field(1, ge=1, le=16, description="choices per prompt, each sampled on its own (with a seed: seed, "
                                              "seed + 1, ...); streamed one after another")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64, description="a 64-bit integer (signed or not)")
    stop: str | list[str] | None = Field(None, description="up to 16 stop strings, matched on text and removed")
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    user: str | None = None
    # --- extensions (vLLM names) ---
    top_k: int = Field(0, ge=0, description="extension: keep the k most likely tokens (0: off)")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="extension: drop tokens below min_p * p(max)")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="extension: over prompt and output")
    ignore_eos: bool = Field(False, description="extension: keep generating past end-of-sequence tokens")
    stop_token_ids: list[NonNegInt] = Field(default_factory=list, description="extension: extra stop tokens")

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def to_sampling_params(self, max_tokens: int, logprobs: int | None, choice: int = 0) -> SamplingParams:
        """The engine's parameters for choice `choice` of `n` (its seed offset by the choice: the n choices differ,
        and the first is what n = 1 gives)."""
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            seed=None if self.seed is None else self.seed + choice,
            stop=self.stops(),
            stop_token_ids=list(self.stop_token_ids),
            ignore_eos=self.ignore_eos,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logprobs=logprobs,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
        )


class CompletionRequest(_Sampling):
    """POST /v1/completions (https://platform.openai.com/docs/api-reference/completions/create)."""

    # Token ids first: pydantic's smart union takes the first member that validates strictly, so a list of
    # 2048 ids is accepted at once (0.02 ms) instead of after list[str] has rejected every element (0.22 ms).
    # The accepted member for any input is the same in either order.
    prompt: list[int] | str | list[str] | list[list[int]]
    best_of: int | None = Field(None, ge=1, description="only 1 is supported")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = Field(None, description="not supported")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class OtherPart(BaseModel):
    """Any non-text part (images, audio): rejected with a clear message, this is a text-only model."""

    model_config = ConfigDict(extra="allow")
    type: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # extra keys (tool_calls, ...) reach the chat template as is
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | OtherPart] | None = None
    name: str | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions (https://platform.openai.com/docs/api-reference/chat/create)."""

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: NonNegInt | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # --- extensions ---
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extension: passed to the chat template, e.g. {'enable_thinking': true}"
    )


# ---------------------------------------------------------------- responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] = Field(default_factory=lambda: {"cached_tokens": 0})
    completion_tokens_details: dict[str, int] = Field(default_factory=lambda: {"reasoning_tokens": 0})


class Timings(BaseModel):
    """Extension: llama.cpp's `timings` fields plus ours. Times in milliseconds, measured on the engine
    thread with the device synchronised; `queue_ms` and `ttft_ms` count from the request's arrival."""

    prompt_n: int = Field(description="prompt tokens processed by this request")
    prompt_ms: float = Field(description="prefill wall time (excludes queueing)")
    prompt_per_token_ms: float
    prompt_per_second: float
    predicted_n: int = Field(description="generated tokens")
    predicted_ms: float = Field(description="first to last generated token (predicted_n - 1 decode steps)")
    predicted_per_token_ms: float = Field(description="predicted_ms / (predicted_n - 1)")
    predicted_per_second: float = Field(description="(predicted_n - 1) / predicted_ms: the decode rate")
    cache_n: int = Field(0, description="prompt tokens reused from a cache (no prompt cache yet: 0)")
    queue_ms: float = Field(description="arrival to leaving the queue")
    ttft_ms: float | None = Field(description="arrival to the first generated token")
    total_ms: float = Field(description="arrival to the end of the request")
    prefill_path: Literal["serial", "chunked"]
    chunk_size: int | None
    backend: Literal["cpu", "cuda", "metal"]


class TimingRecord(BaseModel):
    """GET /v1/timings/{id}: one finished request."""

    id: str
    request_id: str
    object: Literal["timing"] = "timing"
    endpoint: str
    model: str
    created: int
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    phases_ms: dict[str, float | None] = Field(
        description="monotonic phase times since arrival: submitted (parsed, validated, queued), admitted, "
        "prefill_start, first_token, last_token, finished"
    )


class TimingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TimingRecord]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    timings: Timings | None = Field(None, description="extension: per-request timing")


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = Field(None, description="extension: text between think tags")


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    timings: Timings | None = Field(None, description="extension: per-request timing")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "deltaserve"
    max_model_len: int = Field(description="extension: prompt + max_tokens limit")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

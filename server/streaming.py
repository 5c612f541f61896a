"""Server-sent events in OpenAI's framing, and the think-tag splitter used by chat."""

from __future__ import annotations

import json
from typing import Any

from engine.generate import partial_suffix
from server.errors import ApiError

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = "data: [DONE]\n\n"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def comment(text: str) -> str:
    """A line the OpenAI SDK ignores: keep-alive and prefill progress."""
    return f": {text}\n\n"


def sse_error(err: ApiError) -> str:
    """An error after the 200 status went out: the SDK raises APIError on an `error` key."""
    return sse(err.body())


class ReasoningSplitter:
    """Routes generated text to `reasoning_content` (inside <think>...</think>) or `content`.

    `in_reasoning` is True when the prompt itself opened the think block (thinking enabled); otherwise a
    reply that starts with <think> opens one. Text right after </think> loses its leading newlines.
    """

    def __init__(self, in_reasoning: bool):
        self.in_reasoning = in_reasoning
        self.started = in_reasoning  # whether any text has been routed yet
        self.after_close = False
        self.buf = ""

    def feed(self, text: str) -> tuple[str, str]:
        """Add text; return (reasoning delta, content delta) that are safe to emit now."""
        self.buf += text
        reasoning = content = ""
        if not self.started:
            stripped = self.buf.lstrip()
            if stripped.startswith(THINK_OPEN):
                self.buf, self.in_reasoning, self.started = stripped[len(THINK_OPEN):], True, True
            elif THINK_OPEN.startswith(stripped):
                return "", ""  # could still become <think>
            else:
                self.started = True
        if self.in_reasoning:
            end = self.buf.find(THINK_CLOSE)
            if end < 0:
                cut = len(self.buf) - partial_suffix(self.buf, THINK_CLOSE)
                reasoning, self.buf = self.buf[:cut], self.buf[cut:]
                return reasoning, ""
            reasoning, self.buf = self.buf[:end], self.buf[end + len(THINK_CLOSE):]
            self.in_reasoning, self.after_close = False, True
        if self.after_close:
            self.buf = self.buf.lstrip("\n")
            if not self.buf:
                return reasoning, ""
            self.after_close = False
        content, self.buf = self.buf, ""
        return reasoning, content

    def flush(self) -> tuple[str, str]:
        rest, self.buf = self.buf, ""
        return (rest, "") if self.in_reasoning else ("", rest)

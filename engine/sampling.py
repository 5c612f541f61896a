"""Sampling parameters, logits processors (penalties) and the sampler (greedy, temperature, top-k/p, min-p)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.core as mx

from engine.errors import InvalidInputError

LogitsProcessor = Callable[[list[int], int, mx.array], mx.array]
Sampler = Callable[[mx.array, mx.array], mx.array]


@dataclass
class SamplingParams:
    """What one request asks of generation. `temperature == 0` is greedy."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: no logprobs; k >= 0: chosen token plus k alternatives
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit

    def validate(self) -> None:
        checks = [
            (self.max_tokens >= 0, "max_tokens must be >= 0"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0 (0 disables it)"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be in [0, 20]"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(message)


def make_key(seed: int | None) -> mx.array:
    """Per-request PRNG key: a given seed reproduces a request's samples whatever else runs."""
    # any integer seeds: MLX's key takes an unsigned 64-bit one, so negative or larger seeds wrap (-1 -> 2**64 - 1)
    return mx.random.key(seed % 2**64 if seed is not None else int.from_bytes(os.urandom(4), "little"))


def make_sampler(p: SamplingParams) -> Sampler:
    """sampler(logits [B, V] in any float dtype, key) -> token ids [B] (temperature sampling widens to fp32)."""
    if p.temperature == 0:
        return lambda logits, key: mx.argmax(logits, axis=-1)

    def sample(logits: mx.array, key: mx.array) -> mx.array:
        logits = logits.astype(mx.float32) / p.temperature
        if p.top_k > 0 and p.top_k < logits.shape[-1]:
            kth = mx.sort(logits, axis=-1)[..., -p.top_k][..., None]
            logits = mx.where(logits < kth, -mx.inf, logits)
        if p.top_p < 1.0:
            logits = _top_p(logits, p.top_p)
        if p.min_p > 0.0:
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            floor = logprobs.max(axis=-1, keepdims=True) + mx.log(mx.array(p.min_p))
            logits = mx.where(logprobs < floor, -mx.inf, logits)
        return mx.random.categorical(logits, key=key)

    return sample


def _top_p(logits: mx.array, top_p: float) -> mx.array:
    """Keep the smallest set of most likely tokens whose probability reaches top_p."""
    order = mx.argsort(-logits, axis=-1)
    sorted_logits = mx.take_along_axis(logits, order, axis=-1)
    probs = mx.softmax(sorted_logits, axis=-1)
    before = mx.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
    sorted_logits = mx.where(before >= top_p, -mx.inf, sorted_logits)
    inverse = mx.argsort(order, axis=-1)
    return mx.take_along_axis(sorted_logits, inverse, axis=-1)


def make_logits_processors(p: SamplingParams) -> list[LogitsProcessor]:
    """Penalties, vLLM semantics: repetition over prompt + output; presence/frequency over output only.

    Each processor is called as proc(tokens, n_prompt, logits [1, V]) with tokens = prompt + generated.
    """
    procs: list[LogitsProcessor] = []
    if p.logit_bias:
        ids, bias = mx.array(list(p.logit_bias)), mx.array(list(p.logit_bias.values()), dtype=mx.float32)
        procs.append(lambda tokens, n_prompt, logits: _add_bias(logits, ids, bias))
    if p.repetition_penalty != 1.0:
        procs.append(lambda tokens, n_prompt, logits: _repetition(tokens, logits, p.repetition_penalty))
    if p.presence_penalty or p.frequency_penalty:
        procs.append(
            lambda tokens, n_prompt, logits: _additive(
                tokens[n_prompt:], logits, p.presence_penalty, p.frequency_penalty
            )
        )
    return procs


def _add_bias(logits: mx.array, ids: mx.array, bias: mx.array) -> mx.array:
    logits[:, ids] = logits[:, ids] + bias
    return logits


def _repetition(tokens: list[int], logits: mx.array, penalty: float) -> mx.array:
    if not tokens:
        return logits
    ids = mx.array(sorted(set(tokens)))
    picked = logits[:, ids]
    logits[:, ids] = mx.where(picked > 0, picked / penalty, picked * penalty)
    return logits


def _additive(output: list[int], logits: mx.array, presence: float, frequency: float) -> mx.array:
    if not output:
        return logits
    counts: dict[int, int] = {}
    for t in output:
        counts[t] = counts.get(t, 0) + 1
    ids = mx.array(list(counts))
    n = mx.array(list(counts.values()), dtype=mx.float32)
    logits[:, ids] = logits[:, ids] - presence - frequency * n
    return logits

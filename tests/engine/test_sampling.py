"""Sampler and logits processors against small NumPy references."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from engine.errors import InvalidInputError
from engine.sampling import SamplingParams, make_key, make_logits_processors, make_sampler

PROBS = np.array([0.5, 0.3, 0.15, 0.05])
LOGITS = mx.array(np.log(PROBS)[None].astype(np.float32))


def _draws(params: SamplingParams, n: int = 2000, logits=LOGITS) -> np.ndarray:
    sampler, key = make_sampler(params), make_key(params.seed)
    keys = mx.random.split(key, n)
    return np.array([sampler(logits, keys[i]).item() for i in range(n)])


@pytest.mark.parametrize(
    "params, allowed",
    [
        (SamplingParams(temperature=1.0, top_k=1, seed=0), {0}),
        (SamplingParams(temperature=1.0, top_k=2, seed=0), {0, 1}),
        (SamplingParams(temperature=1.0, top_p=0.7, seed=0), {0, 1}),
        (SamplingParams(temperature=1.0, top_p=0.85, seed=0), {0, 1, 2}),
        (SamplingParams(temperature=1.0, min_p=0.5, seed=0), {0, 1}),
        (SamplingParams(temperature=0.0), {0}),
    ],
    ids=["top_k1", "top_k2", "top_p0.7", "top_p0.85", "min_p0.5", "greedy"],
)
def test_filters_keep_exactly_the_allowed_tokens(params, allowed):
    draws = _draws(params, n=600)
    assert set(draws.tolist()) == allowed


def test_temperature_sampling_follows_softmax():
    draws = _draws(SamplingParams(temperature=0.5, seed=1), n=4000)
    expected = PROBS**2 / (PROBS**2).sum()
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert np.abs(freq - expected).max() < 0.03, (freq, expected)


def _numpy_penalties(logits, prompt, output, rep, presence, frequency):
    """vLLM semantics: repetition over prompt + output (divide positive, multiply negative logits);
    presence/frequency subtract over output tokens only."""
    out = logits.copy()
    for t in set(prompt) | set(output):
        out[t] = out[t] / rep if out[t] > 0 else out[t] * rep
    for t in set(output):
        out[t] -= presence + frequency * output.count(t)
    return out


def test_penalties_match_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=50).astype(np.float32)
    prompt, output = [1, 2, 3, 3], [3, 7, 7, 7, 9]
    params = SamplingParams(repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.25)
    x = mx.array(logits[None])
    for proc in make_logits_processors(params):
        x = proc(prompt + output, len(prompt), x)
    expected = _numpy_penalties(logits, prompt, output, 1.3, 0.5, 0.25)
    np.testing.assert_allclose(np.array(x[0]), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("field, value", [("temperature", -1), ("top_p", 0), ("top_k", -2), ("min_p", 1.5),
                                          ("logprobs", 21), ("max_tokens", -1)])
def test_invalid_parameters_are_rejected(field, value):
    with pytest.raises(InvalidInputError, match=field):
        SamplingParams(**{field: value}).validate()

"""Generation in three layers: `prefill` / the decode step (engine.decode), the `generate_step` token loop, and
`stream_generate`, which adds detokenization, stop handling, logprobs and timing."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import mlx.core as mx

from engine.backend import backend_name
from engine.cache import cache_arrays, set_gdn_path
from engine.decode import compiled_decode
from engine.errors import InvalidInputError
from engine.model import Model, bucketed, pad_rows
from engine.sampling import (
    LogitsProcessor,
    Sampler,
    SamplingParams,
    make_key,
    make_logits_processors,
    make_sampler,
)
from engine.tokenizer import Tokenizer

DEFAULT_PREFILL_STEP = 2048
# Tokens per prefill step by backend where it differs from the default. CUDA (H200, 8192-token prompt, chunked):
# 1024 / 2048 / 4096 / 8192-token steps took 145 / 96 / 78 / 78 ms at 3.3 / 5.7 / 9.4 / 14.4 GB peak
# (docs/BENCHMARKS.md): per-step launch and sync costs dominate small steps there.
PREFILL_STEP_BY_BACKEND = {"cuda": 4096}
# Below this many tokens a prefill step takes the serial GDN path even with --gdn-chunked: on a 2-core CPU
# the chunked core wins from ~8 tokens (C=32) / ~16 (C=64) at the 0.8B head shape (docs/BENCHMARKS.md).
DEFAULT_MIN_CHUNKED_TOKENS = 16
# On a GPU a prefill step of at least SUBMIT_MIN_TOKENS goes to the device every DEFAULT_SUBMIT_EVERY layers
# (mx.async_eval), so the device starts on the first layers while Python builds the rest (~800 graph nodes a
# step). H200, chunked, ms a prompt with a step whole / every 2 layers: 512 tokens 10.8 / 11.9 (host-bound: each
# submission costs the host), 2048 18.6 / 13.1, 8192 54.6 / 47.5 (docs/BENCHMARKS.md). On the CPU nothing of a
# prefill is submitted early (see `prefill`).
DEFAULT_SUBMIT_EVERY = 2
SUBMIT_MIN_TOKENS = 1024
SCORE_SLICE = 256  # positions per slice of full-vocab logits when scoring a prompt
# Called after every prefill step but the last with (tokens processed, prompt length); it may raise
# (e.g. engine.errors.Cancelled) to stop the request between steps.
StepHook = Callable[[int, int], None]


def default_prefill_step(backend: str | None = None) -> int:
    """Tokens per prefill step when none is asked for: measured per backend, else mlx-lm's 2048."""
    return PREFILL_STEP_BY_BACKEND.get(backend or backend_name(), DEFAULT_PREFILL_STEP)


@dataclass
class PrefillOptions:
    """How prompts are processed: GDN core path, its chunk size, tokens per prefill step, and the shortest
    step that takes the chunked path when it is enabled."""

    method: str = "serial"
    chunk_size: int = 64
    step_size: int | None = None  # None: the backend's (`default_prefill_step`)
    min_chunked_tokens: int = DEFAULT_MIN_CHUNKED_TOKENS
    submit_every: int | None = None  # layers; 0: a step is submitted whole; None: the backend's
    submit_min_tokens: int = SUBMIT_MIN_TOKENS

    def __post_init__(self) -> None:
        if self.step_size is None:
            self.step_size = default_prefill_step()
        if self.submit_every is None:
            self.submit_every = 0 if backend_name() == "cpu" else DEFAULT_SUBMIT_EVERY

    def method_for(self, n_tokens: int) -> str:
        """The GDN path one prefill step of `n_tokens` takes."""
        return "chunked" if self.method == "chunked" and n_tokens >= self.min_chunked_tokens else "serial"

    def submit_for(self, n_tokens: int) -> int:
        """Layers between submissions of one prefill step of `n_tokens` (0: the step is submitted whole)."""
        return self.submit_every if n_tokens >= self.submit_min_tokens else 0

    def path_for_prompt(self, n_tokens: int) -> str:
        """The path a whole prompt records: chunked if its longest step (the first) was chunked."""
        return self.method_for(min(n_tokens, self.step_size))


@dataclass
class GenerationResult:
    """One generated token (or the final record), with the request's timing so far."""

    text: str
    token: int | None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    prefill_path: str = "serial"
    chunk_size: int | None = None
    peak_memory_gb: float = 0.0

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def generation_tps(self) -> float:
        """Decode rate after the first token (which prefill produced)."""
        n = self.generation_tokens - 1
        return n / self.decode_seconds if n > 0 and self.decode_seconds else 0.0


def prefill(
    model: Model, tokens: mx.array, cache: list, options: PrefillOptions | None = None, on_step: StepHook | None = None
) -> mx.array:
    """Run the prompt [B, T] through the model in steps of `options.step_size` tokens, each step on the GDN
    path `options.method_for(step)`; returns logits [B, V] of the last position only. `on_step(done, total)`
    runs once a step's work has finished on the device."""
    options = options or PrefillOptions()
    step, total = options.step_size, tokens.shape[1]
    overlap = backend_name() != "cpu"
    in_flight: tuple[list[mx.array], int] | None = None  # the step the device is running, and tokens done after it
    while tokens.shape[1] > step:
        set_gdn_path(cache, options.method_for(step), options.chunk_size)
        model.hidden(tokens[:, :step], cache, options.submit_for(step))
        # Materialise the carried state so the graph does not grow; on a GPU without waiting: Python builds the next
        # step while the device runs this one. On the CPU the step is waited for: the overlap buys ~1% there (0.8B
        # fp32, 512 tokens in 4 steps on 2 cores: 6.09 s vs 6.14 s) and a multi-step CPU prefill queued this way
        # crashed inside MLX, rarely (a SIGSEGV in async_eval in two fresh-clone runs of the test suite; not
        # reproduced in 65 reruns of that test or a 3-minute stress loop). MLX's buffer cache is kept for the next
        # step (freeing it each step cost ~13 ms a step at 2048 tokens on an H200).
        arrays = cache_arrays(cache)
        (mx.async_eval if overlap else mx.eval)(arrays)
        tokens = tokens[:, step:]
        _finish_step(in_flight, total, on_step)
        in_flight = (arrays, total - tokens.shape[1])
    set_gdn_path(cache, options.method_for(tokens.shape[1]), options.chunk_size)
    h = model.hidden(tokens, cache, options.submit_for(tokens.shape[1]))
    _finish_step(in_flight, total, on_step)
    return model.head(h[:, -1, :])


def _finish_step(in_flight: tuple[list[mx.array], int] | None, total: int, on_step: StepHook | None) -> None:
    """Wait for a submitted prefill step, then report it (a hook may cancel the prefill by raising)."""
    if in_flight is None:
        return
    arrays, done = in_flight
    mx.eval(arrays)
    if on_step:
        on_step(done, total)


def generate_step(
    model: Model,
    prompt: list[int],
    cache: list,
    *,
    sampler: Sampler,
    logits_processors: list[LogitsProcessor],
    key: mx.array,
    max_tokens: int,
    options: PrefillOptions | None = None,
    on_step: StepHook | None = None,
) -> Iterator[tuple[int, mx.array]]:
    """Yield (token, log-probabilities [V], lazy: evaluated when read) up to `max_tokens` times.

    The first token is evaluated and handed out before any decode work is queued, so the caller's clock (and a
    client's time to first token) measures prefill alone: queueing a decode step costs milliseconds of host
    time where decode is launch-bound, as on CUDA. Afterwards step n+1 is queued with `async_eval` before
    token n is handed out.
    """
    history = list(prompt)

    def sample(logits: mx.array) -> tuple[mx.array, mx.array]:
        nonlocal key
        wide = logits.astype(mx.float32)
        logprobs = wide - mx.logsumexp(wide, axis=-1, keepdims=True)  # raw model distribution
        if logits_processors:  # else the sampler takes the model's dtype: greedy's argmax is exact in it, and
            logits = wide  # decode launches one kernel fewer a token
            for proc in logits_processors:
                logits = proc(history, len(prompt), logits)
        key, sub = mx.random.split(key)
        return sampler(logits, sub), logprobs[0]

    if max_tokens <= 0:
        return
    # Only the token is evaluated: the log-probabilities stay lazy (a reduction over the vocabulary a token,
    # launched only for a caller that reads them, e.g. a request with logprobs).
    y, lp = sample(prefill(model, mx.array([prompt]), cache, options, on_step))
    mx.eval(y)
    yield int(y.item()), lp

    step = compiled_decode(model)

    def queue(y: mx.array) -> tuple[mx.array, mx.array]:
        if logits_processors:
            history.append(int(y.item()))
        nxt = sample(step(y, cache))
        mx.async_eval(nxt[0])
        return nxt

    nxt = queue(y) if max_tokens > 1 else None
    for n in range(2, max_tokens + 1):
        y, lp = nxt
        nxt = queue(y) if n < max_tokens else None
        yield int(y.item()), lp


def validate_params(params: SamplingParams, vocab_size: int) -> None:
    params.validate()
    for name, ids in (("logit_bias", params.logit_bias), ("stop_token_ids", params.stop_token_ids)):
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise InvalidInputError(f"{name} names token id {bad[0]}, outside the vocabulary (0..{vocab_size - 1})")


def validate_prompt(prompt: list[int], vocab_size: int) -> None:
    if not prompt:
        raise InvalidInputError("the prompt is empty: give at least one token")
    if min(prompt) >= 0 and max(prompt) < vocab_size:  # the common case at C speed (as server.prompts.check_ids)
        return
    for i, t in enumerate(prompt):
        if not 0 <= t < vocab_size:
            raise InvalidInputError(
                f"token id {t} at prompt position {i} is outside the vocabulary (0..{vocab_size - 1})"
            )


class _StopMatcher:
    """Holds back text that may be the start of a stop string; cuts at the first full match."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit, whether a stop string was hit)."""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = max((partial_suffix(self.pending, s) for s in self.stops), default=0)
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def partial_suffix(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop` (text to hold back)."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


def _top_rows(lp: mx.array, k: int) -> list[list[tuple[int, float]]]:
    """The k most likely (token, logprob) pairs of each row of lp [N, V], most likely first."""
    if k <= 0:
        return [[] for _ in range(lp.shape[0])]
    idx = mx.argpartition(-lp, k - 1, axis=-1)[:, :k]
    vals = mx.take_along_axis(lp, idx, axis=-1)
    order = mx.argsort(-vals, axis=-1)
    idx, vals = mx.take_along_axis(idx, order, axis=-1), mx.take_along_axis(vals, order, axis=-1)
    return [list(zip(i, v, strict=True)) for i, v in zip(idx.tolist(), vals.tolist(), strict=False)]


def _top(lp: mx.array, k: int) -> list[tuple[int, float]]:
    return _top_rows(lp[None], k)[0]


def stream_generate(
    model: Model,
    tokenizer: Tokenizer,
    prompt: list[int],
    params: SamplingParams,
    options: PrefillOptions | None = None,
    on_step: StepHook | None = None,
) -> Iterator[GenerationResult]:
    """Generate for one request; yields one result per token, the last with `finish_reason` set."""
    options = options or PrefillOptions()
    validate_params(params, model.args.vocab_size)
    validate_prompt(prompt, model.args.vocab_size)
    cache = model.make_cache()
    stops = set(params.stop_token_ids) | (set() if params.ignore_eos else tokenizer.eos_token_ids)
    matcher, detok = _StopMatcher(params.stop), tokenizer.detokenizer()
    path = options.path_for_prompt(len(prompt))
    base = GenerationResult(text="", token=None, prompt_tokens=len(prompt), prefill_path=path)
    base.chunk_size = options.chunk_size if path == "chunked" else None
    mx.reset_peak_memory()
    steps = generate_step(
        model,
        prompt,
        cache,
        sampler=make_sampler(params),
        logits_processors=make_logits_processors(params),
        key=make_key(params.seed),
        max_tokens=params.max_tokens,
        options=options,
        on_step=on_step,
    )
    t0 = time.perf_counter()
    for n, (token, lp) in enumerate(steps, start=1):
        now = time.perf_counter()
        if n == 1:
            base.prefill_seconds, t_first = now - t0, now
        base.decode_seconds, base.generation_tokens = now - t_first, n
        result = _token_result(base, token, lp, params)
        if token in stops:
            result.text, result.finish_reason = matcher.flush() + detok.flush(), "stop"
        else:
            result.text, hit = matcher.feed(detok.add(token))
            if hit:
                result.finish_reason = "stop"
            elif n == params.max_tokens:
                result.text += matcher.feed(detok.flush())[0] + matcher.flush()
                result.finish_reason = "length"
        yield result
        if result.finish_reason:
            return
    if params.max_tokens == 0:
        mx.eval(prefill(model, mx.array([prompt]), cache, options, on_step))
        base.prefill_seconds = time.perf_counter() - t0
        yield _final(base, "length")


def _token_result(base: GenerationResult, token: int, lp: mx.array, params: SamplingParams) -> GenerationResult:
    result = GenerationResult(**{**base.__dict__, "text": "", "token": token})
    result.peak_memory_gb = mx.get_peak_memory() / 1e9
    if params.logprobs is not None:
        result.logprob = lp[token].item()
        result.top_logprobs = _top(lp, params.logprobs)
    return result


def _final(base: GenerationResult, reason: str) -> GenerationResult:
    result = GenerationResult(**{**base.__dict__, "finish_reason": reason})
    result.peak_memory_gb = mx.get_peak_memory() / 1e9
    return result


@dataclass
class PromptScores:
    """Per prompt position: log P(token | prefix) (None for the first) and the top-k alternatives."""

    tokens: list[int]
    logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]] | None]
    greedy_next: int = 0  # argmax after the last prompt token


def head_rows(model: Model, h: mx.array) -> mx.array:
    """The head's logits for hidden rows h [n, hidden]; with the model's row bucket (NVIDIA GPUs) multiplied as
    the next multiple of it and cut back, so scoring a prompt meets only GEMM shapes the warm-up planned (see
    TextModel.row_bucket)."""
    n = h.shape[0]
    rows = bucketed(n, model.model.row_bucket)
    return model.head(h) if rows == n else model.head(pad_rows(h[None], rows)[0])[:n]


def warm_prefill_buckets(model: Model, options: PrefillOptions, steps: int = 2) -> int:
    """Prefill once at every bucketed row count (TextModel.row_bucket; nothing without one) of a prompt's first
    step and, with `steps` = 2, of its second (a filled KV cache, a GDN state carried in): the first prompt of a
    new bucket otherwise waits 5-11 ms on an H200 while MLX instantiates CUDA graphs for the step's new kernel
    topology (cuBLAS picks other GEMM kernels at other row counts; docs/BENCHMARKS.md, thirteenth pass). Each
    prompt is one token short of its bucket, padded as most lengths are, and none is longer than the model's
    context. Returns how many prompts ran."""
    bucket, step, context = model.model.row_bucket, options.step_size, model.args.max_position_embeddings
    if not bucket:
        return 0
    lengths = [n for s in range(steps) for rows in range(bucket, step + 1, bucket)
               if (n := s * step + rows - 1) <= context]
    V = model.args.vocab_size
    for n in lengths:
        cache = model.make_cache()
        logits = prefill(model, mx.array([[(7 * i + 1) % V for i in range(n)]]), cache, options)
        mx.eval(logits, cache_arrays(cache))
    return len(lengths)


def warm_head_rows(model: Model) -> None:
    """The head at every bucketed row count of a scoring slice (nothing without a bucket)."""
    bucket = model.model.row_bucket
    if not bucket:
        return
    dtype = model.model.embed_tokens(mx.array([0])).dtype  # the activations' dtype (a quantized table's too)
    for rows in range(bucket, SCORE_SLICE + 1, bucket):
        mx.eval(model.head(mx.zeros((rows, model.args.hidden_size), dtype)))


def score_prompt(
    model: Model,
    prompt: list[int],
    top_k: int = 0,
    options: PrefillOptions | None = None,
    on_step: StepHook | None = None,
) -> PromptScores:
    """Log-probabilities of every prompt token, computed slice by slice (full-vocab logits stay small)."""
    validate_prompt(prompt, model.args.vocab_size)
    options = options or PrefillOptions()
    cache, step = model.make_cache(), options.step_size
    ids = mx.array([prompt])
    hidden = []
    for s in range(0, len(prompt), step):
        n = min(step, len(prompt) - s)
        set_gdn_path(cache, options.method_for(n), options.chunk_size)
        hidden.append(model.hidden(ids[:, s : s + n], cache, options.submit_for(n))[0])
        mx.eval(hidden[-1], cache_arrays(cache))
        if on_step and s + step < len(prompt):
            on_step(s + step, len(prompt))
    h = mx.concatenate(hidden, axis=0)
    logprobs: list[float | None] = [None]
    tops: list[list[tuple[int, float]] | None] = [None]
    targets = mx.array(prompt[1:] + [0])
    for s in range(0, len(prompt), SCORE_SLICE):
        logits = head_rows(model, h[s : s + SCORE_SLICE]).astype(mx.float32)
        lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        picked = mx.take_along_axis(lp, targets[s : s + SCORE_SLICE, None], axis=-1)[:, 0]
        mx.eval(lp, picked)
        logprobs.extend(picked.tolist())
        tops.extend(_top_rows(lp, top_k))
        last = lp[-1]
    greedy = int(mx.argmax(last).item())
    return PromptScores(list(prompt), logprobs[: len(prompt)], tops[: len(prompt)], greedy)

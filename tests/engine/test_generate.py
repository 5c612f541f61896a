"""The generation loop: greedy/cached consistency, stops, logprobs, prompt scoring and input errors."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch

from engine.cache import KVCache
from engine.errors import InvalidInputError
from engine.generate import PrefillOptions, score_prompt
from engine.loading import load_model
from engine.sampling import SamplingParams
from tests.engine.hf_checkpoints import make_checkpoint
from tests.numerics import assert_close


def _run(engine, prompt, **kw):
    return list(engine.generate(engine.encode(prompt), SamplingParams(**kw)))


def test_greedy_tokens_and_logprobs_match_a_full_forward(demo_engine):
    prompt = demo_engine.encode("The quick brown fox")
    out = list(demo_engine.generate(prompt, SamplingParams(max_tokens=12, temperature=0, logprobs=3,
                                                           ignore_eos=True)))
    tokens = [r.token for r in out]
    logits = demo_engine.model(mx.array([prompt + tokens]))[0, len(prompt) - 1 : -1].astype(mx.float32)
    logprobs = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
    assert tokens == logprobs.argmax(-1).tolist()
    assert_close("token logprobs", [r.logprob for r in out], logprobs[np.arange(12), tokens], atol=1e-4)
    for r, row in zip(out, logprobs, strict=True):
        assert [t for t, _ in r.top_logprobs] == np.argsort(-row)[:3].tolist()
    assert out[-1].finish_reason == "length" and out[-1].generation_tokens == 12


def test_first_token_is_handed_out_before_any_decode_work_is_queued(demo_engine, monkeypatch):
    """Time to first token is prefill's alone: queueing a decode step costs host time (launch-bound on CUDA)."""
    import engine.generate as generate

    calls = []
    real = generate.compiled_decode(demo_engine.model)
    monkeypatch.setattr(generate, "compiled_decode", lambda model: lambda *a: calls.append(1) or real(*a))
    stream = demo_engine.generate(demo_engine.encode("hello"), SamplingParams(max_tokens=3, temperature=0,
                                                                              ignore_eos=True))
    first = next(stream)
    assert first.token is not None and calls == []
    assert len([first, *stream]) == 3 and len(calls) == 2  # tokens 2 and 3; none queued past max_tokens


def test_seed_reproduces_samples_and_other_seeds_differ(demo_engine):
    a = [r.token for r in _run(demo_engine, "hi", max_tokens=16, temperature=1.0, seed=7, ignore_eos=True)]
    b = [r.token for r in _run(demo_engine, "hi", max_tokens=16, temperature=1.0, seed=7, ignore_eos=True)]
    c = [r.token for r in _run(demo_engine, "hi", max_tokens=16, temperature=1.0, seed=8, ignore_eos=True)]
    assert a == b and a != c


def test_stop_string_is_matched_on_text_and_removed(demo_engine):
    full = "".join(r.text for r in _run(demo_engine, "abc", max_tokens=40, temperature=1.0, seed=3,
                                        ignore_eos=True))
    clean = [i for i in range(4, len(full) - 2) if full[i : i + 2].isprintable() and "\ufffd" not in full[i : i + 2]]
    stop = full[clean[0] : clean[0] + 2]
    out = _run(demo_engine, "abc", max_tokens=40, temperature=1.0, seed=3, stop=[stop], ignore_eos=True)
    assert "".join(r.text for r in out) == full[: full.find(stop)]
    assert out[-1].finish_reason == "stop"


def test_stop_token_ends_generation_without_its_text(demo_engine):
    free = _run(demo_engine, "xyz", max_tokens=20, temperature=1.0, seed=5, ignore_eos=True)
    stop_id = free[4].token
    first = next(i for i, r in enumerate(free) if r.token == stop_id)
    out = _run(demo_engine, "xyz", max_tokens=20, temperature=1.0, seed=5, stop_token_ids=[stop_id], ignore_eos=True)
    assert [r.token for r in out] == [r.token for r in free[: first + 1]]
    assert out[-1].finish_reason == "stop" and out[-1].text == ""


@pytest.mark.parametrize(
    "prompt, message",
    [([], "prompt is empty"), ([1, 2, 384], "token id 384 at prompt position 2"), ([-1], "token id -1")],
    ids=["empty", "too-large", "negative"],
)
def test_bad_prompt_is_rejected_clearly(demo_engine, prompt, message):
    with pytest.raises(InvalidInputError, match=message):
        list(demo_engine.generate(prompt, SamplingParams(max_tokens=2)))


def test_max_tokens_zero_runs_prefill_only(demo_engine):
    out = _run(demo_engine, "hello", max_tokens=0)
    assert len(out) == 1 and out[0].token is None and out[0].prefill_seconds > 0


@pytest.mark.parametrize("bucket", [0, 64], ids=["rows", "bucketed-rows"])
def test_prompt_scores_match_transformers_log_softmax(tmp_path, bucket):
    """Also with the row bucket of NVIDIA GPUs: the last prefill step (44 tokens) and the last scoring slice (44
    rows) are multiplied padded to 64 rows and cut back."""
    ck = make_checkpoint(tmp_path, seed=4, linear_num_value_heads=4)
    ids = [int(i) for i in np.random.default_rng(1).integers(0, ck.vocab_size, 300)]
    ref = torch.log_softmax(torch.from_numpy(ck.logits(ids)).double(), -1).numpy()
    model = load_model(tmp_path, mx.float32)
    model.model.row_bucket = bucket
    scores = score_prompt(model, ids, top_k=5, options=PrefillOptions(step_size=128))
    assert scores.logprobs[0] is None and scores.top_logprobs[0] is None
    assert_close("prompt logprobs", scores.logprobs[1:], ref[np.arange(len(ids) - 1), ids[1:]], atol=1e-4)
    for pos in (1, 150, 299):
        assert [t for t, _ in scores.top_logprobs[pos]] == np.argsort(-ref[pos - 1])[:5].tolist()
    assert scores.greedy_next == int(ref[-1].argmax())


@pytest.mark.parametrize("method", ["serial", "chunked"])
@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_warm_up_covers_a_two_step_prompt_on_a_gpu(demo_engine, monkeypatch, backend, method):
    """A GPU's warm-up also runs a prompt of two prefill steps (kernels compiled before a long first request);
    the CPU's stays short (nothing to compile, and a long prompt costs seconds there)."""
    seen = []
    monkeypatch.setattr(demo_engine.info, "backend", backend)
    monkeypatch.setattr(demo_engine.info.prefill, "method", method)
    monkeypatch.setattr(demo_engine, "generate", lambda prompt, params, on_step=None: seen.append(len(prompt)) or [])
    monkeypatch.setattr(demo_engine, "score", lambda *a, **k: None)
    warmed = []
    monkeypatch.setattr("engine.engine.warm_row_buckets", lambda *args: warmed.append(args))
    monkeypatch.setattr("engine.engine.warm_prefill_buckets", lambda *args: warmed.append(args))
    monkeypatch.setattr("engine.engine.warm_head_rows", lambda model: warmed.append(model))
    monkeypatch.setattr("engine.engine.warm_decode_lengths", lambda model, cache, token: warmed.append(
        [c.offset for c in cache if isinstance(c, KVCache)] + list(token.shape)))
    demo_engine.warm_up()
    p = demo_engine.info.prefill
    # the GEMMs at each row bucket of a step, a prefill at each with the engine's prefill options where that is
    # chunked, the head's rows (all nothing without a bucket, as on a CPU); then, on a GPU, the decode step's buffer
    # lengths from a prefilled two-token prompt's cache and its next token
    chunked = p.method_for(p.step_size) == "chunked"
    assert warmed == [
        (demo_engine.model.layers, p.step_size, demo_engine.model.model.row_bucket),
        *([(demo_engine.model, p)] if chunked else []), demo_engine.model,
        *([] if backend == "cpu" else [[2] * sum(not layer.is_linear for layer in demo_engine.model.layers) + [1]])]
    long = [n for n in seen if n > p.step_size]
    assert max(seen) < p.step_size if backend == "cpu" else long == [p.step_size + max(p.min_chunked_tokens, 2)]


def test_the_warm_up_prefills_each_row_bucket_of_a_first_and_a_second_step(tmp_path, monkeypatch):
    """`warm_prefill_buckets` prefills, each from a fresh cache and with the given options, one prompt a bucketed
    row count of a step: as a prompt's first step and, after a whole step, as its second (a filled KV cache); the
    prompts one token short of their bucket (padded, as most lengths are), none longer than the model's context.
    Nothing without a bucket."""
    from engine.generate import warm_prefill_buckets

    make_checkpoint(tmp_path, seed=4, linear_num_value_heads=4)
    model = load_model(tmp_path, mx.float32)
    options = PrefillOptions("chunked", step_size=48, min_chunked_tokens=8)
    steps = []  # (tokens of a step, the KV cache's offset before it, its GDN path)
    real = model.hidden

    def hidden(tokens, cache, submit_every=0):
        kv = next(c for c in cache if isinstance(c, KVCache))
        gdn = next(c for c in cache if not isinstance(c, KVCache))
        steps.append((tokens.shape[1], kv.offset, gdn.method))
        return real(tokens, cache, submit_every)

    monkeypatch.setattr(model, "hidden", hidden)
    model.model.row_bucket = 0
    assert warm_prefill_buckets(model, options) == 0 and steps == []
    model.model.row_bucket = 16
    assert warm_prefill_buckets(model, options) == 6
    assert steps == [(15, 0, "chunked"), (31, 0, "chunked"), (47, 0, "chunked"),
                     (48, 0, "chunked"), (15, 48, "chunked"), (48, 0, "chunked"), (31, 48, "chunked"),
                     (48, 0, "chunked"), (47, 48, "chunked")]
    steps.clear()
    assert warm_prefill_buckets(model, options, steps=1) == 3 and [s for s, _, _ in steps] == [15, 31, 47]
    steps.clear()
    model.args.max_position_embeddings = 63  # no prompt longer than the model's context
    assert warm_prefill_buckets(model, options) == 4 and [s for s, o, _ in steps if not o] == [15, 31, 47, 48]


def test_the_head_is_warmed_at_each_bucketed_row_count_of_a_scoring_slice(tmp_path, monkeypatch):
    from engine.generate import SCORE_SLICE, warm_head_rows

    make_checkpoint(tmp_path, seed=4, linear_num_value_heads=4)
    model = load_model(tmp_path, mx.float32)
    rows = []
    real = model.head
    monkeypatch.setattr(model, "head", lambda h: rows.append(h.shape) or real(h))
    model.model.row_bucket = 0  # no bucket (the CPU's and Metal's; the loader sets one on CUDA): nothing
    warm_head_rows(model)
    assert rows == []
    model.model.row_bucket = 64
    warm_head_rows(model)
    assert rows == [(n, model.args.hidden_size) for n in range(64, SCORE_SLICE + 1, 64)]

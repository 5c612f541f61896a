"""State carried across calls, on both GDN paths: cached decode and split prefill against transformers."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from engine.cache import FixedKV, cache_arrays
from engine.decode import decode_step
from engine.generate import PrefillOptions, prefill
from engine.loading import load_model
from tests.engine.hf_checkpoints import make_checkpoint
from tests.numerics import assert_close, assert_close_to_scale

REL = 1e-4
PATHS = {"serial": PrefillOptions(), "chunked-C16": PrefillOptions(method="chunked", chunk_size=16)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf-cache")
    ck = make_checkpoint(path, seed=11, linear_num_value_heads=4, linear_key_head_dim=24, linear_value_head_dim=16)
    ids = [int(i) for i in np.random.default_rng(5).integers(0, ck.vocab_size, 80)]
    return ck, load_model(path, mx.float32), ids, ck.logits(ids)


@pytest.mark.parametrize("path", list(PATHS))
def test_cached_decode_equals_full_forward(checkpoint, path):
    _, model, ids, expected = checkpoint
    cache = model.make_cache()
    logits = [prefill(model, mx.array([ids[:50]]), cache, PATHS[path])]
    for t in ids[50:]:
        logits.append(decode_step(model, mx.array([t]), cache))
    actual = np.array(mx.concatenate(logits, axis=0))  # predictions after positions 49..79
    assert_close_to_scale("decode logits", actual, expected[49:], rel=REL)


@pytest.mark.parametrize("split", [(40, 30), (1, 69), (64, 16)], ids=lambda s: f"{s[0]}+{s[1]}")
@pytest.mark.parametrize("path", list(PATHS))
def test_split_prefill_equals_one_shot(checkpoint, split, path):
    _, model, ids, expected = checkpoint
    ids = ids[: sum(split)]
    cache = model.make_cache()
    prefill(model, mx.array([ids[: split[0]]]), cache, PATHS[path])
    last = prefill(model, mx.array([ids[split[0] :]]), cache, PATHS[path])
    assert_close_to_scale("last logits", np.array(last[0]), expected[len(ids) - 1], rel=REL)


@pytest.mark.parametrize("path", list(PATHS))
def test_prefill_steps_smaller_than_prompt_match_one_step(checkpoint, path):
    _, model, ids, expected = checkpoint
    one, stepped = model.make_cache(), model.make_cache()
    options = PATHS[path]
    a = prefill(model, mx.array([ids]), one, PrefillOptions(options.method, options.chunk_size, step_size=4096))
    b = prefill(model, mx.array([ids]), stepped, PrefillOptions(options.method, options.chunk_size, step_size=24))
    assert_close_to_scale("last logits", np.array(b[0]), expected[-1], rel=REL)
    for i, (x, y) in enumerate(zip(cache_arrays(one), cache_arrays(stepped), strict=True)):
        assert x.shape == y.shape
        # relative to the array's scale, at the chunked path's fp32 gate: other chunk boundaries round otherwise
        assert_close_to_scale(f"cache array {i}", np.array(y), np.array(x), rel=1e-5)
    assert_close("logits", np.array(b), np.array(a), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("every", [1, 2])
@pytest.mark.parametrize("path", list(PATHS))
def test_a_step_submitted_in_parts_is_the_whole_step(checkpoint, path, every, monkeypatch):
    """A prefill step handed to the device every few layers (engine.generate.SUBMIT_MIN_TOKENS) computes the
    same arrays, bit for bit, as the step submitted whole; and it is submitted: once per `every` layers but the
    last, in every step."""
    _, model, ids, expected = checkpoint
    base = PATHS[path]
    whole, parts = model.make_cache(), model.make_cache()
    a = prefill(model, mx.array([ids]), whole, PrefillOptions(base.method, base.chunk_size, 48, submit_every=0))
    submitted = []
    real_async_eval = mx.async_eval
    monkeypatch.setattr(mx, "async_eval", lambda *xs: (submitted.append(len(xs)), real_async_eval(*xs)))
    options = PrefillOptions(base.method, base.chunk_size, 48, submit_every=every, submit_min_tokens=32)
    b = prefill(model, mx.array([ids]), parts, options)  # steps of 48 + 32 tokens
    layers = len(model.layers)
    assert submitted.count(2) == 2 * ((layers - 1) // every)  # (h, pending) within each step; cache per step: 1
    assert np.array_equal(np.array(b), np.array(a))
    assert_close_to_scale("last logits", np.array(b[0]), expected[-1], rel=REL)
    for x, y in zip(cache_arrays(whole), cache_arrays(parts), strict=True):
        assert np.array_equal(np.array(x), np.array(y))
    submitted.clear()
    prefill(model, mx.array([ids[:31]]), model.make_cache(), options)  # below submit_min_tokens: whole
    assert submitted.count(2) == 0


def test_a_cpu_prefill_waits_for_each_step(checkpoint, monkeypatch):
    """On the CPU no part of a prefill is queued without waiting (engine.generate.prefill says why): steps are
    evaluated one at a time and none is split into submissions."""
    _, model, ids, expected = checkpoint
    monkeypatch.setattr(mx, "async_eval", lambda *xs: pytest.fail("async_eval in a CPU prefill"))
    with mx.stream(mx.cpu):  # the CPU's prefill on any machine (on a GPU's the default device is the GPU)
        assert PrefillOptions().submit_every == 0
        last = prefill(model, mx.array([ids]), model.make_cache(), PrefillOptions(step_size=24))  # 4 steps
    assert_close_to_scale("last logits", np.array(last[0]), expected[-1], rel=REL)


@pytest.mark.parametrize("path", list(PATHS))
def test_attention_in_query_blocks_matches_transformers(checkpoint, path, monkeypatch):
    """Long steps run attention in query blocks (each against the keys up to its last query), within one step
    and against a filled cache: the logits at every position stay transformers'."""
    import engine.model as model_module

    _, model, ids, expected = checkpoint
    monkeypatch.setattr(model_module, "QUERY_BLOCK", 16)
    cache = model.make_cache(PATHS[path].method, PATHS[path].chunk_size)
    first = model(mx.array([ids[:30]]), cache)  # blocks of 16 + 14 queries
    second = model(mx.array([ids[30:]]), cache)  # 50 queries against 30 cached positions: 16 + 16 + 16 + 2
    actual = np.array(mx.concatenate([first[0], second[0]], axis=0))
    assert_close_to_scale("logits", actual, expected, rel=REL)


@pytest.mark.parametrize("n", [1, 3])
def test_fixed_kv_writes_at_its_offset_and_masks_what_is_filled(n):
    """FixedKV (the compiled decode's view of a KV cache) against plain NumPy indexing: the n new rows land at
    the offset and nothing else changes; the mask lets query i see positions <= offset + i. Layers sharing a
    memo get the same mask."""
    rng = np.random.default_rng(n)
    keys, values = rng.standard_normal((2, 1, 2, 12, 4)).astype(np.float32)
    k, v = rng.standard_normal((2, 1, 2, n, 4)).astype(np.float32)
    shared: dict = {}
    a = FixedKV(mx.array(keys), mx.array(values), mx.array(5, dtype=mx.int32), shared)
    got_k, got_v = a.update_and_fetch(mx.array(k), mx.array(v))
    want_k, want_v = keys.copy(), values.copy()
    want_k[:, :, 5 : 5 + n], want_v[:, :, 5 : 5 + n] = k, v
    np.testing.assert_array_equal(np.array(got_k), want_k)
    np.testing.assert_array_equal(np.array(got_v), want_v)
    want_mask = np.arange(12)[None, :] <= 5 + np.arange(n)[:, None]
    np.testing.assert_array_equal(np.array(a.mask(n))[0, 0], want_mask)
    b = FixedKV(mx.array(keys), mx.array(values), a.offset, shared)
    assert b.mask(n) is a.mask(n)

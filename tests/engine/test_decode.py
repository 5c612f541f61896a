"""The compiled decode step (engine.decode): the same logits and caches as transformers' full forward and as the
op-by-op step, across the KV buffers' growth (a new trace), with grouped attention heads."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from engine.cache import KVCache
from engine.decode import ENV_COMPILE, CompiledDecode, compiled_decode, decode_step, warm_decode_lengths
from engine.generate import prefill
from engine.loading import load_model
from tests.engine.hf_checkpoints import make_checkpoint
from tests.numerics import assert_close_to_scale

PROMPT = KVCache.step - 6  # decoding crosses the buffers' first growth


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf-decode")
    ck = make_checkpoint(path, seed=21, num_attention_heads=4, num_key_value_heads=1)
    ids = [int(i) for i in np.random.default_rng(9).integers(0, ck.vocab_size, PROMPT + 12)]
    return load_model(path, mx.float32), ids, ck.logits(ids)


def test_compiled_decode_matches_transformers_across_buffer_growth(checkpoint):
    model, ids, expected = checkpoint
    cache = model.make_cache()
    step = CompiledDecode(model)
    logits = [prefill(model, mx.array([ids[:PROMPT]]), cache)]
    for t in ids[PROMPT:]:
        logits.append(step(mx.array([t]), cache))
    assert [c.offset for c in cache if isinstance(c, KVCache)][0] == len(ids)
    actual = np.array(mx.concatenate(logits, axis=0))  # predictions after positions PROMPT-1 ..
    assert_close_to_scale("decode logits", actual, expected[PROMPT - 1 :], rel=1e-4)


def test_compiled_and_op_by_op_steps_agree_token_by_token(checkpoint):
    model, ids, _ = checkpoint
    caches = [model.make_cache(), model.make_cache()]
    for c in caches:
        mx.eval(prefill(model, mx.array([ids[:PROMPT]]), c))
    step = CompiledDecode(model)
    for t in ids[PROMPT:]:
        token = mx.array([t])
        a, b = step(token, caches[0]), decode_step(model, token, caches[1])
        assert_close_to_scale("logits", np.array(a), np.array(b), rel=1e-5)
    for c0, c1 in zip(*caches, strict=True):
        if isinstance(c0, KVCache):  # the compiled step's buffers are whole; compare what is filled
            assert c0.offset == c1.offset
            for x, y in ((c0.keys, c1.keys), (c0.values, c1.values)):
                assert_close_to_scale("kv", np.array(x[..., : c0.offset, :]), np.array(y[..., : c1.offset, :]),
                                      rel=1e-5)
        else:
            for x, y in ((c0.conv_state, c1.conv_state), (c0.state, c1.state)):
                assert_close_to_scale("gdn cache", np.array(x), np.array(y), rel=1e-5)


@pytest.mark.parametrize("step", [KVCache.step, KVCache.CUDA_STEP], ids=["step", "cuda-step"])
def test_the_warm_up_traces_the_decode_step_at_each_buffer_length_and_leaves_the_cache(tmp_path, monkeypatch, step):
    """After `warm_decode_lengths` a request whose KV buffers have a warmed length decodes without tracing the
    step again (a trace is a call of the Python step: mx.compile runs it only to trace), one longer than the
    warmed context traces once; the prefilled cache it started from is left as it was. At the KV step of the
    CPU / Metal and of NVIDIA GPUs."""
    import engine.decode as decode_module

    traced = []
    real = decode_module.decode_step
    monkeypatch.setattr(decode_module, "decode_step", lambda *a: traced.append(a[2]) or real(*a))
    make_checkpoint(tmp_path, seed=3, num_attention_heads=4, num_key_value_heads=2)
    model = load_model(tmp_path, mx.float32)
    model.kv_step = step
    cache = model.make_cache()
    token = mx.argmax(prefill(model, mx.array([[5, 7]]), cache), axis=-1)
    before = [np.array(a) for c in cache for a in c.arrays]
    assert warm_decode_lengths(model, cache, token, context=3 * step) == 3
    lengths = {c.keys.shape[2] for trial in traced for c in trial if hasattr(c, "keys")}
    assert len(traced) == 3 and lengths == {step, 2 * step, 3 * step}
    assert [c.offset for c in cache if isinstance(c, KVCache)] == [2]
    for x, y in zip(before, (np.array(a) for c in cache for a in c.arrays), strict=True):
        np.testing.assert_array_equal(x, y)

    def decode(prompt_len: int, tokens: int = 3) -> None:
        c = model.make_cache()
        t = mx.argmax(prefill(model, mx.array([[i % 50 + 1 for i in range(prompt_len)]]), c), axis=-1)
        for _ in range(tokens):
            t = mx.argmax(compiled_decode(model)(t, c), axis=-1)
        mx.eval(t)

    traced.clear()
    decode(step + 100)  # buffers of 2 x step: warmed
    decode(2 * step - 1)  # crosses into 3 x step while decoding: warmed
    assert traced == []
    decode(3 * step + 1)  # 4 x step: not warmed
    assert len(traced) == 1
    # no buffer longer than the model's context needs
    model.args.max_position_embeddings = step + 1
    assert warm_decode_lengths(model, cache, token, context=8 * step) == 2


@pytest.mark.parametrize("norms", ["in-kernel", "declined"])
def test_the_fused_decode_attention_is_wired_to_its_contract(checkpoint, monkeypatch, norms):
    """On NVIDIA GPUs the compiled step hands `kernels.attention.decode_attention` this token's raw key and value
    projections, the buffers before its write, n = offset + 1, the packed query|gate projection and the layer's
    q / k norms and RoPE (`QKNorm`, applied by the kernel at position n - 1), and takes the gated output [B, 1,
    H * D] and the written buffers; where it declines that (None), the step prepares q / k itself and hands it
    them instead. With a stand-in that computes that documented contract in MLX ops (the kernels themselves are
    checked in tests/kernels), the compiled step's logits and caches equal the op-by-op step's, across a buffer
    growth; a wrong n, position, norm or layout would not."""
    import mlx.nn as nn

    import engine.model as model_module

    calls = []

    def contract(q, k, v, k_cache, v_cache, n_keys, qg, scale, norm=None):
        calls.append("norm" if norm else "prepared")
        B, Hkv, _, D = k_cache.shape
        if norm is not None:
            if norms == "declined":
                return None
            assert q is None
            Hq = qg.shape[-1] // (2 * D)
            q = qg.reshape(B, 1, Hq, 2 * D)[..., :D]
            position = (n_keys - 1).reshape(())
            q, k = (nn.RoPE(norm.rotary_dim, traditional=False, base=norm.base)(
                        mx.fast.rms_norm(x, w, norm.eps).transpose(0, 2, 1, 3), offset=position)
                    for x, w in ((q, norm.wq), (k.reshape(B, 1, Hkv, D), norm.wk)))
        B, Hq, _, D = q.shape
        k = k.reshape(B, Hkv, 1, D)  # [B, Hkv, 1, D] or [B, 1, Hkv * D]: one layout at one token
        v = v.reshape(B, 1, k_cache.shape[1], D).transpose(0, 2, 1, 3)  # [B, Hkv, 1, D] or [B, 1, Hkv * D]
        positions = mx.arange(k_cache.shape[2])
        at = (positions == n_keys - 1)[:, None]
        k_cache, v_cache = mx.where(at, k, k_cache), mx.where(at, v, v_cache)
        rep = Hq // k_cache.shape[1]
        kr, vr = mx.repeat(k_cache, rep, axis=1), mx.repeat(v_cache, rep, axis=1)
        s = mx.where((positions < n_keys)[None, None, None, :], (q * scale) @ kr.swapaxes(-1, -2), -mx.inf)
        o = (mx.softmax(s, axis=-1, precise=True) @ vr).transpose(0, 2, 1, 3).reshape(B, 1, Hq * D)
        gate = qg.reshape(B, 1, Hq, 2 * D)[..., D:].reshape(B, 1, Hq * D)
        return o * mx.sigmoid(gate), k_cache, v_cache

    monkeypatch.setattr(model_module, "decode_attention", contract)
    model, ids, _ = checkpoint
    caches = [model.make_cache(), model.make_cache()]
    for c in caches:
        mx.eval(prefill(model, mx.array([ids[:PROMPT]]), c))
    step = CompiledDecode(model)
    for t in ids[PROMPT:]:
        token = mx.array([t])
        a, b = step(token, caches[0]), decode_step(model, token, caches[1])
        assert_close_to_scale("logits", np.array(a), np.array(b), rel=1e-5)
    for c0, c1 in zip(*caches, strict=True):
        if isinstance(c0, KVCache):
            for x, y in ((c0.keys, c1.keys), (c0.values, c1.values)):
                assert_close_to_scale("kv", np.array(x[..., : c0.offset, :]), np.array(y[..., : c1.offset, :]),
                                      rel=1e-5)
    assert set(calls) == ({"norm"} if norms == "in-kernel" else {"norm", "prepared"})


def test_the_fused_qk_norm_rope_is_wired_to_its_contract(checkpoint, monkeypatch):
    """On NVIDIA GPUs each attention layer hands `kernels.attention.qk_norm_rope` its packed query|gate and key
    projections, its norms (`QKNorm`: weights, eps, rotary dims, base) and position (an int in prefill, the
    compiled step's device offset in decode) and takes q, k in the attention layout. With a stand-in computing
    that documented contract in MLX ops, prefill and compiled decode still match transformers; a wrong position or
    layout would not."""
    import engine.model as model_module

    calls = []

    def contract(qg, k, norm, position, n_heads, n_kv_heads):
        calls.append(type(position).__name__)
        wq, wk, eps, rotary_dim, base = norm.wq, norm.wk, norm.eps, norm.rotary_dim, norm.base
        B, T, _ = qg.shape
        D = wq.shape[0]
        q = qg.reshape(B, T, n_heads, 2 * D)[..., :D]

        def rope(x):
            return mx.fast.rope(x, rotary_dim, traditional=False, base=base, scale=1.0, offset=position)

        return (rope(mx.fast.rms_norm(q, wq, eps).transpose(0, 2, 1, 3)),
                rope(mx.fast.rms_norm(k.reshape(B, T, n_kv_heads, D), wk, eps).transpose(0, 2, 1, 3)))

    def unfused_decode(q, k, v, k_cache, v_cache, n_keys, qg, scale, norm=None):
        # the decode kernel's own norms / RoPE (PREP) off, so that decode too goes through qk_norm_rope
        return None if norm is not None else decode_attention(q, k, v, k_cache, v_cache, n_keys, qg, scale)

    decode_attention = model_module.decode_attention
    monkeypatch.setattr(model_module, "qk_norm_rope", contract)
    monkeypatch.setattr(model_module, "decode_attention", unfused_decode)
    test_compiled_decode_matches_transformers_across_buffer_growth(checkpoint)
    assert {"int", "array"} <= set(calls), set(calls)


def test_the_fused_add_norm_projections_are_wired_to_their_contract(checkpoint, monkeypatch):
    """On NVIDIA GPUs each layer hands `kernels.gemv.add_norm_gemv` its residual stream, the pending output, a
    norm's weight and eps, and the fused weight after that norm: the mixer's input projections (their outputs
    split as `project` splits them) and the MLP's gate | up (`glu`: silu(gate) * up); it takes h = x + r and
    the projection of the normed sum. With a stand-in computing that documented contract in MLX ops (wherever it
    is called: prefill too), prefill and compiled decode still match transformers; swapped halves, a wrong norm
    or the residual and output in the wrong places would not."""
    import engine.model as model_module

    calls = []

    def contract(x, r, norm_w, eps, w, glu=False):
        calls.append((x.shape, glu))
        h = x + r
        y = mx.fast.rms_norm(h, norm_w, eps) @ w.T
        if glu:
            gate, up = mx.split(y, 2, axis=-1)
            y = gate * mx.sigmoid(gate) * up
        return h, y

    monkeypatch.setattr(model_module, "add_norm_gemv", contract)
    test_compiled_decode_matches_transformers_across_buffer_growth(checkpoint)
    assert {glu for shape, glu in calls if shape[-2] == 1} == {False, True}


def test_switched_off_or_before_prefill_the_step_runs_op_by_op(checkpoint, monkeypatch):
    model, ids, _ = checkpoint
    step = CompiledDecode(model)
    traced = []
    real = step._step
    step._step = lambda *a: traced.append(1) or real(*a)
    cache = model.make_cache()
    first = step(mx.array([ids[0]]), cache)  # empty caches: no fixed shapes yet
    assert traced == [] and first.shape == (1, model.args.vocab_size)
    monkeypatch.setenv(ENV_COMPILE, "0")
    step(mx.array([ids[1]]), cache)
    assert traced == []
    monkeypatch.delenv(ENV_COMPILE)
    step(mx.array([ids[2]]), cache)
    assert traced == [1]


@pytest.mark.parametrize("when", ["tracing", "running"])
def test_a_step_that_cannot_be_compiled_falls_back_op_by_op(checkpoint, caplog, monkeypatch, when):
    """Tracing or the first compiled run failing (a backend whose compile cannot take a primitive) leaves the
    caches untouched and decodes op by op from then on."""
    model, ids, expected = checkpoint
    step = CompiledDecode(model)
    cache = model.make_cache()
    mx.eval(prefill(model, mx.array([ids[:PROMPT]]), cache))
    if when == "tracing":
        def broken(*_):
            raise RuntimeError("no compile here")

        step._step = broken
    else:
        real_eval = mx.eval

        def eval_once_broken(*a):
            monkeypatch.setattr(mx, "eval", real_eval)
            raise RuntimeError("no compile here")

        monkeypatch.setattr(mx, "eval", eval_once_broken)
    logits = [step(mx.array([t]), cache) for t in ids[PROMPT : PROMPT + 3]]
    assert step.broken == "RuntimeError: no compile here" and "decoding op by op" in caplog.text
    assert_close_to_scale("logits", np.array(mx.concatenate(logits)), expected[PROMPT : PROMPT + 3], rel=1e-4)

"""Whole-model gates for --gdn-chunked: logits at every position equal the serial path's."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from engine.cache import set_gdn_path
from engine.loading import load_model
from tests.engine.hf_checkpoints import make_checkpoint
from tests.numerics import assert_close_to_scale

LENGTHS = [1, 31, 32, 33, 63, 64, 65, 511, 512, 513, 1009]
REL = 1e-4  # max |diff| relative to max |logit|, fp32


@pytest.fixture(scope="module")
def model_and_reference(tmp_path_factory):
    """A random Qwen3.5 with Hk != Hv, Dk != Dv, and serial-path logits for the longest prompt."""
    path = tmp_path_factory.mktemp("chunked-model")
    make_checkpoint(path, seed=21, linear_num_value_heads=4, linear_key_head_dim=32, linear_value_head_dim=16)
    model = load_model(path, mx.float32)
    ids = [int(i) for i in np.random.default_rng(21).integers(0, model.args.vocab_size, max(LENGTHS))]
    return model, ids


def _logits(model, ids, method, chunk_size=64):
    cache = model.make_cache()
    set_gdn_path(cache, method, chunk_size)
    return np.array(model(mx.array([ids]), cache)[0].astype(mx.float32))


@pytest.mark.parametrize("C", [32, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("T", LENGTHS, ids=lambda t: f"T{t}")
def test_chunked_prefill_logits_match_serial_at_every_position(model_and_reference, T, C):
    model, ids = model_and_reference
    serial = _logits(model, ids[:T], "serial")
    chunked = _logits(model, ids[:T], "chunked", C)
    assert_close_to_scale(f"logits T={T} C={C}", chunked, serial, rel=REL)
    flips = np.flatnonzero(chunked.argmax(-1) != serial.argmax(-1))
    assert flips.size == 0, f"argmax flips at positions {flips[:10].tolist()}"


@pytest.mark.parametrize("tf32", ["0", "1"], ids=lambda v: f"TF32={v}")
@pytest.mark.parametrize("T", [65, 1009], ids=lambda t: f"T{t}")
def test_bf16_chunked_prefill_matches_serial_to_bf16_rounding(tmp_path_factory, monkeypatch, T, tf32):
    """The bf16 model (on CUDA: the kernels' plain-TF32 products): logits within 0.1 of the logit scale of the
    serial path's, and a top token that differs only where the serial top two are closer than that row's
    difference (a near-tie that rounding decides; a wrong kernel breaks the scale bound first)."""
    monkeypatch.setenv("MLX_ENABLE_TF32", tf32)  # read per call by the kernels (no effect on the CPU)
    path = tmp_path_factory.mktemp("bf16-model")
    make_checkpoint(path, seed=21, linear_num_value_heads=4, linear_key_head_dim=32, linear_value_head_dim=16)
    model = load_model(path, mx.bfloat16)
    ids = [int(i) for i in np.random.default_rng(21).integers(0, model.args.vocab_size, T)]
    serial, chunked = (_logits(model, ids, m) for m in ("serial", "chunked"))
    assert_close_to_scale(f"bf16 logits T={T}", chunked, serial, rel=0.1)
    top2 = np.sort(serial, axis=-1)[:, -2:]
    margin, row_diff = top2[:, 1] - top2[:, 0], np.abs(chunked - serial).max(axis=-1)
    flips = np.flatnonzero(chunked.argmax(-1) != serial.argmax(-1))
    decisive = flips[margin[flips] > 2 * row_diff[flips]]
    assert decisive.size == 0, f"top token changed where the margin was clear: positions {decisive[:10].tolist()}"


def test_softplus_overflow_stays_finite_on_both_paths(model_and_reference):
    """a + dt_bias above 88 (log(1 + e^x) overflows without the threshold): both paths finite and equal."""
    model, ids = model_and_reference
    gdn = model.layers[0].linear_attn
    saved = gdn.dt_bias
    gdn.dt_bias = mx.full(saved.shape, 200.0)
    try:
        serial, chunked = _logits(model, ids[:100], "serial"), _logits(model, ids[:100], "chunked", 32)
    finally:
        gdn.dt_bias = saved
    assert np.isfinite(chunked).all() and np.isfinite(serial).all()
    assert_close_to_scale("logits", chunked, serial, rel=REL)


@pytest.mark.parametrize("method", ["serial", "chunked"])
def test_a_bf16_model_keeps_bf16_through_layers_and_caches(tmp_path, monkeypatch, method):
    """As transformers does in bf16: every layer's output, the hidden state, the KV and conv caches stay bf16
    after a prefill on either GDN path and after decode steps (an fp32 core output would promote the residual
    stream, the KV cache and every later matmul; only the recurrent state is fp32)."""
    from engine.decode import compiled_decode
    from engine.model import DecoderLayer

    make_checkpoint(tmp_path, seed=5, linear_num_value_heads=4, linear_key_head_dim=32, linear_value_head_dim=16)
    model = load_model(tmp_path, mx.bfloat16)
    seen: list[mx.Dtype] = []
    original = DecoderLayer.residual_step

    def spy(self, h, pending, cache, rows=None):
        out = original(self, h, pending, cache, rows)
        seen.extend(x.dtype for x in out)
        return out

    cache = model.make_cache()
    set_gdn_path(cache, method, 16)
    ids = mx.array([[int(i) for i in np.random.default_rng(5).integers(0, model.args.vocab_size, 40)]])
    monkeypatch.setattr(DecoderLayer, "residual_step", spy)
    hidden = model.hidden(ids, cache)
    step = compiled_decode(model)
    for token in (3, 4):
        step(mx.array([token]), cache)
    assert hidden.dtype == mx.bfloat16 and set(seen) == {mx.bfloat16}, set(seen)
    for c in cache:
        arrays = [c.conv_state] if hasattr(c, "conv_state") else [c.keys, c.values]
        assert {a.dtype for a in arrays} == {mx.bfloat16}, type(c).__name__
        if hasattr(c, "state"):
            assert c.state.dtype == mx.float32

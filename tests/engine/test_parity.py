"""Logits at every position against transformers' PyTorch Qwen3.5 on the CPU (the reference)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch

from engine.loading import load_model
from tests.engine.hf_checkpoints import make_checkpoint
from tests.numerics import assert_close_to_scale, report

LOGIT_REL_FP32 = 1e-4  # max |diff| relative to max |logit|
CASES = {
    # value heads grouped onto key heads, Dk != Dv, explicit irregular layer_types
    "Hk2-Hv4-Dk16-Dv24-layers-LFLL-T40": (
        dict(linear_num_value_heads=4, layer_types=["linear_attention", "full_attention"] + ["linear_attention"] * 2),
        40,
    ),
    # VLM checkpoint: nested config, model.language_model.* keys, model.visual.* and mtp.* to drop, untied head
    "nested-vlm-junk-untied-T30": (dict(nested=True, junk_tensors=True, tie_word_embeddings=False), 30),
    # layer_types absent (derived from full_attention_interval); T crosses the 64-token chunk of transformers
    "interval2-Hk4-Hv4-T100": (dict(full_attention_interval=2, linear_num_key_heads=4, linear_num_value_heads=4), 100),
}


def _ids(n: int, vocab: int, seed: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).integers(0, vocab, n)]


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_fp32_logits_match_transformers_at_every_position(case, tmp_path):
    overrides, T = CASES[case]
    ck = make_checkpoint(tmp_path, seed=len(case), **overrides)
    ids = _ids(T, ck.vocab_size, seed=T)
    expected = ck.logits(ids)
    actual = np.array(load_model(tmp_path, mx.float32)(mx.array([ids]))[0])
    assert_close_to_scale(f"{case} logits", actual, expected, rel=LOGIT_REL_FP32)
    assert (actual.argmax(-1) == expected.argmax(-1)).all(), "argmax differs at some position"


def test_bf16_logits_track_transformers_fp32(tmp_path):
    """bf16 gate (stated tolerance): vs the fp32 reference, argmax flips no more than 1.5x transformers' own
    bf16 run's + 1 (or 1% of positions, if more), max |diff| <= 5% of the logit scale, and relative RMS error
    no worse than 1.5x transformers' own bf16 run (or 3%). Both round the GDN core's output to bf16.

    initializer_range 0.035 keeps the reference argmax mostly not the input token, yet decisive enough that
    transformers' own bf16 run agrees with fp32 at >= 99% of positions.
    """
    ck = make_checkpoint(tmp_path, seed=3, linear_num_value_heads=4, hidden_size=128, initializer_range=0.035)
    ids = _ids(300, ck.vocab_size, seed=3)
    ref32 = ck.logits(ids)
    ck.model.to(torch.bfloat16)
    ref16 = ck.logits(ids)
    ours = np.array(load_model(tmp_path, mx.bfloat16)(mx.array([ids]))[0].astype(mx.float32))
    flips, hf_flips = ((x.argmax(-1) != ref32.argmax(-1)).sum() for x in (ours, ref16))
    assert flips <= max(1.5 * hf_flips + 1, 0.01 * len(ids)), f"argmax flips {flips}, transformers bf16 {hf_flips}"
    stats, hf_stats = report(ours, ref32), report(ref16, ref32)
    assert stats["max_abs"] <= 0.05 * stats["scale"], stats
    assert stats["rel_rms"] <= max(1.5 * hf_stats["rel_rms"], 0.03), (stats, hf_stats)

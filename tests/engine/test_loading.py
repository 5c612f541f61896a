"""Checkpoint layouts, quantized MLX checkpoints, and the errors a user sees for broken ones."""

from __future__ import annotations

import copy
import json
import shutil

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from engine.convert import convert
from engine.demo import write_byte_tokenizer
from engine.engine import Engine
from engine.errors import ModelLoadError
from engine.loading import load_model, resolve_model_path
from engine.sampling import SamplingParams
from tests.engine.hf_checkpoints import make_checkpoint
from tests.numerics import assert_close_to_scale


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    make_checkpoint(path, seed=2, linear_num_value_heads=4)
    write_byte_tokenizer(path)
    return path


def _logits(model, ids=(1, 5, 9, 200, 33, 7)) -> np.ndarray:
    return np.array(model(mx.array([list(ids)]))[0].astype(mx.float32))


def test_converted_checkpoint_is_not_shifted_twice(hf_dir, tmp_path):
    """Regression (mlx-lm PR #928/#1623): a converted checkpoint (conv [C,K,1], norms already 1+w) must load
    unchanged; shifting again on another signal gave wrong logits."""
    convert(hf_dir, tmp_path / "mlx")
    assert "language_model.model.norm.weight" in mx.load(str(tmp_path / "mlx" / "model.safetensors"))
    assert_close_to_scale("logits", _logits(load_model(tmp_path / "mlx", mx.float32)),
                          _logits(load_model(hf_dir, mx.float32)), rel=1e-6)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_checkpoint_loads_and_generates(demo_dir, tmp_path, bits):
    convert(demo_dir, tmp_path / "q", bits=bits, group_size=64)
    assert json.loads((tmp_path / "q" / "config.json").read_text())["quantization"]["bits"] == bits
    engine = Engine.load(str(tmp_path / "q"), "float32")
    assert isinstance(engine.model.layers[0].mlp.fused_proj, nn.QuantizedLinear)  # gate | up, still quantized
    out = list(engine.generate(engine.encode("hello"), SamplingParams(max_tokens=8, temperature=0)))
    assert out[-1].generation_tokens == 8 or out[-1].finish_reason == "stop"
    # loading reproduces the in-memory quantized model exactly, which tracks the full-precision one
    reference = load_model(demo_dir, mx.float32)
    full = _logits(reference)
    nn.quantize(reference, group_size=64, bits=bits)
    np.testing.assert_array_equal(_logits(engine.model), _logits(reference))
    assert np.corrcoef(_logits(engine.model).ravel(), full.ravel())[0, 1] > (0.6 if bits == 4 else 0.99)


def test_gates_stay_fp32_in_a_bf16_model(hf_dir):
    model = load_model(hf_dir, mx.bfloat16)
    gdn = model.layers[0].linear_attn
    assert gdn.A_log.dtype == mx.float32 and gdn.dt_bias.dtype == mx.float32
    assert gdn.fused_proj.weight.dtype == mx.bfloat16


def test_sharded_checkpoint_with_index(hf_dir, tmp_path):
    tensors = load_file(str(hf_dir / "model.safetensors"))
    names = sorted(tensors)
    shards = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
    shutil.copytree(hf_dir, tmp_path / "s")
    (tmp_path / "s" / "model.safetensors").unlink()
    for fname, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(tmp_path / "s" / fname), metadata={"format": "pt"})
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (tmp_path / "s" / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_close_to_scale("logits", _logits(load_model(tmp_path / "s", mx.float32)),
                          _logits(load_model(hf_dir, mx.float32)), rel=1e-6)


def _broken_copy(src, dst, edit):
    shutil.copytree(src, dst)
    edit(dst)
    return dst


def _set_model_type(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(cfg))


def _drop_tensor(d):
    tensors = load_file(str(d / "model.safetensors"))
    del tensors["model.layers.2.linear_attn.A_log"]
    save_file(tensors, str(d / "model.safetensors"))


def _truncate(d):
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set_model_type, "unsupported model type 'llama'"),
        (_drop_tensor, "missing 1 tensors: model.layers.2.linear_attn.A_log"),
        (_truncate, "is truncated"),
        (lambda d: (d / "config.json").unlink(), "has no config.json"),
        (lambda d: (d / "config.json").write_text("{not json"), "is not valid JSON"),
    ],
    ids=["wrong-model-type", "missing-tensor", "truncated-safetensors", "no-config", "bad-json"],
)
def test_broken_checkpoint_gives_a_clear_error(hf_dir, tmp_path, edit, message):
    broken = _broken_copy(hf_dir, tmp_path / "broken", edit)
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Engine.load(str(broken))


def test_missing_directory_is_named():
    with pytest.raises(ModelLoadError, match="model directory ./no/such/dir does not exist"):
        resolve_model_path("./no/such/dir")


def test_offline_hub_repo_fails_with_one_sentence():
    with pytest.raises(ModelLoadError, match=r"'nobody-xyz/not-a-model'.*--model demo"):
        resolve_model_path("nobody-xyz/not-a-model")


@pytest.mark.parametrize("bits", [None, 4])
def test_fused_projections_compute_what_the_separate_layers_do(hf_dir, bits):
    """Loading joins the layers that read one input (GDN qkv | z | b | a, attention q | k | v, MLP gate | up) into
    one matmul each; logits stay those of the separate layers, plain or quantized."""
    separate = load_model(hf_dir, mx.float32, fuse=False)
    if bits:
        nn.quantize(separate, group_size=32, bits=bits)
    fused = copy.deepcopy(separate)
    fused.fuse_projections()
    fused.fuse_projections()  # a second call changes nothing
    for layer in fused.layers:
        mixer = layer.linear_attn if layer.is_linear else layer.self_attn
        assert "fused_proj" in mixer and "fused_proj" in layer.mlp
        assert not any(name in mixer for name in mixer.PROJECTIONS)
    # the same dot products; BLAS may block a wider matrix differently: fp32 rounding, not an equality
    assert_close_to_scale("logits", _logits(fused), _logits(separate), rel=1e-5)

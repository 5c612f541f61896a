"""Random Qwen3.5 checkpoints written by transformers (the reference we did not write), for parity tests.

Every norm weight, A_log and dt_bias is randomised: the default init (zeros for the (1+w) norms, ones for the
gated norm) would hide offset bugs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

BASE_TEXT = {
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 2,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 24,
    "linear_conv_kernel_dim": 4,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 4096,
    "initializer_range": 0.1,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25},
}
TINY_VISION = {
    "depth": 1,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 64,
    "patch_size": 4,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}


@dataclass
class HFCheckpoint:
    path: Path
    model: torch.nn.Module
    vocab_size: int

    def logits(self, ids: list[int]) -> np.ndarray:
        """Reference fp32 logits [T, V] from transformers on the CPU."""
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids])).logits[0]
        return out.float().numpy()


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Give norms, A_log and dt_bias non-default values, including a few strongly decaying heads."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("linear_attn.norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("norm.weight"):  # zero-centred (1 + w) norms
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("A_log"):
                p.copy_(torch.log(torch.empty(p.shape).uniform_(0.01, 16, generator=g)))
            elif name.endswith("dt_bias"):
                p.copy_(torch.randn(p.shape, generator=g))


def make_checkpoint(
    path: Path,
    *,
    seed: int = 0,
    nested: bool = False,
    junk_tensors: bool = False,
    full_attention_interval: int | None = None,
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> HFCheckpoint:
    """Build, randomise and `save_pretrained` a text model (or a VLM wrapper around one when `nested`)."""
    from transformers import (
        Qwen3_5Config,
        Qwen3_5ForCausalLM,
        Qwen3_5ForConditionalGeneration,
        Qwen3_5TextConfig,
    )

    torch.manual_seed(seed)
    text = {**BASE_TEXT, **overrides}
    if full_attention_interval:  # transformers derives layer_types from it; we then drop them from the file
        text["full_attention_interval"] = full_attention_interval
    if nested:
        tied = text["tie_word_embeddings"]
        model = Qwen3_5ForConditionalGeneration(
            Qwen3_5Config(text_config=text, vision_config=TINY_VISION, tie_word_embeddings=tied)
        )
    else:
        model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**text))
    randomise(model, seed)
    model = model.to(dtype).eval()
    torch_gdn_reference()
    model.save_pretrained(str(path))
    if junk_tensors:
        _add_junk(path)
    if full_attention_interval:
        _drop_layer_types(path, full_attention_interval)
    return HFCheckpoint(path, model, text["vocab_size"])


def torch_gdn_reference() -> None:
    """Make transformers' Qwen3.5 run its own PyTorch GDN and conv code on the CPU.

    transformers binds flash-linear-attention's Triton kernels at import time when fla is installed (as on the GPU
    machine); they cannot take CPU tensors, and the reference should be transformers' own code anyway.
    """
    import inspect

    from transformers.models.qwen3_5 import modeling_qwen3_5 as m

    for name in ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule", "causal_conv1d_fn",
                 "causal_conv1d_update"):
        fn = getattr(m, name, None)
        if fn is not None:
            setattr(m, name, inspect.unwrap(fn))


def _add_junk(path: Path) -> None:
    """Append MTP-head tensors (as in the published checkpoint) that the loader must drop."""
    f = path / "model.safetensors"
    tensors = load_file(str(f))
    tensors["mtp.fc.weight"] = torch.randn(8, 8)
    tensors["mtp.layers.0.input_layernorm.weight"] = torch.randn(8)
    save_file(tensors, str(f), metadata={"format": "pt"})


def _drop_layer_types(path: Path, interval: int) -> None:
    """Remove `layer_types` so the loader must derive them from `full_attention_interval`."""
    f = path / "config.json"
    cfg = json.loads(f.read_text())
    target = cfg.get("text_config", cfg)
    target.pop("layer_types")
    target["full_attention_interval"] = interval
    f.write_text(json.dumps(cfg, indent=2))

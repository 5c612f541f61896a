"""Write a loaded model as an MLX checkpoint (mlx-community layout), optionally quantized.

Output: `language_model.model.*` keys, conv weight [C, K, 1], (1 + w) norms already shifted, and a
`quantization` block in config.json when quantized — the layout common MLX conversion tools produce.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from engine.config import read_json
from engine.demo import save_sharded
from engine.loading import load_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "vocab.json", "merges.txt")


def convert(src: Path, dst: Path, *, dtype: mx.Dtype = mx.float32, bits: int | None = None,
            group_size: int = 64) -> Path:
    """Load `src` in `dtype`, quantize linear and embedding layers to `bits` if given, save to `dst`."""
    model = load_model(src, dtype, fuse=False)  # saved under the checkpoint's own names
    config = read_json(src / "config.json")
    if bits is not None:
        nn.quantize(model, group_size=group_size, bits=bits)
        config["quantization"] = {"group_size": group_size, "bits": bits, "mode": "affine"}
    dst.mkdir(parents=True, exist_ok=True)
    weights = {f"language_model.{k}": v for k, v in tree_flatten(model.parameters())}
    save_sharded(dst, weights)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    return dst

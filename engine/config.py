"""Reading a checkpoint's config: flat `qwen3_5_text` or nested `qwen3_5` with a `text_config`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from engine.errors import ModelLoadError
from engine.model import LAYER_TYPES, SUPPORTED_MODEL_TYPES, ModelArgs

REQUIRED = [f.name for f in dataclasses.fields(ModelArgs) if f.default is dataclasses.MISSING]


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path.parent} has no {path.name}: it is not a model checkpoint") from None
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path} is not valid JSON ({e})") from None


def text_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The text model's settings: `text_config` when present (VLM checkpoint), else the top level.

    Top-level keys that only live there (tie_word_embeddings, quantization) are carried into it.
    """
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"unsupported model type {model_type!r}: deltaserve serves Qwen3.5 text models "
            f"(model_type one of {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    cfg = dict(raw.get("text_config") or raw)
    for key in ("tie_word_embeddings", "quantization", "quantization_config"):
        if key in raw and key not in cfg:
            cfg[key] = raw[key]
    cfg.setdefault("quantization", cfg.get("quantization_config"))
    cfg["model_type"] = cfg.get("model_type", model_type)
    return cfg


def load_args(model_dir: Path) -> ModelArgs:
    """ModelArgs from `model_dir/config.json`, with a clear error for anything we cannot serve."""
    cfg = text_config(read_json(model_dir / "config.json"))
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise ModelLoadError(f"{model_dir}/config.json lacks required keys: {', '.join(missing)}")
    args = ModelArgs.from_dict(cfg)
    _validate(args, model_dir)
    return args


def _validate(args: ModelArgs, model_dir: Path) -> None:
    problems = []
    if len(args.layer_types) != args.num_hidden_layers:
        problems.append(f"layer_types has {len(args.layer_types)} entries for {args.num_hidden_layers} layers")
    if set(args.layer_types) - set(LAYER_TYPES):
        problems.append(f"unknown layer types {sorted(set(args.layer_types) - set(LAYER_TYPES))}")
    if args.linear_num_value_heads % args.linear_num_key_heads:
        problems.append("linear_num_value_heads must be a multiple of linear_num_key_heads")
    if args.num_attention_heads % args.num_key_value_heads:
        problems.append("num_attention_heads must be a multiple of num_key_value_heads")
    rope_type = args.rope_parameters.get("rope_type", "default")
    if rope_type != "default":
        problems.append(f"rope_type {rope_type!r} (only default RoPE is supported)")
    if args.hidden_act != "silu":
        problems.append(f"hidden_act {args.hidden_act!r} (only silu is supported)")
    if problems:
        raise ModelLoadError(f"unsupported config in {model_dir}: " + "; ".join(problems))

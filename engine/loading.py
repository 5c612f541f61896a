"""Finding a checkpoint (local directory, Hugging Face repo id, or a built-in demo) and loading it into MLX."""

from __future__ import annotations

import json
import logging
import re
import struct
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from engine.backend import backend_name
from engine.cache import KVCache
from engine.config import load_args
from engine.errors import ModelLoadError
from engine.model import GEMM_ROW_BUCKET, Model, canonical_key, hold_weight_views

log = logging.getLogger("deltaserve")

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
FP32_PARAMS = ("A_log", "dt_bias")  # gates stay fp32 whatever the model dtype


def resolve_model_path(spec: str) -> Path:
    """Local directory, built-in demo (`demo`, `demo-0.8b`) or a Hugging Face repo id, in that order."""
    from engine import demo  # local import: demo imports this module's writer helpers

    if spec in demo.DEMO_MODELS:
        return demo.ensure_demo(spec)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"--model {spec} is a file; pass the checkpoint's directory")
        return path
    if REPO_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return download(spec)
    raise ModelLoadError(f"model directory {spec} does not exist (use --model demo for the built-in demo model)")


def download(repo_id: str) -> Path:
    """Fetch a repo's config, tokenizer and safetensors into the Hugging Face cache (with a progress bar)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated repo, network error: all end the same way
        reason = type(e).__name__
        raise ModelLoadError(
            f"could not get {repo_id!r} from the Hugging Face Hub ({reason}): it is not a local directory "
            "either; check the name and your network, or run with --model demo"
        ) from None


def weight_files(model_dir: Path) -> list[Path]:
    """Safetensors files of a checkpoint: the shards named by the index when there is one, else all."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (model_dir / n).exists()]
        if missing:
            raise ModelLoadError(f"{index} names shards that are missing: {', '.join(missing)}")
        return [model_dir / n for n in names]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{model_dir} has no *.safetensors weights")
    return files


def check_safetensors(path: Path) -> None:
    """Fail with the file's name when its header is unreadable or its data is cut short."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n)) if 0 < n <= size - 8 else None
    except (struct.error, ValueError, UnicodeDecodeError):
        header = None
    if header is None:
        raise ModelLoadError(f"{path} is not a readable safetensors file (bad or truncated header)")
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ModelLoadError(f"{path} is truncated: {size} bytes on disk, {8 + n + end} expected")


def load_weights(model_dir: Path) -> dict[str, mx.array]:
    weights: dict[str, mx.array] = {}
    for f in weight_files(model_dir):
        check_safetensors(f)
        try:
            weights.update(mx.load(str(f)))
        except Exception as e:
            raise ModelLoadError(f"cannot read {f}: {e}") from None
    return weights


def _quantize(model: Model, quantization: dict[str, Any], weights: dict[str, mx.array]) -> None:
    """Swap in quantized layers wherever the checkpoint carries `scales` (per-layer overrides honoured)."""
    overrides = {canonical_key(k): v for k, v in quantization.items() if isinstance(v, (dict, bool))}

    def predicate(path: str, module: nn.Module) -> bool | dict:
        if path in overrides:
            return overrides[path]
        return hasattr(module, "to_quantized") and f"{path}.scales" in weights

    nn.quantize(
        model,
        group_size=quantization.get("group_size", 64),
        bits=quantization.get("bits", 4),
        mode=quantization.get("mode", "affine"),
        class_predicate=predicate,
    )


def _check_names_and_shapes(model: Model, weights: dict[str, mx.array], model_dir: Path) -> None:
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ModelLoadError(f"checkpoint {model_dir} is missing {len(missing)} tensors: {shown}")
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        log.warning("ignoring %d unexpected tensors, e.g. %s", len(unexpected), ", ".join(unexpected[:4]))
    for name, param in expected.items():
        if weights[name].shape != param.shape:
            raise ModelLoadError(
                f"tensor {name} in {model_dir} has shape {tuple(weights[name].shape)}, "
                f"the config implies {tuple(param.shape)}"
            )


def _cast(name: str, value: mx.array, dtype: mx.Dtype) -> mx.array:
    if name.endswith(FP32_PARAMS):
        return value.astype(mx.float32)
    return value.astype(dtype) if mx.issubdtype(value.dtype, mx.floating) else value


def load_model(model_dir: Path, dtype: mx.Dtype, *, fuse: bool = True) -> Model:
    """Build the model from `config.json` and load (and if needed quantize) its weights in `dtype`; with `fuse`,
    join the projections that read one input (`Model.fuse_projections`; a model to save keeps them apart)."""
    args = load_args(model_dir)
    raw = load_weights(model_dir)
    has_head = any(canonical_key(k) == "lm_head.weight" for k in raw)
    args.tie_word_embeddings = args.tie_word_embeddings or not has_head
    model = Model(args)
    weights = model.sanitize(raw)
    if args.quantization:
        _quantize(model, args.quantization, weights)
    _check_names_and_shapes(model, weights, model_dir)
    expected = dict(tree_flatten(model.parameters()))
    model.load_weights([(k, _cast(k, v, dtype)) for k, v in weights.items() if k in expected], strict=False)
    try:
        mx.eval(model.parameters())
    except Exception as e:
        raise ModelLoadError(f"cannot materialise the weights of {model_dir}: {e}") from None
    model.eval()
    if fuse:
        model.fuse_projections()
    hold_weight_views(model)
    cuda = backend_name() == "cuda"
    model.model.row_bucket = GEMM_ROW_BUCKET if cuda else 0  # see TextModel
    model.kv_step = KVCache.CUDA_STEP if cuda else KVCache.step  # see KVCache
    return model

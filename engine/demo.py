"""Built-in demo checkpoints with random weights: they produce meaningless text.

`demo` is a small Qwen3.5 (3 GDN layers + 1 attention layer, Hk != Hv, Dk != Dv) that loads in seconds on a
laptop CPU; `demo-0.8b` is the exact Qwen3.5-0.8B text architecture (for benchmarks, no download). Both are
written in the raw Hugging Face layout (flat config, zero-centred norms, conv weight [C, 1, K]) with an
offline byte-level ChatML tokenizer, then read back by the normal loader.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

from engine.model import SHIFTED_NORMS, Model, ModelArgs

DEMO_VERSION = 2
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- else %}{{- '<think>\\n' }}{%- endif %}"
    "{%- endif %}"
)

_COMMON = {
    "model_type": "qwen3_5_text",
    "architectures": ["Qwen3_5ForCausalLM"],
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "linear_conv_kernel_dim": 4,
    "attention_bias": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10_000_000, "partial_rotary_factor": 0.25},
    "max_position_embeddings": 262_144,
}
DEMO_MODELS: dict[str, dict[str, Any]] = {
    "demo": {
        **_COMMON,
        "vocab_size": 384,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "full_attention_interval": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_key_head_dim": 32,
        "linear_value_head_dim": 48,
    },
    "demo-0.8b": {
        **_COMMON,
        "vocab_size": 248_320,
        "hidden_size": 1024,
        "intermediate_size": 3584,
        "num_hidden_layers": 24,
        "full_attention_interval": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 256,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 16,
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
    },
}
DEMO_DTYPES = {"demo": mx.float32, "demo-0.8b": mx.bfloat16}
SHARD_BYTES = 1 << 30


def cache_root() -> Path:
    base = os.environ.get("DELTASERVE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "deltaserve"
    )
    return Path(base)


def ensure_demo(name: str) -> Path:
    """Directory of the demo checkpoint `name`, built on first use (atomically: safe under concurrency)."""
    target = cache_root() / f"{name}-v{DEMO_VERSION}"
    if (target / "config.json").exists():
        return target
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_demo(tmp, name)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_demo(path: Path, name: str) -> None:
    config = DEMO_MODELS[name]
    args = ModelArgs.from_dict(config)
    eos = [SPECIAL_TOKENS.index("<|im_end|>") + 256, SPECIAL_TOKENS.index("<|endoftext|>") + 256]
    (path / "config.json").write_text(json.dumps({**config, "eos_token_id": eos[1]}, indent=2))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}, indent=2))
    n_tokens = write_byte_tokenizer(path)
    save_sharded(path, random_raw_weights(args, DEMO_DTYPES[name], used_tokens=n_tokens))


def random_raw_weights(args: ModelArgs, dtype: mx.Dtype, seed: int = 0, used_tokens: int | None = None):
    """Deterministic random weights in the raw HF layout, keyed by HF names (norms randomised too).

    Embedding rows past `used_tokens` (padding ids the tokenizer never produces) are zero, as in trained
    checkpoints, so the tied head practically never picks a token that decodes to nothing.
    """
    weights = {}
    for name, param in tree_flatten(Model(args).parameters()):
        key = mx.random.key(zlib.crc32(f"{seed}:{name}".encode()))
        shape = param.shape
        if name.endswith("A_log"):
            value = mx.log(mx.random.uniform(0.5, 16.0, shape, key=key))
        elif name.endswith("dt_bias"):
            value = mx.random.normal(shape, key=key)
        elif name.endswith("linear_attn.norm.weight"):
            value = 1.0 + 0.1 * mx.random.normal(shape, key=key)
        elif name.endswith(SHIFTED_NORMS) or name == "model.norm.weight":
            value = 0.1 * mx.random.normal(shape, key=key)  # zero-centred, as HF stores them
        elif name.endswith("conv1d.weight"):
            value = (0.3 * mx.random.normal(shape, key=key)).moveaxis(1, 2)  # [C, K, 1] -> HF [C, 1, K]
        else:
            value = 0.02 * mx.random.normal(shape, key=key)
        if name == "model.embed_tokens.weight" and used_tokens is not None:
            value = mx.where(mx.arange(shape[0])[:, None] < used_tokens, value, 0.0)
        weights[name] = value.astype(mx.float32 if name.endswith(("A_log", "dt_bias")) else dtype)
    return weights


def save_sharded(path: Path, weights: dict[str, mx.array]) -> None:
    """Write `model.safetensors`, or shards plus `model.safetensors.index.json` past 1 GiB."""
    shards: list[dict[str, mx.array]] = [{}]
    size = 0
    for k, v in weights.items():
        if size + v.nbytes > SHARD_BYTES and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    if len(shards) == 1:
        mx.save_safetensors(str(path / "model.safetensors"), shards[0], metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(path / fname), shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, fname))
    index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def write_byte_tokenizer(path: Path) -> int:
    """A byte-level tokenizer (token id == byte value) plus the ChatML specials and template; returns its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML_TEMPLATE
    )
    hf.save_pretrained(str(path))
    return len(hf)

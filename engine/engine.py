"""The engine facade: load a model once, then generate or score prompts with it.

Not thread-safe by design: MLX arrays belong to the thread that built them, so one thread owns an Engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx

from engine import backend
from engine.decode import warm_decode_lengths
from engine.demo import DEMO_MODELS
from engine.generate import (
    GenerationResult,
    PrefillOptions,
    PromptScores,
    StepHook,
    prefill,
    score_prompt,
    stream_generate,
    warm_head_rows,
    warm_prefill_buckets,
)
from engine.loading import load_model, resolve_model_path
from engine.model import Model, warm_row_buckets
from engine.sampling import SamplingParams
from engine.tokenizer import Tokenizer
from kernels import attention, implementation

log = logging.getLogger("deltaserve")


@dataclass
class EngineInfo:
    """What was loaded, where it runs, and how prefill is done (for logs, /v1/models and metrics)."""

    model_id: str
    model_dir: Path
    dtype: str
    backend: str
    prefill: PrefillOptions
    load_seconds: float
    is_demo: bool


class Engine:
    def __init__(self, model: Model, tokenizer: Tokenizer, info: EngineInfo):
        self.model, self.tokenizer, self.info = model, tokenizer, info

    @classmethod
    def load(cls, spec: str, dtype: str = "auto", prefill: PrefillOptions | None = None) -> Engine:
        """Resolve `spec` (directory, hub repo id or demo name) and load model and tokenizer."""
        t0 = time.perf_counter()
        be = backend.backend_name()
        mx_dtype = backend.resolve_dtype(dtype, be)
        model_dir = resolve_model_path(spec)
        model = load_model(model_dir, mx_dtype)
        tokenizer = Tokenizer(model_dir)
        info = EngineInfo(
            model_id=spec,
            model_dir=model_dir,
            dtype=backend.dtype_name(mx_dtype),
            backend=be,
            prefill=prefill or PrefillOptions(),
            load_seconds=time.perf_counter() - t0,
            is_demo=spec in DEMO_MODELS,
        )
        return cls(model, tokenizer, info)

    def describe(self) -> list[str]:
        """Start-up log lines: model, dtype, backend/BLAS, GDN prefill path."""
        i = self.info
        lines = [
            f"model: {i.model_id} ({i.model_dir}), dtype {i.dtype}, loaded in {i.load_seconds:.1f} s",
            backend.describe(),
            f"GDN prefill path: {i.prefill.method}"
            + (
                f" (chunk size {i.prefill.chunk_size}; steps under {i.prefill.min_chunked_tokens} tokens stay serial)"
                if i.prefill.method == "chunked"
                else ""
            )
            + f", prefill step {i.prefill.step_size} tokens, backend {i.backend}, GDN core on {implementation()}",
        ]
        a = self.model.args
        lines.append("prefill attention: " + attention.describe(getattr(mx, i.dtype), a.num_attention_heads,
                                                                a.num_key_value_heads, a.head_dim))
        if i.is_demo:
            lines.append("this is a demo model with RANDOM weights: its text is meaningless")
        return lines

    def encode(self, prompt: str | list[int]) -> list[int]:
        return list(prompt) if isinstance(prompt, list) else self.tokenizer.encode(prompt)

    def chat_tokens(self, messages: list[dict[str, Any]], enable_thinking: bool = False, **kw: Any) -> list[int]:
        return self.tokenizer.apply_chat_template(messages, enable_thinking=enable_thinking, **kw)

    def generate(
        self, prompt: list[int], params: SamplingParams, on_step: StepHook | None = None
    ) -> Iterator[GenerationResult]:
        return stream_generate(self.model, self.tokenizer, prompt, params, self.info.prefill, on_step)

    def score(self, prompt: list[int], top_k: int = 0, on_step: StepHook | None = None) -> PromptScores:
        return score_prompt(self.model, prompt, top_k, self.info.prefill, on_step)

    def warm_up(self) -> None:
        """Compile and cache every kernel a first request would need: a short and a chunk-length prompt,
        a few decode steps, sampling and scoring. On a GPU also a prompt of two prefill steps (a step submitted in
        parts, the KV cache grown between steps, attention against a filled cache), so a long first prompt does
        not wait for kernel compilation (NVRTC on CUDA); on the CPU nothing is compiled and that would cost seconds.
        Then, where a prefill step's rows are bucketed (NVIDIA GPUs), the layers' GEMMs at each bucket and, on
        the chunked path, a prompt at each bucket of a first and a second step: a prompt of a new length does not
        wait for cuBLAS to plan its GEMMs or (chunked) for MLX to set up CUDA graphs. On a GPU also the compiled
        decode step at every KV buffer length of a common context, so a request's second token does not wait for a
        trace."""
        p = self.info.prefill
        chunked = max(p.min_chunked_tokens, 2)  # the shortest prompt on the chunked path
        lengths = {1, 2, chunked}
        if self.info.backend != "cpu":
            lengths.add(p.step_size + chunked)
        for n in sorted(lengths):
            prompt = [i % self.model.args.vocab_size for i in range(1, n + 1)]
            for _ in self.generate(prompt, SamplingParams(max_tokens=3, temperature=1.0, seed=0, logprobs=2)):
                pass
        self.score([1, 2, 3], top_k=2)
        # every bucketed GEMM row count of a prefill step and of a scoring slice's head (NVIDIA GPUs: see
        # engine.model.TextModel; else none); on the chunked path also a prefill at each of a prompt's first two
        # steps (~4 s on an H200). Not on the serial path: there those prompts would take ~23 s (serial prefill runs
        # at ~1/7 of the chunked speed), so its first request at a new bucket still pays MLX's CUDA-graph set-up.
        warm_row_buckets(self.model.layers, p.step_size, self.model.model.row_bucket)
        if p.method_for(p.step_size) == "chunked":
            warm_prefill_buckets(self.model, p)
        warm_head_rows(self.model)
        if self.info.backend != "cpu":  # last: the decode step's CUDA graphs are then the graph cache's newest
            cache = self.model.make_cache()
            token = mx.argmax(prefill(self.model, mx.array([[1, 2]]), cache, p), axis=-1)
            warm_decode_lengths(self.model, cache, token)

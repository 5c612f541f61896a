"""Qwen3.5 text model (Gated DeltaNet + gated full attention) in MLX.

Attribute names equal the Hugging Face parameter names, so `sanitize` only strips prefixes, drops the vision
tower / MTP head and converts the raw layout (conv weight orientation, zero-centred norms). After loading,
`Model.fuse_projections` may join the linear layers that read one input into one (`fused_proj`).
"""

from __future__ import annotations

import copy
import inspect
import itertools
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from engine.cache import FixedKV, GDNCache, KVCache
from kernels import gated_delta, gated_delta_decode, gated_delta_prologue
from kernels.attention import QKNorm, causal_attention, decode_attention, qk_norm_rope
from kernels.gemv import add_norm_gemv
from kernels.norm import add_rms_norm, gated_rms_norm
from kernels.prologue import decay_and_beta

SUPPORTED_MODEL_TYPES = ("qwen3_5_text", "qwen3_5")
# Queries per MLX attention call in a long prefill step (where the fused kernel of kernels/attention.py does not
# run): MLX's unfused fallback holds a [heads, queries, keys] score matrix; blocks bound it at QUERY_BLOCK x
# context whatever the step.
QUERY_BLOCK = 2048
GEMM_ROW_BUCKET = 64  # a prefill step's rows on NVIDIA GPUs: a multiple of this (see TextModel.row_bucket)
LAYER_TYPES = ("linear_attention", "full_attention")
# (1 + w) norms: stored zero-centred in raw HF checkpoints, shifted once at load.
SHIFTED_NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight", "q_norm.weight", "k_norm.weight")
DROPPED_PREFIXES = ("model.visual.", "visual.", "model.vision_tower.", "vision_tower.", "mtp.", "model.mtp.")
KEY_PREFIXES = {
    "model.language_model.": "model.",
    "language_model.model.": "model.",
    "language_model.lm_head.": "lm_head.",
}


@dataclass
class ModelArgs:
    """Text-model hyper-parameters; `from_dict` reads a flat text config (unknown keys ignored)."""

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float
    vocab_size: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int = 4
    head_dim: int | None = None
    layer_types: list[str] | None = None
    full_attention_interval: int = 4
    rope_theta: float = 10_000_000.0
    partial_rotary_factor: float = 0.25
    max_position_embeddings: int = 262_144
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    hidden_act: str = "silu"
    quantization: dict[str, Any] | None = None
    eos_token_id: int | list[int] | None = None
    rope_parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> ModelArgs:
        names = inspect.signature(cls).parameters
        return cls(**{k: v for k, v in params.items() if k in names})

    def __post_init__(self) -> None:
        rope = self.rope_parameters or {}
        self.rope_theta = float(rope.get("rope_theta", self.rope_theta))
        self.partial_rotary_factor = float(rope.get("partial_rotary_factor", self.partial_rotary_factor))
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.layer_types is None:  # transformers' rule: layer i is full attention iff (i + 1) % interval == 0
            n = self.full_attention_interval
            self.layer_types = [LAYER_TYPES[(i + 1) % n == 0] for i in range(self.num_hidden_layers)]

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


@partial(mx.compile, shapeless=True)
def _swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """silu(gate) * up in one kernel where MLX compiles."""
    return nn.silu(gate) * up


@partial(mx.compile, shapeless=True)
def _sigmoid_gate(x: mx.array, gate: mx.array) -> mx.array:
    """x * sigmoid(gate) in one kernel where MLX compiles."""
    return x * mx.sigmoid(gate)


class Linear(nn.Linear):
    """nn.Linear that multiplies one sequence [1, T, in] by a [1, in, out] transposed view of its weight, held
    evaluated (`hold_weight_view`): one graph node where `x @ w.T` is four (transpose, flatten, matmul,
    unflatten), the same GEMM. The host pays per node: 150 fewer a decode token at 0.8B, ~290 fewer a prefill
    step (bench/decode_graph.py)."""

    def hold_weight_view(self) -> None:
        view = self.weight.T[None]
        mx.eval(view)  # a view: shares the weight's memory
        object.__setattr__(self, "_weight_view", (self.weight, view))  # a plain attribute, not a parameter

    def __call__(self, x: mx.array) -> mx.array:
        held = self.__dict__.get("_weight_view")
        # (used only while the weight it views is still this layer's: a reload or a fusion leaves it unused)
        if held is not None and held[0] is self.get("weight") and x.ndim == 3 and x.shape[0] == 1:
            return x @ held[1] if "bias" not in self else mx.addmm(self["bias"], x, held[1])
        return super().__call__(x)


def hold_weight_views(model: nn.Module) -> None:
    """Give every `Linear` of the model its weight view (after loading, quantizing and fusing; again after any
    later change of weights: a stale view is never used, only not replaced)."""
    for _, m in model.named_modules():
        if isinstance(m, Linear):
            m.hold_weight_view()


def warm_row_buckets(layers: list[nn.Module], max_rows: int, bucket: int) -> int:
    """Multiply once by every distinct weight of `layers`' Linears at every multiple of `bucket` rows up to
    `max_rows` (a prefill step; see TextModel.row_bucket), so no prompt length meets a GEMM shape cuBLAS has not
    planned; the products run (0 without a bucket)."""
    shapes = {}
    for layer in layers:
        for _, m in layer.named_modules():
            if isinstance(m, Linear):
                shapes.setdefault((tuple(m.weight.shape), m.weight.dtype, "bias" in m), m)
    runs = 0
    for m in shapes.values() if bucket else ():
        for rows in range(bucket, max_rows + bucket, bucket):
            mx.eval(m(mx.zeros((1, rows, m.weight.shape[1]), m.weight.dtype)))
            runs += 1
    return runs


def bucketed(rows: int, bucket: int) -> int:
    """`rows` rounded up to a multiple of `bucket` (0: no bucket, `rows` as they are)."""
    return rows + -rows % bucket if bucket else rows


def pad_rows(x: mx.array, rows: int) -> mx.array:
    """x [B, T, ...] with zero rows appended up to `rows`."""
    extra = rows - x.shape[1]
    return mx.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2)) if extra else x


def fuse_linears(layers: list[nn.Module]) -> nn.Module | None:
    """One layer computing `layers`' outputs side by side (their rows stacked), when all are Linear, or all
    QuantizedLinear with one quantization, with the same parameters; else None."""
    def kind(m: nn.Module) -> tuple:
        return (type(m), sorted(k for k, v in m.items() if isinstance(v, mx.array)), getattr(m, "group_size", None),
                getattr(m, "bits", None), getattr(m, "mode", None))

    first = layers[0]
    if type(first) not in (Linear, nn.Linear, nn.QuantizedLinear) or any(kind(m) != kind(first) for m in layers):
        return None
    fused = copy.copy(first)  # keeps the quantization settings and the frozen state
    for key in kind(first)[1]:
        fused[key] = mx.concatenate([m[key] for m in layers], axis=0)
    return fused


class Projections(list):
    """A fused projection's outputs in order (column slices: views), with `whole`, the array they are slices of,
    for a kernel that reads its columns in place (MLX copies a non-contiguous input before a custom kernel)."""

    whole: mx.array | None = None

    @classmethod
    def of(cls, y: mx.array, splits: tuple[int, ...]) -> Projections:
        parts = cls(mx.split(y, splits, axis=-1))
        parts.whole = y
        return parts

    @classmethod
    def first(cls, projected: list[mx.array], rows: int | None) -> list[mx.array]:
        """The first `rows` rows of each projection (and of `whole`), as views; all of them for None."""
        if rows is None or rows == projected[0].shape[1]:
            return projected
        parts = cls(p[:, :rows] for p in projected)
        whole = getattr(projected, "whole", None)
        parts.whole = None if whole is None else whole[:, :rows]
        return parts


class FusedProjections(nn.Module):
    """A module whose `PROJECTIONS` (names of linear layers) all read one input. `fuse_projections` swaps them for
    one layer, `fused_proj`: one matmul instead of several (decode is bound by kernel launches). `project(x)`
    gives their outputs in order either way. Checkpoints keep the separate names: the loader fuses after loading
    and `convert` saves an unfused model."""

    PROJECTIONS: tuple[str, ...] = ()

    def fuse_projections(self) -> None:
        if "fused_proj" in self:
            return
        layers = [self[name] for name in self.PROJECTIONS]
        fused = fuse_linears(layers)
        if fused is None:
            return
        self._splits = tuple(itertools.accumulate(m.weight.shape[0] for m in layers[:-1]))  # a tuple: no parameter
        for name in self.PROJECTIONS:
            del self[name]
        self.fused_proj = fused

    def project(self, x: mx.array) -> list[mx.array]:
        if "fused_proj" in self:
            return Projections.of(self.fused_proj(x), self._splits)
        return [self[name](x) for name in self.PROJECTIONS]

    def fused_gemv(self, h: mx.array, r: mx.array, norm: nn.RMSNorm, glu: bool = False):
        """(h + r, the fused projection of norm(h + r)) in one kernel (kernels/gemv.py: a decode step on NVIDIA
        GPUs; with `glu` the SwiGLU of its halves), or None where it does not run."""
        proj = self.get("fused_proj")
        if not isinstance(proj, nn.Linear) or "bias" in proj:
            return None
        return add_norm_gemv(h, r, norm.weight, norm.eps, proj.weight, glu)

    def project_residual(self, h: mx.array, r: mx.array, norm: nn.RMSNorm) -> tuple[mx.array, list[mx.array]]:
        """(h + r, `project` of norm(h + r)): the add, the norm and the projections in one kernel where
        `fused_gemv` runs, else `add_rms_norm` then the projections."""
        fused = self.fused_gemv(h, r, norm)
        if fused is not None:
            x, y = fused
            return x, Projections.of(y, self._splits)
        x, normed = add_rms_norm(h, r, norm.weight, norm.eps)
        return x, self.project(normed)


class RMSNormGated(nn.Module):
    """rmsnorm(o) * w * silu(z) per head, in fp32; the weight is plain (not 1 + w)."""

    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps

    def __call__(self, x: mx.array, gate: mx.array, gate_offset: int = 0) -> mx.array:
        # rms_norm (fp32 inside, x's dtype out), then the tail: one kernel on GPUs (gate: see gated_rms_norm)
        return gated_rms_norm(x, gate, self.weight, self.eps, gate_offset)


class GatedDeltaNet(FusedProjections):
    """Linear-attention mixer: projections, causal depthwise conv, fp32 gates, GDN core, gated norm."""

    PROJECTIONS = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.num_k_heads, self.num_v_heads = args.linear_num_key_heads, args.linear_num_value_heads
        self.head_k_dim, self.head_v_dim = args.linear_key_head_dim, args.linear_value_head_dim
        self.key_dim = self.num_k_heads * self.head_k_dim
        self.value_dim = self.num_v_heads * self.head_v_dim
        self.conv_kernel_size = args.linear_conv_kernel_dim
        self.conv_dim = 2 * self.key_dim + self.value_dim
        self.in_proj_qkv = Linear(args.hidden_size, self.conv_dim, bias=False)
        self.in_proj_z = Linear(args.hidden_size, self.value_dim, bias=False)
        self.in_proj_b = Linear(args.hidden_size, self.num_v_heads, bias=False)
        self.in_proj_a = Linear(args.hidden_size, self.num_v_heads, bias=False)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, self.conv_kernel_size, groups=self.conv_dim, bias=False
        )
        self.A_log = mx.zeros((self.num_v_heads,), dtype=mx.float32)
        self.dt_bias = mx.ones((self.num_v_heads,), dtype=mx.float32)
        self.norm = RMSNormGated(self.head_v_dim, args.rms_norm_eps)
        self.out_proj = Linear(self.value_dim, args.hidden_size, bias=False)

    def __call__(self, x: mx.array, cache: GDNCache) -> mx.array:
        return self.mix(self.project(x), cache)

    def mix(self, projected: list[mx.array], cache: GDNCache, rows: int | None = None) -> mx.array:
        """The layer from its input projections (qkv, z, b, a) on. `rows`: the sequence is the projections' first
        rows, the rest padding (TextModel.row_bucket): the output keeps their row count."""
        padded = projected[0].shape[1]
        projected = Projections.first(projected, rows)
        qkv, z, b, a = projected
        B, T, _ = qkv.shape
        if T == 1:  # decode: conv, norms, gates, the serial step and the gated norm in one call (one kernel on GPUs;
            # z and its output stay in the projections' [B, 1, value_dim] layout: no reshape nodes in the step)
            out, cache.conv_state, cache.state = gated_delta_decode(
                qkv, cache.conv_state, self.conv1d.weight, a, b, self.A_log, self.dt_bias, cache.state, z,
                self.norm.weight, num_k_heads=self.num_k_heads, head_k_dim=self.head_k_dim, eps=self.norm.eps)
            return self.out_proj(out)
        # the fused projection, where there is one, goes to the kernels whole: they read their columns in place
        whole = getattr(projected, "whole", None)
        q, k, v, cache.conv_state = gated_delta_prologue(  # conv, SiLU, split, q / k norms: one kernel on GPUs
            qkv if whole is None else whole, cache.conv_state, self.conv1d.weight, num_k_heads=self.num_k_heads,
            head_k_dim=self.head_k_dim, num_v_heads=self.num_v_heads)
        g, beta = decay_and_beta(a, b, self.A_log, self.dt_bias)
        state = cache.state
        if state is None:
            state = mx.zeros((B, self.num_v_heads, self.head_v_dim, self.head_k_dim), dtype=mx.float32)
        out, cache.state = gated_delta(q, k, v, g, beta, state, method=cache.method, chunk_size=cache.chunk_size)
        gate, offset = (z, 0) if whole is None else (whole, self.conv_dim)  # z: the columns after q | k | v
        return self.out_proj(pad_rows(self.norm(out, gate, offset), padded))  # [B, T, value_dim]


class Attention(FusedProjections):
    """Full attention with a per-head packed query|gate projection, q/k norms and partial NeoX RoPE."""

    PROJECTIONS = ("q_proj", "k_proj", "v_proj")

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = (
            args.num_attention_heads,
            args.num_key_value_heads,
            args.head_dim,
        )
        self.scale = self.head_dim**-0.5
        bias = args.attention_bias
        self.q_proj = Linear(args.hidden_size, self.n_heads * self.head_dim * 2, bias=bias)
        self.k_proj = Linear(args.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = Linear(args.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = Linear(self.n_heads * self.head_dim, args.hidden_size, bias=bias)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=args.rms_norm_eps)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=args.rms_norm_eps)
        self.rope = nn.RoPE(args.rotary_dim, traditional=False, base=args.rope_theta)

    def __call__(self, x: mx.array, cache: KVCache | FixedKV) -> mx.array:
        return self.mix(self.project(x), cache)

    def mix(self, projected: list[mx.array], cache: KVCache | FixedKV, rows: int | None = None) -> mx.array:
        """The layer from its input projections (query | gate, key, value) on (`rows`: see GatedDeltaNet.mix)."""
        padded = projected[0].shape[1]
        qg, k, v = Projections.first(projected, rows)
        B, T, _ = qg.shape
        rope = self.rope
        norm = None if rope.traditional or rope.scale != 1 else QKNorm(
            self.q_norm.weight, self.k_norm.weight, self.q_norm.eps, rope.dims, rope.base)
        # On NVIDIA GPUs a compiled decode step's q / k norms and RoPE, KV write, attention and output gate run as
        # two fused kernels (from the raw projections: no reshape nodes), and causal prefill's attention as one
        # (out [B, T, H, D]); elsewhere MLX's attention.
        decoding = isinstance(cache, FixedKV)
        if decoding and norm and (fused := decode_attention(
                None, k, v, cache.keys, cache.values, cache.filled(T), qg, self.scale, norm)) is not None:
            return self._decoded(fused, cache)
        q, gate = mx.split(qg.reshape(B, T, self.n_heads, 2 * self.head_dim), 2, axis=-1)
        # q / k norms and RoPE: one kernel on NVIDIA GPUs, else MLX's ops
        fused = norm and qk_norm_rope(qg, k, norm, cache.offset, self.n_heads, self.n_kv_heads)
        if fused is None:
            q = rope(self.q_norm(q).transpose(0, 2, 1, 3), offset=cache.offset)
            k = rope(self.k_norm(k.reshape(B, T, self.n_kv_heads, -1)).transpose(0, 2, 1, 3), offset=cache.offset)
        else:
            q, k = fused
        if decoding and (fused := decode_attention(
                q, k, v, cache.keys, cache.values, cache.filled(T), qg, self.scale)) is not None:
            return self._decoded(fused, cache)
        v = v.reshape(B, T, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        k, v = cache.update_and_fetch(k, v)
        mask = cache.mask(T)
        o = causal_attention(q, k, v, self.scale) if isinstance(mask, str) else None
        if o is None:
            o = mlx_attention(q, k, v, self.scale, mask).transpose(0, 2, 1, 3)
        o = o.reshape(B, T, -1)
        return self.o_proj(pad_rows(_sigmoid_gate(o, gate.reshape(B, T, -1)), padded))

    def _decoded(self, fused: tuple[mx.array, mx.array, mx.array], cache: FixedKV) -> mx.array:
        """The layer's output from the decode kernels' (gated output, written key / value buffers)."""
        o, keys, values = fused
        cache.written(keys, values)
        return self.o_proj(o)


def mlx_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: str | mx.array | None) -> mx.array:
    """MLX's attention [B, H, T, D]. A causal prefill longer than QUERY_BLOCK runs in query blocks, each against
    the keys up to its last query (fully masked keys are skipped), each block made to wait for the previous one
    so their score matrices are not alive together."""
    T, L = q.shape[2], k.shape[2]
    if not (isinstance(mask, str) and T > QUERY_BLOCK):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    outs: list[mx.array] = []
    for s in range(0, T, QUERY_BLOCK):
        e = min(s + QUERY_BLOCK, T)
        qb = mx.depends(q[:, :, s:e], outs[-1]) if outs else q[:, :, s:e]
        outs.append(mx.fast.scaled_dot_product_attention(qb, k[:, :, : L - T + e], v[:, :, : L - T + e],
                                                         scale=scale, mask=mask))
    return mx.concatenate(outs, axis=2)


class MLP(FusedProjections):
    PROJECTIONS = ("gate_proj", "up_proj")

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate_proj = Linear(dim, hidden_dim, bias=False)
        self.up_proj = Linear(dim, hidden_dim, bias=False)
        self.down_proj = Linear(hidden_dim, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(_swiglu(*self.project(x)))

    def residual(self, x: mx.array, r: mx.array, norm: nn.RMSNorm) -> tuple[mx.array, mx.array]:
        """(h, mlp(norm(h))) for h = x + r. In a decode step on NVIDIA GPUs the add, the norm, both input
        projections and the SwiGLU run as one kernel; else `add_rms_norm`, then the MLP."""
        fused = self.fused_gemv(x, r, norm, glu=True)
        if fused is not None:
            h, y = fused
            return h, self.down_proj(y)
        h, normed = add_rms_norm(x, r, norm.weight, norm.eps)
        return h, self(normed)


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, layer_type: str):
        super().__init__()
        self.is_linear = layer_type == "linear_attention"
        if self.is_linear:
            self.linear_attn = GatedDeltaNet(args)
        else:
            self.self_attn = Attention(args)
        self.mlp = MLP(args.hidden_size, args.intermediate_size)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, cache: GDNCache | KVCache) -> mx.array:
        h, mlp_out = self.residual_step(x, None, cache)
        return h + mlp_out

    def residual_step(self, h: mx.array, pending: mx.array | None, cache: GDNCache | KVCache,
                      rows: int | None = None):
        """The layer with its last residual add left to the caller: its input is h + pending (pending None: h),
        its output h' + mlp_out, returned as (h', mlp_out). Each residual add is fused with the norm that reads
        its sum (one kernel on GPUs), so TextModel passes mlp_out on to the next layer's input norm. `rows`: the
        sequence's rows, the rest padding (see TextModel.row_bucket)."""
        inorm, post = self.input_layernorm, self.post_attention_layernorm
        mixer = self.linear_attn if self.is_linear else self.self_attn
        if pending is None:
            x, projected = h, mixer.project(inorm(h))
        else:  # the add, the norm and the mixer's projections: one kernel in a decode step on NVIDIA GPUs
            x, projected = mixer.project_residual(h, pending, inorm)
        return self.mlp.residual(x, mixer.mix(projected, cache, rows), post)


class TextModel(nn.Module):
    """Embedding, decoder layers, final norm.

    `row_bucket` (set by the loader: GEMM_ROW_BUCKET on NVIDIA GPUs, else 0): a step of T > 1 tokens of one
    sequence runs its row-wise work (norms, projections, MLP) on ceil(T / row_bucket) * row_bucket rows, the
    extra rows padding that no mixer reads (each mixer takes the first T rows and pads its output back), and
    returns the first T rows. cuBLAS, under MLX's CUDA matmul, plans a GEMM the first time it meets a shape,
    synchronously: 2-4 ms for each weight at each new row count on an H200, ~20 ms a prefill for every prompt of
    a length not seen before (docs/BENCHMARKS.md, eleventh pass). Bucketed, the row counts are few enough for
    the warm-up to plan them all (`warm_row_buckets`) and, where prefill is fast enough, to prefill at each
    (`engine.generate.warm_prefill_buckets`)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [DecoderLayer(args, t) for t in args.layer_types]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.row_bucket = 0

    def __call__(self, inputs: mx.array, cache: list, submit_every: int = 0) -> mx.array:
        """`submit_every` > 0: hand the graph built so far to the device every that many layers (`async_eval`),
        so a long prefill step runs on a GPU while Python builds its later layers (never inside mx.compile)."""
        B, T = inputs.shape
        pad = bucketed(T, self.row_bucket) - T if B == 1 and T > 1 else 0
        rows = T if pad else None
        h, pending = self.embed_tokens(pad_rows(inputs, T + pad)), None  # padding rows: token 0's embedding
        for i, (layer, c) in enumerate(zip(self.layers, cache, strict=True), 1):
            h, pending = layer.residual_step(h, pending, c, rows)
            if submit_every and i % submit_every == 0 and i < len(self.layers):
                mx.async_eval(h, pending)
        out = self.norm(h) if pending is None else add_rms_norm(h, pending, self.norm.weight, self.norm.eps)[1]
        return out[:, :T] if pad else out


class Model(nn.Module):
    """Qwen3.5 causal LM. `model(ids, cache)` gives logits at every position; `hidden` + `head` split them."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = TextModel(args)
        self.kv_step = KVCache.step
        if not args.tie_word_embeddings:
            self.lm_head = Linear(args.hidden_size, args.vocab_size, bias=False)

    def hidden(self, inputs: mx.array, cache: list | None = None, submit_every: int = 0) -> mx.array:
        """Final-norm hidden states [B, T, hidden] for token ids [B, T] (`submit_every`: see TextModel)."""
        return self.model(inputs, cache if cache is not None else self.make_cache(), submit_every)

    def head(self, h: mx.array) -> mx.array:
        if self.args.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(h)
        return self.lm_head(h)

    def __call__(self, inputs: mx.array, cache: list | None = None) -> mx.array:
        return self.head(self.hidden(inputs, cache))

    def fuse_projections(self) -> None:
        """Join the linear layers that read one input (see FusedProjections), a layer at a time so the copies
        never hold more than one layer's weights twice."""
        for layer in self.layers:
            for m in (layer.linear_attn if layer.is_linear else layer.self_attn, layer.mlp):
                m.fuse_projections()
            mx.eval(layer.parameters())

    @property
    def layers(self) -> list[DecoderLayer]:
        return self.model.layers

    def make_cache(self, gdn_method: str = "serial", chunk_size: int = 64) -> list[GDNCache | KVCache]:
        """One cache object per layer: GDN conv + recurrent state, or an attention KV cache (grown in steps of
        `kv_step` tokens: set by the loader, see KVCache)."""
        return [GDNCache(gdn_method, chunk_size) if layer.is_linear else KVCache(self.kv_step) for layer in self.layers]

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Map any supported checkpoint layout onto this module's parameter names."""
        raw_layout = is_raw_hf_layout(weights)
        out = {}
        for key, value in weights.items():
            if key.startswith(DROPPED_PREFIXES):
                continue
            out[canonical_key(key)] = value
        if self.args.tie_word_embeddings:
            out.pop("lm_head.weight", None)
        if raw_layout:
            out = {k: _convert_raw(k, v) for k, v in out.items()}
        return out


def canonical_key(key: str) -> str:
    """Strip a checkpoint's prefix (`model.language_model.`, `language_model.model.`, ...) to our naming."""
    for prefix, replacement in KEY_PREFIXES.items():
        if key.startswith(prefix):
            return replacement + key[len(prefix) :]
    return key


def is_raw_hf_layout(weights: dict[str, mx.array]) -> bool:
    """Raw HF checkpoints store the conv weight as [C, 1, K]; converted MLX ones as [C, K, 1]."""
    convs = [v for k, v in weights.items() if k.endswith("linear_attn.conv1d.weight")]
    if convs:
        return convs[0].shape[-1] != 1
    # No GDN layer: MLX conversions are recognisable by their prefix or by quantization.
    return not any(k.startswith("language_model.") or k.endswith(".scales") for k in weights)


def _convert_raw(key: str, value: mx.array) -> mx.array:
    if key.endswith("conv1d.weight"):
        return value.moveaxis(2, 1)
    if key.endswith(SHIFTED_NORMS) or key == "model.norm.weight":
        return value.astype(mx.float32) + 1.0  # shifted in fp32; the loader casts to the model dtype
    return value

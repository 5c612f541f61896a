"""The decode step as one compiled MLX function per model. Decode is bound by per-operation host cost (on CUDA a
token is ~400 small launches): `mx.compile` traces the step once and then replays it without building the graph
in Python each token. Traced shapes must not change from token to token, so the attention caches are passed as
whole buffers written at an array offset (`engine.cache.FixedKV`); a new trace happens only at a buffer length
not seen before (lengths are multiples of the cache's step; the masked tail costs a decode query little), and the
warm-up traces the lengths of common contexts (`warm_decode_lengths`). DELTASERVE_COMPILE_DECODE=0 turns it off
(the step then runs op by op).
"""

from __future__ import annotations

import logging
import os

import mlx.core as mx

from engine.cache import FixedKV, GDNCache, KVCache, cache_arrays
from engine.model import Model, bucketed, hold_weight_views

log = logging.getLogger("deltaserve")
ENV_COMPILE = "DELTASERVE_COMPILE_DECODE"
WARM_CONTEXT = 8192  # the warm-up traces the step at every KV buffer length up to this many tokens


def decode_step(model: Model, token: mx.array, cache: list) -> mx.array:
    """One token per sequence [B] through the cached model, op by op; logits [B, V]."""
    return model(token[:, None], cache)[:, -1, :]


class CompiledDecode:
    """`decode(token, cache) -> logits` for one model: the same step as `decode_step`, compiled."""

    def __init__(self, model: Model):
        self.model = model
        hold_weight_views(model)  # fewer graph nodes a token (engine.model.Linear)
        self._step = mx.compile(self._traced)
        self.broken: str | None = None  # why the compiled step failed on this backend: then op by op for good
        self.proven = False  # a compiled step has run to the end

    def _traced(self, token: mx.array, offset: mx.array, *arrays: mx.array) -> list[mx.array]:
        caches: list[GDNCache | FixedKV] = []
        it, shared = iter(arrays), {}  # the attention layers share one offset, so one set of position masks
        for layer in self.model.layers:
            if layer.is_linear:
                c = GDNCache()
                c.conv_state, c.state = next(it), next(it)
            else:
                c = FixedKV(next(it), next(it), offset, shared)
            caches.append(c)
        logits = decode_step(self.model, token, caches)
        return [logits, *cache_arrays(caches)]

    def __call__(self, token: mx.array, cache: list) -> mx.array:
        kv = [c for c in cache if isinstance(c, KVCache)]
        if (self.broken or os.environ.get(ENV_COMPILE) == "0" or any(c.keys is None for c in kv)
                or any(a is None for c in cache if isinstance(c, GDNCache) for a in (c.conv_state, c.state))
                or len({c.offset for c in kv}) > 1):
            return decode_step(self.model, token, cache)  # nothing prefilled yet: the op-by-op step
        for c in kv:
            c.reserve(1, c.keys, c.values)
        offset = mx.array(kv[0].offset if kv else 0, dtype=mx.int32)
        try:
            logits, *arrays = self._step(token, offset, *cache_arrays(cache))  # every array present (checked above)
            if not self.proven:  # the first compiled step runs here, so a failure shows before any state changes
                mx.eval(logits, *arrays)
                self.proven = True
        except Exception as e:  # a backend whose compile cannot take a primitive: decode still works, slower
            self.broken = f"{type(e).__name__}: {e}"
            log.warning("compiled decode step failed (%s); decoding op by op", self.broken)
            return decode_step(self.model, token, cache)
        it = iter(arrays)
        for c in cache:
            if isinstance(c, GDNCache):
                c.conv_state, c.state = next(it), next(it)
            else:
                c.keys, c.values = next(it), next(it)
                c.offset += 1
        return logits


def compiled_decode(model: Model) -> CompiledDecode:
    """The model's compiled decode step, made once per model (a new one would trace again)."""
    found = getattr(model, "_compiled_decode", None)
    if found is None:
        found = CompiledDecode(model)
        object.__setattr__(model, "_compiled_decode", found)
    return found


def warm_decode_lengths(model: Model, cache: list, token: mx.array, context: int = WARM_CONTEXT) -> int:
    """Run the compiled decode step once at every KV buffer length up to `context` tokens, from a prefilled
    `cache` (left as it was) and its next `token` [B]: else a request's second token waits while the step is
    traced and, on CUDA, its graphs are set up at a length met first (4-6 ms on an H200, docs/BENCHMARKS.md).
    Returns how many lengths ran."""
    kv = [c for c in cache if isinstance(c, KVCache)]
    if not kv:
        return 0
    # no longer than the model's context needs (its last buffer holds max_position_embeddings tokens)
    step = kv[0].step
    context = min(context, bucketed(model.args.max_position_embeddings, step))
    lengths = range(bucketed(kv[0].offset + 1, step), context + 1, step)
    decode = compiled_decode(model)
    for n in lengths:
        trial = [_with_length(c, n) for c in cache]
        mx.eval(decode(token, trial), cache_arrays(trial))
    return len(lengths)


def _with_length(c: GDNCache | KVCache, n: int) -> GDNCache | KVCache:
    """A copy of a layer's cache whose KV buffers (zeros) hold n tokens; the GDN state is shared (never written:
    the step returns new arrays)."""
    if isinstance(c, GDNCache):
        out = GDNCache(c.method, c.chunk_size)
        out.conv_state, out.state = c.conv_state, c.state
        return out
    out = KVCache(c.step)
    B, H, _, D = c.keys.shape
    out.keys, out.values = mx.zeros((B, H, n, D), c.keys.dtype), mx.zeros((B, H, n, c.values.shape[3]), c.values.dtype)
    out.offset = c.offset
    return out

"""A/B benchmark of GDN prefill, serial vs chunked, interleaved in one process so drift cancels.

Modes: `core` times the GDN core alone at a model's head shape (one layer measured, scaled to the model's
GDN layer count so its share of prefill is visible); `e2e` times whole-model prefill to the last logits.
Each context length first passes a correctness gate (chunked vs serial outputs); a red gate prints FAIL
and no speed ratio.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import mlx.core as mx
import numpy as np

from engine.cache import cache_arrays
from engine.generate import PrefillOptions, prefill
from engine.model import Model
from kernels import gated_delta

DEFAULT_CONTEXTS = (289, 529, 1009, 2048, 4096)
GATE_REL = {mx.float32: 1e-4, mx.bfloat16: 2e-2, mx.float16: 1e-2}  # max |diff| / max |serial|


@dataclass
class BenchRow:
    """One context length: per-run seconds of each method, and the gate (chunked vs serial) result."""

    tokens: int
    seconds: dict[str, list[float]] = field(default_factory=dict)
    gate_error: float = float("nan")
    gate_ok: bool = False

    def tps(self, method: str) -> float:
        return self.tokens / statistics.median(self.seconds[method])

    @property
    def speedup(self) -> float:
        return self.tps("chunked") / self.tps("serial")

    @property
    def chunked_cv(self) -> float:
        s = self.seconds["chunked"]
        return statistics.stdev(s) / statistics.mean(s) if len(s) > 1 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.gate_ok:
            d.update({f"{m}_tps": self.tps(m) for m in self.seconds}, speedup=self.speedup, chunked_cv=self.chunked_cv)
        return d


def gdn_inputs(T: int, heads: int, head_dim: int, dtype: mx.Dtype, seed: int = 0) -> tuple[mx.array, ...]:
    """Realistic GDN-core inputs at one layer's shape: normalised q/k, gates from A_log/dt_bias-like draws."""
    rng = np.random.default_rng(seed)

    def unit(x):
        return x / np.sqrt((x * x).sum(-1, keepdims=True) + 1e-6)

    q = unit(rng.normal(size=(1, T, heads, head_dim))) / np.sqrt(head_dim)
    k = unit(rng.normal(size=(1, T, heads, head_dim)))
    v = rng.normal(size=(1, T, heads, head_dim))
    a_log = np.log(rng.uniform(0.5, 16, heads))
    g = -np.exp(a_log) * np.logaddexp(0, rng.normal(size=(1, T, heads)) + rng.normal(size=heads))
    beta = 1 / (1 + np.exp(-rng.normal(size=(1, T, heads))))
    state = np.zeros((1, heads, head_dim, head_dim))
    arrays = [mx.array(x.astype(np.float32)) for x in (q, k, v, g, beta, state)]
    arrays[:3] = [x.astype(dtype) for x in arrays[:3]]
    mx.eval(arrays)
    return tuple(arrays)


def core_runner(heads: int, head_dim: int, dtype: mx.Dtype, chunk_size: int) -> Callable:
    """run(T, method) -> (seconds, output) for one layer's GDN core; method "builtin" is MLX's own
    `mx.fast.gated_delta_update` on the same inputs (it takes the linear decay)."""
    cache: dict[int, tuple] = {}

    def run(T: int, method: str) -> tuple[float, mx.array]:
        q, k, v, g, beta, state = cache.setdefault(T, gdn_inputs(T, heads, head_dim, dtype))
        t0 = time.perf_counter()
        if method == "builtin":
            out, state = mx.fast.gated_delta_update(q, k, v, mx.exp(g), beta, state)
        else:
            out, state = gated_delta(q, k, v, g, beta, state, method=method, chunk_size=chunk_size)
        mx.eval(out, state)
        return time.perf_counter() - t0, out

    return run


def e2e_runner(model: Model, options: PrefillOptions, n_tokens: int) -> Callable:
    """run(T, method) -> (seconds, last logits) for whole-model prefill from an empty cache; prompts are
    random ids below `n_tokens` (the tokenizer's size: padded ids are not real tokens)."""

    def run(T: int, method: str) -> tuple[float, mx.array]:
        ids = mx.array(np.random.default_rng(T).integers(0, n_tokens, (1, T)))
        opts = PrefillOptions(method, options.chunk_size, options.step_size, options.min_chunked_tokens)
        cache = model.make_cache()
        mx.eval(ids)
        t0 = time.perf_counter()
        logits = prefill(model, ids, cache, opts)
        mx.eval(logits, cache_arrays(cache))
        return time.perf_counter() - t0, logits

    return run


def run_bench(
    run: Callable, contexts: list[int], *, runs: int, warmup: int, dtype: mx.Dtype,
    methods: tuple[str, ...] = ("serial", "chunked"), progress: Callable[[str], None] = lambda _: None,
    gate_rel: float | None = None, same_argmax: bool = False,
) -> list[BenchRow]:
    """Interleave the methods (serial, chunked, ...; warm-ups first, then `runs` timed rounds) per context.

    The gate: max |chunked - serial| <= gate_rel * max |serial| (default per dtype), and with `same_argmax`
    (outputs are logits) the same top token."""
    rows = []
    for T in contexts:
        row = BenchRow(T, {m: [] for m in methods})
        for i in range(warmup + runs):
            outs = {}
            for m in methods:
                seconds, outs[m] = run(T, m)
                if i >= warmup:
                    row.seconds[m].append(seconds)
            progress(f"T={T} run {i + 1}/{warmup + runs}")
        a, b = (np.array(outs[m].astype(mx.float32)) for m in ("chunked", "serial"))
        row.gate_error = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
        bound = gate_rel if gate_rel is not None else GATE_REL.get(dtype, 1e-2)
        row.gate_ok = bool(np.isfinite(a).all() and row.gate_error <= bound)
        if same_argmax:
            row.gate_ok = row.gate_ok and bool((a.argmax(-1) == b.argmax(-1)).all())
        rows.append(row)
    return rows


def format_table(rows: list[BenchRow], scale: int = 1) -> str:
    """context | serial tok/s | chunked tok/s | delta of medians | chunked CV (| other methods) | gate.

    Throughputs are divided by `scale` (the layer count in core mode). A red gate prints no numbers."""
    extra = [m for m in rows[0].seconds if m not in ("serial", "chunked")] if rows else []
    head = ["context tokens", "serial tok/s", "chunked tok/s", "delta of medians", "chunked CV"]
    head += [f"{m} tok/s" for m in extra] + ["gate (max rel err)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * (len(head) - 1) + "---|"]
    for r in rows:
        gate = f"{'ok' if r.gate_ok else 'FAIL'} ({r.gate_error:.1e})"
        if not r.gate_ok:
            lines.append(f"| {r.tokens} | " + "- | " * (len(head) - 2) + f"{gate} |")
            continue
        cells = [f"{r.tokens}", f"{r.tps('serial') / scale:,.0f}", f"{r.tps('chunked') / scale:,.0f}",
                 f"{(r.speedup - 1) * 100:+.0f}% ({r.speedup:.2f}x)", f"{r.chunked_cv * 100:.1f}%"]
        cells += [f"{r.tps(m) / scale:,.0f}" for m in extra] + [gate]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

"""End-to-end prefill and decode, B = 1, greedy, on one GPU (or the CPU, for a smoke test): deltaserve's engine
(serial and --gdn-chunked) against transformers (+ flash-linear-attention when installed) on PyTorch and
mlx-lm on MLX. All three load the same safetensors checkpoint (`engine.demo`: `demo-0.8b` is the exact
Qwen3.5-0.8B text architecture with random bf16 weights), so their last-position log-probabilities are also
compared (gates below the table).

Prefill: median over `--runs` of a prompt of T random byte-token ids from an empty cache to the last
position's log-probabilities, state materialised (after `--warmup` unmeasured runs). Decode: tokens per second
after the first token for a prompt of `--decode-context` tokens (mlx-lm's generation_tps definition; median
over `--runs` generations), each system in its own generation loop (ours: `engine.generate.generate_step`, the
server's; mlx-lm: `mlx_lm.generate.generate_step`; transformers: a greedy loop over its cache, no host sync per
token). Peak GPU memory: MLX's / PyTorch's peak allocation counters over each system's measurements.
`--alternate`: also the --gdn-chunked / transformers prefill ratio from runs alternating between the two, both
loaded (the table's systems run one after the other, so a drift of a lent machine's host between them moves the
table's ratios).

Usage: python bench/e2e_gpu.py [--model demo-0.8b] [--contexts 512,2048,8192] [--systems ours,transformers,mlx-lm]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np

from engine.backend import configure_long_running
from engine.cache import cache_arrays
from engine.demo import DEMO_DTYPES, ensure_demo
from engine.generate import PrefillOptions, default_prefill_step, generate_step, prefill
from engine.loading import load_model
from engine.sampling import SamplingParams, make_key, make_sampler

BYTE_TOKENS = 256  # prompts use byte tokens: real rows of the demo tokenizer's embedding


@dataclass
class Result:
    system: str
    prefill_tps: dict[int, float] = field(default_factory=dict)
    decode_tps: float | None = None
    peak_gb: float = 0.0
    logprobs: dict[int, np.ndarray] = field(default_factory=dict)  # last position, per prompt length
    note: str = ""


def prompt(T: int) -> list[int]:
    return np.random.default_rng(T).integers(0, BYTE_TOKENS, T).tolist()


def median_time(fn: Callable[[], object], runs: int, warmup: int) -> tuple[float, object]:
    """Median seconds of `fn` (which returns once its results are computed) and its last result."""
    times, out = [], None
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        out = fn()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def decode_rate(tokens: Callable[[], object], n: int, runs: int = 1) -> float:
    """Median over `runs` generations of the tokens per second after the first of `n` yielded by the generator
    `tokens()` (one generation of 64 tokens is ~0.2 s: host hiccups move a single reading by 30%)."""
    rates = []
    for _ in range(runs):
        gen = iter(tokens())
        next(gen)
        t0 = time.perf_counter()
        count = sum(1 for _ in gen)
        assert count == n - 1, count
        rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates)


def fresh_mlx_memory() -> str:
    """Free what earlier systems left (their models are garbage now) and say what MLX still holds, so the next
    system's peak counts only its own arrays."""
    gc.collect()
    mx.clear_cache()
    held = mx.get_active_memory() / 1e9
    return f"; {held:.2f} GB already held by MLX before loading" if held > 0.05 else ""


def our_prefill(model, opts: PrefillOptions, T: int) -> Callable[[], mx.array]:
    """One timed prefill of the T-token prompt from an empty cache: last-position logits, state materialised."""
    ids = mx.array([prompt(T)])

    def once() -> mx.array:
        cache = model.make_cache()
        logits = prefill(model, ids, cache, opts)
        mx.eval(logits, cache_arrays(cache))
        return logits

    return once


def hf_prefill(model, T: int, device: str, sync: Callable[[], None]) -> Callable[[], object]:
    """transformers' timed prefill of the same prompt: its cache filled, logits of the last position only."""
    import torch

    ids = torch.tensor([prompt(T)], device=device)

    def once():
        logits = model(input_ids=ids, use_cache=True, logits_to_keep=1).logits
        sync()
        return logits

    return once


def run_ours(path: Path, dtype: mx.Dtype, args, method: str) -> Result:
    held = fresh_mlx_memory()
    model = load_model(path, dtype)
    opts = PrefillOptions(method, args.chunk_size, args.step_size)
    res = Result(f"deltaserve {'--gdn-chunked' if method == 'chunked' else 'serial'}", note=held.lstrip("; "))
    mx.reset_peak_memory()
    for T in args.contexts:
        seconds, logits = median_time(our_prefill(model, opts, T), args.runs, args.warmup)
        res.prefill_tps[T] = T / seconds
        res.logprobs[T] = log_softmax(np.array(logits.astype(mx.float32))[0])
        mx.clear_cache()
    greedy = make_sampler(SamplingParams(temperature=0))

    def tokens(n: int):
        return generate_step(model, prompt(args.decode_context), model.make_cache(), sampler=greedy,
                             logits_processors=[], key=make_key(0), max_tokens=n, options=opts)

    if args.decode_tokens > 1:
        decode_rate(lambda: tokens(4), 4)  # compiles the decode kernels
        res.decode_tps = decode_rate(lambda: tokens(args.decode_tokens), args.decode_tokens, args.decode_runs)
    res.peak_gb = mx.get_peak_memory() / 1e9
    mx.clear_cache()
    return res


def run_mlx_lm(path: Path, args) -> Result | None:
    try:
        import mlx_lm
        from mlx_lm.generate import generate_step as lm_generate_step
        from mlx_lm.utils import load_model as lm_load_model
    except ImportError:
        return None
    held = fresh_mlx_memory()
    model, _ = lm_load_model(path, model_config={"model_type": "qwen3_5"})  # the text-only config, mlx-lm's name
    res = Result("mlx-lm", note=f"mlx-lm {mlx_lm.__version__}, prompts > {args.mlx_lm_max} tokens skipped{held}")
    mx.reset_peak_memory()
    for T in (t for t in args.contexts if t <= args.mlx_lm_max):
        ids = mx.array(prompt(T))

        def once():
            _, logprobs = next(lm_generate_step(ids, model, max_tokens=1))  # noqa: B023
            return logprobs

        seconds, logprobs = median_time(once, args.runs, args.warmup)
        res.prefill_tps[T] = T / seconds
        res.logprobs[T] = np.array(logprobs.astype(mx.float32)).astype(np.float64)
        mx.clear_cache()
    if args.decode_tokens > 1:
        ids = mx.array(prompt(args.decode_context))
        res.decode_tps = decode_rate(lambda: lm_generate_step(ids, model, max_tokens=args.decode_tokens),
                                     args.decode_tokens, args.decode_runs)
    res.peak_gb = mx.get_peak_memory() / 1e9
    mx.clear_cache()
    return res


def load_hf(path: Path, dtype: mx.Dtype):
    """transformers' model of the checkpoint on the GPU if PyTorch has one: (model, device, sync, note), or None
    where transformers is not installed."""
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    try:
        import fla

        note = f"transformers {transformers.__version__} + fla {fla.__version__}, torch {torch.__version__}"
    except ImportError:
        note = f"transformers {transformers.__version__} (no flash-linear-attention), torch {torch.__version__}"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = {mx.bfloat16: torch.bfloat16, mx.float16: torch.float16}.get(dtype, torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=tdtype).to(device).eval()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return model, device, sync, note


def run_transformers(path: Path, dtype: mx.Dtype, args) -> Result | None:
    loaded = load_hf(path, dtype)
    if loaded is None:
        return None
    import torch

    model, device, sync, note = loaded
    res = Result("transformers", note=note)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        for T in args.contexts:
            seconds, logits = median_time(hf_prefill(model, T, device, sync), args.runs, args.warmup)
            res.prefill_tps[T] = T / seconds
            res.logprobs[T] = log_softmax(logits[0, -1].float().cpu().numpy())

        def tokens(n: int):
            return hf_greedy(model, torch.tensor([prompt(args.decode_context)], device=device), n, sync)

        if args.decode_tokens > 1:
            decode_rate(lambda: tokens(4), 4)
            res.decode_tps = decode_rate(lambda: tokens(args.decode_tokens), args.decode_tokens, args.decode_runs)
    if device == "cuda":
        res.peak_gb = torch.cuda.max_memory_allocated() / 1e9
    return res


def alternating_ratios(path: Path, dtype: mx.Dtype, args) -> list[str]:
    """--gdn-chunked / transformers prefill from runs that alternate between the two (both models loaded, the
    order swapped every round), so a drift of the host or the card falls on both sides alike: one line a length
    (medians of `--runs` each)."""
    loaded = load_hf(path, dtype)
    if loaded is None:
        return []
    import torch

    hf, device, sync, _ = loaded
    ours = load_model(path, dtype)
    opts = PrefillOptions("chunked", args.chunk_size, args.step_size)
    lines = []
    with torch.inference_mode():
        for T in args.contexts:
            fns = {"ours": our_prefill(ours, opts, T), "transformers": hf_prefill(hf, T, device, sync)}
            times: dict[str, list[float]] = {name: [] for name in fns}
            for r in range(args.warmup + args.runs):
                for name in (list(fns) if r % 2 else list(fns)[::-1]):
                    t0 = time.perf_counter()
                    fns[name]()
                    if r >= args.warmup:
                        times[name].append(time.perf_counter() - t0)
            m = {name: statistics.median(v) * 1e3 for name, v in times.items()}
            lines.append(f"alternating runs @{T}: --gdn-chunked {m['ours']:.2f} ms, transformers "
                         f"{m['transformers']:.2f} ms: {m['transformers'] / m['ours']:.2f}x")
    del hf, ours
    gc.collect()
    mx.clear_cache()
    return lines


def hf_greedy(model, ids, n: int, sync: Callable[[], None]):
    """Greedy tokens from a transformers model over its own cache, the next step queued without a host sync."""
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    tok = out.logits[:, -1].argmax(-1)
    sync()
    yield tok
    for _ in range(n - 1):
        out = model(input_ids=tok[:, None], past_key_values=out.past_key_values, use_cache=True)
        tok = out.logits[:, -1].argmax(-1)
        yield tok
    sync()


def _wait_ready(url: str, server: subprocess.Popen, timeout: float = 600) -> None:
    """Until GET /ready answers 200 (the model is loaded and warmed up); raises if the server died."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {server.stderr.read()[-2000:]}") from None
            time.sleep(0.5)


def _first_token(url: str, body: bytes, conn=None) -> tuple[float, str]:
    """Seconds from sending a streaming completion to its first text chunk, and the completion's id: over a new
    connection (urllib), or over `conn`, an http.client connection kept alive between requests (as the OpenAI
    client's pool keeps them)."""
    import urllib.request

    first, rid = None, None
    t0 = time.perf_counter()
    if conn is None:
        req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
        response = urllib.request.urlopen(req, timeout=600)
    else:
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
    with response as r:
        for line in r:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                rid = rid or chunk["id"]
                if first is None and chunk["choices"] and chunk["choices"][0].get("text") is not None:
                    first = time.perf_counter() - t0
    return first, rid


def new_lengths(T: int, n: int) -> list[int]:
    """n prompt lengths near T that no earlier request had (not multiples of 64: GEMM row counts the warm-up does
    not run unpadded)."""
    return [T + 1 + 37 * i if i % 2 == 0 else max(2, T // 2 + 3 + 37 * i) for i in range(n)]


def server_ttft(model: str, T: int, runs: int, chunked: bool, step_size: int, max_tokens: int = 2,
                fresh: int = 0) -> dict[str, float]:
    """Median client-side time to the first streamed token of a T-token prompt through a real `deltaserve serve`
    (a subprocess on a loopback port, warmed up at start), each request over a new connection (`ttft_ms`) and,
    alternating with those, over one kept alive (`ttft_keepalive_ms`); the server's own prefill time for the same
    requests (GET /v1/timings/{id}: `prompt_ms`; `server_prefill_ms` for the new connections' requests,
    `server_prefill_keepalive_ms` for the others) and its phase times since the request arrived, in ms. Then
    `fresh` prompts of lengths the server had not seen, each sent twice: `fresh` maps each length to (TTFT,
    prefill) of its first request and of the repeat (what a length costs the first time: GEMM planning,
    allocations)."""
    import http.client
    import socket
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "server.cli", "serve", "--model", model, "--port", str(port), "--prefill-step",
           str(step_size), *(["--gdn-chunked"] if chunked else [])]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, server)
        body = json.dumps({"model": model, "prompt": prompt(T), "max_tokens": max_tokens, "stream": True,
                           "temperature": 0, "ignore_eos": True}).encode()
        ttft, kept, prefill_ms, kept_prefill_ms, phases = [], [], [], [], []
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        for i in range(2 * (runs + 1)):  # the first request of each kind is not counted
            first, rid = _first_token(url, body, conn if i % 2 else None)
            if i == 0:  # what the start-up warm-up left for the first request of this length (compilation)
                first_request_ms = first * 1e3
            with urllib.request.urlopen(f"{url}/v1/timings/{rid}", timeout=30) as r:
                record = json.loads(r.read())
            if i > 1:
                # each TTFT median is set against the prefill median of the same requests: a request's TTFT
                # includes its prefill, so the medians keep that order (other requests' prefills need not)
                (kept if i % 2 else ttft).append(first * 1e3)
                (kept_prefill_ms if i % 2 else prefill_ms).append(record["timings"]["prompt_ms"])
                phases.append(record["phases_ms"])
        conn.close()
        seen = {}
        for n in new_lengths(T, fresh):
            body = json.dumps({"model": model, "prompt": prompt(n), "max_tokens": max_tokens, "stream": True,
                               "temperature": 0, "ignore_eos": True}).encode()
            for _ in range(2):
                first, rid = _first_token(url, body)
                with urllib.request.urlopen(f"{url}/v1/timings/{rid}", timeout=30) as r:
                    seen.setdefault(n, []).append((first * 1e3, json.loads(r.read())["timings"]["prompt_ms"]))
        out = {"fresh": seen, "ttft_ms": statistics.median(ttft), "ttft_keepalive_ms": statistics.median(kept),
               "server_prefill_ms": statistics.median(prefill_ms),
               "server_prefill_keepalive_ms": statistics.median(kept_prefill_ms),
               "first_request_ttft_ms": first_request_ms}
        for name in ("submitted", "admitted", "prefill_start", "first_token"):
            out[f"server_{name}_ms"] = statistics.median(p[name] for p in phases)
        return out
    finally:
        server.terminate()
        server.wait(timeout=60)


def print_server_ttft(args, ours: Result | None) -> None:
    T = args.server_ttft
    s = server_ttft(args.model, T, args.runs, True, args.step_size, args.server_max_tokens, args.server_new_lengths)
    engine = f"; engine prefill in this bench {T / ours.prefill_tps[T] * 1e3:.1f} ms" if (
        ours and T in ours.prefill_tps) else ""
    print(f"server, {T}-token prompt, max_tokens {args.server_max_tokens}, --gdn-chunked: time to first token "
          f"{s['ttft_ms']:.1f} ms (client side), "
          f"server-recorded prefill {s['server_prefill_ms']:.1f} ms{engine}; TTFT / server prefill "
          f"{s['ttft_ms'] / s['server_prefill_ms']:.2f}")
    print(f"server, the first {T}-token request after start-up (and its warm-up): time to first token "
          f"{s['first_request_ttft_ms']:.1f} ms")
    kept = s["ttft_keepalive_ms"]
    print(f"server, the same requests over a kept-alive connection: time to first token {kept:.1f} ms; "
          f"TTFT / server prefill {kept / s['server_prefill_keepalive_ms']:.2f}")
    print(f"server phases since the request arrived (ms): parsed and queued {s['server_submitted_ms']:.2f}, "
          f"admitted {s['server_admitted_ms']:.2f}, prefill start "
          f"{s['server_prefill_start_ms']:.2f}, first token {s['server_first_token_ms']:.1f}; the rest of the "
          f"client's TTFT (HTTP both ways, parsing) {s['ttft_ms'] - s['server_first_token_ms']:.1f}")
    for n, ((ttft, pre), (ttft2, pre2)) in s["fresh"].items():
        print(f"server, a {n}-token prompt, a length not seen before: time to first token {ttft:.1f} ms (prefill "
              f"{pre:.1f}); the same prompt again {ttft2:.1f} ms (prefill {pre2:.1f})")


def gates(results: list[Result], reference: str) -> list[str]:
    """Each system's last-position log-probabilities against `reference`'s: largest difference over the top
    reference tokens, and whether the argmax agrees (bf16 systems differ by rounding; a wrong kernel would
    differ by O(1))."""
    ref = next(r for r in results if r.system == reference)
    lines = []
    for r in results:
        if r is ref:
            continue
        for T, lp in r.logprobs.items():
            if T in ref.logprobs:
                top = np.argsort(ref.logprobs[T])[-20:]
                diff = float(np.abs(lp[top] - ref.logprobs[T][top]).max())
                same = int(lp.argmax()) == int(ref.logprobs[T].argmax())
                lines.append(f"{r.system} vs {reference} @{T}: max |d logprob| over its top 20 = {diff:.1e}, "
                             f"argmax {'same' if same else 'DIFFERENT'}")
    return lines


def table(results: list[Result], contexts: list[int], decode_context: int) -> str:
    head = ["system", *(f"prefill tok/s @{T}" for T in contexts), f"decode tok/s @{decode_context}",
            "peak GPU memory GB"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for r in results:
        cells = [r.system, *(f"{r.prefill_tps[T]:,.0f}" if T in r.prefill_tps else "—" for T in contexts),
                 f"{r.decode_tps:,.1f}" if r.decode_tps else "—", f"{r.peak_gb:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(results: list[Result], contexts: list[int]) -> list[str]:
    by = {r.system: r for r in results}
    ours = by.get("deltaserve --gdn-chunked")
    lines = []
    for name in ("transformers", "mlx-lm"):
        peer = by.get(name)
        if ours and peer:
            cells = [f"@{T} {ours.prefill_tps[T] / peer.prefill_tps[T]:.2f}x" for T in contexts
                     if T in peer.prefill_tps]
            dec = f"; decode {ours.decode_tps / peer.decode_tps:.1f}x" if ours.decode_tps and peer.decode_tps else ""
            lines.append(f"--gdn-chunked / {name}: prefill " + ", ".join(cells) + dec)
    return lines


def weight_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-0.8b", help="a demo name (engine.demo) or a checkpoint directory")
    parser.add_argument("--contexts", default="512,2048,8192")
    parser.add_argument("--systems", default="ours,transformers,mlx-lm")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--step-size", type=int, default=None,
                        help="tokens per prefill step (default: the backend's)")
    parser.add_argument("--decode-context", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--decode-runs", type=int, default=None,
                        help="generations the decode rate is the median of (default: --runs)")
    parser.add_argument("--mlx-lm-max", type=int, default=2048, help="longest prompt given to mlx-lm (slow)")
    parser.add_argument("--server-ttft", type=int, default=0, metavar="T",
                        help="also time the first token of a T-token prompt through `deltaserve serve --gdn-chunked`")
    parser.add_argument("--server-max-tokens", type=int, default=2, help="max_tokens of the TTFT requests")
    parser.add_argument("--server-new-lengths", type=int, default=3, metavar="N",
                        help="then N prompts of lengths the server has not seen, each twice (first-request cost)")
    parser.add_argument("--alternate", action="store_true",
                        help="also time --gdn-chunked and transformers prefill in alternating runs (ratios only)")
    parser.add_argument("--our-rows", default="serial,chunked", choices=["serial,chunked", "chunked,serial"],
                        help="the order our two rows run in (each loads its own model after the last one's is "
                             "dropped: does the second row's decode pay for what the first left behind?)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


def main() -> None:
    configure_long_running()  # the server's process settings (CUDA-graph and buffer caches)
    args = _parser().parse_args()
    args.step_size = args.step_size or default_prefill_step()
    args.decode_runs = args.decode_runs or args.runs
    args.contexts = [int(t) for t in args.contexts.split(",")]
    systems = args.systems.split(",")
    path = ensure_demo(args.model) if not Path(args.model).is_dir() else Path(args.model)
    dtype = DEMO_DTYPES.get(args.model, mx.bfloat16)

    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, check=False).stdout.strip() if mx.cuda.is_available() else ""
    print(f"{args.model} ({dtype}, {weight_bytes(path) / 1e9:.2f} GB of weights), B = 1, greedy; "
          f"device: {smi or mx.default_device()}; MLX {mx.__version__}, Python {platform.python_version()}; "
          f"chunk size {args.chunk_size}, prefill step {args.step_size}")
    results: list[Result] = []
    if "mlx-lm" in systems and (r := run_mlx_lm(path, args)):
        results.append(r)
    if "transformers" in systems and (r := run_transformers(path, dtype, args)):
        results.append(r)
    if "ours" in systems:
        rows = {m: run_ours(path, dtype, args, m) for m in args.our_rows.split(",")}
        results += [rows[m] for m in ("serial", "chunked") if m in rows]
    print(table(results, args.contexts, args.decode_context))
    for line in [*ratios(results, args.contexts), *(f"{r.system}: {r.note}" for r in results if r.note)]:
        print(line)
    if args.alternate:
        for line in alternating_ratios(path, dtype, args):
            print(line)
    ours = next((r for r in results if r.system == "deltaserve --gdn-chunked"), None)
    if ours and ours.decode_tps:
        print(f"decode reads {weight_bytes(path) / 1e9:.2f} GB of weights per token: at {ours.decode_tps:.1f} tok/s "
              f"that is {weight_bytes(path) * ours.decode_tps / 1e9:.0f} GB/s")
    for line in gates(results, "deltaserve serial"):
        print(line)
    if args.server_ttft:
        print_server_ttft(args, ours)
    if args.json:
        rows = [{"system": r.system, "prefill_tps": r.prefill_tps, "decode_tps": r.decode_tps, "peak_gb": r.peak_gb,
                 "note": r.note} for r in results]
        args.json.write_text(json.dumps({"model": args.model, "device": smi, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

"""The `deltaserve` command: `serve` (the OpenAI-compatible HTTP server), `generate` (one-shot generation
with timing) and `bench` (serial vs chunked GDN prefill, interleaved A/B)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

ENV_NO_PRELOAD = "DELTASERVE_NO_BLAS_PRELOAD"
ENV_REEXECED = "DELTASERVE_BLAS_REEXEC"
ENV_CHUNKED = "DELTASERVE_GDN_CHUNKED"


def maybe_preload_openblas(argv: list[str]) -> None:
    """On Linux CPU, re-execute once with the system OpenBLAS preloaded (MLX's bundled BLAS is ~30x slower)."""
    if os.environ.get(ENV_NO_PRELOAD) or os.environ.get(ENV_REEXECED):
        return
    from engine import backend

    lib = backend.find_openblas()
    if lib is None or backend.backend_name() != "cpu" or backend.loaded_openblas():
        return
    env = dict(os.environ, **{ENV_REEXECED: "1"})
    env["LD_PRELOAD"] = ":".join(p for p in (lib, os.environ.get("LD_PRELOAD")) if p)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "server.cli", *argv], env)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from engine.generate import DEFAULT_MIN_CHUNKED_TOKENS, DEFAULT_PREFILL_STEP, PREFILL_STEP_BY_BACKEND

    p.add_argument("--model", default="demo", help="local directory, Hugging Face repo id, demo or demo-0.8b")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    by_backend = ", ".join(f"{n} on {b}" for b, n in PREFILL_STEP_BY_BACKEND.items())
    p.add_argument("--prefill-step", type=_positive_int, default=None,
                   help=f"tokens per prefill step (default {by_backend}, else {DEFAULT_PREFILL_STEP})")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--gdn-chunked",
        action="store_true",
        default=_env_flag(ENV_CHUNKED),
        help=f"chunked-parallel GDN prefill (also {ENV_CHUNKED}=1); decode always uses the serial step",
    )
    p.add_argument("--chunk-size", type=int, default=64, choices=[16, 32, 64, 128], help="GDN chunk size")
    p.add_argument(
        "--gdn-min-tokens",
        type=int,
        default=DEFAULT_MIN_CHUNKED_TOKENS,
        help="prefill steps shorter than this stay on the serial GDN path even with --gdn-chunked",
    )


def _prefill_options(args: argparse.Namespace):
    from engine.generate import PrefillOptions

    return PrefillOptions(
        method="chunked" if args.gdn_chunked else "serial",
        chunk_size=args.chunk_size,
        step_size=args.prefill_step,
        min_chunked_tokens=args.gdn_min_tokens,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deltaserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve_parser(sub)
    g = sub.add_parser("generate", help="generate once from a prompt and print text and timing")
    _add_model_args(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn with the chat template")
    g.add_argument("--enable-thinking", action="store_true", help="let the chat template open a think block")
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--temp", type=float, default=0.0, help="0 is greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.set_defaults(func=cmd_generate)
    b = sub.add_parser("bench", help="A/B benchmark of serial vs chunked GDN prefill (interleaved)")
    _add_model_args(b)
    b.add_argument("--mode", choices=["core", "e2e"], default="core",
                   help="core: the GDN core alone at --heads x --head-dim; e2e: whole-model prefill of --model")
    b.add_argument("--contexts", default="289,529,1009,2048,4096", help="comma-separated prompt lengths")
    b.add_argument("--runs", type=int, default=3, help="timed serial/chunked pairs per context")
    b.add_argument("--warmup", type=int, default=1, help="untimed pairs per context before the runs")
    b.add_argument("--heads", type=int, default=16, help="core mode: value heads (0.8B: 16)")
    b.add_argument("--head-dim", type=int, default=128, help="core mode: Dk = Dv (0.8B: 128)")
    b.add_argument("--layers", type=int, default=18, help="core mode: GDN layers to account for (0.8B: 18)")
    b.add_argument("--builtin", action="store_true",
                   help="core mode: also time MLX's mx.fast.gated_delta_update on the same inputs")
    b.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    b.set_defaults(func=cmd_bench)
    return parser


def _add_serve_parser(sub) -> None:
    """Flags map 1:1 onto server.settings.Settings fields; unset flags (None) take the Settings defaults."""
    s = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API")
    _add_model_args(s)
    s.add_argument("--host", help="bind address (default 127.0.0.1: loopback only)")
    s.add_argument("--port", type=int, help="default 8000")
    s.add_argument("--served-model-name", help="model id clients send (default: --model)")
    s.add_argument("--max-queue", type=int, help="waiting requests before 503 (default 64)")
    s.add_argument("--max-tokens-default", type=int, help="max_tokens when a request gives none (default 512)")
    s.add_argument("--context-length", type=int, help="prompt + max_tokens limit (default: the model's)")
    s.add_argument("--api-key", default=os.environ.get("DELTASERVE_API_KEY"), help="or env DELTASERVE_API_KEY")
    s.add_argument("--cors-origin", action="append", help="allowed CORS origin (repeatable)")
    s.add_argument("--timing-store-size", type=int, help="timing records kept (default 1000)")
    s.add_argument("--max-body-bytes", type=int, help="request body cap (default 8 MiB)")
    s.add_argument("--keepalive-seconds", type=float, help="SSE keep-alive interval (default 2)")
    s.add_argument("--no-warm-up", dest="warm_up", action="store_false", default=None,
                   help="skip compiling kernels at start")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from engine.engine import Engine
    from engine.worker import EngineWorker
    from server.app import create_app
    from server.settings import Settings

    fields = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    try:
        settings = Settings(**fields)
    except ValidationError as e:
        print(f"deltaserve: error: invalid setting: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}",
              file=sys.stderr)
        return 2
    log = logging.getLogger("deltaserve")
    if not settings.api_key:
        log.info("no API key set: the /v1 routes accept every client on %s", settings.host)
    worker = EngineWorker(lambda: Engine.load(settings.model, settings.dtype, settings.prefill_options()),
                          max_queue=settings.max_queue, warm_up=settings.warm_up)
    config = uvicorn.Config(None, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                            timeout_graceful_shutdown=5, access_log=False)  # ours: server.app
    server = uvicorn.Server(config)
    config.app = create_app(settings, worker, on_load_failure=lambda: setattr(server, "should_exit", True))
    server.run()
    if worker.load_error is not None:
        from engine.errors import DeltaserveError

        err = worker.load_error
        print(f"deltaserve: error: {err if isinstance(err, DeltaserveError) else repr(err)}", file=sys.stderr)
        return 2
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from engine.engine import Engine
    from engine.sampling import SamplingParams

    engine = Engine.load(args.model, args.dtype, _prefill_options(args))
    for line in engine.describe():
        logging.getLogger("deltaserve").info(line)
    if args.chat:
        prompt = engine.chat_tokens([{"role": "user", "content": args.prompt}], args.enable_thinking)
    else:
        prompt = engine.encode(args.prompt)
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temp,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=args.stop,
    )
    result = None
    for result in engine.generate(prompt, params):
        print(result.text, end="", flush=True)
    print()
    if result is not None:
        print(
            f"prompt: {result.prompt_tokens} tokens in {result.prefill_seconds * 1e3:.1f} ms "
            f"({result.prompt_tps:.1f} tok/s, {result.prefill_path} GDN prefill"
            + (f", C={result.chunk_size}" if result.chunk_size else "")
            + ") | "
            f"generation: {result.generation_tokens} tokens, {result.generation_tps:.1f} tok/s | "
            f"finish: {result.finish_reason} | peak memory {result.peak_memory_gb:.3f} GB",
            file=sys.stderr,
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json
    import platform

    import mlx.core as mx
    from tqdm import tqdm

    from engine import backend, bench

    contexts = [int(x) for x in args.contexts.split(",") if x.strip()]
    dtype = backend.resolve_dtype(args.dtype)
    options = _prefill_options(args)
    if args.mode == "core":
        run = bench.core_runner(args.heads, args.head_dim, dtype, args.chunk_size)
        what = f"GDN core, {args.heads} heads x {args.head_dim}, one layer timed, x{args.layers} layers"
    else:
        from engine.engine import Engine

        engine = Engine.load(args.model, args.dtype, options)
        run = bench.e2e_runner(engine.model, options, engine.tokenizer.vocab_size)
        dtype = backend.resolve_dtype(engine.info.dtype)
        what = f"end-to-end prefill of {args.model} (step {options.step_size})"
    header = [
        f"deltaserve bench: {what}; dtype {backend.dtype_name(dtype)}, chunk size {args.chunk_size}",
        f"{backend.describe()}; MLX {mx.__version__}, Python {platform.python_version()}",
        f"{args.warmup} warm-up + {args.runs} timed interleaved serial/chunked pairs per context",
    ]
    methods = ("serial", "chunked") + (("builtin",) if args.builtin and args.mode == "core" else ())
    # whole-model logits in bf16 differ by rounding through every layer (DESIGN.md §3): looser bound, same top
    gate = dict(gate_rel=1e-4 if dtype == mx.float32 else 0.1, same_argmax=True) if args.mode == "e2e" else {}
    with tqdm(total=len(contexts) * (args.warmup + args.runs), file=sys.stderr, leave=False, disable=None) as bar:
        rows = bench.run_bench(run, contexts, runs=args.runs, warmup=args.warmup, dtype=dtype, methods=methods,
                               progress=lambda msg: (bar.set_description(msg), bar.update()), **gate)
    scale = args.layers if args.mode == "core" else 1
    if args.json:
        print(json.dumps({"header": header, "layers": scale, "rows": [r.to_dict() for r in rows]}, indent=2))
    else:
        print("\n".join(header))
        print(bench.format_table(rows, scale=scale))
    return 0 if all(r.gate_ok for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    maybe_preload_openblas(argv)
    from engine.backend import configure_long_running

    configure_long_running()
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    from engine.errors import DeltaserveError

    try:
        return args.func(args)
    except DeltaserveError as e:
        print(f"deltaserve: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `deltaserve` command: `generate` (one-shot generation with timing)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

ENV_NO_PRELOAD = "DELTASERVE_NO_BLAS_PRELOAD"
ENV_REEXECED = "DELTASERVE_BLAS_REEXEC"


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


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="demo", help="local directory, Hugging Face repo id, demo or demo-0.8b")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--prefill-step", type=int, default=2048, help="tokens per prefill step")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deltaserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
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
    return parser


def cmd_generate(args: argparse.Namespace) -> int:
    from engine.engine import Engine
    from engine.generate import PrefillOptions
    from engine.sampling import SamplingParams

    engine = Engine.load(args.model, args.dtype, PrefillOptions(step_size=args.prefill_step))
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
            f"({result.prompt_tps:.1f} tok/s, {result.prefill_path} GDN prefill) | "
            f"generation: {result.generation_tokens} tokens, {result.generation_tps:.1f} tok/s | "
            f"finish: {result.finish_reason} | peak memory {result.peak_memory_gb:.3f} GB",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    maybe_preload_openblas(argv)
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

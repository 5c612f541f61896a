"""The `deltaserve` command as a user runs it: output, timing line, and errors without tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )


def test_generate_prints_text_timing_and_startup_facts(demo_dir):
    r = _cli("generate", "--model", "demo", "--prompt", "hello", "--max-tokens", "5", "--chat")
    assert r.returncode == 0, r.stderr
    assert "prompt: " in r.stderr and "tok/s" in r.stderr and "finish: " in r.stderr
    assert "backend: cpu" in r.stderr or "backend: cuda" in r.stderr or "backend: metal" in r.stderr
    assert "RANDOM weights" in r.stderr and "GDN prefill path: serial" in r.stderr
    assert "prefill attention: fused CUDA kernel" in r.stderr or "prefill attention: MLX's (" in r.stderr
    if "backend: cuda" not in r.stderr:
        assert "prefill attention: MLX's (not an NVIDIA GPU)" in r.stderr


@pytest.mark.parametrize(
    "model, message",
    [
        ("./no/such/model", "model directory ./no/such/model does not exist"),
        ("nobody-xyz/not-a-model", "could not get 'nobody-xyz/not-a-model' from the Hugging Face Hub"),
    ],
    ids=["missing-dir", "offline-repo"],
)
def test_bad_model_is_one_clear_line(model, message):
    r = _cli("generate", "--model", model, "--prompt", "hi", env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    assert message in r.stderr and "--model demo" in r.stderr
    assert "Traceback" not in r.stderr


def test_non_positive_prefill_step_is_a_usage_error():
    r = _cli("generate", "--model", "demo", "--prompt", "hi", "--prefill-step", "0")
    assert r.returncode == 2 and "--prefill-step: must be at least 1" in r.stderr and "Traceback" not in r.stderr


def test_empty_prompt_is_a_clear_error(demo_dir):
    r = _cli("generate", "--model", "demo", "--prompt", "")
    assert r.returncode == 2 and "prompt is empty" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "env, args, expected",
    [
        ({"DELTASERVE_GDN_CHUNKED": "1"}, [], "chunked GDN prefill, C=64"),
        ({}, ["--gdn-chunked", "--chunk-size", "32"], "chunked GDN prefill, C=32"),
        ({}, [], "serial GDN prefill"),
        ({}, ["--gdn-chunked", "--gdn-min-tokens", "100000"], "serial GDN prefill"),
    ],
    ids=["env", "flag-C32", "default-serial", "below-threshold"],
)
def test_generate_records_the_gdn_path_it_took(demo_dir, env, args, expected):
    r = _cli("generate", "--model", "demo", "--prompt", "x" * 40, "--max-tokens", "2", *args, env=env)
    assert r.returncode == 0, r.stderr
    assert expected in r.stderr


def test_bench_e2e_json_on_the_demo_model(demo_dir):
    import json

    r = _cli("bench", "--mode", "e2e", "--model", "demo", "--contexts", "33,70", "--runs", "1", "--warmup", "0",
             "--chunk-size", "16", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [row["tokens"] for row in rows] == [33, 70]
    assert all(row["gate_ok"] and row["chunked_tps"] > 0 for row in rows)

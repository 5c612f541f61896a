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


def test_empty_prompt_is_a_clear_error(demo_dir):
    r = _cli("generate", "--model", "demo", "--prompt", "")
    assert r.returncode == 2 and "prompt is empty" in r.stderr and "Traceback" not in r.stderr

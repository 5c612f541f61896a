"""bench/decode_loop.py (a decode token's time: step, loop, host share) runs on the small demo checkpoint and
prints every row with a rate that matches its time."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO


def test_decode_loop_prints_each_row():
    r = subprocess.run([sys.executable, "bench/decode_loop.py", "--model", "demo", "--context", "24", "--tokens",
                        "6"], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = re.findall(r"^\| ([^|]+) \| ([\d.]+) \| ([\d.]+) \|$", r.stdout, re.M)
    assert len(rows) == 5, r.stdout
    for name, ms, tps in rows:
        assert abs(float(tps) - 1e3 / float(ms)) <= 0.01 * float(tps) + 0.1, name
    assert "compiled step broken: None" in r.stdout and "host ms per token" in r.stdout


def test_decode_loop_short_prints_the_compiled_rows_only():
    """--short (the A/B part of tools/device-checks.sh): the pipelined step and generate_step, then the host share."""
    r = subprocess.run([sys.executable, "bench/decode_loop.py", "--model", "demo", "--context", "24", "--tokens",
                        "6", "--short", "--repeats", "2"], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = re.findall(r"^\| ([^|]+) \| ([\d.]+) \| ([\d.]+) \|$", r.stdout, re.M)
    assert [name for name, _, _ in rows] == ["step compiled, pipelined (argmax only)", "generate_step (compiled step)"]
    assert "host ms per token" in r.stdout

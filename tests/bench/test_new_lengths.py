"""bench/new_lengths.py prints, per prompt length, the first request's and the repeat's prefill, second-token and
later-token times."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO


def _run(*extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/new_lengths.py", "--model", "demo", *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_prints_first_and_repeat_times_per_length():
    r = _run("--lengths", "20,33", "--tokens", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"warm-up \d+\.\d+ s \(of which warm_row_buckets \d+\.\d+ s, warm_prefill_buckets \d+\.\d+ s, "
                     r"warm_head_rows \d+\.\d+ s",
                     r.stdout), r.stdout
    rows = re.findall(r"^\| (\d+) \|(.*)\|$", r.stdout, re.M)
    assert [int(n) for n, _ in rows] == [20, 33], r.stdout
    for _, cells in rows:
        pairs = [tuple(map(float, c.split(" / "))) for c in cells.split("|")]
        assert len(pairs) == 3 and all(t > 0 for pair in pairs for t in pair), r.stdout


def test_too_few_tokens_is_a_usage_error():
    r = _run("--tokens", "2")
    assert r.returncode == 2 and "at least 3" in r.stderr

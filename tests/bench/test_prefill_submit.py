"""bench/prefill_submit.py times prefill at each length for each submission setting (its logits check runs too)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO


def _run(*extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/prefill_submit.py", "--model", "demo", "--contexts", "24,40",
                           "--rounds", "1", *extra], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_prints_a_row_per_length_and_a_time_per_setting():
    r = _run("--every", "0,1,3")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = re.findall(r"^\| (\d+) \|(.*)\|$", r.stdout, re.M)
    assert [int(t) for t, _ in rows] == [24, 40], r.stdout
    for _, cells in rows:
        times = [tuple(map(float, c.split(" / "))) for c in cells.split("|")]
        assert len(times) == 3 and all(0 < low <= med for med, low in times), r.stdout

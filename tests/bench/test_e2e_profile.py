"""bench/e2e_profile.py on the small demo checkpoint: every component it turns off still gives a running model
(same shapes), and the table and the step sweep come out whole."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO


def test_profile_runs_every_ablation_and_the_step_sweep():
    r = subprocess.run(
        [sys.executable, "bench/e2e_profile.py", "--model", "demo", "--contexts", "40,90", "--runs", "1",
         "--decode-context", "12", "--decode-steps", "2", "--step-sweep", "32,64"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = dict(re.findall(r"^\| ([^|]+?) \| (.*) \|$", r.stdout, flags=re.M))
    assert set(rows) >= {"nothing", "GDN core", "attention core", "GDN prologue"}, r.stdout
    assert all(len(cells.split("|")) == 3 for cells in rows.values() if "---" not in cells)
    assert re.search(r"prefill of 90 tokens by step size: 32: [\d.]+ ms \(peak [\d.]+ GB\), 64: ", r.stdout), r.stdout
    assert "peak MLX memory of one prefill" in r.stdout
    assert re.search(r"decode step @12: compiled [\d.]+ ms \(the rows above\), op by op [\d.]+ ms", r.stdout), r.stdout

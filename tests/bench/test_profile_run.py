"""bench/profile_run.py (the work a profiler records) runs every mode on the small demo checkpoint
(gdn: one layer's GDN core at the GPU-kernel issue's head shape, 70 tokens: a ragged chunk)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("argv", [["prefill", "40", "--repeat", "2", "--step-size", "16"], ["decode", "3"],
                                  ["gdn", "70", "--repeat", "2"]])
def test_profile_run_completes(argv):
    # -X faulthandler: a crash in native code (seen once, a SIGSEGV with nothing on stderr) leaves its stacks
    cmd = [sys.executable, "-X", "faulthandler", "bench/profile_run.py", *argv, "--model", "demo"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]

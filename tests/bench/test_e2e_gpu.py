"""bench/e2e_gpu.py on the small demo checkpoint (CPU here, the GPU where there is one): every system it finds
loads the same safetensors checkpoint, their last-position log-probabilities agree with our serial path, and the
time to first token through a real server includes the prefill the server recorded for the same request."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO


def test_e2e_bench_prints_the_table_and_every_system_agrees_with_ours():
    r = subprocess.run(
        [sys.executable, "bench/e2e_gpu.py", "--model", "demo", "--contexts", "40,100", "--runs", "1",
         "--decode-context", "24", "--decode-tokens", "5", "--systems", "ours,transformers,mlx-lm",
         "--server-ttft", "100", "--alternate"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = re.findall(r"^\| (deltaserve[^|]*|transformers|mlx-lm) \|(.*)\|$", r.stdout, flags=re.M)
    systems = {name.strip() for name, _ in rows}
    assert {"deltaserve serial", "deltaserve --gdn-chunked", "transformers"} <= systems, r.stdout
    for _, cells in rows:  # two prefill rates, a decode rate, a peak: all numbers
        assert all(re.fullmatch(r"[\d,.]+", c.strip()) for c in cells.split("|")), cells
    gates = re.findall(r"^(.*) vs deltaserve serial @(\d+): max \|d logprob\| over its top 20 = (\S+), argmax (\w+)$",
                       r.stdout, flags=re.M)
    assert {g[0] for g in gates} >= {"transformers", "deltaserve --gdn-chunked"}, r.stdout
    for system, T, diff, argmax in gates:  # fp32 demo: the same model to rounding, in three implementations
        assert float(diff) < 1e-3 and argmax == "same", (system, T, diff)
    ttft = re.search(r"time to first token ([\d.]+) ms \(client side\), server-recorded prefill ([\d.]+) ms",
                     r.stdout)
    assert ttft, r.stdout
    assert float(ttft.group(1)) >= float(ttft.group(2)) > 0
    kept = re.search(r"over a kept-alive connection: time to first token ([\d.]+) ms", r.stdout)
    assert kept and float(kept.group(1)) > 0, r.stdout
    first = re.search(r"the first 100-token request after start-up .*: time to first token ([\d.]+) ms", r.stdout)
    assert first and float(first.group(1)) > 0, r.stdout
    phases = re.search(r"parsed and queued ([\d.]+), admitted ([\d.]+), prefill start ([\d.]+), first token "
                       r"([\d.]+);", r.stdout)
    assert phases and [float(x) for x in phases.groups()] == sorted(float(x) for x in phases.groups()), r.stdout
    fresh = re.findall(r"^server, a (\d+)-token prompt, a length not seen before: time to first token ([\d.]+) ms "
                       r"\(prefill ([\d.]+)\); the same prompt again ([\d.]+) ms \(prefill ([\d.]+)\)$", r.stdout,
                       flags=re.M)
    assert len(fresh) == 3 and len({f[0] for f in fresh} | {"100"}) == 4, r.stdout  # three new lengths
    for _, ttft, pre, ttft2, pre2 in fresh:
        assert float(ttft) >= float(pre) > 0 and float(ttft2) >= float(pre2) > 0, fresh
    alternating = re.findall(r"^alternating runs @(\d+): --gdn-chunked ([\d.]+) ms, transformers ([\d.]+) ms: "
                             r"([\d.]+)x$", r.stdout, flags=re.M)
    assert [int(a[0]) for a in alternating] == [40, 100], r.stdout
    for _, ours, theirs, ratio in alternating:
        assert abs(float(theirs) / float(ours) - float(ratio)) < 0.01 + 0.01 * float(ratio), alternating

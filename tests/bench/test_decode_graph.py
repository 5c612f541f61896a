"""bench/decode_graph.py counts the compiled decode step's graph on the NVIDIA path (custom kernels stood in for):
on the demo checkpoint the kernels are those its architecture implies, and neither the linear layers nor the
kernels' wrappers add view nodes (transpose / flatten / reshape) that the host would evaluate each token."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO


def test_decode_graph_counts_the_cuda_step():
    r = subprocess.run([sys.executable, "bench/decode_graph.py", "--model", "demo"], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {name.strip(): int(n) for name, n in re.findall(r"^\| ([^|]+) \| (\d+) \|$", r.stdout, re.M)}
    total = re.search(r"(\d+) nodes in one compiled decode step", r.stdout)
    assert total and int(total.group(1)) == sum(rows.values()), r.stdout
    # demo: 3 GDN layers then 1 attention layer. Layer 0 has no pending residual (MLX's norm, then its fused
    # projections); every later layer's add + norm + projections is one kernel; a GDN layer's core one, an attention
    # layer's two (split attention with its q / k norms and RoPE, combine); each MLP's add + norm + gate | up one;
    # the final add + norm one.
    assert rows["custom kernel (stand-in)"] == (0 + 1 + 1) + 2 * (1 + 1 + 1) + (1 + 2 + 1) + 1, r.stdout
    assert rows["Matmul"] == 4 + 4 + 1 + 1, r.stdout  # o / out / down projections, layer 0's projections, head
    # the tied head's x @ embedding.T keeps its transpose, flatten and unflatten; nothing else adds views but
    # the per-layer split of the fused projections and the shared position's reshape
    for view, most in (("Transpose", 1), ("Flatten", 1), ("Unflatten", 1), ("Reshape", 2)):
        assert rows.get(view, 0) <= most, (view, r.stdout)


def test_prefill_graph_counts_the_cuda_prefill():
    args = ["--model", "demo", "--prefill", "64", "--calls", "2"]
    r = subprocess.run([sys.executable, "bench/decode_graph.py", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {name.strip(): int(n) for name, n in re.findall(r"^\| ([^|]+) \| (\d+) \|$", r.stdout, re.M)}
    total = re.search(r"(\d+) nodes in a 64-token chunked prefill", r.stdout)
    assert total and int(total.group(1)) == sum(rows.values()), r.stdout
    # 3 GDN layers: prologue, the three chunked-core kernels, the gated norm; 1 attention layer: q / k norm +
    # RoPE (its core: MLX's ops, the demo is fp32); residual add + norm: 3 layer inputs after the first, 4 post-mixer,
    # 1 final
    assert rows["custom kernel (stand-in)"] == 3 * (1 + 3 + 1) + 1 + (3 + 4 + 1), r.stdout
    # GDN in / out (3 x 2), attention qkv / o (2) and its scores and values (2), MLP gate|up / down (4 x 2), head
    assert rows["Matmul"] == 3 * 2 + 2 + 2 + 4 * 2 + 1, r.stdout
    # a loaded model's linear layers multiply by held weight views: only the tied head's x @ embedding.T keeps a
    # transpose, flatten and unflatten; the attention's head-major layout the other transposes
    for view, most in (("Transpose", 4), ("Flatten", 1), ("Unflatten", 1)):
        assert rows.get(view, 0) <= most, (view, r.stdout)

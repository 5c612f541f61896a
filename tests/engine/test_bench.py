"""The A/B benchmark's bookkeeping: interleaving, the correctness gate, and a red gate printing no ratio."""

from __future__ import annotations

import mlx.core as mx

from engine import bench


def test_runs_are_interleaved_and_the_table_reports_medians():
    calls = []

    def run(T, method):
        calls.append(method)
        return (2.0 if method == "serial" else 1.0), mx.ones((3,))

    rows = bench.run_bench(run, [100], runs=3, warmup=1, dtype=mx.float32)
    assert calls == ["serial", "chunked"] * 4
    row = rows[0]
    assert row.gate_ok and len(row.seconds["serial"]) == 3
    assert row.tps("serial") == 50 and row.tps("chunked") == 100 and row.speedup == 2
    table = bench.format_table(rows)
    assert "| 100 | 50 | 100 | +100% (2.00x) | 0.0% | ok" in table


def test_a_broken_chunked_path_prints_fail_and_no_ratio():
    def run(T, method):
        return 1.0, mx.ones((3,)) * (2.0 if method == "chunked" else 1.0)

    rows = bench.run_bench(run, [64], runs=1, warmup=0, dtype=mx.float32)
    table = bench.format_table(rows)
    assert not rows[0].gate_ok and "FAIL" in table and "x)" not in table


def test_core_runner_agrees_between_paths():
    run = bench.core_runner(heads=2, head_dim=16, dtype=mx.float32, chunk_size=16)
    rows = bench.run_bench(run, [40], runs=1, warmup=0, dtype=mx.float32, methods=("serial", "chunked", "builtin"))
    assert rows[0].gate_ok and set(rows[0].seconds) == {"serial", "chunked", "builtin"}

"""Process settings for long runs on MLX's CUDA backend."""

from __future__ import annotations

import os

from engine import backend


def test_long_running_turns_off_the_cuda_graph_cache_abort_but_keeps_a_user_choice(monkeypatch):
    monkeypatch.delenv("MLX_ENABLE_CACHE_THRASHING_CHECK", raising=False)
    monkeypatch.delenv("MLX_CUDA_GRAPH_CACHE_SIZE", raising=False)
    backend.configure_long_running()
    assert os.environ["MLX_ENABLE_CACHE_THRASHING_CHECK"] == "0"
    assert int(os.environ["MLX_CUDA_GRAPH_CACHE_SIZE"]) > 100  # MLX's default evicts a decode step's graphs
    monkeypatch.setenv("MLX_ENABLE_CACHE_THRASHING_CHECK", "1")
    monkeypatch.setenv("MLX_CUDA_GRAPH_CACHE_SIZE", "64")
    backend.configure_long_running()
    assert os.environ["MLX_ENABLE_CACHE_THRASHING_CHECK"] == "1"
    assert os.environ["MLX_CUDA_GRAPH_CACHE_SIZE"] == "64"


def test_long_running_bounds_the_buffer_cache_on_gpus(monkeypatch):
    limits = []
    monkeypatch.setattr(backend.mx, "device_info", lambda: {"memory_size": 80 << 30})
    monkeypatch.setattr(backend.mx, "set_cache_limit", lambda n: limits.append(n) or 1 << 40)
    backend.configure_long_running()
    assert limits[-1] == (80 << 30) // backend.CACHE_FRACTION  # MLX's larger default lowered to the bound

"""Process settings for long runs on MLX's CUDA backend."""

from __future__ import annotations

import os

from engine import backend


def test_long_running_turns_off_the_cuda_graph_cache_abort_but_keeps_a_user_choice(monkeypatch):
    monkeypatch.delenv("MLX_ENABLE_CACHE_THRASHING_CHECK", raising=False)
    backend.configure_long_running()
    assert os.environ["MLX_ENABLE_CACHE_THRASHING_CHECK"] == "0"
    monkeypatch.setenv("MLX_ENABLE_CACHE_THRASHING_CHECK", "1")
    backend.configure_long_running()
    assert os.environ["MLX_ENABLE_CACHE_THRASHING_CHECK"] == "1"

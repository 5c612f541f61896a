"""Suite-wide set-up: no network, a private cache for demo checkpoints, shared demo fixtures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download
os.environ.setdefault("DELTASERVE_CACHE", str(Path(tempfile.gettempdir()) / "deltaserve-test-cache"))
os.environ.setdefault("MLX_ENABLE_TF32", "0")  # fp32 numerics gates on CUDA must not run in TF32

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    from engine.demo import ensure_demo

    return ensure_demo("demo")


@pytest.fixture(scope="session")
def demo_engine(demo_dir):
    from engine.engine import Engine

    return Engine.load("demo", "float32")

"""A real `deltaserve serve` process on a free loopback port, per configuration (module-scoped)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args: str, log: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "server.cli", "serve", "--model", "demo", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 120) -> Server:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def metric(self, name: str, **labels: str) -> float:
        """Current value of one sample from /metrics (0 when absent), parsed by prometheus_client."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics").text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        return 0.0


def _server(tmp_path_factory, name: str, *args: str, env: dict | None = None) -> Iterator[Server]:
    server = Server(*args, log=tmp_path_factory.mktemp(name) / "server.log", env=env)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="package")
def server(tmp_path_factory, demo_dir) -> Iterator[Server]:
    """Serial GDN path; small prefill steps so long prompts show progress and can be cancelled mid-prefill."""
    yield from _server(tmp_path_factory, "serial", "--prefill-step", "64", "--keepalive-seconds", "0.5")


@pytest.fixture(scope="package")
def chunked_server(tmp_path_factory, demo_dir) -> Iterator[Server]:
    yield from _server(tmp_path_factory, "chunked", "--gdn-chunked", "--chunk-size", "32")


@pytest.fixture(scope="package")
def auth_server(tmp_path_factory, demo_dir) -> Iterator[Server]:
    yield from _server(tmp_path_factory, "auth", "--cors-origin", "http://example.test",
                       env={"DELTASERVE_API_KEY": "sk-test-key"})


@pytest.fixture(scope="package")
def small_server(tmp_path_factory, demo_dir) -> Iterator[Server]:
    """One waiting slot, a short context and small timing store: for overload and limit tests."""
    yield from _server(tmp_path_factory, "small", "--max-queue", "1", "--context-length", "512",
                       "--timing-store-size", "3")

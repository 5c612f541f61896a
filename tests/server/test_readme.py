"""Every curl example in the README, run verbatim with bash against a real server (PORT set)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO


def readme_curl_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("curl ")]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_has_curl_examples_and_all_succeed(server):
    commands = readme_curl_commands()
    assert len(commands) >= 8
    for cmd in commands:
        r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PORT": str(server.port)})
        assert r.returncode == 0 and r.stdout.strip(), f"{cmd}\n{r.stdout}\n{r.stderr}"
        out = r.stdout.strip()
        if out.startswith("{"):
            assert "error" not in json.loads(out), out
        elif out.startswith("data:"):
            assert out.endswith("data: [DONE]")

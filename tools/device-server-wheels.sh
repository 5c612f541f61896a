#!/usr/bin/env bash
# Offline wheels of the server's and the tests' pure-Python dependencies for the lent NVIDIA machine (Python 3.12,
# no network; its python3 already has torch, transformers, safetensors and numpy), into the ignored folder .whl3/.
# Carry it with .whl2 in the call that sources tools/device-env.sh, which installs it into /tmp/site:
#   run(carry=[".whl2", ".whl3"], command=". tools/device-env.sh && python3 -m pytest -q tests/server ...")
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
grep -qx "/.whl3/" .git/info/exclude 2>/dev/null || echo "/.whl3/" >> .git/info/exclude
rm -rf .whl3 && mkdir -p .whl3
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl3 \
  "fastapi>=0.115" "uvicorn>=0.30" "httptools>=0.6" "uvloop>=0.19" "pydantic>=2.7" "pydantic-settings>=2.3" "prometheus-client>=0.20" \
  "openai>=1.50" "httpx>=0.27"
du -sh .whl3 && ls .whl3

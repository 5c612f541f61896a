#!/usr/bin/env bash
# The measurement battery for the lent NVIDIA machine, in parts that each fit one call (600 s). Outputs go to
# $OUT/<part>-*.txt (and the terminal). Needs the wheels installed by tools/device-env.sh in this call or an
# earlier one on the same warm machine: carry [".whl2", ".whl3"] after the `cp .whl/* /root/w/` call.
#   bash tools/device-checks.sh e2e      # component ablation + step sweep, then the peers' table + server TTFT
#   bash tools/device-checks.sh gates    # GPU tests (fused decode, fp32 / TF32 / whole-model gates) + racecheck
#   bash tools/device-checks.sh kernels  # per-layer kernel table, bf16 q / k and the model's fp32 q / k
#   bash tools/device-checks.sh tiles    # the state pass's (TV, NT) tiling against the shipped one
set -uo pipefail
. tools/device-env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
case "${1:?part: e2e, gates, kernels or tiles}" in
  e2e)
    timeout 260 python3 bench/e2e_profile.py --contexts 2048,8192 --runs 3 2>&1 | tee "$out/e2e-profile.txt"
    timeout 300 python3 bench/e2e_gpu.py --runs 3 --decode-tokens 32 --server-ttft 2048 --json "$out/e2e.json" 2>&1 \
      | grep -v -i "warn\|deprecat\|forward_call\|falling back" | tee "$out/e2e-table.txt"
    ;;
  gates)
    timeout 420 python3 -m pytest -q -x tests/kernels/test_decode.py tests/engine/test_cache.py \
      tests/kernels/test_gpu_kernels.py tests/kernels/test_chunked.py tests/engine/test_chunked_model.py 2>&1 \
      | tail -5 | tee "$out/gates-pytest.txt"
    timeout 150 compute-sanitizer --tool racecheck python3 bench/gdn_sanitize.py 2>&1 | tail -3 \
      | tee "$out/gates-racecheck.txt"
    ;;
  kernels)
    timeout 280 python3 bench/gpu_kernels.py --contexts 512,4096,16384 --runs 5 2>&1 | grep -v -i warn \
      | tee "$out/kernels-bf16.txt"
    timeout 280 python3 bench/gpu_kernels.py --contexts 4096,16384 --runs 5 --qk-dtype float32 2>&1 \
      | grep -v -i warn | tee "$out/kernels-fp32qk.txt"
    ;;
  tiles)
    timeout 280 python3 bench/gpu_state_tiles.py 2>&1 | tee "$out/tiles.txt"
    ;;
  *) echo "unknown part $1" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The measurement battery for the lent NVIDIA machine, in parts that each fit one call (600 s). Outputs go to
# $OUT/<part>-*.txt (and the terminal). Needs the wheels installed by tools/device-env.sh in this call or an
# earlier one on the same warm machine: carry [".whl2", ".whl3"] after the `cp .whl/* /root/w/` call.
#   bash tools/device-checks.sh e2e      # component ablation + step sweep, then the peers' table + server TTFT
#   bash tools/device-checks.sh gates    # GPU tests (fused decode, fp32 / TF32 / whole-model gates) + racecheck
#   bash tools/device-checks.sh model    # model-level GPU gates (prologue, decode kernel, compiled decode, fused
#                                        # projections, caches, parity, chunked model)
#   bash tools/device-checks.sh kernels  # per-layer kernel table, bf16 q / k (the model's) and fp32 q / k; the
#                                        # fused attention against MLX's path
#   bash tools/device-checks.sh tiles [16x256,16x512] # the state pass's (TV, NT) tilings against the shipped one
#   bash tools/device-checks.sh layers   # one prefill step split by layer component, and its kernels under ncu
#   bash tools/device-checks.sh loop     # a decode token's time: step vs token loop; our e2e rows + server TTFT
#   bash tools/device-checks.sh tune     # MLX's kernels per CUDA graph: decode and prefill
#   bash tools/device-checks.sh decode   # the compiled decode step's kernels under ncu; one layer's step, fused vs ops
#   bash tools/device-checks.sh ab-env VAR  # a decode token's time with VAR=mlx (MLX's ops) and without, alternating:
#                                        # DELTASERVE_NORM, DELTASERVE_ATTENTION, DELTASERVE_GEMV switch our kernels
#   bash tools/device-checks.sh ab-decode # a decode token's time (bench/decode_loop.py --short) in a base tree
#                                        # (exp/base, as for `ab`) against this tree's, alternating, 512 / 8192 context
#   bash tools/device-checks.sh submit   # prefill by layers between submissions of a step (bench/prefill_submit.py)
#   bash tools/device-checks.sh ab-prefill # chunked prefill (bench/prefill_submit.py, the shipped submission) in a
#                                        # base tree (exp/base, as for `ab`) against this tree's, alternating
#   bash tools/device-checks.sh ttft-gil # server TTFT with CPython's GIL switch interval lowered (5 / 1 / 0.2 ms)
#   bash tools/device-checks.sh state-ncu [KERNEL] # the state pass (or KERNEL: chunk_prep, chunk_out) at 16384
#                                        # tokens under Nsight Compute's full set: stall reasons, shared-memory
#                                        # wavefronts and the source lines they come from
#   bash tools/device-checks.sh ab-kernels # bench/gpu_kernels.py (ours vs fla, whole core) in exp/base and this tree,
#                                        # alternating, 4096 / 16384 tokens
#   bash tools/device-checks.sh lengths  # what a new prompt length costs its first request (prefill, 2nd token),
#                                        # with CUDA graphs and without (bench/new_lengths.py)
#   bash tools/device-checks.sh ab       # GDN kernel phases of a base tree (exp/base: `git archive main | tar -x -C
#                                        # exp/base`, carried untracked) against this tree's, alternating, one call
set -uo pipefail
. tools/device-env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
case "${1:?part: e2e, gates, kernels or tiles}" in
  e2e)
    timeout 260 python3 bench/e2e_profile.py --contexts 2048,8192 --runs 3 2>&1 | tee "$out/e2e-profile.txt"
    timeout 320 python3 bench/e2e_gpu.py --runs 3 --decode-tokens 64 --decode-runs 7 --server-ttft 2048 \
      --alternate --json "$out/e2e.json" 2>&1 \
      | grep -v -i "warn\|deprecat\|forward_call\|falling back" | tee "$out/e2e-table.txt"
    ;;
  gates)
    timeout 420 python3 -m pytest -q --maxfail=5 -rf tests/kernels/test_decode.py tests/engine/test_cache.py \
      tests/kernels/test_attention.py tests/kernels/test_gpu_kernels.py tests/kernels/test_chunked.py tests/kernels/test_norm.py \
      tests/kernels/test_gemv.py 2>&1 \
      | tail -40 | tee "$out/gates-pytest.txt"
    timeout 150 compute-sanitizer --tool racecheck python3 bench/gdn_sanitize.py 2>&1 | tail -3 \
      | tee "$out/gates-racecheck.txt"
    timeout 100 compute-sanitizer --tool racecheck python3 bench/attention.py --contexts 130 --runs 1 2>&1 \
      | tail -2 | tee -a "$out/gates-racecheck.txt"
    ;;
  loop)
    timeout 200 python3 bench/decode_loop.py 2>&1 | tee "$out/loop-decode.txt"
    timeout 300 python3 bench/e2e_gpu.py --systems ours --contexts 2048,8192 --runs 3 --decode-tokens 64 \
      --server-ttft 2048 2>&1 | grep -v -i "warn\|deprecat" | tee "$out/loop-e2e.txt"
    ;;
  tune)
    # MLX's CUDA backend records up to MLX_MAX_OPS_PER_BUFFER kernels (default 20) per CUDA graph it launches
    for ops in 20 60 120 250; do
      echo "== MLX_MAX_OPS_PER_BUFFER=$ops"
      MLX_MAX_OPS_PER_BUFFER=$ops timeout 100 python3 bench/decode_loop.py --tokens 64 2>&1 | grep "|\|host"
      MLX_MAX_OPS_PER_BUFFER=$ops timeout 100 python3 bench/e2e_gpu.py --systems ours --contexts 2048,8192 \
        --decode-tokens 64 2>&1 | grep "| deltaserve"
    done 2>&1 | tee "$out/tune-ops.txt"
    ;;
  ttft)
    # TTFT through the server by max_tokens (the first streamed chunk must not wait for later tokens)
    timeout 60 python3 -m pytest -q tests/kernels/test_prologue.py 2>&1 | tail -1 | tee "$out/ttft.txt"
    for n in 1 2 16; do
      timeout 100 python3 bench/e2e_gpu.py --systems ours --contexts 2048 --runs 7 --decode-tokens 2 \
        --server-ttft 2048 --server-max-tokens $n 2>&1 | grep "^server"
    done 2>&1 | tee -a "$out/ttft.txt"
    ;;
  decode)
    timeout 300 ncu --metrics gpu__time_duration.sum --csv python3 bench/profile_run.py decode 8 2>/dev/null \
      | python3 bench/ncu_sum.py 2>/dev/null | head -45 | tee "$out/decode-ncu.txt"
    # One layer's decode step: GPU time of the fused kernel against the same work as MLX ops (issue 5), per step
    # from runs of 11 and 1 steps (the set-up's kernels cancel)
    for mode in kernel ops fused layer-ops empty; do  # empty: one launch's floor (a kernel copying one float)
      for steps in 1 11; do
        timeout 60 ncu --metrics gpu__time_duration.sum --csv python3 bench/gpu_decode.py $mode $steps 2>/dev/null \
          | python3 bench/ncu_sum.py 2>/dev/null | tail -1
      done | awk -v m=$mode '{us[NR] = $2; n[NR] = $5} END {printf "%s: %.2f us of GPU time, %.1f kernels a step\n",
        m, (us[2] - us[1]) / 10, (n[2] - n[1]) / 10}'
    done 2>&1 | tee "$out/decode-step-ncu.txt"
    ;;
  model)
    timeout 400 python3 -m pytest -q --maxfail=5 -rf tests/kernels/test_prologue.py tests/kernels/test_decode.py \
      tests/engine/test_cache.py tests/engine/test_decode.py tests/engine/test_loading.py tests/engine/test_generate.py \
      tests/engine/test_parity.py tests/engine/test_chunked_model.py 2>&1 | tail -30 | tee "$out/model-pytest.txt"
    ;;
  kernels)
    timeout 280 python3 bench/gpu_kernels.py --contexts 512,4096,16384 --runs 5 2>&1 | grep -v -i warn \
      | tee "$out/kernels-bf16.txt"
    timeout 280 python3 bench/gpu_kernels.py --contexts 4096,16384 --runs 5 --qk-dtype float32 2>&1 \
      | grep -v -i warn | tee "$out/kernels-fp32qk.txt"
    timeout 120 python3 bench/attention.py --contexts 512,2048,8192,16384 2>&1 | grep -v -i warn \
      | tee "$out/kernels-attention.txt"
    # our GDN kernels' GPU time alone (3 calls at each length; the table's "fla kernels only" is the same reading)
    for T in 4096 16384; do
      echo "== T=$T, 3 calls"
      timeout 120 ncu --cache-control none --clock-control none --metrics gpu__time_duration.sum --csv \
        python3 bench/profile_run.py gdn $T --repeat 3 2>/dev/null | python3 bench/ncu_sum.py 2>/dev/null
    done 2>&1 | tee "$out/kernels-ours-gpu-time.txt"
    ;;
  tiles)
    timeout 280 python3 bench/gpu_state_tiles.py ${2:+--tiles "$2"} 2>&1 | tee "$out/tiles.txt"
    ;;
  layers)
    timeout 200 python3 bench/e2e_layers.py --tokens 2048 2>&1 | tee "$out/layers-2048.txt"
    timeout 150 python3 bench/e2e_layers.py --tokens 8192 --runs 3 --reps 3 2>&1 | tee "$out/layers-8192.txt"
    # Every kernel of a warm-up and a timed 2048-token chunked prefill, GPU time summed per kernel name; then the
    # same number of 2048-token steps as one 4096-token prefill (a first and a second step): what grows.
    timeout 220 ncu --metrics gpu__time_duration.sum --csv python3 bench/profile_run.py prefill 2048 --repeat 2 \
      2>/dev/null | python3 bench/ncu_sum.py 2>/dev/null | head -40 | tee "$out/layers-ncu.txt"
    timeout 200 ncu --metrics gpu__time_duration.sum --csv python3 bench/profile_run.py prefill 4096 2>/dev/null \
      | python3 bench/ncu_sum.py 2>/dev/null | head -40 | tee "$out/layers-ncu-4096.txt"
    ;;
  lengths)
    for graphs in 1 0; do
      echo "== MLX_USE_CUDA_GRAPHS=$graphs"
      MLX_USE_CUDA_GRAPHS=$graphs timeout 180 python3 bench/new_lengths.py 2>&1 | grep -v -i "warn\|loading"
    done 2>&1 | tee "$out/lengths.txt"
    ;;
  ab)
    # Alternating runs of the same script from the two trees on one warm GPU: compare only within this output.
    [ -d exp/base/kernels ] || { echo "no base tree at exp/base" >&2; exit 2; }
    for round in 1 2; do
      for tree in exp/base .; do
        echo "== round $round: $tree"
        (cd "$tree" && PYTHONPATH=/tmp/site:$PWD timeout 120 python3 bench/gpu_phases.py 4096,16384 2>&1 | grep "^T=")
      done
    done 2>&1 | tee "$out/ab-phases.txt"
    ;;
  ab-kernels)
    # The GPU-kernel issue's table (whole GDN core vs fla, one layer) from the base tree and this one, alternating
    [ -d exp/base/kernels ] || { echo "no base tree at exp/base" >&2; exit 2; }
    root=$PWD
    for round in 1 2; do
      for tree in exp/base .; do
        echo "== round $round: $tree"
        (cd "$tree" && PYTHONPATH=/tmp/site:$PWD timeout 140 python3 "$root/bench/gpu_kernels.py" \
          --contexts 4096,16384 --runs 5 2>&1 | grep "^| [0-9]\|^decode\|^layer")
      done
    done 2>&1 | tee "$out/ab-kernels.txt"
    ;;
  ab-env)
    # One family of our kernels (named by its switch) against MLX's ops, alternating in one call: a decode token's
    # time (the first run of each process compiles; the gates / model parts cover correctness)
    var=${2:?ab-env needs the switch, e.g. DELTASERVE_GEMV}
    for round in 1 2; do
      for mode in mlx on; do
        echo "== round $round: $var=$mode"
        env "$var=$mode" timeout 140 python3 bench/decode_loop.py --tokens 64 2>&1 | grep "|\|host"
      done
    done 2>&1 | tee "$out/ab-env-$var.txt"
    ;;
  submit)
    timeout 300 python3 bench/prefill_submit.py --every 0,2,4 2>&1 | grep -v -i warn | tee "$out/submit.txt"
    ;;
  ab-prefill)
    [ -d exp/base/engine ] || { echo "no base tree at exp/base" >&2; exit 2; }
    root=$PWD
    for round in 1 2 3; do
      for tree in exp/base .; do
        echo "== round $round: $tree"
        (cd "$tree" && PYTHONPATH=/tmp/site:$PWD timeout 90 python3 "$root/bench/prefill_submit.py" --every 2 \
          --min-tokens 1024 --contexts 512,2048,8192 --rounds 7 2>&1 | grep "^|")
      done
    done 2>&1 | tee "$out/ab-prefill.txt"
    ;;
  ab-decode)
    # this tree's script on each tree's engine (bench/ comes first on sys.path, the tree's packages from PYTHONPATH)
    [ -d exp/base/engine ] || { echo "no base tree at exp/base" >&2; exit 2; }
    root=$PWD
    for ctx in 512 8192; do
      for round in 1 2; do
        for tree in exp/base .; do
          echo "== context $ctx, round $round: $tree"
          (cd "$tree" && PYTHONPATH=/tmp/site:$PWD timeout 90 python3 "$root/bench/decode_loop.py" --short \
            --context $ctx --tokens 128 --repeats 5 2>&1 | grep "|\|host")
        done
      done
    done 2>&1 | tee "$out/ab-decode.txt"
    ;;
  ttft-gil)
    # Is the server's first token held back by the GIL (the worker thread building and submitting the next decode
    # step while the event loop waits to send)? The same TTFT run with CPython's switch interval (5 ms by default)
    # lowered through a sitecustomize on the server's PYTHONPATH; no product change. Compare the server lines.
    for swi in default 0.001 0.0002; do
      dir=/tmp/swi-$swi && mkdir -p $dir
      [ $swi = default ] && : > $dir/sitecustomize.py || echo "import sys; sys.setswitchinterval($swi)" > $dir/sitecustomize.py
      echo "== switch interval $swi"
      PYTHONPATH=$dir:$PYTHONPATH timeout 120 python3 bench/e2e_gpu.py --systems ours --contexts 2048 --runs 7 \
        --decode-tokens 2 --server-ttft 2048 2>&1 | grep "^server"
    done 2>&1 | tee "$out/ttft-gil.txt"
    ;;
  state-ncu)
    # The GDN state pass (the chunked core's sequential phase, ~half its time at 16384 tokens), its second call
    # (the first compiles), under Nsight Compute's full set with the CUDA source: where its warps stall, the
    # shared-memory traffic per instruction (bank conflicts), and the SASS with each instruction's executions and
    # stall samples (MLX's NVRTC build has no -lineinfo, so the CUDA source view is empty: SASS only).
    kern=${2:-chunk_state}  # or chunk_prep (phase A), chunk_out
    timeout 450 ncu --kernel-name regex:$kern --launch-skip 1 --launch-count 1 --set full --import-source yes \
      --page details --print-details all python3 bench/profile_run.py gdn 16384 --repeat 2 2>&1 \
      | tee "$out/state-ncu-details.txt" | grep -i -A2 "stall\|bank\|wavefront\|Duration\|Warp Cycles" | head -80
    timeout 120 ncu --kernel-name regex:$kern --launch-skip 1 --launch-count 1 --import-source yes \
      --section SourceCounters --page source --print-source sass --csv python3 bench/profile_run.py gdn 16384 \
      --repeat 2 > "$out/state-ncu-source.csv" 2>/dev/null; wc -l "$out/state-ncu-source.csv"
    ;;
  *) echo "unknown part $1" >&2; exit 2 ;;
esac

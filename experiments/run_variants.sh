# One device call: time each experimental kernel body against main's (bench/gpu_phases.py), then run the GPU
# gates with the experimental bodies in. Needs `cp .whl/* /root/w/` in the previous call (carry .whl) and
# this one run with carry [".whl2"]:  bash experiments/run_variants.sh
# State-pass bodies: main's and experiments/state_prefetch16.body use one staging buffer (STATE_BUFFERS = 1),
# kernels/src/gdn_chunk_state.body (cp.async rounds) two.
. tools/device-env.sh
mkdir -p /tmp/new && cp kernels/src/gdn_chunk_*.body /tmp/new/
buffers() { sed -i "s/^STATE_BUFFERS = .*/STATE_BUFFERS = $1/" kernels/gpu.py; }
run() { echo "$1 | $(python3 bench/gpu_phases.py 512,4096,16384 2>&1 | tr '\n' ' ')" | tee -a "${OUT:-/tmp}/variants.txt"; }
buffers 1; cp experiments/main/*.body kernels/src/ && run "main bodies"
cp experiments/state_prefetch16.body kernels/src/gdn_chunk_state.body && run "state: prefetch in 16-byte loads"
buffers 2; cp /tmp/new/gdn_chunk_state.body kernels/src/ && run "state: cp.async double buffer"
buffers 1; cp experiments/main/gdn_chunk_state.body kernels/src/
for k in prep out; do
  cp /tmp/new/gdn_chunk_$k.body kernels/src/ && run "new $k only"
  cp experiments/main/gdn_chunk_$k.body kernels/src/
done
buffers 2; cp /tmp/new/*.body kernels/src/ && run "all new (cp.async state)"
MLX_ENABLE_TF32=0 timeout 300 python3 -m pytest -q -x tests/kernels/test_gpu_kernels.py tests/kernels/test_chunked.py \
  2>&1 | tail -2 | tee -a "${OUT:-/tmp}/variants.txt"

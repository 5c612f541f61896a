# One device call: time each experimental kernel body against main's (bench/gpu_phases.py), then run the GPU
# gates with all experimental bodies in. Needs `cp .whl/* /root/w/` in the previous call (carry .whl) and
# this one run with carry [".whl2"]:  bash experiments/run_variants.sh
. tools/device-env.sh
mkdir -p /tmp/new && cp kernels/src/gdn_chunk_*.body /tmp/new/
run() { echo "$1 | $(python3 bench/gpu_phases.py 512,4096,16384 2>&1 | tr '\n' ' ')" | tee -a "${OUT:-/tmp}/variants.txt"; }
cp experiments/main/*.body kernels/src/ && run "main bodies"
for k in prep state out; do
  cp /tmp/new/gdn_chunk_$k.body kernels/src/ && run "new $k only"
  cp experiments/main/gdn_chunk_$k.body kernels/src/
done
cp /tmp/new/*.body kernels/src/ && run "all new"
MLX_ENABLE_TF32=0 timeout 300 python3 -m pytest -q -x tests/kernels/test_gpu_kernels.py tests/kernels/test_chunked.py \
  2>&1 | tail -2 | tee -a "${OUT:-/tmp}/variants.txt"

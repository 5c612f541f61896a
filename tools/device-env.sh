# Source on the lent NVIDIA machine (after `cp .whl/* /root/w/` in the previous call, carry .whl2 in this
# one): installs MLX's CUDA wheel, flash-linear-attention, mlx-lm and pytest into /tmp/site once per warm
# machine (and, when .whl3 from tools/device-server-wheels.sh is carried too, the server's dependencies), then sets
# the environment the benches and GPU tests expect. See docs/BENCHMARKS.md for the runs.
#   . tools/device-env.sh && python3 bench/gpu_kernels.py --contexts 512,4096,16384
if [ ! -d /tmp/site/mlx ]; then
  cat /root/w/mlxcuda.part.aa .whl2/mlxcuda.part.ab > /tmp/mlx_cuda_13-0.32.4-py3-none-manylinux_2_35_x86_64.whl
  python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site /tmp/mlx_cuda_13-*.whl .whl2/*.whl \
    2>&1 | tail -2
fi
if [ -d .whl3 ] && [ ! -d /tmp/site/fastapi ]; then  # server / test dependencies (tools/device-server-wheels.sh)
  python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .whl3/*.whl 2>&1 | tail -2
fi
export PYTHONPATH=/tmp/site:$PWD MLX_ENABLE_CACHE_THRASHING_CHECK=0 PYTHONUNBUFFERED=1 DELTASERVE_CACHE=/tmp/dscache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

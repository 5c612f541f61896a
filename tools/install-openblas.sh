#!/usr/bin/env bash
# Install the system OpenBLAS that `deltaserve` preloads for MLX's CPU backend (~30x faster fp32 matmuls than
# the reference BLAS bundled in the mlx-cpu wheel). Best effort: never fails the build.
set -u
[ "$(uname -s)" = Linux ] || exit 0
ls /usr/lib/*-linux-gnu/libopenblas.so.0 /usr/lib64/libopenblas*.so.0 >/dev/null 2>&1 && exit 0
command -v apt-get >/dev/null 2>&1 || { echo "note: no apt-get; install OpenBLAS for fast CPU matmuls"; exit 0; }
if [ "$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else
  echo "note: run 'sudo apt-get install libopenblas0-pthread' for ~30x faster CPU matmuls"; exit 0
fi
echo "installing libopenblas0-pthread (system OpenBLAS for MLX's CPU backend)"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1 \
  || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1; } \
  || echo "note: could not install libopenblas0-pthread; CPU matmuls will use MLX's slow reference BLAS"
exit 0

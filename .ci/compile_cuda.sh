#!/usr/bin/env bash
# Compile-only check of the CUDA sources for sm_90 (no GPU, no CUDA torch):
# the kernels (.cu, torch-free) with nvcc, the torch registration (.cpp) with
# g++ -fsyntax-only against the CPU torch headers plus a one-line shim.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null; then
  echo "compile_cuda: nvcc not found; install the CUDA toolkit to check the CUDA sources" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for cu in csrc/cuda/*.cu; do
  echo "compile_cuda: nvcc -arch=sm_90 $cu"
  nvcc -std=c++17 -O3 -arch=sm_90 -Icsrc -c "$cu" -o "$tmp/$(basename "$cu").o"
done
mkdir -p "$tmp/shim/c10/cuda/impl"
echo '#define C10_CUDA_BUILD_SHARED_LIBS' > "$tmp/shim/c10/cuda/impl/cuda_cmake_macros.h"
cuda_inc=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")/include
[ -d "$cuda_inc" ] || cuda_inc=/usr/local/cuda/include
torch_inc=$(python -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I' + p for p in include_paths()))")
for cpp in csrc/cuda/*.cpp; do
  echo "compile_cuda: g++ -fsyntax-only $cpp"
  # shellcheck disable=SC2086
  g++ -std=c++17 -fsyntax-only -w $torch_inc -I"$tmp/shim" -I"$cuda_inc" -I/usr/local/cuda/include -Icsrc "$cpp"
done
echo "compile_cuda: OK"

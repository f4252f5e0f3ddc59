// One CUDA thread per row of a small per-sample or per-cube computation (the
// puzzle sampler, the augmentation's draws): a batch is tens of samples and a
// few hundred cubes, so one small launch replaces the dozens of kernels of the
// plain-torch form.  Torch-free, for the nvcc-only compile check.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace rubikops {
namespace cuda {

constexpr int kRowThreads = 128;

// `Row::run(p, t)` (a __device__ static member) for each t < work.
template <typename Row, typename Params>
__global__ void __launch_bounds__(kRowThreads) rows_kernel(Params p, int64_t work) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowThreads + threadIdx.x;
  if (t < work) Row::run(p, t);
}

template <typename Row, typename Params>
cudaError_t launch_rows(const Params& p, int64_t work, cudaStream_t stream) {
  if (work == 0) return cudaSuccess;
  const int64_t blocks = (work + kRowThreads - 1) / kRowThreads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  rows_kernel<Row><<<static_cast<unsigned>(blocks), kRowThreads, 0, stream>>>(p, work);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace rubikops

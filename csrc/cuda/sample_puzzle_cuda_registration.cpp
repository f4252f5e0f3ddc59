// Torch registration of the sampler's CUDA kernel (sample_puzzle_cuda.cu).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../sample_puzzle_checks.h"
#include "sample_puzzle_cuda.h"

namespace rubikops {
namespace {

void sample_puzzle_cuda(const SamplePuzzleSetup& s) {
  const c10::cuda::CUDAGuard guard(std::get<0>(s.outputs).device());
  const cudaError_t err = cuda::launch_sample_puzzle(s.params, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "rubikops.sample_puzzle: CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace
}  // namespace rubikops

TORCH_LIBRARY_IMPL(rubikops, CUDA, m) {
  m.impl("sample_puzzle", &rubikops::sample_puzzle_entry<&rubikops::sample_puzzle_cuda>);
}

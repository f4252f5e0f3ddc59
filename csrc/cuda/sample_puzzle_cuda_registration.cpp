// Torch registration of the sampler's CUDA kernel (sample_puzzle_cuda.cu).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../sample_puzzle_checks.h"
#include "sample_puzzle_cuda.h"

namespace rubikops {
namespace {

SamplePuzzleOutputs sample_puzzle_cuda(const at::Tensor& uniforms, const at::Tensor& volume_shapes,
                                       const at::Tensor& index, const at::Tensor& cells,
                                       const at::Tensor& permutations, const at::Tensor& code_table,
                                       at::IntArrayRef crop_size, int64_t jitter, double mask_prob) {
  const c10::cuda::CUDAGuard guard(uniforms.device());
  // `s.keep` holds the converted inputs until the launch is queued; the
  // caching allocator keeps their memory for the stream after that.
  SamplePuzzleSetup s = prepare_sample_puzzle(uniforms, volume_shapes, index, cells, permutations, code_table,
                                              crop_size, jitter, mask_prob);
  const cudaError_t err = cuda::launch_sample_puzzle(s.params, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "rubikops.sample_puzzle: CUDA launch failed: ", cudaGetErrorString(err));
  return s.outputs;
}

}  // namespace
}  // namespace rubikops

TORCH_LIBRARY_IMPL(rubikops, CUDA, m) {
  m.impl("sample_puzzle", &rubikops::sample_puzzle_cuda);
}

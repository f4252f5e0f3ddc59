// CUDA kernel of rubikops::sample_puzzle: one thread per (sample, cube), each
// running the rule shared with the CPU kernel (csrc/sample_puzzle.h).  A batch
// is a few hundred cubes, so this is one small launch in place of the fifteen
// of the plain-torch sampler, which is what the whole puzzle waited on.
// Torch-free, like extract_cubes_cuda.cu, so CI compiles it with nvcc alone.
#include "../sample_puzzle.h"
#include "sample_puzzle_cuda.h"

namespace rubikops {
namespace cuda {
namespace {

constexpr int kSampleThreads = 128;

__global__ void __launch_bounds__(kSampleThreads) sample_puzzle_kernel(SamplePuzzleParams p) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kSampleThreads + threadIdx.x;
  if (t >= p.B * p.M) return;
  sample_puzzle_cube(p, t / p.M, t % p.M);
}

}  // namespace

cudaError_t launch_sample_puzzle(const SamplePuzzleParams& p, cudaStream_t stream) {
  const int64_t work = p.B * p.M;
  if (work == 0) return cudaSuccess;
  const int64_t blocks = (work + kSampleThreads - 1) / kSampleThreads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  sample_puzzle_kernel<<<static_cast<unsigned>(blocks), kSampleThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace rubikops

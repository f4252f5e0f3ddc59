// CUDA kernel of rubikops::sample_puzzle: one thread per (sample, cube), each
// running the rule shared with the CPU kernel (csrc/sample_puzzle.h).  A batch
// is a few hundred cubes, so this is one small launch in place of the fifteen
// of the plain-torch sampler, which is what the whole puzzle waited on.
// Torch-free, like extract_cubes_cuda.cu, so CI compiles it with nvcc alone.
#include "../sample_puzzle.h"
#include "launch_rows.cuh"
#include "sample_puzzle_cuda.h"

namespace rubikops {
namespace cuda {
namespace {

struct SamplePuzzleRows {
  __device__ static void run(const SamplePuzzleParams& p, int64_t t) { sample_puzzle_cube(p, t / p.M, t % p.M); }
};

}  // namespace

cudaError_t launch_sample_puzzle(const SamplePuzzleParams& p, cudaStream_t stream) {
  return launch_rows<SamplePuzzleRows>(p, p.B * p.M, stream);
}

}  // namespace cuda
}  // namespace rubikops

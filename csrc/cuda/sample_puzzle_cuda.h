// Plain-C++ interface between the sampler's CUDA kernel (sample_puzzle_cuda.cu,
// built with nvcc and no torch headers) and its torch registration
// (sample_puzzle_cuda_registration.cpp).
#pragma once
#include <cuda_runtime.h>

#include "../sample_puzzle.h"

namespace rubikops {
namespace cuda {

// Launches the sampler on `stream`; returns the launch error, if any.
cudaError_t launch_sample_puzzle(const SamplePuzzleParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace rubikops

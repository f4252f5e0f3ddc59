// Plain-C++ interface between the augmentation draws' CUDA kernels
// (augment_draws_cuda.cu, built with nvcc and no torch headers) and their
// torch registration (augment_draws_cuda_registration.cpp).
#pragma once
#include <cuda_runtime.h>

#include "../augment_draws.h"

namespace rubikops {
namespace cuda {

// Launch the draws on `stream`; return the launch error, if any.
cudaError_t launch_crop_affine(const CropAffineParams& p, cudaStream_t stream);
cudaError_t launch_cube_intensity(const CubeIntensityParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace rubikops

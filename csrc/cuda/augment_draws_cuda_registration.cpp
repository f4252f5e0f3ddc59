// Torch registration of the augmentation draws' CUDA kernels (augment_draws_cuda.cu).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../augment_draws_checks.h"
#include "augment_draws_cuda.h"

namespace rubikops {
namespace {

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "rubikops.", op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

void draw_crop_affine_cuda(const DrawSetup<CropAffineParams>& s) {
  const c10::cuda::CUDAGuard guard(s.output.device());
  check_launch(cuda::launch_crop_affine(s.params, c10::cuda::getCurrentCUDAStream()), "draw_crop_affine");
}

void draw_cube_intensity_cuda(const DrawSetup<CubeIntensityParams>& s) {
  const c10::cuda::CUDAGuard guard(s.output.device());
  check_launch(cuda::launch_cube_intensity(s.params, c10::cuda::getCurrentCUDAStream()), "draw_cube_intensity");
}

}  // namespace
}  // namespace rubikops

TORCH_LIBRARY_IMPL(rubikops, CUDA, m) {
  m.impl("draw_crop_affine", &rubikops::draw_crop_affine_entry<&rubikops::draw_crop_affine_cuda>);
  m.impl("draw_cube_intensity", &rubikops::draw_cube_intensity_entry<&rubikops::draw_cube_intensity_cuda>);
}

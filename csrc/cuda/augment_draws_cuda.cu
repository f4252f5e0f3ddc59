// CUDA kernels of rubikops::draw_crop_affine (one thread per sample) and
// rubikops::draw_cube_intensity (one thread per cube), each running the rule
// shared with the CPU kernels (csrc/augment_draws.h): one small launch each in
// place of the ~30 and ~27 kernels of the plain-torch draws.  Torch-free, like
// extract_cubes_cuda.cu, so CI compiles it with nvcc alone.
#include "../augment_draws.h"
#include "augment_draws_cuda.h"
#include "launch_rows.cuh"

namespace rubikops {
namespace cuda {
namespace {

struct CropAffineRows {
  __device__ static void run(const CropAffineParams& p, int64_t b) { crop_affine_row(p, b); }
};

struct CubeIntensityRows {
  __device__ static void run(const CubeIntensityParams& p, int64_t t) { cube_intensity_row(p, t / p.M, t % p.M); }
};

}  // namespace

cudaError_t launch_crop_affine(const CropAffineParams& p, cudaStream_t stream) {
  return launch_rows<CropAffineRows>(p, p.B, stream);
}

cudaError_t launch_cube_intensity(const CubeIntensityParams& p, cudaStream_t stream) {
  return launch_rows<CubeIntensityRows>(p, p.B * p.M, stream);
}

}  // namespace cuda
}  // namespace rubikops

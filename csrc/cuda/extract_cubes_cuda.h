// Plain-C++ interface between the CUDA kernels (extract_cubes_cuda.cu, built
// with nvcc and no torch headers) and their torch registration
// (extract_cubes_cuda_registration.cpp).
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace rubikops {
namespace cuda {

enum class DType : int { kFloat32, kFloat64, kFloat16, kBFloat16, kInt16, kUInt8 };

struct ExtractCubesParams {
  const void* src;
  void* out;                 // forward: the output; backward: the gradient accumulator (float or double)
  const void* grad;          // backward only: the output gradient, contiguous, in out_dtype
  const int64_t* origins;    // (B, M, 3)
  const int64_t* index;      // (B,) or null
  const int64_t* rotations;  // (B, M) or null
  const bool* mask;          // (B, M) or null
  const double* scale;       // (B,) or null
  const double* shift;       // (B,) or null
  const double* affine;      // (B, 3, 4) row-major, or null (the plain copy)
  const int64_t* read_box;   // (B, 2, 3) with affine, or null (the whole source)
  const double* cube_intensity;  // (B, M, kCubeIntensityWidth) row-major, or null (no intensity stage)
  DType in_dtype, out_dtype;
  int64_t N, C, D, H, W, B, M;
  int64_t src_stride[5];
  int64_t cube[3];
  double scale_value, shift_value, clamp_lo, clamp_hi, fill;
  bool arithmetic;
  uint64_t seed, threshold;  // keep iff splitmix64 top 24 bits < threshold
  bool clamp;                // backward only: a clamp bound is set (gradient passes where lo <= v <= hi)
};

// Launches the forward kernel on `stream` (the affine read's when p.affine is
// set); returns the launch error, if any.
cudaError_t launch_extract_cubes(const ExtractCubesParams& p, cudaStream_t stream);

// Launches the backward kernel: adds grad * scale (zero where masked out or
// clamped) into p.out, a zeroed contiguous buffer of the source's shape in
// double when the source or the gradient is double, else float.
cudaError_t launch_extract_cubes_backward(const ExtractCubesParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace rubikops

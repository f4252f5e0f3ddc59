// Torch registration of the CUDA kernel (the kernels themselves live in
// extract_cubes_cuda.cu, which nvcc compiles without torch headers).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "../extract_cubes.h"
#include "../extract_cubes_checks.h"
#include "extract_cubes_cuda.h"

namespace rubikops {
namespace {

cuda::DType to_dtype(c10::ScalarType t) {
  switch (t) {
    case c10::kFloat: return cuda::DType::kFloat32;
    case c10::kDouble: return cuda::DType::kFloat64;
    case c10::kHalf: return cuda::DType::kFloat16;
    case c10::kBFloat16: return cuda::DType::kBFloat16;
    case c10::kShort: return cuda::DType::kInt16;
    case c10::kByte: return cuda::DType::kUInt8;
    default: TORCH_CHECK_TYPE(false, "rubikops.extract_cubes: unsupported dtype ", t);
  }
}

// int64 views of the small index tensors (a no-op when they already are).
at::Tensor as_long(const at::Tensor& t) { return t.to(at::kLong).contiguous(); }

// The kernel parameters shared by the forward and the backward launch, from
// the checked arguments; the small index tensors are converted into `keep` so
// they outlive the launch.
cuda::ExtractCubesParams make_params(const ExtractCubesArgs& a, at::Tensor& out, std::vector<at::Tensor>& keep) {
  const at::Tensor& source = a.source;
  const at::Tensor& origins = a.origins;
  at::Tensor org = as_long(origins);
  at::Tensor idx = a.index ? as_long(*a.index) : at::Tensor();
  at::Tensor rot = a.rotations ? as_long(*a.rotations) : at::Tensor();
  at::Tensor msk = a.mask ? a.mask->to(at::kBool).contiguous() : at::Tensor();
  at::Tensor scl = a.scale ? a.scale->to(at::kDouble).contiguous() : at::Tensor();
  at::Tensor sft = a.shift ? a.shift->to(at::kDouble).contiguous() : at::Tensor();
  keep = {org, idx, rot, msk, scl, sft};
  cuda::ExtractCubesParams p{};
  p.src = source.const_data_ptr();
  p.out = out.mutable_data_ptr();
  p.origins = org.const_data_ptr<int64_t>();
  p.index = idx.defined() ? idx.const_data_ptr<int64_t>() : nullptr;
  p.rotations = rot.defined() ? rot.const_data_ptr<int64_t>() : nullptr;
  p.mask = msk.defined() ? msk.const_data_ptr<bool>() : nullptr;
  p.scale = scl.defined() ? scl.const_data_ptr<double>() : nullptr;
  p.shift = sft.defined() ? sft.const_data_ptr<double>() : nullptr;
  p.in_dtype = to_dtype(source.scalar_type());
  p.out_dtype = to_dtype(out.scalar_type());
  p.N = source.size(0);
  p.C = source.size(1);
  p.D = source.size(2);
  p.H = source.size(3);
  p.W = source.size(4);
  p.B = origins.size(0);
  p.M = origins.size(1);
  for (int k = 0; k < 5; ++k) p.src_stride[k] = source.stride(k);
  for (int k = 0; k < 3; ++k) p.cube[k] = a.cube_size[k];
  p.scale_value = a.scale_value;
  p.shift_value = a.shift_value;
  p.clamp_lo = a.clamp_lo ? *a.clamp_lo : -std::numeric_limits<double>::infinity();
  p.clamp_hi = a.clamp_hi ? *a.clamp_hi : std::numeric_limits<double>::infinity();
  p.fill = a.fill;
  p.arithmetic = a.arithmetic;
  p.seed = static_cast<uint64_t>(a.seed);
  p.threshold = keep_threshold(a.keep_prob);
  return p;
}

at::Tensor& extract_cubes_out_cuda(const at::Tensor& source, const at::Tensor& origins, at::IntArrayRef cube_size,
                                   const std::optional<at::Tensor>& index, const std::optional<at::Tensor>& rotations,
                                   const std::optional<at::Tensor>& mask, double fill, double keep_prob, int64_t seed,
                                   const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                                   double scale_value, double shift_value, std::optional<double> clamp_lo,
                                   std::optional<double> clamp_hi, std::optional<c10::ScalarType> out_dtype,
                                   at::Tensor& out) {
  ExtractCubesArgs a = make_args(source, origins, cube_size, index, rotations, mask, fill, keep_prob, seed, scale,
                                 shift, scale_value, shift_value, clamp_lo, clamp_hi, out_dtype);
  check_out(a, out);
  if (out.numel() == 0) return out;
  TORCH_CHECK_VALUE(a.cube_size[0] * a.cube_size[1] * a.cube_size[2] < (int64_t(1) << 31),
                    "rubikops.extract_cubes: a cube of ", a.cube_size[0], "x", a.cube_size[1], "x", a.cube_size[2],
                    " voxels is too large for the CUDA kernel (at most 2^31 - 1 voxels per cube)");
  const c10::cuda::CUDAGuard guard(source.device());
  std::vector<at::Tensor> keep;
  cuda::ExtractCubesParams p = make_params(a, out, keep);
  const cudaError_t err = cuda::launch_extract_cubes(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "rubikops.extract_cubes: CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

// Gradient w.r.t. the source: grad * scale added at the voxel each output
// came from (atomics), zero where masked out or clamped.  Same result as the
// generic scatter-add in rubikops/ops.py, up to the order of the additions.
at::Tensor extract_cubes_backward_cuda(const at::Tensor& grad, const at::Tensor& source, const at::Tensor& origins,
                                       at::IntArrayRef cube_size, const std::optional<at::Tensor>& index,
                                       const std::optional<at::Tensor>& rotations,
                                       const std::optional<at::Tensor>& mask, double keep_prob, int64_t seed,
                                       const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                                       double scale_value, double shift_value, std::optional<double> clamp_lo,
                                       std::optional<double> clamp_hi) {
  const c10::cuda::CUDAGuard guard(source.device());
  BackwardSetup s = prepare_backward(grad, source, origins, cube_size, index, rotations, mask, keep_prob, seed, scale,
                                     shift, scale_value, shift_value, clamp_lo, clamp_hi);
  const int64_t* size = s.args.cube_size;
  TORCH_CHECK_VALUE(size[0] * size[1] * size[2] < (int64_t(1) << 31),
                    "rubikops.extract_cubes_backward: a cube of more than 2^31 - 1 voxels is too large for the "
                    "CUDA kernel");
  if (s.grad.numel() == 0) return s.acc.to(source.scalar_type());
  std::vector<at::Tensor> keep;
  cuda::ExtractCubesParams p = make_params(s.args, s.acc, keep);
  const at::Tensor g = s.grad.contiguous();  // the kernel indexes the gradient flat
  p.grad = g.const_data_ptr();
  p.out_dtype = to_dtype(g.scalar_type());
  p.clamp = clamp_lo.has_value() || clamp_hi.has_value();
  const cudaError_t err = cuda::launch_extract_cubes_backward(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "rubikops.extract_cubes_backward: CUDA launch failed: ", cudaGetErrorString(err));
  return s.acc.to(source.scalar_type());
}

}  // namespace
}  // namespace rubikops

TORCH_LIBRARY_IMPL(rubikops, CUDA, m) {
  m.impl("extract_cubes", &rubikops::extract_cubes_functional<&rubikops::extract_cubes_out_cuda>);
  m.impl("extract_cubes.out", &rubikops::extract_cubes_out_cuda);
  m.impl("extract_cubes_backward", &rubikops::extract_cubes_backward_cuda);
}

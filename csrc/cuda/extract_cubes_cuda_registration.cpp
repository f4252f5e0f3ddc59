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
  at::Tensor aff = a.affine ? a.affine->to(at::kDouble).contiguous() : at::Tensor();
  at::Tensor box = a.read_box ? as_long(*a.read_box) : at::Tensor();
  at::Tensor cin = a.cube_intensity ? a.cube_intensity->to(at::kDouble).contiguous() : at::Tensor();
  keep = {org, idx, rot, msk, scl, sft, aff, box, cin};
  cuda::ExtractCubesParams p{};
  p.src = source.const_data_ptr();
  p.out = out.mutable_data_ptr();
  p.origins = org.const_data_ptr<int64_t>();
  p.index = idx.defined() ? idx.const_data_ptr<int64_t>() : nullptr;
  p.rotations = rot.defined() ? rot.const_data_ptr<int64_t>() : nullptr;
  p.mask = msk.defined() ? msk.const_data_ptr<bool>() : nullptr;
  p.scale = scl.defined() ? scl.const_data_ptr<double>() : nullptr;
  p.shift = sft.defined() ? sft.const_data_ptr<double>() : nullptr;
  p.affine = aff.defined() ? aff.const_data_ptr<double>() : nullptr;
  p.read_box = box.defined() ? box.const_data_ptr<int64_t>() : nullptr;
  p.cube_intensity = cin.defined() ? cin.const_data_ptr<double>() : nullptr;
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

void extract_cubes_cuda(const ExtractCubesArgs& a, at::Tensor& out) {
  TORCH_CHECK_VALUE(a.cube_numel() < (int64_t(1) << 31), "rubikops.extract_cubes: a cube of ", a.cube_size[0], "x",
                    a.cube_size[1], "x", a.cube_size[2],
                    " voxels is too large for the CUDA kernel (at most 2^31 - 1 voxels per cube)");
  const c10::cuda::CUDAGuard guard(a.source.device());
  std::vector<at::Tensor> keep;
  cuda::ExtractCubesParams p = make_params(a, out, keep);
  const cudaError_t err = cuda::launch_extract_cubes(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "rubikops.extract_cubes: CUDA launch failed: ", cudaGetErrorString(err));
}

// Gradient w.r.t. the source: grad * scale added at the voxel each output
// came from (atomics), zero where masked out or clamped.  Same result as the
// generic scatter-add in rubikops/_library.py, up to the order of the additions.
void extract_cubes_backward_cuda(const ExtractCubesArgs& a, const at::Tensor& grad, at::Tensor& acc) {
  TORCH_CHECK_VALUE(a.cube_numel() < (int64_t(1) << 31),
                    "rubikops.extract_cubes_backward: a cube of more than 2^31 - 1 voxels is too large for the "
                    "CUDA kernel");
  const c10::cuda::CUDAGuard guard(a.source.device());
  std::vector<at::Tensor> keep;
  cuda::ExtractCubesParams p = make_params(a, acc, keep);
  const at::Tensor g = grad.contiguous();  // the kernel indexes the gradient flat
  p.grad = g.const_data_ptr();
  p.out_dtype = to_dtype(g.scalar_type());
  p.clamp = a.has_clamp();
  const cudaError_t err = cuda::launch_extract_cubes_backward(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "rubikops.extract_cubes_backward: CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace
}  // namespace rubikops

TORCH_LIBRARY_IMPL(rubikops, CUDA, m) {
  using namespace rubikops;
  m.impl("extract_cubes", &extract_cubes_functional<&extract_cubes_cuda>);
  m.impl("extract_cubes.out", &extract_cubes_out<&extract_cubes_cuda>);
  m.impl("extract_cubes_backward", &extract_cubes_backward<&extract_cubes_backward_cuda>);
}

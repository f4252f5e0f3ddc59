// Argument checks shared by the C++ backends.  These are the cheap, shape-level
// checks (no device sync): they run on every call, also with validate=False,
// and together with the clamping in cube_geometry they keep every kernel in
// bounds.  The data-dependent checks (origins in range, codes valid, ...) live
// in rubikops/ops.py and run when validate=True.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

namespace rubikops {

// The op's arguments in schema order (rubikops/_schema.py), written once for
// C++: FIRST(type, name) for the first, NEXT(type, name) for each after it.
// The parameter list of every kernel entry, the names it forwards, and the
// fields and constructor of ExtractCubesArgs are expansions of this list.
#define RUBIKOPS_FOR_EXTRACT_CUBES_ARGUMENTS(FIRST, NEXT) \
  FIRST(const at::Tensor&, source)                        \
  NEXT(const at::Tensor&, origins)                        \
  NEXT(at::IntArrayRef, cube_size)                        \
  NEXT(const std::optional<at::Tensor>&, index)           \
  NEXT(const std::optional<at::Tensor>&, rotations)       \
  NEXT(const std::optional<at::Tensor>&, mask)            \
  NEXT(double, fill)                                      \
  NEXT(double, keep_prob)                                 \
  NEXT(int64_t, seed)                                     \
  NEXT(const std::optional<at::Tensor>&, scale)           \
  NEXT(const std::optional<at::Tensor>&, shift)           \
  NEXT(double, scale_value)                               \
  NEXT(double, shift_value)                               \
  NEXT(std::optional<double>, clamp_lo)                   \
  NEXT(std::optional<double>, clamp_hi)                   \
  NEXT(std::optional<c10::ScalarType>, out_dtype)         \
  NEXT(const std::optional<at::Tensor>&, affine)          \
  NEXT(const std::optional<at::Tensor>&, read_box)        \
  NEXT(const std::optional<at::Tensor>&, cube_intensity)

#define RUBIKOPS_ARGUMENT_PARAMETER_FIRST(type, name) type name
#define RUBIKOPS_ARGUMENT_PARAMETER_NEXT(type, name) , type name
#define RUBIKOPS_ARGUMENT_NAME_FIRST(type, name) name
#define RUBIKOPS_ARGUMENT_NAME_NEXT(type, name) , name
#define RUBIKOPS_ARGUMENT_FIELD(type, name) std::decay_t<type> name;
#define RUBIKOPS_ARGUMENT_INIT_FIRST(type, name) name(name)
#define RUBIKOPS_ARGUMENT_INIT_NEXT(type, name) , name(name)
#define RUBIKOPS_EXTRACT_CUBES_PARAMETERS \
  RUBIKOPS_FOR_EXTRACT_CUBES_ARGUMENTS(RUBIKOPS_ARGUMENT_PARAMETER_FIRST, RUBIKOPS_ARGUMENT_PARAMETER_NEXT)
#define RUBIKOPS_EXTRACT_CUBES_NAMES \
  RUBIKOPS_FOR_EXTRACT_CUBES_ARGUMENTS(RUBIKOPS_ARGUMENT_NAME_FIRST, RUBIKOPS_ARGUMENT_NAME_NEXT)

inline bool is_supported_dtype(c10::ScalarType t) {
  return t == c10::kFloat || t == c10::kDouble || t == c10::kHalf || t == c10::kBFloat16 || t == c10::kShort ||
         t == c10::kByte;
}

inline c10::ScalarType resolve_out_dtype(const at::Tensor& source, std::optional<c10::ScalarType> out_dtype) {
  if (out_dtype) return *out_dtype;
  return at::isFloatingType(source.scalar_type()) ? source.scalar_type() : c10::kFloat;
}

// What an optional per-sample or per-cube tensor must hold.
enum class Holds { kIndex, kBool, kFloat };

inline void check_vector(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& source,
                         std::vector<int64_t> shape, Holds holds) {
  if (!t) return;
  TORCH_CHECK_VALUE(t->sizes() == at::IntArrayRef(shape), "rubikops.extract_cubes: ", name, " must have shape ",
                    at::IntArrayRef(shape), ", got ", t->sizes());
  TORCH_CHECK_VALUE(t->device() == source.device(), "rubikops.extract_cubes: ", name, " is on ", t->device(),
                    " but source is on ", source.device());
  const auto dt = t->scalar_type();
  switch (holds) {
    case Holds::kIndex:
      TORCH_CHECK_TYPE(dt == c10::kInt || dt == c10::kLong, "rubikops.extract_cubes: ", name,
                       " must be int32 or int64, got ", dt);
      break;
    case Holds::kBool:
      TORCH_CHECK_TYPE(dt == c10::kBool, "rubikops.extract_cubes: ", name, " must be a bool tensor, got ", dt);
      break;
    case Holds::kFloat:
      TORCH_CHECK_TYPE(at::isFloatingType(dt), "rubikops.extract_cubes: ", name,
                       " as a tensor must be floating point, got ", dt);
      break;
  }
}

// Whether two tensors of one device may share a byte: their [first, last]
// byte ranges intersect (addresses, not storages, so aliases made with
// from_blob count too).  Conservative for interleaved strided views (refused
// though disjoint), exact for the contiguous out= buffers callers pass.
inline bool may_overlap(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0 || a.device() != b.device()) return false;
  auto range = [](const at::Tensor& t) {
    int64_t span = 0;
    for (int64_t d = 0; d < t.dim(); ++d) span += (t.size(d) - 1) * std::abs(t.stride(d));
    const auto first = reinterpret_cast<uintptr_t>(t.const_data_ptr());
    return std::make_pair(first, first + static_cast<uintptr_t>((span + 1) * t.element_size()));
  };
  const auto ra = range(a), rb = range(b);
  return ra.first < rb.second && rb.first < ra.second;
}

// One call's arguments, checked: the shape-level checks (no device sync)
// that run on every call, validate=False included, and together with the
// clamping in cube_geometry keep every kernel in bounds.  Each backend
// implements its kernels on this struct.  It owns its tensors but views
// cube_size (the caller's array), so it must not outlive the call: it is
// built on the stack of each kernel entry and cannot be copied.
//   affine (B, 3, 4): cube voxels are read at affine[b] applied to their crop-frame position, trilinearly.
//   read_box (B, 2, 3), with affine: the lowest and highest voxel per axis sample b's read may touch
//   (clamped into the source by the kernels); none: the whole source.
struct ExtractCubesArgs {
  RUBIKOPS_FOR_EXTRACT_CUBES_ARGUMENTS(RUBIKOPS_ARGUMENT_FIELD, RUBIKOPS_ARGUMENT_FIELD)
  c10::ScalarType out_scalar_type;  // out_dtype resolved: the source's floating dtype, float32 for integers
  bool arithmetic;                  // values change on the way (scale, shift, clamp, affine, cube_intensity)

  ExtractCubesArgs(RUBIKOPS_EXTRACT_CUBES_PARAMETERS);
  ExtractCubesArgs(const ExtractCubesArgs&) = delete;
  ExtractCubesArgs& operator=(const ExtractCubesArgs&) = delete;
  std::vector<int64_t> out_shape() const {
    return {origins.size(0), origins.size(1), source.size(1), cube_size[0], cube_size[1], cube_size[2]};
  }
  int64_t cube_numel() const { return cube_size[0] * cube_size[1] * cube_size[2]; }
  bool has_clamp() const { return clamp_lo.has_value() || clamp_hi.has_value(); }
};

inline ExtractCubesArgs::ExtractCubesArgs(RUBIKOPS_EXTRACT_CUBES_PARAMETERS)
    : RUBIKOPS_FOR_EXTRACT_CUBES_ARGUMENTS(RUBIKOPS_ARGUMENT_INIT_FIRST, RUBIKOPS_ARGUMENT_INIT_NEXT) {
  TORCH_CHECK_VALUE(source.dim() == 5, "rubikops.extract_cubes: source must be (N, C, D, H, W), got shape ",
                    source.sizes());
  TORCH_CHECK_VALUE(origins.dim() == 3 && origins.size(2) == 3,
                    "rubikops.extract_cubes: origins must be (B, M, 3), got shape ", origins.sizes());
  TORCH_CHECK_TYPE(origins.scalar_type() == c10::kInt || origins.scalar_type() == c10::kLong,
                   "rubikops.extract_cubes: origins must be int32 or int64, got ", origins.scalar_type());
  TORCH_CHECK_TYPE(is_supported_dtype(source.scalar_type()), "rubikops.extract_cubes: unsupported source dtype ",
                   source.scalar_type());
  TORCH_CHECK_VALUE(cube_size.size() == 3, "rubikops.extract_cubes: cube_size must have 3 entries");
  TORCH_CHECK_VALUE(origins.device() == source.device(), "rubikops.extract_cubes: origins is on ", origins.device(),
                    " but source is on ", source.device());
  const int64_t B = origins.size(0), M = origins.size(1);
  for (int k = 0; k < 3; ++k) {
    TORCH_CHECK_VALUE(cube_size[k] >= 1 && cube_size[k] <= source.size(2 + k),
                      "rubikops.extract_cubes: cube_size[", k, "] = ", cube_size[k], " must be in [1, ",
                      source.size(2 + k), "] (the source's extent along that axis)");
  }
  TORCH_CHECK_VALUE(source.size(0) >= 1 || B == 0, "rubikops.extract_cubes: source holds no volume");
  TORCH_CHECK_VALUE(index || source.size(0) == B, "rubikops.extract_cubes: without index, source.shape[0] (",
                    source.size(0), ") must equal B (", B, ")");
  check_vector(index, "index", source, {B}, Holds::kIndex);
  check_vector(rotations, "rotations", source, {B, M}, Holds::kIndex);
  check_vector(mask, "mask", source, {B, M}, Holds::kBool);
  check_vector(scale, "scale", source, {B}, Holds::kFloat);
  check_vector(shift, "shift", source, {B}, Holds::kFloat);
  check_vector(affine, "affine", source, {B, 3, 4}, Holds::kFloat);
  TORCH_CHECK_VALUE(!read_box || affine, "rubikops.extract_cubes: read_box bounds the affine read: it needs affine");
  check_vector(read_box, "read_box", source, {B, 2, 3}, Holds::kIndex);
  check_vector(cube_intensity, "cube_intensity", source, {B, M, kCubeIntensityWidth}, Holds::kFloat);
  const auto odt = resolve_out_dtype(source, out_dtype);
  TORCH_CHECK_TYPE(is_supported_dtype(odt), "rubikops.extract_cubes: unsupported out_dtype ", odt);
  // An integer output stores fill as is: a value it cannot hold would wrap
  // (uint8 300 -> 44) or be undefined (NaN).
  if (odt == c10::kByte || odt == c10::kShort) {
    const double lo = odt == c10::kByte ? 0.0 : -32768.0, hi = odt == c10::kByte ? 255.0 : 32767.0;
    TORCH_CHECK_VALUE(fill >= lo && fill <= hi && std::floor(fill) == fill, "rubikops.extract_cubes: fill = ", fill,
                      " is not a value of the ", odt, " output (an integer in [", lo, ", ", hi, "])");
  }
  // shift_value -0.0 (what Python passes for shift=None) is an exact no-op:
  // x + (-0.0) == x for every x, -0.0 included, where x + 0.0 turns -0.0 into +0.0.
  const bool shift_is_noop = shift_value == 0.0 && std::signbit(shift_value);
  arithmetic = scale || shift || clamp_lo || clamp_hi || scale_value != 1.0 || !shift_is_noop || affine ||
               cube_intensity;
  TORCH_CHECK_TYPE(at::isFloatingType(odt) || (odt == source.scalar_type() && !arithmetic),
                   "rubikops.extract_cubes: an integer out_dtype (", odt,
                   ") is only allowed as a plain copy of a source of the same dtype");
  out_scalar_type = odt;
}

inline void check_out(const ExtractCubesArgs& a, const at::Tensor& out) {
  const auto shape = a.out_shape();
  TORCH_CHECK_VALUE(out.sizes() == at::IntArrayRef(shape), "rubikops.extract_cubes: out must have shape ",
                    at::IntArrayRef(shape), ", got ", out.sizes());
  TORCH_CHECK_VALUE(out.is_contiguous(), "rubikops.extract_cubes: out must be contiguous");
  TORCH_CHECK_VALUE(out.device() == a.source.device(), "rubikops.extract_cubes: out is on ", out.device(),
                    " but source is on ", a.source.device());
  TORCH_CHECK_TYPE(out.scalar_type() == a.out_scalar_type, "rubikops.extract_cubes: out must have dtype ",
                   a.out_scalar_type,
                   " (out_dtype), got ", out.scalar_type());
  // The kernels read the inputs while they write out: an out that shares
  // memory with one of them would read its own results.
  const std::pair<const char*, const std::optional<at::Tensor>*> inputs[] = {
      {"index", &a.index}, {"rotations", &a.rotations}, {"mask", &a.mask}, {"scale", &a.scale}, {"shift", &a.shift},
      {"affine", &a.affine}, {"read_box", &a.read_box}, {"cube_intensity", &a.cube_intensity}};
  TORCH_CHECK_VALUE(!may_overlap(out, a.source), "rubikops.extract_cubes: out overlaps source in memory");
  TORCH_CHECK_VALUE(!may_overlap(out, a.origins), "rubikops.extract_cubes: out overlaps origins in memory");
  for (const auto& [name, t] : inputs) {
    TORCH_CHECK_VALUE(!*t || !may_overlap(out, **t), "rubikops.extract_cubes: out overlaps ", name, " in memory");
  }
}

// The kernel entries every backend registers, on its kernels over the checked
// arguments: `Kernel(args, out)` writes the output into a checked, non-empty
// `out`; `Backward(args, grad, acc)` adds the gradient into `acc`, a zeroed
// contiguous buffer of the source's shape in float (double when the source
// or the gradient is double), with the output gradient as given (a kernel
// that indexes it flat makes it contiguous).  `Prepare` sees the fresh
// memory of the functional op's output first.
using ForwardKernel = void (*)(const ExtractCubesArgs&, at::Tensor&);
using BackwardKernel = void (*)(const ExtractCubesArgs&, const at::Tensor&, at::Tensor&);
inline void no_prepare(at::Tensor&) {}

template <ForwardKernel Kernel>
at::Tensor& extract_cubes_out(RUBIKOPS_EXTRACT_CUBES_PARAMETERS, at::Tensor& out) {
  const ExtractCubesArgs a(RUBIKOPS_EXTRACT_CUBES_NAMES);
  check_out(a, out);
  if (out.numel() > 0) Kernel(a, out);
  return out;
}

template <ForwardKernel Kernel, void (*Prepare)(at::Tensor&) = &no_prepare>
at::Tensor extract_cubes_functional(RUBIKOPS_EXTRACT_CUBES_PARAMETERS) {
  const ExtractCubesArgs a(RUBIKOPS_EXTRACT_CUBES_NAMES);
  at::Tensor out = at::empty(a.out_shape(), source.options().dtype(a.out_scalar_type));
  Prepare(out);
  if (out.numel() > 0) Kernel(a, out);
  return out;
}

// The backward op's arguments: the output gradient, then the forward's as they are.  The kernels read
// neither fill (masked voxels get no gradient) nor out_dtype (the gradient's own dtype is the output's).
template <BackwardKernel Kernel>
at::Tensor extract_cubes_backward(const at::Tensor& grad, RUBIKOPS_EXTRACT_CUBES_PARAMETERS) {
  TORCH_CHECK_TYPE(at::isFloatingType(source.scalar_type()) && at::isFloatingType(grad.scalar_type()),
                   "rubikops.extract_cubes_backward: source and grad must be floating point, got ",
                   source.scalar_type(), " and ", grad.scalar_type());
  const ExtractCubesArgs a(RUBIKOPS_EXTRACT_CUBES_NAMES);
  // rubikops._library differentiates the intensity stage in plain torch; no kernel computes it.
  TORCH_CHECK_VALUE(!a.cube_intensity, "rubikops.extract_cubes_backward: no kernel differentiates cube_intensity; "
                    "autograd computes its gradient in plain torch");
  TORCH_CHECK_VALUE(grad.device() == source.device(), "rubikops.extract_cubes_backward: grad is on ", grad.device(),
                    " but source is on ", source.device());
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef(a.out_shape()),
                    "rubikops.extract_cubes_backward: grad must have shape ", at::IntArrayRef(a.out_shape()),
                    ", got ", grad.sizes());
  const bool f64 = source.scalar_type() == at::kDouble || grad.scalar_type() == at::kDouble;
  at::Tensor acc = at::zeros(source.sizes(), source.options().dtype(f64 ? at::kDouble : at::kFloat));
  if (grad.numel() > 0) Kernel(a, grad, acc);
  return acc.to(source.scalar_type());
}

}  // namespace rubikops

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
#include <utility>
#include <vector>

namespace rubikops {

struct ExtractCubesArgs {
  at::Tensor source, origins;
  int64_t cube_size[3];
  std::optional<at::Tensor> index, rotations, mask, scale, shift;
  double fill, keep_prob;
  int64_t seed;
  double scale_value, shift_value;
  std::optional<double> clamp_lo, clamp_hi;
  c10::ScalarType out_dtype;
  bool arithmetic;
};

inline bool is_supported_dtype(c10::ScalarType t) {
  return t == c10::kFloat || t == c10::kDouble || t == c10::kHalf || t == c10::kBFloat16 || t == c10::kShort ||
         t == c10::kByte;
}

inline c10::ScalarType resolve_out_dtype(const at::Tensor& source, std::optional<c10::ScalarType> out_dtype) {
  if (out_dtype) return *out_dtype;
  return at::isFloatingType(source.scalar_type()) ? source.scalar_type() : c10::kFloat;
}

inline std::vector<int64_t> output_shape(const at::Tensor& source, const at::Tensor& origins,
                                         at::IntArrayRef cube_size) {
  TORCH_CHECK_VALUE(cube_size.size() == 3, "rubikops.extract_cubes: cube_size must have 3 entries, got ",
                    cube_size.size());
  TORCH_CHECK_VALUE(origins.dim() == 3 && source.dim() == 5,
                    "rubikops.extract_cubes: origins must be (B, M, 3) and source (N, C, D, H, W)");
  return {origins.size(0), origins.size(1), source.size(1), cube_size[0], cube_size[1], cube_size[2]};
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

inline ExtractCubesArgs make_args(const at::Tensor& source, const at::Tensor& origins, at::IntArrayRef cube_size,
                                  const std::optional<at::Tensor>& index, const std::optional<at::Tensor>& rotations,
                                  const std::optional<at::Tensor>& mask, double fill, double keep_prob, int64_t seed,
                                  const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                                  double scale_value, double shift_value, std::optional<double> clamp_lo,
                                  std::optional<double> clamp_hi, std::optional<c10::ScalarType> out_dtype) {
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
  ExtractCubesArgs a;
  const int64_t B = origins.size(0), M = origins.size(1);
  for (int k = 0; k < 3; ++k) {
    a.cube_size[k] = cube_size[k];
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
  a.arithmetic = scale || shift || clamp_lo || clamp_hi || scale_value != 1.0 || !shift_is_noop;
  TORCH_CHECK_TYPE(at::isFloatingType(odt) || (odt == source.scalar_type() && !a.arithmetic),
                   "rubikops.extract_cubes: an integer out_dtype (", odt,
                   ") is only allowed as a plain copy of a source of the same dtype");
  a.source = source;
  a.origins = origins;
  a.index = index;
  a.rotations = rotations;
  a.mask = mask;
  a.scale = scale;
  a.shift = shift;
  a.fill = fill;
  a.keep_prob = keep_prob;
  a.seed = seed;
  a.scale_value = scale_value;
  a.shift_value = shift_value;
  a.clamp_lo = clamp_lo;
  a.clamp_hi = clamp_hi;
  a.out_dtype = odt;
  return a;
}

inline void check_out(const ExtractCubesArgs& a, const at::Tensor& out) {
  const auto shape = output_shape(a.source, a.origins, at::IntArrayRef(a.cube_size, 3));
  TORCH_CHECK_VALUE(out.sizes() == at::IntArrayRef(shape), "rubikops.extract_cubes: out must have shape ",
                    at::IntArrayRef(shape), ", got ", out.sizes());
  TORCH_CHECK_VALUE(out.is_contiguous(), "rubikops.extract_cubes: out must be contiguous");
  TORCH_CHECK_VALUE(out.device() == a.source.device(), "rubikops.extract_cubes: out is on ", out.device(),
                    " but source is on ", a.source.device());
  TORCH_CHECK_TYPE(out.scalar_type() == a.out_dtype, "rubikops.extract_cubes: out must have dtype ", a.out_dtype,
                   " (out_dtype), got ", out.scalar_type());
  // The kernels read the inputs while they write out: an out that shares
  // memory with one of them would read its own results.
  const std::pair<const char*, const std::optional<at::Tensor>*> inputs[] = {
      {"index", &a.index}, {"rotations", &a.rotations}, {"mask", &a.mask}, {"scale", &a.scale}, {"shift", &a.shift}};
  TORCH_CHECK_VALUE(!may_overlap(out, a.source), "rubikops.extract_cubes: out overlaps source in memory");
  TORCH_CHECK_VALUE(!may_overlap(out, a.origins), "rubikops.extract_cubes: out overlaps origins in memory");
  for (const auto& [name, t] : inputs) {
    TORCH_CHECK_VALUE(!*t || !may_overlap(out, **t), "rubikops.extract_cubes: out overlaps ", name, " in memory");
  }
}

// What every backward kernel starts from: checked arguments, the output
// gradient as given (a kernel that indexes it flat makes it contiguous), and
// a zeroed accumulator of the source's shape in float (double when the source
// or the gradient is double).
struct BackwardSetup {
  ExtractCubesArgs args;
  at::Tensor grad, acc;
};

inline BackwardSetup prepare_backward(const at::Tensor& grad, const at::Tensor& source, const at::Tensor& origins,
                                      at::IntArrayRef cube_size, const std::optional<at::Tensor>& index,
                                      const std::optional<at::Tensor>& rotations,
                                      const std::optional<at::Tensor>& mask, double keep_prob, int64_t seed,
                                      const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                                      double scale_value, double shift_value, std::optional<double> clamp_lo,
                                      std::optional<double> clamp_hi) {
  TORCH_CHECK_TYPE(at::isFloatingType(source.scalar_type()) && at::isFloatingType(grad.scalar_type()),
                   "rubikops.extract_cubes_backward: source and grad must be floating point, got ",
                   source.scalar_type(), " and ", grad.scalar_type());
  ExtractCubesArgs args = make_args(source, origins, cube_size, index, rotations, mask, 0.0, keep_prob, seed, scale,
                                    shift, scale_value, shift_value, clamp_lo, clamp_hi, grad.scalar_type());
  TORCH_CHECK_VALUE(grad.device() == source.device(), "rubikops.extract_cubes_backward: grad is on ", grad.device(),
                    " but source is on ", source.device());
  const auto shape = output_shape(source, origins, cube_size);
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef(shape), "rubikops.extract_cubes_backward: grad must have shape ",
                    at::IntArrayRef(shape), ", got ", grad.sizes());
  BackwardSetup s{args, grad, at::Tensor()};
  const bool f64 = source.scalar_type() == at::kDouble || grad.scalar_type() == at::kDouble;
  s.acc = at::zeros(source.sizes(), source.options().dtype(f64 ? at::kDouble : at::kFloat));
  return s;
}

// The functional op of every backend: allocate the output, let the backend
// `Prepare` the fresh memory (optional), then run its out= kernel `OutFn` into it.
inline void no_prepare(at::Tensor&) {}
template <auto OutFn, void (*Prepare)(at::Tensor&) = &no_prepare>
at::Tensor extract_cubes_functional(const at::Tensor& source, const at::Tensor& origins, at::IntArrayRef cube_size,
                                    const std::optional<at::Tensor>& index,
                                    const std::optional<at::Tensor>& rotations,
                                    const std::optional<at::Tensor>& mask, double fill, double keep_prob,
                                    int64_t seed, const std::optional<at::Tensor>& scale,
                                    const std::optional<at::Tensor>& shift, double scale_value, double shift_value,
                                    std::optional<double> clamp_lo, std::optional<double> clamp_hi,
                                    std::optional<c10::ScalarType> out_dtype) {
  at::Tensor out = at::empty(output_shape(source, origins, cube_size),
                             source.options().dtype(resolve_out_dtype(source, out_dtype)));
  Prepare(out);
  return OutFn(source, origins, cube_size, index, rotations, mask, fill, keep_prob, seed, scale, shift, scale_value,
               shift_value, clamp_lo, clamp_hi, out_dtype, out);
}

}  // namespace rubikops

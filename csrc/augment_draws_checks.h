// Argument checks and output allocation of rubikops::draw_crop_affine and
// rubikops::draw_cube_intensity, shared by their CPU and CUDA registrations.
// Shape, dtype, device and range-of-parameter checks only (no device sync);
// the kernel clamps the volume index it reads.  rubikops/checks.py makes the
// same checks, with the same messages, for the reference.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <vector>

#include "augment_draws.h"
#include "op_checks.h"

namespace rubikops {

template <typename Params>
struct DrawSetup {
  Params params;
  std::vector<at::Tensor> keep;  // contiguous copies the params point into
  at::Tensor output;
};

inline const double* as_contiguous_double(std::vector<at::Tensor>& keep, const at::Tensor& t) {
  keep.push_back(t.to(at::kDouble).contiguous());
  return keep.back().const_data_ptr<double>();
}

inline void check_uniforms(const at::Tensor& u, const char* op, int64_t dim, int64_t last, const char* layout) {
  TORCH_CHECK_TYPE(u.scalar_type() == c10::kDouble, "rubikops.", op, ": uniforms must be float64, got ",
                   u.scalar_type());
  TORCH_CHECK_VALUE(u.dim() == dim && u.size(dim - 1) == last, "rubikops.", op, ": uniforms must be ", layout,
                    ", got shape ", u.sizes());
}

inline DrawSetup<CropAffineParams> prepare_crop_affine(const at::Tensor& uniforms, const at::Tensor& volume_shapes,
                                                       const at::Tensor& index, at::IntArrayRef crop_size,
                                                       double max_angle, double zoom_low, double zoom_high) {
  check_uniforms(uniforms, "draw_crop_affine", 2, kCropAffineDraws, "(B, 7)");
  check_int_argument("draw_crop_affine", volume_shapes, "volume_shapes", 2, uniforms);
  check_int_argument("draw_crop_affine", index, "index", 1, uniforms);
  const int64_t B = uniforms.size(0), N = volume_shapes.size(0);
  TORCH_CHECK_VALUE(volume_shapes.size(1) == 3 && (N >= 1 || B == 0), "rubikops.draw_crop_affine: volume_shapes "
                    "must be (N, 3) with N >= 1, got shape ", volume_shapes.sizes());
  TORCH_CHECK_VALUE(index.size(0) == B, "rubikops.draw_crop_affine: index must have shape (", B, ",) (one volume "
                    "per row of uniforms), got ", index.sizes());
  TORCH_CHECK_VALUE(crop_size.size() == 3 && crop_size[0] >= 1 && crop_size[1] >= 1 && crop_size[2] >= 1,
                    "rubikops.draw_crop_affine: crop_size must be 3 positive ints, got ", crop_size);
  TORCH_CHECK_VALUE(std::isfinite(max_angle) && max_angle >= 0.0, "rubikops.draw_crop_affine: max_angle must be "
                    "finite and >= 0 (degrees), got ", max_angle);
  TORCH_CHECK_VALUE(std::isfinite(zoom_high) && zoom_low > 0.0 && zoom_low <= zoom_high,
                    "rubikops.draw_crop_affine: zoom must be 0 < zoom_low <= zoom_high (finite), got ", zoom_low,
                    ", ", zoom_high);

  DrawSetup<CropAffineParams> s;
  CropAffineParams& p = s.params;
  p.u = as_contiguous_double(s.keep, uniforms);
  const at::Tensor shapes = volume_shapes.to(at::kLong);  // strided: an expanded view stays a view
  s.keep.push_back(shapes);
  p.volume_shapes = shapes.const_data_ptr<int64_t>();
  p.shapes_stride[0] = shapes.stride(0);
  p.shapes_stride[1] = shapes.stride(1);
  s.keep.push_back(index.to(at::kLong).contiguous());
  p.index = s.keep.back().const_data_ptr<int64_t>();
  p.B = B;
  p.N = N;
  for (int a = 0; a < 3; ++a) p.crop[a] = crop_size[a];
  p.max_angle = max_angle * (M_PI / 180.0);
  p.log_zoom_low = std::log(zoom_low);
  p.log_zoom_span = std::log(zoom_high) - std::log(zoom_low);
  s.output = at::empty({B, 3, 4}, uniforms.options());
  p.affine = s.output.mutable_data_ptr<double>();
  return s;
}

inline DrawSetup<CubeIntensityParams> prepare_cube_intensity(const at::Tensor& uniforms, const at::Tensor& mean,
                                                             const at::Tensor& sd, double contrast_low,
                                                             double contrast_high, double gamma_low,
                                                             double gamma_high, double bias_field, double noise,
                                                             double p_apply, double window) {
  check_uniforms(uniforms, "draw_cube_intensity", 3, kCubeIntensityDraws, "(B, M, 11)");
  const int64_t B = uniforms.size(0), M = uniforms.size(1);
  for (const auto& [name, t] : {std::make_pair("mean", &mean), std::make_pair("sd", &sd)}) {
    TORCH_CHECK_TYPE(at::isFloatingType(t->scalar_type()), "rubikops.draw_cube_intensity: ", name,
                     " must be floating, got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == B, "rubikops.draw_cube_intensity: ", name,
                      " must have shape (", B, ",) (one value per sample), got ", t->sizes());
    TORCH_CHECK_VALUE(t->device() == uniforms.device(), "rubikops.draw_cube_intensity: ", name, " is on ",
                      t->device(), " but uniforms is on ", uniforms.device());
  }
  for (const auto& [name, low, high] : {std::make_tuple("contrast", contrast_low, contrast_high),
                                        std::make_tuple("gamma", gamma_low, gamma_high)})
    TORCH_CHECK_VALUE(std::isfinite(high) && low > 0.0 && low <= high, "rubikops.draw_cube_intensity: ", name,
                      " must be 0 < low <= high (finite), got ", low, ", ", high);
  TORCH_CHECK_VALUE(std::isfinite(bias_field) && bias_field >= 0.0 && std::isfinite(noise) && noise >= 0.0,
                    "rubikops.draw_cube_intensity: bias_field and noise must be finite and >= 0, got ", bias_field,
                    ", ", noise);
  TORCH_CHECK_VALUE(p_apply >= 0.0 && p_apply <= 1.0, "rubikops.draw_cube_intensity: p must be in [0, 1], got ",
                    p_apply);
  TORCH_CHECK_VALUE(std::isfinite(window) && window > 0.0, "rubikops.draw_cube_intensity: window must be finite "
                    "and > 0 (sds), got ", window);

  DrawSetup<CubeIntensityParams> s;
  CubeIntensityParams& p = s.params;
  p.u = as_contiguous_double(s.keep, uniforms);
  p.mean = as_contiguous_double(s.keep, mean);
  p.sd = as_contiguous_double(s.keep, sd);
  p.B = B;
  p.M = M;
  p.contrast_low = contrast_low;
  p.contrast_span = contrast_high - contrast_low;
  p.log_gamma_low = std::log(gamma_low);
  p.log_gamma_span = std::log(gamma_high) - std::log(gamma_low);
  p.bias_field = bias_field;
  p.noise = noise;
  p.p = p_apply;
  p.window = window;
  s.output = at::empty({B, M, kCubeIntensityWidth}, uniforms.options());
  p.out = s.output.mutable_data_ptr<double>();
  return s;
}

// The kernel entries every backend registers, on its kernels over the checked arguments: `Kernel(setup)`
// fills setup.output from setup.params.  `s.keep` holds the converted inputs until the kernel (or its
// launch) is done.
template <void (*Kernel)(const DrawSetup<CropAffineParams>&)>
at::Tensor draw_crop_affine_entry(const at::Tensor& uniforms, const at::Tensor& volume_shapes, const at::Tensor& index,
                                  at::IntArrayRef crop_size, double max_angle, double zoom_low, double zoom_high) {
  const auto s = prepare_crop_affine(uniforms, volume_shapes, index, crop_size, max_angle, zoom_low, zoom_high);
  Kernel(s);
  return s.output;
}

template <void (*Kernel)(const DrawSetup<CubeIntensityParams>&)>
at::Tensor draw_cube_intensity_entry(const at::Tensor& uniforms, const at::Tensor& mean, const at::Tensor& sd,
                                     double contrast_low, double contrast_high, double gamma_low, double gamma_high,
                                     double bias_field, double noise, double p, double window) {
  const auto s = prepare_cube_intensity(uniforms, mean, sd, contrast_low, contrast_high, gamma_low, gamma_high,
                                        bias_field, noise, p, window);
  Kernel(s);
  return s.output;
}

}  // namespace rubikops

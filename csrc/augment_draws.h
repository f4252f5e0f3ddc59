// The augmentation's draws, shared by their CPU and CUDA kernels (one
// function per output row, so both backends compute the same thing by
// construction: every product that an add follows is rounded on its own, as
// the CPU build does, where nvcc would fuse it; only CUDA's cos, sin and exp
// may differ from the CPU's libm in the last bit).  Torch-free, like
// extract_cubes.h: nvcc compiles it in CI.
//
// Normative rules (rubikops/reference.py::draw_crop_affine and
// ::draw_cube_intensity are the readable forms), all in float64:
//
// rubikops::draw_crop_affine: row b of the uniforms u (B, 7) holds the
// centre (3), the angles about D, H and W (3) and the zoom (1).  With
// half = (crop - 1) / 2, extent the extents of volume index[b] (clamped
// into range) and a = max_angle in radians,
//   centre[i] = half[i] + u[i] * max(extent[i] - crop[i], 0)
//   angle[i]  = (2 u[3 + i] - 1) * a
//   zoom      = exp(u[6] * (log zoom_high - log zoom_low) + log zoom_low)
//   A[b]      = [zoom R | centre - zoom R half],  R = R_d @ R_h @ R_w
// (R_d = [[1, 0, 0], [0, c, -s], [0, s, c]], R_h = [[c, 0, s], [0, 1, 0],
// [-s, 0, c]], R_w = [[c, -s, 0], [s, c, 0], [0, 0, 1]]): crop voxel p is
// volume voxel A[:, :3] p + A[:, 3].
//
// rubikops::draw_cube_intensity: cube (b, m)'s uniforms u (11) decide which
// of contrast, gamma, bias field and noise apply (u[0], u[1], u[2], u[3] < p)
// and draw them: contrast c = u[4] * (c_high - c_low) + c_low (else 1),
// gamma g = exp(u[5] * (log g_high - log g_low) + log g_low) (else 1), bias
// a_i = (2 u[6 + i] - 1) * bias_field (else 0), noise nu = noise (else 0),
// key = floor(u[10] * 2^53) (u[9] unused).  With mean[b] and
// sd = max(sd[b], 1e-6) in the cut's output units and spread = c * sd, the
// row is the op's cube_intensity (rubikops._schema.CUBE_INTENSITY_FIELDS):
//   [c, (1 - c) mean, g, mean - window spread, (2 window) spread, nu spread,
//    a_d, a_h, a_w, key].
#pragma once
#include <math.h>
#include <stdint.h>

#include "extract_cubes.h"

namespace rubikops {

constexpr int kCropAffineDraws = 7;
constexpr int kCubeIntensityDraws = 11;

struct CropAffineParams {
  const double* u;               // (B, 7) contiguous
  const int64_t* volume_shapes;  // (N, 3), strided (often an expanded view)
  int64_t shapes_stride[2];
  const int64_t* index;          // (B,) contiguous
  int64_t B, N;
  int64_t crop[3];
  double max_angle;              // radians
  double log_zoom_low, log_zoom_span;
  double* affine;                // (B, 3, 4) contiguous
};

struct CubeIntensityParams {
  const double* u;     // (B, M, 11) contiguous
  const double* mean;  // (B,) contiguous
  const double* sd;    // (B,) contiguous
  int64_t B, M;
  double contrast_low, contrast_span;
  double log_gamma_low, log_gamma_span;
  double bias_field, noise, p, window;
  double* out;         // (B, M, 10) contiguous
};

// Writes sample b's (3, 4) affine.
RUBIKOPS_HD void crop_affine_row(const CropAffineParams& p, int64_t b) {
  const double* u = p.u + b * kCropAffineDraws;
  const int64_t n = clamp_index(p.index[b], 0, p.N - 1);
  double half[3], centre[3], c[3], s[3];
  for (int i = 0; i < 3; ++i) {
    const int64_t extent = p.volume_shapes[n * p.shapes_stride[0] + i * p.shapes_stride[1]];
    const int64_t span = extent > p.crop[i] ? extent - p.crop[i] : 0;
    half[i] = static_cast<double>(p.crop[i] - 1) * 0.5;
    centre[i] = half[i] + mul_rounded(u[i], static_cast<double>(span));
    const double angle = (u[3 + i] * 2.0 - 1.0) * p.max_angle;
    c[i] = cos(angle);
    s[i] = sin(angle);
  }
  const double zoom = exp(mul_rounded(u[6], p.log_zoom_span) + p.log_zoom_low);
  const double rotation[3][3] = {
      {c[1] * c[2], -(c[1] * s[2]), s[1]},
      {mul_rounded(c[0], s[2]) + mul_rounded(s[0] * s[1], c[2]),
       mul_rounded(c[0], c[2]) - mul_rounded(s[0] * s[1], s[2]), -(s[0] * c[1])},
      {mul_rounded(s[0], s[2]) - mul_rounded(c[0] * s[1], c[2]),
       mul_rounded(s[0], c[2]) + mul_rounded(c[0] * s[1], s[2]), c[0] * c[1]}};
  double* a = p.affine + b * 12;
  for (int i = 0; i < 3; ++i) {
    double moved = 0.0;
    for (int j = 0; j < 3; ++j) {
      a[i * 4 + j] = rotation[i][j] * zoom;
      moved += mul_rounded(a[i * 4 + j], half[j]);
    }
    a[i * 4 + 3] = centre[i] - moved;
  }
}

// Writes cube (b, m)'s cube_intensity row.
RUBIKOPS_HD void cube_intensity_row(const CubeIntensityParams& p, int64_t b, int64_t m) {
  const double* u = p.u + (b * p.M + m) * kCubeIntensityDraws;
  const double contrast = u[0] < p.p ? mul_rounded(u[4], p.contrast_span) + p.contrast_low : 1.0;
  const double gamma = u[1] < p.p ? exp(mul_rounded(u[5], p.log_gamma_span) + p.log_gamma_low) : 1.0;
  const bool bias = u[2] < p.p;
  const double noise = u[3] < p.p ? p.noise : 0.0;
  const double mean = p.mean[b];
  const double sd = p.sd[b] < 1e-6 ? 1e-6 : p.sd[b];  // a constant volume still has a window (NaN stays NaN)
  const double spread = contrast * sd;
  double* row = p.out + (b * p.M + m) * kCubeIntensityWidth;
  row[0] = contrast;
  row[1] = (1.0 - contrast) * mean;
  row[2] = gamma;
  row[3] = mean - mul_rounded(p.window, spread);
  row[4] = (2.0 * p.window) * spread;
  row[5] = noise * spread;
  for (int i = 0; i < 3; ++i) row[6 + i] = bias ? (u[6 + i] * 2.0 - 1.0) * p.bias_field : 0.0;
  row[9] = floor(u[10] * 9007199254740992.0);  // 2^53: float64 uniforms are multiples of 2^-53, the key exact
}

}  // namespace rubikops

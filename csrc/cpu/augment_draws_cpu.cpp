// CPU kernels of rubikops::draw_crop_affine and rubikops::draw_cube_intensity:
// the shared per-row rules (csrc/augment_draws.h) over every sample or cube.
// A batch is tens of samples and a few hundred cubes, so one thread does it:
// the point of the ops is one dispatch each in place of the ~30 and ~27 small
// torch ops of the plain-torch draws (0.44 and 0.27 ms of a 3.3 ms batch
// inside the default pretraining loop, 2-core VM).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../augment_draws.h"
#include "../augment_draws_checks.h"

namespace rubikops {
namespace {

void draw_crop_affine_cpu(const DrawSetup<CropAffineParams>& s) {
  for (int64_t b = 0; b < s.params.B; ++b) crop_affine_row(s.params, b);
}

void draw_cube_intensity_cpu(const DrawSetup<CubeIntensityParams>& s) {
  for (int64_t b = 0; b < s.params.B; ++b)
    for (int64_t m = 0; m < s.params.M; ++m) cube_intensity_row(s.params, b, m);
}

}  // namespace
}  // namespace rubikops

TORCH_LIBRARY_IMPL(rubikops, CPU, m) {
  m.impl("draw_crop_affine", &rubikops::draw_crop_affine_entry<&rubikops::draw_crop_affine_cpu>);
  m.impl("draw_cube_intensity", &rubikops::draw_cube_intensity_entry<&rubikops::draw_cube_intensity_cpu>);
}

// CPU kernel of rubikops::sample_puzzle: the shared per-cube rule
// (csrc/sample_puzzle.h) over every (sample, cube).  A batch is a few hundred
// cubes, so one thread does it: the point of the op is one dispatch instead of
// the fifteen small ops of the plain-torch sampler.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../sample_puzzle.h"
#include "../sample_puzzle_checks.h"

namespace rubikops {
namespace {

void sample_puzzle_cpu(const SamplePuzzleSetup& s) {
  const SamplePuzzleParams& p = s.params;
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t m = 0; m < p.M; ++m) sample_puzzle_cube(p, b, m);
}

}  // namespace
}  // namespace rubikops

TORCH_LIBRARY_IMPL(rubikops, CPU, m) {
  m.impl("sample_puzzle", &rubikops::sample_puzzle_entry<&rubikops::sample_puzzle_cpu>);
}

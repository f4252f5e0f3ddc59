// Schema of rubikops::sample_puzzle (the library itself is defined in
// extract_cubes.cpp; this file adds a fragment).  Kernels: csrc/cpu and
// csrc/cuda; the plain-torch implementation (any other device, and the
// reference) is registered from rubikops/ops.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(rubikops, m) {
  // Keep in sync with rubikops/ops.py::SAMPLE_PUZZLE_SCHEMA (tested).
  m.def(
      "sample_puzzle(Tensor uniforms, Tensor volume_shapes, Tensor index, Tensor cells, Tensor permutations, "
      "Tensor code_table, int[] crop_size, int jitter, float mask_prob) "
      "-> (Tensor origins, Tensor codes, Tensor permutation, Tensor state, Tensor mask)");
}

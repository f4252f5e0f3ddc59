// Argument checks and output allocation of rubikops::sample_puzzle, shared by
// its CPU and CUDA registrations.  Shape, dtype and device checks only (no
// device sync); the kernel clamps every index it reads.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <tuple>
#include <vector>

#include "op_checks.h"
#include "sample_puzzle.h"

namespace rubikops {

using SamplePuzzleOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

struct SamplePuzzleSetup {
  SamplePuzzleParams params;
  std::vector<at::Tensor> keep;  // contiguous int64 copies the params point into
  SamplePuzzleOutputs outputs;   // origins, codes, permutation, state, mask
};

inline SamplePuzzleSetup prepare_sample_puzzle(const at::Tensor& uniforms, const at::Tensor& volume_shapes,
                                               const at::Tensor& index, const at::Tensor& cells,
                                               const at::Tensor& permutations, const at::Tensor& code_table,
                                               at::IntArrayRef crop_size, int64_t jitter, double mask_prob) {
  TORCH_CHECK_TYPE(uniforms.scalar_type() == c10::kDouble, "rubikops.sample_puzzle: uniforms must be float64, got ",
                   uniforms.scalar_type());
  TORCH_CHECK_VALUE(uniforms.dim() == 2, "rubikops.sample_puzzle: uniforms must be (B, n), got shape ",
                    uniforms.sizes());
  check_int_argument("sample_puzzle", volume_shapes, "volume_shapes", 2, uniforms);
  check_int_argument("sample_puzzle", index, "index", 1, uniforms);
  check_int_argument("sample_puzzle", cells, "cells", 2, uniforms);
  check_int_argument("sample_puzzle", permutations, "permutations", 2, uniforms);
  check_int_argument("sample_puzzle", code_table, "code_table", 1, uniforms);
  TORCH_CHECK_VALUE(crop_size.size() == 3, "rubikops.sample_puzzle: crop_size must have 3 entries, got ",
                    crop_size.size());
  TORCH_CHECK_VALUE(jitter >= 0, "rubikops.sample_puzzle: jitter must be >= 0, got ", jitter);
  TORCH_CHECK_VALUE(mask_prob >= 0.0 && mask_prob <= 1.0, "rubikops.sample_puzzle: mask_prob must be in [0, 1], got ",
                    mask_prob);
  const int64_t B = uniforms.size(0), K = permutations.size(0), M = permutations.size(1);
  const int64_t n_cells = cells.size(0), R = code_table.numel(), N = volume_shapes.size(0);
  TORCH_CHECK_VALUE(volume_shapes.size(1) == 3, "rubikops.sample_puzzle: volume_shapes must be (N, 3), got shape ",
                    volume_shapes.sizes());
  TORCH_CHECK_VALUE(cells.size(1) == 3 && n_cells >= 1, "rubikops.sample_puzzle: cells must be (n_cells, 3) with "
                    "n_cells >= 1, got shape ", cells.sizes());
  TORCH_CHECK_VALUE(index.size(0) == B, "rubikops.sample_puzzle: index must have shape (", B, ",) (one volume per "
                    "row of uniforms), got ", index.sizes());
  TORCH_CHECK_VALUE(K >= 1 && M >= 1 && (N >= 1 || B == 0), "rubikops.sample_puzzle: needs at least one "
                    "permutation of at least one cube and one volume, got permutations ", permutations.sizes(),
                    " and volume_shapes ", volume_shapes.sizes());
  const bool draw_mask = mask_prob > 0.0;
  const int64_t n = sample_puzzle_row_size(n_cells, M, R > 0, draw_mask);
  TORCH_CHECK_VALUE(uniforms.size(1) == n, "rubikops.sample_puzzle: uniforms must have ", n, " columns (3 starts, ",
                    3 * n_cells, " jitters, 1 permutation", R > 0 ? ", M rotation states" : "",
                    draw_mask ? ", M mask draws" : "", "), got ", uniforms.size(1));

  SamplePuzzleSetup s;
  const auto as_long = [&](const at::Tensor& t) {
    s.keep.push_back(t.to(at::kLong).contiguous());
    return s.keep.back().const_data_ptr<int64_t>();
  };
  s.keep.push_back(uniforms.contiguous());
  SamplePuzzleParams& p = s.params;
  p.u = s.keep.back().const_data_ptr<double>();
  const at::Tensor shapes = volume_shapes.to(at::kLong);  // strided: an expanded view stays a view
  s.keep.push_back(shapes);
  p.volume_shapes = shapes.const_data_ptr<int64_t>();
  p.shapes_stride[0] = shapes.stride(0);
  p.shapes_stride[1] = shapes.stride(1);
  p.index = as_long(index);
  p.cells = as_long(cells);
  p.permutations = as_long(permutations);
  p.code_table = as_long(code_table);
  p.B = B;
  p.M = M;
  p.N = N;
  p.K = K;
  p.R = R;
  p.n_cells = n_cells;
  p.n = n;
  for (int a = 0; a < 3; ++a) p.crop[a] = crop_size[a];
  p.jitter = jitter;
  p.mask_prob = mask_prob;
  p.draw_mask = draw_mask;
  const auto opts = uniforms.options().dtype(at::kLong);
  at::Tensor origins = at::empty({B, M, 3}, opts), codes = at::empty({B, M}, opts), perm = at::empty({B}, opts);
  at::Tensor state = at::empty({B, M}, opts), mask = at::empty({B, M}, opts.dtype(at::kBool));
  p.origins = origins.mutable_data_ptr<int64_t>();
  p.codes = codes.mutable_data_ptr<int64_t>();
  p.permutation = perm.mutable_data_ptr<int64_t>();
  p.state = state.mutable_data_ptr<int64_t>();
  p.mask = mask.mutable_data_ptr<bool>();
  s.outputs = {origins, codes, perm, state, mask};
  return s;
}

// The kernel entry every backend registers, on its kernel over the checked
// arguments: `Kernel(setup)` fills setup.outputs from setup.params.
template <void (*Kernel)(const SamplePuzzleSetup&)>
SamplePuzzleOutputs sample_puzzle_entry(const at::Tensor& uniforms, const at::Tensor& volume_shapes,
                                        const at::Tensor& index, const at::Tensor& cells,
                                        const at::Tensor& permutations, const at::Tensor& code_table,
                                        at::IntArrayRef crop_size, int64_t jitter, double mask_prob) {
  // `s.keep` holds the converted inputs until the kernel (or its launch) is done.
  const SamplePuzzleSetup s = prepare_sample_puzzle(uniforms, volume_shapes, index, cells, permutations,
                                                    code_table, crop_size, jitter, mask_prob);
  Kernel(s);
  return s.outputs;
}

}  // namespace rubikops

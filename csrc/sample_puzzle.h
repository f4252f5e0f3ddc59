// The puzzle sampler's arithmetic, shared by its CPU and CUDA kernels (one
// function per output cube, so both backends compute the same thing by
// construction).  Torch-free, like extract_cubes.h: nvcc compiles it in CI.
//
// Normative rule (rubikops/reference.py::sample_puzzle is the readable form):
// row b of the uniforms u (float64, in [0, 1)) holds, in this order,
//   3 crop starts, 3 * n_cells jitters, 1 permutation, [M rotation states], [M mask draws]
// and every integer choice is trunc(u * n) in float64 with n its count:
//   start[a]  = trunc(u[a] * (shape[index[b]][a] - crop[a] + 1))
//   jitter    = trunc(u * (J + 1)),  permutation = trunc(u * K),  state = trunc(u * R)
//   origins[b, m] = start + cells[j] + jitter of cell j,  j = permutations[permutation, m]
//   codes[b, m] = code_table[state],  mask[b, m] = u < mask_prob.
// Indices read from tensors (index, permutation entries, states) are clamped
// into range, so a bad input never reads out of bounds (as extract_cubes
// with validate=False).
#pragma once
#include <stdint.h>

#include "extract_cubes.h"

namespace rubikops {

struct SamplePuzzleParams {
  const double* u;               // (B, n) contiguous
  const int64_t* volume_shapes;  // (N, 3), strided (often an expanded view)
  int64_t shapes_stride[2];
  const int64_t* index;          // (B,) contiguous
  const int64_t* cells;          // (n_cells, 3) contiguous: corner of each grid cell in the crop
  const int64_t* permutations;   // (K, M) contiguous
  const int64_t* code_table;     // (R,) rotation code of each state; R == 0: no rotation draw
  int64_t B, M, N, K, R, n_cells, n;
  int64_t crop[3];
  int64_t jitter;                // J: each cell's offset is drawn in [0, J]
  double mask_prob;
  bool draw_mask;
  int64_t* origins;              // (B, M, 3)
  int64_t* codes;                // (B, M)
  int64_t* permutation;          // (B,)
  int64_t* state;                // (B, M)
  bool* mask;                    // (B, M)
};

// trunc(u * n) in float64, as torch's (u * n).long() (C++ casts truncate toward zero).
RUBIKOPS_HD int64_t draw(double u, double n) { return static_cast<int64_t>(u * n); }

// Number of uniforms a row needs.
RUBIKOPS_HD int64_t sample_puzzle_row_size(int64_t n_cells, int64_t M, bool rotations, bool draw_mask) {
  return 3 + 3 * n_cells + 1 + (rotations ? M : 0) + (draw_mask ? M : 0);
}

// Writes every output of cube m of sample b (and permutation[b] when m == 0).
RUBIKOPS_HD void sample_puzzle_cube(const SamplePuzzleParams& p, int64_t b, int64_t m) {
  const double* u = p.u + b * p.n;
  const int64_t n = clamp_index(p.index[b], 0, p.N - 1);
  const int64_t perm = clamp_index(draw(u[3 + 3 * p.n_cells], static_cast<double>(p.K)), 0, p.K - 1);
  const int64_t j = clamp_index(p.permutations[perm * p.M + m], 0, p.n_cells - 1);
  for (int a = 0; a < 3; ++a) {
    const int64_t extent = p.volume_shapes[n * p.shapes_stride[0] + a * p.shapes_stride[1]];
    const int64_t start = draw(u[a], static_cast<double>(extent - p.crop[a] + 1));
    const int64_t jitter = draw(u[3 + 3 * j + a], static_cast<double>(p.jitter + 1));
    p.origins[(b * p.M + m) * 3 + a] = start + p.cells[j * 3 + a] + jitter;
  }
  int64_t state = 0, code = 0;
  if (p.R > 0) {
    state = clamp_index(draw(u[4 + 3 * p.n_cells + m], static_cast<double>(p.R)), 0, p.R - 1);
    code = p.code_table[state];
  }
  p.state[b * p.M + m] = state;
  p.codes[b * p.M + m] = code;
  p.mask[b * p.M + m] = p.draw_mask && u[4 + 3 * p.n_cells + (p.R > 0 ? p.M : 0) + m] < p.mask_prob;
  if (m == 0) p.permutation[b] = perm;
}

}  // namespace rubikops

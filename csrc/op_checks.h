// Argument checks shared by the small ops that turn uniforms into arguments
// (rubikops::sample_puzzle and the augmentation's draws); rubikops/checks.py
// makes the same checks, with the same messages, for the reference.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace rubikops {

// `t` (argument `name` of rubikops.<op>) is a `dim`-D int32 or int64 tensor on the uniforms' device.
inline void check_int_argument(const char* op, const at::Tensor& t, const char* name, int64_t dim,
                               const at::Tensor& uniforms) {
  TORCH_CHECK_VALUE(t.dim() == dim, "rubikops.", op, ": ", name, " must be ", dim, "-D, got shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == c10::kLong || t.scalar_type() == c10::kInt, "rubikops.", op, ": ", name,
                   " must be int32 or int64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == uniforms.device(), "rubikops.", op, ": ", name, " is on ", t.device(),
                    " but uniforms is on ", uniforms.device());
}

}  // namespace rubikops

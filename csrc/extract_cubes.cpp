// Schema of the rubikops ops: one TORCH_LIBRARY block, backends register
// their kernels in their own files (csrc/cpu, csrc/cuda).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Lets `import rubikops._C` load this library (and run the static
// registrations below); the module itself has no Python functions.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(rubikops, m) {
  // Keep in sync with rubikops/ops.py::EXTRACT_CUBES_SCHEMA (tested).
  m.def(
      "extract_cubes(Tensor source, Tensor origins, int[] cube_size, Tensor? index, "
      "Tensor? rotations, Tensor? mask, float fill, float keep_prob, int seed, Tensor? scale, "
      "Tensor? shift, float scale_value, float shift_value, float? clamp_lo, float? clamp_hi, "
      "ScalarType? out_dtype) -> Tensor");
  m.def(
      "extract_cubes.out(Tensor source, Tensor origins, int[] cube_size, Tensor? index, "
      "Tensor? rotations, Tensor? mask, float fill, float keep_prob, int seed, Tensor? scale, "
      "Tensor? shift, float scale_value, float shift_value, float? clamp_lo, float? clamp_hi, "
      "ScalarType? out_dtype, *, Tensor(a!) out) -> Tensor(a!)");
  // Gradient w.r.t. source: kernels in csrc/cpu and csrc/cuda; the generic
  // implementation (any other device) is registered from rubikops/ops.py.
  m.def(
      "extract_cubes_backward(Tensor grad, Tensor source, Tensor origins, int[] cube_size, Tensor? index, "
      "Tensor? rotations, Tensor? mask, float keep_prob, int seed, Tensor? scale, Tensor? shift, "
      "float scale_value, float shift_value, float? clamp_lo, float? clamp_hi) -> Tensor");
}

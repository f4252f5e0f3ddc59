// The Python module of the compiled library.  The ops' schemas are defined
// once, in rubikops/_library.py; the files of each backend (csrc/cpu,
// csrc/cuda) only register kernels for them (TORCH_LIBRARY_IMPL).
#include <Python.h>

extern "C" {
// Lets `import rubikops._C` load this library (and run the static kernel
// registrations of csrc/cpu and csrc/cuda); the module has no functions.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

// Makes the op library importable as `itk_odereg._C`. Importing it runs the
// static TORCH_LIBRARY registrars of every translation unit; no Python-visible
// functions are needed. Kept out of csrc/ops so the libtorch (CMake) build of
// the same ops does not depend on Python.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

// pybind11 module `itk_odereg._wrapping`: build information that is not a
// tensor op. (In ITK, `wrapping/` means SWIG .wrap files; here it is pybind11.)
#include <pybind11/pybind11.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

bool cuda_compiled() {
#ifdef ITK_ODEREG_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int openmp_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

PYBIND11_MODULE(_wrapping, m) {
  m.doc() = "Build information of the itk_odereg native libraries.";
  m.def("cuda_compiled", &cuda_compiled,
        "True when the op library was built with its CUDA kernels (csrc/ops/cuda).");
  m.def("openmp_enabled", []() {
#ifdef _OPENMP
        return true;
#else
        return false;
#endif
      },
        "True when the CPU kernels were compiled with OpenMP (at::parallel_for runs in parallel).");
  m.def("openmp_max_threads", &openmp_max_threads,
        "Threads an OpenMP parallel region would use now (OMP_NUM_THREADS or the core count).");
  m.def("version", []() { return std::string(ITK_ODEREG_VERSION); }, "Version the native modules were built as.");
  m.def("build_info", []() {
        py::dict info;
        info["version"] = std::string(ITK_ODEREG_VERSION);
        info["cuda_compiled"] = cuda_compiled();
        info["openmp_max_threads"] = openmp_max_threads();
        return info;
      },
        "All of the above as a dict: version, cuda_compiled, openmp_max_threads.");
}

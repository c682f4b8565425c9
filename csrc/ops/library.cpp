// The `itk_odereg` operator library. Schemas live next to each op
// (warp.cpp, bspline.cpp, regularizers.cpp, resample.cpp, tanh_mlp.cpp, box_sum.cpp) as fragments of this library.
#include <torch/library.h>

TORCH_LIBRARY(itk_odereg, m) {
  // Intentionally empty: each op's TORCH_LIBRARY_FRAGMENT defines its schemas.
}

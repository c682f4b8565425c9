// Umbrella header for C++ (libtorch) users of the itk_odereg ops. Link the
// library (or torch::jit/torch.ops.load_library it) so the registrars run.
#pragma once

#include "box_sum.h"
#include "bspline.h"
#include "regularizers.h"
#include "resample.h"
#include "tanh_mlp.h"
#include "warp.h"

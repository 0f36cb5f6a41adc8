// The CPU kernels of the ops (schemas in csrc/conv.cpp).
#include "passes.h"

#include <torch/library.h>

namespace miniplaces_ext::cpu {

TORCH_LIBRARY_IMPL(miniplaces_ext, CPU, m) {
  m.impl("conv2d_forward", &conv2d_forward);
  m.impl("conv2d_fused", &conv2d_fused);  // the epilogue in the kernels (the composite serves CUDA)
  m.impl("conv2d_fused_", &conv2d_fused_);  // over the residual, in the kernels where they allow
  m.impl("conv2d_backward", &conv2d_backward);
}

} // namespace miniplaces_ext::cpu

// The part of a plan's epilogue (plan.h) that a kernel applies past the bias: + residual (a
// ResNet block's skip connection), then ReLU, on the float32 sums before they are written, so that
// a bfloat16 output is rounded once and no pass over memory follows the convolution. The direct
// kernel applies it to each output row while the row is in L1/L2 (DirectConv::finish_row), or,
// for a bfloat16 NHWC output, to each block between the next block's products (BlockFinisher);
// Winograd in registers, as its output transform writes. This struct is data only: the code that
// applies it is compiled per ISA inside the kernels' class templates, so that no inline function
// here is compiled for one ISA's target and then shared with the others by the linker.
#pragma once

#include "../../conv.h"

#include <cstdint>

namespace miniplaces_ext::cpu {

struct OutputEpilogue {
  const void* residual = nullptr;  // [N, Cout, Ho, Wo] through `strides`: float32, or bfloat16 bits
  bool residual_bf16 = false;
  Strides4 strides{};
  bool relu = false;

  bool any() const { return residual != nullptr || relu; }
};

} // namespace miniplaces_ext::cpu

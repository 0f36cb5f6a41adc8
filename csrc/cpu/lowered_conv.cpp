// Few-channel layers on the tile kernel (tile_block.h), reduced over (kh, kw, c) together: the
// stem's 7x7/2 and AlexNet's 11x11/4 read 3 channels, so a tile product per kernel tap (16
// pairs of channels) or per kernel row (kw * 3 channels) multiplies mostly zeros and goes
// through the staging tiles. Here each output pixel's receptive field is one row of
// patch_size() bfloat16 values in (kh, kw, c) order, padded with zeros to whole 32-element
// products (oneDNN calls this "reduction lowering"), multiplied by the weight laid out the same
// way: the stem's 147 values take 5 products per block instead of 7 staged ones. The tile
// kernel lays those rows out itself, 32 pixels at a time in L1, as it reaches them
// (DirectConv::run_lowered); lowering whole images to memory first and reading them back cost
// more than the products (stem: 4.4 ms, oneDNN 1.35).
#include "run_plan.h"

#include "packed_weights.h"

#include <ATen/ATen.h>

namespace miniplaces_ext::cpu {

bool lowered_applies(const ConvGeometry& g) {
  constexpr int64_t kFewChannels = 16;  // fewer than one product's 16 pairs per tap
  return g.groups == 1 && g.in_channels < kFewChannels && g.taps() > 1 && g.dilation_w == 1;
}

int64_t lowered_depth(const ConvGeometry& g) {
  constexpr int64_t kProductDepth = 32;  // bfloat16 elements per row of an A tile
  return (g.patch_size() + kProductDepth - 1) / kProductDepth * kProductDepth;
}

void lowered_convolution(const ConvPlan& p, const at::Tensor& x, const at::Tensor& weight,
                         const c10::optional<at::Tensor>& bias, const OutputEpilogue& epilogue,
                         const at::Tensor& out) {
  const ConvGeometry& g = p.g;
  TORCH_CHECK(p.unit == Bf16Kernel::tiles && lowered_applies(g), "lowered tile conv: expected one group of fewer than 16 channels and a kernel > 1x1");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16,
              "lowered tile conv: expected bfloat16 operands, got ", x.scalar_type(), " and ", weight.scalar_type());
  p.kernel(x, packed_lowered_weight(weight, g, lowered_depth(g), p.block, p.weight_cached), bias, g, epilogue, out);
}

} // namespace miniplaces_ext::cpu

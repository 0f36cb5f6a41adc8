// Few-channel layers on the tile kernel (tile_block.h), reduced over (kh, kw, c) together: the
// stem's 7x7/2 and AlexNet's 11x11/4 read 3 channels, so a tile product per kernel tap (16
// pairs of channels) or per kernel row (kw * 3 channels) multiplies mostly zeros and goes
// through the staging tiles. Here each output pixel's receptive field is laid out as one row
// of patch_size() bfloat16 values, padded with zeros to whole 32-element products (im2col.h;
// oneDNN calls this "reduction lowering"), and the tile kernel computes the 1x1 convolution of
// those rows with the weight laid out the same way: the stem's 147 values take 5 products per
// block instead of 7 staged ones. Images are lowered a chunk at a time (the column_bytes
// option), each chunk written straight into its images' part of the output.
#include "run_plan.h"

#include "im2col.h"
#include "layout.h"
#include "packed_weights.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace miniplaces_ext::cpu {

bool lowered_applies(const ConvGeometry& g) {
  constexpr int64_t kFewChannels = 16;  // fewer than one product's 16 pairs per tap
  return g.groups == 1 && g.in_channels < kFewChannels && g.taps() > 1;
}

void lowered_convolution(const ConvPlan& p, const at::Tensor& x, const at::Tensor& weight,
                         const c10::optional<at::Tensor>& bias, const OutputEpilogue& epilogue,
                         const at::Tensor& out) {
  const ConvGeometry& g = p.g;
  TORCH_CHECK(p.unit == Bf16Kernel::tiles && lowered_applies(g), "lowered tile conv: expected one group of fewer than 16 channels and a kernel > 1x1");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16,
              "lowered tile conv: expected bfloat16 operands, got ", x.scalar_type(), " and ", weight.scalar_type());
  constexpr int64_t kProductDepth = 32;  // bfloat16 elements per row of an A tile
  const int64_t patch = g.patch_size();
  const int64_t depth = (patch + kProductDepth - 1) / kProductDepth * kProductDepth;
  // The 1x1 convolution over the lowered rows: an "image" of out_h x out_w pixels of `depth` channels.
  ConvGeometry lowered = g;
  lowered.in_channels = depth;
  lowered.in_h = g.out_h;
  lowered.in_w = g.out_w;
  lowered.kernel_h = lowered.kernel_w = 1;
  lowered.stride_h = lowered.stride_w = 1;
  lowered.pad_h = lowered.pad_w = 0;
  lowered.dilation_h = lowered.dilation_w = 1;
  // [Cout, C, kh, kw] -> [Cout, (kh, kw, c) + zeros, 1, 1], the order of im2col's rows.
  const at::Tensor w = at::constant_pad_nd(weight.permute({0, 2, 3, 1}).reshape({g.out_channels, patch}),
                                           {0, depth - patch})
                           .view({g.out_channels, depth, 1, 1});
  const at::Tensor packed = pack_direct_weight_pairs(w, lowered, p.block);  // the tile block's 32 columns
  const at::Tensor x_nhwc = nhwc_pixels(x);
  const int64_t image_bytes = std::max<int64_t>(1, g.out_pixels() * depth * x.element_size());
  const int64_t chunk = std::clamp<int64_t>(p.options.column_bytes / image_bytes, 1, std::max<int64_t>(g.batch, 1));
  const at::Tensor rows = at::empty({chunk, g.out_h, g.out_w, depth}, x.options());
  for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
    const int64_t count = std::min(chunk, g.batch - n0);
    im2col<c10::BFloat16>(x_nhwc.const_data_ptr<c10::BFloat16>(), rows.mutable_data_ptr<c10::BFloat16>(), g,
                          n0 * g.out_pixels(), count * g.out_pixels(), 0, depth);
    ConvGeometry part = lowered;
    part.batch = count;
    p.kernel(rows.narrow(0, 0, count).permute({0, 3, 1, 2}), packed, bias, part, epilogue.from_image(n0),
             out.narrow(0, n0, count));
  }
}

} // namespace miniplaces_ext::cpu

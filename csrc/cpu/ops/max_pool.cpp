// The CPU kernel of max_pool2d (schema in csrc/max_pool.cpp): channels_last float32 / bfloat16
// input pooled by max_pool_kernel.h at the ISA level in force, into a channels_last output; any
// other input goes to at::max_pool2d, which gives the same values.
#include "../cpu_options.h"
#include "../kernel_table.h"
#include "../pool_geometry.h"

#include <ATen/ATen.h>
#include <ATen/native/Pool.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

namespace miniplaces_ext::cpu {
namespace {

at::Tensor max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  TORCH_CHECK(input.dim() == 4, "max_pool2d: expected a 4-d [N, C, H, W] input, got ", input.dim(), " dims");
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "max_pool2d: kernel_size, stride, padding and dilation take two values each");
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(kernel_size[d] > 0 && stride[d] > 0 && dilation[d] > 0,
                "max_pool2d: kernel_size, stride and dilation must be positive, got ", kernel_size, ", ", stride,
                ", ", dilation);
    TORCH_CHECK(padding[d] >= 0 && padding[d] <= kernel_size[d] / 2,
                "max_pool2d: padding must be between 0 and half the kernel size, got padding ", padding,
                " for kernel ", kernel_size);
  }
  const bool ours = (input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16) &&
                    input.is_contiguous(at::MemoryFormat::ChannelsLast) && !input.is_contiguous() &&
                    input.numel() > 0;  // NCHW-contiguous too (one channel, say): torch's layout rule decides
  if (!ours) {
    return at::max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
  }
  const PoolGeometry g{input.size(0),
                       input.size(1),
                       input.size(2),
                       input.size(3),
                       // torch's output size, ATen's own helper: with ceil_mode the last window starts inside
                       at::native::pooling_output_shape_pad_lr<int64_t>(input.size(2), kernel_size[0], padding[0],
                                                                        padding[0], stride[0], dilation[0], ceil_mode),
                       at::native::pooling_output_shape_pad_lr<int64_t>(input.size(3), kernel_size[1], padding[1],
                                                                        padding[1], stride[1], dilation[1], ceil_mode),
                       kernel_size[0],
                       kernel_size[1],
                       stride[0],
                       stride[1],
                       padding[0],
                       padding[1],
                       dilation[0],
                       dilation[1]};
  TORCH_CHECK(g.out_h > 0 && g.out_w > 0, "max_pool2d: the ", g.in_h, "x", g.in_w, " input is smaller than the ",
              kernel_size, " window (dilation ", dilation, ", padding ", padding, ")");
  at::Tensor out = at::empty({g.batch, g.channels, g.out_h, g.out_w},
                             input.options().memory_format(at::MemoryFormat::ChannelsLast));
  const IsaKernels& level = kernel_table().level(cpu_options().isa);
  (input.scalar_type() == at::kFloat ? level.max_pool_float32 : level.max_pool_bfloat16)(input, g, out);
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(miniplaces_ext, CPU, m) {
  m.impl("max_pool2d", &max_pool2d);
}

} // namespace miniplaces_ext::cpu

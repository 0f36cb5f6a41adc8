// Autocast for the forward ops: under torch.autocast the floating-point
// operands are cast to the autocast dtype of the device (bf16/fp16), as
// nn.Conv2d's "lower_precision_fp" policy does; float64 is left alone. The
// backward ops need no autocast kernel: autograd calls them with the dtypes
// the forward saw.
#include "conv.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace miniplaces_ext {
namespace {

constexpr char kConv2dForward[] = "miniplaces_ext::conv2d_forward";
constexpr char kConv1dForward[] = "miniplaces_ext::conv1d_forward";

template <c10::DeviceType kDevice, const char* kOp>
at::Tensor forward_autocast(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                            int64_t groups) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow(kOp, "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                         at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t)>();
  const at::ScalarType dtype = at::autocast::get_lower_precision_fp_from_device_type(kDevice);
  return op.call(at::autocast::cached_cast(dtype, input, kDevice), at::autocast::cached_cast(dtype, weight, kDevice),
                 at::autocast::cached_cast(dtype, bias, kDevice), stride, padding, dilation, groups);
}

} // namespace

TORCH_LIBRARY_IMPL(miniplaces_ext, AutocastCPU, m) {
  m.impl("conv2d_forward", &forward_autocast<c10::DeviceType::CPU, kConv2dForward>);
  m.impl("conv1d_forward", &forward_autocast<c10::DeviceType::CPU, kConv1dForward>);
}

TORCH_LIBRARY_IMPL(miniplaces_ext, AutocastCUDA, m) {
  m.impl("conv2d_forward", &forward_autocast<c10::DeviceType::CUDA, kConv2dForward>);
  m.impl("conv1d_forward", &forward_autocast<c10::DeviceType::CUDA, kConv1dForward>);
}

} // namespace miniplaces_ext

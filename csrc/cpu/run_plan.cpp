// Runs a plan's kernel (run_plan.h).
#include "run_plan.h"

#include "layout.h"
#include "packed_weights.h"

#include <ATen/ATen.h>

#include <array>

namespace miniplaces_ext::cpu {

OutputEpilogue output_epilogue(const ConvPlan& p, const c10::optional<at::Tensor>& residual) {
  OutputEpilogue e;
  e.relu = p.epilogue.relu;
  if (p.epilogue.residual) {
    TORCH_CHECK(residual.has_value() && residual->defined(), "NHWC conv kernels: the plan adds a residual: pass it");
    const at::ScalarType out_type = p.unit != Bf16Kernel::none ? at::kBFloat16 : at::kFloat;
    TORCH_CHECK(residual->scalar_type() == out_type && residual->sizes() == at::IntArrayRef({p.g.batch, p.g.out_channels,
                                                                                               p.g.out_h, p.g.out_w}),
                "NHWC conv kernels: expected a ", out_type, " residual of the output's shape, got ",
                residual->scalar_type(), " ", residual->sizes());
    e.residual = residual->const_data_ptr();
    e.residual_bf16 = out_type == at::kBFloat16;
    e.strides = strides_of(*residual);
  }
  return e;
}

void run_convolution(const ConvPlan& p, const at::Tensor& x, const at::Tensor& weight,
                     const c10::optional<at::Tensor>& bias, const at::Tensor& out,
                     const c10::optional<at::Tensor>& residual) {
  const ConvGeometry& g = p.g;
  const OutputEpilogue epilogue = output_epilogue(p, residual);
  TORCH_CHECK(p.pass != Pass::grad_weight && p.kernel != nullptr && (p.algo == Algo::direct || p.algo == Algo::winograd),
              "NHWC conv kernels: plan ", p.describe(), " has no kernel to run");
  TORCH_CHECK(p.algo == Algo::direct || winograd_applies(g),
              "NHWC conv kernels: Winograd cannot compute this convolution");
  if (p.unit == Bf16Kernel::none) {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "NHWC conv kernels: expected a float32 input, got ", x.scalar_type());
    p.kernel(x, packed_weight(p.algo, weight, g, p.block, p.weight_cached), bias, g, epilogue, out);  // any layout
    return;
  }
  TORCH_CHECK(x.scalar_type() == at::kBFloat16, "NHWC conv kernels: a bfloat16 unit needs a bfloat16 input, got ",
              x.scalar_type());
  if (p.input == InputStrategy::lowered) {
    lowered_convolution(p, x, weight, bias, epilogue, out);
    return;
  }
  // Channels are multiplied in pairs: an odd count gets a zero channel (the weight's where it is packed).
  ConvGeometry even = g;
  even.in_channels += g.in_channels % 2;
  const at::Tensor x_nhwc = nhwc_pixels(x);
  const at::Tensor padded =
      (even.in_channels == g.in_channels ? x_nhwc : at::constant_pad_nd(x_nhwc, {0, 1})).permute({0, 3, 1, 2});
  p.kernel(padded, packed_weight_pairs(weight, even, p.block, p.weight_cached), bias, even, epilogue, out);
}

at::Tensor run_convolution(const ConvPlan& p, const at::Tensor& x, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias, at::MemoryFormat out_format,
                           const c10::optional<at::Tensor>& residual) {
  const ConvGeometry& g = p.g;
  // The bfloat16 units round their float32 sums to a bfloat16 output once, as they write it.
  const at::ScalarType out_type = p.unit != Bf16Kernel::none ? at::kBFloat16 : at::kFloat;
  at::Tensor out =
      at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, x.options().dtype(out_type).memory_format(out_format));
  run_convolution(p, x, weight, bias, out, residual);
  return out;
}

at::Tensor run_weight_grad(const ConvPlan& p, const at::Tensor& x, const at::Tensor& dy) {
  const ConvGeometry& g = p.g;
  TORCH_CHECK(p.pass == Pass::grad_weight && p.weight_grad != WeightGradMethod::gemm,
              "the weight-gradient kernels cannot run plan ", p.describe());
  if (p.weight_grad == WeightGradMethod::tiles) {
    const KernelTable& table = kernel_table();
    const TileKernels& unit = p.unit_native ? table.tiles_native : table.tiles_emulated;
    const TileWeightGradFn run = p.input == InputStrategy::lowered ? unit.weight_grad_lowered : unit.weight_grad;
    TORCH_CHECK(run != nullptr, "CPU kernels: no native tile kernel in this build");
    return run(x, dy, g);
  }
  const int64_t rows = p.vector_over_input ? g.out_channels : g.in_channels;
  const int64_t columns = p.vector_over_input ? g.in_channels : g.out_channels;
  const at::Tensor sums = at::zeros({g.kernel_h, g.kernel_w, rows, columns}, x.options());
  kernel_table().level(p.options.isa).weight_grad(x, dy, g, p.vector_over_input, sums);
  // [kh][kw][Cout][Cin] or [kh][kw][Cin][Cout] -> [Cout, Cin, kh, kw]
  using Order = std::array<int64_t, 4>;
  const Order order = p.vector_over_input ? Order{2, 3, 0, 1} : Order{3, 2, 0, 1};
  return sums.permute(order).contiguous();
}

} // namespace miniplaces_ext::cpu

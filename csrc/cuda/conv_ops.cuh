// The host side of the CUDA convolution ops, written once over a Launcher:
// which kernels run, on which grids, with which buffers.
//
// The kernels address every tensor through its strides (Strides4), so operands
// are read in the layout the caller has (NCHW or channels_last, no copies) and
// outputs are written in the layout torch would return (conv_output_memory_format).
//
// A Launcher, constructed from the input (it checks the device), supplies
//   at::Tensor input(const at::Tensor&)                  the operand as the kernels read it (same strides)
//   at::Tensor empty(sizes, options, memory_format)      storage every element of which a kernel writes
//   void launch(const std::string& name, Kernel, dim3 grid, dim3 block, args...)
//   int64_t max_grid_z()                                  the largest gridDim.z it launches
//   int compute_capability()                              of the device it runs on (major * 10 + minor)
// CudaLauncher (conv_kernel.cu) launches on the current CUDA stream;
// HostLauncher (testing/cuda_on_cpu/conv_on_cpu.cpp) runs the same kernels on
// the CPU, thread by thread, with guarded buffers.
#pragma once

#include "conv_problems.cuh"
#include "implicit_gemm.cuh"
#include "reduction_kernels.cuh"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>
#include <tuple>

namespace miniplaces_ext::cuda {

constexpr int64_t kMaxGridYZ = 65535;  // CUDA's limit on gridDim.y and gridDim.z

// Tensor cores for this operand type on a GPU of this compute capability
// (major * 10 + minor)? fp16 from 7.0, bf16 from 8.0; fp32 as TF32 from 8.0
// when torch.backends.cudnn.allow_tf32 allows it (as cuDNN's convolutions);
// fp64 never.
template <typename input_t>
bool use_tensor_cores(int capability) {
  if constexpr (!WmmaOperand<input_t>::kExists) {
    return false;
  } else {
    if (capability < WmmaOperand<input_t>::kMinCapability) return false;
    return !std::is_same_v<input_t, float> || at::globalContext().allowTF32CuDNN(at::Float32Op::CONV);
  }
}

// One implicit GEMM of multiply Mma per value of z in [0, z_count), in launches
// of at most launcher.max_grid_z() values of z each, named "implicit_gemm<pass,mma,mainloop>".
template <typename Mma, typename Launcher, typename Problem>
void launch_gemm_with(Launcher& launcher, const char* pass, const Problem& p, int64_t z_count) {
  const int64_t rows = p.rows(), cols = p.cols();
  if (rows == 0 || cols == 0 || z_count == 0) {
    return;
  }
  const int64_t grid_n = (cols + kTileN - 1) / kTileN;
  TORCH_CHECK(grid_n <= kMaxGridYZ, "too many output columns for one CUDA launch: ", cols);
  const int64_t grid_m = (rows + kTileM - 1) / kTileM;
  const int64_t max_z = launcher.max_grid_z();
  const std::string name =
      std::string("implicit_gemm<") + pass + "," + Mma::kName + "," + MainloopFor<Problem, Mma>::kName + ">";
  for (int64_t z0 = 0; z0 < z_count; z0 += max_z) {
    const dim3 grid(static_cast<unsigned>(grid_m), static_cast<unsigned>(grid_n),
                    static_cast<unsigned>(std::min(max_z, z_count - z0)));
    launcher.launch(name, implicit_gemm_kernel<Problem, Mma>, grid, dim3(kThreads), p, rows, cols, z0);
  }
}

// launch_gemm_with the tensor-core multiply where use_tensor_cores says so, else the SIMT one.
template <typename Launcher, typename Problem>
void launch_gemm(Launcher& launcher, const char* pass, const Problem& p, int64_t z_count) {
  using input_t = typename Problem::input_t;
  if constexpr (WmmaOperand<input_t>::kExists) {
    if (use_tensor_cores<input_t>(launcher.compute_capability())) {
      launch_gemm_with<WmmaMma<input_t>>(launcher, pass, p, z_count);
      return;
    }
  }
  launch_gemm_with<SimtMma<typename Problem::acc_t>>(launcher, pass, p, z_count);
}

// True when the forward pass can read kPerThread consecutive reduction positions (channels of
// one tap) with one vector load from each operand: input and weight channels innermost
// (NHWC and channels_last weights, as in a model converted to channels_last), channels per
// group and every other stride multiples of kPerThread, and both buffers aligned to the vector.
template <typename scalar_t>
bool channels_innermost_vectors(const at::Tensor& x, const at::Tensor& w, const ConvGeometry& geo) {
  const auto vector_ready = [](const at::Tensor& t) {
    const auto address = reinterpret_cast<uintptr_t>(t.const_data_ptr());
    return t.stride(1) == 1 && t.stride(0) % kPerThread == 0 && t.stride(2) % kPerThread == 0 &&
        t.stride(3) % kPerThread == 0 && address % (kPerThread * sizeof(scalar_t)) == 0;
  };
  return geo.in_channels_per_group() % kPerThread == 0 && vector_ready(x) && vector_ready(w);
}

// relu?(conv2d + bias + residual?): the inference epilogue in the forward kernel's store (one
// rounding); `residual` [N, Cout, Ho, Wo] in the input's dtype, any strides, or undefined.
template <typename Launcher>
at::Tensor conv2d_forward(Launcher& launcher, const ConvGeometry& geo, const at::Tensor& input,
                          const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                          const at::Tensor& residual = at::Tensor(), bool relu = false) {
  const at::Tensor x = launcher.input(input);
  const at::Tensor w = launcher.input(weight);
  const at::Tensor b = bias.has_value() && bias->defined() ? launcher.input(*bias) : at::Tensor();
  const at::Tensor r = residual.defined() ? launcher.input(residual) : at::Tensor();
  at::Tensor out = launcher.empty({geo.batch, geo.out_channels, geo.out_h, geo.out_w}, input.options(),
                                  conv_output_memory_format(input));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "miniplaces_conv2d_forward_cuda", [&] {
    const auto problem = [&](auto channels_innermost, MixedRadixStep k_step) {
      return ForwardProblem<scalar_t, decltype(channels_innermost)::value>{
          x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
          b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(),
          strides_of(x), strides_of(w), strides_of(out), geo, k_step,
          r.defined() ? r.const_data_ptr<scalar_t>() : nullptr, r.defined() ? strides_of(r) : Strides4{}, relu};
    };
    if (channels_innermost_vectors<scalar_t>(x, w, geo)) {
      launch_gemm(launcher, "forward",
                  problem(std::true_type{}, MixedRadixStep(kTileK, geo.kernel_w, geo.in_channels_per_group())),
                  geo.groups);
    } else {
      launch_gemm(launcher, "forward", problem(std::false_type{}, MixedRadixStep(kStep, geo.kernel_h, geo.kernel_w)),
                  geo.groups);
    }
  });
  return out;
}

template <typename Launcher>
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(Launcher& launcher, const ConvGeometry& geo,
                                                               const at::Tensor& grad_output, const at::Tensor& input,
                                                               const at::Tensor& weight,
                                                               std::array<bool, 3> output_mask) {
  const at::Tensor dy = launcher.input(grad_output);
  const at::Tensor x = launcher.input(input);
  const at::Tensor w = launcher.input(weight);
  at::Tensor grad_input, grad_weight, grad_bias;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "miniplaces_conv2d_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (output_mask[0]) {
      // One sub-convolution per (row, column) phase of the stride that some tap reaches (at most
      // one per tap); the pixels of phases no tap reaches (stride above the kernel) get zeros.
      grad_input = launcher.empty(x.sizes(), x.options(), conv_output_memory_format(input));
      const std::vector<int64_t> rows = StridePhase::reached(geo.stride_h, geo.dilation_h, geo.kernel_h);
      const std::vector<int64_t> cols = StridePhase::reached(geo.stride_w, geo.dilation_w, geo.kernel_w);
      if (static_cast<int64_t>(rows.size()) < geo.stride_h || static_cast<int64_t>(cols.size()) < geo.stride_w) {
        grad_input.zero_();
      }
      for (const int64_t rh : rows) {
        for (const int64_t rw : cols) {
          const StridePhase ph(rh, geo.stride_h, geo.pad_h, geo.dilation_h, geo.kernel_h, geo.in_h);
          const StridePhase pw(rw, geo.stride_w, geo.pad_w, geo.dilation_w, geo.kernel_w, geo.in_w);
          GradInputProblem<scalar_t> p{dy.const_data_ptr<scalar_t>(),
                                       w.const_data_ptr<scalar_t>(),
                                       grad_input.mutable_data_ptr<scalar_t>(),
                                       strides_of(dy),
                                       strides_of(w),
                                       strides_of(grad_input),
                                       geo,
                                       ph,
                                       pw,
                                       MixedRadixStep(kStep, ph.tap_count, pw.tap_count)};
          launch_gemm(launcher, "grad_input", p, geo.groups);
        }
      }
    }
    if (output_mask[1]) {
      const int64_t total = geo.batch * geo.out_pixels();
      const int64_t size = w.numel();
      grad_weight = launcher.empty(w.sizes(), w.options(), at::MemoryFormat::Contiguous);
      if (total == 0) {
        grad_weight.zero_();
      } else {
        // About 32 reduction chunks of at least 1024 pixels keep the GPU busy.
        // Every workspace element is written by the GEMM: no zero fill.
        const int64_t chunk = std::max<int64_t>(1024, (total + 31) / 32);
        const int64_t splits = (total + chunk - 1) / chunk;
        at::Tensor workspace = launcher.empty({splits, size}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value),
                                              at::MemoryFormat::Contiguous);
        const auto problem = [&](auto pixels_innermost) {
          return GradWeightProblem<scalar_t, decltype(pixels_innermost)::value>{
              dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), workspace.mutable_data_ptr<acc_t>(),
              strides_of(dy), strides_of(x), geo, MixedRadixStep(kStep, geo.out_h, geo.out_w), splits, chunk,
              /*channels_innermost_cols=*/x.stride(1) == 1 && geo.in_channels_per_group() > 1,
              MixedRadixStep(kTileK, geo.out_h, geo.out_w)};
        };
        // dy's channels adjacent (channels_last): lanes along output channels read it coalesced;
        // else (NCHW) its pixels are, and A's lanes go along the reduction.
        if (dy.stride(1) == 1 && geo.out_channels > 1) {
          launch_gemm(launcher, "grad_weight", problem(std::false_type{}), geo.groups * splits);
        } else {
          launch_gemm(launcher, "grad_weight", problem(std::true_type{}), geo.groups * splits);
        }
        launcher.launch("sum_splits", sum_splits_kernel<acc_t, scalar_t>,
                        dim3(static_cast<unsigned>((size + kThreads - 1) / kThreads)), dim3(kThreads),
                        workspace.const_data_ptr<acc_t>(), grad_weight.mutable_data_ptr<scalar_t>(), splits, size);
      }
    }
    if (output_mask[2]) {
      grad_bias = launcher.empty({geo.out_channels}, x.options(), at::MemoryFormat::Contiguous);
      launcher.launch("bias_grad", bias_grad_kernel<scalar_t, kThreads>, dim3(static_cast<unsigned>(geo.out_channels)),
                      dim3(kThreads), dy.const_data_ptr<scalar_t>(), grad_bias.mutable_data_ptr<scalar_t>(), geo.batch,
                      geo.out_pixels(), strides_of(dy), MixedRadixStep(kThreads, geo.out_h, geo.out_w));
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

// The op conv2d_forward with kernels run by Launcher: checks, geometry, launches.
template <typename Launcher>
at::Tensor forward_op(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const ConvGeometry geo = make_conv2d_geometry(input, weight, bias, stride, padding, dilation, groups);
  Launcher launcher(input);
  return conv2d_forward(launcher, geo, input, weight, bias);
}

// The op conv2d_fused with kernels run by Launcher: the epilogue in the forward kernel.
template <typename Launcher>
at::Tensor fused_op(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                    const c10::optional<at::Tensor>& residual, bool relu, at::IntArrayRef stride,
                    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const ConvGeometry geo = make_conv2d_geometry(input, weight, bias, stride, padding, dilation, groups);
  const bool has_residual = residual.has_value() && residual->defined();
  if (has_residual) {
    check_residual(*residual, input, geo);
  }
  Launcher launcher(input);
  return conv2d_forward(launcher, geo, input, weight, bias, has_residual ? *residual : at::Tensor(), relu);
}

// The op conv2d_backward with kernels run by Launcher.
template <typename Launcher>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_op(const at::Tensor& grad_output, const at::Tensor& input,
                                                           const at::Tensor& weight, at::IntArrayRef stride,
                                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                                           int64_t groups, std::array<bool, 3> output_mask) {
  const ConvGeometry geo = make_conv2d_geometry(input, weight, c10::nullopt, stride, padding, dilation, groups);
  check_grad_output(grad_output, input, geo);
  Launcher launcher(input);
  return conv2d_backward(launcher, geo, grad_output, input, weight, output_mask);
}

} // namespace miniplaces_ext::cuda

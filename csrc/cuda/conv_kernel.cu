// The CUDA convolution ops: conv_ops.cuh's host code with a launcher that
// runs the kernels of implicit_gemm.cuh and reduction_kernels.cuh on the current CUDA stream.
#include "conv_ops.cuh"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace miniplaces_ext::cuda {
namespace {

// Launches on the current stream of the operands' device.
class CudaLauncher {
 public:
  explicit CudaLauncher(const at::Tensor& input) : guard_(input.device()), stream_(at::cuda::getCurrentCUDAStream()) {
    TORCH_CHECK(input.is_cuda(), "the CUDA conv kernel got an input on ", input.device());
  }

  // The kernels read any strides: no copy.
  const at::Tensor& input(const at::Tensor& t) const { return t; }

  static constexpr int64_t max_grid_z() { return kMaxGridYZ; }

  int compute_capability() const {
    const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
    return props->major * 10 + props->minor;
  }

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat memory_format) const {
    return at::empty(sizes, options.memory_format(memory_format));
  }

  template <typename... Params, typename... Args>
  void launch(const std::string& /*name*/, void (*kernel)(Params...), dim3 grid, dim3 block, Args&&... args) const {
    kernel<<<grid, block, 0, stream_>>>(std::forward<Args>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

 private:
  c10::cuda::CUDAGuard guard_;
  at::cuda::CUDAStream stream_;
};

} // namespace

TORCH_LIBRARY_IMPL(miniplaces_ext, CUDA, m) {
  m.impl("conv2d_forward", &forward_op<CudaLauncher>);
  m.impl("conv2d_fused", &fused_op<CudaLauncher>);
  m.impl("conv2d_backward", &backward_op<CudaLauncher>);
}

} // namespace miniplaces_ext::cuda

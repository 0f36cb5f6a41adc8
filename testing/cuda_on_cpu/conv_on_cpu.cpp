// The CUDA convolution kernels run on the CPU: csrc/cuda/conv_ops.cuh's host
// code with a launcher that executes its kernels (csrc/cuda/*.cuh) thread by
// thread (block_runner.h), every buffer in guarded memory (guarded_memory.h).
//
// Ops (CPU tensors, same arguments as miniplaces_ext's conv2d_forward/backward), in their own
// namespace of this test-only extension (never part of the shipped miniplaces_ext._C):
//   cuda_on_cpu::conv2d_forward, cuda_on_cpu::conv2d_backward, cuda_on_cpu::conv2d_fused
//   cuda_on_cpu::configure(order, seed, guard, max_grid_z, compute_capability)  how the next launches run
//   cuda_on_cpu::launches()                    kernels launched since the last call
// tests/test_cuda_on_cpu.py builds the extension (tests/cuda_on_cpu_harness.py) and drives them.
#include "conv.h"
#include "guarded_memory.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <mutex>
#include <string>
#include <vector>

// After every library header: the CUDA keywords become macros from here on.
#include "device_api.h"
#include "cuda/conv_ops.cuh"

namespace miniplaces_ext::cuda_on_cpu {
namespace {

struct Settings {
  RunOptions options;
  GuardSide guard = GuardSide::kAfter;
  int compute_capability = 90;
  std::vector<std::string> launches;
};
Settings settings;
std::mutex settings_mutex;

// Fills floating-point storage with NaN so that an element no kernel writes shows up.
void poison(at::Tensor& t) {
  if (at::isFloatingType(t.scalar_type())) {
    t.fill_(std::numeric_limits<double>::quiet_NaN());
  }
}

class HostLauncher {
 public:
  explicit HostLauncher(const at::Tensor& input) {
    TORCH_CHECK(input.device().is_cpu(), "the CUDA-on-CPU harness takes CPU tensors, got one on ", input.device());
  }

  // A guarded copy in the operand's own layout, so the kernels read NCHW or channels_last as on a
  // GPU; an operand not 16-byte aligned (a view into its storage) keeps its misalignment, so vector
  // loads are chosen or refused as they would be on a GPU.
  at::Tensor input(const at::Tensor& t) const {
    const size_t address_mod_16 = reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16;
    at::Tensor copy = guarded_empty(t.sizes(), t.options(), guard_, t.suggest_memory_format(),
                                    address_mod_16 == 0 ? std::nullopt : std::optional<size_t>(address_mod_16));
    copy.copy_(t);
    return copy;
  }

  int64_t max_grid_z() const { return options_.max_grid_z; }

  // The GPU the harness stands in for (default 9.0, an H100: tensor cores for fp16, bf16, TF32).
  int compute_capability() const { return capability_; }

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat memory_format) const {
    at::Tensor t = guarded_empty(sizes, options, guard_, memory_format);
    poison(t);
    return t;
  }

  template <typename... Params, typename... Args>
  void launch(const std::string& name, void (*kernel)(Params...), dim3 grid, dim3 block, Args&&... args) const {
    {
      std::lock_guard<std::mutex> lock(settings_mutex);
      settings.launches.emplace_back(name);
    }
    run_grid(grid, block, [&] { kernel(args...); }, options_);
  }

 private:
  RunOptions options_ = settings.options;
  GuardSide guard_ = settings.guard;
  int capability_ = settings.compute_capability;
};

void configure(const std::string& order, int64_t seed, const std::string& guard, int64_t max_grid_z,
               int64_t compute_capability) {
  TORCH_CHECK(max_grid_z >= 1 && max_grid_z <= cuda::kMaxGridYZ, "max_grid_z must be in 1..65535, got ", max_grid_z);
  TORCH_CHECK(compute_capability >= 75 && compute_capability <= 120,
              "compute_capability must be major * 10 + minor of a GPU we build for (75..120), got ", compute_capability);
  std::lock_guard<std::mutex> lock(settings_mutex);
  settings.options =
      RunOptions{parse_thread_order(order), static_cast<uint64_t>(seed), static_cast<unsigned>(max_grid_z)};
  settings.guard = parse_guard_side(guard);
  settings.compute_capability = static_cast<int>(compute_capability);
}

std::vector<std::string> launches() {
  std::lock_guard<std::mutex> lock(settings_mutex);
  return std::exchange(settings.launches, {});
}

} // namespace

TORCH_LIBRARY(cuda_on_cpu, m) {
  m.def(
      "conv2d_forward(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups) -> Tensor");
  m.def(
      "conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def(
      "conv2d_fused(Tensor input, Tensor weight, Tensor? bias, Tensor? residual, bool relu, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def("configure(str order, int seed, str guard, int max_grid_z=65535, int compute_capability=90) -> ()",
        &configure);
  m.def("launches() -> str[]", &launches);
}

TORCH_LIBRARY_IMPL(cuda_on_cpu, CPU, m) {
  m.impl("conv2d_forward", &cuda::forward_op<HostLauncher>);
  m.impl("conv2d_fused", &cuda::fused_op<HostLauncher>);
  m.impl("conv2d_backward", &cuda::backward_op<HostLauncher>);
}

} // namespace miniplaces_ext::cuda_on_cpu

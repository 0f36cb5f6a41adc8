// Kernels with deliberate bugs, to show that the CUDA-on-CPU harness catches
// each kind (tests/test_cuda_on_cpu.py): a missing __syncthreads, an
// out-of-bounds read, a barrier not every thread reaches, a WMMA operation
// only some lanes of a warp perform, a misaligned WMMA load, a cp.async never
// waited for, a misaligned cp.async, a misaligned vector load. Op:
//   cuda_on_cpu::selftest(kernel, input, order) -> Tensor
// runs one block of input.numel() threads, out[t] = f(input, t), with the
// threads of each barrier phase in the given order (block_runner.h).
#include "guarded_memory.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "device_api.h"
#include "cuda/vector_access.cuh"

namespace miniplaces_ext::cuda_on_cpu {
namespace {

constexpr int kMaxThreads = 1024;

// out[t] = in[(t + 1) % n] through shared memory; with kBarrier false the read
// may happen before the neighbour's write (a race).
template <bool kBarrier>
__global__ void rotate_through_shared(const float* in, float* out, int n) {
  __shared__ float staged[kMaxThreads];
  const int t = threadIdx.x;
  staged[t] = in[t];
  if (kBarrier) {
    __syncthreads();
  }
  out[t] = staged[(t + 1) % n];
}

// out[t] = in[t + 1]: the last thread reads one element past the end.
__global__ void read_past_end(const float* in, float* out, int n) {
  const int t = threadIdx.x;
  out[t] = t + 1 <= n ? in[t + 1] : 0.0f;
}

// Only the first half of the block reaches the barrier.
__global__ void divergent_barrier(const float* in, float* out, int n) {
  const int t = threadIdx.x;
  if (t < n / 2) {
    __syncthreads();
  }
  out[t] = in[t];
}

// out[t] = in[t]; a WMMA fragment fill by the lanes below n / 2 only (divergent)
// or, when kMisaligned, a fragment load from a pointer 4 bytes off 32-byte alignment.
template <bool kMisaligned>
__global__ void wmma_misuse(const float* in, float* out, int n) {
  alignas(32) __shared__ float tile[16 * 16 + 8];
  const int t = threadIdx.x;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> c;
  if (kMisaligned) {
    nvcuda::wmma::fill_fragment(c, 0.0f);
    nvcuda::wmma::store_matrix_sync(tile + 1, c, 16, nvcuda::wmma::mem_row_major);
  } else if (t < n / 2) {
    nvcuda::wmma::fill_fragment(c, 0.0f);
  }
  __syncthreads();
  out[t] = in[t];
}

// out[t] = in[t] through shared memory by cp.async (kBytes per copy from &in[t]);
// kWait false: the thread reads the stage without waiting and returns with the copy pending.
template <bool kWait, size_t kBytes>
__global__ void async_copy_through_shared(const float* in, float* out, int n) {
  alignas(16) __shared__ float staged[kMaxThreads + 4];
  const int t = threadIdx.x;
  __pipeline_memcpy_async(&staged[t], &in[t], kBytes);
  __pipeline_commit();
  if (kWait) {
    __pipeline_wait_prior(0);
  }
  out[t] = staged[t];
  (void)n;
}

// out[t] = in[t] read by 16-byte vector loads of four elements from &in[4 * (t / 4) + kOffset]
// (vector_access.cuh): aligned when kOffset is 0, 4 bytes off alignment when it is 1.
template <int kOffset>
__global__ void vector_loads(const float* in, float* out, int n) {
  const int t = threadIdx.x, first = 4 * (t / 4) + kOffset;
  float v[4] = {};
  if (first + 4 <= n) miniplaces_ext::cuda::load_vector(in + first, v);
  out[t] = v[t % 4];
}

at::Tensor selftest(const std::string& kernel, const at::Tensor& input, const std::string& order) {
  TORCH_CHECK(input.dim() == 1 && input.scalar_type() == at::kFloat && input.numel() >= 2 &&
                  input.numel() <= kMaxThreads,
              "selftest input: a float32 vector of 2..1024 elements");
  at::Tensor in = guarded_empty(input.sizes(), input.options(), GuardSide::kAfter, at::MemoryFormat::Contiguous);
  in.copy_(input);
  at::Tensor out = guarded_empty(input.sizes(), input.options(), GuardSide::kAfter, at::MemoryFormat::Contiguous);
  const int n = static_cast<int>(input.numel());
  void (*body)(const float*, float*, int) = nullptr;
  if (kernel == "rotate") {
    body = rotate_through_shared<true>;
  } else if (kernel == "rotate_without_barrier") {
    body = rotate_through_shared<false>;
  } else if (kernel == "read_past_end") {
    body = read_past_end;
  } else if (kernel == "async_copy") {
    body = async_copy_through_shared<true, 4>;
  } else if (kernel == "async_copy_without_wait") {
    body = async_copy_through_shared<false, 4>;
  } else if (kernel == "misaligned_async_copy") {
    body = async_copy_through_shared<true, 8>;
  } else if (kernel == "vector_loads") {
    body = vector_loads<0>;
  } else if (kernel == "misaligned_vector_loads") {
    body = vector_loads<1>;
  } else if (kernel == "divergent_wmma") {
    body = wmma_misuse<false>;
  } else if (kernel == "misaligned_wmma") {
    body = wmma_misuse<true>;
  } else {
    TORCH_CHECK(kernel == "divergent_barrier", "unknown selftest kernel '", kernel, "'");
    body = divergent_barrier;
  }
  const float* in_ptr = in.const_data_ptr<float>();
  float* out_ptr = out.mutable_data_ptr<float>();
  run_grid(dim3(1), dim3(static_cast<unsigned>(n)), [&] { body(in_ptr, out_ptr, n); },
           RunOptions{parse_thread_order(order), 0});
  return out.clone();
}

} // namespace

TORCH_LIBRARY_FRAGMENT(cuda_on_cpu, m) {
  m.def("selftest(str kernel, Tensor input, str order) -> Tensor", &selftest);
}
} // namespace miniplaces_ext::cuda_on_cpu

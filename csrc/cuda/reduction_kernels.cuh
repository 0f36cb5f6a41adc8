// The two reductions outside the GEMMs: the split-K sum of grad_weight and the
// bias gradient. Both sum in a fixed order: deterministic, no atomics.
#pragma once

#include "../conv.h"
#include "mixed_radix_cursor.cuh"

#include <ATen/OpMathType.h>

#include <cstdint>

namespace miniplaces_ext::cuda {

// out[i] = sum_s parts[s][i], summed in split order.
template <typename acc_t, typename scalar_t>
__global__ void sum_splits_kernel(const acc_t* parts, scalar_t* out, int64_t splits, int64_t size) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= size) return;
  acc_t total = 0;
  for (int64_t s = 0; s < splits; ++s) total += parts[s * size + i];
  out[i] = static_cast<scalar_t>(total);
}

// grad_bias[co] = sum over n, oh, ow of dy[n, co, oh, ow] (any layout: dy_strides
// in elements): one block of kBlockThreads threads per channel, then a
// fixed-shape tree reduction in shared memory.
// `walk` is MixedRadixStep(kBlockThreads, out_h, out_w): (n, oh, ow) by kBlockThreads.
template <typename scalar_t, int kBlockThreads>
__global__ void bias_grad_kernel(const scalar_t* dy, scalar_t* out, int64_t batch, int64_t pixels,
                                 const Strides4 dy_strides, const MixedRadixStep walk) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kBlockThreads];
  const int64_t co = blockIdx.x;
  acc_t sum = 0;
  for (MixedRadixCursor i(threadIdx.x, walk); i.linear < batch * pixels; i.advance(walk)) {
    sum += static_cast<acc_t>(dy[dy_strides.at(i.high, co, i.mid, i.low)]);
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (unsigned stride = kBlockThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[co] = static_cast<scalar_t>(partial[0]);
}

} // namespace miniplaces_ext::cuda

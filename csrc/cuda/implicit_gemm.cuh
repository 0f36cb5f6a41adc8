// The implicit-GEMM kernel every convolution pass runs, composed of
//   a Problem (conv_problems.cuh): where A and B are read from the tensors, and the epilogue;
//   the block tile (gemm_tile.cuh);
//   an Mma: SimtMma (simt_mma.cuh, CUDA cores, exact fp32/fp64) or WmmaMma
//   (wmma_mma.cuh, tensor cores for fp16/bf16/TF32): the staging type, the
//   multiply of one k-tile, the tile's store;
//   a main loop (mainloops.cuh): register double buffering with vector loads where
//   the problem reads contiguous channel runs (NHWC forward), cp.async multistage
//   where the operands are staged as they are in memory in 4 or 8 bytes, register
//   double buffering otherwise.
#pragma once

#include "gemm_tile.cuh"
#include "mainloops.cuh"
#include "simt_mma.cuh"
#include "wmma_mma.cuh"

#include <cstdint>
#include <type_traits>

namespace miniplaces_ext::cuda {

// The main loop for this problem and multiply: vector loads through registers where the
// problem reads contiguous runs of the reduction, else cp.async where it applies.
template <typename Problem, typename Mma>
using MainloopFor = std::conditional_t<!Problem::kContiguousK &&
                                           std::is_same_v<typename Mma::smem_t, typename Problem::input_t> &&
                                           (sizeof(typename Problem::input_t) == 4 ||
                                            sizeof(typename Problem::input_t) == 8),
                                       AsyncCopyMainloop<Problem, Mma>, RegisterStagedMainloop<Problem, Mma>>;

// C[z][m, n] = sum_{k in k_range(z)} A(z, m, k) * B(z, k, n): one tile per block,
// z = z_offset + blockIdx.z (a launch covers at most 65535 values of z).
template <typename Problem, typename Mma>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) implicit_gemm_kernel(const Problem p, int64_t rows, int64_t cols,
                                                                 int64_t z_offset) {
  if constexpr (!Mma::kSupported) {
    __trap();  // the host never launches it: no such tensor cores on this architecture
  } else {
    const int64_t z = z_offset + blockIdx.z;
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
    const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
    typename Mma::Accumulators acc;
    Mma::clear(acc);
    MainloopFor<Problem, Mma>::run(p, acc, z, m0, n0);
    Mma::store(acc, p, z, m0, n0, rows, cols);
  }
}

} // namespace miniplaces_ext::cuda

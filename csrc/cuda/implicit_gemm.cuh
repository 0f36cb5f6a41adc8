// The tiled implicit-GEMM kernel every convolution pass runs, composed of
//   a Problem (conv_problems.cuh): how A and B are read from the tensors, and the epilogue;
//   the block tile (gemm_tile.cuh);
//   an Mma: SimtMma (simt_mma.cuh, CUDA cores, exact fp32/fp64) or WmmaMma
//   (wmma_mma.cuh, tensor cores for fp16/bf16/TF32), which says in which type
//   operands are staged in shared memory, multiplies one k-tile and stores the tile.
//
// The reduction runs in k-tiles of kTileK through two shared-memory stages:
// while the block multiplies the tile in one stage, each thread already holds
// its share of the next tile in registers and writes it to the other stage,
// so one barrier per k-tile suffices and global loads overlap the multiply.
// Each thread stages the same row of A and column of B on every k-tile
// (lane_mn) at reduction offsets lane_k + kStep*e: its operand index maths is
// done once (a_row, b_col) and a MixedRadixCursor walks the reduction.
#pragma once

#include "gemm_tile.cuh"
#include "mixed_radix_cursor.cuh"
#include "simt_mma.cuh"
#include "wmma_mma.cuh"

#include <cstdint>

namespace miniplaces_ext::cuda {

// C[z][m, n] = sum_{k in k_range(z)} A(z, m, k) * B(z, k, n): one tile per block,
// z = z_offset + blockIdx.z (a launch covers at most 65535 values of z).
template <typename Problem, typename Mma>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) implicit_gemm_kernel(const Problem p, int64_t rows, int64_t cols,
                                                                 int64_t z_offset) {
  if constexpr (!Mma::kSupported) {
    __trap();  // the host never launches it: no such tensor cores on this architecture
  } else {
    using acc_t = typename Problem::acc_t;
    using smem_t = typename Mma::smem_t;
    alignas(32) __shared__ smem_t As[2][kTileK][Mma::kLead];
    alignas(32) __shared__ smem_t Bs[2][kTileK][Mma::kLead];
    const int64_t z = z_offset + blockIdx.z;
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
    const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
    const int lane_mn = threadIdx.x % kTileM, lane_k = threadIdx.x / kTileM;
    int64_t k0, k1;
    p.k_range(z, k0, k1);

    const typename Problem::Row row = p.a_row(z, m0 + lane_mn);
    const typename Problem::Col col = p.b_col(z, n0 + lane_mn);
    MixedRadixCursor k(k0 + lane_k, p.k_step);
    acc_t a_next[kPerThread], b_next[kPerThread];
    // This thread's share of the next k-tile, from global memory into registers.
    const auto fetch = [&] {
#pragma unroll
      for (int e = 0; e < kPerThread; ++e) {
        const bool inside = k.linear < k1;
        a_next[e] = inside ? p.a(row, k) : acc_t(0);
        b_next[e] = inside ? p.b(k, col) : acc_t(0);
        k.advance(p.k_step);
      }
    };
    const auto stage = [&](int s) {
#pragma unroll
      for (int e = 0; e < kPerThread; ++e) {
        As[s][lane_k + kStep * e][lane_mn] = static_cast<smem_t>(a_next[e]);
        Bs[s][lane_k + kStep * e][lane_mn] = static_cast<smem_t>(b_next[e]);
      }
    };

    typename Mma::Accumulators acc;
    Mma::clear(acc);
    fetch();
    stage(0);
    __syncthreads();
    int s = 0;
    for (int64_t kt = k0; kt < k1; kt += kTileK) {
      const bool more = kt + kTileK < k1;  // the same for every thread of the block
      if (more) fetch();
      Mma::multiply(acc, As[s], Bs[s]);
      if (more) stage(s ^ 1);  // the other stage: nobody reads it since the last barrier
      __syncthreads();
      s ^= 1;
    }
    Mma::store(acc, p, z, m0, n0, rows, cols);
  }
}

} // namespace miniplaces_ext::cuda

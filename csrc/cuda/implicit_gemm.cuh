// The tiled implicit-GEMM kernel every convolution pass runs (conv_problems.cuh
// says how each reads its operands).
//
// A block computes a kTileM x kTileN tile of C[z] with kThreads threads, each
// holding a 4 x 4 register block (rows tm + 16r, columns tn + 16q). The
// reduction runs in k-tiles of kTileK through two shared-memory stages: while
// the block multiplies the tile in one stage, each thread already holds its
// share of the next tile in registers and writes it to the other stage, so
// one barrier per k-tile suffices and global loads overlap the FMAs.
// Each thread stages the same row of A and column of B on every k-tile
// (lane_mn) at reduction offsets lane_k + kStep*e: its operand index maths
// is done once (a_row, b_col) and a MixedRadixCursor walks the reduction.
// Shared-memory stores are row-wise across consecutive threads and the reads
// broadcast, so there are no bank conflicts.
#pragma once

#include "mixed_radix_cursor.cuh"

#include <cstdint>

namespace miniplaces_ext::cuda {

constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kTileK = 16;
constexpr int kThreads = 256;                    // 16 x 16 threads, 4 x 4 outputs each
constexpr int kMinBlocksPerSm = 2;               // lets ptxas use up to 128 registers per thread: no spills
constexpr int kStep = kThreads / kTileM;         // reduction offsets between one thread's staged elements
constexpr int kPerThread = kTileK / kStep;       // elements of A (and of B) each thread stages per k-tile
static_assert(kTileM == kTileN && kThreads % kTileM == 0 && kTileK % kStep == 0, "tile shape");

// C[z][m, n] = sum_{k in k_range(z)} A(z, m, k) * B(z, k, n): one tile per block,
// z = z_offset + blockIdx.z (a launch covers at most 65535 values of z).
template <typename Problem>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) implicit_gemm_kernel(const Problem p, int64_t rows, int64_t cols,
                                                                 int64_t z_offset) {
  using acc_t = typename Problem::acc_t;
  __shared__ acc_t As[2][kTileK][kTileM];
  __shared__ acc_t Bs[2][kTileK][kTileN];
  const int64_t z = z_offset + blockIdx.z;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  const int tid = threadIdx.x;
  const int tm = tid % 16, tn = tid / 16;
  const int lane_mn = tid % kTileM, lane_k = tid / kTileM;
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
      As[s][lane_k + kStep * e][lane_mn] = a_next[e];
      Bs[s][lane_k + kStep * e][lane_mn] = b_next[e];
    }
  };

  acc_t acc[4][4] = {};
  fetch();
  stage(0);
  __syncthreads();
  int s = 0;
  for (int64_t kt = k0; kt < k1; kt += kTileK) {
    const bool more = kt + kTileK < k1;  // the same for every thread of the block
    if (more) fetch();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      acc_t av[4], bv[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) av[r] = As[s][kk][tm + 16 * r];
#pragma unroll
      for (int q = 0; q < 4; ++q) bv[q] = Bs[s][kk][tn + 16 * q];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[r][q] += av[r] * bv[q];
    }
    if (more) stage(s ^ 1);  // the other stage: nobody reads it since the last barrier
    __syncthreads();
    s ^= 1;
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t gm = m0 + tm + 16 * r;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t gn = n0 + tn + 16 * q;
      if (gm < rows && gn < cols) p.store(z, gm, gn, acc[r][q]);
    }
  }
}

} // namespace miniplaces_ext::cuda

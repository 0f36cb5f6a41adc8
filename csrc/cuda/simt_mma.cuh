// The CUDA-core multiply of implicit_gemm.cuh: each thread accumulates a 4 x 4
// block of the tile (rows tm + 16r, columns tn + 16q) in registers, in the
// problem's accumulator type (float for fp32/fp16/bf16, double for fp64):
// exact fp32 maths, and the only choice for fp64.
#pragma once

#include "gemm_tile.cuh"

#include <cstdint>

namespace miniplaces_ext::cuda {

template <typename acc_t>
struct SimtMma {
  using smem_t = acc_t;  // operands are staged already converted to the accumulator type
  static constexpr bool kSupported = true;
  // Shared rows padded by one word: row-wise stores and broadcast reads have no bank conflicts,
  // and stores down a column (A with its lanes along k) at most two-way ones.
  static constexpr int kLead = kTileM + 1;
  static constexpr const char* kName = "simt";

  struct Accumulators {
    acc_t v[4][4];
  };

  __device__ static void clear(Accumulators& acc) {
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc.v[r][q] = acc_t(0);
  }

  // acc += As * Bs over one k-tile (As[k][m], Bs[k][n] in shared memory).
  __device__ static void multiply(Accumulators& acc, const smem_t (&As)[kTileK][kLead], const smem_t (&Bs)[kTileK][kLead]) {
    const int tm = threadIdx.x % 16, tn = threadIdx.x / 16;
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      acc_t av[4], bv[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) av[r] = As[kk][tm + 16 * r];
#pragma unroll
      for (int q = 0; q < 4; ++q) bv[q] = Bs[kk][tn + 16 * q];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc.v[r][q] += av[r] * bv[q];
    }
  }

  // Writes the block's tile at (m0, n0) through the problem's epilogue (Problem::store).
  template <typename Problem>
  __device__ static void store(const Accumulators& acc, const Problem& p, int64_t z, int64_t m0, int64_t n0,
                               int64_t rows, int64_t cols) {
    store_thread_outputs(p, z, m0, n0, rows, cols, [&](int, int, int r, int q) { return acc.v[r][q]; });
  }
};

} // namespace miniplaces_ext::cuda

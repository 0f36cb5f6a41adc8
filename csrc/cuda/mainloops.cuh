// The main loops of implicit_gemm.cuh: how k-tiles of A and B reach shared
// memory while the Mma multiplies. Both walk the reduction the same way: each
// thread stages the same row of A and column of B on every k-tile (lane_mn),
// at reduction offsets lane_k + kStep*e, its operand index maths done once
// (Problem::a_row, b_col) and a MixedRadixCursor advancing without divisions.
//
// RegisterStagedMainloop (any operand type): two shared-memory stages; while
// the block multiplies one, each thread already holds its share of the next
// k-tile in registers (converted to the Mma's staging type) and writes it to
// the other stage after the multiply: one barrier per k-tile, global loads
// overlap the FMAs.
//
// AsyncCopyMainloop (operands of 4 or 8 bytes staged in their own type: fp32
// and fp64 on CUDA cores, fp32 as TF32 on tensor cores): kStages stages filled
// by cp.async (__pipeline_memcpy_async, from <cuda_pipeline_primitives.h>,
// which compiles to plain copies before sm_80); kStages - 1 k-tiles are in
// flight while one is multiplied, and the copies bypass the registers. Zero
// padding is a plain shared store.
#pragma once

#include "gemm_tile.cuh"
#include "mixed_radix_cursor.cuh"

#if defined(__CUDACC__)
#include <cuda_pipeline_primitives.h>
#endif

#include <cstdint>

namespace miniplaces_ext::cuda {

// Where this thread's elements of a k-tile go in a stage, and the cursor at its first element.
struct TileLanes {
  int lane_mn, lane_k;
  __device__ TileLanes() : lane_mn(threadIdx.x % kTileM), lane_k(threadIdx.x / kTileM) {}
};

template <typename Problem, typename Mma>
struct RegisterStagedMainloop {
  static constexpr const char* kName = "registers";
  using smem_t = typename Mma::smem_t;
  using acc_t = typename Problem::acc_t;

  __device__ static void run(const Problem& p, typename Mma::Accumulators& acc, int64_t z, int64_t m0, int64_t n0) {
    alignas(32) __shared__ smem_t As[2][kTileK][Mma::kLead];
    alignas(32) __shared__ smem_t Bs[2][kTileK][Mma::kLead];
    const TileLanes lanes;
    int64_t k0, k1;
    p.k_range(z, k0, k1);
    const typename Problem::Row row = p.a_row(z, m0 + lanes.lane_mn);
    const typename Problem::Col col = p.b_col(z, n0 + lanes.lane_mn);
    MixedRadixCursor k(k0 + lanes.lane_k, p.k_step);
    acc_t a_next[kPerThread], b_next[kPerThread];
    const auto fetch = [&] {  // this thread's share of the next k-tile, global memory -> registers
#pragma unroll
      for (int e = 0; e < kPerThread; ++e) {
        const auto* a = k.linear < k1 ? p.a(row, k) : nullptr;
        const auto* b = k.linear < k1 ? p.b(k, col) : nullptr;
        a_next[e] = a != nullptr ? static_cast<acc_t>(*a) : acc_t(0);
        b_next[e] = b != nullptr ? static_cast<acc_t>(*b) : acc_t(0);
        k.advance(p.k_step);
      }
    };
    const auto stage = [&](int s) {
#pragma unroll
      for (int e = 0; e < kPerThread; ++e) {
        As[s][lanes.lane_k + kStep * e][lanes.lane_mn] = static_cast<smem_t>(a_next[e]);
        Bs[s][lanes.lane_k + kStep * e][lanes.lane_mn] = static_cast<smem_t>(b_next[e]);
      }
    };
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
  }
};

template <typename Problem, typename Mma>
struct AsyncCopyMainloop {
  static constexpr const char* kName = "cp.async";
  using smem_t = typename Mma::smem_t;
  static_assert(sizeof(smem_t) == 4 || sizeof(smem_t) == 8, "cp.async copies 4, 8 or 16 bytes");
  static constexpr int kStages = sizeof(smem_t) == 4 ? 3 : 2;  // fp64: 2 stages keep it within 48 KiB

  __device__ static void run(const Problem& p, typename Mma::Accumulators& acc, int64_t z, int64_t m0, int64_t n0) {
    alignas(32) __shared__ smem_t As[kStages][kTileK][Mma::kLead];
    alignas(32) __shared__ smem_t Bs[kStages][kTileK][Mma::kLead];
    const TileLanes lanes;
    int64_t k0, k1;
    p.k_range(z, k0, k1);
    const typename Problem::Row row = p.a_row(z, m0 + lanes.lane_mn);
    const typename Problem::Col col = p.b_col(z, n0 + lanes.lane_mn);
    MixedRadixCursor k(k0 + lanes.lane_k, p.k_step);
    const auto copy = [](smem_t* dst, const smem_t* src) {
      if (src != nullptr) {
        __pipeline_memcpy_async(dst, src, sizeof(smem_t));
      } else {
        *dst = smem_t(0);
      }
    };
    // Issues this thread's copies of the next k-tile into stage s, as one commit group
    // (an empty group past the last tile, so that every thread counts groups alike).
    const auto issue = [&](int s) {
#pragma unroll
      for (int e = 0; e < kPerThread; ++e) {
        if (k.linear < k1) {
          copy(&As[s][lanes.lane_k + kStep * e][lanes.lane_mn], p.a(row, k));
          copy(&Bs[s][lanes.lane_k + kStep * e][lanes.lane_mn], p.b(k, col));
        } else {
          As[s][lanes.lane_k + kStep * e][lanes.lane_mn] = smem_t(0);
          Bs[s][lanes.lane_k + kStep * e][lanes.lane_mn] = smem_t(0);
        }
        k.advance(p.k_step);
      }
      __pipeline_commit();
    };
    const int64_t tiles = (k1 - k0 + kTileK - 1) / kTileK;
    for (int s = 0; s < kStages - 1; ++s) issue(s);  // tiles past the end stage zeros, never read
    for (int64_t t = 0; t < tiles; ++t) {
      __pipeline_wait_prior(kStages - 2);  // this thread's copies of tile t have landed
      __syncthreads();                     // everyone's have; everyone is done with tile t - 1's stage
      issue(static_cast<int>((t + kStages - 1) % kStages));
      Mma::multiply(acc, As[t % kStages], Bs[t % kStages]);
    }
    __pipeline_wait_prior(0);
    __syncthreads();  // the Mma's epilogue may reuse shared memory
  }
};

} // namespace miniplaces_ext::cuda

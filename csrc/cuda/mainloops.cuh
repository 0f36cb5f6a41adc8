// The main loops of implicit_gemm.cuh: how k-tiles of A and B reach shared
// memory while the Mma multiplies. Both walk the reduction the same way
// (ThreadOperands): each thread stages the same row of A and column of B on
// every k-tile (lane_mn), at reduction offsets lane_k + kStep*e, its operand
// index maths done once (Problem::a_row, b_col) and a MixedRadixCursor
// advancing without divisions.
//
// RegisterStagedMainloop (any operand type): two shared-memory stages; while
// the block multiplies one, each thread already holds its share of the next
// k-tile in registers (converted to the Mma's staging type) and writes it to
// the other stage after the multiply: one barrier per k-tile, global loads
// overlap the FMAs. For a problem whose kPerThread consecutive reduction
// positions are consecutive in memory (Problem::kContiguousK: channels of one
// tap in NHWC), a thread's share of a tile is those kPerThread positions, read
// with one vector load per operand (vector_access.cuh: 16 bytes for fp32, 8 for
// fp16/bf16, 2 x 16 for fp64) instead of kPerThread scalar loads.
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
#include "vector_access.cuh"

#if defined(__CUDACC__)
#include <cuda_pipeline_primitives.h>
#endif

#include <cstdint>

namespace miniplaces_ext::cuda {

// This thread's share of the block's k-tiles: its row of A and column of B (lane_mn), its
// reduction offsets in each tile — lane_k + kStep*e, or lane_k*kPerThread + e for
// Problem::kContiguousK — and the cursor walking them (the problem's k_step is kStep,
// or kTileK when one next() serves a whole contiguous share).
// With Problem::kALanesAlongK, A is shared out the other way: a warp's lanes take 16
// consecutive reduction positions (adjacent in memory for A: pixels of an NCHW tensor) of
// two rows, and element e of a thread is row a_lane_m + 16e at offset a_lane_k; its own
// cursor a_k moves once per tile (Problem::tile_step).
template <typename Problem>
struct ThreadOperands {
  using input_t = typename Problem::input_t;
  static constexpr bool kContiguous = Problem::kContiguousK;
  static constexpr bool kAAlongK = Problem::kALanesAlongK;
  static_assert(!(kContiguous && kAAlongK), "one way of sharing out A");
  static constexpr int kARows = kAAlongK ? kPerThread : 1;
  static constexpr int kARowStep = kThreads / kTileK;  // kAAlongK: rows between a thread's A elements
  static_assert(kARowStep * kPerThread == kTileM, "A along k covers the tile");
  int lane_mn, lane_k;
  int a_lane_m, a_lane_k;
  KRange ks;  // this z's reduction positions
  typename Problem::Row rows[kARows];
  typename Problem::Col col;
  MixedRadixCursor k, a_k;

  __device__ ThreadOperands(const Problem& p, int64_t z, int64_t m0, int64_t n0)
      : lane_mn(threadIdx.x % kTileM), lane_k(threadIdx.x / kTileM),
        a_lane_m(kAAlongK ? threadIdx.x / kTileK : lane_mn), a_lane_k(kAAlongK ? threadIdx.x % kTileK : lane_k),
        ks(p.k_range(z)), col(p.b_col(z, n0 + lane_mn)),
        k(ks.begin + (kContiguous ? lane_k * kPerThread : lane_k), p.k_step), a_k(ks.begin + a_lane_k, p.k_step) {
#pragma unroll
    for (int e = 0; e < kARows; ++e) rows[e] = p.a_row(z, m0 + a_lane_m + kARowStep * e);
  }

  // The addresses of this thread's A and B elements e (nullptr: a zero), taken in order
  // e = 0, 1, ... per tile; then the cursors move on.
  __device__ void next(const Problem& p, int e, const input_t*& a, const input_t*& b) {
    const bool inside = k.linear < ks.end;
    b = inside ? p.b(k, col) : nullptr;
    if constexpr (kAAlongK) {
      a = a_k.linear < ks.end ? p.a(rows[e], a_k) : nullptr;
      if (e == kPerThread - 1) a_k.advance(p.tile_step);
    } else {
      a = inside ? p.a(rows[0], k) : nullptr;
    }
    k.advance(p.k_step);
  }
  // Where element e of this thread's share of B (and of A, unless kAAlongK) goes in a stage.
  __device__ int stage_row(int e) const { return kContiguous ? lane_k * kPerThread + e : lane_k + kStep * e; }
  // Where element e of this thread's share of A goes: As[a_stage_row(e)][a_stage_col(e)].
  __device__ int a_stage_row(int e) const { return kAAlongK ? a_lane_k : stage_row(e); }
  __device__ int a_stage_col(int e) const { return kAAlongK ? a_lane_m + kARowStep * e : lane_mn; }
};

template <typename Problem, typename Mma>
struct RegisterStagedMainloop {
  static constexpr const char* kName = Problem::kContiguousK ? "vector-loads" : "registers";
  using smem_t = typename Mma::smem_t;
  using acc_t = typename Problem::acc_t;

  __device__ static void run(const Problem& p, typename Mma::Accumulators& acc, int64_t z, int64_t m0, int64_t n0) {
    alignas(32) __shared__ smem_t As[2][kTileK][Mma::kLead];
    alignas(32) __shared__ smem_t Bs[2][kTileK][Mma::kLead];
    ThreadOperands<Problem> t(p, z, m0, n0);
    acc_t a_next[kPerThread], b_next[kPerThread];
    const auto fetch = [&] {  // this thread's share of the next k-tile, global memory -> registers
      using input_t = typename Problem::input_t;
      if constexpr (Problem::kContiguousK) {
        const input_t *a, *b;
        t.next(p, 0, a, b);  // the first of kPerThread consecutive elements, all inside or all zero
        input_t av[kPerThread] = {}, bv[kPerThread] = {};
        if (a != nullptr) load_vector(a, av);
        if (b != nullptr) load_vector(b, bv);
#pragma unroll
        for (int e = 0; e < kPerThread; ++e) {
          a_next[e] = static_cast<acc_t>(av[e]);
          b_next[e] = static_cast<acc_t>(bv[e]);
        }
      } else {
#pragma unroll
        for (int e = 0; e < kPerThread; ++e) {
          const input_t *a, *b;
          t.next(p, e, a, b);
          a_next[e] = a != nullptr ? static_cast<acc_t>(*a) : acc_t(0);
          b_next[e] = b != nullptr ? static_cast<acc_t>(*b) : acc_t(0);
        }
      }
    };
    const auto stage = [&](int s) {
#pragma unroll
      for (int e = 0; e < kPerThread; ++e) {
        As[s][t.a_stage_row(e)][t.a_stage_col(e)] = static_cast<smem_t>(a_next[e]);
        Bs[s][t.stage_row(e)][t.lane_mn] = static_cast<smem_t>(b_next[e]);
      }
    };
    fetch();
    stage(0);
    __syncthreads();
    int s = 0;
    for (int64_t kt = t.ks.begin; kt < t.ks.end; kt += kTileK) {
      const bool more = kt + kTileK < t.ks.end;  // the same for every thread of the block
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
    ThreadOperands<Problem> t(p, z, m0, n0);
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
        const smem_t *a, *b;
        t.next(p, e, a, b);
        copy(&As[s][t.a_stage_row(e)][t.a_stage_col(e)], a);
        copy(&Bs[s][t.stage_row(e)][t.lane_mn], b);
      }
      __pipeline_commit();
    };
    const int64_t tiles = (t.ks.end - t.ks.begin + kTileK - 1) / kTileK;
    for (int s = 0; s < kStages - 1; ++s) issue(s);  // tiles past the end stage zeros, never read
    for (int64_t tile = 0; tile < tiles; ++tile) {
      __pipeline_wait_prior(kStages - 2);  // this thread's copies of this tile have landed
      __syncthreads();                     // everyone's have; everyone is done with the previous tile's stage
      issue(static_cast<int>((tile + kStages - 1) % kStages));
      Mma::multiply(acc, As[tile % kStages], Bs[tile % kStages]);
    }
    __pipeline_wait_prior(0);
    __syncthreads();  // the Mma's epilogue may reuse shared memory
  }
};

} // namespace miniplaces_ext::cuda

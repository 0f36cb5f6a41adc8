// The block tile every implicit GEMM kernel uses: a kTileM x kTileN tile of C
// per block of kThreads threads, the reduction in k-tiles of kTileK.
#pragma once

#include <cstdint>

namespace miniplaces_ext::cuda {

constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kTileK = 16;
constexpr int kThreads = 256;                    // 8 warps; SIMT: 16 x 16 threads, 4 x 4 outputs each
constexpr int kWarpSize = 32;
constexpr int kMinBlocksPerSm = 2;               // lets ptxas use up to 128 registers per thread: no spills
constexpr int kStep = kThreads / kTileM;         // reduction offsets between one thread's staged elements
constexpr int kPerThread = kTileK / kStep;       // elements of A (and of B) each thread stages per k-tile
static_assert(kTileM == kTileN && kThreads % kTileM == 0 && kTileK % kStep == 0, "tile shape");

// The reduction positions [begin, end) of one z of a problem (Problem::k_range).
struct KRange {
  int64_t begin, end;
};

// The epilogue's thread mapping: each thread writes the outputs (m0 + tm + 16r, n0 + tn + 16q),
// r, q < 4, tm = tid % 16, tn = tid / 16, of value(r, q) through Problem::store, inside the problem only.
template <typename Problem, typename Value>
__device__ void store_thread_outputs(const Problem& p, int64_t z, int64_t m0, int64_t n0, int64_t rows, int64_t cols,
                                     const Value& value) {
  const int tm = threadIdx.x % 16, tn = threadIdx.x / 16;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t gm = m0 + tm + 16 * r;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t gn = n0 + tn + 16 * q;
      if (gm < rows && gn < cols) p.store(z, gm, gn, value(tm + 16 * r, tn + 16 * q, r, q));
    }
  }
}

} // namespace miniplaces_ext::cuda

// The machine's FMA peak, measured: every thread runs independent chains of
// vector FMAs (enough to cover the FMA latency on every port) for a fixed
// count, and the wall time over all threads gives float32 GFLOP/s. The bench
// reports each kernel as a share of it.
//
// Include only after the vector traits (vec_<isa>.h), inside the same target pragma.
#pragma once

#include <ATen/Parallel.h>

#include <chrono>
#include <cstdint>

namespace miniplaces_ext::cpu {

template <typename Vec>
struct FmaPeak {
  using Reg = typename Vec::Reg;
  static constexpr int kChains = 12;

  // One thread's chains; the result depends on every FMA, so none is removed.
  static float chains(int64_t steps) {
    Reg acc[kChains];
    for (int k = 0; k < kChains; ++k) {
      acc[k] = Vec::broadcast(static_cast<float>(k));
    }
    const Reg a = Vec::broadcast(0.999999f), b = Vec::broadcast(1e-7f);
    for (int64_t i = 0; i < steps; ++i) {
      for (int k = 0; k < kChains; ++k) {
        acc[k] = Vec::fma(acc[k], a, b);
      }
    }
    Reg sum = Vec::zero();
    for (int k = 0; k < kChains; ++k) {
      sum = Vec::add(sum, acc[k]);
    }
    float out[Vec::kLanes];
    Vec::store(out, sum);
    return out[0];
  }

  // GFLOP/s of all of torch's threads running `steps` FMA steps each.
  static double gflops(int64_t steps) {
    const int threads = at::get_num_threads();
    volatile float sink = 0;
    const auto start = std::chrono::steady_clock::now();
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        sink = sink + chains(steps);
      }
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return 2.0 * kChains * Vec::kLanes * static_cast<double>(steps) * threads / seconds / 1e9;
  }
};

} // namespace miniplaces_ext::cpu

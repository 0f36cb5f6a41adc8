// A position in a reduction of the form linear = (high * mid_radix + mid) * low_radix + low
// — e.g. (channel, kernel row, kernel column) or (image, output row, output column) —
// that advances by a fixed step with carries instead of divisions. The radices
// and the step's digits (MixedRadixStep) are computed once on the host and
// passed as a kernel argument (constant memory, no registers); each thread
// keeps only its four digits, computed once, then each step is a few adds and
// compares.
#pragma once

#include <cstdint>

namespace miniplaces_ext::cuda {

struct MixedRadixStep {
  int64_t mid_radix, low_radix;
  int64_t step, step_high, step_mid, step_low;

  MixedRadixStep(int64_t step_, int64_t mid_radix_, int64_t low_radix_)
      : mid_radix(mid_radix_), low_radix(low_radix_), step(step_), step_high(step_ / (mid_radix_ * low_radix_)),
        step_mid((step_ / low_radix_) % mid_radix_), step_low(step_ % low_radix_) {}
};

struct MixedRadixCursor {
  int64_t linear, high, mid, low;

  __host__ __device__ MixedRadixCursor(int64_t start, const MixedRadixStep& r)
      : linear(start), high(start / (r.mid_radix * r.low_radix)), mid((start / r.low_radix) % r.mid_radix),
        low(start % r.low_radix) {}

  // linear += r.step. Each step digit is below its radix, so each digit carries at most once.
  __host__ __device__ void advance(const MixedRadixStep& r) {
    linear += r.step;
    low += r.step_low;
    const int64_t carry_low = low >= r.low_radix ? 1 : 0;
    low -= carry_low * r.low_radix;
    mid += r.step_mid + carry_low;
    const int64_t carry_mid = mid >= r.mid_radix ? 1 : 0;
    mid -= carry_mid * r.mid_radix;
    high += r.step_high + carry_mid;
  }
};

} // namespace miniplaces_ext::cuda

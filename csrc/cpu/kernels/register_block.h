// The register block shared by the direct, Winograd and weight-gradient
// kernels: R rows x 2*kLanes columns of float32 accumulators, updated per step
// of the reduction by a rank-1 product (float32 operands: two vector loads of
// the panel, R broadcasts, 2R FMAs) or a rank-2 one (bfloat16 operands taken
// in pairs: 2R dot_pairs), and stored to any (row, column) strides (NHWC or
// NCHW outputs) or added to memory. What differs between the two operand types
// is one small policy (Float32Steps, Bf16PairSteps); where the R rows are is
// another (StridedRows, PointerRows, ChannelRows); one reduction loop serves
// every combination.
//
// Include only after the vector traits (vec_<isa>.h), inside the same target
// pragma, so that it is compiled for that ISA alone.
#pragma once

#include <algorithm>
#include <cstdint>

namespace miniplaces_ext::cpu {

// Stores lanes [0, n) of v to p[0], p[stride], p[2 * stride], ...: one vector
// store when the lanes are contiguous (stride 1), else one store per lane.
template <typename Vec>
inline void store_lanes(float* p, int64_t stride, typename Vec::Reg v, int n) {
  if (stride == 1) {
    if (n == Vec::kLanes) {
      Vec::store(p, v);
    } else {
      Vec::store_partial(p, v, n);
    }
    return;
  }
  alignas(64) float lanes[Vec::kLanes];
  Vec::store(lanes, v);
  for (int i = 0; i < n; ++i) {
    p[i * stride] = lanes[i];
  }
}

// Lanes [0, n) of a vector from p[0], p[stride], p[2 * stride], ... (the others zero): one vector
// load when they are contiguous (stride 1), else one load per lane.
template <typename Vec>
inline typename Vec::Reg load_lanes(const float* p, int64_t stride, int n) {
  if (stride == 1) {
    return n == Vec::kLanes ? Vec::load(p) : Vec::load_partial(p, n);
  }
  alignas(64) float lanes[Vec::kLanes] = {};
  for (int i = 0; i < n; ++i) {
    lanes[i] = p[i * stride];
  }
  return Vec::load(lanes);
}

// One step of the reduction over float32 operands: a weight panel row of
// kLanes floats per half, a row operand broadcast from one float, one FMA.
template <typename Vec>
struct Float32Steps {
  using In = float;
  using Operand = typename Vec::Reg;
  static constexpr int kWidth = 1;  // reduction elements per step
  static Operand load(const float* p) { return Vec::load(p); }
  static Operand broadcast(const float* p) { return Vec::broadcast(*p); }
  static typename Vec::Reg multiply_add(typename Vec::Reg acc, Operand a, Operand b) { return Vec::fma(a, b, acc); }
};

// One step over bfloat16 operands (their bits) taken in pairs; Vec has
// vec_bf16_pairs.h's interface: kLanes pairs per half of the panel row, a
// pair broadcast, one dot_pairs adding both products.
template <typename Vec>
struct Bf16PairSteps {
  using In = uint16_t;
  using Operand = typename Vec::Pairs;
  static constexpr int kWidth = 2;
  static Operand load(const uint16_t* p) { return Vec::load_pairs(p); }
  static Operand broadcast(const uint16_t* p) { return Vec::broadcast_pair(p); }
  static typename Vec::Reg multiply_add(typename Vec::Reg acc, Operand a, Operand b) {
    return Vec::dot_pairs(acc, a, b);
  }
};

// The row accessors depend on no vector trait, so they live in an unnamed
// namespace: each ISA's file gets its own copy, compiled for its own target.
namespace {

// R operand rows a fixed stride apart, elements contiguous (consecutive pixels of one
// input row, their channels the reduction).
template <typename In>
struct StridedRows {
  const In* first;
  int64_t stride;
  const In* at(int r, int64_t k) const { return first + r * stride + k; }
};

// R operand rows, one pointer each (pixels of which some read a row of zeros).
template <typename In, int R>
struct PointerRows {
  const In* const (&rows)[R];
  const In* at(int r, int64_t k) const { return rows[r] + k; }
};

// R operand rows that are adjacent elements, the reduction a fixed step apart (R channels
// of a run of pixels, the pixels the reduction: the weight gradient).
template <typename In>
struct ChannelRows {
  const In* first;
  int64_t step;
  const In* at(int r, int64_t k) const { return first + k * step + r; }
  static constexpr bool kStrided = true;
};

} // namespace

template <typename Vec, int R>
struct RegisterBlock {
  using Reg = typename Vec::Reg;
  static constexpr int kLanes = Vec::kLanes;
  static constexpr int kColumns = 2 * kLanes;

  Reg acc0[R];
  Reg acc1[R];

  RegisterBlock() {
    for (int r = 0; r < R; ++r) {
      acc0[r] = Vec::zero();
      acc1[r] = Vec::zero();
    }
  }

  // Bytes of panel one step of the reduction reads.
  template <typename Steps>
  static constexpr int64_t kStepBytes = Steps::kWidth * kColumns * static_cast<int64_t>(sizeof(typename Steps::In));

  // acc[r][j] += sum_{k < steps * kWidth} rows.at(r, k) * b[(k / kWidth) * b_step + j * kWidth + k % kWidth]:
  // `rows` are R rows of operands (StridedRows, PointerRows, ChannelRows), `b` a panel of
  // [steps][kColumns][kWidth] operands, one step b_step apart (packed: kWidth * kColumns).
  template <typename Steps, typename Rows>
  void accumulate(const Rows& rows, const typename Steps::In* b, int64_t b_step, int64_t steps) {
    constexpr int kWidth = Steps::kWidth;
    // The panel (b) streams from L2 (a 3x3 layer's is 147 KB per 128 input channels): fetched
    // this many steps ahead, the broadcasts no longer wait for it (layer3.0's 3x3/2 1.15 -> 1.04x
    // oneDNN's time on an Intel Xeon; 8 and 32 steps did as well).
    constexpr int64_t kPrefetchSteps = 16;
    for (int64_t k = 0; k < steps; ++k) {
      const char* ahead = reinterpret_cast<const char*>(b + (k + kPrefetchSteps) * b_step);
      for (int64_t line = 0; line < kStepBytes<Steps>; line += 64) {
        __builtin_prefetch(ahead + line);
      }
      if constexpr (requires { Rows::kStrided; }) {
        __builtin_prefetch(rows.at(0, (k + kPrefetchSteps) * kWidth));
        __builtin_prefetch(rows.at(R - 1, (k + kPrefetchSteps) * kWidth));
      }
      const auto b0 = Steps::load(b + k * b_step);
      const auto b1 = Steps::load(b + k * b_step + kWidth * kLanes);
      for (int r = 0; r < R; ++r) {
        const auto av = Steps::broadcast(rows.at(r, k * kWidth));
        acc0[r] = Steps::multiply_add(acc0[r], av, b0);
        acc1[r] = Steps::multiply_add(acc1[r], av, b1);
      }
    }
  }
  // dst[r * dst_row_stride + j] += acc[r][j] for all kColumns columns.
  void add_to(float* dst, int64_t dst_row_stride) const {
    for (int r = 0; r < R; ++r) {
      float* row = dst + r * dst_row_stride;
      Vec::store(row, Vec::add(Vec::load(row), acc0[r]));
      Vec::store(row + kLanes, Vec::add(Vec::load(row + kLanes), acc1[r]));
    }
  }

  // dst[r * dst_row_stride + j * dst_column_stride] = acc[r][j] (+ bias[j])
  // for j < columns; bias may be null.
  void store(float* dst, int64_t dst_row_stride, int64_t dst_column_stride, const float* bias, int columns) const {
    if (bias == nullptr && columns == kColumns && dst_column_stride == 1) {
      for (int r = 0; r < R; ++r) {
        Vec::store(dst + r * dst_row_stride, acc0[r]);
        Vec::store(dst + r * dst_row_stride + kLanes, acc1[r]);
      }
      return;
    }
    const int valid0 = std::min(columns, kLanes);
    const int valid1 = std::max(0, columns - kLanes);
    Reg b0 = Vec::zero(), b1 = Vec::zero();
    if (bias != nullptr) {
      b0 = Vec::load_partial(bias, valid0);
      b1 = Vec::load_partial(bias + kLanes, valid1);
    }
    for (int r = 0; r < R; ++r) {
      store_lanes<Vec>(dst + r * dst_row_stride, dst_column_stride, Vec::add(acc0[r], b0), valid0);
      store_lanes<Vec>(dst + r * dst_row_stride + kLanes * dst_column_stride, dst_column_stride,
                       Vec::add(acc1[r], b1), valid1);
    }
  }
};

} // namespace miniplaces_ext::cpu

// The three passes of a convolution as implicit GEMMs, C[z][m, n] = sum_k A(m, k) * B(k, n),
// each read straight from the tensors in whatever layout they have (NCHW, NHWC or any
// other strides: no copies, no im2col buffer):
//   forward      out[m = (n,oh,ow), co]  = sum_{k = (c,i,j)}    x(n, c, oh*s-p+i*d, ...) * W[co, k]
//   grad_input   dx[m = (n,ih,iw), c]    = sum_{k = (co,i,j)}   dy(n, co, oh, ow) * W[co, c, i, j],
//                                          (oh, ow) the output pixel whose tap (i, j) reads (ih, iw)
//   grad_weight  dW[co, col = (c,i,j)]   = sum_{k = (n,oh,ow)}  dy(n, co, oh, ow) * x(n, c, ...)
//                (columns numbered (i,j,c) on NHWC inputs, so a warp's lanes read adjacent channels)
// z enumerates groups (and, for grad_weight, split-K chunks of the reduction).
// The forward pass on NHWC operands can also walk its reduction as k = (i, j, c),
// channels innermost (kChannelsInnermost): then kPerThread consecutive k are
// consecutive channels of one tap, adjacent in memory in both operands, all
// inside the input or all in its padding (kContiguousK: one vector load each).
//
// grad_input of a strided convolution is run as sub-convolutions, one per
// StridePhase pair: the input pixels whose (ih + pad) leave the same remainder
// modulo the stride are read only by the taps with i * dilation of that
// remainder, so each sub-problem visits only the taps that contribute (a
// quarter of them at stride 2) and finds their output pixel without a
// division. Phases no tap reaches are not launched (their pixels are zero).
//
// A problem tells implicit_gemm.cuh how to read its operands. Index maths that
// depends only on a thread's row of A or column of B is done once per thread
// (a_row, b_col); the reduction position is a MixedRadixCursor advanced by
// k_step without divisions; a(row, k) and b(k, col) are the addresses the main loop loads
// from, nullptr for a zero: outside the tensor (zero padding) or outside the problem
// (row/column tails).
#pragma once

#include "../conv.h"
#include "mixed_radix_cursor.cuh"
#include "gemm_tile.cuh"

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace miniplaces_ext::cuda {

// One dimension of one grad_input sub-convolution: the input positions
// in_first + u * stride (u < in_count), whose (position + pad) % stride == remainder,
// and the taps tap_first + t * tap_period (t < tap_count) that read them.
// Tap t of position u reads output position out_first(u) - t * out_step.
struct StridePhase {
  int64_t in_first, in_count;
  int64_t tap_first, tap_period, tap_count;
  int64_t out_step;

  static int64_t gcd(int64_t a, int64_t b) { return b == 0 ? a : gcd(b, a % b); }

  StridePhase(int64_t remainder, int64_t stride, int64_t pad, int64_t dilation, int64_t kernel, int64_t in_size) {
    in_first = ((remainder - pad) % stride + stride) % stride;
    in_count = in_first < in_size ? (in_size - in_first + stride - 1) / stride : 0;
    tap_period = stride / gcd(stride, dilation);
    tap_first = -1;
    for (int64_t i = 0; i < tap_period && tap_first < 0; ++i) {
      if ((i * dilation) % stride == remainder) tap_first = i;
    }
    tap_count = tap_first >= 0 && tap_first < kernel ? (kernel - tap_first + tap_period - 1) / tap_period : 0;
    if (tap_first < 0) tap_first = 0;
    out_step = tap_period * dilation / stride;
  }
  // The remainders (sorted) some tap i < kernel reaches: (i * dilation) % stride.
  static std::vector<int64_t> reached(int64_t stride, int64_t dilation, int64_t kernel) {
    std::vector<int64_t> remainders;
    for (int64_t i = 0; i < kernel; ++i) remainders.push_back((i * dilation) % stride);
    std::sort(remainders.begin(), remainders.end());
    remainders.erase(std::unique(remainders.begin(), remainders.end()), remainders.end());
    return remainders;
  }
  // Output position read by tap 0 at input position `in`: exact, as (in + pad - tap_first * dilation) % stride == 0.
  __host__ __device__ int64_t out_first(int64_t in, int64_t pad, int64_t dilation, int64_t stride) const {
    return (in + pad - tap_first * dilation) / stride;
  }
};

template <typename scalar_t, bool kChannelsInnermost = false>
struct ForwardProblem {
  using acc_t = at::opmath_type<scalar_t>;
  using input_t = scalar_t;
  static constexpr bool kContiguousK = kChannelsInnermost;
  static constexpr bool kALanesAlongK = false;
  const scalar_t* x;
  const scalar_t* weight;
  const scalar_t* bias;  // or nullptr
  scalar_t* out;
  Strides4 xs, ws, os;
  ConvGeometry g;
  MixedRadixStep k_step;  // over k = (c, i, j): radices kernel_h, kernel_w; channels innermost:
                          // k = (i, j, c), radices kernel_w, in_channels_per_group
  // The inference epilogue (conv2d_fused): + residual (or nullptr), then ReLU, on the accumulator,
  // before the one rounding to scalar_t.
  const scalar_t* residual = nullptr;
  Strides4 rs{};
  bool relu = false;

  struct Row {  // output pixel m = (n, oh, ow)
    const scalar_t* x;  // image n, first channel of the group
    int64_t top, left;  // input row and column of tap (0, 0)
    bool valid;
  };
  struct Col {  // output channel co of the group
    const scalar_t* w;
    bool valid;
  };

  __host__ __device__ int64_t rows() const { return g.batch * g.out_pixels(); }
  __host__ __device__ int64_t cols() const { return g.out_channels_per_group(); }
  __host__ __device__ KRange k_range(int64_t) const { return KRange{0, g.patch_size()}; }
  __host__ __device__ Row a_row(int64_t z, int64_t m) const {
    if (m >= rows()) return Row{nullptr, 0, 0, false};
    const int64_t ow = m % g.out_w, oh = (m / g.out_w) % g.out_h, n = m / g.out_pixels();
    return Row{x + xs.at(n, z * g.in_channels_per_group(), 0, 0), oh * g.stride_h - g.pad_h,
               ow * g.stride_w - g.pad_w, true};
  }
  __host__ __device__ Col b_col(int64_t z, int64_t co) const {
    if (co >= cols()) return Col{nullptr, false};
    return Col{weight + ws.at(z * g.out_channels_per_group() + co, 0, 0, 0), true};
  }
  // The (channel, kernel row, kernel column) of reduction position k.
  __host__ __device__ static int64_t channel(const MixedRadixCursor& k) { return kChannelsInnermost ? k.low : k.high; }
  __host__ __device__ static int64_t tap_row(const MixedRadixCursor& k) { return kChannelsInnermost ? k.high : k.mid; }
  __host__ __device__ static int64_t tap_col(const MixedRadixCursor& k) { return kChannelsInnermost ? k.mid : k.low; }
  __host__ __device__ const scalar_t* a(const Row& r, const MixedRadixCursor& k) const {
    const int64_t ih = r.top + tap_row(k) * g.dilation_h, iw = r.left + tap_col(k) * g.dilation_w;
    if (!r.valid || ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) return nullptr;
    return r.x + xs.at(0, channel(k), ih, iw);
  }
  __host__ __device__ const scalar_t* b(const MixedRadixCursor& k, const Col& c) const {
    return c.valid ? c.w + ws.at(0, channel(k), tap_row(k), tap_col(k)) : nullptr;
  }
  __host__ __device__ void store(int64_t z, int64_t m, int64_t co, acc_t v) const {
    const int64_t ow = m % g.out_w, oh = (m / g.out_w) % g.out_h, n = m / g.out_pixels();
    const int64_t oc = z * g.out_channels_per_group() + co;
    if (bias != nullptr) v += static_cast<acc_t>(bias[oc]);
    if (residual != nullptr) v += static_cast<acc_t>(residual[rs.at(n, oc, oh, ow)]);
    if (relu && v < acc_t(0)) v = acc_t(0);  // a NaN stays NaN, as torch's ReLU keeps it
    out[os.at(n, oc, oh, ow)] = static_cast<scalar_t>(v);
  }
};

// grad_input for the input pixels of one (row phase, column phase): see the top of this file.
template <typename scalar_t>
struct GradInputProblem {
  using acc_t = at::opmath_type<scalar_t>;
  using input_t = scalar_t;
  static constexpr bool kContiguousK = false;
  static constexpr bool kALanesAlongK = false;
  const scalar_t* dy;
  const scalar_t* weight;
  scalar_t* dx;
  Strides4 dys, ws, dxs;
  ConvGeometry g;
  StridePhase ph, pw;
  MixedRadixStep k_step;  // over k = (co, t, u): radices ph.tap_count, pw.tap_count

  struct Row {  // input pixel m = (n, ih, iw) of the phase
    const scalar_t* dy;  // image n, first output channel of the group
    int64_t oh, ow;      // output pixel read by the phase's first tap
    bool valid;
  };
  struct Col {  // input channel c of the group
    const scalar_t* w;  // W[group's first output channel, c, first tap]
    bool valid;
  };

  __host__ __device__ int64_t rows() const { return g.batch * ph.in_count * pw.in_count; }
  __host__ __device__ int64_t cols() const { return g.in_channels_per_group(); }
  __host__ __device__ KRange k_range(int64_t) const {
    return KRange{0, g.out_channels_per_group() * ph.tap_count * pw.tap_count};
  }
  __host__ __device__ void pixel(int64_t m, int64_t& n, int64_t& ih, int64_t& iw) const {
    iw = pw.in_first + (m % pw.in_count) * g.stride_w;
    ih = ph.in_first + ((m / pw.in_count) % ph.in_count) * g.stride_h;
    n = m / (pw.in_count * ph.in_count);
  }
  __host__ __device__ Row a_row(int64_t z, int64_t m) const {
    if (m >= rows()) return Row{nullptr, 0, 0, false};
    int64_t n, ih, iw;
    pixel(m, n, ih, iw);
    return Row{dy + dys.at(n, z * g.out_channels_per_group(), 0, 0), ph.out_first(ih, g.pad_h, g.dilation_h, g.stride_h),
               pw.out_first(iw, g.pad_w, g.dilation_w, g.stride_w), true};
  }
  __host__ __device__ Col b_col(int64_t z, int64_t c) const {
    if (c >= cols()) return Col{nullptr, false};
    return Col{weight + ws.at(z * g.out_channels_per_group(), c, ph.tap_first, pw.tap_first), true};
  }
  __host__ __device__ const scalar_t* a(const Row& r, const MixedRadixCursor& k) const {
    const int64_t oh = r.oh - k.mid * ph.out_step, ow = r.ow - k.low * pw.out_step;
    if (!r.valid || oh < 0 || oh >= g.out_h || ow < 0 || ow >= g.out_w) return nullptr;
    return r.dy + dys.at(0, k.high, oh, ow);
  }
  __host__ __device__ const scalar_t* b(const MixedRadixCursor& k, const Col& c) const {
    return c.valid ? c.w + ws.at(k.high, 0, k.mid * ph.tap_period, k.low * pw.tap_period) : nullptr;
  }
  __host__ __device__ void store(int64_t z, int64_t m, int64_t c, acc_t v) const {
    int64_t n, ih, iw;
    pixel(m, n, ih, iw);
    dx[dxs.at(n, z * g.in_channels_per_group() + c, ih, iw)] = static_cast<scalar_t>(v);
  }
};

// kPixelsInnermost: grad_output's pixels are adjacent in memory (NCHW), so a warp reads A
// (dy) coalesced only with its lanes along the reduction (ThreadOperands: kALanesAlongK).
template <typename scalar_t, bool kPixelsInnermost = false>
struct GradWeightProblem {
  using acc_t = at::opmath_type<scalar_t>;
  using input_t = scalar_t;
  static constexpr bool kContiguousK = false;
  static constexpr bool kALanesAlongK = kPixelsInnermost;
  const scalar_t* dy;
  const scalar_t* x;
  acc_t* workspace;  // [splits][groups][coutg][cg*kh*kw]
  Strides4 dys, xs;
  ConvGeometry g;
  MixedRadixStep k_step;  // over k = (n, oh, ow): radices out_h, out_w
  int64_t splits, chunk;  // z = group * splits + split; split s reduces pixels [s*chunk, (s+1)*chunk)
  // Columns numbered (i, j, c), channels innermost, instead of (c, i, j): on an NHWC input the
  // 32 lanes of a warp, which take consecutive columns, then read adjacent channels (coalesced).
  bool channels_innermost_cols;
  MixedRadixStep tile_step;  // kTileK over (n, oh, ow): A's cursor with kALanesAlongK

  struct Row {  // output channel co of the group
    const scalar_t* dy;  // dy[0, group's first channel + co]
    bool valid;
  };
  struct Col {  // weight element (c, i, j) of the group
    const scalar_t* x;   // x[0, group's first channel + c]
    int64_t top, left;   // i*dh - ph, j*dw - pw: output pixel (oh, ow) reads input (oh*sh + top, ow*sw + left)
    bool valid;
  };

  __host__ __device__ int64_t rows() const { return g.out_channels_per_group(); }
  __host__ __device__ int64_t cols() const { return g.patch_size(); }
  __host__ __device__ KRange k_range(int64_t z) const {
    const int64_t total = g.batch * g.out_pixels();
    const int64_t begin = (z % splits) * chunk;
    return KRange{begin, begin + chunk < total ? begin + chunk : total};
  }
  __host__ __device__ Row a_row(int64_t z, int64_t co) const {
    if (co >= rows()) return Row{nullptr, false};
    return Row{dy + dys.at(0, (z / splits) * g.out_channels_per_group() + co, 0, 0), true};
  }
  // Weight element (c, i, j) of column col.
  __host__ __device__ void column(int64_t col, int64_t& c, int64_t& i, int64_t& j) const {
    const int64_t cg = g.in_channels_per_group();
    if (channels_innermost_cols) {
      c = col % cg, j = (col / cg) % g.kernel_w, i = col / (cg * g.kernel_w);
    } else {
      c = col / g.taps(), i = (col / g.kernel_w) % g.kernel_h, j = col % g.kernel_w;
    }
  }
  __host__ __device__ Col b_col(int64_t z, int64_t col) const {
    if (col >= cols()) return Col{nullptr, 0, 0, false};
    int64_t c, i, j;
    column(col, c, i, j);
    return Col{x + xs.at(0, (z / splits) * g.in_channels_per_group() + c, 0, 0), i * g.dilation_h - g.pad_h,
               j * g.dilation_w - g.pad_w, true};
  }
  __host__ __device__ const scalar_t* a(const Row& r, const MixedRadixCursor& k) const {
    return r.valid ? r.dy + dys.at(k.high, 0, k.mid, k.low) : nullptr;
  }
  __host__ __device__ const scalar_t* b(const MixedRadixCursor& k, const Col& c) const {
    const int64_t ih = k.mid * g.stride_h + c.top, iw = k.low * g.stride_w + c.left;
    if (!c.valid || ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) return nullptr;
    return c.x + xs.at(k.high, 0, ih, iw);
  }
  __host__ __device__ void store(int64_t z, int64_t co, int64_t col, acc_t v) const {
    const int64_t grp = z / splits, s = z % splits;
    int64_t c, i, j;
    column(col, c, i, j);  // the workspace is in the weight's (c, i, j) order either way
    const int64_t weight_index = (c * g.kernel_h + i) * g.kernel_w + j;
    workspace[((s * g.groups + grp) * g.out_channels_per_group() + co) * g.patch_size() + weight_index] = v;
  }
};

} // namespace miniplaces_ext::cuda

// The three passes of a convolution as implicit GEMMs, C[z][m, n] = sum_k A(m, k) * B(k, n),
// each read straight from the tensors (NCHW, no im2col buffer):
//   forward      out[m = (n,oh,ow), co]  = sum_{k = (c,i,j)}    x(n, c, oh*s-p+i*d, ...) * W[co, k]
//   grad_input   dx[m = (n,ih,iw), c]    = sum_{k = (co,i,j)}   dy(n, co, oh, ow) * W[co, c, i, j],
//                                          (oh, ow) the output pixel whose tap (i, j) reads (ih, iw)
//   grad_weight  dW[co, col = (c,i,j)]   = sum_{k = (n,oh,ow)}  dy(n, co, oh, ow) * x(n, c, ...)
// z enumerates groups (and, for grad_weight, split-K chunks of the reduction).
//
// A problem tells implicit_gemm.cuh how to read its operands. Index maths that
// depends only on a thread's row of A or column of B is done once per thread
// (a_row, b_col); the reduction position is a MixedRadixCursor advanced by
// k_step without divisions; a(row, k) and b(k, col) are the loads of the main loop, and give 0
// outside the tensor (zero padding) or outside the problem (row/column tails).
#pragma once

#include "../conv.h"
#include "mixed_radix_cursor.cuh"

#include <ATen/OpMathType.h>

#include <cstdint>

namespace miniplaces_ext::cuda {

template <typename scalar_t>
struct ForwardProblem {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  const scalar_t* weight;
  const scalar_t* bias;  // or nullptr
  scalar_t* out;
  ConvGeometry g;
  MixedRadixStep k_step;  // over k = (c, i, j): radices kernel_h, kernel_w

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
  __host__ __device__ void k_range(int64_t, int64_t& k0, int64_t& k1) const { k0 = 0; k1 = g.patch_size(); }
  __host__ __device__ Row a_row(int64_t z, int64_t m) const {
    if (m >= rows()) return Row{nullptr, 0, 0, false};
    const int64_t ow = m % g.out_w, oh = (m / g.out_w) % g.out_h, n = m / g.out_pixels();
    return Row{x + (n * g.in_channels + z * g.in_channels_per_group()) * g.in_pixels(), oh * g.stride_h - g.pad_h,
               ow * g.stride_w - g.pad_w, true};
  }
  __host__ __device__ Col b_col(int64_t z, int64_t co) const {
    if (co >= cols()) return Col{nullptr, false};
    return Col{weight + (z * g.out_channels_per_group() + co) * g.patch_size(), true};
  }
  __host__ __device__ acc_t a(const Row& r, const MixedRadixCursor& k) const {
    const int64_t ih = r.top + k.mid * g.dilation_h, iw = r.left + k.low * g.dilation_w;
    if (!r.valid || ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) return acc_t(0);
    return static_cast<acc_t>(r.x[(k.high * g.in_h + ih) * g.in_w + iw]);
  }
  __host__ __device__ acc_t b(const MixedRadixCursor& k, const Col& c) const {
    return c.valid ? static_cast<acc_t>(c.w[k.linear]) : acc_t(0);
  }
  __host__ __device__ void store(int64_t z, int64_t m, int64_t co, acc_t v) const {
    const int64_t p = m % g.out_pixels(), n = m / g.out_pixels(), oc = z * g.out_channels_per_group() + co;
    if (bias != nullptr) v += static_cast<acc_t>(bias[oc]);
    out[(n * g.out_channels + oc) * g.out_pixels() + p] = static_cast<scalar_t>(v);
  }
};

template <typename scalar_t>
struct GradInputProblem {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* dy;
  const scalar_t* weight;
  scalar_t* dx;
  ConvGeometry g;
  MixedRadixStep k_step;  // over k = (co, i, j): radices kernel_h, kernel_w

  struct Row {  // input pixel m = (n, ih, iw)
    const scalar_t* dy;  // image n, first output channel of the group
    int64_t th, tw;      // ih + pad_h, iw + pad_w: tap (i, j) reads output pixel ((th - i*dh)/sh, (tw - j*dw)/sw)
    bool valid;
  };
  struct Col {  // input channel c of the group
    const scalar_t* w;  // W[group's first output channel, c, 0, 0]
    bool valid;
  };

  __host__ __device__ int64_t rows() const { return g.batch * g.in_pixels(); }
  __host__ __device__ int64_t cols() const { return g.in_channels_per_group(); }
  __host__ __device__ void k_range(int64_t, int64_t& k0, int64_t& k1) const {
    k0 = 0;
    k1 = g.out_channels_per_group() * g.taps();
  }
  __host__ __device__ Row a_row(int64_t z, int64_t m) const {
    if (m >= rows()) return Row{nullptr, 0, 0, false};
    const int64_t iw = m % g.in_w, ih = (m / g.in_w) % g.in_h, n = m / g.in_pixels();
    return Row{dy + (n * g.out_channels + z * g.out_channels_per_group()) * g.out_pixels(), ih + g.pad_h,
               iw + g.pad_w, true};
  }
  __host__ __device__ Col b_col(int64_t z, int64_t c) const {
    if (c >= cols()) return Col{nullptr, false};
    return Col{weight + (z * g.out_channels_per_group() * g.in_channels_per_group() + c) * g.taps(), true};
  }
  __host__ __device__ acc_t a(const Row& r, const MixedRadixCursor& k) const {
    const int64_t th = r.th - k.mid * g.dilation_h, tw = r.tw - k.low * g.dilation_w;
    if (!r.valid || th < 0 || tw < 0 || th % g.stride_h != 0 || tw % g.stride_w != 0) return acc_t(0);
    const int64_t oh = th / g.stride_h, ow = tw / g.stride_w;
    if (oh >= g.out_h || ow >= g.out_w) return acc_t(0);
    return static_cast<acc_t>(r.dy[(k.high * g.out_h + oh) * g.out_w + ow]);
  }
  __host__ __device__ acc_t b(const MixedRadixCursor& k, const Col& c) const {
    if (!c.valid) return acc_t(0);
    return static_cast<acc_t>(c.w[k.high * g.patch_size() + k.mid * g.kernel_w + k.low]);
  }
  __host__ __device__ void store(int64_t z, int64_t m, int64_t c, acc_t v) const {
    const int64_t p = m % g.in_pixels(), n = m / g.in_pixels();
    dx[(n * g.in_channels + z * g.in_channels_per_group() + c) * g.in_pixels() + p] = static_cast<scalar_t>(v);
  }
};

template <typename scalar_t>
struct GradWeightProblem {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* dy;
  const scalar_t* x;
  acc_t* workspace;  // [splits][groups][coutg][cg*kh*kw]
  ConvGeometry g;
  MixedRadixStep k_step;  // over k = (n, oh, ow): radices out_h, out_w
  int64_t splits, chunk;  // z = group * splits + split; split s reduces pixels [s*chunk, (s+1)*chunk)

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
  __host__ __device__ void k_range(int64_t z, int64_t& k0, int64_t& k1) const {
    const int64_t total = g.batch * g.out_pixels();
    k0 = (z % splits) * chunk;
    k1 = k0 + chunk < total ? k0 + chunk : total;
  }
  __host__ __device__ Row a_row(int64_t z, int64_t co) const {
    if (co >= rows()) return Row{nullptr, false};
    return Row{dy + ((z / splits) * g.out_channels_per_group() + co) * g.out_pixels(), true};
  }
  __host__ __device__ Col b_col(int64_t z, int64_t col) const {
    if (col >= cols()) return Col{nullptr, 0, 0, false};
    const int64_t c = col / g.taps(), i = (col / g.kernel_w) % g.kernel_h, j = col % g.kernel_w;
    return Col{x + ((z / splits) * g.in_channels_per_group() + c) * g.in_pixels(), i * g.dilation_h - g.pad_h,
               j * g.dilation_w - g.pad_w, true};
  }
  __host__ __device__ acc_t a(const Row& r, const MixedRadixCursor& k) const {
    if (!r.valid) return acc_t(0);
    return static_cast<acc_t>(r.dy[k.high * g.out_channels * g.out_pixels() + k.mid * g.out_w + k.low]);
  }
  __host__ __device__ acc_t b(const MixedRadixCursor& k, const Col& c) const {
    const int64_t ih = k.mid * g.stride_h + c.top, iw = k.low * g.stride_w + c.left;
    if (!c.valid || ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) return acc_t(0);
    return static_cast<acc_t>(c.x[k.high * g.in_channels * g.in_pixels() + ih * g.in_w + iw]);
  }
  __host__ __device__ void store(int64_t z, int64_t co, int64_t col, acc_t v) const {
    const int64_t grp = z / splits, s = z % splits;
    workspace[((s * g.groups + grp) * g.out_channels_per_group() + co) * g.patch_size() + col] = v;
  }
};

} // namespace miniplaces_ext::cuda

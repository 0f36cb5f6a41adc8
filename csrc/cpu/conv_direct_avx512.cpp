// Direct float32 convolution in NHWC with AVX-512 register blocking.
//
// out[n, oh, ow, co] = bias[co] + sum_{kh, kw, c} x[n, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw, c] * W[co, c, kh, kw]
//
// Zero padding is never materialised: taps that fall outside the input are
// skipped. Rows are checked per kernel row; columns are checked only for the
// few output pixels near the left/right border, which run one at a time, so
// the blocked interior loop has no bounds checks. The weight is packed per group into blocks of 32 output channels laid out
// [block][kh][kw][c][32]. One micro-kernel call computes R (<= 12) consecutive
// output pixels x 32 output channels in 24 zmm accumulators: per input
// channel it loads two weight vectors and broadcasts one input value per
// pixel, i.e. 2R FMAs per R + 2 loads. Work is split over (group, block, n,
// oh) rows; each output element is written by one thread, so results do not
// depend on the thread count.
#include "conv_direct.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace miniplaces_ext::cpu {
namespace {

constexpr int64_t kBlock = 32;      // output channels per micro-kernel (2 zmm)
constexpr int kMaxPixels = 12;      // output pixels per micro-kernel (24 accumulators)

struct DirectArgs {
  const float* x;       // input [N, H, W, C]
  const float* w;       // packed weight [groups][blocks][kh][kw][Cg][32]
  const float* bias;    // [Cout] or nullptr
  float* out;           // [N, Ho, Wo, Cout]
  int64_t h, w_, c, cg, cout, coutg, blocks;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw, ho, wo;
};

#pragma GCC push_options
#pragma GCC target("avx512f,fma")

// R output pixels starting at ow0. With kCheckColumns (R == 1 only) taps
// left or right of the input are skipped; otherwise all columns must be inside.
template <int R, bool kCheckColumns>
void micro_kernel(const DirectArgs& a, int64_t grp, int64_t blk, int64_t n, int64_t oh, int64_t ow0) {
  static_assert(R == 1 || !kCheckColumns, "column checks are for single pixels");
  __m512 acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) {
    acc0[r] = _mm512_setzero_ps();
    acc1[r] = _mm512_setzero_ps();
  }
  const int64_t pixel_step = a.sw * a.c;
  const float* wblock = a.w + (grp * a.blocks + blk) * a.kh * a.kw * a.cg * kBlock;
  for (int64_t i = 0; i < a.kh; ++i) {
    const int64_t ih = oh * a.sh - a.ph + i * a.dh;
    if (ih < 0 || ih >= a.h) {
      continue;
    }
    for (int64_t j = 0; j < a.kw; ++j) {
      const int64_t iw = ow0 * a.sw - a.pw + j * a.dw;
      if (kCheckColumns && (iw < 0 || iw >= a.w_)) {
        continue;
      }
      const float* xrow = a.x + ((n * a.h + ih) * a.w_ + iw) * a.c + grp * a.cg;
      const float* wtap = wblock + (i * a.kw + j) * a.cg * kBlock;
      for (int64_t c = 0; c < a.cg; ++c) {
        const __m512 w0 = _mm512_loadu_ps(wtap + c * kBlock);
        const __m512 w1 = _mm512_loadu_ps(wtap + c * kBlock + 16);
        for (int r = 0; r < R; ++r) {
          const __m512 xv = _mm512_set1_ps(xrow[r * pixel_step + c]);
          acc0[r] = _mm512_fmadd_ps(xv, w0, acc0[r]);
          acc1[r] = _mm512_fmadd_ps(xv, w1, acc1[r]);
        }
      }
    }
  }
  const int64_t co0 = blk * kBlock;  // first output channel of the block within the group
  const int64_t valid = std::min<int64_t>(kBlock, a.coutg - co0);
  const __mmask16 m0 = static_cast<__mmask16>(valid >= 16 ? 0xFFFF : (1u << valid) - 1);
  const __mmask16 m1 = static_cast<__mmask16>(valid >= 32 ? 0xFFFF : valid <= 16 ? 0 : (1u << (valid - 16)) - 1);
  const int64_t col = grp * a.coutg + co0;
  __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
  if (a.bias != nullptr) {
    b0 = _mm512_maskz_loadu_ps(m0, a.bias + col);
    b1 = _mm512_maskz_loadu_ps(m1, a.bias + col + 16);
  }
  float* dst = a.out + ((n * a.ho + oh) * a.wo + ow0) * a.cout + col;
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(dst + r * a.cout, m0, _mm512_add_ps(acc0[r], b0));
    _mm512_mask_storeu_ps(dst + r * a.cout + 16, m1, _mm512_add_ps(acc1[r], b1));
  }
}

using PixelKernel = void (*)(const DirectArgs&, int64_t, int64_t, int64_t, int64_t, int64_t);

// Interior micro-kernels for every pixel count, so the tail of a run needs no masking.
constexpr PixelKernel kInterior[kMaxPixels + 1] = {
    nullptr,
    micro_kernel<1, false>, micro_kernel<2, false>, micro_kernel<3, false>,  micro_kernel<4, false>,
    micro_kernel<5, false>, micro_kernel<6, false>, micro_kernel<7, false>,  micro_kernel<8, false>,
    micro_kernel<9, false>, micro_kernel<10, false>, micro_kernel<11, false>, micro_kernel<12, false>};

void direct_rows(const DirectArgs& a, int64_t groups, int64_t batch) {
  // Output columns [lo, hi) read only input columns inside [0, W) for every tap.
  const int64_t lo = std::min(a.wo, (a.pw + a.sw - 1) / a.sw);
  const int64_t last_ok = a.w_ - 1 - (a.kw - 1) * a.dw + a.pw;  // ow * sw must not exceed this
  const int64_t hi = std::max(lo, std::min(a.wo, last_ok < 0 ? int64_t{0} : last_ok / a.sw + 1));
  const int64_t rows = groups * a.blocks * batch * a.ho;
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t oh = t % a.ho;
      const int64_t n = (t / a.ho) % batch;
      const int64_t blk = (t / (a.ho * batch)) % a.blocks;
      const int64_t grp = t / (a.ho * batch * a.blocks);
      for (int64_t ow = 0; ow < lo; ++ow) {
        micro_kernel<1, true>(a, grp, blk, n, oh, ow);
      }
      for (int64_t ow0 = lo; ow0 < hi; ow0 += kMaxPixels) {
        kInterior[std::min<int64_t>(kMaxPixels, hi - ow0)](a, grp, blk, n, oh, ow0);
      }
      for (int64_t ow = hi; ow < a.wo; ++ow) {
        micro_kernel<1, true>(a, grp, blk, n, oh, ow);
      }
    }
  });
}

#pragma GCC pop_options

// [Cout, Cg, kh, kw] -> [groups][blocks][kh][kw][Cg][32], zero-filled past Coutg.
at::Tensor pack_weight(const at::Tensor& weight, const ConvGeometry& g, int64_t blocks) {
  const int64_t coutg = g.out_channels_per_group();
  at::Tensor padded = at::zeros({g.groups, blocks * kBlock, g.in_channels_per_group(), g.kernel_h, g.kernel_w},
                                weight.options());
  padded.narrow(1, 0, coutg).copy_(weight.view({g.groups, coutg, g.in_channels_per_group(), g.kernel_h, g.kernel_w}));
  // [g, blocks, 32, Cg, kh, kw] -> [g, blocks, kh, kw, Cg, 32]
  return padded.view({g.groups, blocks, kBlock, g.in_channels_per_group(), g.kernel_h, g.kernel_w})
      .permute({0, 1, 4, 5, 3, 2})
      .contiguous();
}

} // namespace

bool direct_conv_supported(const ConvGeometry& g, at::ScalarType dtype) {
  static const bool has_avx512 = __builtin_cpu_supports("avx512f");
  const char* algo = std::getenv("MINIPLACES_CPU_ALGO");
  if (algo != nullptr && std::strcmp(algo, "gemm") == 0) {
    return false;
  }
  return has_avx512 && dtype == at::kFloat && g.out_channels_per_group() >= 16;
}

at::Tensor direct_conv2d_nhwc(const at::Tensor& x_nhwc, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                              const ConvGeometry& g) {
  TORCH_CHECK(x_nhwc.is_contiguous() && x_nhwc.scalar_type() == at::kFloat, "direct conv: expected contiguous NHWC float32");
  const int64_t blocks = (g.out_channels_per_group() + kBlock - 1) / kBlock;
  const at::Tensor w = pack_weight(weight.contiguous(), g, blocks);
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty({g.batch, g.out_h, g.out_w, g.out_channels}, x_nhwc.options());
  if (g.batch == 0) {
    return out;
  }
  DirectArgs a{x_nhwc.const_data_ptr<float>(), w.const_data_ptr<float>(),
               b.defined() ? b.const_data_ptr<float>() : nullptr, out.mutable_data_ptr<float>(), g.in_h, g.in_w,
               g.in_channels, g.in_channels_per_group(), g.out_channels, g.out_channels_per_group(), blocks,
               g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w,
               g.out_h, g.out_w};
  direct_rows(a, g.groups, g.batch);
  return out;
}

} // namespace miniplaces_ext::cpu

// CPU convolution kernels: im2col + GEMM in a channels-last (NHWC) layout.
//
// One im2col row holds the receptive field of one output pixel, ordered
// (kh, kw, c) so that each kernel tap copies a contiguous run of channels.
// With the weight viewed as [out_channels, kh*kw*c]:
//   forward      out[pixels, Cout]  = col[pixels, K] @ W^T[K, Cout] (+ bias)
//   grad_weight  dW[Cout, K]       += dY^T[Cout, pixels] @ col[pixels, K]
//   grad_input   dcol[pixels, K]    = dY[pixels, Cout] @ W[Cout, K], then
//                col2im gathers dcol back onto input pixels (no atomics, each
//                input pixel is written by exactly one thread: deterministic).
// The batch is folded into the pixel dimension, processed in chunks of whole
// images so the column buffer stays bounded. Pointwise (1x1, stride 1, no
// padding) convolutions skip im2col and multiply the input in place.
//
// Where cpu_dispatch.cpp chooses the direct (direct_conv_kernel.h) or Winograd
// (winograd_kernel.h) kernel, it computes the forward pass, and grad_input as
// forward convolutions of grad_output with the flipped, transposed weight: one
// for stride 1, one per phase of the input grid for larger strides
// (grad_input_by_kernels).
#include "cpu_dispatch.h"
#include "im2col.h"
#include "layout.h"
#include "packed_weights.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

namespace miniplaces_ext::cpu {
namespace {

// The im2col (or col2im) buffer of one chunk takes at most the column_bytes option (4 MiB
// unless set; tests lower it to run many chunks). Chunks small enough to stay in L2/L3 between
// the GEMM that writes them and the pass that reads them, and one buffer reused: AlexNet's
// 11x11/4 grad_input 67 -> 50 ms, the stem's 124 -> 88-97 ms, the forward GEMM path 0-30 %
// faster than with 64 MiB chunks (Zen 1, 2 threads, batch 32).
int64_t column_buffer_bytes() {
  return cpu_options().column_bytes;
}

int64_t images_per_chunk(const ConvGeometry& g, int64_t element_size) {
  const int64_t per_image = std::max<int64_t>(1, g.out_pixels() * g.patch_size() * element_size);
  return std::clamp<int64_t>(column_buffer_bytes() / per_image, 1, std::max<int64_t>(g.batch, 1));
}

// Output pixels per im2col chunk of the weight gradient, which sums over pixels
// and so can take any run of them (not only whole images), so that each chunk is
// multiplied while it is still in cache (measured: 10-20 % faster on ResNet-18's
// 3x3 layers than chunks of whole images).
int64_t weight_grad_rows(const ConvGeometry& g, int64_t element_size) {
  const int64_t per_row = std::max<int64_t>(1, g.patch_size() * element_size);
  return std::clamp<int64_t>(column_buffer_bytes() / per_row, 1, std::max<int64_t>(g.batch * g.out_pixels(), 1));
}

// The kernel taps that reach input position `in` along one dimension, with the output position
// each comes from: in + pad - tap * dilation = out * stride, 0 <= out < out_size.
struct TapReach {
  int64_t tap, out;
};

void taps_reaching(int64_t in, int64_t pad, int64_t kernel, int64_t dilation, int64_t stride, int64_t out_size,
                   std::vector<TapReach>& reach) {
  reach.clear();
  for (int64_t tap = 0; tap < kernel; ++tap) {
    const int64_t t = in + pad - tap * dilation;
    if (t >= 0 && t % stride == 0 && t / stride < out_size) {
      reach.push_back({tap, t / stride});
    }
  }
}

// The adjoint of im2col: for every input pixel of images [n0, n0 + count),
// sums the dcol entries of all output pixels whose receptive field covers it
// and writes the sum to channels [c0, c0 + Cg) of the channels-last dx. The
// (tap, output position) pairs reaching each input column are listed once and
// each row's once, so the pixel loop does no divisions (AlexNet's 11x11/4
// layer, 3 channels: a division per tap and pixel took 3/4 of its grad_input).
template <typename scalar_t>
void col2im(const scalar_t* dcol, scalar_t* dx, const ConvGeometry& g, int64_t n0, int64_t count, int64_t c0) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t cg = g.in_channels_per_group();
  const int64_t patch = g.patch_size();
  std::vector<int64_t> column_start(g.in_w + 1, 0);  // column iw's pairs: columns[column_start[iw] ..]
  std::vector<TapReach> columns, reach;
  for (int64_t iw = 0; iw < g.in_w; ++iw) {
    taps_reaching(iw, g.pad_w, g.kernel_w, g.dilation_w, g.stride_w, g.out_w, reach);
    columns.insert(columns.end(), reach.begin(), reach.end());
    column_start[iw + 1] = static_cast<int64_t>(columns.size());
  }
  at::parallel_for(0, count * g.in_h, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(cg);
    std::vector<TapReach> rows;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n_local = r / g.in_h;
      const int64_t ih = r % g.in_h;
      taps_reaching(ih, g.pad_h, g.kernel_h, g.dilation_h, g.stride_h, g.out_h, rows);
      for (int64_t iw = 0; iw < g.in_w; ++iw) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (const TapReach& row : rows) {
          for (int64_t k = column_start[iw]; k < column_start[iw + 1]; ++k) {
            const TapReach& column = columns[k];
            const scalar_t* src = dcol + ((n_local * g.out_h + row.out) * g.out_w + column.out) * patch +
                (row.tap * g.kernel_w + column.tap) * cg;
            for (int64_t c = 0; c < cg; ++c) {
              acc[c] += static_cast<acc_t>(src[c]);
            }
          }
        }
        scalar_t* dst = dx + (((n0 + n_local) * g.in_h + ih) * g.in_w + iw) * g.in_channels + c0;
        for (int64_t c = 0; c < cg; ++c) {
          dst[c] = static_cast<scalar_t>(acc[c]);
        }
      }
    }
  });
}

// out[c] = sum over rows of m[rows, cols] (the bias gradient), accumulated in
// the op-math type. Work is split over (row chunk, column block) so every
// thread has some even when there are few columns; chunk partial sums are then
// added in chunk order. The chunking is fixed, so results do not depend on the
// number of threads.
template <typename scalar_t>
void column_sums(const scalar_t* m, scalar_t* out, int64_t rows, int64_t cols) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kBlock = 16;
  constexpr int64_t kRowChunk = 2048;
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
  const int64_t chunks = std::max<int64_t>(1, (rows + kRowChunk - 1) / kRowChunk);
  std::vector<acc_t> partial(chunks * cols);
  at::parallel_for(0, chunks * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task / blocks, c0 = (task % blocks) * kBlock;
      const int64_t width = std::min(kBlock, cols - c0);
      acc_t acc[kBlock] = {};
      for (int64_t r = chunk * kRowChunk; r < std::min(rows, (chunk + 1) * kRowChunk); ++r) {
        const scalar_t* row = m + r * cols + c0;
        for (int64_t c = 0; c < width; ++c) {
          acc[c] += static_cast<acc_t>(row[c]);
        }
      }
      std::copy_n(acc, width, partial.begin() + chunk * cols + c0);
    }
  });
  at::parallel_for(0, cols, kBlock, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      acc_t sum = 0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        sum += partial[chunk * cols + c];
      }
      out[c] = static_cast<scalar_t>(sum);
    }
  });
}

// out[c] = sum over n, p of dy[n * image_stride + c * channel_stride + p] for p < P (the bias
// gradient of an NCHW grad_output, each (n, c) one contiguous run of P pixels), accumulated in
// the op-math type: eight interleaved partial sums per run, added up run by run in image order.
// Channels are split over threads, so results do not depend on their number.
template <typename scalar_t>
void plane_sums(const scalar_t* dy, int64_t image_stride, int64_t channel_stride, scalar_t* out, int64_t N,
                int64_t C, int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kLanes = 8;
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      acc_t total = 0;
      for (int64_t n = 0; n < N; ++n) {
        const scalar_t* run = dy + n * image_stride + c * channel_stride;
        acc_t lanes[kLanes] = {};
        int64_t p = 0;
        for (; p + kLanes <= P; p += kLanes) {
          for (int64_t k = 0; k < kLanes; ++k) {
            lanes[k] += static_cast<acc_t>(run[p + k]);
          }
        }
        for (; p < P; ++p) {
          lanes[p % kLanes] += static_cast<acc_t>(run[p]);
        }
        for (int64_t k = 0; k < kLanes; ++k) {
          total += lanes[k];
        }
      }
      out[c] = static_cast<scalar_t>(total);
    }
  });
}

// dw += a^T @ b for a [K, M], b [K, N] and dw [M, N], as fixed 64 x 256 tiles of dw over torch's
// threads, each tile one GEMM on one thread (inside a parallel region MKL runs single-threaded):
// the same products summed in the same order whatever the number of threads. MKL's own
// threading splits a long reduction by the thread count, which gave other grad_weight bits on 1
// than on 2 threads with MKL's AVX-512 sgemm on an Intel Xeon.
void add_transposed_product(at::Tensor& dw, const at::Tensor& a, const at::Tensor& b) {
  constexpr int64_t kTileRows = 64, kTileColumns = 256;
  const int64_t m = dw.size(0), n = dw.size(1);
  const int64_t row_tiles = (m + kTileRows - 1) / kTileRows, column_tiles = (n + kTileColumns - 1) / kTileColumns;
  at::parallel_for(0, row_tiles * column_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r0 = (task / column_tiles) * kTileRows, c0 = (task % column_tiles) * kTileColumns;
      const int64_t rows = std::min(kTileRows, m - r0), columns = std::min(kTileColumns, n - c0);
      at::Tensor tile = dw.narrow(0, r0, rows).narrow(1, c0, columns);
      const at::Tensor a_tile = a.narrow(1, r0, rows).t(), b_tile = b.narrow(1, c0, columns);
      if (dw.scalar_type() == b.scalar_type()) {
        tile.addmm_(a_tile, b_tile);
      } else {
        tile.add_(at::mm(a_tile, b_tile));
      }
    }
  });
}

// Produces the im2col matrix of a run of output pixels and one group, reusing
// one buffer of up to max_rows rows. A 1x1 convolution without padding needs no
// im2col: its matrix is the sampled pixels themselves, gathered once (a view
// when the stride is 1 and the input channels_last).
class ColumnSource {
 public:
  ColumnSource(const at::Tensor& input, const ConvGeometry& g, int64_t max_rows) : g_(g) {
    if (g.samples_pixels()) {
      x_pixels_ = nhwc_pixels(input, g.stride_h, g.stride_w).reshape({-1, g.in_channels});
    } else {
      x_pixels_ = nhwc_pixels(input).reshape({-1, g.in_channels});
      buffer_ = at::empty({max_rows, g.patch_size()}, input.options());
    }
  }

  // Columns of output pixels [row0, row0 + rows), group `group`.
  at::Tensor columns(int64_t row0, int64_t rows, int64_t group) {
    const int64_t c0 = group * g_.in_channels_per_group();
    if (g_.samples_pixels()) {
      return x_pixels_.narrow(0, row0, rows).narrow(1, c0, g_.in_channels_per_group());
    }
    at::Tensor col = buffer_.narrow(0, 0, rows);
    AT_DISPATCH_FLOATING_TYPES(col.scalar_type(), "miniplaces_im2col", [&] {
      im2col<scalar_t>(x_pixels_.const_data_ptr<scalar_t>(), col.mutable_data_ptr<scalar_t>(), g_, row0, rows, c0,
                       g_.patch_size());
    });
    return col;
  }

 private:
  at::Tensor x_pixels_;
  const ConvGeometry& g_;
  at::Tensor buffer_;
};

// The weight as [out_channels, kh*kw*Cg], rows ordered like the im2col rows.
at::Tensor weight_matrix(const at::Tensor& weight, const ConvGeometry& g) {
  return weight.permute({0, 2, 3, 1}).contiguous().view({g.out_channels, g.patch_size()});
}

void check_cpu(const at::Tensor& input) {
  TORCH_CHECK(input.device().is_cpu(), "the CPU conv kernel got a tensor on ", input.device());
}

// The taps of one dimension (kernel k, stride s, padding p, dilation d) that reach the input
// positions of phase u, i.e. a * s + u for a = 0, 1, ...: those with i * d = u + p (mod s),
// i = first, first + step, ... (count of them). Input position a * s + u gets from tap
// first + (count - 1 - t) * step the output position a - pad + t * dilation.
struct PhaseTaps {
  int64_t first, step, count;
  int64_t pad, dilation;  // of the stride-1 convolution over grad_output
  int64_t positions;      // input positions in the phase: ceil((size - u) / s)
};

PhaseTaps phase_taps(int64_t u, int64_t size, int64_t k, int64_t s, int64_t p, int64_t d) {
  PhaseTaps t{0, 1, 0, 0, 1, u < size ? (size - u + s - 1) / s : 0};
  for (int64_t i = 0; i < k; ++i) {
    if (((i * d - u - p) % s + s) % s == 0) {
      t.step = t.count == 1 ? i - t.first : t.step;
      t.first = t.count == 0 ? i : t.first;
      ++t.count;
    }
  }
  const int64_t last = t.first + (t.count - 1) * t.step;
  t.pad = (last * d - u - p) / s;  // exact: last * d = u + p (mod s)
  t.dilation = t.count > 1 ? t.step * d / s : 1;  // exact: step = s / gcd(s, d)
  return t;
}

// W'[g*Cg + c, o, i, j] = W[g*Coutg + o, c, kh-1-i, kw-1-j]: the weight of the convolution whose
// forward pass is this weight's grad_input.
at::Tensor transposed_weight(const at::Tensor& weight, int64_t groups) {
  const int64_t cout = weight.size(0), cg = weight.size(1), kh = weight.size(2), kw = weight.size(3);
  return weight.reshape({groups, cout / groups, cg, kh, kw})
      .transpose(1, 2)
      .flip({3, 4})
      .reshape({groups * cg, cout / groups, kh, kw});
}

// grad_input by the direct / Winograd kernels, or nullopt where they do not apply. With
// `bf16_tiles`, dy and weight are bfloat16 and every phase must run on the bfloat16 tile kernel
// (else nullopt): dx is bfloat16, each element rounded once from its phase's float32 sums. The input
// grid splits into stride_h x stride_w phases (u, v), positions (a * sh + u, b * sw + v); each
// phase of grad_input is a stride-1 convolution of grad_output with the flipped, transposed
// sub-kernel of the taps that reach it (phase_taps), written by the kernel straight into its
// strided view of dx; a phase no tap reaches is zero. For stride 1 there is one phase: the
// transposed convolution with padding d*(k-1) - p.
std::optional<at::Tensor> grad_input_by_kernels(const at::Tensor& dy, const at::Tensor& weight,
                                                const ConvGeometry& g, at::MemoryFormat out_format,
                                                bool bf16_tiles = false) {
  struct Phase {
    ConvGeometry t;
    Algo algo;
    at::Tensor weight;
    int64_t u, v;
  };
  std::vector<Phase> phases;
  for (int64_t u = 0; u < g.stride_h; ++u) {
    for (int64_t v = 0; v < g.stride_w; ++v) {
      const PhaseTaps th = phase_taps(u, g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
      const PhaseTaps tw = phase_taps(v, g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
      if (th.count == 0 || tw.count == 0 || th.positions == 0 || tw.positions == 0) {
        continue;  // zero
      }
      if (th.pad < 0 || tw.pad < 0) {
        return std::nullopt;
      }
      ConvGeometry t = g;
      t.in_channels = g.out_channels;
      t.out_channels = g.in_channels;
      t.in_h = g.out_h;
      t.in_w = g.out_w;
      t.out_h = th.positions;
      t.out_w = tw.positions;
      t.kernel_h = th.count;
      t.kernel_w = tw.count;
      t.stride_h = t.stride_w = 1;
      t.pad_h = th.pad;
      t.pad_w = tw.pad;
      t.dilation_h = th.dilation;
      t.dilation_w = tw.dilation;
      // A phase of a strided layer writes a strided view of dx, which a 1x1 phase's GEMM cannot.
      // (With stride 1, a 1x1 layer's grad_input stays one GEMM, below.)
      const bool strided = g.stride_h > 1 || g.stride_w > 1;
      const Algo algo = choose_algo(t, dy.scalar_type(), false, /*gemm_form=*/!strided);
      if (algo == Algo::gemm ||
          (bf16_tiles && (algo != Algo::direct || bf16_kernel(t, at::kBFloat16, algo) != Bf16Kernel::tiles))) {
        return std::nullopt;
      }
      const at::Tensor sub = weight.slice(2, th.first, th.first + (th.count - 1) * th.step + 1, th.step)
                                 .slice(3, tw.first, tw.first + (tw.count - 1) * tw.step + 1, tw.step);
      phases.push_back(Phase{t, algo, transposed_weight(sub, g.groups), u, v});
    }
  }
  at::Tensor dx = at::empty({g.batch, g.in_channels, g.in_h, g.in_w}, dy.options().memory_format(out_format));
  if (static_cast<int64_t>(phases.size()) < g.stride_h * g.stride_w) {
    dx.zero_();  // some phases get no tap
  }
  for (const Phase& ph : phases) {
    nhwc_conv2d_out(ph.algo, dy, ph.weight, c10::nullopt, ph.t, false,
                    dx.slice(2, ph.u, g.in_h, g.stride_h).slice(3, ph.v, g.in_w, g.stride_w));
  }
  return dx;
}

// bfloat16 and float16 are computed in float32: the operands are widened (the
// input as it is laid out for the kernel, the weight as it is packed), sums
// are accumulated in float32 and each result is rounded once to its dtype.
// The forward pass of bfloat16 layers on the direct kernel may instead
// multiply bfloat16 pairs or tiles into float32 sums (bf16_kernel). oneDNN's
// bfloat16 path on a CPU without AVX512-BF16 ran 20-40x slower than its
// float32 path here; this one runs at the float32 kernels' speed.
bool widened_to_float(at::ScalarType dtype) {
  return dtype == at::kBFloat16 || dtype == at::kHalf;
}

// The tensor in float32 (itself when it is float32), or none.
c10::optional<at::Tensor> float_or_none(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? c10::optional<at::Tensor>(t->to(at::kFloat)) : c10::nullopt;
}

at::Tensor to_dtype_if_defined(const at::Tensor& t, at::ScalarType dtype) {
  return t.defined() ? t.to(dtype) : t;
}

// A 1x1 convolution without padding, one group, on an input whose output is
// NCHW stays in NCHW: out[n] [Cout, Ho*Wo] = W [Cout, Cin] @ x[n] [Cin, Ho*Wo]
// (+ bias) over the sampled pixels (a view when the stride is 1), with no
// layout conversion in or out.
at::Tensor pointwise_nchw(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                          const ConvGeometry& g) {
  const at::Tensor x = input.slice(2, 0, g.in_h, g.stride_h)
                           .slice(3, 0, g.in_w, g.stride_w)
                           .reshape({g.batch, g.in_channels, g.out_pixels()});
  const at::Tensor w = weight.reshape({g.out_channels, g.in_channels}).expand({g.batch, g.out_channels, g.in_channels});
  at::Tensor out = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  at::Tensor out3 = out.view({g.batch, g.out_channels, g.out_pixels()});
  if (bias.has_value() && bias->defined()) {
    at::baddbmm_out(out3, bias->view({1, g.out_channels, 1}), w, x);
  } else {
    at::bmm_out(out3, w, x);
  }
  return out;
}

} // namespace

at::Tensor conv2d_forward(
    const at::Tensor& input,
    const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups) {
  const ConvGeometry g = make_conv2d_geometry(input, weight, bias, stride, padding, dilation, groups);
  check_cpu(input);
  const at::ScalarType dtype = input.scalar_type();
  // Outside training the packed weight is kept for the next call (packed_weights.h).
  const bool cache_weight = weights_stay_packed();
  if (const Algo algo = choose_algo(g, dtype, cache_weight); algo != Algo::gemm) {
    // The bfloat16 kernels read bfloat16; every other kernel float32 (a bfloat16 or float16
    // input is widened as it is laid out NHWC).
    const bool as_is = dtype == at::kFloat || bf16_kernel(g, dtype, algo) != Bf16Kernel::none;
    const at::Tensor x = as_is ? input : nhwc_pixels(input, 1, 1, at::kFloat).permute({0, 3, 1, 2});
    const at::Tensor out =
        nhwc_conv2d(algo, x, weight, float_or_none(bias), g, cache_weight, conv_output_memory_format(input));
    return out.to(dtype);
  }
  if (widened_to_float(dtype)) {
    return conv2d_forward(input.to(at::kFloat), weight.to(at::kFloat), float_or_none(bias), stride, padding, dilation,
                          groups)
        .to(dtype);
  }
  if (g.samples_pixels() && g.groups == 1 && conv_output_memory_format(input) == at::MemoryFormat::Contiguous) {
    return pointwise_nchw(input, weight, bias, g);
  }
  at::Tensor out = at::empty({g.batch, g.out_h, g.out_w, g.out_channels}, input.options());
  if (g.batch > 0) {
    const bool has_bias = bias.has_value() && bias->defined();
    const int64_t coutg = g.out_channels_per_group();
    const int64_t pixels = g.out_pixels();
    const int64_t chunk = images_per_chunk(g, input.element_size());
    const at::Tensor w = weight_matrix(weight, g);
    const at::Tensor out_pixels = out.view({g.batch * pixels, g.out_channels});
    ColumnSource source(input, g, chunk * pixels);
    for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
      const int64_t count = std::min(chunk, g.batch - n0);
      for (int64_t grp = 0; grp < groups; ++grp) {
        const at::Tensor col = source.columns(n0 * pixels, count * pixels, grp);
        at::Tensor out_g = out_pixels.narrow(0, n0 * pixels, count * pixels).narrow(1, grp * coutg, coutg);
        const at::Tensor w_g = w.narrow(0, grp * coutg, coutg);
        if (has_bias) {
          at::addmm_out(out_g, bias->narrow(0, grp * coutg, coutg), col, w_g.t());
        } else {
          at::mm_out(out_g, col, w_g.t());
        }
      }
    }
  }
  return nchw_from_nhwc(out, conv_output_memory_format(input));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& weight,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups,
    std::array<bool, 3> output_mask) {
  const ConvGeometry g = make_conv2d_geometry(input, weight, c10::nullopt, stride, padding, dilation, groups);
  check_grad_output(grad_output, input, g);
  check_cpu(input);
  // bfloat16 and float16 are computed in float32 (widened_to_float): grad_output and the input
  // are widened as they are laid out NHWC, the weight up front; each gradient is rounded once.
  const std::optional<at::ScalarType> widen =
      widened_to_float(input.scalar_type()) ? std::optional<at::ScalarType>(at::kFloat) : std::nullopt;
  const at::Tensor w = widen ? weight.to(at::kFloat) : weight;
  at::Tensor grad_input, grad_weight, grad_bias;
  const auto rounded = [&](const at::Tensor& gi, const at::Tensor& gw, const at::Tensor& gb) {
    return std::make_tuple(to_dtype_if_defined(gi, input.scalar_type()), to_dtype_if_defined(gw, weight.scalar_type()),
                           to_dtype_if_defined(gb, grad_output.scalar_type()));
  };
  auto [need_input, need_weight, need_bias] = output_mask;
  // bfloat16 grad_input on the tile kernel, as forward convolutions of bfloat16 grad_output per
  // stride phase (where every phase takes the tiles: AMX, or MINIPLACES_CPU_BF16=tiles).
  const bool all_bf16 = input.scalar_type() == at::kBFloat16 && grad_output.scalar_type() == at::kBFloat16 &&
      weight.scalar_type() == at::kBFloat16;
  if (need_input && all_bf16) {
    if (auto dx = grad_input_by_kernels(grad_output, weight, g, conv_output_memory_format(input), true)) {
      grad_input = std::move(*dx);
      need_input = false;
    }
  }
  // grad_output [N, Cout, Ho, Wo] in the computation's dtype, in the layout it came in: the
  // kernels lay out its rows as they read them. Its NHWC pixels [N*Ho*Wo, Cout] (a view when it
  // is channels_last) are made once, only for a path that needs them.
  const at::Tensor dy = widen ? nhwc_pixels(grad_output, 1, 1, widen).permute({0, 3, 1, 2}) : grad_output;
  std::optional<at::Tensor> dy_pixels_made;
  const auto dy_pixels = [&]() -> const at::Tensor& {
    if (!dy_pixels_made) {
      dy_pixels_made = nhwc_pixels(dy).reshape({-1, g.out_channels});
    }
    return *dy_pixels_made;
  };
  const at::TensorOptions options = dy.options();  // the computation's dtype

  if (need_input) {
    if (auto dx = grad_input_by_kernels(dy, w, g, conv_output_memory_format(input))) {
      grad_input = std::move(*dx);
      need_input = false;
    }
  }
  if (need_bias) {
    grad_bias = at::empty({g.out_channels}, options);
    const bool planes = dy.stride(3) == 1 && dy.stride(2) == g.out_w;  // NCHW: each (n, c) one contiguous run
    AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "miniplaces_bias_grad", [&] {
      if (planes) {
        plane_sums<scalar_t>(dy.const_data_ptr<scalar_t>(), dy.stride(0), dy.stride(1),
                             grad_bias.mutable_data_ptr<scalar_t>(), g.batch, g.out_channels, g.out_pixels());
      } else {
        column_sums<scalar_t>(dy_pixels().const_data_ptr<scalar_t>(), grad_bias.mutable_data_ptr<scalar_t>(),
                              dy_pixels().size(0), g.out_channels);
      }
    });
  }
  if (need_weight && all_bf16) {
    if (auto dw = tiles_weight_grad(input, grad_output, g)) {
      grad_weight = std::move(*dw);
      need_weight = false;
    }
  }
  if (need_weight && weight_grad_kernel_applies(g, dy.scalar_type())) {
    const at::Tensor x = widen ? nhwc_pixels(input, 1, 1, widen).permute({0, 3, 1, 2}) : input;
    grad_weight = nhwc_weight_grad(x, dy, g);
    need_weight = false;
  }
  const int64_t coutg = g.out_channels_per_group();
  const int64_t cg = g.in_channels_per_group();
  const int64_t pixels = g.out_pixels();
  if (need_weight) {
    // dW[group] += dy[rows, group]^T @ col[rows, group], in runs of rows small enough to stay in
    // cache, in tiles independent of the thread count; the sum is accumulated in the op-math type.
    const auto acc_type = at::toOpMathType(w.scalar_type());
    at::Tensor dw = at::zeros({g.out_channels, g.patch_size()}, options.dtype(acc_type));
    const int64_t total = g.batch * pixels;
    const int64_t chunk_rows = g.samples_pixels() ? std::max<int64_t>(total, 1)
                                                  : weight_grad_rows(g, dy.element_size());
    ColumnSource source(widen ? input.to(*widen) : input, g, chunk_rows);
    for (int64_t row0 = 0; row0 < total; row0 += chunk_rows) {
      const int64_t rows = std::min(chunk_rows, total - row0);
      for (int64_t grp = 0; grp < groups; ++grp) {
        const at::Tensor dy_g = dy_pixels().narrow(0, row0, rows).narrow(1, grp * coutg, coutg);
        const at::Tensor col = source.columns(row0, rows, grp);
        at::Tensor dw_g = dw.narrow(0, grp * coutg, coutg);
        add_transposed_product(dw_g, dy_g, col);
      }
    }
    grad_weight = dw.view({g.out_channels, g.kernel_h, g.kernel_w, cg})
                      .permute({0, 3, 1, 2})
                      .to(w.scalar_type())
                      .contiguous();
  }
  if (!need_input) {
    return rounded(grad_input, grad_weight, grad_bias);
  }

  // dx = col2im(dy @ W) in chunks of whole images (col2im gathers every tap of a pixel).
  const int64_t chunk = images_per_chunk(g, dy.element_size());
  const at::Tensor w_matrix = weight_matrix(w, g);
  at::Tensor dx = at::empty({g.batch, g.in_h, g.in_w, g.in_channels}, options);
  const at::Tensor dx_pixels = dx.view({-1, g.in_channels});
  at::Tensor dcol = !g.is_pointwise() ? at::empty({chunk * pixels, g.patch_size()}, options) : at::Tensor();
  for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
    const int64_t count = std::min(chunk, g.batch - n0);
    const int64_t rows = count * pixels;
    for (int64_t grp = 0; grp < groups; ++grp) {
      const at::Tensor dy_g = dy_pixels().narrow(0, n0 * pixels, rows).narrow(1, grp * coutg, coutg);
      const at::Tensor w_g = w_matrix.narrow(0, grp * coutg, coutg);
      if (g.is_pointwise()) {
        at::Tensor dx_g = dx_pixels.narrow(0, n0 * pixels, rows).narrow(1, grp * cg, cg);
        at::mm_out(dx_g, dy_g, w_g);
      } else {
        at::Tensor dcol_chunk = dcol.narrow(0, 0, rows);
        at::mm_out(dcol_chunk, dy_g, w_g);
        AT_DISPATCH_FLOATING_TYPES(dx.scalar_type(), "miniplaces_col2im", [&] {
          col2im<scalar_t>(dcol_chunk.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), g, n0, count,
                           grp * cg);
        });
      }
    }
  }
  grad_input = nchw_from_nhwc(dx, conv_output_memory_format(input));
  return rounded(grad_input, grad_weight, grad_bias);
}

TORCH_LIBRARY_IMPL(miniplaces_ext, CPU, m) {
  m.impl("conv2d_forward", &conv2d_forward);
  m.impl("conv2d_backward", &conv2d_backward);
}

} // namespace miniplaces_ext::cpu

// grad_input on the CPU. Where the plans take the direct / Winograd kernels, grad_input is a set
// of forward convolutions of grad_output with the flipped, transposed weight: one for stride 1,
// one per phase of the input grid for larger strides. Elsewhere dcol = dy @ W, then col2im
// gathers dcol back onto the input pixels.
#include "passes.h"

#include "../gemm_columns.h"
#include "../im2col.h"
#include "../layout.h"
#include "../packed_weights.h"
#include "../plan.h"
#include "../run_plan.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <vector>

namespace miniplaces_ext::cpu {
namespace {

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

} // namespace

// The input grid splits into stride_h x stride_w phases (u, v), positions (a * sh + u, b * sw + v);
// each phase of grad_input is a stride-1 convolution of grad_output with the flipped, transposed
// sub-kernel of the taps that reach it (phase_taps), written by the kernel straight into its
// strided view of dx; a phase no tap reaches is zero. For stride 1 there is one phase: the
// transposed convolution with padding d*(k-1) - p.
std::optional<at::Tensor> grad_input_by_kernels(const CpuOptions& options, const at::Tensor& dy,
                                                const at::Tensor& weight, const ConvGeometry& g,
                                                at::MemoryFormat out_format, bool bf16_tiles) {
  struct Phase {
    ConvPlan plan;
    at::Tensor weight;
    int64_t u, v;
  };
  const bool strided = g.stride_h > 1 || g.stride_w > 1;
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
      // (With stride 1, a 1x1 layer's grad_input stays one GEMM: grad_input_by_gemm.)
      ConvPlan plan =
          plan_convolution(options, t, dy.scalar_type(), Pass::grad_input, false, Epilogue{}, /*gemm_form=*/!strided);
      if (plan.algo == Algo::gemm || (bf16_tiles && plan.unit != Bf16Kernel::tiles)) {
        return std::nullopt;
      }
      const at::Tensor sub = weight.slice(2, th.first, th.first + (th.count - 1) * th.step + 1, th.step)
                                 .slice(3, tw.first, tw.first + (tw.count - 1) * tw.step + 1, tw.step);
      phases.push_back(Phase{std::move(plan), transposed_weight(sub, g.groups), u, v});
    }
  }
  // The phases of a strided layer write interleaved pixels of dx, and several phases each read
  // all of grad_output: in another layout than NHWC, each phase would lay out dy's rows again and
  // write dx a strided channel plane at a time (the stem's bfloat16 grad_input: 23 ms NCHW, 9.5
  // channels_last; a 1x1/2 layer's one phase, 64 -> 128 at 64x64: 5 ms of scattered writes). So
  // grad_output is laid out NHWC once, the phases write an NHWC dx, and dx is laid out as asked once.
  const bool nhwc_between = strided && !nhwc_rows_in_place(strides_of(dy), g.out_channels);
  const at::Tensor dy_read = nhwc_between ? nhwc_pixels(dy).permute({0, 3, 1, 2}) : dy;
  const at::MemoryFormat written = nhwc_between ? at::MemoryFormat::ChannelsLast : out_format;
  at::Tensor dx = at::empty({g.batch, g.in_channels, g.in_h, g.in_w}, dy.options().memory_format(written));
  if (static_cast<int64_t>(phases.size()) < g.stride_h * g.stride_w) {
    dx.zero_();  // some phases get no tap
  }
  for (const Phase& ph : phases) {
    run_convolution(ph.plan, dy_read, ph.weight, c10::nullopt,
                    dx.slice(2, ph.u, g.in_h, g.stride_h).slice(3, ph.v, g.in_w, g.stride_w));
  }
  return written == out_format ? dx : nchw_from_nhwc(dx.permute({0, 2, 3, 1}), out_format);
}

std::optional<at::Tensor> grad_input_lowered_on_tiles(const CpuOptions& options, const at::Tensor& dy,
                                                      const at::Tensor& weight, const ConvGeometry& g,
                                                      at::MemoryFormat out_format) {
  if (!lowered_applies(g) || g.out_channels % 2 != 0) {
    return std::nullopt;
  }
  // The forward plan of this layer says whether the tile unit takes it, and whether natively.
  const ConvPlan plan = plan_convolution(options, g, at::kBFloat16, Pass::grad_input, false, Epilogue{});
  if (plan.unit != Bf16Kernel::tiles) {
    return std::nullopt;
  }
  const KernelTable& table = kernel_table();
  const auto run = (plan.unit_native ? table.tiles_native : table.tiles_emulated).grad_input_lowered;
  TORCH_CHECK(run != nullptr, "CPU kernels: no native tile kernel in this build");
  // [Cout, Cin, kh, kw] -> [Cout / 2][columns][2], column (i * kw + j) * Cin + c, zero past the field.
  const int64_t columns = lowered_depth(g);
  const at::Tensor packed =
      lowered_weight_rows(weight, g, columns).view({g.out_channels / 2, 2, columns}).transpose(1, 2).contiguous();
  at::Tensor dx = at::empty({g.batch, g.in_channels, g.in_h, g.in_w}, dy.options().memory_format(out_format));
  run(dy, packed, g, dx);
  return dx;
}

at::Tensor grad_input_by_gemm(GradOutput& dy, const at::Tensor& weight, const ConvGeometry& g,
                              const at::TensorOptions& options, at::MemoryFormat out_format, int64_t column_bytes) {
  // dx = col2im(dy @ W) in chunks of whole images (col2im gathers every tap of a pixel).
  const int64_t coutg = g.out_channels_per_group();
  const int64_t cg = g.in_channels_per_group();
  const int64_t pixels = g.out_pixels();
  const int64_t chunk = images_per_chunk(g, static_cast<int64_t>(options.dtype().itemsize()), column_bytes);
  const at::Tensor w_matrix = weight_matrix(weight, g);
  at::Tensor dx = at::empty({g.batch, g.in_h, g.in_w, g.in_channels}, options);
  const at::Tensor dx_pixels = dx.view({-1, g.in_channels});
  at::Tensor dcol = !g.is_pointwise() ? at::empty({chunk * pixels, g.patch_size()}, options) : at::Tensor();
  for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
    const int64_t count = std::min(chunk, g.batch - n0);
    const int64_t rows = count * pixels;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const at::Tensor dy_g = dy.pixels().narrow(0, n0 * pixels, rows).narrow(1, grp * coutg, coutg);
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
  return nchw_from_nhwc(dx, out_format);
}

} // namespace miniplaces_ext::cpu

// The choice of kernel for each call (see cpu_dispatch.h).
#include "cpu_dispatch.h"
#include "layout.h"
#include "packed_weights.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <string>

namespace miniplaces_ext::cpu {
namespace {

// Fewest 4x4 output tiles for which `auto` picks Winograd at level `isa`. The weight transform
// is paid per call unless the weight is cached, and costs about the same time on every x86 CPU
// seen (float64, ~20 ms for 512 x 512 channels on 2 threads), while what each tile saves shrinks
// as the FMA rate grows: the break-even was ~40 tiles on a Zen 1 (AVX2, 80 GFLOP/s) and ~130 on
// a Zen 4 (AVX-512, 232 GFLOP/s). A cached weight costs only the tiles (docs/winograd.md).
int64_t winograd_min_tiles(Isa isa, bool weight_cached) {
  if (weight_cached) {
    return 16;
  }
  return isa == Isa::avx512 ? 160 : 48;
}

// Output channels of one register block (two vector registers) at each level.
int64_t direct_block(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return 32;
    case Isa::avx2:
      return 16;
    case Isa::portable:
      break;
  }
  return 8;
}

// The kernels of a level this CPU has.
const IsaKernels& kernels(Isa isa) {
  switch (isa) {
#if defined(__x86_64__)
    case Isa::avx512:
      return avx512_kernels();
    case Isa::avx2:
      return avx2_kernels();
#endif
    default:
      return portable_kernels();
  }
}

} // namespace

namespace {

// Whether bfloat16 kernel `kernel` runs on this CPU's own instructions at level `isa` (else on its
// emulation): AMX-BF16 for tiles, AVX512-BF16 for pairs, either only at the avx512 level.
bool bf16_native(Bf16Kernel kernel, Isa isa) {
  return isa == Isa::avx512 &&
      ((kernel == Bf16Kernel::tiles && has_amx_bf16()) || (kernel == Bf16Kernel::pairs && has_avx512_bf16()));
}

} // namespace

Bf16Kernel bf16_kernel(const ConvGeometry& g, at::ScalarType dtype, Algo algo) {
  if (dtype != at::kBFloat16 || algo != Algo::direct || g.groups != 1) {
    return Bf16Kernel::none;
  }
  const CpuOptions o = cpu_options();
  switch (o.bf16) {
    case Bf16Mode::pairs:
      return Bf16Kernel::pairs;
    case Bf16Mode::tiles:
      return Bf16Kernel::tiles;
    case Bf16Mode::widen:
      return Bf16Kernel::none;
    case Bf16Mode::automatic:
      break;
  }
  return bf16_native(Bf16Kernel::tiles, o.isa)   ? Bf16Kernel::tiles
      : bf16_native(Bf16Kernel::pairs, o.isa) ? Bf16Kernel::pairs
                                              : Bf16Kernel::none;
}

bool winograd_applies(const ConvGeometry& g) {
  return g.kernel_h == 3 && g.kernel_w == 3 && g.stride_h == 1 && g.stride_w == 1 && g.dilation_h == 1 &&
      g.dilation_w == 1 && g.groups == 1;
}

namespace {

// True when `auto` may run this problem on the direct kernel: float32 (or bfloat16 / float16,
// widened), not MINIPLACES_CPU_ALGO=gemm, not the portable level, and enough output channels per
// group to fill half its register block.
bool direct_fits(const ConvGeometry& g, at::ScalarType dtype, Isa isa, Algo asked) {
  const bool float_kernels = dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf;
  return float_kernels && asked != Algo::gemm && isa != Isa::portable &&
      g.out_channels_per_group() >= direct_block(isa) / 2;
}

} // namespace

Algo choose_algo(const ConvGeometry& g, at::ScalarType dtype, bool weight_cached, bool gemm_form) {
  const CpuOptions o = cpu_options();
  const Isa isa = o.isa;
  const Algo asked = o.algo;
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf) {
    return Algo::gemm;  // the direct and Winograd kernels compute in float32: float64 takes im2col + GEMM
  }
  if (asked == Algo::direct || asked == Algo::gemm) {
    return asked;
  }
  // A tile product multiplies 16 x 16 x 32 bfloat16 values per instruction, many times what
  // float32 FMAs do: where the CPU has AMX, bfloat16 layers take the tile kernel, Winograd's
  // 3x3 layers included (not timed yet: no session has had such a CPU).
  if (asked == Algo::automatic && bf16_native(Bf16Kernel::tiles, isa) &&
      bf16_kernel(g, dtype, Algo::direct) == Bf16Kernel::tiles) {
    return Algo::direct;
  }
  if (winograd_applies(g) && (asked == Algo::winograd || isa != Isa::portable)) {
    // Below a few tiles per thread the weight transform is not repaid.
    const int64_t tiles = g.batch * ((g.out_h + 3) / 4) * ((g.out_w + 3) / 4);
    if (asked == Algo::winograd || tiles >= winograd_min_tiles(isa, weight_cached)) {
      return Algo::winograd;
    }
  }
  if (g.samples_pixels() && asked == Algo::automatic && gemm_form) {
    return Algo::gemm;  // a 1x1 layer is one GEMM over the sampled pixels, no im2col
  }
  return direct_fits(g, dtype, isa, asked) ? Algo::direct : Algo::gemm;
}

namespace {

// The weight-gradient kernel loads vectors from the input's channels where they fill whole
// register blocks (and are not the fewer), else from grad_output's.
bool weight_grad_over_input(const ConvGeometry& g, int64_t block) {
  return g.in_channels % block == 0 && (g.in_channels >= g.out_channels || g.out_channels % block != 0);
}

} // namespace

bool weight_grad_kernel_applies(const ConvGeometry& g, at::ScalarType dtype) {
  const CpuOptions o = cpu_options();
  const Isa isa = o.isa;
  const Algo asked = o.algo;
  const int64_t block = direct_block(isa);
  const bool fits =
      g.groups == 1 && dtype == at::kFloat && (weight_grad_over_input(g, block) || g.out_channels % block == 0);
  if (asked == Algo::direct) {
    return fits;
  }
  // auto (or winograd, which leaves this to auto): a 1x1 layer's weight gradient is one GEMM of
  // the sampled pixels (no im2col), and rows of 8 output pixels are too short a reduction per
  // register block: GEMM was faster on both (ResNet-18's 1x1/2 layers 2x, layer4 ~10 % on AMD
  // Zen; at AVX-512 on an Intel Xeon layer4 1.04x, layer4.0 0.89x GEMM's time). AlexNet's
  // 15-pixel rows at AVX-512 (Intel Xeon): the kernel 0.85x GEMM's time (32.6 vs 38.3 ms for
  // 192 -> 384 3x3); at AVX2 rows of 16 were the shortest measured to win. The kernel won on the rest.
  const int64_t shortest_row = isa == Isa::avx512 ? 12 : 16;
  return fits && asked != Algo::gemm && isa != Isa::portable && !g.samples_pixels() && g.out_w >= shortest_row;
}

at::Tensor nhwc_weight_grad(const at::Tensor& x, const at::Tensor& dy, const ConvGeometry& g) {
  TORCH_CHECK(weight_grad_kernel_applies(g, x.scalar_type()), "the weight-gradient kernel cannot compute this");
  const Isa isa = cpu_options().isa;
  const bool over_input = weight_grad_over_input(g, direct_block(isa));
  const int64_t rows = over_input ? g.out_channels : g.in_channels;
  const int64_t columns = over_input ? g.in_channels : g.out_channels;
  const at::Tensor sums = at::zeros({g.kernel_h, g.kernel_w, rows, columns}, x.options());
  kernels(isa).weight_grad(x, dy, g, over_input, sums);
  // [kh][kw][Cout][Cin] or [kh][kw][Cin][Cout] -> [Cout, Cin, kh, kw]
  using Order = std::array<int64_t, 4>;
  const Order order = over_input ? Order{2, 3, 0, 1} : Order{3, 2, 0, 1};
  return sums.permute(order).contiguous();
}

namespace {

// Whether the weight gradient of a convolution with bfloat16 operands runs on tiles. Few input
// channels fill a sliver of each A tile (3 of 32 rows for the stem): those layers stay on the
// widened float32 path, as in the forward pass they are lowered.
bool tiles_weight_grad_applies(const ConvGeometry& g, at::ScalarType dtype) {
  return dtype == at::kBFloat16 && g.groups == 1 && !lowered_applies(g) &&
      bf16_kernel(g, at::kBFloat16, Algo::direct) == Bf16Kernel::tiles;
}

} // namespace

std::optional<at::Tensor> tiles_weight_grad(const at::Tensor& x, const at::Tensor& dy, const ConvGeometry& g) {
  if (dy.scalar_type() != x.scalar_type() || !tiles_weight_grad_applies(g, x.scalar_type())) {
    return std::nullopt;
  }
  TileWeightGradFn run = bf16_tiles_emulated_weight_grad();
#if defined(__x86_64__)
  if (bf16_native(Bf16Kernel::tiles, cpu_options().isa)) {
    run = amx_bf16_tiles_weight_grad();
  }
#endif
  return run(x, dy, g);
}

void check_output(const at::Tensor& out, const ConvGeometry& g, bool bf16_allowed) {
  TORCH_CHECK((out.scalar_type() == at::kFloat || (bf16_allowed && out.scalar_type() == at::kBFloat16)) &&
                  out.sizes() == at::IntArrayRef({g.batch, g.out_channels, g.out_h, g.out_w}),
              "NHWC conv kernels: expected a float32", bf16_allowed ? " or bfloat16" : "", " [", g.batch, ", ",
              g.out_channels, ", ", g.out_h, ", ", g.out_w, "] output, got ", out.scalar_type(), " ", out.sizes());
}

void nhwc_conv2d_out(Algo algo, const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                     const ConvGeometry& g, bool cache_weight, const at::Tensor& out) {
  TORCH_CHECK(algo == Algo::direct || (algo == Algo::winograd && winograd_applies(g)),
              "NHWC conv kernels: algorithm ", algo_name(algo), " cannot compute this convolution");
  const Isa isa = cpu_options().isa;
  const IsaKernels& k = kernels(isa);
  if (x.scalar_type() == at::kBFloat16) {
    const Bf16Kernel kernel = bf16_kernel(g, at::kBFloat16, algo);
    TORCH_CHECK(kernel != Bf16Kernel::none, "NHWC conv kernels: a bfloat16 input needs a bfloat16 kernel");
    // Tiles take 32 columns (two 16-column tiles) at every level; a lowered level runs the emulations.
    const bool tiles = kernel == Bf16Kernel::tiles;
    IsaKernels::NhwcConv run = tiles ? bf16_tiles_emulated_direct() : k.direct_bf16_pairs_emulated;
#if defined(__x86_64__)
    if (bf16_native(kernel, isa)) {
      run = tiles ? amx_bf16_tiles_direct() : avx512_bf16_pairs_direct();
    }
#endif
    if (tiles && lowered_applies(g)) {
      lowered_conv2d_out(run, x, weight, bias, g, out);
      return;
    }
    // Channels are multiplied in pairs: an odd count gets a zero channel (the weight's where it is packed).
    ConvGeometry even = g;
    even.in_channels += g.in_channels % 2;
    const at::Tensor x_nhwc = nhwc_pixels(x);
    const at::Tensor padded =
        (even.in_channels == g.in_channels ? x_nhwc : at::constant_pad_nd(x_nhwc, {0, 1})).permute({0, 3, 1, 2});
    const at::Tensor packed = packed_weight_pairs(weight, even, tiles ? 32 : direct_block(isa), cache_weight);
    run(padded, packed, bias, even, out);
    return;
  }
  TORCH_CHECK(x.scalar_type() == at::kFloat, "NHWC conv kernels: expected a float32 or bfloat16 input");
  const at::Tensor packed = packed_weight(algo, weight, g, direct_block(isa), cache_weight);
  (algo == Algo::winograd ? k.winograd : k.direct)(x, packed, bias, g, out);  // both read any layout
}

at::Tensor nhwc_conv2d(Algo algo, const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       const ConvGeometry& g, bool cache_weight, at::MemoryFormat out_format) {
  // The bfloat16 kernels round their float32 sums to a bfloat16 output once, as they write it.
  const at::ScalarType out_type = x.scalar_type() == at::kBFloat16 ? at::kBFloat16 : at::kFloat;
  at::Tensor out =
      at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, x.options().dtype(out_type).memory_format(out_format));
  nhwc_conv2d_out(algo, x, weight, bias, g, cache_weight, out);
  return out;
}

namespace {

// "detected=avx2 chosen=avx2 algo=auto bf16=auto avx512_bf16=no amx_bf16=no supported=portable,avx2": parsed by
// miniplaces_ext.cpu_capabilities(). Raises if a switch is invalid.
std::string cpu_capabilities() {
  std::string supported;
  for (Isa isa : supported_isas()) {
    supported += (supported.empty() ? "" : ",") + std::string(isa_name(isa));
  }
  const CpuOptions o = cpu_options();
  return std::string("detected=") + isa_name(detected_isa()) + " chosen=" + isa_name(o.isa) +
      " algo=" + algo_name(o.algo) + " bf16=" + bf16_mode_name(o.bf16) + " avx512_bf16=" + (has_avx512_bf16() ? "yes" : "no") +
      " amx_bf16=" + (has_amx_bf16() ? "yes" : "no") + " supported=" + supported;
}

// The algorithm the CPU forward pass of this convolution runs: direct, gemm or winograd;
// "direct-bf16" for the direct kernel on bfloat16 pairs, "direct-bf16-tiles" on tiles. Phase
// "forward": an evaluation forward, whose packed weight is kept (weights_stay_packed);
// "training_forward": a forward that autograd records, which packs per call. For phase "grad_weight",
// what computes the weight gradient: "direct-bf16-tiles" (weight_grad_tiles.h), "direct" (the
// weight-gradient kernel) or "gemm".
std::string cpu_conv_algorithm(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                               c10::string_view phase) {
  const ConvGeometry g = make_conv2d_geometry(input, weight, c10::nullopt, stride, padding, dilation, groups);
  TORCH_CHECK(phase == "forward" || phase == "training_forward" || phase == "grad_weight",
              "cpu_conv_algorithm: phase must be 'forward', 'training_forward' or 'grad_weight', got '", phase, "'");
  if (phase == "grad_weight") {
    const at::ScalarType dtype = input.scalar_type();
    if (tiles_weight_grad_applies(g, dtype)) {
      return "direct-bf16-tiles";
    }
    const bool widened = dtype == at::kBFloat16 || dtype == at::kHalf;  // else computed in float32
    return weight_grad_kernel_applies(g, widened ? at::kFloat : dtype) ? "direct" : "gemm";
  }
  const Algo algo = choose_algo(g, input.scalar_type(), phase == "forward");
  constexpr const char* kSuffixes[] = {"", "-bf16", "-bf16-tiles"};
  return std::string(algo_name(algo)) +
      kSuffixes[static_cast<int>(bf16_kernel(g, input.scalar_type(), algo))];
}

// GFLOP/s of float32 FMAs on all of torch's threads at the chosen ISA level.
double cpu_fma_peak_gflops() {
  constexpr int64_t kSteps = int64_t{1} << 24;  // ~0.1 s per thread on a 3 GHz AVX2 core
  return kernels(cpu_options().isa).fma_peak_gflops(kSteps);
}

} // namespace

TORCH_LIBRARY_FRAGMENT(miniplaces_ext, m) {
  m.def("cpu_fma_peak_gflops() -> float", &cpu_fma_peak_gflops);
  m.def("cpu_capabilities() -> str", &cpu_capabilities);
  m.def("cpu_conv_algorithm(Tensor input, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups, str phase='forward') -> str",
        &cpu_conv_algorithm);
}

} // namespace miniplaces_ext::cpu

// The ConvPlan (plan.h): every choice of kernel for one call, made here and nowhere else.
#include "plan.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <sstream>

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

// Whether bfloat16 unit `unit` runs on this CPU's own instructions at level `isa` (else on its
// emulation): AMX-BF16 for tiles, AVX512-BF16 for pairs, either only at the avx512 level.
bool bf16_native(Bf16Kernel unit, Isa isa) {
  return isa == Isa::avx512 &&
      ((unit == Bf16Kernel::tiles && has_amx_bf16()) || (unit == Bf16Kernel::pairs && has_avx512_bf16()));
}

// The bfloat16 unit of a convolution of `dtype` computed by `algo`: none unless bfloat16, the
// direct kernel and one group; then what the bf16 option asks for (auto: tiles where AMX-BF16 is
// native, else pairs where AVX512-BF16 is, else none).
Bf16Kernel bf16_unit(const ConvGeometry& g, at::ScalarType dtype, Algo algo, const CpuOptions& o) {
  if (dtype != at::kBFloat16 || algo != Algo::direct || g.groups != 1) {
    return Bf16Kernel::none;
  }
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

// True when `auto` may run this problem on the direct kernel: float32 (or bfloat16 / float16,
// widened), not MINIPLACES_CPU_ALGO=gemm, not the portable level, and enough output channels per
// group to fill half its register block.
bool direct_fits(const ConvGeometry& g, at::ScalarType dtype, Isa isa, Algo asked) {
  const bool float_kernels = dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf;
  return float_kernels && asked != Algo::gemm && isa != Isa::portable &&
      g.out_channels_per_group() >= direct_block(isa) / 2;
}

// The algorithm of a forward-type pass (plan.h's plan_convolution says the rule).
Algo choose_algo(const ConvGeometry& g, at::ScalarType dtype, bool weight_cached, bool gemm_form,
                 const CpuOptions& o) {
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
  // 3x3 layers included.
  if (asked == Algo::automatic && bf16_native(Bf16Kernel::tiles, isa) &&
      bf16_unit(g, dtype, Algo::direct, o) == Bf16Kernel::tiles) {
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

// The weight-gradient kernel loads vectors from the input's channels where they fill whole
// register blocks (and are not the fewer), else from grad_output's.
bool weight_grad_over_input(const ConvGeometry& g, int64_t block) {
  return g.in_channels % block == 0 && (g.out_channels % block != 0 || g.in_channels >= g.out_channels);
}

// Whether the float32 weight-gradient kernel (no im2col matrix) computes this weight gradient.
bool weight_grad_kernel_applies(const ConvGeometry& g, const CpuOptions& o) {
  const Isa isa = o.isa;
  const int64_t block = direct_block(isa);
  const bool fits = g.groups == 1 && (weight_grad_over_input(g, block) || g.out_channels % block == 0);
  if (o.algo == Algo::direct) {
    return fits;
  }
  // auto (or winograd, which leaves this to auto): a 1x1 layer's weight gradient is one GEMM of
  // the sampled pixels (no im2col), and rows of 8 output pixels are too short a reduction per
  // register block: GEMM was faster on both (ResNet-18's 1x1/2 layers 2x, layer4 ~10 % on AMD
  // Zen; at AVX-512 on an Intel Xeon layer4 1.04x, layer4.0 0.89x GEMM's time). AlexNet's
  // 15-pixel rows at AVX-512 (Intel Xeon): the kernel 0.85x GEMM's time (32.6 vs 38.3 ms for
  // 192 -> 384 3x3); at AVX2 rows of 16 were the shortest measured to win. The kernel won on the rest.
  const int64_t shortest_row = isa == Isa::avx512 ? 12 : 16;
  return fits && o.algo != Algo::gemm && isa != Isa::portable && !g.samples_pixels() && g.out_w >= shortest_row;
}

const char* unit_name(Bf16Kernel unit) {
  switch (unit) {
    case Bf16Kernel::pairs:
      return "pairs";
    case Bf16Kernel::tiles:
      return "tiles";
    case Bf16Kernel::none:
      break;
  }
  return "none";
}

const char* pass_name(Pass pass) {
  switch (pass) {
    case Pass::grad_input:
      return "grad_input";
    case Pass::grad_weight:
      return "grad_weight";
    case Pass::forward:
      break;
  }
  return "forward";
}

const char* input_name(InputStrategy input) {
  switch (input) {
    case InputStrategy::widened:
      return "widened";
    case InputStrategy::lowered:
      return "lowered";
    case InputStrategy::columns:
      return "columns";
    case InputStrategy::as_is:
      break;
  }
  return "as_is";
}

} // namespace

bool winograd_applies(const ConvGeometry& g) {
  return g.kernel_h == 3 && g.kernel_w == 3 && g.stride_h == 1 && g.stride_w == 1 && g.dilation_h == 1 &&
      g.dilation_w == 1 && g.groups == 1;
}

ConvPlan plan_convolution(const CpuOptions& options, const ConvGeometry& g, at::ScalarType dtype, Pass pass,
                          bool weight_cached, Epilogue epilogue, bool gemm_form) {
  TORCH_CHECK(pass != Pass::grad_weight, "plan_convolution: a weight gradient takes plan_weight_grad");
  ConvPlan p{};
  p.g = g;
  p.dtype = dtype;
  p.pass = pass;
  p.weight_cached = weight_cached;
  p.options = options;
  p.algo = choose_algo(g, dtype, weight_cached, gemm_form, p.options);
  p.unit = bf16_unit(g, dtype, p.algo, p.options);
  p.unit_native = bf16_native(p.unit, p.options.isa);
  p.weight_grad = WeightGradMethod::gemm;
  p.block = p.unit == Bf16Kernel::tiles ? 32 : direct_block(p.options.isa);  // tiles: 32 columns at every level
  p.epilogue = epilogue;
  if (p.algo == Algo::gemm) {
    p.input = InputStrategy::columns;
    p.kernel = nullptr;
    return p;
  }
  const KernelTable& table = kernel_table();
  const IsaKernels& level = table.level(p.options.isa);
  switch (p.unit) {
    case Bf16Kernel::tiles:
      p.input = lowered_applies(g) ? InputStrategy::lowered : InputStrategy::as_is;
      p.kernel = (p.unit_native ? table.tiles_native : table.tiles_emulated).*
          (p.input == InputStrategy::lowered ? &TileKernels::lowered : &TileKernels::direct);
      break;
    case Bf16Kernel::pairs:
      p.kernel = p.unit_native ? table.bf16_pairs_native : level.direct_bf16_pairs_emulated;
      p.input = InputStrategy::as_is;
      break;
    case Bf16Kernel::none:
      p.kernel = p.algo == Algo::winograd ? level.winograd : level.direct;
      p.input = dtype == at::kFloat ? InputStrategy::as_is : InputStrategy::widened;
      break;
  }
  TORCH_CHECK(p.kernel != nullptr, "CPU kernels: no ", unit_name(p.unit), " kernel in this build");
  return p;
}

ConvPlan plan_weight_grad(const CpuOptions& options, const ConvGeometry& g, at::ScalarType dtype) {
  ConvPlan p{};
  p.g = g;
  p.dtype = dtype;
  p.pass = Pass::grad_weight;
  p.weight_cached = false;
  p.options = options;
  p.algo = Algo::direct;
  p.block = direct_block(p.options.isa);
  p.vector_over_input = weight_grad_over_input(g, p.block);
  p.kernel = nullptr;
  const bool tiles = dtype == at::kBFloat16 && g.groups == 1 &&
      bf16_unit(g, at::kBFloat16, Algo::direct, p.options) == Bf16Kernel::tiles;
  const bool widened = dtype == at::kBFloat16 || dtype == at::kHalf;  // else computed in float32
  if (tiles) {
    p.weight_grad = WeightGradMethod::tiles;
    p.unit = Bf16Kernel::tiles;
    p.unit_native = bf16_native(Bf16Kernel::tiles, p.options.isa);
    p.block = 32;
    // Few input channels would fill a sliver of each A tile (3 of 32 rows for the stem): their
    // column taps are folded into the channels, as the forward pass lowers them.
    p.input = lowered_applies(g) ? InputStrategy::lowered : InputStrategy::as_is;
  } else if ((dtype == at::kFloat || widened) && weight_grad_kernel_applies(g, p.options)) {
    p.weight_grad = WeightGradMethod::kernel;
    p.unit = Bf16Kernel::none;
    p.input = widened ? InputStrategy::widened : InputStrategy::as_is;
  } else {
    p.weight_grad = WeightGradMethod::gemm;
    p.algo = Algo::gemm;
    p.unit = Bf16Kernel::none;
    p.input = InputStrategy::columns;
  }
  return p;
}

std::string ConvPlan::algorithm_name() const {
  if (pass == Pass::grad_weight) {
    switch (weight_grad) {
      case WeightGradMethod::tiles:
        return "direct-bf16-tiles";
      case WeightGradMethod::kernel:
        return "direct";
      case WeightGradMethod::gemm:
        break;
    }
    return "gemm";
  }
  constexpr const char* kSuffixes[] = {"", "-bf16", "-bf16-tiles"};
  return std::string(algo_name(algo)) + kSuffixes[static_cast<int>(unit)];
}

std::string ConvPlan::describe() const {
  std::ostringstream s;
  s << "pass=" << pass_name(pass) << " algorithm=" << algorithm_name() << " isa=" << isa_name(options.isa)
    << " dtype=" << dtype << " unit=" << unit_name(unit);
  if (unit != Bf16Kernel::none) {
    s << (unit_native ? "(native)" : "(emulated)");
  }
  s << " input=" << input_name(input) << " block=" << block << " weight_cached=" << (weight_cached ? "yes" : "no");
  if (pass == Pass::grad_weight && weight_grad == WeightGradMethod::kernel) {
    s << " vectors_over=" << (vector_over_input ? "input" : "grad_output");
  }
  std::string steps = std::string(epilogue.bias ? "+bias" : "") + (epilogue.residual ? "+residual" : "") +
      (epilogue.relu ? "+relu" : "");
  s << " epilogue=" << (steps.empty() ? "none" : steps.substr(1));
  return s.str();
}

} // namespace miniplaces_ext::cpu

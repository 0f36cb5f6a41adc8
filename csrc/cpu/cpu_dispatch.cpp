// CPU feature detection, the MINIPLACES_CPU_ISA / MINIPLACES_CPU_ALGO switches,
// and the choice of kernel for each call (see cpu_dispatch.h).
#include "cpu_dispatch.h"
#include "layout.h"
#include "packed_weights.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace miniplaces_ext::cpu {
namespace {

constexpr const char* kIsaNames[] = {"portable", "avx2", "avx512"};
constexpr const char* kAlgoNames[] = {"auto", "direct", "gemm", "winograd"};
constexpr const char* kBf16ModeNames[] = {"auto", "pairs", "widen", "tiles"};

Isa read_cpuid() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  // __builtin_cpu_supports also checks that the OS saves the wide registers (XGETBV).
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    return Isa::avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return Isa::avx2;
  }
#endif
  return Isa::portable;
}

bool read_avx512_bf16() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

// AMX-TILE and AMX-BF16, and the tile state granted: Linux hands it out per process on request.
bool read_amx_bf16() {
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16")) {
    return false;
  }
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;  // <asm/prctl.h>, the XTILEDATA state
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

// The value of switch `variable` as the index of its name in `names`, or -1
// when it is unset or empty; a value that is not one of the names is an error
// saying it is not `a_what` and listing them.
template <size_t N>
int read_switch(const char* variable, const char* const (&names)[N], const char* a_what) {
  const char* value = std::getenv(variable);
  if (value == nullptr || *value == '\0') {
    return -1;
  }
  std::string choices;
  for (size_t i = 0; i < N; ++i) {
    if (std::strcmp(value, names[i]) == 0) {
      return static_cast<int>(i);
    }
    choices += (i == 0 ? "" : i + 1 == N ? " or " : ", ") + std::string(names[i]);
  }
  TORCH_CHECK(false, variable, "=", value, " is not ", a_what, "; use ", choices);
}

// Fewest 4x4 output tiles for which `auto` picks Winograd: the weight transform is
// paid per call unless the weight is cached (measured: see docs/winograd.md).
constexpr int64_t kWinogradMinTiles = 48;
constexpr int64_t kWinogradMinTilesCachedWeight = 16;

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

const char* isa_name(Isa isa) {
  return kIsaNames[static_cast<int>(isa)];
}

Isa detected_isa() {
  static const Isa isa = read_cpuid();
  return isa;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (int i = 0; i <= static_cast<int>(detected_isa()); ++i) {
    out.push_back(static_cast<Isa>(i));
  }
  return out;
}

Isa chosen_isa() {
  const int level = read_switch("MINIPLACES_CPU_ISA", kIsaNames, "a level");
  if (level < 0) {
    return detected_isa();
  }
  TORCH_CHECK(level <= static_cast<int>(detected_isa()), "MINIPLACES_CPU_ISA=", kIsaNames[level],
              " asks for more than this CPU supports (", isa_name(detected_isa()), "); unset it or choose a lower level");
  return static_cast<Isa>(level);
}

Algo chosen_algo() {
  return static_cast<Algo>(std::max(0, read_switch("MINIPLACES_CPU_ALGO", kAlgoNames, "an algorithm")));
}

Bf16Mode chosen_bf16_mode() {
  return static_cast<Bf16Mode>(std::max(0, read_switch("MINIPLACES_CPU_BF16", kBf16ModeNames, "a mode")));
}

bool has_avx512_bf16() {
  static const bool has = read_avx512_bf16();
  return has;
}

bool has_amx_bf16() {
  static const bool has = read_amx_bf16();
  return has;
}

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
  switch (chosen_bf16_mode()) {
    case Bf16Mode::pairs:
      return Bf16Kernel::pairs;
    case Bf16Mode::tiles:
      return Bf16Kernel::tiles;
    case Bf16Mode::widen:
      return Bf16Kernel::none;
    case Bf16Mode::automatic:
      break;
  }
  const Isa isa = chosen_isa();
  return bf16_native(Bf16Kernel::tiles, isa)   ? Bf16Kernel::tiles
      : bf16_native(Bf16Kernel::pairs, isa) ? Bf16Kernel::pairs
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
  const Isa isa = chosen_isa();  // validates MINIPLACES_CPU_ISA on every call, whichever path runs
  const Algo asked = chosen_algo();
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
    if (asked == Algo::winograd || tiles >= (weight_cached ? kWinogradMinTilesCachedWeight : kWinogradMinTiles)) {
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
  const Isa isa = chosen_isa();
  const Algo asked = chosen_algo();
  const int64_t block = direct_block(isa);
  const bool fits =
      g.groups == 1 && dtype == at::kFloat && (weight_grad_over_input(g, block) || g.out_channels % block == 0);
  if (asked == Algo::direct) {
    return fits;
  }
  // auto (or winograd, which leaves this to auto): a 1x1 layer's weight gradient is one GEMM of
  // the sampled pixels (no im2col), and rows of 8 output pixels are too short a reduction per
  // register block: GEMM was faster on both (ResNet-18's 1x1/2 layers 2x, layer4 ~10 %); the
  // kernel won on the rest.
  return fits && asked != Algo::gemm && isa != Isa::portable && !g.samples_pixels() && g.out_w >= 16;
}

at::Tensor nhwc_weight_grad(const at::Tensor& x, const at::Tensor& dy, const ConvGeometry& g) {
  TORCH_CHECK(weight_grad_kernel_applies(g, x.scalar_type()), "the weight-gradient kernel cannot compute this");
  const Isa isa = chosen_isa();
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

void check_output(const at::Tensor& out, const ConvGeometry& g) {
  TORCH_CHECK(out.scalar_type() == at::kFloat &&
                  out.sizes() == at::IntArrayRef({g.batch, g.out_channels, g.out_h, g.out_w}),
              "NHWC conv kernels: expected a float32 [", g.batch, ", ", g.out_channels, ", ", g.out_h, ", ", g.out_w,
              "] output, got ", out.scalar_type(), " ", out.sizes());
}

void nhwc_conv2d_out(Algo algo, const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                     const ConvGeometry& g, bool cache_weight, const at::Tensor& out) {
  TORCH_CHECK(algo == Algo::direct || (algo == Algo::winograd && winograd_applies(g)),
              "NHWC conv kernels: algorithm ", kAlgoNames[static_cast<int>(algo)], " cannot compute this convolution");
  const Isa isa = chosen_isa();
  const IsaKernels& k = kernels(isa);
  if (x.scalar_type() == at::kBFloat16) {
    const Bf16Kernel kernel = bf16_kernel(g, at::kBFloat16, algo);
    TORCH_CHECK(kernel != Bf16Kernel::none, "NHWC conv kernels: a bfloat16 input needs a bfloat16 kernel");
    // Channels are multiplied in pairs: an odd count gets a zero channel (the weight's where it is packed).
    ConvGeometry even = g;
    even.in_channels += g.in_channels % 2;
    const at::Tensor x_nhwc = nhwc_pixels(x);
    const at::Tensor padded =
        (even.in_channels == g.in_channels ? x_nhwc : at::constant_pad_nd(x_nhwc, {0, 1})).permute({0, 3, 1, 2});
    // Tiles take 32 columns (two 16-column tiles) at every level; a lowered level runs the emulations.
    const bool tiles = kernel == Bf16Kernel::tiles;
    const at::Tensor packed = packed_weight_pairs(weight, even, tiles ? 32 : direct_block(isa), cache_weight);
    IsaKernels::NhwcConv run = tiles ? bf16_tiles_emulated_direct() : k.direct_bf16_pairs_emulated;
#if defined(__x86_64__)
    if (bf16_native(kernel, isa)) {
      run = tiles ? amx_bf16_tiles_direct() : avx512_bf16_pairs_direct();
    }
#endif
    run(padded, packed, bias, even, out);
    return;
  }
  TORCH_CHECK(x.scalar_type() == at::kFloat, "NHWC conv kernels: expected a float32 or bfloat16 input");
  const at::Tensor packed = packed_weight(algo, weight, g, direct_block(isa), cache_weight);
  (algo == Algo::winograd ? k.winograd : k.direct)(x, packed, bias, g, out);  // both read any layout
}

at::Tensor nhwc_conv2d(Algo algo, const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       const ConvGeometry& g, bool cache_weight, at::MemoryFormat out_format) {
  at::Tensor out =
      at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, x.options().dtype(at::kFloat).memory_format(out_format));
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
  return std::string("detected=") + isa_name(detected_isa()) + " chosen=" + isa_name(chosen_isa()) +
      " algo=" + kAlgoNames[static_cast<int>(chosen_algo())] + " bf16=" +
      kBf16ModeNames[static_cast<int>(chosen_bf16_mode())] + " avx512_bf16=" + (has_avx512_bf16() ? "yes" : "no") +
      " amx_bf16=" + (has_amx_bf16() ? "yes" : "no") + " supported=" + supported;
}

// The algorithm the CPU forward pass of this convolution runs: direct, gemm or winograd;
// "direct-bf16" for the direct kernel on bfloat16 pairs, "direct-bf16-tiles" on tiles. Asked under torch.inference_mode,
// the choice for a cached weight (what an inference-mode forward pass runs).
std::string cpu_conv_algorithm(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const ConvGeometry g = make_conv2d_geometry(input, weight, c10::nullopt, stride, padding, dilation, groups);
  const Algo algo = choose_algo(g, input.scalar_type(), c10::InferenceMode::is_enabled());
  constexpr const char* kSuffixes[] = {"", "-bf16", "-bf16-tiles"};
  return std::string(kAlgoNames[static_cast<int>(algo)]) +
      kSuffixes[static_cast<int>(bf16_kernel(g, input.scalar_type(), algo))];
}

// GFLOP/s of float32 FMAs on all of torch's threads at the chosen ISA level.
double cpu_fma_peak_gflops() {
  constexpr int64_t kSteps = int64_t{1} << 24;  // ~0.1 s per thread on a 3 GHz AVX2 core
  return kernels(chosen_isa()).fma_peak_gflops(kSteps);
}

} // namespace

TORCH_LIBRARY_FRAGMENT(miniplaces_ext, m) {
  m.def("cpu_fma_peak_gflops() -> float", &cpu_fma_peak_gflops);
  m.def("cpu_capabilities() -> str", &cpu_capabilities);
  m.def("cpu_conv_algorithm(Tensor input, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups) -> str",
        &cpu_conv_algorithm);
}

} // namespace miniplaces_ext::cpu

// The CPU kernels' switches: the environment read once, then the setter (see cpu_options.h).
#include "cpu_options.h"

#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>

namespace miniplaces_ext::cpu {
namespace {

constexpr const char* kAlgoNames[] = {"auto", "direct", "gemm", "winograd"};
constexpr const char* kBf16ModeNames[] = {"auto", "pairs", "widen", "tiles"};
constexpr int64_t kDefaultColumnBytes = int64_t{4} << 20;

// The index of `value` in `names`; a value that is not one of them is an error saying that
// `what` (the variable or argument, as the user wrote it) is not `a_what`, listing the names.
template <size_t N>
int index_of(const std::string& value, const char* const (&names)[N], const std::string& what, const char* a_what) {
  std::string choices;
  for (size_t i = 0; i < N; ++i) {
    if (value == names[i]) {
      return static_cast<int>(i);
    }
    choices += (i == 0 ? "" : i + 1 == N ? " or " : ", ") + std::string(names[i]);
  }
  TORCH_CHECK(false, what, "=", value, " is not ", a_what, "; use ", choices);
}

// The environment variable's value, or none when it is unset or empty.
std::optional<std::string> environment(const char* variable) {
  const char* value = std::getenv(variable);
  return value == nullptr || *value == '\0' ? std::nullopt : std::optional<std::string>(value);
}

Isa checked_isa(const std::string& value, const std::string& what) {
  const char* const names[] = {isa_name(Isa::portable), isa_name(Isa::avx2), isa_name(Isa::avx512)};
  const int level = index_of(value, names, what, "a level");
  TORCH_CHECK(level <= static_cast<int>(detected_isa()), what, "=", value, " asks for more than this CPU supports (",
              isa_name(detected_isa()), "); unset it or choose a lower level");
  return static_cast<Isa>(level);
}

int64_t checked_column_bytes(const std::string& value, const std::string& what) {
  char* end = nullptr;
  const long long bytes = std::strtoll(value.c_str(), &end, 10);
  TORCH_CHECK(!value.empty() && *end == '\0' && bytes > 0, what, "=", value, " is not a positive number of bytes");
  return bytes;
}

CpuOptions from_environment() {
  CpuOptions o{detected_isa(), Algo::automatic, Bf16Mode::automatic, kDefaultColumnBytes};
  if (auto v = environment("MINIPLACES_CPU_ISA")) {
    o.isa = checked_isa(*v, "MINIPLACES_CPU_ISA");
  }
  if (auto v = environment("MINIPLACES_CPU_ALGO")) {
    o.algo = static_cast<Algo>(index_of(*v, kAlgoNames, "MINIPLACES_CPU_ALGO", "an algorithm"));
  }
  if (auto v = environment("MINIPLACES_CPU_BF16")) {
    o.bf16 = static_cast<Bf16Mode>(index_of(*v, kBf16ModeNames, "MINIPLACES_CPU_BF16", "a mode"));
  }
  if (auto v = environment("MINIPLACES_CPU_COLUMN_BYTES")) {
    o.column_bytes = checked_column_bytes(*v, "MINIPLACES_CPU_COLUMN_BYTES");
  }
  return o;
}

std::mutex& options_mutex() {
  static std::mutex m;
  return m;
}

std::optional<CpuOptions>& options_in_force() {
  static std::optional<CpuOptions> o;
  return o;
}

// The options as "isa=avx2 algo=auto bf16=auto column_bytes=4194304" (parsed by
// miniplaces_ext.get_cpu_options()).
std::string options_string() {
  const CpuOptions o = cpu_options();
  return std::string("isa=") + isa_name(o.isa) + " algo=" + algo_name(o.algo) + " bf16=" + bf16_mode_name(o.bf16) +
      " column_bytes=" + std::to_string(o.column_bytes);
}

// Changes the options given (the others stay), each checked as its variable would be.
void set_options(const c10::optional<std::string>& isa, const c10::optional<std::string>& algo,
                 const c10::optional<std::string>& bf16, c10::optional<int64_t> column_bytes) {
  CpuOptions o = cpu_options();
  if (isa) {
    o.isa = checked_isa(*isa, "isa");
  }
  if (algo) {
    o.algo = static_cast<Algo>(index_of(*algo, kAlgoNames, "algo", "an algorithm"));
  }
  if (bf16) {
    o.bf16 = static_cast<Bf16Mode>(index_of(*bf16, kBf16ModeNames, "bf16", "a mode"));
  }
  if (column_bytes) {
    o.column_bytes = *column_bytes;
  }
  set_cpu_options(o);  // checks the level and column_bytes
}

} // namespace

CpuOptions cpu_options() {
  std::lock_guard<std::mutex> lock(options_mutex());
  std::optional<CpuOptions>& o = options_in_force();
  if (!o) {
    o = from_environment();  // raises on an invalid value, leaving the options unread
  }
  return *o;
}

void set_cpu_options(const CpuOptions& options) {
  TORCH_CHECK(static_cast<int>(options.isa) <= static_cast<int>(detected_isa()), "isa=", isa_name(options.isa),
              " asks for more than this CPU supports (", isa_name(detected_isa()), ")");
  TORCH_CHECK(options.column_bytes > 0, "column_bytes=", options.column_bytes, " is not a positive number of bytes");
  std::lock_guard<std::mutex> lock(options_mutex());
  options_in_force() = options;
}

const char* algo_name(Algo algo) {
  return kAlgoNames[static_cast<int>(algo)];
}

const char* bf16_mode_name(Bf16Mode mode) {
  return kBf16ModeNames[static_cast<int>(mode)];
}

TORCH_LIBRARY_FRAGMENT(miniplaces_ext, m) {
  m.def("cpu_options() -> str", &options_string);
  m.def("set_cpu_options(str? isa=None, str? algo=None, str? bf16=None, int? column_bytes=None) -> ()", &set_options);
}

} // namespace miniplaces_ext::cpu

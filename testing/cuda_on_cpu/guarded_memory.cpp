// Guard-page allocations for the CUDA-on-CPU harness (see guarded_memory.h).
#include "guarded_memory.h"

#include <ATen/ATen.h>

#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <mutex>

namespace miniplaces_ext::cuda_on_cpu {
namespace {

struct Region {
  std::atomic<uintptr_t> map_begin{0};  // 0: slot free
  uintptr_t map_end = 0, data_begin = 0, data_end = 0;
};

// A fixed table the signal handler can read without locks; writers hold a mutex.
constexpr size_t kMaxLiveBuffers = 256;
std::array<Region, kMaxLiveBuffers> regions;
std::mutex regions_mutex;

size_t page_size() {
  static const size_t size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return size;
}

void unmap(void* map, size_t map_bytes) {
  std::lock_guard<std::mutex> lock(regions_mutex);
  for (Region& r : regions) {
    if (r.map_begin.load() == reinterpret_cast<uintptr_t>(map)) {
      r.map_begin.store(0);
    }
  }
  munmap(map, map_bytes);
}

} // namespace

GuardSide parse_guard_side(const std::string& name) {
  if (name == "after") {
    return GuardSide::kAfter;
  }
  TORCH_CHECK(name == "before", "guard must be 'after' or 'before', got '", name, "'");
  return GuardSide::kBefore;
}

at::Tensor guarded_empty(at::IntArrayRef sizes, const at::TensorOptions& options, GuardSide side,
                         at::MemoryFormat memory_format, std::optional<size_t> address_mod_16) {
  const size_t item = c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  const size_t residue = address_mod_16.value_or(0);
  TORCH_CHECK(residue < 16 && residue % item == 0,
              "CUDA-on-CPU harness: an address residue must be a multiple of the element size below 16");
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) * item;
  const size_t page = page_size();
  const size_t data_pages = (bytes + 2 * residue + page - 1) / page;
  const size_t map_bytes = (data_pages + 2) * page;  // a guard page on each side
  void* map = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK(map != MAP_FAILED, "CUDA-on-CPU harness: could not map ", map_bytes, " bytes of guarded memory");
  auto* base = static_cast<char*>(map);
  TORCH_CHECK(mprotect(base, page, PROT_NONE) == 0 && mprotect(base + (data_pages + 1) * page, page, PROT_NONE) == 0,
              "CUDA-on-CPU harness: mprotect failed");
  char* data = side == GuardSide::kBefore ? base + page + residue : base + (data_pages + 1) * page - bytes;
  if (side == GuardSide::kAfter && address_mod_16.has_value()) {
    data -= (reinterpret_cast<uintptr_t>(data) + 16 - residue) % 16;  // down to the residue
  }
  {
    std::lock_guard<std::mutex> lock(regions_mutex);
    Region* slot = nullptr;
    for (Region& r : regions) {
      if (r.map_begin.load() == 0) {
        slot = &r;
        break;
      }
    }
    if (slot == nullptr) {
      munmap(map, map_bytes);
      TORCH_CHECK(false, "CUDA-on-CPU harness: more than ", kMaxLiveBuffers, " guarded buffers alive at once");
    }
    slot->map_end = reinterpret_cast<uintptr_t>(base + map_bytes);
    slot->data_begin = reinterpret_cast<uintptr_t>(data);
    slot->data_end = reinterpret_cast<uintptr_t>(data + bytes);
    slot->map_begin.store(reinterpret_cast<uintptr_t>(map));
  }
  std::vector<int64_t> strides;
  if (memory_format == at::MemoryFormat::ChannelsLast) {
    strides = c10::get_channels_last_strides_2d(sizes);
  } else {
    const auto contiguous = c10::contiguous_strides(sizes);
    strides.assign(contiguous.begin(), contiguous.end());
  }
  return at::from_blob(data, sizes, strides, [map, map_bytes](void*) { unmap(map, map_bytes); },
                       options.device(at::kCPU));
}

bool describe_guard_fault(const void* address, char* out, size_t out_size) {
  const auto a = reinterpret_cast<uintptr_t>(address);
  for (const Region& r : regions) {
    const uintptr_t begin = r.map_begin.load();
    if (begin == 0 || a < begin || a >= r.map_end) {
      continue;
    }
    const unsigned long size = r.data_end - r.data_begin;
    if (a >= r.data_end) {
      snprintf(out, out_size, "out-of-bounds access to global memory: %lu bytes past the end of a %lu-byte buffer",
               static_cast<unsigned long>(a - r.data_end), size);
    } else {
      snprintf(out, out_size, "out-of-bounds access to global memory: %lu bytes before the start of a %lu-byte buffer",
               static_cast<unsigned long>(r.data_begin - a), size);
    }
    return true;
  }
  return false;
}

} // namespace miniplaces_ext::cuda_on_cpu

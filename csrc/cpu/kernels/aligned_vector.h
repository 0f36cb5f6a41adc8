// Buffers that kernels load whole cache lines from: a std::vector whose storage starts on a
// 64-byte line. malloc gives 16-byte alignment (glibc's large blocks sit 16 bytes past a page), so
// every 64-byte row of an AMX tile loaded from such a buffer straddles two lines, and a straddling
// TILELOADD is ~6.5x slower than an aligned one (2.2 vs 14.2 ns per 16 x 64-byte tile on the
// Intel Xeon with AMX this was measured on; the direct kernel's 3x3 layers ran at 1/3 of their
// aligned speed). Vector loads and stores of whole lines gain the same way, less. In an unnamed
// namespace, like every helper the per-ISA kernel files include: each file's vector code (zero
// fills compiled for its target) stays its own instead of being merged by the linker.
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace miniplaces_ext::cpu {
namespace {

constexpr std::size_t kCacheLineBytes = 64;

template <typename T>
struct CacheLineAllocator {
  using value_type = T;

  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) noexcept {}

  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{kCacheLineBytes}));
  }
  void deallocate(T* p, std::size_t n) noexcept {
    ::operator delete(p, n * sizeof(T), std::align_val_t{kCacheLineBytes});
  }
  template <typename U>
  bool operator==(const CacheLineAllocator<U>&) const noexcept {
    return true;
  }
};

// A std::vector whose data() is 64-byte aligned.
template <typename T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

// n elements of T rounded up to whole cache lines, so that consecutive rows of that many elements
// each start on a line.
template <typename T>
constexpr std::ptrdiff_t whole_lines(std::ptrdiff_t n) {
  constexpr std::ptrdiff_t per_line = kCacheLineBytes / sizeof(T);
  return (n + per_line - 1) / per_line * per_line;
}

} // namespace
} // namespace miniplaces_ext::cpu

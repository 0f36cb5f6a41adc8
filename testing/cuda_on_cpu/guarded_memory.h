// Tensors for the CUDA-on-CPU harness whose first out-of-bounds byte faults.
//
// Each tensor gets its own mapping with an inaccessible page right after its
// last byte (GuardSide::kAfter: any overrun faults, even by one element) or
// right before its first byte (kBefore: any underrun faults). block_runner's
// fault handler asks describe_guard_fault which buffer a faulting address
// belongs to and turns the fault into an error naming it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <optional>
#include <string>

namespace miniplaces_ext::cuda_on_cpu {

enum class GuardSide { kAfter, kBefore };

// "after" or "before"; anything else is an error.
GuardSide parse_guard_side(const std::string& name);

// An uninitialised CPU tensor in guarded memory, dense in `memory_format`
// (ChannelsLast for 4-D sizes, or Contiguous), right against its guard page and
// aligned to its element size; or, when `address_mod_16` is given (a multiple
// of the element size), at an address with that residue modulo 16 — then, with
// the guard after, up to 15 bytes may lie between the end and the guard page.
at::Tensor guarded_empty(at::IntArrayRef sizes, const at::TensorOptions& options, GuardSide side,
                         at::MemoryFormat memory_format, std::optional<size_t> address_mod_16 = std::nullopt);

// When `address` lies in the guard page of a live guarded tensor, writes a
// one-line description (which side, how many bytes off, the buffer's size) to
// `out` and returns true. Async-signal-safe: no allocation, no locks.
bool describe_guard_fault(const void* address, char* out, size_t out_size);

} // namespace miniplaces_ext::cuda_on_cpu

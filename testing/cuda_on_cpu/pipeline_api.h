// CUDA's asynchronous-copy primitives (<cuda_pipeline_primitives.h>, cp.async)
// for running csrc/cuda/mainloops.cuh on the CPU (included by device_api.h).
//
// A copy does not happen when it is issued: it waits in the calling thread's
// current commit group, and lands (reads global memory, writes shared memory)
// only when __pipeline_wait_prior lets its group complete — the latest moment
// the hardware may. A kernel that reads a stage before waiting for it sees
// stale data, and the tests' comparison fails. What the hardware requires is
// checked: 4, 8 or 16 bytes, source and destination aligned to the size, and
// no copy still pending when the thread returns.
#pragma once

#include "block_runner.h"

#include <cstddef>

inline void __pipeline_memcpy_async(void* dst_shared, const void* src_global, size_t size_and_align,
                                    size_t zfill = 0) {
  ::miniplaces_ext::cuda_on_cpu::async_copy(dst_shared, src_global, size_and_align, zfill);
}
inline void __pipeline_commit() { ::miniplaces_ext::cuda_on_cpu::async_commit(); }
inline void __pipeline_wait_prior(size_t prior) { ::miniplaces_ext::cuda_on_cpu::async_wait_prior(prior); }

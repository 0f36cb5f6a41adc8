// Runs a CUDA grid on the CPU: every block in turn, each of its threads a
// fiber with its own stack, with real __syncthreads semantics.
//
// Between two barriers the threads of a block run one after another, each up
// to its next barrier, in the order RunOptions::order says (forward, reverse or a
// seeded random permutation, drawn anew for every block and barrier phase).
// A kernel whose result depends on that order has a race (a missing
// __syncthreads, or shared memory written by one thread and read by another
// in the same phase): running it under several thread orders and comparing
// exposes it. Threads that wait at different __syncthreads lines, or
// that wait while others of the block have returned, are reported as errors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

// CUDA's launch-shape type, as its runtime defines it.
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace miniplaces_ext::cuda_on_cpu {

enum class ThreadOrder { kForward, kReverse, kRandom };

struct RunOptions {
  ThreadOrder order = ThreadOrder::kForward;
  uint64_t seed = 0;            // for kRandom
  unsigned max_grid_z = 65535;  // CUDA's limit; tests lower it to exercise multi-launch code
};

// "forward", "reverse" or "random"; anything else is an error.
ThreadOrder parse_thread_order(const std::string& name);

// The built-in variables of the thread that runs now (what threadIdx & co. read).
struct ThreadContext {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
};
extern ThreadContext current_thread;

// Calls kernel_body() once per thread of every block of `grid`; checks CUDA's
// launch limits first. Errors (limits, barrier misuse, a fault in a guarded
// buffer) are thrown as c10::Error after the grid is abandoned.
void run_grid(dim3 grid, dim3 block, const std::function<void()>& kernel_body, const RunOptions& options);

// Ends the running kernel with an error: the grid is abandoned and run_grid
// throws c10::Error naming `message`, the block and the thread.
[[noreturn]] void fail_in_kernel(const std::string& message);

// The calling thread performs a warp-collective operation (WMMA): between two
// barriers every lane of a warp must perform as many as the others (a
// collective in divergent code is an error).
void warp_collective();

// cp.async (pipeline_api.h): the calling thread issues a copy of `bytes` - zfill bytes from
// src (global) to dst (shared), the rest zeros; commits the copies issued since its last
// commit as a group; waits until at most `prior` of its groups are pending (the others'
// copies land now).
void async_copy(void* dst, const void* src, size_t bytes, size_t zfill);
void async_commit();
void async_wait_prior(size_t prior);

// __syncthreads() at source line `line`: the calling fiber waits until every
// thread of its block arrives (at the same line, or it is an error).
void syncthreads(int line);

} // namespace miniplaces_ext::cuda_on_cpu

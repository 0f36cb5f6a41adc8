// Fibers, barriers and fault trapping for the CUDA-on-CPU harness (see block_runner.h).
#include "block_runner.h"

#include "guarded_memory.h"

#include <c10/util/Exception.h>

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <string>
#include <cstring>
#include <mutex>
#include <numeric>
#include <random>
#include <vector>

namespace miniplaces_ext::cuda_on_cpu {

ThreadContext current_thread;

namespace {

constexpr size_t kStackBytes = size_t{256} << 10;  // per thread; kernels keep a few KiB of registers and locals
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxGridX = 2147483647u, kMaxGridYZ = 65535u;

// One fiber stack: a private mapping with an inaccessible page below it.
class Stack {
 public:
  Stack() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    map_bytes_ = kStackBytes + page;
    map_ = mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(map_ != MAP_FAILED, "CUDA-on-CPU harness: could not map a thread stack");
    mprotect(map_, page, PROT_NONE);
    base_ = static_cast<char*>(map_) + page;
  }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  ~Stack() { munmap(map_, map_bytes_); }
  char* base() const { return base_; }

 private:
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  char* base_ = nullptr;
};

struct PendingCopy {
  void* dst;
  const void* src;
  size_t bytes, zfill;
};

struct Fiber {
  ucontext_t context;
  std::vector<PendingCopy> open_group;                 // issued since the last commit
  std::deque<std::vector<PendingCopy>> committed;      // oldest first
  bool finished = false;
  int barrier_line = 0;  // source line of the __syncthreads it waits at
  uint64_t collectives = 0;  // warp-collective operations performed so far
};

// The state of the block that runs now. One grid runs at a time (launch_mutex).
struct BlockState {
  ucontext_t scheduler;
  std::vector<std::unique_ptr<Stack>> stacks;  // kept across launches
  std::vector<Fiber> fibers;
  unsigned running = 0;
  const std::function<void()>* body = nullptr;
};
BlockState state;
std::mutex launch_mutex;

// Fault trapping: a SIGSEGV inside a guarded buffer's guard page jumps back to run_grid.
sigjmp_buf fault_jump;
char fault_message[256];
struct sigaction previous_segv;

void on_segv(int signal, siginfo_t* info, void* context) {
  if (describe_guard_fault(info->si_addr, fault_message, sizeof(fault_message))) {
    siglongjmp(fault_jump, 1);
  }
  sigaction(SIGSEGV, &previous_segv, nullptr);  // not ours: let the fault take its normal course
  (void)signal;
  (void)context;
}

void fiber_main() {
  (*state.body)();
  state.fibers[state.running].finished = true;
  // returning resumes uc_link, the scheduler
}

dim3 unflatten(unsigned index, dim3 shape) {
  return dim3(index % shape.x, (index / shape.x) % shape.y, index / (shape.x * shape.y));
}

std::vector<unsigned> phase_order(unsigned threads, const RunOptions& options, uint64_t block, uint64_t phase) {
  std::vector<unsigned> order(threads);
  std::iota(order.begin(), order.end(), 0u);
  if (options.order == ThreadOrder::kReverse) {
    std::reverse(order.begin(), order.end());
  } else if (options.order == ThreadOrder::kRandom) {
    std::seed_seq seq{options.seed, block, phase};
    std::mt19937_64 rng(seq);
    std::shuffle(order.begin(), order.end(), rng);
  }
  return order;
}

// Every lane of each warp has performed as many warp-collective operations as its warp's first lane.
void check_warp_collectives(uint64_t block_index) {
  constexpr unsigned kWarp = 32;
  for (unsigned t = 0; t < state.fibers.size(); ++t) {
    const Fiber& first = state.fibers[t - t % kWarp];
    TORCH_CHECK(state.fibers[t].collectives == first.collectives, "CUDA-on-CPU harness: in block ", block_index,
                ", lane ", t % kWarp, " of warp ", t / kWarp, " performed ", state.fibers[t].collectives,
                " warp-collective (WMMA) operations, lane 0 ", first.collectives, ": a collective in divergent code");
  }
}

void run_block(unsigned threads, uint64_t block_index, const RunOptions& options) {
  while (state.stacks.size() < threads) {
    state.stacks.push_back(std::make_unique<Stack>());
  }
  state.fibers.assign(threads, Fiber{});
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = state.fibers[t];
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = state.stacks[t]->base();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &state.scheduler;
    makecontext(&f.context, fiber_main, 0);
  }
  for (uint64_t phase = 0;; ++phase) {
    for (unsigned t : phase_order(threads, options, block_index, phase)) {
      if (!state.fibers[t].finished) {
        state.running = t;
        current_thread.thread_idx = unflatten(t, current_thread.block_dim);
        swapcontext(&state.scheduler, &state.fibers[t].context);
      }
    }
    check_warp_collectives(block_index);
    const auto finished = std::count_if(state.fibers.begin(), state.fibers.end(), [](const Fiber& f) { return f.finished; });
    if (finished == static_cast<int64_t>(threads)) {
      for (unsigned t = 0; t < threads; ++t) {
        const Fiber& f = state.fibers[t];
        TORCH_CHECK(f.open_group.empty() && f.committed.empty(), "CUDA-on-CPU harness: in block ", block_index,
                    ", thread ", t, " returned with cp.async copies never waited for (__pipeline_wait_prior)");
      }
      return;
    }
    TORCH_CHECK(finished == 0, "CUDA-on-CPU harness: in block ", block_index, ", ", threads - finished,
                " threads wait at __syncthreads while ", finished, " have returned (barrier divergence)");
    const int line = state.fibers[0].barrier_line;
    for (const Fiber& f : state.fibers) {
      TORCH_CHECK(f.barrier_line == line, "CUDA-on-CPU harness: in block ", block_index,
                  ", threads wait at __syncthreads on different lines (", line, " and ", f.barrier_line,
                  "): barrier divergence");
    }
  }
}

} // namespace

ThreadOrder parse_thread_order(const std::string& name) {
  if (name == "forward") {
    return ThreadOrder::kForward;
  }
  if (name == "reverse") {
    return ThreadOrder::kReverse;
  }
  TORCH_CHECK(name == "random", "thread order must be 'forward', 'reverse' or 'random', got '", name, "'");
  return ThreadOrder::kRandom;
}

void fail_in_kernel(const std::string& message) {
  snprintf(fault_message, sizeof(fault_message), "%s", message.c_str());
  siglongjmp(fault_jump, 1);
}

void warp_collective() { ++state.fibers[state.running].collectives; }

void async_copy(void* dst, const void* src, size_t bytes, size_t zfill) {
  const auto misaligned = [bytes](const void* p) { return reinterpret_cast<uintptr_t>(p) % bytes != 0; };
  if (bytes != 4 && bytes != 8 && bytes != 16) {
    fail_in_kernel("cp.async of " + std::to_string(bytes) + " bytes: it copies 4, 8 or 16");
  }
  if (zfill > bytes || misaligned(dst) || misaligned(src)) {
    fail_in_kernel("cp.async of " + std::to_string(bytes) + " bytes from or to an address not aligned to its size");
  }
  state.fibers[state.running].open_group.push_back(PendingCopy{dst, src, bytes, zfill});
}

void async_commit() {
  Fiber& f = state.fibers[state.running];
  f.committed.push_back(std::move(f.open_group));
  f.open_group.clear();
}

void async_wait_prior(size_t prior) {
  Fiber& f = state.fibers[state.running];
  while (f.committed.size() > prior) {
    for (const PendingCopy& c : f.committed.front()) {
      std::memcpy(c.dst, c.src, c.bytes - c.zfill);
      std::memset(static_cast<char*>(c.dst) + (c.bytes - c.zfill), 0, c.zfill);
    }
    f.committed.pop_front();
  }
}

void syncthreads(int line) {
  Fiber& f = state.fibers[state.running];
  f.barrier_line = line;
  swapcontext(&f.context, &state.scheduler);
}

void run_grid(dim3 grid, dim3 block, const std::function<void()>& kernel_body, const RunOptions& options) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  TORCH_CHECK(threads >= 1 && threads <= kMaxThreadsPerBlock && block.z <= 64,
              "CUDA launch limits: a block has 1..1024 threads (z <= 64), got ", block.x, "x", block.y, "x", block.z);
  TORCH_CHECK(grid.x >= 1 && grid.x <= kMaxGridX && grid.y >= 1 && grid.y <= kMaxGridYZ && grid.z >= 1 &&
                  grid.z <= std::min(kMaxGridYZ, options.max_grid_z),
              "CUDA launch limits: grid ", grid.x, "x", grid.y, "x", grid.z, " outside 2^31-1 x 65535 x ",
              std::min(kMaxGridYZ, options.max_grid_z));
  std::lock_guard<std::mutex> lock(launch_mutex);
  state.body = &kernel_body;
  current_thread.grid_dim = grid;
  current_thread.block_dim = block;

  // An alternate signal stack, so the fault handler runs even when a fiber stack is the culprit.
  std::vector<char> signal_stack(size_t{64} << 10);
  stack_t alt{}, previous_alt{};
  alt.ss_sp = signal_stack.data();
  alt.ss_size = signal_stack.size();
  sigaltstack(&alt, &previous_alt);
  struct sigaction action {};
  action.sa_sigaction = on_segv;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  sigaction(SIGSEGV, &action, &previous_segv);
  const auto restore = [&] {
    sigaction(SIGSEGV, &previous_segv, nullptr);
    sigaltstack(&previous_alt, nullptr);
  };

  if (sigsetjmp(fault_jump, 1) != 0) {
    restore();
    TORCH_CHECK(false, "CUDA-on-CPU harness: ", fault_message, " (block ", current_thread.block_idx.x, ",",
                current_thread.block_idx.y, ",", current_thread.block_idx.z, ", thread ", current_thread.thread_idx.x,
                ")");
  }
  try {
    uint64_t block_index = 0;
    for (unsigned z = 0; z < grid.z; ++z) {
      for (unsigned y = 0; y < grid.y; ++y) {
        for (unsigned x = 0; x < grid.x; ++x, ++block_index) {
          current_thread.block_idx = dim3(x, y, z);
          run_block(static_cast<unsigned>(threads), block_index, options);
        }
      }
    }
  } catch (...) {
    restore();
    throw;
  }
  restore();
}

} // namespace miniplaces_ext::cuda_on_cpu

// The CUDA built-ins our kernels use, for compiling csrc/cuda/*.cuh as host
// C++ and running them with block_runner.h. Include this before the kernel
// source, in harness translation units only (it defines CUDA's keywords as
// macros).
#pragma once

#include "block_runner.h"
#include "pipeline_api.h"
#include "vector_load_api.h"
#include "wmma_api.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Blocks run one at a time, so one static instance serves as each block's
// shared memory in turn (uninitialised between blocks, as on a GPU).
#define __shared__ static

#define threadIdx (::miniplaces_ext::cuda_on_cpu::current_thread.thread_idx)
#define blockIdx (::miniplaces_ext::cuda_on_cpu::current_thread.block_idx)
#define blockDim (::miniplaces_ext::cuda_on_cpu::current_thread.block_dim)
#define gridDim (::miniplaces_ext::cuda_on_cpu::current_thread.grid_dim)
#define __syncthreads() ::miniplaces_ext::cuda_on_cpu::syncthreads(__LINE__)

// Stand-in for the CUDA runtime used by tests/cuda_emulation: the backend's kernels, translated by
// emulate.py (launches become emu::launch calls), compile as plain C++ and run on the CPU. Each
// block runs as blockDim real threads meeting at real barriers, warps exchange values through
// per-warp barriers, and "device" memory is host memory that AddressSanitizer poisons whenever
// no kernel or copy is running, so host code reading a device pointer is reported.
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <tuple>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct alignas(16) float4 {
  float x, y, z, w;
};

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The built-in index variables, set per emulated thread.
extern thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {

// Runs `body` as every thread of every block of the grid; blocks one after another in a shuffled
// order (JUANJI_EMU_SEED), the threads of a block concurrently. Rethrows the first exception.
void run_grid(dim3 grid, dim3 block, const std::function<void()>& body);

template <class F>
void launch(dim3 grid, dim3 block, F&& body) {
  run_grid(grid, block, std::function<void()>(std::forward<F>(body)));
}

// __syncthreads: waits for every thread of the block.
void sync_block();
// Every lane of the calling thread's warp deposits its `bytes`-byte value; each then copies lane
// `from`'s value into out. All lanes of the warp must call it (as __shfl_xor_sync requires).
void warp_exchange(const void* value, std::size_t bytes, int from, void* out);

}  // namespace emu

inline void __syncthreads() { emu::sync_block(); }

template <class T>
T __shfl_xor_sync(unsigned, T value, int lane_mask) {
  T out;
  const int lane = static_cast<int>(threadIdx.x % 32);
  emu::warp_exchange(&value, sizeof(T), lane ^ lane_mask, &out);
  return out;
}

// ---- runtime API ------------------------------------------------------------------------

enum cudaError_t { cudaSuccess = 0, cudaErrorMemoryAllocation = 2, cudaErrorInvalidValue = 1 };
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3
};

cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaMalloc(void** ptr, std::size_t bytes);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t error);

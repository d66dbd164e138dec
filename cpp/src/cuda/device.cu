// CUDA memory management for the device layer (core/device.cpp calls these).
//
// Freed blocks are cached by size and handed out again: cudaMalloc costs tens of microseconds and
// cudaFree waits for the whole device, which would dominate every small op that returns a new
// tensor. Reuse is safe because juanji queues all its work on one stream (the legacy default
// stream, which copies also join): a kernel that writes a reused block runs after every kernel
// queued while the block had its previous owner. A failed cudaMalloc flushes the cache and
// retries. JUANJI_CUDA_CACHING=0 frees every block at once instead (what compute-sanitizer's
// memcheck needs to see use-after-free).
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cuda/check.cuh"
#include "cuda/cuda_backend.hpp"

namespace juanji::cuda {
namespace {

bool caching_enabled() {
  static const bool enabled = [] {
    const char* setting = std::getenv("JUANJI_CUDA_CACHING");
    return !(setting && std::strcmp(setting, "0") == 0);
  }();
  return enabled;
}

// Size classes: 512-byte steps below 1 MiB, 1 MiB steps above, so similar requests share blocks.
std::size_t block_size(std::size_t nbytes) {
  constexpr std::size_t kSmallStep = 512, kLargeStep = std::size_t(1) << 20;
  const std::size_t step = nbytes < kLargeStep ? kSmallStep : kLargeStep;
  return (nbytes + step - 1) / step * step;
}

struct BlockCache {
  std::mutex mutex;
  std::unordered_map<void*, std::size_t> size_of;                  // every block we allocated
  std::map<std::pair<int, std::size_t>, std::vector<void*>> idle;  // (device, size) -> free blocks
};

// Never destroyed: tensors may be released while the interpreter shuts down, after static
// destructors have run.
BlockCache& cache() {
  static BlockCache* blocks = new BlockCache;
  return *blocks;
}

// Returns the device's idle blocks to the driver (the caller has made the device current).
void flush_idle(int device_index) {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (auto it = c.idle.begin(); it != c.idle.end();) {
    if (it->first.first != device_index) {
      ++it;
      continue;
    }
    for (void* ptr : it->second) {
      cudaFree(ptr);
      c.size_of.erase(ptr);
    }
    it = c.idle.erase(it);
  }
}

}  // namespace

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver / no device" error
    return 0;
  }
  return count;
}

void* allocate(std::size_t nbytes, int device_index) {
  JUANJI_CUDA_CHECK(cudaSetDevice(device_index));
  void* ptr = nullptr;
  if (!caching_enabled()) {
    JUANJI_CUDA_CHECK(cudaMalloc(&ptr, nbytes));
    return ptr;
  }
  const std::size_t size = block_size(nbytes);
  BlockCache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    auto it = c.idle.find({device_index, size});
    if (it != c.idle.end() && !it->second.empty()) {
      ptr = it->second.back();
      it->second.pop_back();
      return ptr;
    }
  }
  cudaError_t status = cudaMalloc(&ptr, size);
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear the error, give the cached blocks back, and try once more
    flush_idle(device_index);
    status = cudaMalloc(&ptr, size);
  }
  throw_on_error(status, "cudaMalloc", __FILE__, __LINE__);
  std::lock_guard<std::mutex> lock(c.mutex);
  c.size_of[ptr] = size;
  return ptr;
}

void release(void* ptr, int device_index) {
  // Runs from destructors: never throw, and ignore errors at interpreter shutdown.
  if (!caching_enabled()) {
    if (cudaSetDevice(device_index) == cudaSuccess) cudaFree(ptr);
    return;
  }
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  const auto it = c.size_of.find(ptr);
  if (it != c.size_of.end()) c.idle[{device_index, it->second}].push_back(ptr);
}

void copy_to_host(void* dst, const void* src, std::size_t n, int device_index) {
  JUANJI_CUDA_CHECK(cudaSetDevice(device_index));
  JUANJI_CUDA_CHECK(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost));
}

void copy_to_device(void* dst, const void* src, std::size_t n, int device_index) {
  JUANJI_CUDA_CHECK(cudaSetDevice(device_index));
  JUANJI_CUDA_CHECK(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice));
}

void copy_device_to_device(void* dst, const void* src, std::size_t n, int device_index) {
  JUANJI_CUDA_CHECK(cudaSetDevice(device_index));
  JUANJI_CUDA_CHECK(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToDevice));
}

}  // namespace juanji::cuda

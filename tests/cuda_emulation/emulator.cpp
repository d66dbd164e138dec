// The CPU emulation of the CUDA runtime declared in include/cuda_runtime.h.
#include <algorithm>
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "cuda_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define EMU_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define EMU_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define EMU_POISON(p, n) ((void)(p), (void)(n))
#define EMU_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {
namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "cuda emulation: %s\n", what);
  std::abort();
}

constexpr std::size_t kLaneBytes = 16;

// `size` threads that run the blocks of a launch, one block at a time.
class BlockPool {
 public:
  explicit BlockPool(unsigned size)
      : size_(size), start_(size + 1), done_(size + 1), block_barrier_(size), lanes_(size * kLaneBytes) {
    for (unsigned first = 0; first < size; first += 32)
      warp_barriers_.push_back(std::make_unique<std::barrier<>>(std::min(32u, size - first)));
    for (unsigned tid = 0; tid < size; ++tid) workers_.emplace_back([this, tid] { work(tid); });
  }

  ~BlockPool() {
    stop_ = true;
    start_.arrive_and_wait();
    for (auto& w : workers_) w.join();
  }

  void run(dim3 block_index, dim3 grid, dim3 block, const std::function<void()>* body) {
    block_index_ = block_index;
    grid_ = grid;
    block_ = block;
    body_ = body;
    start_.arrive_and_wait();
    done_.arrive_and_wait();
  }

  void sync() { block_barrier_.arrive_and_wait(); }

  void exchange(unsigned tid, const void* value, std::size_t bytes, int from, void* out) {
    if (bytes > kLaneBytes) fail("warp shuffle of a value wider than 16 bytes");
    const unsigned warp = tid / 32;
    std::memcpy(&lanes_[tid * kLaneBytes], value, bytes);
    warp_barriers_[warp]->arrive_and_wait();
    std::memcpy(out, &lanes_[(warp * 32 + static_cast<unsigned>(from)) * kLaneBytes], bytes);
    warp_barriers_[warp]->arrive_and_wait();
  }

 private:
  void work(unsigned tid);

  unsigned size_;
  std::barrier<> start_, done_, block_barrier_;
  std::vector<std::unique_ptr<std::barrier<>>> warp_barriers_;
  std::vector<unsigned char> lanes_;
  std::vector<std::thread> workers_;
  bool stop_ = false;
  dim3 block_index_, grid_, block_;
  const std::function<void()>* body_ = nullptr;
};

thread_local BlockPool* current_pool = nullptr;
thread_local unsigned current_tid = 0;

void BlockPool::work(unsigned tid) {
  current_pool = this;
  current_tid = tid;
  for (;;) {
    start_.arrive_and_wait();
    if (stop_) return;
    threadIdx = dim3(tid % block_.x, tid / block_.x % block_.y, tid / (block_.x * block_.y));
    blockIdx = block_index_;
    blockDim = block_;
    gridDim = grid_;
    try {
      (*body_)();
    } catch (...) {
      fail("a kernel threw an exception");  // the other threads may be waiting at a barrier
    }
    done_.arrive_and_wait();
  }
}

// "Device" allocations: poisoned for AddressSanitizer except inside kernels and copies.
std::mutex memory_mutex;
std::map<const unsigned char*, std::size_t> allocations;

void set_all_poisoned(bool poisoned) {
  for (const auto& [ptr, size] : allocations) {
    if (poisoned) EMU_POISON(ptr, size);
    else EMU_UNPOISON(ptr, size);
  }
}

// The allocation holding [ptr, ptr + bytes), or null.
const unsigned char* device_range(const void* ptr, std::size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(ptr);
  auto it = allocations.upper_bound(p);
  if (it == allocations.begin()) return nullptr;
  --it;
  return p + bytes <= it->first + it->second ? it->first : nullptr;
}

std::mutex launch_mutex;
std::map<unsigned, std::unique_ptr<BlockPool>> pools;

}  // namespace

void run_grid(dim3 grid, dim3 block, const std::function<void()>& body) {
  const unsigned threads = block.x * block.y * block.z;
  if (threads == 0 || threads > 1024) fail("block size out of range");
  const std::size_t blocks = std::size_t(grid.x) * grid.y * grid.z;
  if (blocks == 0) fail("empty grid");
  std::lock_guard<std::mutex> launch_lock(launch_mutex);
  auto& pool = pools[threads];
  if (!pool) pool = std::make_unique<BlockPool>(threads);
  std::vector<std::size_t> order(blocks);
  std::iota(order.begin(), order.end(), std::size_t(0));
  const char* seed = std::getenv("JUANJI_EMU_SEED");
  std::mt19937_64 rng(seed ? std::strtoull(seed, nullptr, 10) : 1);
  std::shuffle(order.begin(), order.end(), rng);
  {
    std::lock_guard<std::mutex> lock(memory_mutex);
    set_all_poisoned(false);
  }
  for (std::size_t b : order) {
    const dim3 index(static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                     static_cast<unsigned>(b / (std::size_t(grid.x) * grid.y)));
    pool->run(index, grid, block, &body);
  }
  std::lock_guard<std::mutex> lock(memory_mutex);
  set_all_poisoned(true);
}

void sync_block() {
  if (!current_pool) fail("__syncthreads outside a kernel");
  current_pool->sync();
}

void warp_exchange(const void* value, std::size_t bytes, int from, void* out) {
  if (!current_pool) fail("warp shuffle outside a kernel");
  current_pool->exchange(current_tid, value, bytes, from, out);
}

}  // namespace emu

using emu::allocations;
using emu::memory_mutex;

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidValue; }

cudaError_t cudaMalloc(void** ptr, std::size_t bytes) {
  const std::size_t rounded = (bytes + 255) / 256 * 256;
  void* p = std::aligned_alloc(256, rounded == 0 ? 256 : rounded);
  if (!p) return cudaErrorMemoryAllocation;
  std::lock_guard<std::mutex> lock(memory_mutex);
  allocations[static_cast<unsigned char*>(p)] = bytes;
  EMU_POISON(p, bytes);
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  std::lock_guard<std::mutex> lock(memory_mutex);
  auto it = allocations.find(static_cast<unsigned char*>(ptr));
  if (it == allocations.end()) return cudaErrorInvalidValue;
  EMU_UNPOISON(ptr, it->second);
  allocations.erase(it);
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
  std::lock_guard<std::mutex> lock(memory_mutex);
  const bool device_src = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  const bool device_dst = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  if ((device_src && !emu::device_range(src, bytes)) || (device_dst && !emu::device_range(dst, bytes)))
    return cudaErrorInvalidValue;
  if (device_src) EMU_UNPOISON(src, bytes);
  if (device_dst) EMU_UNPOISON(dst, bytes);
  std::memmove(dst, src, bytes);
  if (device_src) EMU_POISON(src, bytes);
  if (device_dst) EMU_POISON(dst, bytes);
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaGetLastError() { return cudaSuccess; }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
  }
  return "unknown error";
}

#include "core/device.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include "cpu/parallel.hpp"
#include "juanji/bfloat16.hpp"
#include "ops/backend.hpp"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#else
#define ASAN_POISON_MEMORY_REGION(address, size) ((void)(address), (void)(size))
#define ASAN_UNPOISON_MEMORY_REGION(address, size) ((void)(address), (void)(size))
#endif

namespace juanji::device {

void check_available(Device device) {
  if (device.is_cpu()) return;
  if (!backend::kCudaCompiled)
    throw std::invalid_argument("device: " + device.str() +
                                " requested but juanji was built without CUDA (JUANJI_CUDA=OFF)");
  const int count = backend::cuda_device_count();
  check(device.index >= 0 && device.index < count, "device: ", device.str(), " is not available (",
        count, " CUDA device(s) visible)");
}

namespace {
std::atomic<std::uint64_t> allocations{0};

// Host blocks of 64 KiB and more come from segments mapped once and kept: a freed block joins
// its free neighbours and serves the next request of any size that fits (first fit: the free
// range lowest in memory that holds it). glibc hands such sizes back to the kernel on free, and
// the next call paid a page fault per 4 KiB touched (measured: max_pool2d_backward on 8x64x56x56
// took 1.3 ms, 0.45 ms of it in its kernels); an exact-size cache avoided that but left a training
// step's freed activations idle while its backward asked for gradients of other sizes. A segment
// holds at most a thousand free ranges of such blocks, so that the search stays short. Wholly
// free segments go back to the kernel, the longest idle first, while more than kMaxIdle bytes are
// free, so that memory a program stops using returns; the segment freed last stays, since the
// program is likely to ask for such a block again (an inference drops each activation once the
// next layer has read it: VGG-11 at batch 8 had mapped its 103 MB block anew on every call, page
// faults and all: 276-283 -> 283-294 ms). Under AddressSanitizer free ranges are poisoned, so that
// a read of a freed block is still caught.
class HostArena {
 public:
  static constexpr std::size_t kMinBlock = std::size_t{64} << 10;
  static constexpr std::size_t kSegment = std::size_t{64} << 20;
  static constexpr std::size_t kSegmentGranule = std::size_t{2} << 20;
  static constexpr std::size_t kMaxIdle = std::size_t{256} << 20;

  // A block of `size` bytes (a multiple of kAlignment), or null where the kernel has no memory;
  // `fresh` tells whether it reaches into memory no block has used before.
  void* take(std::size_t size, bool& fresh) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto fit = first_fit(size);
    if (fit == free_by_address_.end()) {
      if (!map_segment(size)) return nullptr;
      fit = first_fit(size);
    }
    const auto [start, range_size] = *fit;
    idle_.erase(std::remove(idle_.begin(), idle_.end(), start), idle_.end());
    remove_free(start, range_size);
    if (range_size > size) add_free(start + size, range_size - size);
    const auto segment = segment_of(start);
    const std::size_t end = static_cast<std::size_t>(start - segment->first) + size;
    fresh = end > segment->second.touched;
    if (fresh) segment->second.touched = end;
    ASAN_UNPOISON_MEMORY_REGION(start, size);
    return start;
  }

  void give(void* ptr, std::size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    char* start = static_cast<char*>(ptr);
    ASAN_POISON_MEMORY_REGION(start, size);
    const auto segment = segment_of(start);
    char* const home = segment->first;
    const std::size_t home_size = segment->second.size;
    // Join the free neighbours within the segment (segments may lie side by side in memory).
    const auto next = free_by_address_.find(start + size);
    if (next != free_by_address_.end() && start + size < home + home_size) {
      const std::size_t next_size = next->second;
      remove_free(start + size, next_size);
      size += next_size;
    }
    const auto after = free_by_address_.lower_bound(start);
    if (after != free_by_address_.begin()) {
      const auto before = std::prev(after);
      if (before->first >= home && before->first + before->second == start) {
        const std::size_t before_size = before->second;
        start = before->first;
        remove_free(start, before_size);
        size += before_size;
      }
    }
    add_free(start, size);
    if (size != home_size) return;
    idle_.push_back(start);
    for (auto oldest = idle_.begin(); free_bytes_ > kMaxIdle && *oldest != start;) {
      const auto idle = segments_.find(*oldest);
      const std::size_t idle_size = idle->second.size;
      remove_free(*oldest, idle_size);
      ASAN_UNPOISON_MEMORY_REGION(*oldest, idle_size);  // whatever maps these pages next owns them
      munmap(*oldest, idle_size);
      segments_.erase(idle);
      oldest = idle_.erase(oldest);
    }
  }

 private:
  struct Segment {  // keyed by its start address
    std::size_t size;
    std::size_t touched;  // bytes from the start that some block has used
  };

  bool map_segment(std::size_t size) {
    const std::size_t mapped =
        std::max(kSegment, (size + kSegmentGranule - 1) / kSegmentGranule * kSegmentGranule);
    void* start = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (start == MAP_FAILED) return false;
    char* bytes = static_cast<char*>(start);
    ASAN_POISON_MEMORY_REGION(bytes, mapped);
    segments_.emplace(bytes, Segment{mapped, 0});
    add_free(bytes, mapped);
    return true;
  }

  // The free range lowest in memory that holds size bytes: blocks stay packed low, in memory
  // already touched, where the smallest fit may lie beyond it.
  std::map<char*, std::size_t>::iterator first_fit(std::size_t size) {
    auto range = free_by_address_.begin();
    while (range != free_by_address_.end() && range->second < size) ++range;
    return range;
  }

  std::map<char*, Segment>::iterator segment_of(char* address) {
    return std::prev(segments_.upper_bound(address));
  }

  void add_free(char* start, std::size_t size) {
    free_by_address_.emplace(start, size);
    free_bytes_ += size;
  }

  void remove_free(char* start, std::size_t size) {
    free_by_address_.erase(start);
    free_bytes_ -= size;
  }

  std::mutex mutex_;
  std::map<char*, Segment> segments_;                  // by start address
  std::map<char*, std::size_t> free_by_address_;  // free ranges: start -> size
  std::size_t free_bytes_ = 0;
  std::vector<char*> idle_;  // wholly free segments, by start address, in the order they became so
};

HostArena& host_arena() {
  static auto* arena = new HostArena();  // never destroyed: tensors may outlive static teardown
  return *arena;
}

// Smaller blocks, from glibc, wait for the next request of their size (which a training step
// makes again, as it takes each layer's activations anew): found at once however many there are.
// Bounded, so that memory a program stops using goes back; poisoned under AddressSanitizer while
// they wait.
class SmallBlockCache {
 public:
  static constexpr std::size_t kMaxCached = std::size_t{64} << 20;

  void* take(std::size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = blocks_.find(size);
    if (it == blocks_.end()) return nullptr;
    void* ptr = it->second;
    blocks_.erase(it);
    cached_ -= size;
    ASAN_UNPOISON_MEMORY_REGION(ptr, size);
    return ptr;
  }

  // Keeps ptr for reuse, or frees it when the cache is full.
  void give(void* ptr, std::size_t size) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + size <= kMaxCached) {
        ASAN_POISON_MEMORY_REGION(ptr, size);
        blocks_.emplace(size, ptr);
        cached_ += size;
        return;
      }
    }
    std::free(ptr);
  }

 private:
  std::mutex mutex_;
  std::unordered_multimap<std::size_t, void*> blocks_;
  std::size_t cached_ = 0;
};

SmallBlockCache& small_blocks() {
  static auto* cache = new SmallBlockCache();  // never destroyed, as host_arena()
  return *cache;
}

}  // namespace

std::uint64_t allocation_count() { return allocations.load(); }

bool freed_blocks_are_reused(Device device) { return device.is_cpu(); }

std::shared_ptr<void> allocate(std::size_t nbytes, Device device) {
  check_available(device);
  if (nbytes > std::numeric_limits<std::size_t>::max() / 2) throw AllocationError(nbytes, "tensor storage");
  const std::size_t rounded = (nbytes + kAlignment - 1) / kAlignment * kAlignment;
  const std::size_t size = rounded == 0 ? kAlignment : rounded;
  if (device.is_cpu() && size >= HostArena::kMinBlock) {
    bool fresh = false;
    void* ptr = host_arena().take(size, fresh);
    if (!ptr) throw AllocationError(size, "tensor storage");
    if (fresh) ++allocations;
    return std::shared_ptr<void>(ptr, [size](void* p) { host_arena().give(p, size); });
  }
  if (device.is_cpu()) {
    void* ptr = small_blocks().take(size);
    if (!ptr) {
      ++allocations;
      ptr = std::aligned_alloc(kAlignment, size);
    }
    if (!ptr) throw AllocationError(size, "tensor storage");
    return std::shared_ptr<void>(ptr, [size](void* p) { small_blocks().give(p, size); });
  }
  ++allocations;
  const int index = device.index;
  void* ptr = backend::cuda_allocate(size, index);
  return std::shared_ptr<void>(ptr, [index](void* p) { backend::cuda_release(p, index); });
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, std::size_t n) {
  if (n == 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, n);
    return;
  }
  if (!backend::kCudaCompiled) return check_available(dst_device.is_cpu() ? src_device : dst_device);
  if (dst_device.is_cpu()) {
    backend::cuda_copy_to_host(dst, src, n, src_device.index);
  } else if (src_device.is_cpu()) {
    backend::cuda_copy_to_device(dst, src, n, dst_device.index);
  } else {
    check(dst_device == src_device, "copy between ", src_device.str(), " and ", dst_device.str(),
          " is not supported; go through the CPU");
    backend::cuda_copy_device_to_device(dst, src, n, dst_device.index);
  }
}

namespace {

template <class Dst, class Src>
void strided_copy_cpu(const Tensor& dst, const Tensor& src) {
  Dst* out = static_cast<Dst*>(dst.data_ptr());
  const Src* in = static_cast<const Src*>(src.data_ptr());
  const std::int64_t n = dst.numel();
  if (n == 0) return;
  // Large copies are shared out among the threads in contiguous ranges (a Concat's branches copied
  // into its output: SqueezeNet's 64x55x55 ones, 774 KB, took 65 us on one thread).
  constexpr std::int64_t kParallelElements = std::int64_t{1} << 16;
  const std::int64_t parts = n >= kParallelElements ? team_size() : 1;
  if (dst.is_contiguous() && src.is_contiguous()) {
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (parts > 1)
    for (std::int64_t part = 0; part < parts; ++part)
      for (std::int64_t i = n * part / parts, end = n * (part + 1) / parts; i < end; ++i)
        out[i] = static_cast<Dst>(in[i]);
    return;
  }
  // Rows of the last dimension, each part an odometer over the others from its first row on; the
  // innermost loop runs with plain strides.
  const std::size_t nd = dst.shape().size();
  const auto& shape = dst.shape();
  const std::int64_t inner = shape[nd - 1], rows = n / inner;
  const std::int64_t dst_inner = dst.strides()[nd - 1], src_inner = src.strides()[nd - 1];
  cpu::RegionErrors errors;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (parts > 1)
  for (std::int64_t part = 0; part < parts; ++part) errors.guard([&] {
    const std::int64_t first = rows * part / parts, end = rows * (part + 1) / parts;
    std::vector<std::int64_t> index(nd, 0);
    std::int64_t dst_off = 0, src_off = 0;
    for (std::size_t d = nd - 1, rest = std::size_t(first); d-- > 0;) {
      index[d] = std::int64_t(rest) % shape[d];
      rest /= std::size_t(shape[d]);
      dst_off += index[d] * dst.strides()[d];
      src_off += index[d] * src.strides()[d];
    }
    for (std::int64_t row = first; row < end; ++row) {
      for (std::int64_t i = 0; i < inner; ++i)
        out[dst_off + i * dst_inner] = static_cast<Dst>(in[src_off + i * src_inner]);
      for (std::size_t d = nd - 1; d-- > 0;) {
        dst_off += dst.strides()[d];
        src_off += src.strides()[d];
        if (++index[d] < shape[d]) break;
        dst_off -= dst.strides()[d] * shape[d];
        src_off -= src.strides()[d] * shape[d];
        index[d] = 0;
      }
    }
  });
  errors.rethrow();
}

template <class Dst>
void strided_copy_from(const Tensor& dst, const Tensor& src) {
  switch (src.dtype()) {
    case DType::float32: return strided_copy_cpu<Dst, float>(dst, src);
    case DType::float64: return strided_copy_cpu<Dst, double>(dst, src);
    case DType::int64: return strided_copy_cpu<Dst, std::int64_t>(dst, src);
    case DType::bfloat16: return strided_copy_cpu<Dst, bfloat16>(dst, src);
  }
}

template <class T>
void fill_cpu(const Tensor& dst, double value) {
  if (dst.is_contiguous()) {
    T* out = static_cast<T*>(dst.data_ptr());
    const T v = static_cast<T>(value);
    for (std::int64_t i = 0, n = dst.numel(); i < n; ++i) out[i] = v;
    return;
  }
  Tensor scalar = Tensor::full(dst.shape(), value, dst.dtype());
  strided_copy(dst, scalar);
}

}  // namespace

void strided_copy(const Tensor& dst, const Tensor& src) {
  if (dst.device().is_cuda()) return backend::cuda_strided_copy(dst, src);
  switch (dst.dtype()) {
    case DType::float32: return strided_copy_from<float>(dst, src);
    case DType::float64: return strided_copy_from<double>(dst, src);
    case DType::int64: return strided_copy_from<std::int64_t>(dst, src);
    case DType::bfloat16: return strided_copy_from<bfloat16>(dst, src);
  }
}

void fill(const Tensor& dst, double value) {
  if (dst.device().is_cuda()) return backend::cuda_fill(dst, value);
  switch (dst.dtype()) {
    case DType::float32: return fill_cpu<float>(dst, value);
    case DType::float64: return fill_cpu<double>(dst, value);
    case DType::int64: return fill_cpu<std::int64_t>(dst, value);
    case DType::bfloat16: return fill_cpu<bfloat16>(dst, value);
  }
}

}  // namespace juanji::device

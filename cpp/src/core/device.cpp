#include "core/device.hpp"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <unordered_map>

#include "juanji/bfloat16.hpp"
#include "ops/backend.hpp"

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

// Freed host blocks of 64 KiB and more wait here for a request of the same size: glibc hands such
// sizes back to the kernel on free, and the next call paid a page fault per 4 KiB touched
// (measured: max_pool2d_backward on 8x64x56x56 took 1.3 ms, 0.45 ms of it in its kernels). Bounded,
// so that memory a program stops using goes back. Off under AddressSanitizer, which must see
// every free.
class HostBlockCache {
 public:
  static constexpr std::size_t kMinBlock = std::size_t{64} << 10;
  static constexpr std::size_t kMaxCached = std::size_t{256} << 20;

  static bool enabled(std::size_t size) {
#if defined(__SANITIZE_ADDRESS__)
    (void)size;
    return false;
#else
    return size >= kMinBlock;
#endif
  }

  void* take(std::size_t size) {
    if (!enabled(size)) return nullptr;
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = blocks_.find(size);
    if (it == blocks_.end()) return nullptr;
    void* ptr = it->second;
    blocks_.erase(it);
    cached_ -= size;
    return ptr;
  }

  // Keeps ptr for reuse, or frees it when the cache is full.
  void give(void* ptr, std::size_t size) {
    if (enabled(size)) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + size <= kMaxCached) {
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

HostBlockCache& host_cache() {
  static auto* cache = new HostBlockCache();  // never destroyed: tensors may outlive static teardown
  return *cache;
}

}  // namespace

std::uint64_t allocation_count() { return allocations.load(); }

bool freed_blocks_are_reused(std::size_t nbytes, Device device) {
  return device.is_cpu() && HostBlockCache::enabled(nbytes);
}

std::shared_ptr<void> allocate(std::size_t nbytes, Device device) {
  check_available(device);
  if (nbytes > std::numeric_limits<std::size_t>::max() / 2) throw AllocationError(nbytes, "tensor storage");
  const std::size_t rounded = (nbytes + kAlignment - 1) / kAlignment * kAlignment;
  const std::size_t size = rounded == 0 ? kAlignment : rounded;
  if (device.is_cpu()) {
    void* ptr = host_cache().take(size);
    if (!ptr) {
      ++allocations;
      ptr = std::aligned_alloc(kAlignment, size);
    }
    if (!ptr) throw AllocationError(size, "tensor storage");
    return std::shared_ptr<void>(ptr, [size](void* p) { host_cache().give(p, size); });
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
  if (dst.is_contiguous() && src.is_contiguous()) {
    for (std::int64_t i = 0; i < n; ++i) out[i] = static_cast<Dst>(in[i]);
    return;
  }
  // Odometer over all but the last dimension; the innermost loop runs with plain strides.
  const std::size_t nd = dst.shape().size();
  const auto& shape = dst.shape();
  const std::int64_t inner = shape[nd - 1];
  const std::int64_t dst_inner = dst.strides()[nd - 1], src_inner = src.strides()[nd - 1];
  std::vector<std::int64_t> index(nd, 0);
  std::int64_t dst_off = 0, src_off = 0;
  for (std::int64_t done = 0; done < n; done += inner) {
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

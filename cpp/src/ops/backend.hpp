// Whether juanji was built with its CUDA backend, and the CUDA runtime calls of core/ (memory,
// copies, fills, device count, synchronisation) behind plain inline wrappers. With the other
// files of ops/ (which route each op to cpu:: or cuda::), the one place that tests
// JUANJI_WITH_CUDA. Private to the library.
//
// Without CUDA no tensor can live on a CUDA device (core/device.cpp's check_available refuses
// one), so the wrappers are never reached there: they do nothing and return nothing.
#pragma once

#include <cstddef>

#include "juanji/build_config.hpp"
#include "juanji/tensor.hpp"
#if JUANJI_WITH_CUDA
#include "cuda/cuda_backend.hpp"
#include "cuda/ops.hpp"
#endif

namespace juanji::backend {

inline constexpr bool kCudaCompiled = JUANJI_WITH_CUDA != 0;

#if JUANJI_WITH_CUDA

inline int cuda_device_count() { return cuda::device_count(); }
inline void* cuda_allocate(std::size_t nbytes, int device_index) {
  return cuda::allocate(nbytes, device_index);
}
inline void cuda_release(void* ptr, int device_index) { cuda::release(ptr, device_index); }
inline void cuda_copy_to_host(void* dst, const void* src, std::size_t n, int device_index) {
  cuda::copy_to_host(dst, src, n, device_index);
}
inline void cuda_copy_to_device(void* dst, const void* src, std::size_t n, int device_index) {
  cuda::copy_to_device(dst, src, n, device_index);
}
inline void cuda_copy_device_to_device(void* dst, const void* src, std::size_t n, int device_index) {
  cuda::copy_device_to_device(dst, src, n, device_index);
}
inline void cuda_strided_copy(const Tensor& dst, const Tensor& src) { cuda::strided_copy(dst, src); }
inline void cuda_fill(const Tensor& dst, double value) { cuda::fill(dst, value); }
inline void cuda_synchronize(int device_index) { cuda::synchronize(device_index); }

#else

inline int cuda_device_count() { return 0; }
inline void* cuda_allocate(std::size_t, int) { return nullptr; }
inline void cuda_release(void*, int) {}
inline void cuda_copy_to_host(void*, const void*, std::size_t, int) {}
inline void cuda_copy_to_device(void*, const void*, std::size_t, int) {}
inline void cuda_copy_device_to_device(void*, const void*, std::size_t, int) {}
inline void cuda_strided_copy(const Tensor&, const Tensor&) {}
inline void cuda_fill(const Tensor&, double) {}
inline void cuda_synchronize(int) {}

#endif

}  // namespace juanji::backend

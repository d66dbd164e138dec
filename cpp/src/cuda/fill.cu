// Element-wise kernels of the device layer: fill and strided copy with dtype conversion.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/check.cuh"
#include "cuda/cuda_backend.hpp"

namespace juanji::cuda {
namespace {

constexpr int kMaxDims = 8;

struct StridedLayout {
  int ndim;
  std::int64_t shape[kMaxDims];
  std::int64_t strides[kMaxDims];
};

StridedLayout layout_of(const Tensor& t) {
  check(t.dim() <= kMaxDims, "CUDA copy: at most ", kMaxDims, " dimensions, got shape ",
        shape_text(t.shape()));
  StridedLayout layout{};
  layout.ndim = static_cast<int>(t.dim());
  for (int d = 0; d < layout.ndim; ++d) {
    layout.shape[d] = t.shape()[d];
    layout.strides[d] = t.strides()[d];
  }
  return layout;
}

__device__ std::int64_t offset_of(std::int64_t linear, const StridedLayout& layout) {
  std::int64_t offset = 0;
  for (int d = layout.ndim - 1; d >= 0; --d) {
    offset += (linear % layout.shape[d]) * layout.strides[d];
    linear /= layout.shape[d];
  }
  return offset;
}

template <class T>
__global__ void fill_kernel(T* out, StridedLayout layout, std::int64_t n, T value) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    out[offset_of(i, layout)] = value;
}

template <class Dst, class Src>
__global__ void copy_kernel(Dst* out, StridedLayout dst, const Src* in, StridedLayout src,
                            std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    out[offset_of(i, dst)] = static_cast<Dst>(in[offset_of(i, src)]);
}

unsigned grid_for(std::int64_t n) {
  const std::int64_t blocks = (n + 255) / 256;
  return static_cast<unsigned>(blocks < 65535 ? blocks : 65535);
}

template <class T>
void fill_typed(const Tensor& dst, double value) {
  const std::int64_t n = dst.numel();
  if (n == 0) return;
  fill_kernel<T><<<grid_for(n), 256>>>(static_cast<T*>(dst.data_ptr()), layout_of(dst), n,
                                       static_cast<T>(value));
  JUANJI_CUDA_CHECK_LAUNCH();
}

template <class Dst, class Src>
void copy_typed(const Tensor& dst, const Tensor& src) {
  const std::int64_t n = dst.numel();
  if (n == 0) return;
  copy_kernel<Dst, Src><<<grid_for(n), 256>>>(static_cast<Dst*>(dst.data_ptr()), layout_of(dst),
                                              static_cast<const Src*>(src.data_ptr()),
                                              layout_of(src), n);
  JUANJI_CUDA_CHECK_LAUNCH();
}

template <class Dst>
void copy_from(const Tensor& dst, const Tensor& src) {
  switch (src.dtype()) {
    case DType::float32: return copy_typed<Dst, float>(dst, src);
    case DType::float64: return copy_typed<Dst, double>(dst, src);
    case DType::int64: return copy_typed<Dst, std::int64_t>(dst, src);
  }
}

}  // namespace

void fill(const Tensor& dst, double value) {
  JUANJI_CUDA_CHECK(cudaSetDevice(dst.device().index));
  switch (dst.dtype()) {
    case DType::float32: return fill_typed<float>(dst, value);
    case DType::float64: return fill_typed<double>(dst, value);
    case DType::int64: return fill_typed<std::int64_t>(dst, value);
  }
}

void strided_copy(const Tensor& dst, const Tensor& src) {
  JUANJI_CUDA_CHECK(cudaSetDevice(dst.device().index));
  switch (dst.dtype()) {
    case DType::float32: return copy_from<float>(dst, src);
    case DType::float64: return copy_from<double>(dst, src);
    case DType::int64: return copy_from<std::int64_t>(dst, src);
  }
}

}  // namespace juanji::cuda

// Element-wise kernels of the device layer: fill and strided copy with dtype conversion.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

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

// float64 -> float32 rounding to odd (truncate, then set the last bit if anything was dropped),
// in integer arithmetic: what juanji/bfloat16.hpp's float_rounded_to_odd does with host <cmath>,
// so float64 -> bfloat16 rounds once here too. NaN keeps its sign and upper payload, made quiet.
__device__ float float_rounded_to_odd_in_integers(double value) {
  std::uint64_t bits;
  memcpy(&bits, &value, sizeof bits);
  const std::uint32_t sign = static_cast<std::uint32_t>(bits >> 32) & 0x80000000u;
  const int exponent = static_cast<int>((bits >> 52) & 0x7ff);
  const std::uint64_t fraction = bits & ((std::uint64_t{1} << 52) - 1);
  std::uint32_t out;
  if (exponent == 0x7ff) {
    out = 0x7f800000u | (fraction ? 0x00400000u | static_cast<std::uint32_t>(fraction >> 29) : 0u);
  } else if (exponent - 1023 + 127 >= 0xff) {
    out = 0x7f7fffffu;  // past the largest float32, which is odd: it stays above every bfloat16 tie
  } else {
    const int float_exponent = exponent - 1023 + 127;
    const std::uint64_t significand = exponent ? fraction | (std::uint64_t{1} << 52) : fraction;
    // 52 fraction bits down to 23, and further into the float32 subnormals.
    const int shift = 29 + (float_exponent >= 1 ? 0 : 1 - float_exponent);
    const std::uint64_t kept = shift < 64 ? significand >> shift : 0;
    const bool dropped = shift < 64 ? (significand & ((std::uint64_t{1} << shift) - 1)) != 0 : significand != 0;
    // A normal's kept bits hold the implicit one at bit 23, replaced by the exponent; a
    // subnormal's are its fraction as they are.
    out = float_exponent >= 1 ? (static_cast<std::uint32_t>(float_exponent) << 23) |
                                    (static_cast<std::uint32_t>(kept) & 0x007fffffu)
                              : static_cast<std::uint32_t>(kept);
    out |= dropped ? 1u : 0u;
  }
  out |= sign;
  float result;
  memcpy(&result, &out, sizeof result);
  return result;
}

__device__ bfloat16 bfloat16_with_bits(std::uint16_t bits) {
  bfloat16 b;
  b.bits = bits;
  return b;
}

// Element conversions: static_cast, except to and from bfloat16, which go through its bits as
// on the host (juanji/bfloat16.hpp).
template <class Dst>
struct Convert {
  template <class Src>
  __device__ static Dst from(Src value) {
    return static_cast<Dst>(value);
  }
  __device__ static Dst from(bfloat16 value) { return static_cast<Dst>(float_from_bfloat16_bits(value.bits)); }
};

template <>
struct Convert<bfloat16> {
  __device__ static bfloat16 from(float value) { return bfloat16_with_bits(bfloat16_bits_from_float(value)); }
  __device__ static bfloat16 from(double value) { return from(float_rounded_to_odd_in_integers(value)); }
  __device__ static bfloat16 from(std::int64_t value) { return from(static_cast<double>(value)); }
  __device__ static bfloat16 from(bfloat16 value) { return value; }
};

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
    out[offset_of(i, dst)] = Convert<Dst>::from(in[offset_of(i, src)]);
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
    case DType::bfloat16: return copy_typed<Dst, bfloat16>(dst, src);
  }
}

}  // namespace

void fill(const Tensor& dst, double value) {
  JUANJI_CUDA_CHECK(cudaSetDevice(dst.device().index));
  switch (dst.dtype()) {
    case DType::float32: return fill_typed<float>(dst, value);
    case DType::float64: return fill_typed<double>(dst, value);
    case DType::int64: return fill_typed<std::int64_t>(dst, value);
    case DType::bfloat16: return fill_typed<bfloat16>(dst, value);  // rounded on the host
  }
}

void strided_copy(const Tensor& dst, const Tensor& src) {
  JUANJI_CUDA_CHECK(cudaSetDevice(dst.device().index));
  switch (dst.dtype()) {
    case DType::float32: return copy_from<float>(dst, src);
    case DType::float64: return copy_from<double>(dst, src);
    case DType::int64: return copy_from<std::int64_t>(dst, src);
    case DType::bfloat16: return copy_from<bfloat16>(dst, src);
  }
}

}  // namespace juanji::cuda

// Shared pieces of the CUDA op kernels: operand checks, launch sizes, device math matching the
// CPU's formulas, deterministic reductions, and scratch memory.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "cuda/check.cuh"
#include "juanji/ops/dense.hpp"
#include "juanji/tensor.hpp"

namespace juanji::cuda {

using index_t = std::int64_t;

constexpr int kBlockThreads = 256;

// ---- host side --------------------------------------------------------------------------

// Makes t's device current for the launches that follow.
void use_device_of(const Tensor& t);

// A kernel operand: defined, on `device` (a clear error naming both devices otherwise),
// contiguous, of `dtype` and `numel` elements.
void check_operand(const Tensor& t, const char* op, const char* name, Device device, DType dtype,
                   std::int64_t numel);

// Blocks for a grid-stride loop over n items: enough to fill the device, never above the limit
// of gridDim.x. A function of n only, so any work split by block is the same on every run.
unsigned grid_for(index_t n, int threads = kBlockThreads);
// Blocks for kernels that give each block one item (a filter, a channel, a plane) and stride
// over the rest.
unsigned blocks_for(index_t items);

__host__ __device__ inline index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

// Scratch device memory, one growing buffer per (host thread, device, slot): the buffers one op
// needs at once take different slots; ops run in order on the default stream, so the next op may
// reuse them.
enum class Scratch { first, second, third, count };
void* scratch(const Tensor& like, Scratch slot, std::size_t nbytes);

template <class T>
T* data_of(const Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

template <class T>
T* optional_data_of(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

// Calls f(T{}) with T = float or double (the caller has checked the dtype is a float one).
template <class F>
decltype(auto) with_float_type(DType dtype, F&& f) {
  if (dtype == DType::float64) return std::forward<F>(f)(double{});
  return std::forward<F>(f)(float{});
}

// ---- device side ------------------------------------------------------------------------

__device__ inline index_t global_thread() {
  return static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline index_t global_stride() { return static_cast<index_t>(gridDim.x) * blockDim.x; }

// a / b for a >= 0, b > 0: 32-bit division when both fit (the usual case), several times
// cheaper than the 64-bit division the index math would otherwise use.
__device__ inline index_t div_nonneg(index_t a, index_t b) {
  if (((a | b) >> 32) == 0)
    return static_cast<index_t>(static_cast<std::uint32_t>(a) / static_cast<std::uint32_t>(b));
  return a / b;
}

__device__ inline float exp_of(float v) { return expf(v); }
__device__ inline double exp_of(double v) { return exp(v); }
__device__ inline float log_of(float v) { return logf(v); }
__device__ inline double log_of(double v) { return log(v); }
__device__ inline float tanh_of(float v) { return tanhf(v); }
__device__ inline double tanh_of(double v) { return tanh(v); }

// 1 / (1 + e^-x) from e^-|x|: never overflows (the CPU's formula).
template <class T>
__device__ inline T sigmoid_of(T v) {
  const T e = exp_of(-fabs(v));
  const T s = T(1) / (T(1) + e);
  return v >= T(0) ? s : e * s;
}

// The CPU's activation formulas (cpu/dense.cpp); NaN in gives NaN out.
template <class T>
__device__ inline T activate(Activation kind, T slope, T v) {
  switch (kind) {
    case Activation::relu: return v < T(0) ? T(0) : v;
    case Activation::leaky_relu: return v > T(0) ? v : v * slope;
    case Activation::sigmoid: return sigmoid_of(v);
    case Activation::tanh: return tanh_of(v);
  }
  return v;
}

// Combines v over the block's threads in a fixed tree order (bit-identical on every run).
// Every thread of the block must call it; all get the result. `buffer` holds Threads values.
template <int Threads, class Acc, class Op>
__device__ Acc block_reduce(Acc v, Acc* buffer, Op op) {
  static_assert((Threads & (Threads - 1)) == 0, "block_reduce needs a power-of-two block");
  const int tid = threadIdx.x;
  buffer[tid] = v;
  __syncthreads();
  for (int half = Threads / 2; half > 0; half /= 2) {
    if (tid < half) buffer[tid] = op(buffer[tid], buffer[tid + half]);
    __syncthreads();
  }
  const Acc total = buffer[0];
  __syncthreads();  // the buffer may be reused right after
  return total;
}

struct Plus {
  template <class A>
  __device__ A operator()(A a, A b) const { return a + b; }
};
struct Min {
  template <class A>
  __device__ A operator()(A a, A b) const { return b < a ? b : a; }
};

template <int Threads, class Acc>
__device__ Acc block_sum(Acc v, Acc* buffer) {
  return block_reduce<Threads>(v, buffer, Plus{});
}

// Butterfly sum over a warp: every lane gets the same total, in a fixed order.
template <class Acc>
__device__ inline Acc warp_sum(Acc v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Largest value over a warp ignoring NaN unless all are NaN (the CPU's max_lanes rule: a NaN
// then propagates through exp instead).
template <class T>
__device__ inline T warp_max(T v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const T other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = other > v || v != v ? other : v;
  }
  return v;
}

}  // namespace juanji::cuda

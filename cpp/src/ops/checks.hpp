// Checks of the public ops' arguments, shared by the op files of ops/ (and cpu/signal.cpp):
// device, dtype, kernel-API tensors, dim wrapping. Each failure is a std::invalid_argument (or
// TypeError) naming the op and the argument. Private to the library.
#pragma once

#include <cstdint>

#include "juanji/tensor.hpp"
#include "ops/backend.hpp"

namespace juanji::ops {

// An op without a CUDA backend takes CPU tensors only; a CUDA tensor is a clear error, not a crash.
inline void require_cpu(const Tensor& t, const char* op, const char* name) {
  check(t.device().is_cpu(), op, ": ", name, " ", shape_text(t.shape()), " is on ",
        t.device().str(), "; ", op, " is not available on CUDA yet");
}

// Checks a float input of the functional API: defined, float32/float64, on the CPU.
inline void check_float_cpu(const Tensor& t, const char* op, const char* name) {
  check_float(t, name);
  require_cpu(t, op, name);
}

// The ops with a CUDA backend take CUDA tensors when juanji is built with CUDA (they route to
// cuda/ops.hpp); otherwise a CUDA tensor is a clear error, not a crash.
inline void require_supported_device(const Tensor& t, const char* op, const char* name) {
  if (backend::kCudaCompiled && t.device().is_cuda()) return;
  check(t.device().is_cpu(), op, ": ", name, " ", shape_text(t.shape()), " is on ",
        t.device().str(), " but juanji was built without CUDA (JUANJI_CUDA=OFF)");
}

// Checks a float input of a functional op that has a CUDA backend.
inline void check_float_operand(const Tensor& t, const char* op, const char* name) {
  check_float(t, name);
  require_supported_device(t, op, name);
}

// Checks a tensor handed to a kernel-API function: contiguous CPU storage of the expected dtype
// and element count, so a layer bug raises instead of reading out of bounds.
inline void check_kernel_tensor(const Tensor& t, const char* op, const char* name, DType dtype,
                                std::int64_t numel) {
  check(t.defined(), op, ": ", name, " is undefined");
  check(t.device().is_cpu() && t.is_contiguous(), op, ": ", name,
        " must be a contiguous CPU tensor, got shape ", shape_text(t.shape()), " on ",
        t.device().str());
  check_type(t.dtype() == dtype, op, ": ", name, " ", shape_text(t.shape()), " is ",
             dtype_name(t.dtype()), ", expected ", dtype_name(dtype));
  check(t.numel() == numel, op, ": ", name, " has shape ", shape_text(t.shape()), " (", t.numel(),
        " elements), expected ", numel, " elements");
}

inline std::int64_t wrap_dim(std::int64_t dim, std::int64_t ndim, const char* op, const Shape& shape) {
  const std::int64_t n = ndim == 0 ? 1 : ndim;
  check(dim >= -n && dim < n, op, ": dim ", dim, " is out of range for a tensor of shape ",
        shape_text(shape));
  return dim < 0 ? dim + n : dim;
}

}  // namespace juanji::ops

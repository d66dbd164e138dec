// Host-side entry points of the CUDA backend, callable from plain C++ translation units.
#pragma once

#include <cstddef>
#include <cstdint>

#include "juanji/tensor.hpp"

namespace juanji::cuda {

int device_count();
void* allocate(std::size_t nbytes, int device_index);
void release(void* ptr, int device_index);
void copy_to_host(void* dst, const void* src, std::size_t n, int device_index);
void copy_to_device(void* dst, const void* src, std::size_t n, int device_index);
void copy_device_to_device(void* dst, const void* src, std::size_t n, int device_index);

void strided_copy(const Tensor& dst, const Tensor& src);
void fill(const Tensor& dst, double value);

}  // namespace juanji::cuda

// CUDA memory management for the device layer (core/device.cpp calls these).
#include <cuda_runtime.h>

#include <string>

#include "cuda/check.cuh"
#include "cuda/cuda_backend.hpp"

namespace juanji::cuda {

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
  JUANJI_CUDA_CHECK(cudaMalloc(&ptr, nbytes));
  return ptr;
}

void release(void* ptr, int device_index) {
  // Runs from destructors: never throw, and ignore errors at interpreter shutdown.
  if (cudaSetDevice(device_index) == cudaSuccess) cudaFree(ptr);
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

// Turns CUDA errors into C++ exceptions (surfaced in Python as RuntimeError).
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace juanji::cuda {

inline void throw_on_error(cudaError_t status, const char* what, const char* file, int line) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error in ") + what + " (" + file + ":" +
                             std::to_string(line) + "): " + cudaGetErrorString(status));
}

}  // namespace juanji::cuda

#define JUANJI_CUDA_CHECK(expr) ::juanji::cuda::throw_on_error((expr), #expr, __FILE__, __LINE__)
// After each launch: launch errors always; execution errors too in debug builds (synchronises).
#ifdef NDEBUG
#define JUANJI_CUDA_CHECK_LAUNCH() JUANJI_CUDA_CHECK(cudaGetLastError())
#else
#define JUANJI_CUDA_CHECK_LAUNCH()            \
  do {                                         \
    JUANJI_CUDA_CHECK(cudaGetLastError());     \
    JUANJI_CUDA_CHECK(cudaDeviceSynchronize()); \
  } while (0)
#endif

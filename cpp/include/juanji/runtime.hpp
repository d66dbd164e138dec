// Build and run-time configuration: version, threads, SIMD level, CUDA availability.
#pragma once

#include <cstdint>
#include <string>

namespace juanji {

std::string version();

enum class SimdLevel { portable = 0, avx2 = 1, avx512 = 2 };
const char* simd_name(SimdLevel level);
SimdLevel simd_detected();  // best level this CPU supports
SimdLevel simd_level();     // level in use: detected, capped by JUANJI_SIMD or set_simd_level
// Caps the level (never above the detected one); returns the level now in use.
SimdLevel set_simd_level(SimdLevel level);

// Winograd F(2x2, 3x3) for the CPU's stride-1 3x3 float32 convolutions with 16+ channels in and
// out per group: 2.25x fewer multiplies, with rounding that differs from the direct sum's (exact
// for integer-valued data), and an infinite input can give NaN where the direct sum gives an
// infinity. On unless JUANJI_WINOGRAD=0; set_winograd returns the previous setting.
bool winograd_enabled();
bool set_winograd(bool enabled);

// Threads of every parallel region, process-wide (a thread started later uses the same number);
// starts at OpenMP's default (OMP_NUM_THREADS or the hardware's threads). set_num_threads takes
// 1..max_num_threads() and raises std::invalid_argument otherwise.
void set_num_threads(std::int64_t n);
int get_num_threads();
int max_num_threads();

// Concurrent callers (threads running model work at the same time, each marked by a
// ConcurrentCaller while it does) share the threads instead of each starting a full team: the
// parallel regions of each run with team_size() = get_num_threads() / callers threads, at least
// one. Two teams of a full size on the same cores spin against each other. Results do not depend
// on the team size. Nested marks on one thread count once.
class ConcurrentCaller {
 public:
  ConcurrentCaller();
  ~ConcurrentCaller();
  ConcurrentCaller(const ConcurrentCaller&) = delete;
  ConcurrentCaller& operator=(const ConcurrentCaller&) = delete;
};
int team_size();

// Tensor storages that took fresh memory since the library loaded (a CPU block that an earlier
// tensor gave back does not count): a training step after the first adds none.
std::uint64_t storage_allocations();

bool cuda_compiled();
int cuda_device_count();  // 0 when not compiled or no GPU is visible
// Waits until the GPU has finished all queued work (CUDA kernels run asynchronously); raises
// std::invalid_argument when the device is not available, std::runtime_error on a CUDA error.
void cuda_synchronize(int device_index = 0);

// Multi-line human-readable summary: version, compiler, threads, SIMD, CUDA.
std::string config_string();

}  // namespace juanji

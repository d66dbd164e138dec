#include "juanji/runtime.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <sstream>
#include <string>
#include <thread>

#include "juanji/build_config.hpp"
#include "juanji/distributed.hpp"
#include "core/device.hpp"
#include "juanji/error.hpp"
#include "ops/backend.hpp"
#if JUANJI_OPENMP
#include <omp.h>
#endif

namespace juanji {

std::string version() { return JUANJI_VERSION_STRING; }

const char* simd_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::portable: return "portable";
    case SimdLevel::avx2: return "avx2";
    case SimdLevel::avx512: return "avx512";
  }
  return "?";
}

SimdLevel simd_detected() {
#if defined(JUANJI_HAVE_X86_KERNELS) && (defined(__GNUC__) || defined(__clang__))
  static const SimdLevel detected = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
      return SimdLevel::avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SimdLevel::avx2;
    return SimdLevel::portable;
  }();
  return detected;
#else
  return SimdLevel::portable;
#endif
}

namespace {

SimdLevel parse_simd(const std::string& text) {
  if (text == "portable") return SimdLevel::portable;
  if (text == "avx2") return SimdLevel::avx2;
  if (text == "avx512") return SimdLevel::avx512;
  throw std::invalid_argument("JUANJI_SIMD: expected portable, avx2 or avx512, got '" + text + "'");
}

SimdLevel initial_level() {
  SimdLevel level = simd_detected();
  if (const char* env = std::getenv("JUANJI_SIMD"); env && *env) {
    const SimdLevel asked = parse_simd(env);
    if (asked < level) level = asked;
  }
  return level;
}

std::atomic<int>& level_in_use() {
  static std::atomic<int> level{static_cast<int>(initial_level())};
  return level;
}

}  // namespace

SimdLevel simd_level() { return static_cast<SimdLevel>(level_in_use().load()); }

SimdLevel set_simd_level(SimdLevel level) {
  const SimdLevel capped = level < simd_detected() ? level : simd_detected();
  level_in_use().store(static_cast<int>(capped));
  return capped;
}

namespace {

std::atomic<bool>& winograd_in_use() {
  static std::atomic<bool> enabled{[] {
    const char* env = std::getenv("JUANJI_WINOGRAD");
    if (!env || !*env) return true;
    const std::string text = env;
    if (text == "0") return false;
    if (text == "1") return true;
    throw std::invalid_argument("JUANJI_WINOGRAD: expected 0 or 1, got '" + text + "'");
  }()};
  return enabled;
}

}  // namespace

bool winograd_enabled() { return winograd_in_use().load(); }

bool set_winograd(bool enabled) { return winograd_in_use().exchange(enabled); }

namespace {

int hardware_threads() {
#if JUANJI_OPENMP
  return std::max(omp_get_num_procs(), 1);
#else
  return std::max(static_cast<int>(std::thread::hardware_concurrency()), 1);
#endif
}

// One value for the whole process: OpenMP's own setting belongs to the thread that makes it, so
// every region of ours names this team size instead (a thread started later sees it too).
std::atomic<int>& thread_count() {
#if JUANJI_OPENMP
  static std::atomic<int> count{std::min(omp_get_max_threads(), max_num_threads())};
#else
  static std::atomic<int> count{1};
#endif
  return count;
}

}  // namespace

int max_num_threads() { return std::max(64, 4 * hardware_threads()); }

void set_num_threads(std::int64_t n) {
  check(n >= 1 && n <= max_num_threads(), "set_num_threads: n must be between 1 and ",
        max_num_threads(), " (4 per hardware thread, at least 64), got ", n);
#if JUANJI_OPENMP
  thread_count().store(static_cast<int>(n));
#endif
}

int get_num_threads() { return thread_count().load(std::memory_order_relaxed); }

namespace {

std::atomic<int> concurrent_callers{0};
thread_local int caller_depth = 0;

}  // namespace

ConcurrentCaller::ConcurrentCaller() {
  if (caller_depth++ == 0) concurrent_callers.fetch_add(1, std::memory_order_relaxed);
}

ConcurrentCaller::~ConcurrentCaller() {
  if (--caller_depth == 0) concurrent_callers.fetch_sub(1, std::memory_order_relaxed);
}

int team_size() {
  const int threads = get_num_threads();
  const int callers = concurrent_callers.load(std::memory_order_relaxed);
  return callers > 1 ? std::max(1, threads / callers) : threads;
}

std::uint64_t storage_allocations() { return device::allocation_count(); }

bool cuda_compiled() { return backend::kCudaCompiled; }

int cuda_device_count() { return backend::cuda_device_count(); }

void cuda_synchronize(int device_index) {
  device::check_available({DeviceType::cuda, device_index});
  backend::cuda_synchronize(device_index);
}

std::string config_string() {
  std::ostringstream out;
  out << "juanji " << version() << "\n"
      << "  compiler:     " << JUANJI_CXX_COMPILER << "\n"
      << "  openmp:       " << (JUANJI_OPENMP ? "yes" : "no") << ", threads " << get_num_threads()
      << "\n"
      << "  simd:         detected " << simd_name(simd_detected()) << ", in use "
      << simd_name(simd_level()) << "\n"
      << "  winograd:     " << (winograd_enabled() ? "on" : "off") << " (stride-1 3x3 float32 convolutions)\n"
      << "  bfloat16:     the CPU has AVX512-BF16: " << (__builtin_cpu_supports("avx512bf16") ? "yes" : "no")
      << "; bf16 computes on the float32 kernels of the SIMD level in use (operands rounded, float32 sums)\n"
      << "  cuda:         compiled " << (cuda_compiled() ? "yes" : "no") << ", devices visible "
      << cuda_device_count() << "\n"
      << "  mpi:          " << (distributed::compiled() ? "compiled yes, " + distributed::library_version()
                                                        : std::string("compiled no"))
      << "\n";
  return out.str();
}

}  // namespace juanji

// What every OpenMP region of the CPU backend shares: its team size (team_size(): the process-wide
// set_num_threads value, shared out among concurrent callers, passed to each region as
// num_threads) and a way to carry exceptions out.
#pragma once

#include <atomic>
#include <exception>
#include <mutex>
#include <utility>

#include "juanji/runtime.hpp"

namespace juanji::cpu {

// An exception cannot leave an OpenMP region: the runtime would terminate the process. Loop
// bodies that can throw (scratch allocation, mostly) run through guard(), which keeps the first
// exception and skips the remaining iterations; rethrow() raises it once the region has ended.
class RegionErrors {
 public:
  template <class Body>
  void guard(Body&& body) noexcept {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      std::forward<Body>(body)();
    } catch (...) {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
    }
  }
  bool failed() const { return failed_.load(std::memory_order_relaxed); }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::atomic<bool> failed_{false};
  std::mutex mutex_;
  std::exception_ptr error_;
};

}  // namespace juanji::cpu

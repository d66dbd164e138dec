// Helpers shared by the CPU kernel files: the parallel grain, dtype dispatch, optional data
// pointers. The checks of the ops' arguments live in ops/checks.hpp. Private to the library.
#pragma once

#include <cstdint>
#include <utility>

#include "cpu/parallel.hpp"
#include "juanji/tensor.hpp"

namespace juanji::cpu {

// Work below this many elements runs on one thread: a parallel region costs more than it saves.
constexpr std::int64_t kParallelGrain = 1 << 15;

// t's data, or null for an undefined (optional) tensor.
template <class T>
T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

// Calls f(T{}) with T = float or double according to dtype (the caller has checked it is float).
template <class F>
decltype(auto) dispatch_float(DType dtype, F&& f) {
  if (dtype == DType::float64) return std::forward<F>(f)(double{});
  return std::forward<F>(f)(float{});
}

}  // namespace juanji::cpu

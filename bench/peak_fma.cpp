// The machine's fp32 peak as the benchmarks quote it: every thread runs independent chains of
// 512-bit fused multiply-adds (12 chains hide the FMA latency), nothing else. This file alone is
// compiled with AVX-512 flags; it only runs where the CPU has AVX-512.
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include "juanji/runtime.hpp"

namespace {

constexpr int kChains = 12;
constexpr long kIterations = 1 << 20;

float fma_chains() {
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512 scale = _mm512_set1_ps(0.999999f), shift = _mm512_set1_ps(1e-6f);
  for (long it = 0; it < kIterations; ++it)
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], scale, shift);
  __m512 sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum = _mm512_add_ps(sum, acc[i]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, sum);
  float total = 0;
  for (float lane : lanes) total += lane;
  return total;
}

void bench_fma_peak(benchmark::State& state) {
  const int threads = juanji::get_num_threads();
  for (auto _ : state) {
    float total = 0;
#pragma omp parallel for reduction(+ : total) num_threads(threads)
    for (int t = 0; t < threads; ++t) total += fma_chains();
    benchmark::DoNotOptimize(total);
  }
  const double flops = 2.0 * 16 * kChains * kIterations * threads;
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::kIs1000);
}

}  // namespace

void register_peak_benchmark() {
  if (juanji::simd_detected() == juanji::SimdLevel::avx512)
    benchmark::RegisterBenchmark("peak/fma_avx512", bench_fma_peak)->UseRealTime();
}

// Google Benchmark micro-benchmarks for every CPU kernel, at every SIMD level this CPU has.
// Counters: FLOP/s for compute kernels (for convolutions, the direct sum's FLOPs: Winograd's rate
// is an effective one, and `_direct` runs the same layer with Winograd off), bytes/s for
// memory-bound ones.
//   cmake -B build/bench -DJUANJI_BUILD_BENCH=ON -DJUANJI_CUDA=OFF && cmake --build build/bench -j2
//   build/bench/bench/juanji_bench --benchmark_filter=conv
#include <benchmark/benchmark.h>

#include <string>

#include "cpu/gemm.hpp"
#include "juanji/juanji.hpp"

#if JUANJI_BENCH_PEAK
void register_peak_benchmark();  // peak_fma.cpp
#endif

namespace {

using namespace juanji;

struct ConvCase {
  const char* name;
  std::int64_t N, C, H, W, K, R, stride, pad;
};

const ConvCase kConvCases[] = {
    {"lenet_c1", 64, 1, 28, 28, 6, 5, 1, 2},    {"lenet_c2", 64, 6, 14, 14, 16, 5, 1, 0},
    {"cifar_c1", 64, 3, 32, 32, 32, 3, 1, 1},   {"cifar_c2", 64, 32, 16, 16, 64, 3, 1, 1},
    {"res_64", 8, 64, 56, 56, 64, 3, 1, 1},     {"res_128", 8, 128, 28, 28, 128, 3, 1, 1},
    {"res_256", 8, 256, 14, 14, 256, 3, 1, 1},  {"pw", 8, 256, 56, 56, 64, 1, 1, 0},
    {"stem", 4, 3, 224, 224, 64, 7, 2, 3},      {"convnet_c1", 64, 1, 28, 28, 32, 3, 1, 1},
    {"convnet_c2", 64, 32, 14, 14, 64, 3, 1, 1},
};

const SimdLevel kLevels[] = {SimdLevel::portable, SimdLevel::avx2, SimdLevel::avx512};

void set_rate(benchmark::State& state, double flops, double bytes) {
  using benchmark::Counter;
  if (flops > 0) state.counters["FLOP/s"] = Counter(flops, Counter::kIsIterationInvariantRate, Counter::kIs1000);
  if (bytes > 0) state.counters["bytes/s"] = Counter(bytes, Counter::kIsIterationInvariantRate, Counter::kIs1000);
}

enum class ConvPass { forward, backward_data, backward_weight };

void bench_conv(benchmark::State& state, ConvCase c, ConvPass pass, SimdLevel level, bool winograd) {
  set_simd_level(level);
  set_winograd(winograd);
  ConvOptions options;
  options.stride = {c.stride};
  options.padding = PaddingSpec::of({c.pad});
  const Tensor x = randn({c.N, c.C, c.H, c.W}), w = randn({c.K, c.C, c.R, c.R}), b = randn({c.K});
  const ConvGeometry g = ConvGeometry::make(x.shape(), w.shape(), options, 2);
  Tensor y = Tensor::empty(g.output_shape()), dy = randn(g.output_shape());
  Tensor dx = Tensor::empty(x.shape()), dw = Tensor::empty(w.shape()), db = Tensor::empty({c.K});
  for (auto _ : state) {
    switch (pass) {
      case ConvPass::forward: conv_forward(g, x, w, b, y); break;
      case ConvPass::backward_data: conv_backward_data(g, dy, w, dx); break;
      case ConvPass::backward_weight: conv_backward_weight(g, dy, x, dw, db); break;
    }
    benchmark::ClobberMemory();
  }
  set_rate(state, g.flops(), 0);
  set_simd_level(simd_detected());
  set_winograd(true);
}

void bench_gemm(benchmark::State& state, SimdLevel level) {
  set_simd_level(level);
  const std::int64_t n = state.range(0);
  const Tensor a = randn({n, n}), b = randn({n, n});
  Tensor c = Tensor::empty({n, n});
  for (auto _ : state) {
    cpu::gemm<float>(n, n, n, {a.data<float>(), n, 1}, {b.data<float>(), n, 1}, c.data<float>(), n, false, true);
    benchmark::ClobberMemory();
  }
  set_rate(state, 2.0 * n * n * n, 0);
  set_simd_level(simd_detected());
}

void bench_pool(benchmark::State& state, bool max, bool backward) {
  PoolOptions options;
  options.kernel = {2};
  const Tensor x = randn({8, 64, 56, 56});
  const PoolGeometry g = PoolGeometry::make(x.shape(), options, 2, "pool");
  Tensor y = Tensor::empty(g.output_shape()), argmax = Tensor::empty(g.output_shape(), DType::int64);
  Tensor dx = Tensor::empty(x.shape());
  if (max) max_pool_forward(g, x, y, argmax);
  for (auto _ : state) {
    if (max && !backward) max_pool_forward(g, x, y, argmax);
    if (max && backward) max_pool_backward(g, y, argmax, dx);
    if (!max && !backward) avg_pool_forward(g, x, y);
    if (!max && backward) avg_pool_backward(g, y, dx);
    benchmark::ClobberMemory();
  }
  set_rate(state, 0, static_cast<double>(x.numel() + y.numel()) * sizeof(float));
}

// Batch norm (training), ReLU and 2x2 max pooling on the convnet's first block (64x32x28x28):
// as the fused pass a Sequential runs, or as the separate kernels. bytes/s counts what the fused
// pass must move (x and the pooled output; backward x twice, the pooled gradient and grad_x).
void bench_norm_pool(benchmark::State& state, bool fused, bool backward) {
  PoolOptions options;
  options.kernel = {2};
  const Tensor x = randn({64, 32, 28, 28}), gamma = randn({32}), beta = randn({32});
  Tensor running_mean = Tensor::zeros({32}), running_var = Tensor::full({32}, 1.0);
  Tensor mean = Tensor::empty({32}), invstd = Tensor::empty({32});
  const PoolGeometry g = PoolGeometry::make(x.shape(), options, 2, "pool");
  Tensor normalized = Tensor::empty(x.shape()), y = Tensor::empty(g.output_shape());
  Tensor argmax = Tensor::empty(g.output_shape(), DType::int64), dy = randn(g.output_shape());
  Tensor affine = Tensor::empty({32, 2});
  Tensor grad_normalized = Tensor::empty(x.shape()), dx = Tensor::empty(x.shape());
  Tensor dgamma = Tensor::empty({32}), dbeta = Tensor::empty({32}), dx_sums = Tensor::empty({32});
  auto forward = [&] {
    if (fused) {
      batch_norm2d_relu_max_pool_forward(x, gamma, beta, running_mean, running_var, true, 0.1, 1e-5, g, y,
                                         affine, mean, invstd);
    } else {
      batch_norm2d_forward(x, gamma, beta, running_mean, running_var, true, 0.1, 1e-5, normalized, mean,
                           invstd, true);
      max_pool_forward(g, normalized, y, argmax);
    }
  };
  forward();
  for (auto _ : state) {
    if (!backward) {
      forward();
    } else if (fused) {
      batch_norm2d_relu_max_pool_backward(g, dy, affine, x, gamma, mean, invstd, dx, dgamma, dbeta, &dx_sums);
    } else {
      max_pool_relu_backward(g, dy, argmax, y, grad_normalized);
      batch_norm2d_backward(grad_normalized, x, gamma, mean, invstd, dx, dgamma, dbeta, &dx_sums);
    }
    benchmark::ClobberMemory();
  }
  const double pooled_bytes = static_cast<double>(y.numel()) * sizeof(float);
  const double x_bytes = static_cast<double>(x.numel()) * sizeof(float);
  set_rate(state, 0, backward ? 3 * x_bytes + pooled_bytes : x_bytes + pooled_bytes);
}

void bench_linear(benchmark::State& state) {
  const Tensor x = randn({256, 3136}), w = randn({128, 3136}), b = randn({128});
  Tensor y = Tensor::empty({256, 128});
  for (auto _ : state) {
    linear_forward(x, w, b, y);
    benchmark::ClobberMemory();
  }
  set_rate(state, 2.0 * 256 * 3136 * 128, 0);
}

void bench_relu(benchmark::State& state) {
  const Tensor x = randn({64, 32, 28, 28});
  Tensor y = Tensor::empty(x.shape());
  for (auto _ : state) {
    activation_forward_into(Activation::relu, 0.0, x, y);
    benchmark::ClobberMemory();
  }
  set_rate(state, 0, 2.0 * x.numel() * sizeof(float));
}

void register_all() {
#if JUANJI_BENCH_PEAK
  register_peak_benchmark();
#endif
  for (SimdLevel level : kLevels) {
    if (level > simd_detected()) continue;
    const std::string isa = simd_name(level);
    benchmark::RegisterBenchmark(("gemm/" + isa).c_str(), bench_gemm, level)->Arg(256)->Arg(1024)->UseRealTime();
    for (const ConvCase& c : kConvCases) {
      const std::string base = std::string("conv/") + c.name + "/" + isa;
      const bool winograd_layer = c.R == 3 && c.stride == 1 && c.C >= 16 && c.K >= 16;
      for (const bool winograd : {true, false}) {
        if (!winograd && !winograd_layer) continue;
        const std::string suffix = winograd ? "" : "_direct";
        benchmark::RegisterBenchmark((base + "/fwd" + suffix).c_str(), bench_conv, c, ConvPass::forward, level, winograd)
            ->UseRealTime();
        benchmark::RegisterBenchmark((base + "/bwd_data" + suffix).c_str(), bench_conv, c, ConvPass::backward_data, level,
                                     winograd)
            ->UseRealTime();
        benchmark::RegisterBenchmark((base + "/bwd_weight" + suffix).c_str(), bench_conv, c, ConvPass::backward_weight,
                                     level, winograd)
            ->UseRealTime();
      }
    }
  }
  benchmark::RegisterBenchmark("pool/max/fwd", bench_pool, true, false)->UseRealTime();
  benchmark::RegisterBenchmark("pool/max/bwd", bench_pool, true, true)->UseRealTime();
  benchmark::RegisterBenchmark("pool/avg/fwd", bench_pool, false, false)->UseRealTime();
  benchmark::RegisterBenchmark("pool/avg/bwd", bench_pool, false, true)->UseRealTime();
  for (const bool fused : {false, true}) {
    const std::string base = std::string("norm_relu_pool/") + (fused ? "fused" : "apart");
    benchmark::RegisterBenchmark((base + "/fwd").c_str(), bench_norm_pool, fused, false)->UseRealTime();
    benchmark::RegisterBenchmark((base + "/bwd").c_str(), bench_norm_pool, fused, true)->UseRealTime();
  }
  benchmark::RegisterBenchmark("linear/256x3136x128", bench_linear)->UseRealTime();
  benchmark::RegisterBenchmark("relu/1.6M", bench_relu)->UseRealTime();
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

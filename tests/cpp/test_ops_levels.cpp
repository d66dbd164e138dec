// The kernels reachable only through the library's entry points, at every SIMD level this CPU
// runs, against the plain-loop references (cpu/ref/), by the self-test's checks
// (selftest/op_checks.hpp) on many more cases than the self-test's: every convolution algorithm
// that takes a problem (forced by set_conv_algorithm; conv_algorithms lists them), with and
// without the fused ReLU, in float32 and float64; the blocked GEMM (cpu/gemm.hpp) with plain and
// transposed operands; max and average pooling and their gradients; batch norm forward and
// backward, and fused with a ReLU and max pooling. Shapes are picked to reach each algorithm's
// inner paths (image lanes, Winograd's row pairs, chunks and halves, filter-block tails, stride
// phases) at every vector width. Integer-valued data must come out bit for bit, uniform data
// within a tolerance; pooling bit for bit always. Also: the self-test itself passes, and its
// checker fails a wrong result.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "juanji/juanji.hpp"
#include "kernel_check.hpp"
#include "selftest/op_checks.hpp"

namespace {

using namespace kernel_check;
using namespace juanji;
using namespace juanji::selftest;

std::vector<ConvCase> conv_cases() {
  return {
      // Few input channels: the direct kernel, its data gradient in the image lanes where the
      // planes are narrower than a vector and there are half a vector of images (W 3, 7, 14).
      {"lenet_c1", {8, 1, 12, 14}, {6, 1, 5, 5}, conv_options({1}, {2}), 2},
      {"narrow_portable", {3, 2, 5, 3}, {3, 2, 3, 3}, conv_options({1}, {1}), 2},
      {"narrow_avx2", {5, 2, 6, 7}, {3, 2, 3, 3}, conv_options({1}, {1}), 2},
      {"dilated_direct", {2, 3, 11, 13}, {5, 3, 3, 3}, conv_options({1}, {2}, {2}), 2},
      {"lenet_c2", {4, 6, 14, 14}, {16, 6, 5, 5}, conv_options({1}, {0}), 2},
      // Winograd: row pairs on small planes, odd outputs, several blocks of filters, chunks of
      // tiles, the weight gradient by halves and shared out, groups.
      {"winograd_small", {2, 16, 4, 4}, {16, 16, 3, 3}, conv_options({1}, {1}), 2},
      {"winograd_odd", {1, 16, 7, 5}, {17, 16, 3, 3}, conv_options({1}, {1}), 2},
      {"winograd_valid", {2, 16, 8, 9}, {16, 16, 3, 3}, conv_options({1}, {0}), 2},
      {"winograd_chunks", {2, 16, 24, 22}, {16, 16, 3, 3}, conv_options({1}, {1}), 2},
      {"winograd_shared", {1, 96, 6, 6}, {16, 96, 3, 3}, conv_options({1}, {1}), 2},
      {"winograd_groups", {2, 32, 8, 8}, {32, 16, 3, 3}, conv_options({1}, {1}, {1}, 2), 2},
      // Filter blocks, strided phases and GEMM.
      {"filter_blocks_strided", {2, 6, 9, 11}, {12, 6, 3, 3}, conv_options({2}, {1}), 2},
      {"filter_blocks", {2, 9, 7, 8}, {8, 9, 3, 3}, conv_options({1}, {1}), 2},
      {"filter_blocks_dilated", {2, 8, 10, 10}, {10, 8, 3, 3}, conv_options({1}, {2}, {2}), 2},
      {"stem", {2, 3, 16, 16}, {8, 3, 7, 7}, conv_options({2}, {3}), 2},
      {"strided_dilated", {2, 3, 11, 9}, {4, 3, 3, 2}, conv_options({2, 3}, {1, 2}, {2, 1}), 2},
      // GEMM's batches of images in parallel (a plane of 2048+ outputs each), and packing
      // straight from x (an im2col matrix of 2^20+ elements; strided for the weight gradient).
      {"gemm_batches", {2, 1, 46, 46}, {2, 1, 3, 3}, conv_options({1}, {1}), 2},
      {"gemm_implicit", {2, 64, 46, 46}, {4, 64, 3, 3}, conv_options({1}, {1}), 2},
      {"gemm_implicit_strided", {2, 128, 46, 46}, {4, 128, 3, 3}, conv_options({1, 2}, {1}), 2},
      {"pointwise", {2, 8, 5, 6}, {8, 8, 1, 1}, conv_options({1}, {0}), 2},
      {"pointwise_strided", {2, 8, 5, 6}, {9, 8, 1, 1}, conv_options({2}, {0}), 2},
      {"groups", {2, 6, 7, 7}, {6, 2, 3, 3}, conv_options({1}, {1}, {1}, 3), 2},
      // One filter per channel: the depthwise kernels, 3x3 at strides 1 and 2 (rows of one vector
      // and of several), other sizes, dilation and cropping padding.
      {"depthwise", {2, 4, 6, 6}, {4, 1, 3, 3}, conv_options({1}, {1}, {1}, 4), 2},
      {"depthwise_strided", {3, 5, 11, 37}, {5, 1, 3, 3}, conv_options({2}, {1}, {1}, 5), 2},
      {"depthwise_5x4_dilated", {2, 3, 13, 12}, {3, 1, 5, 4}, conv_options({1, 2}, {4, 3}, {2, 1}, 3), 2},
      {"depthwise_conv1d", {2, 6, 1, 29}, {6, 1, 1, 3}, conv_options({2}, {1}, {1}, 6), 1},
      {"same_even_kernel", {2, 3, 8, 8}, {4, 3, 4, 4}, same_padding(), 2},
      {"huge_dilation", {1, 1, 2, 2}, {1, 1, 2, 2}, conv_options({1}, {50}, {100}), 2},
      {"conv1d_strided", {3, 4, 1, 20}, {6, 4, 1, 5}, conv_options({2}, {2}), 1},
      {"conv1d", {2, 2, 1, 17}, {3, 2, 1, 3}, conv_options({1}, {1}), 1},
  };
}

std::vector<GemmShape> gemm_shapes() {
  // Tails of every panel width, K past a block (256), M past a block of A panels, N past a block
  // of B panels at every width.
  return {{1, 1, 1}, {4, 5, 0}, {5, 7, 3}, {6, 16, 8}, {7, 17, 9}, {13, 33, 40}, {150, 20, 300}, {3, 2100, 5}};
}

std::vector<PoolCase> pool_cases() {
  return {
      {{2, 3, 8, 10}, {2}, {}, {0}, false, true},          // plain 2x2 windows
      {{2, 3, 7, 9}, {2}, {}, {0}, false, true},           // a row and a column outside them
      {{1, 2, 7, 9}, {2}, {}, {0}, true, true},            // ceil mode: partial windows
      {{1, 2, 4, 70}, {2}, {}, {0}, false, true},          // rows of several vectors of windows
      {{2, 2, 9, 8}, {3}, {2}, {1}, false, true},
      {{2, 2, 6, 7}, {3}, {1}, {1}, false, false},
      {{1, 3, 8, 9}, {2, 3}, {1, 2}, {1, 1}, true, false},
      {{1, 2, 9, 10}, {3}, {2}, {1}, true, true},
      {{2, 3, 17}, {3}, {2}, {1}, true, true},             // 1-d
  };
}

std::vector<Shape> norm_shapes() { return {{3, 5, 8, 8}, {2, 3, 7, 9}, {4, 2, 1, 31}, {2, 2, 4, 8}, {1, 3, 5, 7}}; }

// The fused batch norm + ReLU + max pooling: its 2x2 kernel on planes of one and several vectors
// of windows, even and odd, and the general path.
std::vector<Shape> fused_norm_shapes() { return {{2, 3, 8, 10}, {1, 2, 7, 9}, {2, 2, 4, 70}}; }
std::vector<PoolCase> fused_pools() {
  return {{{}, {2}, {}, {0}, false, true}, {{}, {3}, {2}, {1}, true, true}, {{}, {2}, {1}, {0}, false, true}};
}

// The checker fails a result off by one unit in the last place, and a NaN for a number.
void test_checker_fails() {
  Checker checker;
  const std::vector<float> got{1.0f, std::nextafter(2.0f, 3.0f)};
  const std::vector<double> want{1.0, 2.0}, magnitude{1.0, 2.0};
  expect(!checker.close("op", "one ulp off", got, want, magnitude, 0.0), "the checker fails a result one ulp off");
  expect(checker.close("op", "within a tolerance", got, want, magnitude, 1e-6), "the checker takes it within 1e-6");
  const std::vector<float> nan{1.0f, std::numeric_limits<float>::quiet_NaN()};
  expect(!checker.close("op", "NaN", nan, want, magnitude, 1e-6), "the checker fails a NaN for a number");
  expect(checker.rows().size() == 1 && !checker.rows()[0].ok && checker.rows()[0].failure.find("one ulp off") !=
                                                                     std::string::npos,
         "the failed row names its first failed check");
}

// Every row of the shipped self-test passes, at every level this CPU runs.
void test_selftest() {
  const std::vector<SelftestRow> rows = run_selftest();
  std::vector<std::string> levels;
  for (const SelftestRow& row : rows) {
    expect(row.ok, "selftest " + row.level + " " + row.op + ": " + row.failure);
    expect(std::isfinite(row.max_error) && row.max_error <= row.tolerance && row.tolerance <= 1e-4,
           "selftest " + row.level + " " + row.op + " reports an error within a small tolerance");
    if (std::find(levels.begin(), levels.end(), row.level) == levels.end()) levels.push_back(row.level);
  }
  expect(levels.size() == kernel_check::supported_levels().size(), "selftest runs every level");
  expect(simd_level() == simd_detected(), "selftest restores the level in use");
}

}  // namespace

int main() {
  Checker checker = printing_checker();
  set_winograd(true);
  Data data(2024);
  const std::vector<SimdLevel>& levels = kernel_check::supported_levels();
  // The references once per case, the library at every level.
  ConvCoverage coverage;
  for (const ConvCase& c : conv_cases()) {
    check_conv_case<float>(checker, c, data, levels, coverage);
    check_conv_case<double>(checker, c, data, levels, coverage);
  }
  check_conv_coverage(checker, coverage, levels);
  for (SimdLevel level : levels) {
    use_level(level);
    check_gemm<float>(checker, gemm_shapes(), data);
    check_gemm<double>(checker, gemm_shapes(), data);
    check_pooling<float>(checker, pool_cases(), data);
    check_pooling<double>(checker, pool_cases(), data);
    check_batch_norm<float>(checker, norm_shapes(), data);
    check_batch_norm<double>(checker, norm_shapes(), data);
    check_norm_relu_max_pool<float>(checker, fused_norm_shapes(), fused_pools(), data);
    check_norm_relu_max_pool<double>(checker, fused_norm_shapes(), fused_pools(), data);
    std::printf("%s: every algorithm checked\n", simd_name(level));
  }
  set_simd_level(simd_detected());
  checks += checker.checks();
  test_checker_fails();
  test_selftest();
  return summary("juanji_ops_levels_test");
}

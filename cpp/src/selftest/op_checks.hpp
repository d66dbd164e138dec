// The ops whose kernels differ per SIMD level, checked through the library's entry points against
// the plain-loop references (cpu/ref/) on lists of cases: every convolution algorithm that takes
// a problem (forced in turn by set_conv_algorithm), with and without the fused ReLU; the blocked
// GEMM with plain and transposed operands; max and average pooling and their gradients; batch
// norm forward and backward. The self-test runs them on a few small cases, the C++ test
// juanji_ops_levels_test on many. Integer-valued data must come out bit for bit, uniform data
// within a tolerance; pooling bit for bit always.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "juanji/ops/conv.hpp"
#include "juanji/ops/pool.hpp"
#include "juanji/runtime.hpp"
#include "selftest/checker.hpp"

namespace juanji::selftest {

// ---- Convolution ----

struct ConvCase {
  const char* name;
  Shape x, w;  // as conv2d's; conv1d's (dims 1) are held with H = R = 1
  ConvOptions options;
  int dims;
};

ConvOptions conv_options(std::vector<std::int64_t> stride, std::vector<std::int64_t> padding,
                         std::vector<std::int64_t> dilation = {1}, std::int64_t groups = 1);
ConvOptions same_padding();

// Every (pass, algorithm) the tables list for the cases checked, and each (level, pass,
// algorithm) that ran: each listed one must run at every level, or a change of its refusals
// would drop it from the checks unnoticed.
struct ConvCoverage {
  std::set<std::pair<ConvPass, std::string>> listed;
  std::set<std::tuple<SimdLevel, ConvPass, std::string>> ran;
};

// The row of an algorithm's pass: "conv forward: direct".
std::string conv_row(ConvPass pass, const std::string& algorithm);

// The case's three passes in float T by every algorithm that takes them, at each of `levels`
// (the references computed once): integer-valued data with a bias, uniform data without. Rows
// "conv forward: <algorithm>", "conv data gradient: <algorithm>", "conv weight gradient:
// <algorithm>". Leaves the last level in use and no algorithm forced.
template <class T>
void check_conv_case(Checker& checker, const ConvCase& c, Data& data, const std::vector<SimdLevel>& levels,
                     ConvCoverage& coverage);
// Row "conv algorithms": every listed algorithm ran on some case at each of `levels`.
void check_conv_coverage(Checker& checker, const ConvCoverage& coverage, const std::vector<SimdLevel>& levels);

// ---- GEMM, pooling, batch norm: at the level in use ----

struct GemmShape {
  std::int64_t M, N, K;
};
// Row "gemm": plain and transposed operands, with and without accumulating, threaded or not.
template <class T>
void check_gemm(Checker& checker, const std::vector<GemmShape>& shapes, Data& data);

struct PoolCase {
  Shape x;
  std::vector<std::int64_t> kernel, stride, padding;
  bool ceil_mode, count_include_pad;
};
// Rows "max pool forward", "max pool backward" (also fused with a ReLU's backward, and argmaxes
// elsewhere in the plane or outside it), "avg pool forward", "avg pool backward": bit for bit,
// on data with ties, NaNs and zeros of both signs.
template <class T>
void check_pooling(Checker& checker, const std::vector<PoolCase>& cases, Data& data);

// Rows "batch norm forward" (training and eval, with and without gamma and beta and the fused
// ReLU, the saved and running statistics) and "batch norm backward" (with each channel's sum of
// grad_x).
template <class T>
void check_batch_norm(Checker& checker, const std::vector<Shape>& shapes, Data& data);

// Rows "batch norm + ReLU + max pool forward" and "... backward": the fused passes against the
// ops they fuse (batch norm with its ReLU, then max pooling; max_pool_relu_backward, then batch
// norm's backward) bit for bit, for x of `shapes` and each pooling of `pools` (its x ignored).
template <class T>
void check_norm_relu_max_pool(Checker& checker, const std::vector<Shape>& shapes, const std::vector<PoolCase>& pools,
                              Data& data);

}  // namespace juanji::selftest

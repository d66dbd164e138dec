// The kernels reachable only through the library's entry points, at every SIMD level this CPU
// runs, against the plain-loop references (cpu/ref/): every convolution algorithm that takes a
// problem (forced by set_conv_algorithm; conv_algorithms lists them), with and without the fused
// ReLU, in float32 and float64; the blocked GEMM (cpu/gemm.hpp) with plain and transposed
// operands; max and average pooling and their gradients; batch norm forward and backward.
// Shapes are picked to reach each algorithm's inner paths (image lanes, Winograd's row pairs,
// chunks and halves, filter-block tails, stride phases) at every vector width. Integer-valued
// data must come out bit for bit, uniform data within a tolerance; pooling bit for bit always.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/gemm.hpp"
#include "cpu/ref/reference.hpp"
#include "juanji/juanji.hpp"
#include "kernel_check.hpp"

namespace {

using namespace kernel_check;
using namespace juanji;
namespace ref = juanji::cpu::ref;
using I = std::int64_t;

constexpr Values kBothValues[] = {Values::integers, Values::uniform};

template <class T>
constexpr DType kDType = std::is_same_v<T, float> ? DType::float32
                         : std::is_same_v<T, double> ? DType::float64
                                                     : DType::int64;
template <class T>
constexpr double kTolerance = sizeof(T) == 4 ? 1e-5 : 1e-12;

template <class T>
Tensor tensor_of(const Shape& shape, const std::vector<T>& values) {
  Tensor t = Tensor::empty(shape, kDType<T>);
  std::copy(values.begin(), values.end(), t.data<T>());
  return t;
}

template <class T>
std::vector<T> values_of(const Tensor& t) {
  return {t.data<T>(), t.data<T>() + t.numel()};
}

template <class T>
std::vector<double> widened(const std::vector<T>& v) {
  return {v.begin(), v.end()};
}

std::string at_level(const std::string& what) { return std::string(simd_name(simd_level())) + " " + what; }

// ---- Convolution --------------------------------------------------------------------------

struct ConvCase {
  const char* name;
  Shape x, w;
  ConvOptions options;
  int dims;
};

ConvOptions conv_options(std::vector<I> stride, std::vector<I> padding, std::vector<I> dilation = {1}, I groups = 1) {
  ConvOptions options;
  options.stride = std::move(stride);
  options.padding = PaddingSpec::of(std::move(padding));
  options.dilation = std::move(dilation);
  options.groups = groups;
  return options;
}

ConvOptions same_padding() {
  ConvOptions options;
  options.padding = PaddingSpec::same();
  return options;
}

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

// A pass's output against the reference, with the tolerance its algorithm needs: Winograd's
// transforms (also inside stride phases) round more than a direct sum.
template <class T>
void expect_pass(const std::string& what, const std::string& algorithm, const Tensor& got,
                 const std::vector<double>& want, const std::vector<double>& magnitude, Values values) {
  const bool transforms = algorithm == "winograd" || algorithm == "strided_phases";
  const double tolerance = transforms ? 10 * kTolerance<T> : kTolerance<T>;
  expect_close(what, values_of<T>(got), want, magnitude, values, tolerance);
}

// A convolution's operands as tensors and what each pass must give (with the sizes of the
// terms behind each value).
template <class T>
struct ConvProblem {
  ConvGeometry g;
  Tensor x, w, bias, grad_y;  // bias undefined: none, and no bias gradient asked for
  std::vector<double> y, y_size, relu_y, dx, dx_size, dw, dw_size, db, db_size;
};

// Every (pass, algorithm) the tables list, and each (level, pass, algorithm) that ran: each listed
// one must run at every level, or a change of its refusals would drop it from the test unnoticed.
std::set<std::pair<ConvPass, std::string>> conv_listed;
std::set<std::tuple<SimdLevel, ConvPass, std::string>> conv_ran;

const char* pass_name(ConvPass pass) {
  return pass == ConvPass::forward ? "forward" : pass == ConvPass::data_grad ? "data gradient" : "weight gradient";
}

// Every algorithm that takes the problem, forced in turn, at the level in use.
template <class T>
void check_conv_algorithms(const char* name, const ConvProblem<T>& p, Values values) {
  const ConvGeometry& g = p.g;
  const Shape y_shape{g.N, g.K, g.P, g.Q};
  for (ConvPass pass : {ConvPass::forward, ConvPass::data_grad, ConvPass::weight_grad}) {
    for (const ConvAlgorithmChoice& algorithm : conv_algorithms(pass, g, kDType<T>, p.w)) {
      conv_listed.insert({pass, algorithm.name});
      if (!algorithm.refusal.empty()) continue;
      conv_ran.insert({simd_level(), pass, algorithm.name});
      set_conv_algorithm(pass, algorithm.name);
      const std::string what =
          at_level(std::string("conv ") + name + " " + algorithm.name + " float" + std::to_string(8 * sizeof(T)));
      if (pass == ConvPass::forward) {
        Tensor out = Tensor::full(y_shape, -5.0, kDType<T>);
        conv_forward(g, p.x, p.w, p.bias, out);
        expect_pass<T>(what + " forward", algorithm.name, out, p.y, p.y_size, values);
        Tensor relu_out = Tensor::full(y_shape, -5.0, kDType<T>);
        const bool fused = conv_forward_activation(g, p.x, p.w, p.bias, relu_out, Activation::relu, 0.0);
        // Every float32 algorithm but GEMM and the reference applies the ReLU as it stores.
        const bool plain = algorithm.name == "gemm" || algorithm.name == "reference";
        expect(fused == (sizeof(T) == 4 && !plain), what + " fuses the ReLU where it can");
        if (fused) expect_pass<T>(what + " forward with ReLU", algorithm.name, relu_out, p.relu_y, p.y_size, values);
      } else if (pass == ConvPass::data_grad) {
        Tensor out = Tensor::full({g.N, g.C, g.H, g.W}, -5.0, kDType<T>);
        conv_backward_data(g, p.grad_y, p.w, out);
        expect_pass<T>(what + " data gradient", algorithm.name, out, p.dx, p.dx_size, values);
      } else {
        Tensor out = Tensor::full({g.K, g.C / g.groups, g.R, g.S}, -5.0, kDType<T>);
        Tensor out_bias = p.bias.defined() ? Tensor::full({g.K}, -5.0, kDType<T>) : Tensor();
        conv_backward_weight(g, p.grad_y, p.x, out, out_bias);
        expect_pass<T>(what + " weight gradient", algorithm.name, out, p.dw, p.dw_size, values);
        if (p.bias.defined())
          expect_pass<T>(what + " bias gradient", algorithm.name, out_bias, p.db, p.db_size, values);
      }
    }
    set_conv_algorithm(pass, "");
  }
}

// The references once per problem, the library at every level.
template <class T>
void test_conv_case(const ConvCase& c, Data& data) {
  // conv1d's shapes are (N, C, L) and (K, C/groups, S); the cases hold them with H = R = 1.
  const auto as_given = [&](const Shape& s) { return c.dims == 1 ? Shape{s[0], s[1], s[3]} : s; };
  ConvProblem<T> p;
  p.g = ConvGeometry::make(as_given(c.x), as_given(c.w), c.options, c.dims);
  const ConvGeometry& g = p.g;
  const I x_size = g.N * g.C * g.H * g.W, w_size = g.K * (g.C / g.groups) * g.R * g.S, y_size = g.N * g.K * g.P * g.Q;
  for (Values values : kBothValues) {
    // Bias and its gradient with integer data, none with uniform data: both forms of each call.
    const bool with_bias = values == Values::integers;
    const auto x = data.make<T>(x_size, values), w = data.make<T>(w_size, values);
    const auto bias = data.make<T>(g.K, values), grad_y = data.make<T>(y_size, values);
    const auto wx = widened(x), ww = widened(w), wb = widened(bias), wgy = widened(grad_y);
    const auto ax = absolute(wx), aw = absolute(ww), ab = absolute(wb), agy = absolute(wgy);
    p.y = p.y_size = p.relu_y = std::vector<double>(y_size);
    p.dx = p.dx_size = std::vector<double>(x_size);
    p.dw = p.dw_size = std::vector<double>(w_size);
    p.db = p.db_size = std::vector<double>(g.K);
    ref::conv_forward(g, wx.data(), ww.data(), with_bias ? wb.data() : nullptr, p.y.data());
    ref::conv_forward(g, ax.data(), aw.data(), with_bias ? ab.data() : nullptr, p.y_size.data());
    for (I i = 0; i < y_size; ++i) p.relu_y[i] = p.y[i] < 0 ? 0.0 : p.y[i];
    ref::conv_backward_data(g, wgy.data(), ww.data(), p.dx.data());
    ref::conv_backward_data(g, agy.data(), aw.data(), p.dx_size.data());
    ref::conv_backward_weight(g, wgy.data(), wx.data(), p.dw.data(), p.db.data());
    ref::conv_backward_weight(g, agy.data(), ax.data(), p.dw_size.data(), p.db_size.data());
    p.x = tensor_of<T>({g.N, g.C, g.H, g.W}, x);
    p.w = tensor_of<T>({g.K, g.C / g.groups, g.R, g.S}, w);
    p.bias = with_bias ? tensor_of<T>({g.K}, bias) : Tensor();
    p.grad_y = tensor_of<T>({g.N, g.K, g.P, g.Q}, grad_y);
    for (SimdLevel level : supported_levels()) {
      use_level(level);
      check_conv_algorithms(c.name, p, values);
    }
  }
}

// ---- GEMM ---------------------------------------------------------------------------------

template <class T>
void test_gemm(Data& data) {
  struct Size {
    I M, N, K;
  };
  // Tails of every panel width, K past a block (256), M past a block of A panels, N past a block
  // of B panels at every width.
  const Size shapes[] = {{1, 1, 1}, {4, 5, 0},      {5, 7, 3},       {6, 16, 8},
                         {7, 17, 9}, {13, 33, 40}, {150, 20, 300}, {3, 2100, 5}};
  int variant = 0;
  for (Size s : shapes)
    for (bool transpose_a : {false, true})
      for (bool transpose_b : {false, true})
        for (Values values : kBothValues) {
          ++variant;
          const bool accumulate = variant % 2 == 0, threaded = variant % 3 != 0;
          const auto a = data.make<T>(s.M * s.K, values), b = data.make<T>(s.K * s.N, values);
          const I ldc = s.N + 2;
          std::vector<T> c = data.make<T>(s.M * ldc, values);
          // A transposed operand is stored the other way round: (K x M) for A, (N x K) for B.
          const cpu::Matrix<T> ma{a.data(), transpose_a ? 1 : s.K, transpose_a ? s.M : 1};
          const cpu::Matrix<T> mb{b.data(), transpose_b ? 1 : s.N, transpose_b ? s.K : 1};
          std::vector<double> want = widened(c), magnitude(c.size(), 0.0);
          ref::gemm(s.M, s.N, s.K, widened(a).data(), ma.row_stride, ma.col_stride, widened(b).data(), mb.row_stride,
                    mb.col_stride, want.data(), ldc, accumulate);
          std::vector<double> sizes = absolute(widened(c));
          ref::gemm(s.M, s.N, s.K, absolute(widened(a)).data(), ma.row_stride, ma.col_stride,
                    absolute(widened(b)).data(), mb.row_stride, mb.col_stride, sizes.data(), ldc, accumulate);
          // The columns between rows (ldc > N) are never written.
          for (I i = 0; i < s.M; ++i)
            for (I j = 0; j < s.N; ++j) magnitude[i * ldc + j] = sizes[i * ldc + j];
          cpu::gemm(s.M, s.N, s.K, ma, mb, c.data(), ldc, accumulate, threaded);
          expect_close(at_level("gemm float" + std::to_string(8 * sizeof(T)) + " " + std::to_string(s.M) + "x" +
                                std::to_string(s.N) + "x" + std::to_string(s.K) + (transpose_a ? " A^T" : "") +
                                (transpose_b ? " B^T" : "") + (accumulate ? " accumulate" : "")),
                       c, want, magnitude, values, kTolerance<T>);
        }
}

// ---- Pooling ------------------------------------------------------------------------------

struct PoolCase {
  Shape x;
  std::vector<I> kernel, stride, padding;
  bool ceil_mode, count_include_pad;
};

std::string describe(const PoolCase& c) {
  const auto text = [](const std::vector<I>& v) {
    std::string out;
    for (I n : v) out += (out.empty() ? "" : ",") + std::to_string(n);
    return out;
  };
  return "x " + text(c.x) + " kernel " + text(c.kernel) + " stride " + text(c.stride) + " padding " + text(c.padding) +
         (c.ceil_mode ? " ceil" : "") + (c.count_include_pad ? "" : " excluding padding");
}

// Values with ties: small integers; or uniform ones with NaNs and zeros of both signs among them.
template <class T>
std::vector<T> pooling_values(Data& data, I n, Values values) {
  std::vector<T> out = data.make<T>(n, values);
  if (values == Values::uniform)
    for (T& v : out) {
      const I pick = data.below(16);
      if (pick == 0) v = std::numeric_limits<T>::quiet_NaN();
      if (pick == 1) v = T(0);
      if (pick == 2) v = -T(0);
    }
  return out;
}

template <class T>
void test_pooling(Data& data) {
  const PoolCase cases[] = {
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
  for (const PoolCase& c : cases) {
    PoolOptions options;
    options.kernel = c.kernel;
    options.stride = c.stride;
    options.padding = c.padding;
    options.ceil_mode = c.ceil_mode;
    options.count_include_pad = c.count_include_pad;
    const int dims = static_cast<int>(c.x.size()) - 2;
    const PoolGeometry g = PoolGeometry::make(c.x, options, dims, "test");
    const Shape y_shape = g.output_shape();
    const I x_size = g.N * g.C * g.H * g.W, y_size = g.N * g.C * g.P * g.Q;
    for (Values values : kBothValues) {
      const std::string what = at_level("pooling float" + std::to_string(8 * sizeof(T)) + " " + describe(c) + " (" +
                                        values_name(values) + " data)");
      const auto x = pooling_values<T>(data, x_size, values), grad_y = pooling_values<T>(data, y_size, values);
      std::vector<T> y(y_size), avg_y(y_size), dx(x_size), gated_dx(x_size), avg_dx(x_size);
      std::vector<I> argmax(y_size);
      ref::max_pool_forward(g, x.data(), y.data(), argmax.data());
      ref::max_pool_backward(g, grad_y.data(), argmax.data(), dx.data());
      // max_pool_relu_backward: the gradient where the pooled output is positive.
      std::vector<T> gated(y_size);
      for (I i = 0; i < y_size; ++i) gated[i] = y[i] > T(0) ? grad_y[i] : T(0);
      ref::max_pool_backward(g, gated.data(), argmax.data(), gated_dx.data());
      ref::avg_pool_forward(g, x.data(), avg_y.data());
      ref::avg_pool_backward(g, grad_y.data(), avg_dx.data());

      const Tensor tx = tensor_of<T>(c.x, x), tgy = tensor_of<T>(y_shape, grad_y), ty_ref = tensor_of<T>(y_shape, y);
      Tensor ty = Tensor::full(y_shape, -5.0, kDType<T>), targmax = Tensor::full(y_shape, -5.0, DType::int64);
      max_pool_forward(g, tx, ty, targmax);
      expect_same_bits(what + " max", values_of<T>(ty), y);
      expect_same_bits(what + " argmax", values_of<I>(targmax), argmax);
      Tensor no_argmax, ty_alone = Tensor::full(y_shape, -5.0, kDType<T>);
      max_pool_forward(g, tx, ty_alone, no_argmax);
      expect_same_bits(what + " max without argmax", values_of<T>(ty_alone), y);
      const Tensor ref_argmax = tensor_of<I>(y_shape, argmax);
      Tensor tdx = Tensor::full(c.x, -5.0, kDType<T>);
      max_pool_backward(g, tgy, ref_argmax, tdx);
      expect_same_bits(what + " max backward", values_of<T>(tdx), dx);
      Tensor tgated = Tensor::full(c.x, -5.0, kDType<T>);
      max_pool_relu_backward(g, tgy, ref_argmax, ty_ref, tgated);
      expect_same_bits(what + " max + ReLU backward", values_of<T>(tgated), gated_dx);
      // The kernel API takes any argmax: one elsewhere in the plane still gets its gradient, one
      // outside the plane (past 32 bits) none.
      std::vector<I> stray = argmax;
      stray.front() = g.H * g.W - 1;
      stray.back() += I(1) << 32;
      std::vector<T> stray_dx(x_size);
      ref::max_pool_backward(g, grad_y.data(), stray.data(), stray_dx.data());
      Tensor tstray_dx = Tensor::full(c.x, -5.0, kDType<T>);
      max_pool_backward(g, tgy, tensor_of<I>(y_shape, stray), tstray_dx);
      expect_same_bits(what + " max backward with stray argmaxes", values_of<T>(tstray_dx), stray_dx);
      Tensor tavg = Tensor::full(y_shape, -5.0, kDType<T>), tavg_dx = Tensor::full(c.x, -5.0, kDType<T>);
      avg_pool_forward(g, tx, tavg);
      expect_same_bits(what + " average", values_of<T>(tavg), avg_y);
      avg_pool_backward(g, tgy, tavg_dx);
      expect_same_bits(what + " average backward", values_of<T>(tavg_dx), avg_dx);
    }
  }
}

// ---- Batch norm ---------------------------------------------------------------------------

double largest(const std::vector<double>& v) {
  double out = 0;
  for (double x : v) out = std::max(out, std::fabs(x));
  return out;
}

// got against want within tolerance * (scale + |want[i]|), scale the size of the terms behind
// want (by default the largest |want|): the library sums in double and rounds once, the
// reference in double step by step.
template <class T>
void expect_norm(const std::string& what, const Tensor& got, const std::vector<double>& want, double scale = -1) {
  if (scale < 0) scale = largest(want);
  std::vector<double> magnitude(want.size());
  for (std::size_t i = 0; i < want.size(); ++i) magnitude[i] = scale + std::fabs(want[i]);
  expect_close(what, values_of<T>(got), want, magnitude, Values::uniform, kTolerance<T>);
}

template <class T>
void test_batch_norm(Data& data) {
  const Shape shapes[] = {{3, 5, 8, 8}, {2, 3, 7, 9}, {4, 2, 1, 31}, {2, 2, 4, 8}, {1, 3, 5, 7}};
  int variant = 0;
  for (const Shape& shape : shapes)
    for (bool training : {true, false}) {
      ++variant;
      const bool affine = variant % 3 != 0, relu = variant / 2 % 2 == 0;
      const I N = shape[0], C = shape[1], area = shape[2] * shape[3], size = N * C * area;
      const double momentum = 0.1, eps = 1e-5;
      const std::string what = at_level("batch norm float" + std::to_string(8 * sizeof(T)) + " " + std::to_string(N) +
                                        "x" + std::to_string(C) + "x" + std::to_string(shape[2]) + "x" +
                                        std::to_string(shape[3]) + (training ? " training" : " eval") +
                                        (affine ? "" : " without gamma and beta") + (relu ? " with ReLU" : ""));
      // Offsets per channel, so that the means are far from zero.
      std::vector<T> x = data.make<T>(size, Values::uniform);
      for (I i = 0; i < size; ++i) x[i] = x[i] * T(2) + T(i / area % C);
      const auto gamma = data.make<T>(C, Values::uniform), beta = data.make<T>(C, Values::uniform);
      const auto grad_y = data.make<T>(size, Values::uniform);
      std::vector<T> running_mean = data.make<T>(C, Values::uniform), running_var(C);
      for (T& v : running_var) v = T(0.5) + T(data.below(4));

      std::vector<double> y(size), mean(C), invstd(C), new_mean = widened(running_mean), new_var = widened(running_var);
      const auto wx = widened(x), wgamma = widened(gamma), wbeta = widened(beta);
      ref::batch_norm_forward<double>(N, C, area, wx.data(), affine ? wgamma.data() : nullptr,
                                      affine ? wbeta.data() : nullptr, new_mean.data(), new_var.data(), training,
                                      momentum, eps, y.data(), mean.data(), invstd.data());
      if (relu)
        for (double& v : y) v = v < 0 ? 0.0 : v;

      const Tensor tx = tensor_of<T>(shape, x), tgamma = affine ? tensor_of<T>({C}, gamma) : Tensor();
      const Tensor tbeta = affine ? tensor_of<T>({C}, beta) : Tensor();
      Tensor trunning_mean = tensor_of<T>({C}, running_mean), trunning_var = tensor_of<T>({C}, running_var);
      Tensor ty = Tensor::full(shape, -5.0, kDType<T>), tmean = Tensor::empty({C}, kDType<T>);
      Tensor tinvstd = Tensor::empty({C}, kDType<T>);
      batch_norm2d_forward(tx, tgamma, tbeta, trunning_mean, trunning_var, training, momentum, eps, ty, tmean, tinvstd,
                           relu);
      expect_norm<T>(what + " y", ty, y);
      expect_norm<T>(what + " saved mean", tmean, mean);
      expect_norm<T>(what + " saved invstd", tinvstd, invstd);
      expect_norm<T>(what + " running mean", trunning_mean, new_mean);
      expect_norm<T>(what + " running var", trunning_var, new_var);
      if (!training) continue;

      // The backward from the library's saved statistics, as a layer calls it.
      std::vector<double> dx(size), dgamma(C), dbeta(C), dx_sums(C, 0.0), dx_sizes(C, 0.0);
      const auto saved_mean = widened(values_of<T>(tmean)), saved_invstd = widened(values_of<T>(tinvstd));
      ref::batch_norm_backward<double>(N, C, area, widened(grad_y).data(), wx.data(), affine ? wgamma.data() : nullptr,
                                       saved_mean.data(), saved_invstd.data(), dx.data(), dgamma.data(), dbeta.data());
      // Each channel's sum of grad_x: zero but for rounding, so measured against its terms.
      for (I i = 0; i < size; ++i) {
        dx_sums[i / area % C] += dx[i];
        dx_sizes[i / area % C] += std::fabs(dx[i]);
      }
      Tensor tdx = Tensor::full(shape, -5.0, kDType<T>), tdgamma = Tensor::empty({C}, kDType<T>);
      Tensor tdbeta = Tensor::empty({C}, kDType<T>), tsums = Tensor::empty({C}, kDType<T>);
      batch_norm2d_backward(tensor_of<T>(shape, grad_y), tx, tgamma, tmean, tinvstd, tdx, tdgamma, tdbeta, &tsums);
      expect_norm<T>(what + " grad_x", tdx, dx);
      expect_norm<T>(what + " grad_gamma", tdgamma, dgamma);
      expect_norm<T>(what + " grad_beta", tdbeta, dbeta);
      expect_norm<T>(what + " grad_x sums", tsums, dx_sums, largest(dx_sizes));
    }
}

}  // namespace

int main() {
  set_winograd(true);
  Data data(2024);
  // The references once per case, the library at every level.
  for (const ConvCase& c : conv_cases()) {
    test_conv_case<float>(c, data);
    test_conv_case<double>(c, data);
  }
  for (SimdLevel level : supported_levels())
    for (const auto& [pass, algorithm] : conv_listed)
      expect(conv_ran.count({level, pass, algorithm}) == 1,
             std::string(simd_name(level)) + " conv " + algorithm + " " + pass_name(pass) + " ran on some case");
  for (SimdLevel level : supported_levels()) {
    use_level(level);
    test_gemm<float>(data);
    test_gemm<double>(data);
    test_pooling<float>(data);
    test_pooling<double>(data);
    test_batch_norm<float>(data);
    test_batch_norm<double>(data);
    std::printf("%s: every algorithm checked\n", simd_name(level));
  }
  set_simd_level(simd_detected());
  return summary("juanji_ops_levels_test");
}

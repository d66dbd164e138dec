#include "selftest/op_checks.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>

#include "cpu/gemm.hpp"
#include "cpu/ref/reference.hpp"
#include "juanji/ops/dense.hpp"

namespace juanji::selftest {
namespace {

namespace ref = cpu::ref;
using I = std::int64_t;

const char* pass_name(ConvPass pass) {
  return pass == ConvPass::forward ? "forward" : pass == ConvPass::data_grad ? "data gradient" : "weight gradient";
}

// A pass's output against the reference, with the tolerance its algorithm needs: Winograd's
// transforms (also inside stride phases) round more than a direct sum.
template <class T>
void expect_pass(Checker& checker, const std::string& op, const std::string& what, const std::string& algorithm,
                 const Tensor& got, const std::vector<double>& want, const std::vector<double>& magnitude,
                 Values values) {
  const bool transforms = algorithm == "winograd" || algorithm == "strided_phases";
  checker.close(op, what, values_of<T>(got), want, magnitude, values, transforms ? 10 * kTolerance<T> : kTolerance<T>);
}

// A convolution's operands as tensors and what each pass must give (with the sizes of the terms
// behind each value).
template <class T>
struct ConvProblem {
  ConvGeometry g;
  Tensor x, w, bias, grad_y;  // bias undefined: none, and no bias gradient asked for
  std::vector<double> y, y_size, relu_y, dx, dx_size, dw, dw_size, db, db_size;
};

// Every algorithm that takes the problem, forced in turn, at the level in use.
template <class T>
void check_conv_algorithms(Checker& checker, const char* name, const ConvProblem<T>& p, Values values,
                           ConvCoverage& coverage) {
  const ConvGeometry& g = p.g;
  const Shape y_shape{g.N, g.K, g.P, g.Q};
  for (ConvPass pass : {ConvPass::forward, ConvPass::data_grad, ConvPass::weight_grad}) {
    for (const ConvAlgorithmChoice& algorithm : conv_algorithms(pass, g, kDType<T>, p.w)) {
      coverage.listed.insert({pass, algorithm.name});
      if (!algorithm.refusal.empty()) continue;
      coverage.ran.insert({simd_level(), pass, algorithm.name});
      const std::string op = conv_row(pass, algorithm.name);
      const std::string what = std::string("conv ") + name + " " + algorithm.name + " " + type_name<T>();
      try {
        set_conv_algorithm(pass, algorithm.name);
        if (pass == ConvPass::forward) {
          Tensor out = Tensor::full(y_shape, -5.0, kDType<T>);
          conv_forward(g, p.x, p.w, p.bias, out);
          expect_pass<T>(checker, op, what + " forward", algorithm.name, out, p.y, p.y_size, values);
          Tensor relu_out = Tensor::full(y_shape, -5.0, kDType<T>);
          const bool fused = conv_forward_activation(g, p.x, p.w, p.bias, relu_out, Activation::relu, 0.0);
          // Every float32 algorithm but the reference applies the ReLU as it stores.
          const bool plain = algorithm.name == "reference";
          checker.expect(op, fused == (sizeof(T) == 4 && !plain), what + " fuses the ReLU where it can");
          if (fused)
            expect_pass<T>(checker, op, what + " forward with ReLU", algorithm.name, relu_out, p.relu_y, p.y_size,
                           values);
        } else if (pass == ConvPass::data_grad) {
          Tensor out = Tensor::full({g.N, g.C, g.H, g.W}, -5.0, kDType<T>);
          conv_backward_data(g, p.grad_y, p.w, out);
          expect_pass<T>(checker, op, what + " data gradient", algorithm.name, out, p.dx, p.dx_size, values);
        } else {
          Tensor out = Tensor::full({g.K, g.C / g.groups, g.R, g.S}, -5.0, kDType<T>);
          Tensor out_bias = p.bias.defined() ? Tensor::full({g.K}, -5.0, kDType<T>) : Tensor();
          conv_backward_weight(g, p.grad_y, p.x, out, out_bias);
          expect_pass<T>(checker, op, what + " weight gradient", algorithm.name, out, p.dw, p.dw_size, values);
          if (p.bias.defined())
            expect_pass<T>(checker, op, what + " bias gradient", algorithm.name, out_bias, p.db, p.db_size, values);
        }
      } catch (const std::exception& e) {
        checker.exception(op, what, e);
      }
    }
    set_conv_algorithm(pass, "");
  }
}

}  // namespace

std::string conv_row(ConvPass pass, const std::string& algorithm) {
  return std::string("conv ") + pass_name(pass) + ": " + algorithm;
}

ConvOptions conv_options(std::vector<I> stride, std::vector<I> padding, std::vector<I> dilation, I groups) {
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

template <class T>
void check_conv_case(Checker& checker, const ConvCase& c, Data& data, const std::vector<SimdLevel>& levels,
                     ConvCoverage& coverage) {
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
    for (SimdLevel level : levels) {
      set_simd_level(level);
      check_conv_algorithms(checker, c.name, p, values, coverage);
    }
  }
}

void check_conv_coverage(Checker& checker, const ConvCoverage& coverage, const std::vector<SimdLevel>& levels) {
  for (SimdLevel level : levels) {
    set_simd_level(level);
    for (const auto& [pass, algorithm] : coverage.listed)
      checker.expect("conv algorithms", coverage.ran.count({level, pass, algorithm}) == 1,
                     "conv " + algorithm + " " + pass_name(pass) + " ran on some case");
  }
}

// ---- GEMM ---------------------------------------------------------------------------------

template <class T>
void check_gemm(Checker& checker, const std::vector<GemmShape>& shapes, Data& data) {
  int variant = 0;
  for (GemmShape s : shapes)
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
          checker.close("gemm",
                        "gemm " + type_name<T>() + " " + std::to_string(s.M) + "x" + std::to_string(s.N) + "x" +
                            std::to_string(s.K) + (transpose_a ? " A^T" : "") + (transpose_b ? " B^T" : "") +
                            (accumulate ? " accumulate" : ""),
                        c, want, magnitude, values, kTolerance<T>);
        }
}

// ---- Pooling ------------------------------------------------------------------------------

namespace {

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

}  // namespace

template <class T>
void check_pooling(Checker& checker, const std::vector<PoolCase>& cases, Data& data) {
  for (const PoolCase& c : cases) {
    PoolOptions options;
    options.kernel = c.kernel;
    options.stride = c.stride;
    options.padding = c.padding;
    options.ceil_mode = c.ceil_mode;
    options.count_include_pad = c.count_include_pad;
    const int dims = static_cast<int>(c.x.size()) - 2;
    const PoolGeometry g = PoolGeometry::make(c.x, options, dims, "selftest");
    const Shape y_shape = g.output_shape();
    const I x_size = g.N * g.C * g.H * g.W, y_size = g.N * g.C * g.P * g.Q;
    for (Values values : kBothValues) {
      const std::string what =
          "pooling " + type_name<T>() + " " + describe(c) + " (" + values_name(values) + " data)";
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
      const char* max_forward = "max pool forward";
      try {
        Tensor ty = Tensor::full(y_shape, -5.0, kDType<T>), targmax = Tensor::full(y_shape, -5.0, DType::int64);
        max_pool_forward(g, tx, ty, targmax);
        checker.same_bits(max_forward, what + " max", values_of<T>(ty), y);
        checker.same_bits(max_forward, what + " argmax", values_of<I>(targmax), argmax);
        Tensor no_argmax, ty_alone = Tensor::full(y_shape, -5.0, kDType<T>);
        max_pool_forward(g, tx, ty_alone, no_argmax);
        checker.same_bits(max_forward, what + " max without argmax", values_of<T>(ty_alone), y);
      } catch (const std::exception& e) {
        checker.exception(max_forward, what, e);
      }
      const char* max_backward = "max pool backward";
      try {
        const Tensor ref_argmax = tensor_of<I>(y_shape, argmax);
        Tensor tdx = Tensor::full(c.x, -5.0, kDType<T>);
        max_pool_backward(g, tgy, ref_argmax, tdx);
        checker.same_bits(max_backward, what + " max backward", values_of<T>(tdx), dx);
        Tensor tgated = Tensor::full(c.x, -5.0, kDType<T>);
        max_pool_relu_backward(g, tgy, ref_argmax, ty_ref, tgated);
        checker.same_bits(max_backward, what + " max + ReLU backward", values_of<T>(tgated), gated_dx);
        // The kernel API takes any argmax: one elsewhere in the plane still gets its gradient,
        // one outside the plane (past 32 bits) none.
        std::vector<I> stray = argmax;
        stray.front() = g.H * g.W - 1;
        stray.back() += I(1) << 32;
        std::vector<T> stray_dx(x_size);
        ref::max_pool_backward(g, grad_y.data(), stray.data(), stray_dx.data());
        Tensor tstray_dx = Tensor::full(c.x, -5.0, kDType<T>);
        max_pool_backward(g, tgy, tensor_of<I>(y_shape, stray), tstray_dx);
        checker.same_bits(max_backward, what + " max backward with stray argmaxes", values_of<T>(tstray_dx),
                          stray_dx);
      } catch (const std::exception& e) {
        checker.exception(max_backward, what, e);
      }
      const char* avg_forward = "avg pool forward";
      try {
        Tensor tavg = Tensor::full(y_shape, -5.0, kDType<T>);
        avg_pool_forward(g, tx, tavg);
        checker.same_bits(avg_forward, what + " average", values_of<T>(tavg), avg_y);
      } catch (const std::exception& e) {
        checker.exception(avg_forward, what, e);
      }
      const char* avg_backward = "avg pool backward";
      try {
        Tensor tavg_dx = Tensor::full(c.x, -5.0, kDType<T>);
        avg_pool_backward(g, tgy, tavg_dx);
        checker.same_bits(avg_backward, what + " average backward", values_of<T>(tavg_dx), avg_dx);
      } catch (const std::exception& e) {
        checker.exception(avg_backward, what, e);
      }
    }
  }
}

// ---- Batch norm ---------------------------------------------------------------------------

namespace {

double largest(const std::vector<double>& v) {
  double out = 0;
  for (double x : v) out = std::max(out, std::fabs(x));
  return out;
}

// got against want within tolerance * (scale + |want[i]|), scale the size of the terms behind
// want (by default the largest |want|): the library sums in double and rounds once, the
// reference in double step by step.
template <class T>
void expect_norm(Checker& checker, const std::string& op, const std::string& what, const Tensor& got,
                 const std::vector<double>& want, double scale = -1) {
  if (scale < 0) scale = largest(want);
  std::vector<double> magnitude(want.size());
  for (std::size_t i = 0; i < want.size(); ++i) magnitude[i] = scale + std::fabs(want[i]);
  checker.close(op, what, values_of<T>(got), want, magnitude, Values::uniform, kTolerance<T>);
}

}  // namespace

template <class T>
void check_batch_norm(Checker& checker, const std::vector<Shape>& shapes, Data& data) {
  int variant = 0;
  for (const Shape& shape : shapes)
    for (bool training : {true, false}) {
      ++variant;
      const bool affine = variant % 3 != 0, relu = variant / 2 % 2 == 0;
      const I N = shape[0], C = shape[1], area = shape[2] * shape[3], size = N * C * area;
      const double momentum = 0.1, eps = 1e-5;
      const std::string what = "batch norm " + type_name<T>() + " " + std::to_string(N) + "x" + std::to_string(C) +
                               "x" + std::to_string(shape[2]) + "x" + std::to_string(shape[3]) +
                               (training ? " training" : " eval") + (affine ? "" : " without gamma and beta") +
                               (relu ? " with ReLU" : "");
      // Offsets per channel, so that the means are far from zero.
      std::vector<T> x = data.make<T>(size, Values::uniform);
      for (I i = 0; i < size; ++i) x[i] = x[i] * T(2) + T(i / area % C);
      const auto gamma = data.make<T>(C, Values::uniform), beta = data.make<T>(C, Values::uniform);
      const auto grad_y = data.make<T>(size, Values::uniform);
      std::vector<T> running_mean = data.make<T>(C, Values::uniform), running_var(C);
      for (T& v : running_var) v = T(0.5) + T(data.below(4));

      std::vector<double> y(size), mean(C), invstd(C), new_mean = widened(running_mean), new_var = widened(running_var);
      const auto wx = widened(x), wgamma = widened(gamma), wbeta = widened(beta);
      cpu::ref::batch_norm_forward<double>(N, C, area, wx.data(), affine ? wgamma.data() : nullptr,
                                           affine ? wbeta.data() : nullptr, new_mean.data(), new_var.data(), training,
                                           momentum, eps, y.data(), mean.data(), invstd.data());
      if (relu)
        for (double& v : y) v = v < 0 ? 0.0 : v;

      const char* forward = "batch norm forward";
      const Tensor tx = tensor_of<T>(shape, x), tgamma = affine ? tensor_of<T>({C}, gamma) : Tensor();
      const Tensor tbeta = affine ? tensor_of<T>({C}, beta) : Tensor();
      Tensor tmean = Tensor::empty({C}, kDType<T>), tinvstd = Tensor::empty({C}, kDType<T>);
      try {
        Tensor trunning_mean = tensor_of<T>({C}, running_mean), trunning_var = tensor_of<T>({C}, running_var);
        Tensor ty = Tensor::full(shape, -5.0, kDType<T>);
        batch_norm2d_forward(tx, tgamma, tbeta, trunning_mean, trunning_var, training, momentum, eps, ty, tmean,
                             tinvstd, relu);
        expect_norm<T>(checker, forward, what + " y", ty, y);
        expect_norm<T>(checker, forward, what + " saved mean", tmean, mean);
        expect_norm<T>(checker, forward, what + " saved invstd", tinvstd, invstd);
        expect_norm<T>(checker, forward, what + " running mean", trunning_mean, new_mean);
        expect_norm<T>(checker, forward, what + " running var", trunning_var, new_var);
      } catch (const std::exception& e) {
        checker.exception(forward, what, e);
        continue;
      }
      if (!training) continue;

      // The backward from the library's saved statistics, as a layer calls it.
      const char* backward = "batch norm backward";
      try {
        std::vector<double> dx(size), dgamma(C), dbeta(C), dx_sums(C, 0.0), dx_sizes(C, 0.0);
        const auto saved_mean = widened(values_of<T>(tmean)), saved_invstd = widened(values_of<T>(tinvstd));
        cpu::ref::batch_norm_backward<double>(N, C, area, widened(grad_y).data(), wx.data(),
                                              affine ? wgamma.data() : nullptr, saved_mean.data(),
                                              saved_invstd.data(), dx.data(), dgamma.data(), dbeta.data());
        // Each channel's sum of grad_x: zero but for rounding, so measured against its terms.
        for (I i = 0; i < size; ++i) {
          dx_sums[i / area % C] += dx[i];
          dx_sizes[i / area % C] += std::fabs(dx[i]);
        }
        Tensor tdx = Tensor::full(shape, -5.0, kDType<T>), tdgamma = Tensor::empty({C}, kDType<T>);
        Tensor tdbeta = Tensor::empty({C}, kDType<T>), tsums = Tensor::empty({C}, kDType<T>);
        batch_norm2d_backward(tensor_of<T>(shape, grad_y), tx, tgamma, tmean, tinvstd, tdx, tdgamma, tdbeta, &tsums);
        expect_norm<T>(checker, backward, what + " grad_x", tdx, dx);
        expect_norm<T>(checker, backward, what + " grad_gamma", tdgamma, dgamma);
        expect_norm<T>(checker, backward, what + " grad_beta", tdbeta, dbeta);
        expect_norm<T>(checker, backward, what + " grad_x sums", tsums, dx_sums, largest(dx_sizes));
      } catch (const std::exception& e) {
        checker.exception(backward, what, e);
      }
    }
}

template <class T>
void check_norm_relu_max_pool(Checker& checker, const std::vector<Shape>& shapes, const std::vector<PoolCase>& pools,
                              Data& data) {
  const double momentum = 0.1, eps = 1e-5;
  for (const Shape& shape : shapes)
    for (const PoolCase& pool_case : pools)
      for (bool training : {true, false}) {
        PoolOptions options;
        options.kernel = pool_case.kernel;
        options.stride = pool_case.stride;
        options.padding = pool_case.padding;
        options.ceil_mode = pool_case.ceil_mode;
        const PoolGeometry pool = PoolGeometry::make(shape, options, 2, "selftest");
        const I C = shape[1], size = shape[0] * C * shape[2] * shape[3];
        const Shape pooled = pool.output_shape();
        const std::string what = "batch norm + ReLU + max pool " + type_name<T>() + " " + describe(pool_case) +
                                 " on " + std::to_string(shape[0]) + "x" + std::to_string(C) + "x" +
                                 std::to_string(shape[2]) + "x" + std::to_string(shape[3]) +
                                 (training ? " training" : " eval");
        std::vector<T> x = data.make<T>(size, Values::uniform);
        const Tensor tx = tensor_of<T>(shape, x), gamma = tensor_of<T>({C}, data.make<T>(C, Values::uniform));
        const Tensor beta = tensor_of<T>({C}, data.make<T>(C, Values::uniform));
        std::vector<T> running_var(C);
        for (T& v : running_var) v = T(0.5) + T(data.below(4));
        const std::vector<T> running_mean = data.make<T>(C, Values::uniform);
        const char* forward = "batch norm + ReLU + max pool forward";
        // The ops it fuses.
        Tensor mean = Tensor::empty({C}, kDType<T>), invstd = Tensor::empty({C}, kDType<T>);
        Tensor run_mean = tensor_of<T>({C}, running_mean), run_var = tensor_of<T>({C}, running_var);
        Tensor normalized = Tensor::empty(shape, kDType<T>), y = Tensor::empty(pooled, kDType<T>);
        Tensor argmax = Tensor::empty(pooled, DType::int64);
        // The fused pass.
        Tensor fused_mean = Tensor::empty({C}, kDType<T>), fused_invstd = Tensor::empty({C}, kDType<T>);
        Tensor fused_run_mean = tensor_of<T>({C}, running_mean), fused_run_var = tensor_of<T>({C}, running_var);
        Tensor fused_y = Tensor::full(pooled, -5.0, kDType<T>), affine = Tensor::empty({C, 2}, kDType<T>);
        Tensor no_affine;
        try {
          batch_norm2d_forward(tx, gamma, beta, run_mean, run_var, training, momentum, eps, normalized, mean, invstd,
                               true);
          max_pool_forward(pool, normalized, y, argmax);
          batch_norm2d_relu_max_pool_forward(tx, gamma, beta, fused_run_mean, fused_run_var, training, momentum, eps,
                                             pool, fused_y, training ? affine : no_affine, fused_mean,
                                             fused_invstd);
          checker.same_bits(forward, what + " y", values_of<T>(fused_y), values_of<T>(y));
          checker.same_bits(forward, what + " saved mean", values_of<T>(fused_mean), values_of<T>(mean));
          checker.same_bits(forward, what + " saved invstd", values_of<T>(fused_invstd), values_of<T>(invstd));
          checker.same_bits(forward, what + " running mean", values_of<T>(fused_run_mean), values_of<T>(run_mean));
          checker.same_bits(forward, what + " running var", values_of<T>(fused_run_var), values_of<T>(run_var));
        } catch (const std::exception& e) {
          checker.exception(forward, what, e);
          continue;
        }
        if (!training) continue;
        const char* backward = "batch norm + ReLU + max pool backward";
        try {
          const Tensor grad_y = tensor_of<T>(pooled, data.make<T>(y.numel(), Values::uniform));
          Tensor grad_normalized = Tensor::empty(shape, kDType<T>), grad_x = Tensor::empty(shape, kDType<T>);
          Tensor grad_gamma = Tensor::empty({C}, kDType<T>), grad_beta = Tensor::empty({C}, kDType<T>);
          Tensor sums = Tensor::empty({C}, kDType<T>);
          max_pool_relu_backward(pool, grad_y, argmax, y, grad_normalized);
          batch_norm2d_backward(grad_normalized, tx, gamma, mean, invstd, grad_x, grad_gamma, grad_beta, &sums);
          Tensor fused_grad_x = Tensor::full(shape, -5.0, kDType<T>), fused_grad_gamma = Tensor::empty({C}, kDType<T>);
          Tensor fused_grad_beta = Tensor::empty({C}, kDType<T>), fused_sums = Tensor::empty({C}, kDType<T>);
          batch_norm2d_relu_max_pool_backward(pool, grad_y, affine, tx, gamma, fused_mean, fused_invstd, fused_grad_x,
                                              fused_grad_gamma, fused_grad_beta, &fused_sums);
          checker.same_bits(backward, what + " grad_x", values_of<T>(fused_grad_x), values_of<T>(grad_x));
          checker.same_bits(backward, what + " grad_gamma", values_of<T>(fused_grad_gamma), values_of<T>(grad_gamma));
          checker.same_bits(backward, what + " grad_beta", values_of<T>(fused_grad_beta), values_of<T>(grad_beta));
          checker.same_bits(backward, what + " grad_x sums", values_of<T>(fused_sums), values_of<T>(sums));
        } catch (const std::exception& e) {
          checker.exception(backward, what, e);
        }
      }
}

template void check_conv_case<float>(Checker&, const ConvCase&, Data&, const std::vector<SimdLevel>&, ConvCoverage&);
template void check_conv_case<double>(Checker&, const ConvCase&, Data&, const std::vector<SimdLevel>&,
                                      ConvCoverage&);
template void check_gemm<float>(Checker&, const std::vector<GemmShape>&, Data&);
template void check_gemm<double>(Checker&, const std::vector<GemmShape>&, Data&);
template void check_pooling<float>(Checker&, const std::vector<PoolCase>&, Data&);
template void check_pooling<double>(Checker&, const std::vector<PoolCase>&, Data&);
template void check_batch_norm<float>(Checker&, const std::vector<Shape>&, Data&);
template void check_batch_norm<double>(Checker&, const std::vector<Shape>&, Data&);
template void check_norm_relu_max_pool<float>(Checker&, const std::vector<Shape>&, const std::vector<PoolCase>&,
                                              Data&);
template void check_norm_relu_max_pool<double>(Checker&, const std::vector<Shape>&, const std::vector<PoolCase>&,
                                               Data&);

}  // namespace juanji::selftest

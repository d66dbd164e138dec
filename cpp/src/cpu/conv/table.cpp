// The algorithm tables: for each convolution pass, the CPU's algorithms in order of preference,
// and the entry points that run the chosen one.
#include <array>
#include <atomic>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/conv.hpp"
#include "cpu/conv/algorithms.hpp"
#include "cpu/ref/reference.hpp"

namespace juanji::cpu {
namespace conv {
namespace {

// ---- The algorithm tables: for each pass, the algorithms in order of preference --------------
// Each entry says why it refuses a problem (null when it takes it); the first that takes it runs,
// unless JUANJI_CONV_ALGO or set_conv_algorithm forces one by name. GEMM takes every problem;
// after it comes the plain-loop reference (cpu/ref/), which runs only when forced. The
// float32-only entries have no float64 function.

struct ConvProblem {
  const ConvGeometry& g;
  DType dtype;
  const void* weights;  // the data gradient's direct kernel needs finite weights
};

using Refusal = const char*;

Refusal float32_with_modest_padding(const ConvProblem& p) {
  if (p.dtype != DType::float32) return "float32 only";
  if (!padding_is_modest(p.g)) return "padding or dilation far larger than the image (padded planes would be huge)";
  return nullptr;
}

Refusal takes_every_problem(const ConvProblem&) { return nullptr; }

// One filter per channel takes the depthwise kernels in every pass, whatever its size, stride or
// dilation: the others spend a vector's lanes (filter blocks) or the direct kernel's blocks on a
// single filter, and strided layers went by GEMM (8x64x28x28, one thread: 3x3 forward 0.59 ->
// 0.39 ms against the direct kernel, weight gradient 0.64 -> 0.27; 5x5 1.01 -> 0.65, 0.93 -> 0.70).
Refusal refuses_depthwise(const ConvProblem& p) {
  if (Refusal why = float32_with_modest_padding(p)) return why;
  return use_depthwise(p.g)
             ? nullptr
             : "needs one filter per channel (groups = channels = filters) and rows of at most 1024 columns";
}

// The data gradients that read padded zeros (the error's, and the stride's gaps between its
// values) must not meet an infinite weight (inf * 0 = NaN where the definition has no product).
Refusal refuses_nonfinite_weights(const ConvProblem& p) {
  const auto* w = static_cast<const float*>(p.weights);
  return all_finite(w, p.g.K * (p.g.C / p.g.groups) * p.g.R * p.g.S)
             ? nullptr
             : "needs finite weights (its padded error's zeros would meet an infinity)";
}

// The forward pass and the weight gradient correlate the input with the same windows: the same
// conditions decide their fast paths.
Refusal refuses_direct(const ConvProblem& p) {
  if (Refusal why = float32_with_modest_padding(p)) return why;
  return use_direct(p.g, p.g.C / p.g.groups) ? nullptr : "needs stride 1 and at most 4 input channels per group";
}

Refusal refuses_winograd(const ConvProblem& p) {
  if (Refusal why = float32_with_modest_padding(p)) return why;
  return use_winograd(forward_correlation(p.g))
             ? nullptr
             : "needs a stride-1 undilated 3x3 kernel, 16+ channels in and out per group and Winograd on";
}

Refusal refuses_filter_blocks(const ConvProblem& p) {
  if (Refusal why = float32_with_modest_padding(p)) return why;
  return use_filter_blocks(forward_correlation(p.g)) ? nullptr : "needs 8+ filters per group";
}

// Winograd transforms every weight on each call and shares out its tiles by chunks: with few
// tiles the filter blocks are faster (2 threads, batch 1: 32 -> 64 channels at 14x14, 49 tiles,
// 111 -> 92 us; 512 at 7x7, 16 tiles, 6.0 -> 3.2 ms), though not with many channels (256 at
// 14x14: 2.0 ms either way on 2 threads, 2.4 against 3.6 on one). A choice by the shape alone,
// so that results never depend on the thread count.
Refusal passes_over_winograd(const ConvProblem& p) {
  const Correlation c = forward_correlation(p.g);
  const std::int64_t tiles = c.N * ((c.out_h + 1) / 2) * ((c.out_w + 1) / 2);
  if (tiles <= 32 || (tiles < 64 && c.in_per_group() <= 128))
    return "too few output tiles to pay for transforming the weights (filter blocks are faster)";
  return nullptr;
}

Refusal passes_over_filter_blocks(const ConvProblem& p) {
  return pointwise_forward_by_gemm(p.g) ? "a pointwise layer on planes this large is faster by GEMM" : nullptr;
}

struct ForwardAlgorithm {
  const char* name;
  Refusal (*refusal)(const ConvProblem&);
  Refusal (*passed_over)(const ConvProblem&);  // by the default choice, though it takes the problem; null: never
  // packs (or null): where the algorithms that lay the weights out keep their layouts
  // y_image: floats from one image's output to the next's (other than K * P * Q only where images_apart)
  void (*run_f32)(const ConvGeometry&, const float* x, const float* w, const float* bias, float* y, bool relu,
                  PackedWeights* packs, std::int64_t y_image);
  void (*run_f64)(const ConvGeometry&, const double* x, const double* w, const double* bias, double* y);
  bool applies_relu;  // whether run_f32 applies the ReLU it is asked for as it stores
  bool images_apart;  // whether run_f32 writes images that lie apart (a Concat's share of its output)
};

const std::array<ForwardAlgorithm, 6> kForwardAlgorithms{{
    {"depthwise",
     refuses_depthwise, nullptr,
     [](const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y, bool relu,
        PackedWeights*, std::int64_t) { depthwise_forward(g, x, w, bias, y, relu); },
     nullptr, true, false},
    {"direct",
     refuses_direct, nullptr,
     [](const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y, bool relu,
        PackedWeights*, std::int64_t) { direct_forward(g, x, w, bias, y, relu); },
     nullptr, true, false},
    {"winograd",
     refuses_winograd, passes_over_winograd,
     winograd_forward, nullptr, true, true},
    {"filter_blocks",
     refuses_filter_blocks, passes_over_filter_blocks,
     filter_block_forward, nullptr, true, true},
    {"gemm", takes_every_problem, nullptr,
     [](const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y, bool relu,
        PackedWeights*, std::int64_t y_image) { gemm_forward(g, x, w, bias, y, relu, y_image); },
     [](const ConvGeometry& g, const double* x, const double* w, const double* bias, double* y) {
       gemm_forward(g, x, w, bias, y);
     },
     true, true},
    {"reference", takes_every_problem, nullptr,
     [](const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y, bool,
        PackedWeights*, std::int64_t) { ref::conv_forward(g, x, w, bias, y); },
     ref::conv_forward<double>, false, false},
}};

struct DataGradAlgorithm {
  const char* name;
  Refusal (*refusal)(const ConvProblem&);
  void (*run_f32)(const ConvGeometry&, const float* dy, const float* w, float* dx);
  void (*run_f64)(const ConvGeometry&, const double* dy, const double* w, double* dx);
};

Refusal stride_one(const ConvProblem& p) {
  if (Refusal why = float32_with_modest_padding(p)) return why;
  return p.g.stride_h == 1 && p.g.stride_w == 1 ? nullptr : "needs stride 1 (strided layers go by stride phases)";
}

const std::array<DataGradAlgorithm, 7> kDataGradAlgorithms{{
    {"depthwise",
     [](const ConvProblem& p) -> Refusal {
       if (Refusal why = refuses_depthwise(p)) return why;
       return refuses_nonfinite_weights(p);
     },
     depthwise_backward_data, nullptr},
    {"strided_phases",
     [](const ConvProblem& p) -> Refusal {
       if (Refusal why = float32_with_modest_padding(p)) return why;
       return p.g.stride_h > 1 || p.g.stride_w > 1 ? nullptr : "needs a stride above 1";
     },
     strided_backward_data, nullptr},
    {"direct",
     [](const ConvProblem& p) -> Refusal {
       if (Refusal why = stride_one(p)) return why;
       if (!use_direct_data_grad(p.g)) return "needs few output channels per group (the direct kernel's data gradient)";
       return refuses_nonfinite_weights(p);
     },
     direct_backward_data, nullptr},
    {"winograd",
     [](const ConvProblem& p) -> Refusal {
       if (Refusal why = stride_one(p)) return why;
       return use_winograd(data_grad_correlation(p.g))
                  ? nullptr
                  : "needs an undilated 3x3 kernel, 16+ channels in and out per group and Winograd on";
     },
     winograd_backward_data, nullptr},
    {"filter_blocks",
     [](const ConvProblem& p) -> Refusal {
       if (Refusal why = stride_one(p)) return why;
       if (pointwise_data_grad_by_gemm(p.g)) return "a large pointwise layer's data gradient is faster by GEMM";
       return use_filter_blocks(data_grad_correlation(p.g)) ? nullptr : "needs 8+ input channels per group";
     },
     filter_block_backward_data, nullptr},
    {"gemm", takes_every_problem, gemm_backward_data<float>, gemm_backward_data<double>},
    {"reference", takes_every_problem, ref::conv_backward_data<float>, ref::conv_backward_data<double>},
}};

struct WeightGradAlgorithm {
  const char* name;
  Refusal (*refusal)(const ConvProblem&);
  void (*run_f32)(const ConvGeometry&, const float* dy, const float* x, float* dw, float* db);
  void (*run_f64)(const ConvGeometry&, const double* dy, const double* x, double* dw, double* db);
  // Whether db is bias_grad's sums, bit for bit (see conv_bias_grad_sums_planes).
  bool bias_as_plane_sums;
};

// The depthwise, Winograd and filter-block paths sum the bias gradient from the error planes they
// read, the last two as bias_grad sums it (the depthwise kernel sums its errors in float as it
// reads them: bias_grad's own pass, in double throughout, cost as much as its weight gradient on
// 7x7 planes); the others take a pass of their own over them, bias_grad's but for the reference's.
// Filter blocks also take layers with few input channels: they read the error once, where the
// direct kernel pads a copy of it first (convnet_c1, 1 -> 32 channels: 577 -> 392 us; cifar_c1:
// 1.39 -> 0.91 ms).
const std::array<WeightGradAlgorithm, 6> kWeightGradAlgorithms{{
    {"depthwise",
     refuses_depthwise,
     depthwise_backward_weight, nullptr, false},
    {"winograd",
     refuses_winograd,
     winograd_backward_weight, nullptr, true},
    {"filter_blocks",
     refuses_filter_blocks,
     filter_block_backward_weight, nullptr, true},
    {"direct",
     refuses_direct,
     [](const ConvGeometry& g, const float* dy, const float* x, float* dw, float* db) {
       if (db) bias_grad(g, dy, db);
       direct_backward_weight(g, dy, x, dw);
     },
     nullptr, true},
    {"gemm", takes_every_problem, gemm_backward_weight<float>, gemm_backward_weight<double>, true},
    {"reference", takes_every_problem, ref::conv_backward_weight<float>, ref::conv_backward_weight<double>, false},
}};

// The pass's entry named `name`, as the table's own name pointer, or null.
const char* table_name(ConvPass pass, const std::string& name) {
  const auto find = [&](const auto& table) -> const char* {
    for (const auto& a : table)
      if (name == a.name) return a.name;
    return nullptr;
  };
  switch (pass) {
    case ConvPass::forward: return find(kForwardAlgorithms);
    case ConvPass::data_grad: return find(kDataGradAlgorithms);
    case ConvPass::weight_grad: return find(kWeightGradAlgorithms);
  }
  return nullptr;
}

// Each pass's forced entry (ConvPass order) as its table's name pointer, null for the default
// choice: read by every convolution, so one atomic load. JUANJI_CONV_ALGO sets all three at
// start-up (a pass without that algorithm keeps the default).
std::array<std::atomic<const char*>, 3>& forced_algorithms() {
  static std::array<std::atomic<const char*>, 3> names = [] {
    const char* env = std::getenv("JUANJI_CONV_ALGO");
    const std::string name = env ? env : "";
    return std::array<std::atomic<const char*>, 3>{table_name(ConvPass::forward, name),
                                                   table_name(ConvPass::data_grad, name),
                                                   table_name(ConvPass::weight_grad, name)};
  }();
  return names;
}

const char* pass_name(ConvPass pass) {
  switch (pass) {
    case ConvPass::forward: return "forward";
    case ConvPass::data_grad: return "data gradient";
    case ConvPass::weight_grad: return "weight gradient";
  }
  return "?";
}

// Why the default choice goes past an entry that takes the problem (only forward entries have
// such a rule), or null.
template <class Algorithm>
Refusal passed_over(const Algorithm& a, const ConvProblem& p) {
  if constexpr (std::is_same_v<Algorithm, ForwardAlgorithm>)
    return a.passed_over ? a.passed_over(p) : nullptr;
  else
    return nullptr;
}

// The entry that runs the problem: the forced one where this pass has it (an error if it refuses
// the problem), else the first that takes it and is not passed over.
template <class Algorithm, std::size_t N>
const Algorithm& choose(const std::array<Algorithm, N>& table, const ConvProblem& p, ConvPass pass,
                        bool allow_forced) {
  const char* forced = allow_forced ? forced_algorithms()[static_cast<std::size_t>(pass)].load() : nullptr;
  if (forced) {
    for (const Algorithm& a : table) {
      if (forced != a.name) continue;
      const Refusal why = a.refusal(p);
      check(why == nullptr, "conv: the forced ", pass_name(pass), " algorithm '", a.name,
            "' (JUANJI_CONV_ALGO) does not take this layer: ", why ? why : "");
      return a;
    }
  }
  for (const Algorithm& a : table)
    if (!a.refusal(p) && !passed_over(a, p)) return a;
  return table.back();
}

template <class Algorithm, std::size_t N>
std::vector<ConvAlgorithmChoice> describe(const std::array<Algorithm, N>& table, const ConvProblem& p) {
  std::vector<ConvAlgorithmChoice> out;
  for (const Algorithm& a : table) {
    const Refusal why = a.refusal(p);
    const Refusal passed = why ? nullptr : passed_over(a, p);
    out.push_back({a.name, why ? why : "", passed ? passed : ""});
  }
  return out;
}

}  // namespace

void default_data_grad_f32(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  choose(kDataGradAlgorithms, {g, DType::float32, w}, ConvPass::data_grad, false).run_f32(g, dy, w, dx);
}

}  // namespace conv

using conv::choose;
using conv::kDataGradAlgorithms;
using conv::kForwardAlgorithms;
using conv::kWeightGradAlgorithms;

namespace {

// Floats from one image of a non-contiguous y to the next, after checking that each image lies in
// one piece (a Concat's share of its output).
std::int64_t image_floats_apart(const Tensor& y) {
  std::int64_t expected = 1;
  for (std::size_t d = y.shape().size(); d-- > 1;) {
    check(y.size(d) == 1 || y.strides()[d] == expected, "conv_forward: the output ", shape_text(y.shape()),
          " must be contiguous or a view whose images each lie in one piece (strides ", shape_text(y.strides()), ")");
    expected *= y.size(d);
  }
  return y.strides()[0];
}

// Runs run(out, out_image) for the algorithm straight into y, or, where y's images lie apart and
// the algorithm cannot write them so, into a buffer then copied into y. The sums have terms, so
// y has images (N > 0).
template <class Run>
void into_output(const conv::ForwardAlgorithm& algorithm, bool float32, Tensor& y, Run run) {
  const std::int64_t natural = y.numel() / y.size(0);
  if (y.is_contiguous()) return run(y, natural);
  const std::int64_t apart = image_floats_apart(y);
  if (float32 && algorithm.images_apart) return run(y, apart);
  Tensor packed = Tensor::empty(y.shape(), y.dtype(), y.device());
  run(packed, natural);
  y.copy_(packed);
}

}  // namespace

void conv_forward(const ConvGeometry& g, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
                  PackedWeights* packs) {
  const auto& algorithm = choose(kForwardAlgorithms, {g, x.dtype(), nullptr}, ConvPass::forward, true);
  const bool float32 = x.dtype() == DType::float32;
  into_output(algorithm, float32, y, [&](Tensor& out, std::int64_t out_image) {
    if (float32)
      algorithm.run_f32(g, x.data<float>(), w.data<float>(), data_or_null<float>(bias), out.data<float>(), false,
                        packs, out_image);
    else
      algorithm.run_f64(g, x.data<double>(), w.data<double>(), data_or_null<double>(bias), out.data<double>());
  });
}

bool conv_forward_relu(const ConvGeometry& g, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
                       PackedWeights* packs) {
  if (x.dtype() != DType::float32) return false;
  // The same choice as conv_forward's.
  const auto& algorithm = choose(kForwardAlgorithms, {g, x.dtype(), nullptr}, ConvPass::forward, true);
  if (!algorithm.applies_relu) return false;
  into_output(algorithm, true, y, [&](Tensor& out, std::int64_t out_image) {
    algorithm.run_f32(g, x.data<float>(), w.data<float>(), data_or_null<float>(bias), out.data<float>(), true, packs,
                      out_image);
  });
  return true;
}

void conv_backward_data(const ConvGeometry& g, const Tensor& grad_y, const Tensor& w, Tensor& grad_x) {
  const auto& algorithm = choose(kDataGradAlgorithms, {g, w.dtype(), w.data_ptr()}, ConvPass::data_grad, true);
  if (w.dtype() == DType::float32)
    algorithm.run_f32(g, grad_y.data<float>(), w.data<float>(), grad_x.data<float>());
  else
    algorithm.run_f64(g, grad_y.data<double>(), w.data<double>(), grad_x.data<double>());
}

bool conv_bias_grad_sums_planes(const ConvGeometry& g, DType dtype) {
  return choose(kWeightGradAlgorithms, {g, dtype, nullptr}, ConvPass::weight_grad, true).bias_as_plane_sums;
}

void conv_backward_weight(const ConvGeometry& g, const Tensor& grad_y, const Tensor& x, Tensor& grad_w,
                          Tensor& grad_b) {
  const auto& algorithm = choose(kWeightGradAlgorithms, {g, x.dtype(), nullptr}, ConvPass::weight_grad, true);
  if (x.dtype() == DType::float32)
    algorithm.run_f32(g, grad_y.data<float>(), x.data<float>(), grad_w.data<float>(), data_or_null<float>(grad_b));
  else
    algorithm.run_f64(g, grad_y.data<double>(), x.data<double>(), grad_w.data<double>(),
                      data_or_null<double>(grad_b));
}

void conv_bias_grad(const ConvGeometry& g, const Tensor& grad_y, Tensor& grad_b) {
  dispatch_float(grad_b.dtype(), [&](auto tag) {
    using T = decltype(tag);
    conv::bias_grad<T>(g, grad_y.data<T>(), grad_b.data<T>());
  });
}

std::vector<ConvAlgorithmChoice> conv_algorithms(ConvPass pass, const ConvGeometry& g, DType dtype,
                                                 const float* weights) {
  const conv::ConvProblem p{g, dtype, weights};
  switch (pass) {
    case ConvPass::forward: return conv::describe(kForwardAlgorithms, p);
    case ConvPass::data_grad: return conv::describe(kDataGradAlgorithms, p);
    case ConvPass::weight_grad: return conv::describe(kWeightGradAlgorithms, p);
  }
  return {};
}

std::string force_conv_algorithm(ConvPass pass, const std::string& name) {
  const char* entry = conv::table_name(pass, name);
  check(entry || name.empty(), "set_conv_algorithm: the ", conv::pass_name(pass), " has no algorithm named '", name, "'");
  const char* previous = conv::forced_algorithms()[static_cast<std::size_t>(pass)].exchange(entry);
  return previous ? previous : "";
}

}  // namespace juanji::cpu

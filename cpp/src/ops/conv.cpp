// Convolution's ops layer: checks the arguments, resolves the geometry and runs each pass on the
// tensors' backend (the CPU's algorithm tables in cpu/conv/, or CUDA's implicit GEMM).
#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "core/checked_math.hpp"
#include "cpu/conv.hpp"
#include "cpu/op_support.hpp"
#include "juanji/ops/conv.hpp"
#include "ops/backend.hpp"
#include "ops/bfloat16_operands.hpp"
#include "ops/checks.hpp"

namespace juanji {
namespace {

std::vector<std::int64_t> per_dim(const std::vector<std::int64_t>& values, int dims, const char* name) {
  check(values.size() == 1 || static_cast<int>(values.size()) == dims, name, ": expected 1 or ",
        dims, " values, got ", values.size());
  return values.size() == 1 ? std::vector<std::int64_t>(dims, values[0]) : values;
}

// One spatial dim resolved: its before/after padding, padded size and output size.
struct Resolved {
  std::int64_t pad_before, pad_after, padded, out;
};

// n and span (the dilated kernel's extent) are at most kMaxSpatialExtent; s is any stride.
// Returns nullopt where the padded size would exceed kMaxSpatialExtent.
std::optional<Resolved> resolve_dim(std::int64_t n, std::int64_t span, std::int64_t s,
                                    const PaddingSpec& padding, std::int64_t explicit_pad) {
  std::int64_t before = 0, after = 0;
  switch (padding.kind) {
    case PaddingSpec::Kind::same: {
      // TensorFlow's rule: out = ceil(n / s), the extra padding going after when odd. Then
      // (out - 1) * s < n: no overflow, whatever the stride.
      const std::int64_t out = (n - 1) / s + 1;
      const std::int64_t total = std::max<std::int64_t>((out - 1) * s + span - n, 0);
      before = total / 2;
      after = total - before;
      break;
    }
    case PaddingSpec::Kind::valid: break;
    case PaddingSpec::Kind::explicit_sizes: before = after = explicit_pad; break;
  }
  const MaybeSize padded = checked_add(n, checked_add(before, after));
  if (!padded || *padded > kMaxSpatialExtent) return std::nullopt;
  return Resolved{before, after, *padded, *padded >= span ? (*padded - span) / s + 1 : 0};
}

void check_conv_operands(const Tensor& x, const Tensor& w, const Tensor& bias, int dims) {
  check_float(x, "x");
  check_float(w, "weight");
  check_same_dtype(x, "x", w, "weight");
  check_same_device(x, "x", w, "weight");
  if (bias.defined()) {
    check_float(bias, "bias");
    check_same_dtype(x, "x", bias, "bias");
    check_same_device(x, "x", bias, "bias");
    check(bias.dim() == 1 && bias.size(0) == w.size(0), "bias: expected shape (", w.size(0),
          ",) to match weight ", shape_text(w.shape()), ", got ", shape_text(bias.shape()));
  }
  ops::require_supported_device(x, dims == 1 ? "conv1d" : "conv2d", "x");
}

Tensor as_2d_input(const Tensor& t, int dims) {
  // conv1d is conv2d with a height of 1: (N, C, L) -> (N, C, 1, L), a view.
  return dims == 1 ? t.reshape({t.size(0), t.size(1), 1, t.size(2)}) : t;
}

}  // namespace

ConvGeometry ConvGeometry::make(const Shape& x, const Shape& w, const ConvOptions& options,
                                int spatial_dims) {
  const char* layout = spatial_dims == 1 ? "(N, C, L)" : "(N, C, H, W)";
  const char* wlayout = spatial_dims == 1 ? "(K, C/groups, kL)" : "(K, C/groups, R, S)";
  const std::size_t rank = static_cast<std::size_t>(spatial_dims) + 2;
  check(x.size() == rank, "x: expected a ", rank, "-d tensor ", layout, ", got shape ", shape_text(x));
  check(w.size() == rank, "weight: expected a ", rank, "-d tensor ", wlayout, ", got shape ",
        shape_text(w));
  check(options.groups >= 1, "groups: must be positive, got ", options.groups);
  const auto stride = per_dim(options.stride, spatial_dims, "stride");
  const auto dilation = per_dim(options.dilation, spatial_dims, "dilation");
  std::vector<std::int64_t> pads(spatial_dims, 0);
  if (options.padding.kind == PaddingSpec::Kind::explicit_sizes)
    pads = per_dim(options.padding.sizes, spatial_dims, "padding");
  for (int d = 0; d < spatial_dims; ++d) {
    check(stride[d] > 0, "stride: must be positive, got ", shape_text(stride));
    check(dilation[d] > 0, "dilation: must be positive, got ", shape_text(dilation));
    check(pads[d] >= 0, "padding: must be non-negative, got ", shape_text(pads));
  }
  ConvGeometry g{};
  g.spatial_dims = spatial_dims;
  g.groups = options.groups;
  g.N = x[0];
  g.C = x[1];
  g.K = w[0];
  check(g.K > 0, "weight: no filters in shape ", shape_text(w));
  check(g.K % g.groups == 0, "weight: K=", g.K, " filters in ", shape_text(w),
        " are not divisible by groups=", g.groups);
  const MaybeSize expected_channels = checked_mul(w[1], g.groups);
  check(expected_channels == g.C, "weight: ", shape_text(w), " expects C = ", w[1], " x groups ", g.groups,
        expected_channels ? " = " + std::to_string(*expected_channels) : std::string(" (past int64)"),
        " input channels, but x ", shape_text(x), " has C = ", g.C);
  g.H = spatial_dims == 2 ? x[2] : 1;
  g.W = x[rank - 1];
  g.R = spatial_dims == 2 ? w[2] : 1;
  g.S = w[rank - 1];
  check(g.H > 0 && g.W > 0, "x: empty spatial size in shape ", shape_text(x));
  check(g.R > 0 && g.S > 0, "weight: empty kernel in shape ", shape_text(w));
  check(g.H <= kMaxSpatialExtent && g.W <= kMaxSpatialExtent, "x: a spatial size of ", shape_text(x),
        " exceeds ", kMaxSpatialExtent);
  const int hd = spatial_dims == 2 ? 0 : -1, wd = spatial_dims - 1;
  g.stride_h = hd >= 0 ? stride[hd] : 1;
  g.dil_h = hd >= 0 ? dilation[hd] : 1;
  g.stride_w = stride[wd];
  g.dil_w = dilation[wd];
  const MaybeSize span_h = checked_add(checked_mul(g.dil_h, g.R - 1), 1);
  const MaybeSize span_w = checked_add(checked_mul(g.dil_w, g.S - 1), 1);
  const auto within_extent = [](MaybeSize size) { return size && *size <= kMaxSpatialExtent; };
  check(within_extent(span_h) && within_extent(span_w), "dilation: kernel ", shape_text(w),
        " with dilation ", shape_text(dilation), " spans more than ", kMaxSpatialExtent, " elements");
  const auto rh = hd >= 0 ? resolve_dim(g.H, *span_h, g.stride_h, options.padding, pads[hd])
                          : Resolved{0, 0, 1, 1};
  const auto rw = resolve_dim(g.W, *span_w, g.stride_w, options.padding, pads[wd]);
  const bool same = options.padding.kind == PaddingSpec::Kind::same;
  check(rh && rw, "padding: x ", shape_text(x), " with ", same ? "'same' padding" : "padding ",
        same ? std::string() : shape_str(pads), " for kernel ", shape_text(w), ", dilation ",
        shape_text(dilation), " and stride ", shape_text(stride), " is padded past ", kMaxSpatialExtent,
        " elements");
  check(*span_h <= rh->padded && *span_w <= rw->padded, "weight: kernel ", shape_text(w), " with dilation ",
        shape_text(dilation), " spans more than the padded input ", shape_text(x), " (padding ",
        rh->pad_before, "+", rh->pad_after, ", ", rw->pad_before, "+", rw->pad_after, ")");
  g.pad_top = rh->pad_before;
  g.pad_left = rw->pad_before;
  g.P = rh->out;
  g.Q = rw->out;
  // Along a dim with one output the stride moves no window: capped at the padded size it keeps
  // the kernels' offsets (a window's start plus a stride) and their loops over the stride's
  // phases within the input's scale.
  if (g.P == 1) g.stride_h = std::min(g.stride_h, rh->padded);
  if (g.Q == 1) g.stride_w = std::min(g.stride_w, rw->padded);
  check(allocatable_numel(g.output_shape()).has_value(), "output: x ", shape_text(x), " and weight ",
        shape_text(w), " with stride ", shape_text(stride), ", padding ", rh->pad_before, "+",
        rh->pad_after, ", ", rw->pad_before, "+", rw->pad_after, " and dilation ", shape_text(dilation),
        " give an output ", shape_text(g.output_shape()), " of too many elements");
  return g;
}

Shape ConvGeometry::output_shape() const {
  if (spatial_dims == 1) return {N, K, Q};
  return {N, K, P, Q};
}

double ConvGeometry::flops() const {
  return 2.0 * N * K * P * Q * (C / groups) * R * S;
}

namespace {

// An empty batch, or a layer without input channels: the sums have no terms, which the kernels'
// work splitting does not expect. The results are computed here, on the host.
bool has_no_terms(const ConvGeometry& g) { return g.N == 0 || g.C == 0; }

// y (N, K, P, Q) = the bias of each filter (zero without one): every sum over no inputs.
void fill_with_bias(const ConvGeometry& g, const Tensor& bias, Tensor& y) {
  Tensor host = Tensor::zeros(y.shape(), y.dtype());
  if (bias.defined() && host.numel() > 0) {
    const Tensor b = bias.to(Device{}).to(DType::float64);
    cpu::dispatch_float(y.dtype(), [&](auto tag) {
      using T = decltype(tag);
      T* out = host.data<T>();
      for (std::int64_t plane = 0; plane < g.N * g.K; ++plane)
        std::fill(out + plane * g.P * g.Q, out + (plane + 1) * g.P * g.Q, static_cast<T>(b.data<double>()[plane % g.K]));
    });
  }
  y.copy_(host);
}

}  // namespace

namespace {

// packs where it serves w, else null: the kernels then pack w anew.
PackedWeights* packs_for(PackedWeights* packs, const Tensor& w) {
  return packs && packs->serves(w) ? packs : nullptr;
}

}  // namespace

void conv_forward(const ConvGeometry& g, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
                  PackedWeights* packs) {
  if (has_no_terms(g)) return fill_with_bias(g, bias, y);
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) return cuda::conv_forward(g, x, w, bias, y);
#endif
  cpu::conv_forward(g, x, w, bias, y, packs_for(packs, w));
}

bool conv_forward_activation(const ConvGeometry& g, const Tensor& x, const Tensor& w,
                             const Tensor& bias, Tensor& y, Activation kind, double negative_slope,
                             PackedWeights* packs) {
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) {
    cuda::conv_forward(g, x, w, bias, y, {true, kind, negative_slope});
    return true;
  }
#endif
  (void)negative_slope;
  if (kind != Activation::relu || has_no_terms(g)) return false;
  return cpu::conv_forward_relu(g, x, w, bias, y, packs_for(packs, w));
}

void conv_backward_data(const ConvGeometry& g, const Tensor& grad_y, const Tensor& w, Tensor& grad_x) {
  if (has_no_terms(g)) return;  // grad_x has no elements
#if JUANJI_WITH_CUDA
  if (grad_y.device().is_cuda()) return cuda::conv_backward_data(g, grad_y, w, grad_x);
#endif
  cpu::conv_backward_data(g, grad_y, w, grad_x);
}

void conv_backward_weight(const ConvGeometry& g, const Tensor& grad_y, const Tensor& x,
                          Tensor& grad_w, Tensor& grad_b) {
  if (has_no_terms(g)) {
    if (grad_w.defined()) grad_w.zero_();
    if (!grad_b.defined()) return;
    // The bias gradient still sums the error (zero for an empty batch).
    const Tensor dy = grad_y.to(Device{}).contiguous();
    Tensor sums = Tensor::empty(grad_b.shape(), grad_b.dtype());
    cpu::conv_bias_grad(g, dy, sums);
    grad_b.copy_(sums);
    return;
  }
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) return cuda::conv_backward_weight(g, grad_y, x, grad_w, grad_b);
#endif
  cpu::conv_backward_weight(g, grad_y, x, grad_w, grad_b);
}

bool conv_bias_grad_sums_planes(const ConvGeometry& g, DType dtype, Device device) {
  return device.is_cuda() || has_no_terms(g) || cpu::conv_bias_grad_sums_planes(g, dtype);
}

namespace {

Tensor conv_nd(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvOptions& options, int dims) {
  check_conv_operands(x, w, bias, dims);
  const ConvGeometry g = ConvGeometry::make(x.shape(), w.shape(), options, dims);
  const Tensor xc = as_2d_input(x.contiguous(), dims), wc = w.contiguous();
  const Tensor bc = bias.defined() ? bias.contiguous() : Tensor();
  Tensor y = Tensor::empty(g.output_shape(), x.dtype(), x.device());
  conv_forward(g, xc, wc, bc, y);
  return y;
}

ConvGrads conv_nd_backward(const Tensor& grad_out, const Tensor& x, const Tensor& w,
                           const ConvOptions& options, int dims) {
  check_conv_operands(x, w, Tensor(), dims);
  check_float(grad_out, "grad_out");
  check_same_dtype(grad_out, "grad_out", x, "x");
  check_same_device(grad_out, "grad_out", x, "x");
  const ConvGeometry g = ConvGeometry::make(x.shape(), w.shape(), options, dims);
  check(grad_out.shape() == g.output_shape(), "grad_out: expected shape ", shape_text(g.output_shape()),
        " (the output of x ", shape_text(x.shape()), " and weight ", shape_text(w.shape()), "), got ",
        shape_text(grad_out.shape()));
  const Tensor dy = grad_out.contiguous(), xc = as_2d_input(x.contiguous(), dims), wc = w.contiguous();
  ConvGrads grads{Tensor::empty(x.shape(), x.dtype(), x.device()),
                  Tensor::empty(w.shape(), w.dtype(), x.device()), Tensor::empty({g.K}, x.dtype(), x.device())};
  conv_backward_data(g, dy, wc, grads.grad_x);
  conv_backward_weight(g, dy, xc, grads.grad_w, grads.grad_b);
  return grads;
}

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvOptions& options) {
  if (ops::in_bfloat16("conv2d", {{"x", x}, {"weight", w}, {"bias", bias}}))
    return ops::narrowed(conv_nd(ops::widened(x), ops::widened(w), ops::widened(bias), options, 2));
  return conv_nd(x, w, bias, options, 2);
}
Tensor conv1d(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvOptions& options) {
  if (ops::in_bfloat16("conv1d", {{"x", x}, {"weight", w}, {"bias", bias}}))
    return ops::narrowed(conv_nd(ops::widened(x), ops::widened(w), ops::widened(bias), options, 1));
  return conv_nd(x, w, bias, options, 1);
}

namespace {
ConvGrads conv_backward_any(const Tensor& grad_out, const Tensor& x, const Tensor& w, const ConvOptions& options,
                            int dims) {
  if (!ops::in_bfloat16(dims == 1 ? "conv1d_backward" : "conv2d_backward",
                        {{"grad_out", grad_out}, {"x", x}, {"weight", w}}))
    return conv_nd_backward(grad_out, x, w, options, dims);
  const ConvGrads grads =
      conv_nd_backward(ops::widened(grad_out), ops::widened(x), ops::widened(w), options, dims);
  return {ops::narrowed(grads.grad_x), ops::narrowed(grads.grad_w), ops::narrowed(grads.grad_b)};
}
}  // namespace

ConvGrads conv2d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& w, const ConvOptions& options) {
  return conv_backward_any(grad_out, x, w, options, 2);
}
ConvGrads conv1d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& w, const ConvOptions& options) {
  return conv_backward_any(grad_out, x, w, options, 1);
}

std::vector<ConvAlgorithmChoice> conv_algorithms(ConvPass pass, const ConvGeometry& g, DType dtype,
                                                 const Tensor& weight) {
  check(dtype == DType::float32 || dtype == DType::float64, "conv_algorithms: dtype must be float32 or float64");
  const bool finite_check = pass == ConvPass::data_grad && dtype == DType::float32;
  if (finite_check) {
    ops::check_kernel_tensor(weight, "conv_algorithms", "weight", DType::float32, g.K * (g.C / g.groups) * g.R * g.S);
    check(weight.device().is_cpu(), "conv_algorithms: weight must be on the CPU");
  }
  return cpu::conv_algorithms(pass, g, dtype, finite_check ? weight.data<float>() : nullptr);
}

std::string set_conv_algorithm(ConvPass pass, const std::string& name) {
  return cpu::force_conv_algorithm(pass, name);
}

}  // namespace juanji

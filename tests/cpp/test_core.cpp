// C++-side checks of the public API: views, a convolution against a plain-loop oracle at every
// SIMD level, max pooling's gradient for any argmax, the C++ exception for bad arguments, the
// fused batch norm + ReLU + max pooling kernels, a training step and a checkpoint round trip, the
// augmenting batch loader, and bfloat16 tensors.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <juanji/checkpoint.hpp>
#include <juanji/juanji.hpp>

#include "expect.hpp"

namespace {

using public_check::expect;

using namespace juanji;

// y[n][k][p][q] = b[k] + sum_{c,r,s} w[k][c][r][s] * x[n][c][p*st + r - pad][q*st + s - pad]
double oracle(const Tensor& x, const Tensor& w, const Tensor& b, std::int64_t st, std::int64_t pad,
              std::int64_t n, std::int64_t k, std::int64_t p, std::int64_t q) {
  const auto& xs = x.shape();
  const auto& ws = w.shape();
  double sum = b.data<double>()[k];
  for (std::int64_t c = 0; c < ws[1]; ++c)
    for (std::int64_t r = 0; r < ws[2]; ++r)
      for (std::int64_t s = 0; s < ws[3]; ++s) {
        const std::int64_t h = p * st + r - pad, v = q * st + s - pad;
        if (h < 0 || h >= xs[2] || v < 0 || v >= xs[3]) continue;
        sum += w.data<double>()[((k * ws[1] + c) * ws[2] + r) * ws[3] + s] *
               x.data<double>()[((n * xs[1] + c) * xs[2] + h) * xs[3] + v];
      }
  return sum;
}

void test_views() {
  Tensor t = Tensor::arange(0, 24, 1, DType::float64).reshape({2, 3, 4});
  Tensor tr = t.transpose(0, 2);
  expect(tr.shape() == Shape({4, 3, 2}) && !tr.is_contiguous(), "transpose is a view");
  expect(tr.contiguous().data<double>()[1] == 12.0, "contiguous copy of a transpose");
  expect(t.slice(2, 1, 4, 2).select(0, 1).contiguous().data<double>()[2] == 17.0, "slice and select");
}

void test_conv_against_oracle() {
  manual_seed(7);
  const Tensor x = randn({2, 3, 9, 8}, DType::float64), w = randn({4, 3, 3, 3}, DType::float64);
  const Tensor b = randn({4}, DType::float64);
  ConvOptions options;
  options.stride = {2};
  options.padding = PaddingSpec::of({1});
  for (SimdLevel level : {SimdLevel::portable, SimdLevel::avx2, SimdLevel::avx512}) {
    set_simd_level(level);
    const Tensor y = conv2d(x, w, b, options);
    double worst = 0;
    for (std::int64_t n = 0; n < 2; ++n)
      for (std::int64_t k = 0; k < 4; ++k)
        for (std::int64_t p = 0; p < y.size(2); ++p)
          for (std::int64_t q = 0; q < y.size(3); ++q) {
            const double got = y.data<double>()[((n * 4 + k) * y.size(2) + p) * y.size(3) + q];
            worst = std::max(worst, std::fabs(got - oracle(x, w, b, 2, 1, n, k, p, q)));
          }
    expect(worst < 1e-12, std::string("conv2d matches the oracle at ") + simd_name(simd_level()));
  }
  set_simd_level(simd_detected());
}

// The kernel API takes any argmax: an index outside its window (inside the plane) still gets the
// gradient, one outside the plane (here one that would match its window after truncation to 32
// bits) none.
void test_max_pool_backward_with_stray_argmax() {
  PoolOptions options;
  options.kernel = {2};
  const Tensor x = randn({1, 2, 4, 40});
  const PoolGeometry g = PoolGeometry::make(x.shape(), options, 2, "test");
  Tensor y = Tensor::empty(g.output_shape()), argmax = Tensor::empty(g.output_shape(), DType::int64);
  max_pool_forward(g, x, y, argmax);
  const Tensor grad_y = Tensor::arange(1, 81, 1, DType::float32).reshape(g.output_shape());
  std::int64_t* at = argmax.data<std::int64_t>();
  at[0] = 3;                              // plane 0: window (0, 1)'s input
  at[40 + 17] = at[40 + 17] + (1LL << 32);  // plane 1: outside the plane
  const std::int64_t plane = g.H * g.W, windows = g.P * g.Q;
  std::vector<float> expected(2 * plane, 0.0f);
  for (std::int64_t c = 0; c < 2; ++c)
    for (std::int64_t i = 0; i < windows; ++i) {
      const std::int64_t index = at[c * windows + i];
      if (index >= 0 && index < plane) expected[c * plane + index] += grad_y.data<float>()[c * windows + i];
    }
  for (SimdLevel level : {SimdLevel::portable, SimdLevel::avx2, SimdLevel::avx512}) {
    set_simd_level(level);
    Tensor grad_x = Tensor::full(x.shape(), 7.0, DType::float32);
    max_pool_backward(g, grad_y, argmax, grad_x);
    bool same = true;
    for (std::int64_t i = 0; i < 2 * plane; ++i) same &= grad_x.data<float>()[i] == expected[i];
    expect(same, std::string("max_pool_backward scatters stray argmaxes at ") + simd_name(simd_level()));
  }
  set_simd_level(simd_detected());
}

// Bit for bit, for float32 and int64 tensors.
bool same_values(const Tensor& a, const Tensor& b) {
  if (a.numel() != b.numel() || a.dtype() != b.dtype()) return false;
  const auto count = static_cast<std::size_t>(a.numel());
  if (a.dtype() == DType::int64)
    return std::memcmp(a.data<std::int64_t>(), b.data<std::int64_t>(), count * sizeof(std::int64_t)) == 0;
  return std::memcmp(a.data<float>(), b.data<float>(), count * sizeof(float)) == 0;
}

// The fused batch norm + ReLU + max pooling kernels against the separate ones they replace, bit
// for bit at every SIMD level (7x9 planes: a row and a column outside every 2x2 window), and their
// argument checks.
void test_batch_norm_relu_max_pool_kernels() {
  manual_seed(3);
  PoolOptions options;
  options.kernel = {2};
  const Tensor x = randn({3, 4, 7, 9}), gamma = randn({4}), beta = randn({4});
  const PoolGeometry g = PoolGeometry::make(x.shape(), options, 2, "test");
  const Tensor grad_y = randn(g.output_shape());
  for (SimdLevel level : {SimdLevel::portable, SimdLevel::avx2, SimdLevel::avx512}) {
    if (level > simd_detected()) continue;
    set_simd_level(level);
    Tensor mean[2], invstd[2], running_mean[2], running_var[2], y[2], argmax = Tensor::empty(g.output_shape(), DType::int64);
    Tensor affine = Tensor::empty({4, 2});
    Tensor grad_x[2], grad_gamma[2], grad_beta[2], sums[2];
    for (int fused = 0; fused < 2; ++fused) {
      mean[fused] = Tensor::empty({4}), invstd[fused] = Tensor::empty({4});
      running_mean[fused] = Tensor::zeros({4}), running_var[fused] = Tensor::full({4}, 1.0);
      y[fused] = Tensor::empty(g.output_shape());
      grad_x[fused] = Tensor::empty(x.shape());
      grad_gamma[fused] = Tensor::empty({4}), grad_beta[fused] = Tensor::empty({4}), sums[fused] = Tensor::empty({4});
    }
    Tensor normalized = Tensor::empty(x.shape()), grad_normalized = Tensor::empty(x.shape());
    batch_norm2d_forward(x, gamma, beta, running_mean[0], running_var[0], true, 0.1, 1e-5, normalized,
                         mean[0], invstd[0], true);
    max_pool_forward(g, normalized, y[0], argmax);
    max_pool_relu_backward(g, grad_y, argmax, y[0], grad_normalized);
    batch_norm2d_backward(grad_normalized, x, gamma, mean[0], invstd[0], grad_x[0], grad_gamma[0],
                          grad_beta[0], &sums[0]);
    batch_norm2d_relu_max_pool_forward(x, gamma, beta, running_mean[1], running_var[1], true, 0.1, 1e-5,
                                       g, y[1], affine, mean[1], invstd[1]);
    batch_norm2d_relu_max_pool_backward(g, grad_y, affine, x, gamma, mean[1], invstd[1], grad_x[1],
                                        grad_gamma[1], grad_beta[1], &sums[1]);
    bool same = true;
    for (const Tensor* pair : {y, running_mean, running_var, mean, invstd, grad_x, grad_gamma, grad_beta, sums})
      same &= same_values(pair[0], pair[1]);
    expect(same, std::string("batch norm + ReLU + max pooling fused = apart at ") + simd_name(level));
  }
  set_simd_level(simd_detected());

  auto message = [&](const PoolGeometry& pool, const Tensor& y) {
    Tensor none, mean = Tensor::empty({4}), invstd = Tensor::empty({4});
    Tensor running_mean = Tensor::zeros({4}), running_var = Tensor::full({4}, 1.0);
    try {
      batch_norm2d_relu_max_pool_forward(x, gamma, beta, running_mean, running_var, true, 0.1, 1e-5, pool,
                                         const_cast<Tensor&>(y), none, mean, invstd);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const PoolGeometry other = PoolGeometry::make({3, 4, 8, 9}, options, 2, "test");
  expect(message(other, Tensor::empty(other.output_shape())).find("(3, 4, 8, 9), x has shape (3, 4, 7, 9)") !=
             std::string::npos,
         "a pooling geometry for another input is refused, naming both shapes");
  expect(message(g, Tensor::empty({3, 4, 3})).find("y has shape (3, 4, 3)") != std::string::npos,
         "a pooled output of the wrong size is refused, naming y and its shape");
}

void test_bad_arguments_throw() {
  bool thrown = false;
  try {
    conv2d(Tensor::zeros({1, 3, 5, 5}), Tensor::zeros({2, 4, 3, 3}), Tensor(), ConvOptions{});
  } catch (const std::invalid_argument& e) {
    thrown = std::string(e.what()).find("weight") != std::string::npos;
  }
  expect(thrown, "channel mismatch throws std::invalid_argument naming the weight");
}

void test_training_and_checkpoint() {
  manual_seed(1);
  ConvOptions same;
  same.padding = PaddingSpec::same();
  PoolOptions pool;
  pool.kernel = {2};
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Layer>>{
      std::make_shared<nn::Conv>(2, 1, 4, std::vector<std::int64_t>{3}, same, true),
      std::make_shared<nn::ActivationLayer>(Activation::relu),
      std::make_shared<nn::Pool>(nn::Pool::Kind::max, 2, pool), std::make_shared<nn::Flatten>(),
      std::make_shared<nn::Linear>(4 * 4 * 4, 3, true)});
  const Tensor x = randn({6, 1, 8, 8});
  Tensor labels = Tensor::empty({6}, DType::int64);
  for (int i = 0; i < 6; ++i) labels.data<std::int64_t>()[i] = i % 3;
  optim::SGD sgd(model->trainable_parameters(), 0.05, 0.9);
  nn::CrossEntropyLoss loss;
  const double first = model->train_step(x, labels, loss, sgd);
  double last = first;
  for (int i = 0; i < 30; ++i) last = model->train_step(x, labels, loss, sgd);
  expect(last < 0.5 * first, "training lowers the loss");

  const std::string path = "juanji_core_test.safetensors";
  model->save(path, {{"note", "ctest"}});
  Metadata meta;
  auto loaded = nn::Sequential::load(path, &meta);
  const Tensor a = model->forward(x, false).clone(), b = loaded->forward(x, false);
  bool same_output = true;
  for (std::int64_t i = 0; i < a.numel(); ++i) same_output &= a.data<float>()[i] == b.data<float>()[i];
  expect(same_output && meta.size() == 1 && meta[0].second == "ctest", "checkpoint round trip");
  std::remove(path.c_str());
}

void test_batch_loader() {
  // Image i is filled with the value i, so each batch's pixels name the images it holds.
  const std::int64_t count = 10;
  Tensor images = Tensor::empty({count, 1, 3, 3});
  Tensor labels = Tensor::empty({count}, DType::int64);
  for (std::int64_t i = 0; i < count; ++i) {
    for (int k = 0; k < 9; ++k) images.data<float>()[i * 9 + k] = static_cast<float>(i);
    labels.data<std::int64_t>()[i] = 100 + i;
  }
  data::LoaderOptions options;
  options.batch_size = 4;
  options.seed = 3;
  options.epoch = 1;
  const data::EpochPlan plan = data::plan_epoch(count, options);
  data::BatchLoader loader(images, labels, options);
  expect(loader.num_batches() == 3, "10 images in batches of 4 make 3 batches");
  std::int64_t position = 0;
  bool in_plan_order = true;
  while (std::optional<data::Batch> batch = loader.next()) {
    for (std::int64_t b = 0; b < batch->labels.numel(); ++b, ++position) {
      const std::int64_t index = plan.order[position];
      in_plan_order &= batch->labels.data<std::int64_t>()[b] == 100 + index &&
                       batch->images.data<float>()[b * 9 + 4] == static_cast<float>(index);
    }
  }
  expect(in_plan_order && position == count, "the batches follow the plan, with their labels");
  expect(!loader.next(), "next() after the last batch gives nothing");

  {
    // Dropped mid-epoch while its worker waits for room: the destructor must stop it, not hang.
    data::BatchLoader abandoned(images, labels, options);
    abandoned.next();
  }

  bool thrown = false;
  try {
    options.batch_size = 0;
    data::BatchLoader bad(images, labels, options);
  } catch (const std::invalid_argument& e) {
    thrown = std::string(e.what()).find("batch_size") != std::string::npos;
  }
  expect(thrown, "batch_size 0 throws std::invalid_argument naming it");
}

// bfloat16 tensors from C++: conversions rounding once to nearest even, random numbers, DLPack,
// a BF16 checkpoint, and MPI sums refusing them (broadcast takes them as bits).
void test_bfloat16_tensors() {
  // float32 would round 1 + 2^-8 + 2^-40 to the tie 1 + 2^-8, and that to 1.
  const double above_tie = 1 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40);
  expect(Tensor::full({1}, above_tie, DType::float64).to(DType::bfloat16).item() == 1 + std::ldexp(1.0, -7),
         "float64 -> bfloat16 rounds once");
  expect(Tensor::full({1}, 1 + std::ldexp(1.0, -8), DType::float32).to(DType::bfloat16).item() == 1.0,
         "a float32 tie rounds to the even bfloat16");
  const Tensor steps = Tensor::arange(0, 4, 0.5, DType::bfloat16);
  expect(steps.numel() == 8 && steps.data<bfloat16>()[7].bits == 0x4060, "arange in bfloat16 ends at 3.5");

  manual_seed(4);
  const Tensor wide = randn({64}, DType::float64);
  manual_seed(4);
  const Tensor narrow = randn({64}, DType::bfloat16);
  bool rounded = true;
  for (std::int64_t i = 0; i < 64; ++i)
    rounded &= narrow.data<bfloat16>()[i].bits == bfloat16(wide.data<double>()[i]).bits;
  expect(rounded, "randn in bfloat16 is the float64 draws rounded");

  DLManagedTensor* exported = to_dlpack(narrow);
  expect(exported->dl_tensor.dtype.code == kDLBfloat && exported->dl_tensor.dtype.bits == 16,
         "DLPack describes bfloat16 as kDLBfloat, 16 bits");
  const Tensor imported = from_dlpack(exported);
  expect(imported.dtype() == DType::bfloat16 && imported.data_ptr() == narrow.data_ptr(),
         "DLPack brings bfloat16 back without a copy");

  const std::string path = "juanji_core_bf16.safetensors";
  save_safetensors(path, {{"x", narrow}});
  const SafetensorsContents contents = load_safetensors(path);
  std::remove(path.c_str());
  const Tensor& loaded = contents.tensors.at(0).tensor;
  expect(loaded.dtype() == DType::bfloat16 &&
             std::memcmp(loaded.data_ptr(), narrow.data_ptr(), 64 * sizeof(bfloat16)) == 0,
         "a BF16 checkpoint round trip keeps every bit");

  Tensor sums = Tensor::full({3}, 1.0, DType::bfloat16);
  bool refused = false;
  try {
    distributed::all_reduce(sums);
  } catch (const TypeError& e) {
    refused = std::string(e.what()).find("bfloat16") != std::string::npos;
  }
  expect(refused, "all_reduce refuses bfloat16 with a TypeError naming it");
  distributed::broadcast(sums, 0);
  expect(static_cast<float>(sums.data<bfloat16>()[0]) == 1.0f, "broadcast takes bfloat16");
}

}  // namespace

int main() {
  test_views();
  test_conv_against_oracle();
  test_max_pool_backward_with_stray_argmax();
  test_bad_arguments_throw();
  test_batch_norm_relu_max_pool_kernels();
  test_training_and_checkpoint();
  test_batch_loader();
  test_bfloat16_tensors();
  return public_check::summary();
}

// Eval-mode inference on one model from several threads (Sequential::infer), served as a small
// server would: worker threads take single-image requests from a queue and answer each with the
// model's output. Checks that the calls run side by side (a layer that waits until every worker
// is inside it at once), that each answer equals the serial forward bit for bit, that a call
// that changes the model waits for the calls in flight, and that the calls see the model's
// parameters as they are when each starts.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <juanji/juanji.hpp>

#include "expect.hpp"

namespace {

using public_check::expect;

using namespace juanji;
using Clock = std::chrono::steady_clock;

constexpr int kWorkers = 4;

// What the replicas of one Gate share: how many callers are inside forward now and at most,
// and whether they may leave.
struct GateState {
  std::mutex mutex;
  std::condition_variable changed;
  int inside = 0, most_inside = 0;
  int open_at = kWorkers;  // callers leave once this many have been inside together
  bool released = false;   // or once this is set
};

// y = x, after waiting (at most 20 s) until open_at callers are inside at once or the gate is
// released: calls that are serialized never meet there.
class Gate : public nn::Layer {
 public:
  explicit Gate(std::shared_ptr<GateState> state) : state_(std::move(state)) {}
  std::string type() const override { return "Gate"; }
  Json config() const override { return Json::object(); }
  Shape output_shape(const Shape& input) const override { return input; }
  const Tensor& forward(const Tensor& x, bool) override {
    {
      std::unique_lock<std::mutex> lock(state_->mutex);
      state_->most_inside = std::max(state_->most_inside, ++state_->inside);
      state_->changed.notify_all();
      state_->changed.wait_for(lock, std::chrono::seconds(20), [&] {
        return state_->released || state_->most_inside >= state_->open_at;
      });
      --state_->inside;
    }
    output_ = x.clone();
    return output_;
  }
  const Tensor& backward(const Tensor&, bool) override { throw std::logic_error("Gate has no backward"); }
  std::shared_ptr<nn::Layer> replicate() const override { return std::make_shared<Gate>(state_); }

 private:
  std::shared_ptr<GateState> state_;
  Tensor output_;
};

bool equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), a.numel() * dtype_size(a.dtype())) == 0;
}

std::shared_ptr<nn::Sequential> gated_model(const std::shared_ptr<GateState>& state) {
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Layer>>{
      std::make_shared<nn::Linear>(8, 8, true), std::make_shared<Gate>(state)});
}

void test_calls_run_side_by_side() {
  auto state = std::make_shared<GateState>();
  auto model = gated_model(state);
  const Tensor x = randn({2, 8});
  std::vector<std::thread> workers;
  for (int i = 0; i < kWorkers; ++i) workers.emplace_back([&] { model->infer(x); });
  for (auto& worker : workers) worker.join();
  expect(state->most_inside == kWorkers, "all " + std::to_string(kWorkers) + " calls inside the model at once (" +
                                             std::to_string(state->most_inside) + " were)");
}

void test_a_change_waits_for_the_calls_in_flight() {
  auto state = std::make_shared<GateState>();
  state->open_at = kWorkers + 1;  // only the release lets the call leave
  auto model = gated_model(state);
  std::thread call([&] { model->infer(randn({1, 8})); });
  {
    std::unique_lock<std::mutex> lock(state->mutex);
    state->changed.wait(lock, [&] { return state->inside == 1; });
  }
  std::atomic<bool> changed{false};
  std::thread change([&] {
    model->zero_grad();  // takes the model's lock
    changed = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  expect(!changed, "a change waits while an inference call is in flight");
  {
    const std::lock_guard<std::mutex> lock(state->mutex);
    state->released = true;
  }
  state->changed.notify_all();
  call.join();
  change.join();
  expect(changed, "the change runs once the call has ended");
}

// A ResNet-style model: every fused path the plan has, a projection shortcut and a Concat.
std::shared_ptr<nn::Sequential> residual_model() {
  ConvOptions same, down;
  same.padding = PaddingSpec::same();
  down.stride = {2};
  PoolOptions pool;
  pool.kernel = {2};
  auto conv = [](std::int64_t c_in, std::int64_t c_out, std::int64_t k, const ConvOptions& options) {
    return std::make_shared<nn::Conv>(2, c_in, c_out, std::vector<std::int64_t>{k}, options, true);
  };
  auto relu = [] { return std::make_shared<nn::ActivationLayer>(Activation::relu); };
  auto body = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Layer>>{
      conv(8, 16, 3, [&] { ConvOptions o = same; o.stride = {2}; o.padding = PaddingSpec::of({1}); return o; }()),
      std::make_shared<nn::BatchNorm2d>(16), relu(), conv(16, 16, 3, same), std::make_shared<nn::BatchNorm2d>(16)});
  auto shortcut = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Layer>>{
      conv(8, 16, 1, down), std::make_shared<nn::BatchNorm2d>(16)});
  auto branches = std::vector<std::shared_ptr<nn::Layer>>{conv(16, 4, 1, same), conv(16, 4, 3, same)};
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Layer>>{
      conv(1, 8, 3, same), std::make_shared<nn::BatchNorm2d>(8), relu(),
      std::make_shared<nn::Pool>(nn::Pool::Kind::max, 2, pool),
      std::make_shared<nn::Residual>(body, shortcut), relu(), std::make_shared<nn::Concat>(branches),
      std::make_shared<nn::GlobalAvgPool2d>(), std::make_shared<nn::Flatten>(),
      std::make_shared<nn::Linear>(8, 10, true)});
}

// Worker threads answer queued single-image requests; every answer must be the serial one.
void test_a_server_gets_the_serial_answers() {
  manual_seed(3);
  auto model = residual_model();
  // Trains a few steps so that the batch norms' running statistics are not the initial ones.
  const Tensor batch = randn({8, 1, 16, 16});
  Tensor labels = Tensor::empty({8}, DType::int64);
  for (int i = 0; i < 8; ++i) labels.data<std::int64_t>()[i] = i % 10;
  optim::SGD sgd(model->trainable_parameters(), 0.05, 0.9);
  nn::CrossEntropyLoss loss;
  for (int i = 0; i < 3; ++i) model->train_step(batch, labels, loss, sgd);

  constexpr int kRequests = 48;
  std::vector<Tensor> images, serial;
  for (int i = 0; i < kRequests; ++i) {
    images.push_back(randn({1, 1, 16, 16}));
    serial.push_back(model->forward(images.back(), false).clone());
  }
  std::mutex queue_mutex;
  std::deque<int> queue;
  for (int round = 0; round < 3; ++round)
    for (int i = 0; i < kRequests; ++i) queue.push_back(i);
  std::atomic<int> wrong{0}, answered{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w)
    workers.emplace_back([&] {
      for (;;) {
        int request;
        {
          const std::lock_guard<std::mutex> lock(queue_mutex);
          if (queue.empty()) return;
          request = queue.front();
          queue.pop_front();
        }
        if (!equal(model->infer(images[request]), serial[request])) ++wrong;
        ++answered;
      }
    });
  for (auto& worker : workers) worker.join();
  expect(answered == 3 * kRequests && wrong == 0,
         "every answer is the serial forward's (" + std::to_string(wrong.load()) + " of " +
             std::to_string(answered.load()) + " differ)");

  // A training step between calls: the next calls compute with the new parameters.
  model->train_step(batch, labels, loss, sgd);
  const Tensor after = model->forward(images[0], false).clone();
  expect(!equal(after, serial[0]) && equal(model->infer(images[0]), after),
         "a call after a training step sees the new parameters");
  model->to(DType::float64);
  const Tensor wide = images[0].to(DType::float64);
  expect(equal(model->infer(wide), model->forward(wide, false).clone()), "a call after to(float64) computes in float64");
}

}  // namespace

int main() {
  set_num_threads(2);
  test_calls_run_side_by_side();
  test_a_change_waits_for_the_calls_in_flight();
  test_a_server_gets_the_serial_answers();
  return public_check::summary();
}

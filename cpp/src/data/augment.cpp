#include "juanji/data/augment.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

#include "core/xoshiro256.hpp"

namespace juanji::data {
namespace {

// Far beyond any image; keeps the crop offsets (up to twice this) and the shifts exact in int64.
constexpr std::int64_t kMaxCropPadding = std::int64_t{1} << 30;

void check_augment(const AugmentOptions& options) {
  check(options.crop_padding >= 0 && options.crop_padding <= kMaxCropPadding,
        "crop_padding: must lie in [0, ", kMaxCropPadding, "] pixels, got ", options.crop_padding);
  check(std::isfinite(options.fill), "fill: must be a finite number, got ", options.fill);
}

// The generators of an epoch's choices, one per kind so that switching one kind on or off leaves
// the others' draws alone.
enum class Stream : std::uint64_t { order = 1, crop = 2, flip = 3 };

Xoshiro256 epoch_generator(const LoaderOptions& options, Stream stream) {
  // Each key word is added after the previous ones went through SplitMix64's mixer, so keys that
  // differ anywhere give unrelated states (epoch e of seed s is not epoch e+1 of seed s-1).
  Xoshiro256 generator;
  generator.seed(
      mix64(mix64(mix64(options.seed) + options.epoch) + static_cast<std::uint64_t>(stream)));
  return generator;
}

// out(c, i, j) = image(c, i + row_shift, j + column_shift), or fill where that lies outside the
// image; then each row mirrored when `flip`. image and out are (C, H, W).
void shift_and_flip(const float* image, float* out, std::int64_t channels, std::int64_t height,
                    std::int64_t width, std::int64_t row_shift, std::int64_t column_shift,
                    bool flip, float fill) {
  // The output columns [first, last) read image columns; the rest are padding.
  const std::int64_t first = std::clamp<std::int64_t>(-column_shift, 0, width);
  const std::int64_t last = std::clamp<std::int64_t>(width - column_shift, 0, width);
  for (std::int64_t c = 0; c < channels; ++c) {
    for (std::int64_t i = 0; i < height; ++i) {
      float* row = out + (c * height + i) * width;
      const std::int64_t source_row = i + row_shift;
      if (source_row < 0 || source_row >= height) {
        std::fill(row, row + width, fill);
        continue;
      }
      const float* source = image + (c * height + source_row) * width;
      std::fill(row, row + first, fill);
      std::copy(source + first + column_shift, source + last + column_shift, row + first);
      std::fill(row + last, row + width, fill);
      if (flip) std::reverse(row, row + width);
    }
  }
}

void check_images(const Tensor& images, const char* name) {
  check_defined(images, name);
  check(images.dim() == 4, name, ": expected images of shape (N, C, H, W), got shape ",
        shape_text(images.shape()));
  check_type(images.dtype() == DType::float32, name, ": expected float32 images, got ",
             dtype_name(images.dtype()), " of shape ", shape_text(images.shape()));
  check(images.device().is_cpu(), name, ": must be on the CPU, got a tensor on ",
        images.device().str());
}

}  // namespace

EpochPlan plan_epoch(std::int64_t count, const LoaderOptions& options) {
  check_augment(options.augment);
  check(count >= 0, "count: must be non-negative, got ", count);
  const auto n = static_cast<std::size_t>(count);
  EpochPlan plan;
  plan.order.resize(n);
  std::iota(plan.order.begin(), plan.order.end(), std::int64_t{0});
  if (options.shuffle) {
    // Fisher-Yates from the back: every permutation equally likely.
    Xoshiro256 generator = epoch_generator(options, Stream::order);
    for (std::size_t i = n; i > 1; --i) std::swap(plan.order[i - 1], plan.order[generator.below(i)]);
  }
  const std::int64_t padding = options.augment.crop_padding;
  plan.crop_top.assign(n, padding);  // the centre: no shift
  plan.crop_left.assign(n, padding);
  if (padding > 0) {
    Xoshiro256 generator = epoch_generator(options, Stream::crop);
    const auto offsets = static_cast<std::uint64_t>(2 * padding + 1);
    for (std::size_t p = 0; p < n; ++p) {
      plan.crop_top[p] = static_cast<std::int64_t>(generator.below(offsets));
      plan.crop_left[p] = static_cast<std::int64_t>(generator.below(offsets));
    }
  }
  plan.flipped.assign(n, 0);
  if (options.augment.flip) {
    Xoshiro256 generator = epoch_generator(options, Stream::flip);
    for (auto& flipped : plan.flipped) flipped = static_cast<std::uint8_t>(generator.next() >> 63);
  }
  return plan;
}

Tensor augment_images(const Tensor& images, const EpochPlan& plan, std::int64_t begin,
                      std::int64_t end, const AugmentOptions& options) {
  check_images(images, "images");
  check(images.is_contiguous(), "images: must be contiguous, got strides ",
        shape_text(images.strides()), " for shape ", shape_text(images.shape()));
  const std::size_t positions = plan.order.size();
  check(plan.crop_top.size() == positions && plan.crop_left.size() == positions &&
            plan.flipped.size() == positions,
        "plan: order, crop_top, crop_left and flipped must have one entry per position, got ",
        plan.order.size(), ", ", plan.crop_top.size(), ", ", plan.crop_left.size(), " and ",
        plan.flipped.size());
  check(0 <= begin && begin <= end && static_cast<std::size_t>(end) <= positions,
        "begin, end: must satisfy 0 <= begin <= end <= ", positions, " (the plan's positions), got ",
        begin, " and ", end);
  check_augment(options);
  const std::int64_t padding = options.crop_padding;
  const std::int64_t count = images.size(0), channels = images.size(1);
  const std::int64_t height = images.size(2), width = images.size(3);
  const std::int64_t image_size = channels * height * width;

  Tensor out = Tensor::empty({end - begin, channels, height, width}, DType::float32);
  const float* source = images.data<float>();
  float* target = out.data<float>();
  for (std::int64_t p = begin; p < end; ++p) {
    const std::int64_t index = plan.order[p], top = plan.crop_top[p], left = plan.crop_left[p];
    check(0 <= index && index < count, "plan: position ", p, " names image ", index,
          " of a data set of ", count, " images of shape ", shape_text(images.shape()));
    check(0 <= top && top <= 2 * padding && 0 <= left && left <= 2 * padding, "plan: position ",
          p, " crops at (", top, ", ", left, "), outside [0, ", 2 * padding,
          "] for crop_padding ", padding);
    shift_and_flip(source + index * image_size, target + (p - begin) * image_size, channels,
                   height, width, top - padding, left - padding, plan.flipped[p] != 0,
                   options.fill);
  }
  return out;
}

std::pair<std::int64_t, std::int64_t> batch_rows(std::int64_t count, const LoaderOptions& options,
                                                 std::int64_t k) {
  const std::int64_t begin = k * options.batch_size;
  const std::int64_t rows = std::min(count, begin + options.batch_size) - begin;
  // In 128 bits: shard * rows may pass 2^63 for a huge shard count.
  const auto bound = [&](std::int64_t shard) {
    return begin + static_cast<std::int64_t>(static_cast<__int128>(shard) * rows / options.shards);
  };
  return {bound(options.shard), bound(options.shard + 1)};
}

BatchLoader::BatchLoader(const Tensor& images, const Tensor& labels,
                         const LoaderOptions& options)
    : options_(options) {
  check(options.batch_size > 0, "batch_size: must be positive, got ", options.batch_size);
  check(options.prefetch > 0, "prefetch: must be positive, got ", options.prefetch);
  check(options.shards > 0, "shards: must be positive, got ", options.shards);
  check(options.shard >= 0 && options.shard < options.shards, "shard: must be in [0, ", options.shards,
        "), got ", options.shard);
  check(options.shards <= options.batch_size, "shards: ", options.shards, " shards of batches of ",
        options.batch_size, " would leave some shards without rows");
  check_images(images, "images");
  check_defined(labels, "labels");
  check(labels.dim() == 1, "labels: expected shape (N,), got ", shape_text(labels.shape()));
  check_type(labels.dtype() == DType::int64, "labels: expected int64 labels, got ",
             dtype_name(labels.dtype()), " of shape ", shape_text(labels.shape()));
  check(labels.device().is_cpu(), "labels: must be on the CPU, got a tensor on ",
        labels.device().str());
  check(images.size(0) == labels.size(0), "images and labels: must hold as many entries, got ",
        "images of shape ", shape_text(images.shape()), " and labels of shape ",
        shape_text(labels.shape()));
  images_ = images.contiguous();
  labels_ = labels.contiguous();
  const std::int64_t count = images_.size(0);
  plan_ = plan_epoch(count, options_);
  num_batches_ = count / options_.batch_size + (count % options_.batch_size != 0);
  if (options_.shards > 1 && count % options_.batch_size != 0 && count % options_.batch_size < options_.shards)
    --num_batches_;  // a last batch too small to give every shard a row
  if (num_batches_ == 0)
    worker_done_ = true;
  else
    worker_ = std::thread([this] { produce(); });
}

BatchLoader::~BatchLoader() { close(); }

void BatchLoader::produce() {
  const std::int64_t count = images_.size(0);
  const std::int64_t* labels = labels_.data<std::int64_t>();
  try {
    for (std::int64_t k = 0; k < num_batches_; ++k) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [&] {
          return stopping_ || static_cast<std::int64_t>(ready_.size()) < options_.prefetch;
        });
        if (stopping_) break;
      }
      const auto [begin, end] = batch_rows(count, options_, k);
      Batch batch;
      batch.images = augment_images(images_, plan_, begin, end, options_.augment);
      batch.labels = Tensor::empty({end - begin}, DType::int64);
      std::int64_t* batch_labels = batch.labels.data<std::int64_t>();
      for (std::int64_t p = begin; p < end; ++p) batch_labels[p - begin] = labels[plan_.order[p]];
      {
        const std::lock_guard<std::mutex> lock(mutex_);
        ready_.push_back(std::move(batch));
      }
      changed_.notify_all();
    }
  } catch (...) {
    const std::lock_guard<std::mutex> lock(mutex_);
    error_ = std::current_exception();
  }
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    worker_done_ = true;
  }
  changed_.notify_all();
}

std::optional<Batch> BatchLoader::next() {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return stopping_ || worker_done_ || !ready_.empty(); });
  if (stopping_) return std::nullopt;
  if (!ready_.empty()) {
    Batch batch = std::move(ready_.front());
    ready_.pop_front();
    lock.unlock();
    changed_.notify_all();  // the worker may be waiting for room
    return batch;
  }
  if (error_) std::rethrow_exception(error_);
  return std::nullopt;
}

void BatchLoader::close() {
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  {
    const std::lock_guard<std::mutex> lock(join_mutex_);
    if (worker_.joinable()) worker_.join();
  }
  std::deque<Batch> dropped;  // freed outside the lock
  const std::lock_guard<std::mutex> lock(mutex_);
  dropped.swap(ready_);
}

}  // namespace juanji::data

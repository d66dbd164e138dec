// Mini-batches of an in-memory image set, randomly cropped and flipped on a background thread.
//
// An epoch is planned up front from (seed, epoch) alone: the order of the images, and for each
// position a crop offset and a flip. Planning is serial and uses generators of its own (never
// the global one of juanji::rand), so the batches never depend on thread timing, the thread
// count or what else drew random numbers. A BatchLoader makes the planned batches on one
// std::thread, up to `prefetch` ahead of the consumer, so that making batch k+1 overlaps the
// training step on batch k.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "juanji/tensor.hpp"

namespace juanji::data {

// What happens to each image: torchvision's RandomCrop(size=(H, W), padding=crop_padding,
// fill=fill) followed by RandomHorizontalFlip(0.5).
struct AugmentOptions {
  std::int64_t crop_padding = 0;  // pixels of `fill` on each side before the H x W crop; 0: none
  bool flip = false;              // mirror left-right with probability 1/2
  float fill = 0.0f;              // value of the padding (for normalised images, black's value)
};

struct LoaderOptions {
  std::int64_t batch_size = 1;  // the last batch of an epoch may be smaller
  bool shuffle = true;          // a fresh order each epoch; false keeps the data set's order
  AugmentOptions augment;
  std::uint64_t seed = 0;
  std::uint64_t epoch = 0;
  std::int64_t prefetch = 2;  // batches made ahead of the consumer
  // Data parallelism: of each batch, only shard `shard` of `shards` nearly equal contiguous
  // slices (rows [shard * n / shards, (shard + 1) * n / shards) of its n) is made. With several
  // shards a last batch of fewer rows than shards is left out, as every shard must get rows.
  std::int64_t shard = 0;
  std::int64_t shards = 1;
};

// The random choices of one epoch, one entry per position in it.
struct EpochPlan {
  std::vector<std::int64_t> order;     // the data set's image at each position
  std::vector<std::int64_t> crop_top;  // the crop's top row in the padded image, in [0, 2 * padding]
  std::vector<std::int64_t> crop_left;  // its left column, in [0, 2 * padding]
  std::vector<std::uint8_t> flipped;    // 1: the crop is mirrored left-right
};

// The plan of epoch options.epoch for a data set of `count` images. Each kind of choice (order,
// crops, flips) has its own generator, so that the order does not change when the crop or the
// flip is switched on or off. Only count and the shuffle, augment, seed and epoch options matter;
// a negative count or bad augment options throw std::invalid_argument.
EpochPlan plan_epoch(std::int64_t count, const LoaderOptions& options);

// Images plan.order[begin..end) of `images` (N, C, H, W) float32, contiguous, on the CPU),
// each padded, cropped and flipped as the plan says: a new (end - begin, C, H, W) tensor.
// Output pixel (c, i, j) of position p is padded(c, top + i, left + j') with j' = W-1-j when
// flipped, else j, where padded is the image with crop_padding pixels of fill on every side.
Tensor augment_images(const Tensor& images, const EpochPlan& plan, std::int64_t begin,
                      std::int64_t end, const AugmentOptions& options);

struct Batch {
  Tensor images;  // (B, C, H, W) float32
  Tensor labels;  // (B,) int64
};

// Rows [first, last) of the epoch's positions that make shard options.shard of batch k.
std::pair<std::int64_t, std::int64_t> batch_rows(std::int64_t count, const LoaderOptions& options,
                                                 std::int64_t k);

// One epoch of batches of images (N, C, H, W) float32 and labels (N,) int64, both on the CPU
// (copied once if not contiguous), made on a worker thread that starts with the constructor.
// Bad arguments throw std::invalid_argument (TypeError for a wrong dtype) naming the argument
// and the shapes. An empty data set gives no batches.
class BatchLoader {
 public:
  BatchLoader(const Tensor& images, const Tensor& labels, const LoaderOptions& options);
  // Stops the worker (it finishes at most the batch in hand) and waits for it.
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // The next batch in order, waiting for the worker if it is not ready; nullopt after the last
  // one or after close(). An exception thrown while making a batch is rethrown here, after the
  // batches made before it. Safe to call from several threads (each batch goes to one caller).
  std::optional<Batch> next();
  // Stops the worker and drops the batches made ahead; next() then returns nullopt. Waiting
  // callers of next() wake up with nullopt.
  void close();

  std::int64_t num_batches() const { return num_batches_; }
  const EpochPlan& plan() const { return plan_; }
  const LoaderOptions& options() const { return options_; }

 private:
  void produce();

  Tensor images_;
  Tensor labels_;
  LoaderOptions options_;
  EpochPlan plan_;
  std::int64_t num_batches_ = 0;

  std::mutex mutex_;  // guards the members below it
  std::condition_variable changed_;
  std::deque<Batch> ready_;
  std::exception_ptr error_;
  bool stopping_ = false;
  bool worker_done_ = false;

  std::mutex join_mutex_;  // one joiner at a time: close() may come from several threads
  std::thread worker_;
};

}  // namespace juanji::data

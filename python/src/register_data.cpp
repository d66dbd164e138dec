// juanji._core.data: BatchLoader (an iterator of augmented (images, labels) batches made on a
// background thread) and epoch_plan (the random choices it follows).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "bind_util.hpp"
#include "juanji/data/augment.hpp"

namespace juanji::bind {
namespace {

// The options epoch_plan and BatchLoader share; the loader adds batch_size and prefetch.
data::LoaderOptions plan_options(bool shuffle, py::handle crop_padding, bool flip, double fill,
                                 py::handle seed, py::handle epoch) {
  // Checked in double before the conversion: a float32 of 1e300 would be inf.
  check(std::isfinite(fill) && std::fabs(fill) <= std::numeric_limits<float>::max(),
        "fill: must be a finite float32 number, got ", fill);
  data::LoaderOptions options;
  options.shuffle = shuffle;
  options.augment.crop_padding = int_arg(crop_padding, "crop_padding");
  options.augment.flip = flip;
  options.augment.fill = static_cast<float>(fill);
  options.seed = uint64_arg(seed, "seed");
  options.epoch = uint64_arg(epoch, "epoch");
  return options;
}

template <class T, class Source>
py::array_t<T> numpy_copy(const std::vector<Source>& values) {
  py::array_t<T> array(static_cast<py::ssize_t>(values.size()));
  std::copy(values.begin(), values.end(), array.mutable_data());
  return array;
}

}  // namespace

void register_data(py::module_& m) {
  auto data_module =
      m.def_submodule("data", "Mini-batches with random crops and flips, made on a background thread");

  py::class_<data::BatchLoader>(data_module, "BatchLoader", R"doc(One epoch of (images, labels) mini-batches as NumPy arrays, made by a C++ thread.

images: (N, C, H, W) float32; labels: (N,) integers. Batches of batch_size in a shuffled
order (shuffle=False: the data set's), the last one smaller. With crop_padding = p > 0 each
image is padded by p pixels of `fill` on every side and an H x W window of it taken at a random
offset (torchvision's RandomCrop); with flip it is mirrored left-right with probability 1/2.
The batches depend only on (seed, epoch) and the arguments. A worker thread makes up to
`prefetch` batches ahead, so making the next batch overlaps the training step; waiting for one
releases the GIL. Dropping the iterator or close() stops the worker; an error in it is raised
by the next() that would have returned the batch. Data parallelism: shard=r, shards=w make only
slice r of w of each batch (rows r*n//w to (r+1)*n//w of its n), leaving out a last batch of
fewer than w rows.)doc")
      .def(py::init([](py::handle images, py::handle labels, py::handle batch_size, bool shuffle,
                       py::handle crop_padding, bool flip, double fill, py::handle seed,
                       py::handle epoch, py::handle prefetch, py::handle shard, py::handle shards) {
             data::LoaderOptions options = plan_options(shuffle, crop_padding, flip, fill, seed, epoch);
             options.batch_size = int_arg(batch_size, "batch_size");
             options.prefetch = int_arg(prefetch, "prefetch");
             options.shard = int_arg(shard, "shard");
             options.shards = int_arg(shards, "shards");
             return std::make_unique<data::BatchLoader>(tensor_arg(images, "images"),
                                                        labels_arg(labels, "labels"), options);
           }),
           py::arg("images"), py::arg("labels"), py::arg("batch_size"), py::kw_only(),
           py::arg("shuffle") = true, py::arg("crop_padding") = 0, py::arg("flip") = false,
           py::arg("fill") = 0.0, py::arg("seed") = 0, py::arg("epoch") = 0,
           py::arg("prefetch") = 2, py::arg("shard") = 0, py::arg("shards") = 1)
      .def("__iter__", [](data::BatchLoader& self) -> data::BatchLoader& { return self; },
           py::return_value_policy::reference)
      .def("__next__",
           [](data::BatchLoader& loader) {
             std::optional<data::Batch> batch;
             {
               py::gil_scoped_release release;
               batch = loader.next();
             }
             if (!batch) throw py::stop_iteration();
             return py::make_tuple(to_numpy(batch->images, py::none()),
                                   to_numpy(batch->labels, py::none()));
           })
      .def("__len__", &data::BatchLoader::num_batches, "The number of batches in the epoch.")
      .def("close", &data::BatchLoader::close, py::call_guard<py::gil_scoped_release>(),
           "Stops the worker thread and drops the batches made ahead; iteration then ends.");

  data_module.def(
      "epoch_plan",
      [](py::handle count, bool shuffle, py::handle crop_padding, bool flip, py::handle seed,
         py::handle epoch) {
        const data::EpochPlan plan = data::plan_epoch(
            int_arg(count, "count"), plan_options(shuffle, crop_padding, flip, 0.0, seed, epoch));
        return py::make_tuple(numpy_copy<std::int64_t>(plan.order),
                              numpy_copy<std::int64_t>(plan.crop_top),
                              numpy_copy<std::int64_t>(plan.crop_left), numpy_copy<bool>(plan.flipped));
      },
      py::arg("count"), py::kw_only(), py::arg("shuffle") = true, py::arg("crop_padding") = 0,
      py::arg("flip") = false, py::arg("seed") = 0, py::arg("epoch") = 0,
      R"doc(The random choices BatchLoader makes for a data set of `count` images, as arrays
with one entry per position in the epoch: (order, crop_top, crop_left, flipped), where order
names the image at each position, (crop_top, crop_left) is the corner of its crop in the padded
image (each in [0, 2 * crop_padding]) and flipped says whether the crop is mirrored.)doc");
}

}  // namespace juanji::bind

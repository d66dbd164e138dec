// Deploys a model that `juanji train` wrote: loads model.safetensors, classifies the images of an
// IDX file (raw or gzipped, as Fashion-MNIST ships them) and, given their labels, prints the
// accuracy; then the images per second of the inference. With --workers W, W threads serve the
// batches side by side on the one model, as a server's request threads would (Sequential::infer).
//
//   classify MODEL.safetensors IMAGES-idx3-ubyte[.gz] [LABELS-idx1-ubyte[.gz]] [--batch N] [--workers W]
#include <juanji/juanji.hpp>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

// An IDX file of unsigned bytes: its sizes and its values.
struct Idx {
  std::vector<std::int64_t> sizes;
  std::vector<std::uint8_t> values;
};

// Reads an IDX file of bytes (type 0x08) with `dims` dimensions. zlib reads raw files as they are.
Idx read_idx(const std::string& path, int dims) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file) throw std::runtime_error(path + ": cannot open");
  const auto read = [&](void* into, unsigned bytes) {
    if (gzread(file, into, bytes) != static_cast<int>(bytes)) {
      gzclose(file);
      throw std::runtime_error(path + ": truncated IDX file");
    }
  };
  unsigned char magic[4];
  read(magic, 4);
  if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] != dims) {
    gzclose(file);
    throw std::runtime_error(path + ": not an IDX file of bytes with " + std::to_string(dims) + " dimensions");
  }
  Idx idx;
  std::int64_t count = 1;
  for (int d = 0; d < dims; ++d) {
    unsigned char size[4];
    read(size, 4);
    idx.sizes.push_back((std::int64_t{size[0]} << 24) | (size[1] << 16) | (size[2] << 8) | size[3]);
    count *= idx.sizes.back();
    if (count > (std::int64_t{1} << 31)) {
      gzclose(file);
      throw std::runtime_error(path + ": too large for this example (over 2 GiB)");
    }
  }
  idx.values.resize(static_cast<std::size_t>(count));
  if (count > 0) read(idx.values.data(), static_cast<unsigned>(count));
  gzclose(file);
  return idx;
}

std::string metadata_value(const juanji::Metadata& metadata, const std::string& key, const std::string& fallback) {
  for (const auto& [k, v] : metadata)
    if (k == key) return v;
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> files;
  std::int64_t batch = 256, workers = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--batch" && i + 1 < argc)
      batch = std::atoll(argv[++i]);
    else if (arg == "--workers" && i + 1 < argc)
      workers = std::atoll(argv[++i]);
    else
      files.push_back(arg);
  }
  if (files.size() < 2 || files.size() > 3 || batch < 1 || workers < 1 || workers > 256) {
    std::fprintf(stderr,
                 "usage: %s MODEL.safetensors IMAGES-idx3-ubyte[.gz] [LABELS-idx1-ubyte[.gz]] [--batch N] "
                 "[--workers W (1-256)]\n",
                 argv[0]);
    return 2;
  }
  try {
    juanji::Metadata metadata;
    // Frozen for serving: read-only weights, laid out for the kernels once instead of on every call.
    const auto model = juanji::nn::Sequential::load(files[0], &metadata)->freeze();
    // The normalisation the model was trained with, which `juanji train` saves with it.
    const float mean = std::stof(metadata_value(metadata, "mean", "0"));
    const float stddev = std::stof(metadata_value(metadata, "std", "1"));
    const Idx images = read_idx(files[1], 3);
    const std::int64_t count = images.sizes[0], height = images.sizes[1], width = images.sizes[2];
    juanji::Tensor x = juanji::Tensor::empty({count, 1, height, width});
    float* pixels = x.data<float>();
    for (std::size_t i = 0; i < images.values.size(); ++i)
      pixels[i] = (static_cast<float>(images.values[i]) / 255.0f - mean) / stddev;

    std::vector<std::int64_t> predicted(static_cast<std::size_t>(count));
    // Each worker takes the next batch until none is left; each writes its own batches' entries.
    std::atomic<std::int64_t> next{0};
    std::exception_ptr failure;
    std::atomic<bool> failed{false};
    const auto serve = [&] {
      try {
        for (std::int64_t begin; !failed && (begin = next.fetch_add(batch)) < count;) {
          const std::int64_t end = std::min(count, begin + batch);
          const juanji::Tensor logits = model->infer(x.slice(0, begin, end));
          const std::int64_t classes = logits.size(1);
          const float* z = logits.data<float>();
          for (std::int64_t n = 0; n < end - begin; ++n) {
            std::int64_t best = 0;
            for (std::int64_t c = 1; c < classes; ++c)
              if (z[n * classes + c] > z[n * classes + best]) best = c;
            predicted[static_cast<std::size_t>(begin + n)] = best;
          }
        }
      } catch (...) {
        if (!failed.exchange(true)) failure = std::current_exception();
      }
    };
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (std::int64_t w = 1; w < workers; ++w) threads.emplace_back(serve);
    serve();
    for (auto& thread : threads) thread.join();
    if (failure) std::rethrow_exception(failure);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    if (files.size() == 3) {
      const Idx labels = read_idx(files[2], 1);
      if (labels.sizes[0] != count)
        throw std::runtime_error(files[2] + ": " + std::to_string(labels.sizes[0]) + " labels for " +
                                 std::to_string(count) + " images");
      std::int64_t correct = 0;
      for (std::int64_t n = 0; n < count; ++n) correct += predicted[static_cast<std::size_t>(n)] == labels.values[static_cast<std::size_t>(n)];
      std::printf("accuracy %.2f%% (%lld of %lld)\n", 100.0 * static_cast<double>(correct) / static_cast<double>(count),
                  static_cast<long long>(correct), static_cast<long long>(count));
    } else {
      for (std::int64_t n = 0; n < std::min<std::int64_t>(count, 10); ++n)
        std::printf("%lld: class %lld\n", static_cast<long long>(n),
                    static_cast<long long>(predicted[static_cast<std::size_t>(n)]));
    }
    std::printf("%lld images in %.3f s: %.0f images/s (batch %lld, %lld worker%s, %d threads, SIMD %s)\n",
                static_cast<long long>(count), seconds, static_cast<double>(count) / seconds,
                static_cast<long long>(batch), static_cast<long long>(workers), workers == 1 ? "" : "s",
                juanji::get_num_threads(), juanji::simd_name(juanji::simd_level()));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "classify: error: %s\n", e.what());
    return 1;
  }
}

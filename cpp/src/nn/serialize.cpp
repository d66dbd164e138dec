// Model checkpoints: the safetensors file holds the parameters; its __metadata__ holds the
// architecture as JSON, from which load() rebuilds the layers before trusting any tensor.
#include <algorithm>
#include <map>

#include "juanji/nn/sequential.hpp"
#include "juanji/runtime.hpp"

namespace juanji::nn {
namespace {

constexpr const char* kFormat = "juanji";
const char* const kReservedKeys[] = {"format", "juanji_version", "architecture"};

std::vector<std::int64_t> ints(const Json& config, const char* key) {
  const Json& value = config.at(key);
  if (value.is_integer()) return {value.as_int()};
  std::vector<std::int64_t> out;
  for (const Json& item : value.as_array()) out.push_back(item.as_int());
  return out;
}

bool flag(const Json& config, const char* key, bool fallback) {
  const Json* value = config.find(key);
  return value ? value->as_bool() : fallback;
}

PaddingSpec padding_of(const Json& value) {
  if (value.is_string()) {
    if (value.as_string() == "same") return PaddingSpec::same();
    if (value.as_string() == "valid") return PaddingSpec::valid();
    throw std::invalid_argument("padding: unknown mode '" + value.as_string() + "'");
  }
  Json wrapper = Json::object({{"padding", value}});
  return PaddingSpec::of(ints(wrapper, "padding"));
}

PoolOptions pool_options(const Json& config) {
  PoolOptions options;
  options.kernel = ints(config, "kernel_size");
  if (!config.at("stride").is_null()) options.stride = ints(config, "stride");
  options.padding = ints(config, "padding");
  options.ceil_mode = flag(config, "ceil_mode", false);
  options.count_include_pad = flag(config, "count_include_pad", true);
  return options;
}

}  // namespace

std::shared_ptr<Layer> make_layer(const std::string& type, const Json& config) {
  if (type == "Conv2d" || type == "Conv1d") {
    ConvOptions options;
    options.stride = ints(config, "stride");
    options.padding = padding_of(config.at("padding"));
    options.dilation = ints(config, "dilation");
    options.groups = config.at("groups").as_int();
    const std::int64_t in = config.at("in_channels").as_int(), out = config.at("out_channels").as_int();
    const bool bias = config.at("bias").as_bool();
    if (type == "Conv2d") return std::make_shared<Conv2d>(in, out, ints(config, "kernel_size"), options, bias);
    return std::make_shared<Conv1d>(in, out, ints(config, "kernel_size"), options, bias);
  }
  if (type == "Linear")
    return std::make_shared<Linear>(config.at("in_features").as_int(), config.at("out_features").as_int(),
                                    config.at("bias").as_bool());
  if (type == "MaxPool2d") return std::make_shared<MaxPool2d>(pool_options(config));
  if (type == "MaxPool1d") return std::make_shared<MaxPool1d>(pool_options(config));
  if (type == "AvgPool2d") return std::make_shared<AvgPool2d>(pool_options(config));
  if (type == "AvgPool1d") return std::make_shared<AvgPool1d>(pool_options(config));
  if (type == "GlobalAvgPool2d") return std::make_shared<GlobalAvgPool2d>();
  if (type == "ReLU") return std::make_shared<ReLU>();
  if (type == "Sigmoid") return std::make_shared<Sigmoid>();
  if (type == "Tanh") return std::make_shared<Tanh>();
  if (type == "LeakyReLU") return std::make_shared<LeakyReLU>(config.at("negative_slope").as_double());
  if (type == "Softmax") return std::make_shared<Softmax>();
  if (type == "Dropout") return std::make_shared<Dropout>(config.at("p").as_double());
  if (type == "Flatten") return std::make_shared<Flatten>();
  if (type == "BatchNorm2d")
    return std::make_shared<BatchNorm2d>(config.at("channels").as_int(), config.at("eps").as_double(),
                                         config.at("momentum").as_double());
  throw std::invalid_argument("unknown layer type '" + type + "'");
}

void Sequential::save(const std::string& path, const Metadata& metadata) const {
  Metadata all{{"format", kFormat}, {"juanji_version", version()}, {"architecture", architecture_json()}};
  for (const auto& [key, value] : metadata) {
    check(std::find(std::begin(kReservedKeys), std::end(kReservedKeys), key) == std::end(kReservedKeys),
          "metadata: key '", key, "' is reserved for juanji");
    all.emplace_back(key, value);
  }
  std::vector<NamedTensor> tensors;
  for (const auto& p : parameters()) tensors.push_back({p->name, p->value});
  save_safetensors(path, tensors, all);
}

std::shared_ptr<Sequential> Sequential::load(const std::string& path, Metadata* metadata) {
  SafetensorsContents contents = load_safetensors(path);
  const std::string where = "checkpoint '" + path + "': ";
  const auto meta = [&](const std::string& key) -> const std::string* {
    for (const auto& [k, v] : contents.metadata)
      if (k == key) return &v;
    return nullptr;
  };
  const std::string* architecture = meta("architecture");
  check(architecture != nullptr && meta("format") && *meta("format") == kFormat, where,
        "not a juanji model (no juanji architecture in __metadata__)");
  auto model = std::make_shared<Sequential>();
  try {
    const Json layers = parse_json(*architecture);
    for (std::size_t i = 0; i < layers.size(); ++i) {
      const Json& entry = layers.at(i);
      check(entry.is_object() && entry.size() == 2, "layer ", i, ": expected {\"type\", \"config\"}");
      model->add(make_layer(entry.at("type").as_string(), entry.at("config")));
    }
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(where + "bad architecture: " + e.what());
  }
  std::map<std::string, Tensor> by_name;
  for (auto& named : contents.tensors) by_name.emplace(named.name, std::move(named.tensor));
  for (const auto& p : model->parameters()) {
    auto found = by_name.find(p->name);
    check(found != by_name.end(), where, "tensor '", p->name, "' of shape ", shape_text(p->value.shape()),
          " is missing");
    const Tensor& t = found->second;
    check(t.shape() == p->value.shape(), where, "tensor '", p->name, "' has shape ", shape_text(t.shape()),
          " but the architecture needs ", shape_text(p->value.shape()));
    check(t.dtype() == DType::float32 || t.dtype() == DType::float64, where, "tensor '", p->name,
          "' has dtype ", dtype_name(t.dtype()), "; parameters are float32 or float64");
    p->value = t;
    if (p->grad.defined()) p->grad = Tensor::zeros(t.shape(), t.dtype());
    by_name.erase(found);
  }
  check(by_name.empty(), where, "tensor '", by_name.empty() ? "" : by_name.begin()->first,
        "' is not part of the architecture");
  if (metadata) {
    metadata->clear();
    for (auto& [key, value] : contents.metadata)
      if (std::find(std::begin(kReservedKeys), std::end(kReservedKeys), key) == std::end(kReservedKeys))
        metadata->emplace_back(key, value);
  }
  return model;
}

}  // namespace juanji::nn

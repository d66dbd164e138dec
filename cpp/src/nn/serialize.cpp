// Model checkpoints: the safetensors file holds the parameters; its __metadata__ holds the
// architecture as JSON. load() checks the file's tensor table against the parameters the
// architecture declares before it builds any layer, so the work it does is bounded by the file.
#include <algorithm>
#include <map>
#include <stdexcept>
#include <string_view>
#include <tuple>

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

// A size from a config, checked before it shapes a parameter or divides one (groups).
std::int64_t positive_int(const Json& config, const char* key) {
  const std::int64_t value = config.at(key).as_int();
  check(value > 0, key, " must be positive, got ", value);
  return value;
}

struct ParameterShape {
  std::string name;
  Shape shape;
};

// How an architecture entry becomes a layer. `parameters` gives, from the config alone, the
// names and shapes of the parameters `make` will give the layer, so that a checkpoint's tensors
// can be checked against them before any layer is built or any parameter memory allocated.
struct LayerFactory {
  const char* type;
  std::shared_ptr<Layer> (*make)(const Json& config);
  std::vector<ParameterShape> (*parameters)(const Json& config);
};

std::vector<ParameterShape> no_parameters(const Json&) { return {}; }

template <class ConvLayer>
std::shared_ptr<Layer> make_conv(const Json& config) {
  ConvOptions options;
  options.stride = ints(config, "stride");
  options.padding = padding_of(config.at("padding"));
  options.dilation = ints(config, "dilation");
  options.groups = config.at("groups").as_int();
  return std::make_shared<ConvLayer>(config.at("in_channels").as_int(), config.at("out_channels").as_int(),
                                     ints(config, "kernel_size"), options, config.at("bias").as_bool());
}

template <std::size_t SpatialDims>
std::vector<ParameterShape> conv_parameters(const Json& config) {
  const std::int64_t out = positive_int(config, "out_channels");
  Shape weight{out, positive_int(config, "in_channels") / positive_int(config, "groups")};
  std::vector<std::int64_t> kernel = ints(config, "kernel_size");
  if (kernel.size() == 1) kernel.assign(SpatialDims, kernel[0]);
  weight.insert(weight.end(), kernel.begin(), kernel.end());
  std::vector<ParameterShape> shapes{{"weight", weight}};
  if (config.at("bias").as_bool()) shapes.push_back({"bias", {out}});
  return shapes;
}

std::shared_ptr<Layer> make_linear(const Json& config) {
  return std::make_shared<Linear>(config.at("in_features").as_int(), config.at("out_features").as_int(),
                                  config.at("bias").as_bool());
}

std::vector<ParameterShape> linear_parameters(const Json& config) {
  const std::int64_t out = positive_int(config, "out_features");
  std::vector<ParameterShape> shapes{{"weight", {out, positive_int(config, "in_features")}}};
  if (config.at("bias").as_bool()) shapes.push_back({"bias", {out}});
  return shapes;
}

std::shared_ptr<Layer> make_batch_norm(const Json& config) {
  const Json* sync = config.find("sync");
  return std::make_shared<BatchNorm2d>(config.at("channels").as_int(), config.at("eps").as_double(),
                                       config.at("momentum").as_double(), sync && sync->as_bool());
}

std::vector<ParameterShape> batch_norm_parameters(const Json& config) {
  const Shape channels{positive_int(config, "channels")};
  return {{"weight", channels}, {"bias", channels}, {"running_mean", channels}, {"running_var", channels}};
}

template <class Pool>
std::shared_ptr<Layer> make_pool(const Json& config) {
  return std::make_shared<Pool>(pool_options(config));
}

template <class Plain>
std::shared_ptr<Layer> make_plain(const Json&) {
  return std::make_shared<Plain>();
}

ExternalLayerFactory& external_factory() {
  static ExternalLayerFactory factory;
  return factory;
}

std::shared_ptr<Layer> make_external(const Json& config) {
  const std::string& name = config.at(kExternalClassKey).as_string();
  check(static_cast<bool>(external_factory()), "layer class '", name,
        "' is defined in Python: load the model from Python, having imported its module");
  return external_factory()(config);
}

std::vector<ParameterShape> external_parameters(const Json& config) {
  config.at(kExternalClassKey).as_string();
  config.at("arguments").as_object();
  std::vector<ParameterShape> shapes;
  for (const Json& p : config.at("parameters").as_array()) {
    Shape shape;
    for (const Json& size : p.at("shape").as_array()) {
      shape.push_back(size.as_int());
      check(shape.back() >= 0, "parameter '", p.at("name").as_string(), "': negative size in ", shape_text(shape));
    }
    shapes.push_back({p.at("name").as_string(), std::move(shape)});
  }
  return shapes;
}

const LayerFactory kExternalFactory{"Python layer", make_external, external_parameters};

const LayerFactory& factory_of(const std::string& type);

// A {"type", "config"} object: the factory and the config it builds from.
std::pair<const LayerFactory*, const Json*> parse_entry(const Json& entry) {
  check(entry.is_object() && entry.size() == 2 && entry.find("type") && entry.find("config"),
        "expected {\"type\", \"config\"}");
  const Json& config = entry.at("config");
  if (config.is_object() && config.find(kExternalClassKey)) return {&kExternalFactory, &config};
  return {&factory_of(entry.at("type").as_string()), &config};
}

std::shared_ptr<Layer> make_entry(const Json& entry) {
  const auto [factory, config] = parse_entry(entry);
  return factory->make(*config);
}

// The parameters of the layer an entry describes, named "<prefix><name>"; errors name the place.
void add_entry_parameters(const Json& entry, const std::string& prefix, std::vector<ParameterShape>& out) {
  const auto [factory, config] = parse_entry(entry);
  for (auto& p : factory->parameters(*config)) out.push_back({prefix + p.name, std::move(p.shape)});
}

// Runs f naming the place of a container's layer in its error.
template <class F>
void at_place(const std::string& place, const F& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(place + ": " + e.what());
  }
}

// The layers of a list entry ("layers" of a Sequential, "branches" of a Concat), each named by its
// place ("layer 3") in errors.
std::vector<std::shared_ptr<Layer>> make_entries(const Json& entries, const std::string& word) {
  std::vector<std::shared_ptr<Layer>> layers;
  for (std::size_t i = 0; i < entries.size(); ++i)
    at_place(word + " " + std::to_string(i), [&] { layers.push_back(make_entry(entries.at(i))); });
  return layers;
}

// The parameters of a list entry's layers, the i-th's prefixed "i.".
std::vector<ParameterShape> entries_parameters(const Json& entries, const std::string& word) {
  std::vector<ParameterShape> shapes;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const std::string key = std::to_string(i);
    at_place(word + " " + key, [&] { add_entry_parameters(entries.at(i), key + ".", shapes); });
  }
  return shapes;
}

std::shared_ptr<Layer> make_sequential(const Json& config) {
  return std::make_shared<Sequential>(make_entries(config.at("layers"), "layer"));
}

std::vector<ParameterShape> sequential_parameters(const Json& config) {
  return entries_parameters(config.at("layers"), "layer");
}

std::shared_ptr<Layer> make_residual(const Json& config) {
  std::shared_ptr<Layer> body, shortcut;
  at_place("body", [&] { body = make_entry(config.at("body")); });
  const Json& shortcut_entry = config.at("shortcut");
  if (!shortcut_entry.is_null()) at_place("shortcut", [&] { shortcut = make_entry(shortcut_entry); });
  return std::make_shared<Residual>(std::move(body), std::move(shortcut));
}

std::vector<ParameterShape> residual_parameters(const Json& config) {
  std::vector<ParameterShape> shapes;
  at_place("body", [&] { add_entry_parameters(config.at("body"), "body.", shapes); });
  const Json& shortcut = config.at("shortcut");
  if (!shortcut.is_null()) at_place("shortcut", [&] { add_entry_parameters(shortcut, "shortcut.", shapes); });
  return shapes;
}

std::shared_ptr<Layer> make_concat(const Json& config) {
  return std::make_shared<Concat>(make_entries(config.at("branches"), "branch"));
}

std::vector<ParameterShape> concat_parameters(const Json& config) {
  return entries_parameters(config.at("branches"), "branch");
}

const LayerFactory kLayerFactories[] = {
    {"Sequential", make_sequential, sequential_parameters},
    {"Residual", make_residual, residual_parameters},
    {"Concat", make_concat, concat_parameters},
    {"Identity", make_plain<Identity>, no_parameters},
    {"Conv2d", make_conv<Conv2d>, conv_parameters<2>},
    {"Conv1d", make_conv<Conv1d>, conv_parameters<1>},
    {"Linear", make_linear, linear_parameters},
    {"MaxPool2d", make_pool<MaxPool2d>, no_parameters},
    {"MaxPool1d", make_pool<MaxPool1d>, no_parameters},
    {"AvgPool2d", make_pool<AvgPool2d>, no_parameters},
    {"AvgPool1d", make_pool<AvgPool1d>, no_parameters},
    {"GlobalAvgPool2d", make_plain<GlobalAvgPool2d>, no_parameters},
    {"ReLU", make_plain<ReLU>, no_parameters},
    {"Sigmoid", make_plain<Sigmoid>, no_parameters},
    {"Tanh", make_plain<Tanh>, no_parameters},
    {"LeakyReLU",
     [](const Json& config) -> std::shared_ptr<Layer> {
       return std::make_shared<LeakyReLU>(config.at("negative_slope").as_double());
     },
     no_parameters},
    {"Softmax", make_plain<Softmax>, no_parameters},
    {"Dropout",
     [](const Json& config) -> std::shared_ptr<Layer> { return std::make_shared<Dropout>(config.at("p").as_double()); },
     no_parameters},
    {"Flatten", make_plain<Flatten>, no_parameters},
    {"BatchNorm2d", make_batch_norm, batch_norm_parameters},
};

const LayerFactory& factory_of(const std::string& type) {
  for (const auto& factory : kLayerFactories)
    if (type == factory.type) return factory;
  throw std::invalid_argument("unknown layer type '" + type + "'");
}

// One layer of a checkpoint's architecture, not built yet.
struct LayerPlan {
  const LayerFactory* factory;
  const Json* config;                      // inside the parsed architecture
  std::vector<ParameterShape> parameters;  // named as in the checkpoint: "<layer index>.<name>"
};

std::vector<LayerPlan> plan_layers(const Json& architecture) {
  std::vector<LayerPlan> plan;
  for (std::size_t i = 0; i < architecture.size(); ++i) {
    const Json& entry = architecture.at(i);
    LayerPlan layer{};
    at_place("layer " + std::to_string(i), [&] { std::tie(layer.factory, layer.config) = parse_entry(entry); });
    try {
      layer.parameters = layer.factory->parameters(*layer.config);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(detail::concat("layer ", i, " (", layer.factory->type, "): ", e.what()));
    }
    for (auto& p : layer.parameters) p.name = std::to_string(i) + "." + p.name;
    plan.push_back(std::move(layer));
  }
  return plan;
}

// The file must hold exactly the planned parameters, each with its shape and a float dtype.
// Checked on the header alone, so a small file cannot make load() allocate large layers.
void check_tensor_table(const std::vector<SafetensorsEntry>& entries, const std::vector<LayerPlan>& plan,
                        const std::string& where) {
  std::map<std::string_view, const SafetensorsEntry*> by_name;
  for (const auto& entry : entries) by_name.emplace(entry.name, &entry);
  const SafetensorsEntry* first = nullptr;  // a model's parameters share one dtype
  for (const auto& layer : plan) {
    for (const auto& p : layer.parameters) {
      const auto found = by_name.find(p.name);
      check(found != by_name.end(), where, "tensor '", p.name, "' of shape ", shape_text(p.shape),
            " is missing");
      const SafetensorsEntry& entry = *found->second;
      check(entry.shape == p.shape, where, "tensor '", p.name, "' has shape ", shape_text(entry.shape),
            " but the architecture needs ", shape_text(p.shape));
      check(entry.dtype == DType::float32 || entry.dtype == DType::float64 || entry.dtype == DType::bfloat16, where,
            "tensor '", p.name, "' has dtype ", dtype_name(entry.dtype),
            "; parameters are float32 or float64 (bfloat16 ones load as float32)");
      if (!first) first = &entry;
      check(entry.dtype == first->dtype, where, "tensor '", p.name, "' is ", dtype_name(entry.dtype), " but '",
            first->name, "' is ", dtype_name(first->dtype), "; a model's parameters share one dtype");
      by_name.erase(found);
    }
  }
  for (const auto& entry : entries)
    check(!by_name.count(entry.name), where, "tensor '", entry.name, "' is not part of the architecture");
}

bool is_reserved(const std::string& key) {
  return std::find(std::begin(kReservedKeys), std::end(kReservedKeys), key) != std::end(kReservedKeys);
}

const std::string* find_value(const Metadata& metadata, const std::string& key) {
  for (const auto& [k, v] : metadata)
    if (k == key) return &v;
  return nullptr;
}

// The architecture's JSON text; throws unless the metadata is a juanji model's.
const std::string& juanji_architecture(const Metadata& metadata, const std::string& where) {
  const std::string* architecture = find_value(metadata, "architecture");
  const std::string* format = find_value(metadata, "format");
  check(architecture != nullptr && format && *format == kFormat, where,
        "not a juanji model (no juanji architecture in __metadata__)");
  return *architecture;
}

Metadata user_metadata(const Metadata& metadata) {
  Metadata user;
  for (const auto& [key, value] : metadata)
    if (!is_reserved(key)) user.emplace_back(key, value);
  return user;
}

}  // namespace

std::shared_ptr<Layer> make_layer(const std::string& type, const Json& config) {
  if (config.is_object() && config.find(kExternalClassKey)) return make_external(config);
  return factory_of(type).make(config);
}

void set_external_layer_factory(ExternalLayerFactory factory) { external_factory() = std::move(factory); }

namespace {

bool is_batch_counter(const std::string& name) {
  const std::string_view counter = "num_batches_tracked";
  return name.size() >= counter.size() && std::string_view(name).substr(name.size() - counter.size()) == counter;
}

// "'a', 'b'" for an error message.
std::string quoted_list(const std::vector<std::string>& names) {
  std::string text;
  for (const auto& name : names) text += (text.empty() ? "'" : ", '") + name + "'";
  return text;
}

}  // namespace

StateDictReport load_state_dict(Layer& layer, const std::vector<NamedTensor>& tensors, bool strict) {
  const Layer::Lock lock(layer);
  layer.check_not_frozen("load_state_dict");
  std::map<std::string_view, const Tensor*> given;
  for (const auto& named : tensors)
    if (!is_batch_counter(named.name)) given.emplace(named.name, &named.tensor);
  StateDictReport report;
  std::vector<std::string> mismatched;
  std::vector<std::pair<Parameter*, const Tensor*>> matched;
  for (const auto& p : layer.parameters()) {
    const auto found = given.find(p->name);
    if (found == given.end()) {
      report.missing.push_back(p->name);
      continue;
    }
    const Tensor& value = *found->second;
    if (value.shape() != p->value.shape())
      mismatched.push_back(p->name + ": " + shape_str(value.shape()) + " where the model has " +
                           shape_str(p->value.shape()));
    else if (value.dtype() == DType::int64)
      mismatched.push_back(p->name + ": " + dtype_name(value.dtype()) + " where the model has " +
                           dtype_name(p->value.dtype()));
    else
      matched.emplace_back(p.get(), &value);
    given.erase(found);
  }
  for (const auto& named : tensors)
    if (given.count(named.name)) report.unexpected.push_back(named.name);
  std::string problems;
  if (!mismatched.empty()) problems += "; mismatched: " + quoted_list(mismatched);
  if (strict && !report.missing.empty()) problems += "; missing: " + quoted_list(report.missing);
  if (strict && !report.unexpected.empty()) problems += "; unexpected: " + quoted_list(report.unexpected);
  if (!problems.empty())
    throw std::invalid_argument("load_state_dict:" + problems.substr(1) +
                                (strict ? " (strict=False loads the names that match)" : ""));
  // Every value converted before any is copied: a failure leaves the model as it was.
  std::vector<Tensor> converted;
  for (const auto& [p, value] : matched) converted.push_back(value->to(p->value.dtype()).to(p->value.device()));
  for (std::size_t i = 0; i < matched.size(); ++i) matched[i].first->value.copy_(converted[i]);
  return report;
}

void Sequential::save(const std::string& path, const Metadata& metadata) const {
  const Lock lock(*this);
  Metadata all{{"format", kFormat}, {"juanji_version", version()}, {"architecture", architecture_json()}};
  for (const auto& [key, value] : metadata) {
    check(!is_reserved(key), "metadata: key '", key, "' is reserved for juanji");
    all.emplace_back(key, value);
  }
  std::vector<NamedTensor> tensors;
  for (const auto& p : parameters()) tensors.push_back({p->name, p->value});
  save_safetensors(path, tensors, all);
}

std::shared_ptr<Sequential> Sequential::load(const std::string& path, Metadata* metadata) {
  SafetensorsFile file(path);
  const std::string where = "checkpoint '" + path + "': ";
  const std::string& architecture_json = juanji_architecture(file.metadata(), where);
  Json architecture;
  std::vector<LayerPlan> plan;
  try {
    architecture = parse_json(architecture_json);
    plan = plan_layers(architecture);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(where + "bad architecture: " + e.what());
  }
  check_tensor_table(file.entries(), plan, where);

  std::map<std::string, Tensor> by_name;
  for (auto& named : file.read_tensors()) by_name.emplace(std::move(named.name), std::move(named.tensor));
  auto model = std::make_shared<Sequential>();
  for (std::size_t i = 0; i < plan.size(); ++i) {
    try {
      model->add(plan[i].factory->make(*plan[i].config));
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(detail::concat(where, "bad architecture: layer ", i, ": ", e.what()));
    }
    const auto& built = model->layers_.back()->parameters();
    const auto& planned = plan[i].parameters;
    const bool as_planned = std::equal(built.begin(), built.end(), planned.begin(), planned.end(),
                                       [](const auto& p, const ParameterShape& q) {
                                         return p->name == q.name && p->value.shape() == q.shape;
                                       });
    // A Python layer whose constructor arguments do not rebuild the parameters it was saved with
    // (a built-in layer that did so would be a juanji bug).
    if (!as_planned)
      throw std::invalid_argument(detail::concat(where, "layer ", i, " (", model->layers_.back()->type(),
                                                 ") was built with other parameters than the checkpoint lists"));
    for (const auto& p : built) {
      Tensor& value = by_name.at(p->name);
      if (value.dtype() == DType::bfloat16) value = value.to(DType::float32);  // exact
      if (p->grad.defined()) p->grad = Tensor::zeros(value.shape(), value.dtype());
      p->value = std::move(value);
    }
  }
  if (metadata) *metadata = user_metadata(file.metadata());
  return model;
}

Metadata Sequential::load_metadata(const std::string& path) {
  const SafetensorsFile file(path);
  juanji_architecture(file.metadata(), "checkpoint '" + path + "': ");  // refuses other files
  return user_metadata(file.metadata());
}

}  // namespace juanji::nn

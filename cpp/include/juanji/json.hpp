// A small strict JSON value (RFC 8259) for checkpoint headers and the layer configs in them: we
// parse files from untrusted sources, so the parser rejects anything loose (NaN/Infinity, trailing
// bytes, control characters or invalid UTF-8 in strings, duplicate keys, nesting deeper than 64)
// and reports the byte offset. Object keys keep their insertion order so dump() writes them back
// as given.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace juanji {

// How Json::dump lays out text. The default is compact, with doubles in their shortest
// round-trip form (2.0 as "2.0", so that it reads back as a double).
struct JsonFormat {
  std::string_view item_separator = ",";  // between array items and between object members
  std::string_view key_separator = ":";   // between an object key and its value
  // Significant digits of doubles as printf's %.*g writes them (2.0 as "2", 0.1 to 17 digits as
  // "0.10000000000000001"); 0: the shortest round-trip form.
  int double_digits = 0;
};

class Json {
 public:
  enum class Kind : std::uint8_t { null, boolean, number, string, array, object };
  using Array = std::vector<Json>;
  using Object = std::vector<std::pair<std::string, Json>>;

  Json() = default;  // null
  Json(std::nullptr_t) {}
  Json(bool value) : kind_(Kind::boolean), bool_(value) {}
  Json(double value) : kind_(Kind::number), number_(value) {}
  Json(std::int64_t value)
      : kind_(Kind::number), is_integer_(true), integer_(value),
        number_(static_cast<double>(value)) {}
  Json(int value) : Json(static_cast<std::int64_t>(value)) {}
  Json(std::string value) : kind_(Kind::string), string_(std::move(value)) {}
  Json(const char* value) : Json(std::string(value)) {}
  static Json array(Array items = {});
  static Json object(Object members = {});  // throws std::invalid_argument on a duplicate key

  Kind kind() const { return kind_; }
  const char* kind_name() const;  // "null", "bool", "number", "string", "array", "object"
  bool is_null() const { return kind_ == Kind::null; }
  bool is_bool() const { return kind_ == Kind::boolean; }
  bool is_number() const { return kind_ == Kind::number; }
  // True for numbers written without fraction or exponent (and for Json(std::int64_t)).
  bool is_integer() const { return kind_ == Kind::number && is_integer_; }
  bool is_string() const { return kind_ == Kind::string; }
  bool is_array() const { return kind_ == Kind::array; }
  bool is_object() const { return kind_ == Kind::object; }

  // Accessors throw std::invalid_argument naming the expected and actual kinds.
  bool as_bool() const;
  double as_double() const;
  std::int64_t as_int() const;  // integers only: 2.0 and 2e0 are rejected, not rounded
  const std::string& as_string() const;
  const Array& as_array() const;
  const Object& as_object() const;

  std::size_t size() const;  // elements of an array or members of an object
  bool contains(const std::string& key) const;
  const Json* find(const std::string& key) const;  // nullptr when the object lacks `key`
  const Json& at(const std::string& key) const;
  const Json& at(std::size_t index) const;

  void push_back(Json value);             // arrays
  void set(std::string key, Json value);  // objects: replaces the value of an existing key

  // The value as text laid out by `format`. Non-finite doubles throw.
  std::string dump(const JsonFormat& format = {}) const;

 private:
  void expect(Kind kind) const;
  void dump_to(std::string& out, const JsonFormat& format) const;

  Kind kind_ = Kind::null;
  bool bool_ = false;
  bool is_integer_ = false;
  std::int64_t integer_ = 0;
  double number_ = 0.0;
  std::string string_;
  Array array_;
  Object object_;
};

constexpr int kJsonMaxDepth = 64;

// Parses one JSON document (surrounding whitespace allowed). Throws std::invalid_argument with
// the byte offset of the first problem.
Json parse_json(std::string_view text);

}  // namespace juanji

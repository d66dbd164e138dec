#include "juanji/json.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <locale>
#include <sstream>
#include <stdexcept>
#include <unordered_set>

#include "juanji/error.hpp"

namespace juanji {

// ---- value -------------------------------------------------------------------------------------

Json Json::array(Array items) {
  Json j;
  j.kind_ = Kind::array;
  j.array_ = std::move(items);
  return j;
}

Json Json::object(Object members) {
  std::unordered_set<std::string_view> keys;
  for (const auto& member : members)
    check(keys.insert(member.first).second, "JSON: duplicate key \"", member.first, "\"");
  Json j;
  j.kind_ = Kind::object;
  j.object_ = std::move(members);
  return j;
}

namespace {

const char* kind_text(Json::Kind kind) {
  switch (kind) {
    case Json::Kind::null: return "null";
    case Json::Kind::boolean: return "bool";
    case Json::Kind::number: return "number";
    case Json::Kind::string: return "string";
    case Json::Kind::array: return "array";
    case Json::Kind::object: return "object";
  }
  return "?";
}

}  // namespace

const char* Json::kind_name() const { return kind_text(kind_); }

void Json::expect(Kind kind) const {
  check(kind_ == kind, "JSON: expected ", kind_text(kind), ", got ", kind_name());
}

bool Json::as_bool() const {
  expect(Kind::boolean);
  return bool_;
}

double Json::as_double() const {
  expect(Kind::number);
  return number_;
}

std::int64_t Json::as_int() const {
  expect(Kind::number);
  check(is_integer_, "JSON: expected an integer, got ", dump());
  return integer_;
}

const std::string& Json::as_string() const {
  expect(Kind::string);
  return string_;
}

const Json::Array& Json::as_array() const {
  expect(Kind::array);
  return array_;
}

const Json::Object& Json::as_object() const {
  expect(Kind::object);
  return object_;
}

std::size_t Json::size() const {
  check(kind_ == Kind::array || kind_ == Kind::object,
        "JSON: size() needs an array or object, got ", kind_name());
  return kind_ == Kind::array ? array_.size() : object_.size();
}

const Json* Json::find(const std::string& key) const {
  for (const auto& [k, v] : as_object())
    if (k == key) return &v;
  return nullptr;
}

bool Json::contains(const std::string& key) const { return find(key) != nullptr; }

const Json& Json::at(const std::string& key) const {
  const Json* value = find(key);
  check(value != nullptr, "JSON: object has no key '", key, "'");
  return *value;
}

const Json& Json::at(std::size_t index) const {
  const Array& items = as_array();
  check(index < items.size(), "JSON: index ", index, " out of range for an array of ",
        items.size());
  return items[index];
}

void Json::push_back(Json value) {
  expect(Kind::array);
  array_.push_back(std::move(value));
}

void Json::set(std::string key, Json value) {
  expect(Kind::object);
  for (auto& [k, v] : object_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  object_.emplace_back(std::move(key), std::move(value));
}

// ---- dump --------------------------------------------------------------------------------------

namespace {

void dump_string(std::string& out, const std::string& text) {
  out += '"';
  for (const char ch : text) {
    const auto byte = static_cast<unsigned char>(ch);
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (byte < 0x20) {
          char escape[8];
          std::snprintf(escape, sizeof escape, "\\u%04x", byte);
          out += escape;
        } else {
          out += ch;  // UTF-8 passes through unchanged
        }
    }
  }
  out += '"';
}

// As printf's %.*g writes it, whatever the locale.
std::string double_to_digits(double value, int digits) {
  std::ostringstream stream;
  stream.imbue(std::locale::classic());
  stream.precision(digits);
  stream << value;
  return stream.str();
}

std::string shortest_double(double value) {
#if defined(__cpp_lib_to_chars)
  char buffer[32];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
  std::string text(buffer, result.ptr);
#else
  // No floating-point to_chars: the shortest precision that reads back the same value.
  std::string text;
  for (int precision = 15; precision <= 17; ++precision) {
    text = double_to_digits(value, precision);
    std::istringstream back(text);
    back.imbue(std::locale::classic());
    double parsed = 0;
    if (back >> parsed && parsed == value) break;
  }
#endif
  // Keep a double a double when read back (2.0 must not come back as the integer 2).
  if (text.find_first_of(".eE") == std::string::npos) text += ".0";
  return text;
}

}  // namespace

void Json::dump_to(std::string& out, const JsonFormat& format) const {
  switch (kind_) {
    case Kind::null: out += "null"; break;
    case Kind::boolean: out += bool_ ? "true" : "false"; break;
    case Kind::number:
      if (is_integer_) {
        out += std::to_string(integer_);
      } else {
        check(std::isfinite(number_), "JSON: cannot write the non-finite number ", number_);
        out += format.double_digits > 0 ? double_to_digits(number_, format.double_digits)
                                        : shortest_double(number_);
      }
      break;
    case Kind::string: dump_string(out, string_); break;
    case Kind::array:
      out += '[';
      for (std::size_t i = 0; i < array_.size(); ++i) {
        if (i) out += format.item_separator;
        array_[i].dump_to(out, format);
      }
      out += ']';
      break;
    case Kind::object:
      out += '{';
      for (std::size_t i = 0; i < object_.size(); ++i) {
        if (i) out += format.item_separator;
        dump_string(out, object_[i].first);
        out += format.key_separator;
        object_[i].second.dump_to(out, format);
      }
      out += '}';
      break;
  }
}

std::string Json::dump(const JsonFormat& format) const {
  std::string out;
  dump_to(out, format);
  return out;
}

// ---- parse -------------------------------------------------------------------------------------

namespace {

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  Json parse_document() {
    skip_whitespace();
    Json value = parse_value(0);
    skip_whitespace();
    if (pos_ != text_.size()) fail("unexpected ", describe_here(), " after the JSON value");
    return value;
  }

 private:
  template <class... Parts>
  [[noreturn]] void fail(Parts&&... parts) const {
    fail_at(pos_, std::forward<Parts>(parts)...);
  }

  template <class... Parts>
  [[noreturn]] void fail_at(std::size_t pos, Parts&&... parts) const {
    throw std::invalid_argument(
        detail::concat("JSON: ", std::forward<Parts>(parts)..., " at byte offset ", pos));
  }

  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return text_[pos_]; }

  std::string describe_here() const {
    if (at_end()) return "end of input";
    const auto byte = static_cast<unsigned char>(peek());
    if (byte >= 0x20 && byte < 0x7f) return detail::concat("character '", peek(), "'");
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02x", byte);
    return detail::concat("byte ", hex);
  }

  void skip_whitespace() {
    while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r'))
      ++pos_;
  }

  bool consume_literal(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  Json parse_value(int depth) {
    if (at_end()) fail("expected a value, got end of input");
    switch (peek()) {
      case '{': return parse_object(depth + 1);
      case '[': return parse_array(depth + 1);
      case '"': return Json(parse_string());
      case 't':
        if (consume_literal("true")) return Json(true);
        break;
      case 'f':
        if (consume_literal("false")) return Json(false);
        break;
      case 'n':
        if (consume_literal("null")) return Json();
        break;
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) {
          if (text_.substr(pos_, 4) == "-Inf") fail("Infinity is not valid JSON");
          return parse_number();
        }
    }
    const std::string_view rest = text_.substr(pos_);
    if (rest.substr(0, 3) == "NaN" || rest.substr(0, 3) == "nan")
      fail("NaN is not valid JSON");
    if (rest.substr(0, 3) == "Inf" || rest.substr(0, 3) == "inf")
      fail("Infinity is not valid JSON");
    fail("expected a value, got ", describe_here());
  }

  void enter(int depth) {
    if (depth > kJsonMaxDepth) fail("nesting deeper than ", kJsonMaxDepth, " levels");
    ++pos_;  // the opening bracket
    skip_whitespace();
  }

  Json parse_array(int depth) {
    enter(depth);
    Json result = Json::array();
    if (!at_end() && peek() == ']') {
      ++pos_;
      return result;
    }
    for (;;) {
      skip_whitespace();
      result.push_back(parse_value(depth));
      skip_whitespace();
      if (at_end()) fail("unterminated array");
      if (peek() == ']') {
        ++pos_;
        return result;
      }
      if (peek() != ',') fail("expected ',' or ']' in array, got ", describe_here());
      ++pos_;
    }
  }

  Json parse_object(int depth) {
    enter(depth);
    Json::Object members;
    if (!at_end() && peek() == '}') {
      ++pos_;
      return Json::object();
    }
    // A set beside the ordered members keeps the duplicate check linear for huge headers.
    std::unordered_set<std::string> seen;
    for (;;) {
      skip_whitespace();
      if (at_end() || peek() != '"') fail("expected a string key in object, got ", describe_here());
      const std::size_t key_pos = pos_;
      std::string key = parse_string();
      if (!seen.insert(key).second) fail_at(key_pos, "duplicate key \"", key, "\"");
      skip_whitespace();
      if (at_end() || peek() != ':') fail("expected ':' after object key, got ", describe_here());
      ++pos_;
      skip_whitespace();
      Json value = parse_value(depth);
      members.emplace_back(std::move(key), std::move(value));
      skip_whitespace();
      if (at_end()) fail("unterminated object");
      if (peek() == '}') {
        ++pos_;
        return Json::object(std::move(members));
      }
      if (peek() != ',') fail("expected ',' or '}' in object, got ", describe_here());
      ++pos_;
    }
  }

  unsigned parse_hex4() {
    if (text_.size() - pos_ < 4) fail("truncated \\u escape");
    unsigned value = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[pos_];
      unsigned digit;
      if (c >= '0' && c <= '9')
        digit = static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f')
        digit = static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        digit = static_cast<unsigned>(c - 'A' + 10);
      else
        fail("invalid hex digit in \\u escape");
      value = value * 16 + digit;
      ++pos_;
    }
    return value;
  }

  static void append_utf8(std::string& out, unsigned code_point) {
    if (code_point < 0x80) {
      out += static_cast<char>(code_point);
    } else if (code_point < 0x800) {
      out += static_cast<char>(0xC0 | (code_point >> 6));
      out += static_cast<char>(0x80 | (code_point & 0x3F));
    } else if (code_point < 0x10000) {
      out += static_cast<char>(0xE0 | (code_point >> 12));
      out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code_point & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (code_point >> 18));
      out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code_point & 0x3F));
    }
  }

  // After a backslash-u: one code point, joining a UTF-16 surrogate pair.
  unsigned parse_unicode_escape() {
    const std::size_t start = pos_ - 2;
    const unsigned first = parse_hex4();
    if (first >= 0xDC00 && first <= 0xDFFF) fail_at(start, "unpaired low surrogate in \\u escape");
    if (first < 0xD800 || first > 0xDBFF) return first;
    if (text_.substr(pos_, 2) != "\\u") fail_at(start, "unpaired high surrogate in \\u escape");
    pos_ += 2;
    const unsigned second = parse_hex4();
    if (second < 0xDC00 || second > 0xDFFF)
      fail_at(start, "high surrogate not followed by a low surrogate in \\u escape");
    return 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
  }

  // Copies one UTF-8 encoded code point, rejecting overlong forms, surrogates and > U+10FFFF.
  void copy_utf8_sequence(std::string& out) {
    const auto lead = static_cast<unsigned char>(peek());
    int length;
    unsigned code_point;
    if (lead >= 0xC2 && lead <= 0xDF) {
      length = 2;
      code_point = lead & 0x1F;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      length = 3;
      code_point = lead & 0x0F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      length = 4;
      code_point = lead & 0x07;
    } else {
      fail("invalid UTF-8 in string");
    }
    if (text_.size() - pos_ < static_cast<std::size_t>(length)) fail("invalid UTF-8 in string");
    for (int i = 1; i < length; ++i) {
      const auto byte = static_cast<unsigned char>(text_[pos_ + i]);
      if ((byte & 0xC0) != 0x80) fail("invalid UTF-8 in string");
      code_point = (code_point << 6) | (byte & 0x3F);
    }
    const bool overlong = (length == 3 && code_point < 0x800) || (length == 4 && code_point < 0x10000);
    if (overlong || (code_point >= 0xD800 && code_point <= 0xDFFF) || code_point > 0x10FFFF)
      fail("invalid UTF-8 in string");
    out.append(text_.substr(pos_, length));
    pos_ += length;
  }

  std::string parse_string() {
    const std::size_t start = pos_;
    ++pos_;  // opening quote
    std::string out;
    for (;;) {
      if (at_end()) fail_at(start, "unterminated string");
      const char c = peek();
      const auto byte = static_cast<unsigned char>(c);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (byte < 0x20) fail("control character ", describe_here(), " in string");
      if (byte >= 0x80) {
        copy_utf8_sequence(out);
        continue;
      }
      ++pos_;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (at_end()) fail_at(start, "unterminated string");
      const char escape = peek();
      ++pos_;
      switch (escape) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': append_utf8(out, parse_unicode_escape()); break;
        default: --pos_; fail("invalid escape \\", describe_here(), " in string");
      }
    }
  }

  static bool is_digit(char c) { return c >= '0' && c <= '9'; }

  Json parse_number() {
    const std::size_t start = pos_;
    if (peek() == '-') ++pos_;
    if (at_end() || !is_digit(peek())) fail("expected a digit in number");
    if (peek() == '0') {
      ++pos_;
      if (!at_end() && is_digit(peek())) fail_at(start, "leading zeros are not valid JSON");
    } else {
      while (!at_end() && is_digit(peek())) ++pos_;
    }
    bool integer = true;
    if (!at_end() && peek() == '.') {
      integer = false;
      ++pos_;
      if (at_end() || !is_digit(peek())) fail("expected a digit after the decimal point");
      while (!at_end() && is_digit(peek())) ++pos_;
    }
    if (!at_end() && (peek() == 'e' || peek() == 'E')) {
      integer = false;
      ++pos_;
      if (!at_end() && (peek() == '+' || peek() == '-')) ++pos_;
      if (at_end() || !is_digit(peek())) fail("expected a digit in the exponent");
      while (!at_end() && is_digit(peek())) ++pos_;
    }
    const std::string_view literal = text_.substr(start, pos_ - start);
    if (integer) {
      std::int64_t value = 0;
      const auto result = std::from_chars(literal.data(), literal.data() + literal.size(), value);
      if (result.ec != std::errc() || result.ptr != literal.data() + literal.size())
        fail_at(start, "integer ", literal, " is out of the int64 range");
      return Json(value);
    }
    return Json(parse_double(literal, start));
  }

  double parse_double(std::string_view literal, std::size_t start) const {
    double value = 0;
#if defined(__cpp_lib_to_chars)
    const auto result = std::from_chars(literal.data(), literal.data() + literal.size(), value);
    const bool ok = result.ec == std::errc() && result.ptr == literal.data() + literal.size();
#else
    std::istringstream stream{std::string(literal)};
    stream.imbue(std::locale::classic());
    const bool ok = static_cast<bool>(stream >> value) && stream.peek() == EOF;
#endif
    if (!ok || !std::isfinite(value)) fail_at(start, "number ", literal, " is out of the double range");
    return value;
  }

  std::string_view text_;
  std::size_t pos_ = 0;
};

}  // namespace

Json parse_json(std::string_view text) { return Parser(text).parse_document(); }

}  // namespace juanji

// Errors: every bad argument becomes std::invalid_argument whose message names the argument
// and the shapes involved. TypeError (wrong dtype or device kind) derives from it so C++ callers
// catch one type, while the Python layer maps it to TypeError.
#pragma once

#include <cstddef>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace juanji {

class TypeError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A failed allocation: a std::bad_alloc (MemoryError in Python) that says how many bytes were
// asked for and what for.
class AllocationError : public std::bad_alloc {
 public:
  AllocationError(std::size_t bytes, const char* purpose)
      : message_("could not allocate " + std::to_string(bytes) + " bytes for " + purpose) {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

namespace detail {
template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}
}  // namespace detail

// check(cond, "weight", " has ", n, " channels") throws std::invalid_argument with the joined message.
template <class... Parts>
void check(bool condition, Parts&&... parts) {
  if (!condition) throw std::invalid_argument(detail::concat(std::forward<Parts>(parts)...));
}

template <class... Parts>
void check_type(bool condition, Parts&&... parts) {
  if (!condition) throw TypeError(detail::concat(std::forward<Parts>(parts)...));
}

}  // namespace juanji

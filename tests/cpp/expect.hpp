// What the tests of the public API share: checks that print and count their failures, and the
// summary line and exit status a test's main ends with.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

namespace public_check {

inline int failures = 0;

inline void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what.c_str());
    ++failures;
  }
}

// Prints "ok (0 failures)" or "FAILED (n failures)"; the exit status for main to return.
inline int summary() {
  std::printf("%s (%d failure%s)\n", failures ? "FAILED" : "ok", failures, failures == 1 ? "" : "s");
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}

}  // namespace public_check

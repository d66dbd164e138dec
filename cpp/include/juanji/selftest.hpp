// The self-test shipped in the library: every op, forward and backward, on small awkward shapes
// against the plain-loop references (cpu/ref/), at every SIMD level this CPU has. It is how a
// user on an unusual CPU checks the build (`juanji selftest`, juanji.selftest()).
#pragma once

#include <string>
#include <vector>

namespace juanji {

// One op at one SIMD level: its checks' worst error, measured as |got - want| over the size of
// the terms behind want (the sum of their absolute values; for gradients by finite differences
// the largest gradient), and the tolerance it was held to. Where checks with different
// tolerances share a row, the one closest to its tolerance is shown; tolerance 0 means bit for
// bit (integer-valued data, pooling, copies). failure names the first failed check ("" if ok).
struct SelftestRow {
  std::string op, level;
  double max_error, tolerance;
  bool ok;
  std::string failure;
};

// Runs the checks at every SIMD level at or below simd_detected(), lowest first, on one thread,
// then those of the level in use once more on the threads in use (get_num_threads()), with the
// CPU's algorithm choice left to the tables (each convolution algorithm is also forced in turn)
// and Winograd on. Restores the SIMD level, the thread count, the forced algorithms and the
// Winograd setting afterwards; they are process-wide, so run it alone. A check that throws is a
// failed row with the exception's message. Takes a fraction of a second; rows come level by level.
std::vector<SelftestRow> run_selftest();

}  // namespace juanji

"""juanji.selftest(): the C++ self-test's rows (juanji._core.selftest_rows) as a table."""

from __future__ import annotations

import time

from . import _core


def _error(value: float) -> str:
    return "0" if value == 0 else f"{value:.1e}"


def _tolerance(value: float) -> str:
    return "exact" if value == 0 else f"{value:.1e}"


def format_table(rows, seconds: float) -> str:
    """The rows as a table (op, level, max error, tolerance, ok), each failed row's first failed
    check, and a summary line."""
    width = max([len("op")] + [len(row.op) for row in rows])
    lines = [f"{'op':<{width}}  {'level':<8}  {'max error':>9}  {'tolerance':>9}  ok"]
    for row in rows:
        lines.append(f"{row.op:<{width}}  {row.level:<8}  {_error(row.max_error):>9}  "
                     f"{_tolerance(row.tolerance):>9}  {'ok' if row.ok else 'FAILED'}")
    failed = [row for row in rows if not row.ok]
    for row in failed:
        lines.append(f"FAILED {row.level} {row.op}: {row.failure}")
    levels = ", ".join(dict.fromkeys(row.level for row in rows))
    if failed:
        lines.append(f"selftest: {len(failed)} of {len(rows)} rows FAILED (levels {levels}) in {seconds:.1f} s")
    else:
        lines.append(f"selftest: all {len(rows)} rows ok (levels {levels}) in {seconds:.1f} s")
    return "\n".join(lines)


def selftest(verbose: bool = True) -> bool:
    """Checks this build on this CPU: runs every op forward and backward (convolutions by every
    algorithm, GEMM, pooling, batch norm, the fused passes, activations, softmax, the losses,
    dropout and the optimizers' updates) on small awkward shapes against the library's plain-loop
    references, with float64 gradients also against finite differences, at every SIMD level the
    CPU has (on one thread; the level in use also on the threads in use). Prints a table (op,
    level, max error, tolerance, ok; tolerance "exact": bit for bit) unless ``verbose`` is false,
    and returns whether every row passed. Takes a fraction of a second; the SIMD level, the
    thread count and the convolution settings are restored afterwards (run it alone: they change
    process-wide while it runs). ``juanji selftest`` runs it from the shell."""
    if verbose:
        print(f"juanji {_core.version()} self-test: SIMD detected {_core.simd_detected()}, "
              f"{_core.get_num_threads()} threads", flush=True)
    start = time.perf_counter()
    rows = _core.selftest_rows()
    seconds = time.perf_counter() - start
    if verbose:
        print(format_table(rows, seconds))
    return all(row.ok for row in rows)

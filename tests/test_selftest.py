"""The self-test shipped in the wheel: juanji.selftest(), juanji._core.selftest_rows() and
``juanji selftest``."""

import math
import types

import pytest

import juanji
from juanji import _core, _selftest, cli

LEVELS = ("portable", "avx2", "avx512")
# The levels this CPU has: those at or below the detected one.
CPU_LEVELS = LEVELS[: LEVELS.index(juanji.simd_detected()) + 1]
# A few of the rows every level must have.
SOME_OPS = (
    "conv forward: direct", "conv forward: winograd", "conv forward: depthwise", "conv forward: gemm",
    "conv data gradient: strided_phases", "conv weight gradient: filter_blocks", "conv algorithms", "gemm",
    "linear backward", "max pool backward", "avg pool forward", "global avg pool", "batch norm backward",
    "batch norm + ReLU + max pool backward", "activation forward", "softmax backward", "log_softmax forward",
    "cross-entropy backward", "mse loss", "dropout", "sgd update", "adam update", "clip grad norm",
    "gradients (finite differences)", "bf16 rounding",
)


@pytest.fixture(scope="module")
def rows():
    return _core.selftest_rows()


def test_every_row_passes_at_every_level(rows):
    assert [row.op for row in rows if not row.ok] == []
    assert list(dict.fromkeys(row.level for row in rows)) == list(CPU_LEVELS)
    ops_per_level = {level: [row.op for row in rows if row.level == level] for level in CPU_LEVELS}
    for level, ops in ops_per_level.items():
        assert ops == ops_per_level["portable"], level
        assert len(ops) == len(set(ops)), level
        for op in SOME_OPS:
            assert op in ops, (level, op)


def test_errors_are_within_small_finite_tolerances(rows):
    for row in rows:
        assert math.isfinite(row.max_error) and math.isfinite(row.tolerance), row
        assert 0 <= row.max_error <= row.tolerance <= 1e-4, row
        assert row.failure == "", row
        assert repr(row).startswith(f"SelftestRow(op='{row.op}', level='{row.level}'")
    # Integer-valued data and pooling are checked bit for bit.
    exact = {row.op for row in rows if row.tolerance == 0}
    assert {"max pool forward", "avg pool backward", "dropout", "add (+ ReLU)"} <= exact


def test_selftest_prints_the_table(capsys):
    assert juanji.selftest() is True
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith(f"juanji {juanji.__version__} self-test: SIMD detected {juanji.simd_detected()}")
    assert lines[1].split() == ["op", "level", "max", "error", "tolerance", "ok"]
    for level in CPU_LEVELS:
        assert any(line.startswith("conv forward: winograd") and line.split()[3] == level for line in lines), level
    assert lines[-1].startswith("selftest: all ") and f"(levels {', '.join(CPU_LEVELS)})" in lines[-1]
    assert "FAILED" not in out


def test_selftest_restores_the_settings(capsys):
    level, threads, winograd = juanji.simd_level(), juanji.get_num_threads(), juanji.winograd_enabled()
    forced = _core._set_conv_algorithm("forward", "gemm")
    try:
        juanji.set_simd_level("portable")
        juanji.set_num_threads(1)
        juanji.set_winograd(False)
        assert juanji.selftest(verbose=False) is True
        assert capsys.readouterr().out == ""
        assert juanji.simd_level() == "portable"
        assert juanji.get_num_threads() == 1
        assert juanji.winograd_enabled() is False
        assert _core._set_conv_algorithm("forward", "gemm") == "gemm"
    finally:
        _core._set_conv_algorithm("forward", forced or None)
        juanji.set_winograd(winograd)
        juanji.set_num_threads(threads)
        juanji.set_simd_level(level)


def test_cli_exits_0_and_prints_the_table(capsys):
    assert cli.main(["selftest"]) == 0
    out = capsys.readouterr().out
    assert "conv weight gradient: gemm" in out and out.splitlines()[-1].startswith("selftest: all ")


def failing_rows():
    row = types.SimpleNamespace
    return [row(op="gemm", level="portable", max_error=0.0, tolerance=1e-5, ok=True, failure=""),
            row(op="gemm", level="avx2", max_error=3e-3, tolerance=1e-5, ok=False,
                failure="avx2 gemm float32 5x7x3 (uniform data): 1 of 49 differ")]


def test_a_failed_row_fails_the_selftest_and_the_cli(monkeypatch, capsys):
    # The C++ checks' own failures are tested by juanji_ops_levels_test (a result one ulp off); here,
    # what the Python side makes of a failed row.
    monkeypatch.setattr(_core, "selftest_rows", failing_rows)
    assert juanji.selftest() is False
    out = capsys.readouterr().out
    assert "3.0e-03" in out and "FAILED" in out
    assert "FAILED avx2 gemm: avx2 gemm float32 5x7x3 (uniform data): 1 of 49 differ" in out
    assert out.splitlines()[-1].startswith("selftest: 1 of 2 rows FAILED (levels portable, avx2)")
    assert cli.main(["selftest"]) == cli.EXIT_SELFTEST_FAILED == 1


def test_table_format():
    lines = _selftest.format_table(failing_rows(), 0.5).splitlines()
    assert lines[1].split() == ["gemm", "portable", "0", "1.0e-05", "ok"]
    assert lines[2].split() == ["gemm", "avx2", "3.0e-03", "1.0e-05", "FAILED"]
    assert lines[-1].endswith("in 0.5 s")

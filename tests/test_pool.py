"""Max / average / global-average pooling (seeds 000-002, PyTorch semantics) forward
and backward against the NumPy reference."""

import numpy as np
import pytest

import juanji
import reference as ref
from helpers import (
    DTYPES,
    LAYOUTS,
    as_np,
    assert_bitwise,
    assert_close,
    check_fd,
    cpu_simd_levels,
    distinct_values,
    layout,
    pool_out_spatial,
    randint_data,
    randn,
    random_pool_cases,
)

MAX = {
    1: (juanji.max_pool1d, juanji.max_pool1d_backward, ref.max_pool1d, ref.max_pool1d_backward),
    2: (juanji.max_pool2d, juanji.max_pool2d_backward, ref.max_pool2d, ref.max_pool2d_backward),
}
AVG = {
    1: (juanji.avg_pool1d, juanji.avg_pool1d_backward, ref.avg_pool1d, ref.avg_pool1d_backward),
    2: (juanji.avg_pool2d, juanji.avg_pool2d_backward, ref.avg_pool2d, ref.avg_pool2d_backward),
}


def pc(spatial=(8, 8), kernel_size=2, stride=None, padding=0, ceil_mode=False,
       count_include_pad=True, N=2, C=3):
    return dict(N=N, C=C, spatial=tuple(spatial), kernel_size=kernel_size, stride=stride,
                padding=padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad)


GRID_2D = {
    "k2_default_stride": pc(),
    "k3_s1": pc(spatial=(7, 8), kernel_size=3, stride=1),
    "k3_s2_p1": pc(spatial=(7, 8), kernel_size=3, stride=2, padding=1),
    "k3_s2_p1_nopadcount": pc(spatial=(7, 8), kernel_size=3, stride=2, padding=1, count_include_pad=False),
    "k2_p1_half_kernel": pc(spatial=(5, 6), kernel_size=2, stride=2, padding=1),
    "k4_p2_half_kernel": pc(spatial=(9, 7), kernel_size=4, stride=3, padding=2),
    "stride_gt_kernel": pc(spatial=(11, 10), kernel_size=2, stride=3),
    "stride_pair": pc(spatial=(9, 9), kernel_size=3, stride=(1, 2)),
    "nonsquare_kernel": pc(spatial=(9, 10), kernel_size=(2, 4), stride=(2, 3), padding=(1, 2)),
    "ceil_mode": pc(spatial=(7, 7), kernel_size=2, stride=2, ceil_mode=True),
    "ceil_mode_drops_last": pc(spatial=(5, 5), kernel_size=2, stride=2, padding=1, ceil_mode=True),
    "ceil_mode_overhang": pc(spatial=(6, 4), kernel_size=3, stride=2, padding=1, ceil_mode=True),
    "ceil_overhang_nopadcount": pc(spatial=(6, 4), kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                   count_include_pad=False),
    "ceil_stride_gt_kernel": pc(spatial=(10, 8), kernel_size=2, stride=3, padding=1, ceil_mode=True),
    "batch1_channel1": pc(N=1, C=1, spatial=(6, 6), kernel_size=3, stride=1, padding=1),
    "out_1x1": pc(spatial=(3, 3), kernel_size=3),
    "input_1x1_k1": pc(spatial=(1, 1), kernel_size=1),
    "input_1x1_k2_p1": pc(spatial=(1, 1), kernel_size=2, stride=1, padding=1),
    "odd_sizes": pc(N=3, C=5, spatial=(9, 11), kernel_size=(3, 5), stride=2, padding=(1, 2)),
    "k1_s2_subsample": pc(spatial=(7, 6), kernel_size=1, stride=2),
}

GRID_1D = {
    "k2": pc(spatial=(8,), kernel_size=2),
    "k3_s1_p1": pc(spatial=(9,), kernel_size=3, stride=1, padding=1),
    "k3_s2_p1_nopadcount": pc(spatial=(9,), kernel_size=3, stride=2, padding=1, count_include_pad=False),
    "k4_p2": pc(spatial=(10,), kernel_size=4, stride=3, padding=2),
    "stride_gt_kernel": pc(spatial=(13,), kernel_size=2, stride=4),
    "tuple_args": pc(spatial=(10,), kernel_size=(3,), stride=(2,), padding=(1,)),
    "ceil_mode": pc(spatial=(7,), kernel_size=3, stride=2, ceil_mode=True),
    "ceil_overhang": pc(spatial=(4,), kernel_size=3, stride=2, padding=1, ceil_mode=True),
    "ceil_overhang_nopadcount": pc(spatial=(4,), kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                   count_include_pad=False),
    "out_len1": pc(spatial=(4,), kernel_size=4),
    "input_len1": pc(N=1, C=1, spatial=(1,), kernel_size=1),
}

GRIDS = {1: GRID_1D, 2: GRID_2D}


def grid_params():
    return [pytest.param(nd, c, id=f"{nd}d-{name}") for nd in (1, 2) for name, c in GRIDS[nd].items()]


RANDOM = [pytest.param(1, p.values[0], id=f"1d-{p.id}") for p in random_pool_cases(1, 20, seed=303)]
RANDOM += [pytest.param(2, p.values[0], id=f"2d-{p.id}") for p in random_pool_cases(2, 40, seed=404)]


def max_kw(c):
    return dict(kernel_size=c["kernel_size"], stride=c["stride"], padding=c["padding"],
                ceil_mode=c["ceil_mode"])


def avg_kw(c):
    return dict(max_kw(c), count_include_pad=c["count_include_pad"])


def in_shape(c):
    return (c["N"], c["C"]) + c["spatial"]


def run_pool(op, nd, c, dtype, x, rng):
    fwd, bwd, rfwd, rbwd = (MAX if op == "max" else AVG)[nd]
    kw = max_kw(c) if op == "max" else avg_kw(c)
    y_ref = rfwd(x, **kw)
    assert y_ref.shape == (c["N"], c["C"]) + pool_out_spatial(c)
    assert_close(fwd(x, **kw), y_ref, dtype, what=f"{op} y")
    gy = randn(rng, y_ref.shape, dtype)
    assert_close(bwd(gy, x, **kw), rbwd(gy, x, **kw), dtype, what=f"{op} grad_x")


def pool_input(rng, c, dtype, op):
    # distinct values for max pooling, so the winner (and its gradient) is unambiguous
    if op == "max":
        return distinct_values(rng, in_shape(c), gap=0.01).astype(dtype)
    return randn(rng, in_shape(c), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("nd,c", grid_params())
def test_pool_grid(nd, c, op, dtype):
    rng = np.random.default_rng(1)
    run_pool(op, nd, c, dtype, pool_input(rng, c, dtype, op), rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("nd,c", RANDOM)
def test_pool_random(nd, c, op, dtype):
    rng = np.random.default_rng(2)
    run_pool(op, nd, c, dtype, pool_input(rng, c, dtype, op), rng)


@pytest.mark.parametrize("op", ["max", "avg"])
def test_pool_larger_shapes(op):
    c = pc(N=4, C=16, spatial=(32, 30), kernel_size=3, stride=2, padding=1, ceil_mode=True)
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        run_pool(op, 2, c, dtype, pool_input(rng, c, dtype, op), rng)


# --------------------------------------------------------- output size rules

# (n, kernel, stride, padding, ceil_mode) -> output length, as PyTorch 2.x computes it
OUTPUT_LENGTHS = [
    ((5, 2, 2, 1, True), 3),    # ceil would give 4, but that window starts in the padding
    ((5, 2, 2, 1, False), 3),
    ((6, 3, 2, 1, True), 4),
    ((6, 3, 2, 1, False), 3),
    ((7, 3, 3, 0, True), 3),
    ((7, 3, 3, 0, False), 2),
    ((4, 4, 3, 2, True), 2),
    ((1, 1, 1, 0, True), 1),
    ((2, 2, 3, 1, True), 1),
    ((10, 4, 3, 2, True), 4),
    ((8, 3, 3, 1, True), 3),
    ((5, 3, 5, 1, True), 2),
    ((5, 3, 5, 1, False), 1),
]


@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize(
    "args,expected", OUTPUT_LENGTHS,
    ids=[f"n{a[0]}k{a[1]}s{a[2]}p{a[3]}{'-ceil' if a[4] else ''}" for a, _ in OUTPUT_LENGTHS])
def test_pool_output_length(args, expected, op):
    n, k, s, p, ceil = args
    assert ref.pool_output_size(n, k, s, p, ceil) == expected
    f1 = juanji.max_pool1d if op == "max" else juanji.avg_pool1d
    f2 = juanji.max_pool2d if op == "max" else juanji.avg_pool2d
    y1 = f1(np.zeros((1, 1, n)), k, stride=s, padding=p, ceil_mode=ceil)
    assert as_np(y1).shape == (1, 1, expected)
    y2 = f2(np.zeros((1, 1, n, 3)), (k, 1), stride=(s, 1), padding=(p, 0), ceil_mode=ceil)
    assert as_np(y2).shape == (1, 1, expected, 3)


def test_pool_stride_none_means_kernel_size():
    x = randn(np.random.default_rng(4), (2, 2, 9, 8))
    for f in (juanji.max_pool2d, juanji.avg_pool2d):
        np.testing.assert_array_equal(as_np(f(x, (3, 2))), as_np(f(x, (3, 2), stride=(3, 2))))
        np.testing.assert_array_equal(as_np(f(x, 3)), as_np(f(x, (3, 3), stride=3)))


def test_avg_pool_divisor_counts_padding_but_not_ceil_overhang():
    # values from PyTorch: ones(4), kernel 3, stride 2, padding 1, ceil_mode
    # windows [-1, 2) -> 2/3, [1, 4) -> 1, [3, 5) (the overhang past the padded input
    # at 5 is not counted) -> 1/2
    y = as_np(juanji.avg_pool1d(np.ones((1, 1, 4)), 3, stride=2, padding=1, ceil_mode=True))
    np.testing.assert_allclose(y.ravel(), [2 / 3, 1.0, 0.5], rtol=1e-15)
    y = as_np(juanji.avg_pool1d(np.ones((1, 1, 4)), 3, stride=2, padding=1, ceil_mode=True,
                                count_include_pad=False))
    np.testing.assert_allclose(y.ravel(), [1.0, 1.0, 1.0], rtol=1e-15)
    y = as_np(juanji.avg_pool2d(np.ones((1, 1, 3, 3)), 3, stride=2, padding=1, ceil_mode=True))
    np.testing.assert_allclose(y, np.full((1, 1, 2, 2), 4 / 9), rtol=1e-15)


def test_max_pool_pads_with_minus_infinity():
    x = -1.0 - np.arange(16.0).reshape(1, 1, 4, 4)  # all negative
    y = as_np(juanji.max_pool2d(x, 2, stride=2, padding=1))
    assert (y < 0).all(), "zero padding leaked into max pooling"
    assert_close(y, ref.max_pool2d(x, 2, stride=2, padding=1), np.float64)


# --------------------------------------------------------- ties and NaN

def test_max_pool2d_ties_go_to_first_max_in_window():
    # every window is all equal: the whole gradient goes to the window's top-left
    x = np.ones((1, 1, 4, 6))
    gy = np.arange(1.0, 7.0).reshape(1, 1, 2, 3)
    gx = as_np(juanji.max_pool2d_backward(gy, x, 2))
    expected = np.zeros((1, 1, 4, 6))
    expected[0, 0, ::2, ::2] = gy[0, 0]
    np.testing.assert_array_equal(gx, expected)


def test_max_pool2d_ties_row_major_scan():
    # window [[1, 3], [3, 2]]: the first 3 in row-major order is at (0, 1), not (1, 0)
    x = np.array([[[[1.0, 3.0], [3.0, 2.0]]]])
    gx = as_np(juanji.max_pool2d_backward(np.ones((1, 1, 1, 1)), x, 2))
    np.testing.assert_array_equal(gx[0, 0], [[0.0, 1.0], [0.0, 0.0]])


def test_max_pool_ties_overlapping_windows():
    # integer data full of ties, overlapping windows and padding: compare with the
    # reference (first maximum in each window), exactly
    rng = np.random.default_rng(5)
    x = randint_data(rng, (2, 3, 7, 6), np.float64, lo=0, hi=3)
    gy = randint_data(rng, ref.max_pool2d(x, 3, 1, 1).shape, np.float64)
    assert_bitwise(juanji.max_pool2d_backward(gy, x, 3, stride=1, padding=1),
                   ref.max_pool2d_backward(gy, x, 3, stride=1, padding=1), np.float64)
    x1 = randint_data(rng, (2, 3, 11), np.float64, lo=0, hi=2)
    gy1 = randint_data(rng, ref.max_pool1d(x1, 3, 2, 1).shape, np.float64)
    assert_bitwise(juanji.max_pool1d_backward(gy1, x1, 3, stride=2, padding=1),
                   ref.max_pool1d_backward(gy1, x1, 3, stride=2, padding=1), np.float64)


LEVELS = cpu_simd_levels()


@pytest.mark.parametrize("level", LEVELS)
def test_max_pool2d_2x2_vector_path_ties_and_nans(level, restore_runtime):
    # Rows long enough for whole vectors of outputs plus a scalar tail, integer data full of ties,
    # and NaNs at every position of a window: the first maximum (or first NaN) in row-major order
    # wins, in values and in where the gradient goes.
    juanji.set_simd_level(level)
    rng = np.random.default_rng(6)
    x = randint_data(rng, (2, 3, 6, 71), np.float32, lo=0, hi=3)
    for i, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        x[0, 0, 2 + r, 4 * i + c] = np.nan
    x[1, 2, 0, 10] = x[1, 2, 1, 11] = np.nan  # two NaNs in one window: the first is kept
    gy = randint_data(rng, (2, 3, 3, 35), np.float32)
    y = as_np(juanji.max_pool2d(x, 2))
    gx = as_np(juanji.max_pool2d_backward(gy, x, 2))
    expected_y = np.empty_like(y)
    expected_gx = np.zeros_like(x)
    for n, c, p, q in np.ndindex(y.shape):
        window = x[n, c, 2 * p:2 * p + 2, 2 * q:2 * q + 2].ravel()
        nans = np.flatnonzero(np.isnan(window))
        pick = nans[0] if nans.size else int(np.argmax(window))
        expected_y[n, c, p, q] = window[pick]
        expected_gx[n, c, 2 * p + pick // 2, 2 * q + pick % 2] += gy[n, c, p, q]
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(gx, expected_gx)
    assert np.isnan(y).sum() == 5


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("kernel, stride, padding, ceil_mode", [
    (3, 2, 0, True), (3, 2, 1, False), (3, 1, 1, False), ((2, 3), (1, 3), (1, 1), True), (5, 2, 2, True),
    ((3, 2), (2, 1), (1, 0), True)])
@pytest.mark.parametrize("height, width", [(9, 141), (40, 23)])
def test_max_pool2d_general_windows_ties_nans_and_signed_zeros(kernel, stride, padding, ceil_mode, height, width,
                                                               level, restore_runtime):
    # Rows of more than one block of 64 outputs, and rows shorter than a vector on a plane tall
    # enough for several rows a thread: windows inside the plane go a block (or, without argmaxes,
    # vectors, a thread's rows inside it top to bottom in one call) at a time, also where padding or
    # ceil mode clip their rows; the ones clipped at the sides one by one. Integer data full of
    # ties, signed zeros and NaNs (two in some windows): the first maximum (or first NaN) in
    # row-major window order wins, in values (signs of zero included) and in where the gradient goes.
    juanji.set_simd_level(level)
    rng = np.random.default_rng(8)
    x = randint_data(rng, (2, 2, height, width), np.float32, lo=-1, hi=2)
    x[x == 0] = rng.choice([0.0, -0.0], size=int((x == 0).sum())).astype(np.float32)
    x[0, 0, 3, 10:14] = np.nan
    x[1, 1, 4, width // 2] = x[1, 1, 5, width // 2 + 1] = np.nan
    y = as_np(juanji.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode))
    gy = randint_data(rng, y.shape, np.float32)
    gx = as_np(juanji.max_pool2d_backward(gy, x, kernel, stride, padding, ceil_mode=ceil_mode))
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    expected_y, expected_gx = np.empty_like(y), np.zeros_like(x)
    for n, c, p, q in np.ndindex(y.shape):
        rows = range(max(p * sh - ph, 0), min(p * sh - ph + kh, x.shape[2]))
        cols = range(max(q * sw - pw, 0), min(q * sw - pw + kw, x.shape[3]))
        at = [(h, w) for h in rows for w in cols]
        values = np.array([x[n, c, h, w] for h, w in at])
        nans = np.flatnonzero(np.isnan(values))
        pick = nans[0] if nans.size else next(i for i, v in enumerate(values) if v == values.max())
        expected_y[n, c, p, q] = values[pick]
        expected_gx[n, c, at[pick][0], at[pick][1]] += gy[n, c, p, q]
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(np.signbit(y), np.signbit(expected_y))
    np.testing.assert_array_equal(gx, expected_gx)
    assert np.isnan(y).any()


@pytest.mark.parametrize("level", LEVELS)
def test_max_pool2d_2x2_gradient_signed_zeros_and_leftover_edges(level, restore_runtime):
    # A -0 gradient lands as 0 + -0 = +0, as the reference's sum gives, and the last row and
    # column of odd planes (in no window) are 0, whatever the output buffer held before.
    juanji.set_simd_level(level)
    rng = np.random.default_rng(9)
    x = randint_data(rng, (2, 3, 7, 71), np.float32, lo=-3, hi=3)
    gy = randint_data(rng, (2, 3, 3, 35), np.float32)
    gy[0, 0] = -0.0
    for _ in range(2):  # the second call may reuse the first one's buffer
        gx = as_np(juanji.max_pool2d_backward(gy, x, 2))
        assert_bitwise(gx, ref.max_pool2d_backward(gy, x, 2), np.float32)
        assert not np.signbit(gx[0, 0]).any()
        assert not gx[:, :, 6, :].any() and not gx[:, :, :, 70].any()


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("shape", [(2, 3, 6, 70), (1, 2, 7, 71), (3, 1, 4, 10)])
def test_avg_pool2d_2x2_vector_path_is_exact(level, shape, restore_runtime):
    # Integer data: every window mean is exact, so the vector path must match the reference
    # bit for bit, odd trailing rows and columns included (they get no gradient).
    juanji.set_simd_level(level)
    rng = np.random.default_rng(8)
    x = randint_data(rng, shape, np.float32)
    y_ref = ref.avg_pool2d(x, 2)
    gy = randint_data(rng, y_ref.shape, np.float32)
    assert_bitwise(juanji.avg_pool2d(x, 2), y_ref, np.float32)
    assert_bitwise(juanji.avg_pool2d_backward(gy, x, 2), ref.avg_pool2d_backward(gy, x, 2), np.float32)


@pytest.mark.parametrize("level", LEVELS)
def test_avg_pool2d_2x2_signed_zeros_match_the_general_loop(level, restore_runtime):
    # The general loop starts its sums at +0, so a window of -0s averages to +0, and so does a
    # -0 gradient share; the vector path must agree.
    juanji.set_simd_level(level)
    x = np.full((1, 1, 2, 40), -0.0, np.float32)
    y = as_np(juanji.avg_pool2d(x, 2))
    assert not np.signbit(y).any()
    gx = as_np(juanji.avg_pool2d_backward(np.full((1, 1, 1, 20), -0.0, np.float32), x, 2))
    assert not np.signbit(gx).any()


def test_max_pool1d_ties_go_to_first_max():
    x = np.array([[[2.0, 2.0, 1.0, 5.0, 5.0, 5.0]]])
    gx = as_np(juanji.max_pool1d_backward(np.array([[[1.0, 10.0]]]), x, 3))
    np.testing.assert_array_equal(gx, [[[1.0, 0.0, 0.0, 10.0, 0.0, 0.0]]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos", [0, 1, 3], ids=["nan_first", "nan_middle", "nan_last"])
def test_max_pool2d_nan_propagates(pos, dtype):
    x = np.arange(16.0, dtype=dtype).reshape(1, 1, 4, 4)
    r, c = divmod(pos, 2)
    x[0, 0, r, c] = np.nan  # inside the top-left 2x2 window only
    y = as_np(juanji.max_pool2d(x, 2))
    assert np.isnan(y[0, 0, 0, 0])
    assert not np.isnan(y.ravel()[1:]).any()
    np.testing.assert_array_equal(y[0, 0].ravel()[1:], [7.0, 13.0, 15.0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool1d_nan_propagates(dtype):
    x = np.array([[[1.0, np.nan, 3.0, 4.0, 5.0, 6.0]]], dtype=dtype)
    y = as_np(juanji.max_pool1d(x, 3, stride=1))
    assert np.isnan(y[0, 0, :2]).all()
    np.testing.assert_array_equal(y[0, 0, 2:], [5.0, 6.0])


def test_avg_pool_nan_propagates():
    x = np.ones((1, 1, 4, 4))
    x[0, 0, 1, 1] = np.nan
    y = as_np(juanji.avg_pool2d(x, 2))
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y.ravel()[1:]).any()


# --------------------------------------------------------- layouts, inputs

@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("nd", [1, 2])
def test_pool_noncontiguous_and_tensor_inputs(nd, op, kind):
    c = pc(N=2, C=3, spatial=(9, 8) if nd == 2 else (11,), kernel_size=3, stride=2, padding=1,
           ceil_mode=True)
    rng = np.random.default_rng(6)
    fwd, bwd, rfwd, rbwd = (MAX if op == "max" else AVG)[nd]
    kw = max_kw(c) if op == "max" else avg_kw(c)
    x = pool_input(rng, c, np.float64, op)
    y = fwd(layout(x, kind), **kw)
    assert_close(y, rfwd(x, **kw), np.float64, what=kind)
    gy = randn(rng, as_np(y).shape)
    assert_close(bwd(layout(gy, kind), layout(x, kind), **kw), rbwd(gy, x, **kw), np.float64, what=kind)


# --------------------------------------------------------- integer-exact float32

EXACT = {
    "max2d_k3_s2_p1_ceil": ("max", 2, pc(N=2, C=3, spatial=(9, 8), kernel_size=3, stride=2, padding=1,
                                         ceil_mode=True)),
    "max2d_overlap": ("max", 2, pc(N=2, C=2, spatial=(7, 7), kernel_size=(3, 2), stride=1)),
    "max1d": ("max", 1, pc(N=2, C=3, spatial=(13,), kernel_size=4, stride=3, padding=2)),
    # power-of-two divisors only (count_include_pad, no ceil overhang): the division is exact
    "avg2d_k2": ("avg", 2, pc(N=2, C=3, spatial=(8, 9), kernel_size=2)),
    "avg2d_k2x4_p": ("avg", 2, pc(N=2, C=3, spatial=(7, 9), kernel_size=(2, 4), stride=(1, 2),
                                  padding=(1, 2))),
    "avg1d_k4": ("avg", 1, pc(N=2, C=3, spatial=(15,), kernel_size=4, stride=3, padding=2)),
}


@pytest.mark.parametrize("op,nd,c", [pytest.param(*v, id=k) for k, v in EXACT.items()])
def test_pool_integer_valued_float32_is_exact(op, nd, c):
    rng = np.random.default_rng(7)
    fwd, bwd, rfwd, rbwd = (MAX if op == "max" else AVG)[nd]
    kw = max_kw(c) if op == "max" else avg_kw(c)
    x = randint_data(rng, in_shape(c))
    y_ref = rfwd(x, **kw)
    assert_bitwise(fwd(x, **kw), y_ref, what="y")
    gy = randint_data(rng, y_ref.shape)
    assert_bitwise(bwd(gy, x, **kw), rbwd(gy, x, **kw), what="grad_x")


def test_global_avg_pool_integer_valued_float32_is_exact():
    rng = np.random.default_rng(8)
    x = randint_data(rng, (2, 3, 4, 8))  # H*W = 32, a power of two
    assert_bitwise(juanji.global_avg_pool2d(x), ref.global_avg_pool2d(x))
    gy = randint_data(rng, (2, 3, 1, 1))
    assert_bitwise(juanji.global_avg_pool2d_backward(gy, x), ref.global_avg_pool2d_backward(gy, x))


# --------------------------------------------------------- global average

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (1, 4, 1, 9), (3, 2, 8, 8), (2, 16, 13, 11)],
                         ids=lambda s: "x".join(map(str, s)))
def test_global_avg_pool2d(shape, dtype):
    rng = np.random.default_rng(9)
    x = randn(rng, shape, dtype)
    y = juanji.global_avg_pool2d(x)
    assert as_np(y).shape == shape[:2] + (1, 1)
    assert_close(y, ref.global_avg_pool2d(x), dtype)
    gy = randn(rng, shape[:2] + (1, 1), dtype)
    assert_close(juanji.global_avg_pool2d_backward(gy, x), ref.global_avg_pool2d_backward(gy, x), dtype)


@pytest.mark.parametrize("kind", LAYOUTS)
def test_global_avg_pool2d_layouts(kind):
    rng = np.random.default_rng(10)
    x = randn(rng, (2, 3, 5, 4))
    assert_close(juanji.global_avg_pool2d(layout(x, kind)), ref.global_avg_pool2d(x), np.float64)


# --------------------------------------------------------- finite differences (f64)

FD_CASES = {
    "max2d_k3_s2_p1_ceil": ("max", 2, pc(N=1, C=2, spatial=(5, 4), kernel_size=3, stride=2, padding=1,
                                         ceil_mode=True)),
    "max2d_overlap": ("max", 2, pc(N=1, C=1, spatial=(4, 5), kernel_size=2, stride=1)),
    "max1d": ("max", 1, pc(N=2, C=2, spatial=(7,), kernel_size=3, stride=2, padding=1)),
    "avg2d_ceil_overhang": ("avg", 2, pc(N=1, C=2, spatial=(4, 5), kernel_size=3, stride=2, padding=1,
                                         ceil_mode=True)),
    "avg2d_nopadcount": ("avg", 2, pc(N=1, C=2, spatial=(5, 4), kernel_size=(2, 3), stride=(1, 2),
                                      padding=(1, 1), count_include_pad=False)),
    "avg1d_stride_gt_kernel": ("avg", 1, pc(N=2, C=2, spatial=(9,), kernel_size=2, stride=3)),
}


@pytest.mark.parametrize("op,nd,c", [pytest.param(*v, id=k) for k, v in FD_CASES.items()])
def test_pool_backward_matches_finite_differences(op, nd, c):
    rng = np.random.default_rng(11)
    fwd, bwd, _, _ = (MAX if op == "max" else AVG)[nd]
    kw = max_kw(c) if op == "max" else avg_kw(c)
    x = distinct_values(rng, in_shape(c), gap=0.01) if op == "max" else randn(rng, in_shape(c))
    R = randn(rng, (c["N"], c["C"]) + pool_out_spatial(c))
    gx = bwd(R, x, **kw)
    check_fd(lambda x: fwd(x, **kw), dict(x=x), dict(x=gx), R)


def test_global_avg_pool_backward_matches_finite_differences():
    rng = np.random.default_rng(12)
    x = randn(rng, (2, 2, 3, 4))
    R = randn(rng, (2, 2, 1, 1))
    check_fd(lambda x: juanji.global_avg_pool2d(x), dict(x=x),
             dict(x=juanji.global_avg_pool2d_backward(R, x)), R)

"""Signal convolution (seeds 000/002/003): true convolution flips the kernel.
convolve / correlate must equal numpy.convolve / numpy.correlate and convolve2d /
correlate2d must equal scipy.signal.convolve2d / correlate2d (zero fill), in every mode;
plus the named image kernels (seed 001 fig. 4, seed 004)."""

import numpy as np
import pytest

import juanji
import reference as ref
from helpers import DTYPES, LAYOUTS, as_np, assert_close, layout, randn

MODES = ["full", "same", "valid"]

# ============================================================== 1-D

LENGTHS = [(1, 1), (1, 5), (5, 1), (5, 3), (3, 5), (6, 4), (4, 6), (7, 7), (8, 2), (2, 8), (10, 3), (9, 6),
           (6, 9)]
_rng = np.random.default_rng(2024)
RANDOM_LENGTHS = [tuple(int(v) for v in _rng.integers(1, 25, size=2)) for _ in range(30)]


def length_params():
    out = [pytest.param(n, m, id=f"n{n}-m{m}") for n, m in LENGTHS]
    out += [pytest.param(n, m, id=f"r{i:02d}-n{n}-m{m}") for i, (n, m) in enumerate(RANDOM_LENGTHS)]
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n,m", length_params())
def test_convolve_1d(n, m, mode, dtype):
    rng = np.random.default_rng(n * 100 + m)
    f, g = randn(rng, n, dtype), randn(rng, m, dtype)
    y = juanji.convolve(f, g, mode=mode)
    expected = ref.convolve(f, g, mode)
    assert_close(y, expected, dtype, what="vs reference")
    assert_close(y, np.convolve(f.astype(np.float64), g.astype(np.float64), mode), dtype,
                 what="vs numpy.convolve")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n,m", length_params())
def test_correlate_1d(n, m, mode, dtype):
    rng = np.random.default_rng(n * 100 + m + 7)
    f, g = randn(rng, n, dtype), randn(rng, m, dtype)
    y = juanji.correlate(f, g, mode=mode)
    assert_close(y, ref.correlate(f, g, mode), dtype, what="vs reference")
    assert_close(y, np.correlate(f.astype(np.float64), g.astype(np.float64), mode), dtype,
                 what="vs numpy.correlate")


def test_default_modes_match_numpy():
    f, g = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, -1.0])
    np.testing.assert_allclose(as_np(juanji.convolve(f, g)), np.convolve(f, g), rtol=1e-15)  # full
    np.testing.assert_allclose(as_np(juanji.correlate(f, g)), np.correlate(f, g), rtol=1e-15)  # valid
    assert as_np(juanji.convolve(f, g)).shape == (5,)
    assert as_np(juanji.correlate(f, g)).shape == (3,)


def test_numpy_documentation_examples():
    # numpy.convolve / numpy.correlate docstring examples
    f, g = np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, 0.5])
    np.testing.assert_allclose(as_np(juanji.convolve(f, g)), [0.0, 1.0, 2.5, 4.0, 1.5], rtol=1e-15)
    np.testing.assert_allclose(as_np(juanji.convolve(f, g, mode="same")), [1.0, 2.5, 4.0], rtol=1e-15)
    np.testing.assert_allclose(as_np(juanji.convolve(f, g, mode="valid")), [2.5], rtol=1e-15)
    np.testing.assert_allclose(as_np(juanji.correlate(f, g)), [3.5], rtol=1e-15)
    np.testing.assert_allclose(as_np(juanji.correlate(f, g, mode="same")), [2.0, 3.5, 3.0], rtol=1e-15)
    np.testing.assert_allclose(as_np(juanji.correlate(f, g, mode="full")), [0.5, 2.0, 3.5, 3.0, 0.0],
                               rtol=1e-15)


def test_convolve_flips_the_kernel_and_is_commutative():
    # seed 000: f(n) * g(n) is the sum of copies of f scaled by g(k), shifted right by k
    f = np.array([1.0, 1.0, 1.0])
    g = np.array([1.0, 2.0, 2.0, 3.0])  # the seed's g(0..3)
    y = as_np(juanji.convolve(f, g))
    expected = np.zeros(6)
    for k, gk in enumerate(g):
        expected[k:k + 3] += gk * f
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(as_np(juanji.convolve(g, f)), expected)
    # correlation does not flip: correlate(f, g) == convolve(f, g[::-1])
    np.testing.assert_array_equal(as_np(juanji.correlate(f, g, mode="full")),
                                  as_np(juanji.convolve(f, g[::-1].copy(), mode="full")))


def test_correlate_same_when_second_is_longer():
    # numpy swaps and reverses when g is longer: 'same' has len(g) and its own centring
    f, g = np.array([1.0, 2.0]), np.array([1.0, 10.0, 100.0, 1000.0])
    np.testing.assert_allclose(as_np(juanji.correlate(f, g, mode="same")), np.correlate(f, g, "same"),
                               rtol=1e-15)
    np.testing.assert_allclose(as_np(juanji.convolve(f, g, mode="same")), np.convolve(f, g, "same"),
                               rtol=1e-15)


@pytest.mark.parametrize("kind", LAYOUTS)
def test_signal_1d_noncontiguous_and_tensor_inputs(kind):
    rng = np.random.default_rng(3)
    f, g = randn(rng, 11), randn(rng, 4)
    for mode in MODES:
        assert_close(juanji.convolve(layout(f, kind), layout(g, kind), mode=mode), ref.convolve(f, g, mode),
                     np.float64, what=kind)
        assert_close(juanji.correlate(layout(f, kind), layout(g, kind), mode=mode), ref.correlate(f, g, mode),
                     np.float64, what=kind)


# ============================================================== 2-D

SHAPES_2D = [
    ((5, 6), (3, 3)), ((5, 6), (2, 2)), ((5, 6), (3, 4)), ((6, 5), (4, 4)), ((7, 7), (1, 1)),
    ((4, 4), (4, 4)), ((1, 1), (1, 1)), ((1, 8), (1, 3)), ((8, 1), (2, 1)), ((9, 11), (5, 2)),
    ((3, 3), (5, 6)),  # kernel larger than the image in both dims (valid swaps the inputs)
    ((2, 7), (4, 2)),  # larger in one dim only (full / same only)
    ((3, 4), (3, 4)),
]
_rng2 = np.random.default_rng(4048)
RANDOM_2D = [(tuple(int(v) for v in _rng2.integers(1, 10, size=2)), tuple(int(v) for v in _rng2.integers(1, 6, size=2)))
             for _ in range(30)]


def valid_possible(a_shape, k_shape):
    return all(p >= q for p, q in zip(a_shape, k_shape)) or all(p <= q for p, q in zip(a_shape, k_shape))


def shape2d_params():
    out = []
    cases = [(f"{'x'.join(map(str, a))}-k{'x'.join(map(str, k))}", a, k) for a, k in SHAPES_2D]
    cases += [(f"r{i:02d}-{'x'.join(map(str, a))}-k{'x'.join(map(str, k))}", a, k)
              for i, (a, k) in enumerate(RANDOM_2D)]
    for name, a, k in cases:
        for mode in MODES:
            if mode == "valid" and not valid_possible(a, k):
                continue
            out.append(pytest.param(a, k, mode, id=f"{name}-{mode}"))
    return out


SHAPE2D = shape2d_params()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("a_shape,k_shape,mode", SHAPE2D)
def test_convolve2d_matches_reference(a_shape, k_shape, mode, dtype):
    rng = np.random.default_rng(5)
    a, k = randn(rng, a_shape, dtype), randn(rng, k_shape, dtype)
    assert_close(juanji.convolve2d(a, k, mode=mode), ref.convolve2d(a, k, mode), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("a_shape,k_shape,mode", SHAPE2D)
def test_correlate2d_matches_reference(a_shape, k_shape, mode, dtype):
    rng = np.random.default_rng(6)
    a, k = randn(rng, a_shape, dtype), randn(rng, k_shape, dtype)
    assert_close(juanji.correlate2d(a, k, mode=mode), ref.correlate2d(a, k, mode), dtype)


@pytest.mark.parametrize("a_shape,k_shape,mode", SHAPE2D)
def test_convolve2d_matches_scipy(a_shape, k_shape, mode):
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(7)
    a, k = randn(rng, a_shape), randn(rng, k_shape)
    assert_close(juanji.convolve2d(a, k, mode=mode), signal.convolve2d(a, k, mode=mode), np.float64)


@pytest.mark.parametrize("a_shape,k_shape,mode", SHAPE2D)
def test_correlate2d_matches_scipy(a_shape, k_shape, mode):
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(8)
    a, k = randn(rng, a_shape), randn(rng, k_shape)
    assert_close(juanji.correlate2d(a, k, mode=mode), signal.correlate2d(a, k, mode=mode), np.float64)


def test_2d_default_mode_is_full():
    rng = np.random.default_rng(9)
    a, k = randn(rng, (4, 5)), randn(rng, (2, 3))
    assert as_np(juanji.convolve2d(a, k)).shape == (5, 7)
    assert as_np(juanji.correlate2d(a, k)).shape == (5, 7)
    assert_close(juanji.convolve2d(a, k), ref.convolve2d(a, k, "full"), np.float64)


def test_convolve2d_flips_correlate2d_does_not():
    # a single 1 in the kernel's top-left corner: correlation reads the image at +offset,
    # convolution (kernel rotated by 180 degrees) at -offset
    a = np.arange(1.0, 17.0).reshape(4, 4)
    k = np.zeros((3, 3))
    k[0, 0] = 1.0
    np.testing.assert_array_equal(as_np(juanji.correlate2d(a, k, mode="valid")), a[:2, :2])
    np.testing.assert_array_equal(as_np(juanji.convolve2d(a, k, mode="valid")), a[2:, 2:])
    np.testing.assert_array_equal(as_np(juanji.convolve2d(a, k[::-1, ::-1].copy(), mode="full")),
                                  as_np(juanji.correlate2d(a, k, mode="full")))


@pytest.mark.parametrize("kind", LAYOUTS)
def test_signal_2d_noncontiguous_and_tensor_inputs(kind):
    rng = np.random.default_rng(10)
    a, k = randn(rng, (7, 6)), randn(rng, (3, 2))
    for mode in MODES:
        assert_close(juanji.convolve2d(layout(a, kind), layout(k, kind), mode=mode), ref.convolve2d(a, k, mode),
                     np.float64, what=kind)
        assert_close(juanji.correlate2d(layout(a, kind), layout(k, kind), mode=mode),
                     ref.correlate2d(a, k, mode), np.float64, what=kind)


# ============================================================== named kernels

def _kernel_close(got, expected):
    g = as_np(got)
    assert g.dtype in (np.dtype(np.float32), np.dtype(np.float64)), g.dtype
    assert g.shape == expected.shape
    rtol = 1e-6 if g.dtype == np.float32 else 1e-13
    np.testing.assert_allclose(g.astype(np.float64), expected, rtol=0, atol=rtol * np.max(np.abs(expected)))


def test_laplacian_kernel():
    _kernel_close(juanji.kernels.laplacian(), np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]))


def test_sobel_kernels():
    sx = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    _kernel_close(juanji.kernels.sobel_x(), sx)
    _kernel_close(juanji.kernels.sobel_y(), sx.T)
    _kernel_close(juanji.kernels.sobel_x(), ref.sobel_x_kernel())
    _kernel_close(juanji.kernels.sobel_y(), ref.sobel_y_kernel())


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_box_kernel(n):
    _kernel_close(juanji.kernels.box(n), np.full((n, n), 1.0 / (n * n)))
    _kernel_close(juanji.kernels.box(n), ref.box_kernel(n))


@pytest.mark.parametrize("n,sigma", [(1, 1.0), (3, 0.5), (3, 1.0), (4, 1.0), (5, 1.4), (7, 2.0), (6, 0.8)])
def test_gaussian_kernel(n, sigma):
    g = as_np(juanji.kernels.gaussian(n, sigma))
    assert g.shape == (n, n)
    np.testing.assert_allclose(g.sum(), 1.0, rtol=1e-6)
    # centred and symmetric: invariant under flips and transposition
    np.testing.assert_allclose(g, g[::-1, :], rtol=1e-6)
    np.testing.assert_allclose(g, g[:, ::-1], rtol=1e-6)
    np.testing.assert_allclose(g, g.T, rtol=1e-6)
    # the sampled Gaussian exp(-((i-c)^2 + (j-c)^2) / (2 sigma^2)), c = (n-1)/2, normalised
    _kernel_close(g, ref.gaussian_kernel(n, sigma))


def test_kernels_applied_as_filters():
    # seed 001 fig. 4 / seed 004: box blur keeps a constant image, the Laplacian of
    # i^2 + j^2 is 4 everywhere, Sobel x sees the horizontal ramp j
    i, j = np.mgrid[0:7, 0:8].astype(np.float64)
    lap = juanji.kernels.laplacian()
    dt = as_np(lap).dtype
    np.testing.assert_allclose(as_np(juanji.convolve2d((i * i + j * j).astype(dt), lap, mode="valid")),
                               np.full((5, 6), 4.0), rtol=1e-6)
    box = juanji.kernels.box(3)
    np.testing.assert_allclose(as_np(juanji.convolve2d(np.full((5, 5), 2.0, dtype=as_np(box).dtype), box,
                                                       mode="valid")), np.full((3, 3), 2.0), rtol=1e-6)
    sx = juanji.kernels.sobel_x()
    ramp = j.astype(as_np(sx).dtype)
    # correlation (no flip) gives +8 per unit slope, true convolution flips the sign
    np.testing.assert_allclose(as_np(juanji.correlate2d(ramp, sx, mode="valid")), np.full((5, 6), 8.0))
    np.testing.assert_allclose(as_np(juanji.convolve2d(ramp, sx, mode="valid")), np.full((5, 6), -8.0))
    sy = juanji.kernels.sobel_y()
    np.testing.assert_allclose(as_np(juanji.correlate2d(i.astype(as_np(sy).dtype), sy, mode="valid")),
                               np.full((5, 6), 8.0))

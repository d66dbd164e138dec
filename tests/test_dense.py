"""Dense part: linear ("BP network"), activations, softmax / log-softmax and the
losses (squared error, softmax cross-entropy) forward and backward."""

import numpy as np
import pytest

import juanji
import reference as ref
from helpers import (
    DTYPES,
    FD_RTOL,
    LAYOUTS,
    as_np,
    assert_bitwise,
    assert_close,
    away_from_zero,
    check_fd,
    fd_grad,
    layout,
    randint_data,
    randn,
    random_dims,
    rel_error,
)

# ============================================================== linear

LINEAR_GRID = {
    "basic": (4, 5, 3),
    "batch1": (1, 7, 2),
    "in1": (3, 1, 4),
    "out1": (3, 6, 1),
    "all_ones": (1, 1, 1),
    "wide": (2, 64, 33),
    "tall": (37, 5, 9),
}
_rng = np.random.default_rng(99)
LINEAR_RANDOM = [random_dims(_rng, 3, 1, 40) for _ in range(30)]


def linear_params():
    out = [pytest.param(*s, id=k) for k, s in LINEAR_GRID.items()]
    out += [pytest.param(*s, id=f"r{i:02d}-N{s[0]}in{s[1]}out{s[2]}") for i, s in enumerate(LINEAR_RANDOM)]
    return out


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,fin,fout", linear_params())
def test_linear_forward_backward(N, fin, fout, dtype, bias):
    rng = np.random.default_rng(1)
    x, w = randn(rng, (N, fin), dtype), randn(rng, (fout, fin), dtype)
    b = randn(rng, (fout,), dtype) if bias else None
    y = juanji.linear(x, w, b)
    assert_close(y, ref.linear(x, w, b), dtype, what="y")
    gy = randn(rng, (N, fout), dtype)
    grads = juanji.linear_backward(gy, x, w)
    assert isinstance(grads, tuple) and len(grads) == 3
    for name, g, g_ref in zip(("grad_x", "grad_w", "grad_b"), grads, ref.linear_backward(gy, x, w)):
        assert_close(g, g_ref, dtype, what=name)


def test_linear_is_x_times_w_transposed():
    x = np.array([[1.0, 2.0]])
    w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = as_np(juanji.linear(x, w, np.array([0.5, 0.0, -1.0])))
    np.testing.assert_array_equal(y, [[1.5, 2.0, 2.0]])


@pytest.mark.parametrize("kind", LAYOUTS)
def test_linear_noncontiguous_and_tensor_inputs(kind):
    rng = np.random.default_rng(2)
    x, w, b = randn(rng, (5, 6)), randn(rng, (4, 6)), randn(rng, (4,))
    assert_close(juanji.linear(layout(x, kind), layout(w, kind), layout(b, kind)), ref.linear(x, w, b),
                 np.float64, what=kind)
    gy = randn(rng, (5, 4))
    grads = juanji.linear_backward(layout(gy, kind), layout(x, kind), layout(w, kind))
    for g, g_ref in zip(grads, ref.linear_backward(gy, x, w)):
        assert_close(g, g_ref, np.float64, what=kind)


def test_linear_integer_valued_float32_is_exact():
    rng = np.random.default_rng(3)
    x, w, b = randint_data(rng, (9, 70)), randint_data(rng, (13, 70)), randint_data(rng, (13,))
    assert_bitwise(juanji.linear(x, w, b), ref.linear(x, w, b), what="y")
    gy = randint_data(rng, (9, 13))
    for name, g, g_ref in zip(("grad_x", "grad_w", "grad_b"), juanji.linear_backward(gy, x, w),
                              ref.linear_backward(gy, x, w)):
        assert_bitwise(g, g_ref, what=name)


@pytest.mark.parametrize("N", [1, 2, 5, 8, 9])
@pytest.mark.parametrize("fin", [1, 31, 32, 131, 3136])
def test_linear_on_a_few_rows(N, fin):
    # Up to 8 rows take dot products straight from w's rows (9 the GEMM): against NumPy, and
    # bit for bit on integer-valued data.
    rng = np.random.default_rng(N * 1000 + fin)
    x, w, b = randn(rng, (N, fin), np.float32), randn(rng, (130, fin), np.float32), randn(rng, (130,), np.float32)
    assert_close(juanji.linear(x, w, b), ref.linear(x, w, b), np.float32, what="y")
    x, w, b = randint_data(rng, (N, fin)), randint_data(rng, (130, fin)), randint_data(rng, (130,))
    assert_bitwise(juanji.linear(x, w, None), ref.linear(x, w, None), what="y without bias")
    assert_bitwise(juanji.linear(x, w, b), ref.linear(x, w, b), what="y")


@pytest.mark.parametrize("shape", [(3, 4, 2), (1, 3, 5), (4, 1, 1)], ids=lambda s: "N{}in{}out{}".format(*s))
def test_linear_backward_matches_finite_differences(shape):
    N, fin, fout = shape
    rng = np.random.default_rng(4)
    x, w, b = randn(rng, (N, fin)), randn(rng, (fout, fin)), randn(rng, (fout,))
    R = randn(rng, (N, fout))
    gx, gw, gb = juanji.linear_backward(R, x, w)
    check_fd(lambda x, w, b: juanji.linear(x, w, b), dict(x=x, w=w, b=b), dict(x=gx, w=gw, b=gb), R)


# ============================================================== activations

ACTIVATIONS = {
    "relu": (juanji.relu, juanji.relu_backward, ref.relu, ref.relu_backward, {}),
    "leaky_relu": (juanji.leaky_relu, juanji.leaky_relu_backward, ref.leaky_relu,
                   ref.leaky_relu_backward, {}),
    "leaky_relu_0.2": (juanji.leaky_relu, juanji.leaky_relu_backward, ref.leaky_relu,
                       ref.leaky_relu_backward, {"negative_slope": 0.2}),
    "sigmoid": (juanji.sigmoid, juanji.sigmoid_backward, ref.sigmoid, ref.sigmoid_backward, {}),
    "tanh": (juanji.tanh, juanji.tanh_backward, ref.tanh, ref.tanh_backward, {}),
}
ACT_SHAPES = [(7,), (3, 5), (2, 3, 4, 5), (1, 1), (4, 17)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ACT_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_forward_backward(name, shape, dtype):
    f, fb, rf, rfb, kw = ACTIVATIONS[name]
    rng = np.random.default_rng(5)
    x = (3.0 * randn(rng, shape)).astype(dtype)
    y = f(x, **kw)
    assert_close(y, rf(x, **kw), dtype, what="y")
    gy = randn(rng, shape, dtype)
    assert_close(fb(gy, x, **kw), rfb(gy, x, **kw), dtype, what="grad_x")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_extreme_inputs_stay_finite(name, dtype):
    f, fb, rf, rfb, kw = ACTIVATIONS[name]
    x = np.array([-1000.0, -100.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 100.0, 1000.0], dtype=dtype)
    y = as_np(f(x, **kw))
    assert np.isfinite(y).all()
    assert_close(y, rf(x, **kw), dtype)
    g = as_np(fb(np.ones_like(x), x, **kw))
    assert np.isfinite(g).all()
    assert_close(g, rfb(np.ones_like(x), x, **kw), dtype)


def test_relu_derivative_at_zero_is_zero():
    x = np.array([-1.0, 0.0, -0.0, 1.0])
    np.testing.assert_array_equal(as_np(juanji.relu_backward(np.ones(4), x)), [0.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(as_np(juanji.relu(x)), [0.0, 0.0, 0.0, 1.0])


def test_leaky_relu_slope():
    x = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(as_np(juanji.leaky_relu(x)), [-0.02, 0.0, 3.0], rtol=1e-15)
    np.testing.assert_allclose(as_np(juanji.leaky_relu(x, negative_slope=0.5)), [-1.0, 0.0, 3.0])
    np.testing.assert_allclose(as_np(juanji.leaky_relu_backward(np.ones(3), x, negative_slope=0.5)),
                               [0.5, 0.5, 1.0])


def test_sigmoid_tanh_known_values():
    x = np.array([0.0, np.log(3.0)])
    np.testing.assert_allclose(as_np(juanji.sigmoid(x)), [0.5, 0.75], rtol=1e-15)
    np.testing.assert_allclose(as_np(juanji.sigmoid_backward(np.ones(2), x)), [0.25, 0.1875], rtol=1e-15)
    np.testing.assert_allclose(as_np(juanji.tanh(x)), [0.0, 0.8], rtol=1e-15)


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_noncontiguous_and_tensor_inputs(name, kind):
    f, fb, rf, rfb, kw = ACTIVATIONS[name]
    rng = np.random.default_rng(6)
    x, gy = randn(rng, (2, 3, 5)), randn(rng, (2, 3, 5))
    assert_close(f(layout(x, kind), **kw), rf(x, **kw), np.float64, what=kind)
    assert_close(fb(layout(gy, kind), layout(x, kind), **kw), rfb(gy, x, **kw), np.float64, what=kind)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_backward_matches_finite_differences(name):
    f, fb, _, _, kw = ACTIVATIONS[name]
    rng = np.random.default_rng(7)
    x = away_from_zero(rng, (3, 4)) * 2.0
    R = randn(rng, (3, 4))
    check_fd(lambda x: f(x, **kw), dict(x=x), dict(x=fb(R, x, **kw)), R)


# ============================================================== softmax / log_softmax

SOFTMAX = {
    "softmax": (juanji.softmax, juanji.softmax_backward, ref.softmax, ref.softmax_backward),
    "log_softmax": (juanji.log_softmax, juanji.log_softmax_backward, ref.log_softmax,
                    ref.log_softmax_backward),
}
SOFTMAX_CASES = [
    ((5,), -1), ((5,), 0), ((4, 7), -1), ((4, 7), 1), ((4, 7), 0), ((1, 10), -1), ((6, 1), -1),
    ((2, 3, 4), 0), ((2, 3, 4), 1), ((2, 3, 4), 2), ((2, 3, 4), -2), ((2, 3, 4, 5), 1),
]


@pytest.mark.parametrize("scale", [1.0, 1000.0], ids=["unit", "x1000"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", SOFTMAX_CASES,
                         ids=["x".join(map(str, s)) + f"-dim{d}" for s, d in SOFTMAX_CASES])
@pytest.mark.parametrize("name", list(SOFTMAX))
def test_softmax_forward_backward(name, shape, dim, dtype, scale):
    f, fb, rf, rfb = SOFTMAX[name]
    rng = np.random.default_rng(8)
    x = (scale * randn(rng, shape)).astype(dtype)
    y = f(x, dim=dim)
    assert np.isfinite(as_np(y)).all()
    assert_close(y, rf(x, dim), dtype, what="y")
    gy = randn(rng, shape, dtype)
    g = fb(gy, x, dim=dim)
    assert np.isfinite(as_np(g)).all()
    assert_close(g, rfb(gy, x, dim), dtype, what="grad_x")


def test_softmax_default_dim_is_last_and_rows_sum_to_one():
    rng = np.random.default_rng(9)
    x = randn(rng, (3, 6))
    y = as_np(juanji.softmax(x))
    np.testing.assert_allclose(y.sum(axis=-1), np.ones(3), rtol=1e-14)
    assert_close(y, ref.softmax(x, -1), np.float64)
    assert_close(juanji.log_softmax(x), ref.log_softmax(x, -1), np.float64)


def test_softmax_stable_for_huge_logits():
    x = np.array([[1000.0, 1000.0, -1000.0], [-1000.0, -1000.0, -1000.0], [1000.0, 0.0, -1000.0]])
    for dtype in (np.float32, np.float64):
        xs = x.astype(dtype)
        y = as_np(juanji.softmax(xs))
        np.testing.assert_allclose(y, [[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]], atol=1e-7)
        ly = as_np(juanji.log_softmax(xs))
        assert np.isfinite(ly).all()
        assert_close(ly, ref.log_softmax(xs), dtype)


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("name", list(SOFTMAX))
def test_softmax_noncontiguous_and_tensor_inputs(name, kind):
    f, fb, rf, rfb = SOFTMAX[name]
    rng = np.random.default_rng(10)
    x, gy = randn(rng, (3, 4, 5)), randn(rng, (3, 4, 5))
    for dim in (1, -1):
        assert_close(f(layout(x, kind), dim=dim), rf(x, dim), np.float64, what=kind)
        assert_close(fb(layout(gy, kind), layout(x, kind), dim=dim), rfb(gy, x, dim), np.float64, what=kind)


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("name", list(SOFTMAX))
def test_softmax_backward_matches_finite_differences(name, dim):
    f, fb, _, _ = SOFTMAX[name]
    rng = np.random.default_rng(11)
    x = randn(rng, (3, 4))
    R = randn(rng, (3, 4))
    check_fd(lambda x: f(x, dim=dim), dict(x=x), dict(x=fb(R, x, dim=dim)), R)


# ============================================================== squared error

MSE_REDUCTIONS = ["mean", "sum", "half_sum", "none"]
MSE_SHAPES = [(5,), (3, 4), (2, 3, 4), (1, 1), (16, 10)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", MSE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("reduction", MSE_REDUCTIONS)
def test_mse_loss_forward_backward(reduction, shape, dtype):
    rng = np.random.default_rng(12)
    z, y = randn(rng, shape, dtype), randn(rng, shape, dtype)
    loss = juanji.mse_loss(z, y, reduction=reduction)
    expected = ref.mse_loss(z, y, reduction)
    assert as_np(loss).shape == (shape if reduction == "none" else ())
    assert_close(loss, expected, dtype, what="loss")
    assert_close(juanji.mse_loss_backward(z, y, reduction=reduction), ref.mse_loss_backward(z, y, reduction),
                 dtype, what="grad_z")


def test_mse_half_sum_is_seed_E():
    # seed 000: E = 1/2 sum (z - y)^2 and dE/dz = z - y
    z, y = np.array([1.0, 2.0, 4.0]), np.array([0.0, 2.0, 1.0])
    assert float(as_np(juanji.mse_loss(z, y, reduction="half_sum"))) == 5.0
    assert float(as_np(juanji.mse_loss(z, y, reduction="sum"))) == 10.0
    assert float(as_np(juanji.mse_loss(z, y))) == pytest.approx(10.0 / 3.0, rel=1e-15)
    np.testing.assert_array_equal(as_np(juanji.mse_loss(z, y, reduction="none")), [1.0, 0.0, 9.0])
    np.testing.assert_array_equal(as_np(juanji.mse_loss_backward(z, y, reduction="half_sum")), [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(as_np(juanji.mse_loss_backward(z, y, reduction="none")), [2.0, 0.0, 6.0])


@pytest.mark.parametrize("kind", LAYOUTS)
def test_mse_noncontiguous_and_tensor_inputs(kind):
    rng = np.random.default_rng(13)
    z, y = randn(rng, (4, 6)), randn(rng, (4, 6))
    for red in MSE_REDUCTIONS:
        assert_close(juanji.mse_loss(layout(z, kind), layout(y, kind), reduction=red), ref.mse_loss(z, y, red),
                     np.float64, what=kind)
        assert_close(juanji.mse_loss_backward(layout(z, kind), layout(y, kind), reduction=red),
                     ref.mse_loss_backward(z, y, red), np.float64, what=kind)


@pytest.mark.parametrize("reduction", MSE_REDUCTIONS)
def test_mse_backward_matches_finite_differences(reduction):
    rng = np.random.default_rng(14)
    z, y = randn(rng, (3, 4)), randn(rng, (3, 4))
    # 'none': the backward is the gradient of sum(loss) (grad_out = 1 everywhere)
    R = np.ones((3, 4)) if reduction == "none" else np.ones(())
    check_fd(lambda z: juanji.mse_loss(z, y, reduction=reduction), dict(z=z),
             dict(z=juanji.mse_loss_backward(z, y, reduction=reduction)), R)


# ============================================================== cross-entropy

CE_REDUCTIONS = ["mean", "sum", "none"]
CE_SHAPES = [(1, 2), (4, 3), (8, 10), (3, 1), (32, 7)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CE_SHAPES, ids=lambda s: "N{}C{}".format(*s))
@pytest.mark.parametrize("reduction", CE_REDUCTIONS)
def test_cross_entropy_forward_backward(reduction, shape, dtype):
    rng = np.random.default_rng(15)
    x = (2.0 * randn(rng, shape)).astype(dtype)
    labels = rng.integers(0, shape[1], size=shape[0])
    loss = juanji.cross_entropy(x, labels, reduction=reduction)
    assert as_np(loss).shape == ((shape[0],) if reduction == "none" else ())
    assert_close(loss, ref.cross_entropy(x, labels, reduction), dtype, what="loss")
    assert_close(juanji.cross_entropy_backward(x, labels, reduction=reduction),
                 ref.cross_entropy_backward(x, labels, reduction), dtype, what="grad_logits")


@pytest.mark.parametrize("labels_kind", ["int64", "int32", "list", "uint8"])
def test_cross_entropy_label_types(labels_kind):
    rng = np.random.default_rng(16)
    x = randn(rng, (5, 4))
    lab = np.array([0, 3, 1, 2, 3])
    labels = lab.tolist() if labels_kind == "list" else lab.astype(labels_kind)
    assert_close(juanji.cross_entropy(x, labels), ref.cross_entropy(x, lab), np.float64)
    assert_close(juanji.cross_entropy_backward(x, labels), ref.cross_entropy_backward(x, lab), np.float64)


def test_cross_entropy_default_reduction_is_mean():
    rng = np.random.default_rng(17)
    x, lab = randn(rng, (6, 3)), np.array([0, 1, 2, 2, 1, 0])
    l_none = as_np(juanji.cross_entropy(x, lab, reduction="none"))
    assert float(as_np(juanji.cross_entropy(x, lab))) == pytest.approx(l_none.mean(), rel=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", CE_REDUCTIONS)
def test_cross_entropy_stable_for_huge_logits(reduction, dtype):
    x = np.array([
        [1000.0, -1000.0, 999.0, 0.0],     # label 2 is 1 below the max: loss ~ 1.3133
        [-1000.0, -1000.0, -1000.0, -1000.0],
        [1000.0, 1000.0, -1000.0, 0.0],    # label 2: loss ~ 2000 + log 2
        [-1000.0, 1000.0, 0.0, 500.0],     # label 1 is the max: loss ~ 0
    ], dtype=dtype)
    labels = np.array([2, 3, 2, 1])
    loss = as_np(juanji.cross_entropy(x, labels, reduction=reduction))
    grad = as_np(juanji.cross_entropy_backward(x, labels, reduction=reduction))
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    assert_close(loss, ref.cross_entropy(x, labels, reduction), dtype, what="loss")
    assert_close(grad, ref.cross_entropy_backward(x, labels, reduction), dtype, what="grad")
    if reduction == "none":
        # float32 allows for computing logsumexp(x) ~ 1000.31 first and subtracting 999
        np.testing.assert_allclose(loss[:2], [1.0 + np.log1p(np.exp(-1.0)), np.log(4.0)],
                                   rtol=1e-4 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("kind", LAYOUTS)
def test_cross_entropy_noncontiguous_and_tensor_inputs(kind):
    rng = np.random.default_rng(18)
    x, lab = randn(rng, (6, 5)), np.array([4, 0, 2, 1, 3, 0])
    assert_close(juanji.cross_entropy(layout(x, kind), lab), ref.cross_entropy(x, lab), np.float64, what=kind)
    assert_close(juanji.cross_entropy_backward(layout(x, kind), lab), ref.cross_entropy_backward(x, lab),
                 np.float64, what=kind)
    if kind not in ("tensor",):
        lab_nc = layout(lab.astype(np.int64), kind)
        assert_close(juanji.cross_entropy(x, lab_nc), ref.cross_entropy(x, lab), np.float64, what="labels " + kind)


@pytest.mark.parametrize("reduction", CE_REDUCTIONS)
def test_cross_entropy_backward_matches_finite_differences(reduction):
    rng = np.random.default_rng(19)
    x, lab = randn(rng, (4, 5)), np.array([1, 0, 4, 4])
    R = np.ones(4) if reduction == "none" else np.ones(())
    check_fd(lambda x: juanji.cross_entropy(x, lab, reduction=reduction), dict(x=x),
             dict(x=juanji.cross_entropy_backward(x, lab, reduction=reduction)), R)


def test_cross_entropy_equals_nll_of_log_softmax():
    rng = np.random.default_rng(20)
    x, lab = randn(rng, (7, 4)), rng.integers(0, 4, size=7)
    ls = as_np(juanji.log_softmax(x, dim=1))
    l_none = as_np(juanji.cross_entropy(x, lab, reduction="none"))
    assert rel_error(l_none, -ls[np.arange(7), lab]) < 1e-14
    # and a 2-step finite-difference sanity check of the fused gradient, row 0 only
    g = as_np(juanji.cross_entropy_backward(x, lab, reduction="sum"))[0]
    num = fd_grad(lambda r: float(ref.cross_entropy(np.vstack([r, x[1:]]), lab, "sum")), x[0])
    assert rel_error(g, num) < FD_RTOL

"""Label smoothing of the cross-entropy (PyTorch's definition: target (1 - eps) * onehot + eps / C):
the functional forward and backward against the NumPy reference, torch and finite differences,
nn.CrossEntropyLoss in the fused training step, and bad values."""

import math

import numpy as np
import pytest

import juanji
import reference as ref
from helpers import DTYPES, as_np, assert_close, check_fd, randn
from juanji import nn, optim
from test_dense import CE_REDUCTIONS, CE_SHAPES

SMOOTHINGS = [0.1, 0.5, 1.0]


@pytest.mark.parametrize("eps", SMOOTHINGS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CE_SHAPES, ids=lambda s: "N{}C{}".format(*s))
@pytest.mark.parametrize("reduction", CE_REDUCTIONS)
def test_smoothed_cross_entropy_matches_the_reference(reduction, shape, dtype, eps):
    rng = np.random.default_rng(40)
    x = (2.0 * randn(rng, shape)).astype(dtype)
    labels = rng.integers(0, shape[1], size=shape[0])
    assert_close(juanji.cross_entropy(x, labels, reduction=reduction, label_smoothing=eps),
                 ref.cross_entropy(x, labels, reduction, eps), dtype, what="loss")
    assert_close(juanji.cross_entropy_backward(x, labels, reduction=reduction, label_smoothing=eps),
                 ref.cross_entropy_backward(x, labels, reduction, eps), dtype, what="grad_logits")


def test_smoothing_changes_the_loss_and_gradient():
    rng = np.random.default_rng(41)
    x, labels = randn(rng, (6, 5)), rng.integers(0, 5, size=6)
    plain = as_np(juanji.cross_entropy(x, labels, reduction="none"))
    smoothed = as_np(juanji.cross_entropy(x, labels, reduction="none", label_smoothing=0.3))
    assert np.all(np.abs(smoothed - plain) > 1e-6)
    grad = as_np(juanji.cross_entropy_backward(x, labels, reduction="sum", label_smoothing=0.3))
    # softmax - q: every row of the target sums to 1, so every row of the gradient sums to 0
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-15)
    np.testing.assert_allclose(grad, ref.softmax(x, dim=1) - 0.3 / 5 - 0.7 * np.eye(5)[labels], atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", CE_REDUCTIONS)
def test_smoothed_cross_entropy_stable_for_huge_logits(reduction, dtype):
    x = np.array([[1000.0, -1000.0, 999.0, 0.0], [-1000.0, 1000.0, 0.0, 500.0]], dtype=dtype)
    labels = np.array([2, 1])
    loss = juanji.cross_entropy(x, labels, reduction=reduction, label_smoothing=0.2)
    grad = juanji.cross_entropy_backward(x, labels, reduction=reduction, label_smoothing=0.2)
    assert np.isfinite(as_np(loss)).all() and np.isfinite(as_np(grad)).all()
    assert_close(loss, ref.cross_entropy(x, labels, reduction, 0.2), dtype, what="loss")
    assert_close(grad, ref.cross_entropy_backward(x, labels, reduction, 0.2), dtype, what="grad")


@pytest.mark.parametrize("eps", SMOOTHINGS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", CE_REDUCTIONS)
def test_smoothed_cross_entropy_matches_torch(reduction, dtype, eps):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(42)
    x, labels = (3.0 * randn(rng, (9, 7))).astype(dtype), rng.integers(0, 7, size=9)
    xt = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(xt, torch.tensor(labels), reduction=reduction, label_smoothing=eps)
    expected.backward(torch.ones_like(expected))
    assert_close(juanji.cross_entropy(x, labels, reduction=reduction, label_smoothing=eps),
                 expected.detach().numpy(), dtype, what="loss")
    assert_close(juanji.cross_entropy_backward(x, labels, reduction=reduction, label_smoothing=eps),
                 xt.grad.numpy(), dtype, what="grad_logits")


@pytest.mark.parametrize("eps", SMOOTHINGS)
@pytest.mark.parametrize("reduction", CE_REDUCTIONS)
def test_smoothed_backward_matches_finite_differences(reduction, eps):
    rng = np.random.default_rng(43)
    x, labels = randn(rng, (4, 5)), np.array([1, 0, 4, 4])
    R = np.ones(4) if reduction == "none" else np.ones(())
    check_fd(lambda x: juanji.cross_entropy(x, labels, reduction=reduction, label_smoothing=eps), dict(x=x),
             dict(x=juanji.cross_entropy_backward(x, labels, reduction=reduction, label_smoothing=eps)), R)


def linear_model(seed):
    juanji.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5)).to("float64")


@pytest.mark.parametrize("eps", [0.0, 0.25])
def test_train_step_takes_the_functional_gradient(eps):
    rng = np.random.default_rng(44)
    x, labels = randn(rng, (12, 6)), rng.integers(0, 5, size=12)
    model = linear_model(45)
    weight, bias = (p.data.copy() for p in model.parameters())
    logits = x @ weight.T + bias
    grad = as_np(juanji.cross_entropy_backward(logits, labels, label_smoothing=eps))
    lr = 0.5
    loss = model.train_step(x, labels, nn.CrossEntropyLoss(label_smoothing=eps), optim.SGD(model.parameters(), lr=lr))
    assert loss == pytest.approx(float(as_np(juanji.cross_entropy(logits, labels, label_smoothing=eps))), rel=1e-14)
    new_weight, new_bias = (p.data for p in model.parameters())
    np.testing.assert_allclose(new_weight, weight - lr * grad.T @ x, rtol=0, atol=1e-14)
    np.testing.assert_allclose(new_bias, bias - lr * grad.sum(axis=0), rtol=0, atol=1e-14)


def test_smoothing_changes_the_training_step_but_not_the_accuracy():
    rng = np.random.default_rng(46)
    x, labels = randn(rng, (40, 6)), rng.integers(0, 5, size=40)
    plain, smoothed = linear_model(47), linear_model(47)
    plain_loss, plain_accuracy = plain.evaluate(x, labels, nn.CrossEntropyLoss())
    smoothed_loss, smoothed_accuracy = smoothed.evaluate(x, labels, nn.CrossEntropyLoss(label_smoothing=0.4))
    assert smoothed_accuracy == plain_accuracy
    assert smoothed_loss == pytest.approx(float(as_np(juanji.cross_entropy(
        x @ smoothed.parameters()[0].data.T + smoothed.parameters()[1].data, labels, label_smoothing=0.4))), rel=1e-13)
    plain.train_step(x, labels, nn.CrossEntropyLoss(), optim.SGD(plain.parameters(), lr=0.1))
    smoothed.train_step(x, labels, nn.CrossEntropyLoss(label_smoothing=0.4), optim.SGD(smoothed.parameters(), lr=0.1))
    assert np.abs(plain.parameters()[0].data - smoothed.parameters()[0].data).max() > 1e-6


def test_loss_object_call_uses_the_smoothing():
    rng = np.random.default_rng(48)
    x, labels = randn(rng, (5, 3)), np.array([0, 2, 1, 1, 0])
    loss = nn.CrossEntropyLoss(label_smoothing=0.3)
    assert loss(x, labels) == pytest.approx(float(ref.cross_entropy(x, labels, "mean", 0.3)), rel=1e-14)


def test_label_smoothing_property_and_repr():
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)
    assert loss.label_smoothing == 0.1
    assert repr(loss) == "CrossEntropyLoss(label_smoothing=0.1)"
    assert nn.CrossEntropyLoss().label_smoothing == 0.0
    assert repr(nn.MSELoss()) == "MSELoss()"
    with pytest.raises(AttributeError):
        loss.label_smoothing = 0.2


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, math.inf, -math.inf])
def test_bad_label_smoothing_is_a_value_error(bad):
    x, labels = np.zeros((2, 3)), np.array([0, 1])
    for make in (lambda: nn.CrossEntropyLoss(label_smoothing=bad),
                 lambda: juanji.cross_entropy(x, labels, label_smoothing=bad),
                 lambda: juanji.cross_entropy_backward(x, labels, label_smoothing=bad)):
        with pytest.raises(ValueError, match="label_smoothing"):
            make()


def test_label_smoothing_bounds_are_accepted():
    x, labels = np.array([[2.0, 0.0, -1.0]]), np.array([0])
    assert float(as_np(juanji.cross_entropy(x, labels, label_smoothing=0.0))) == pytest.approx(
        float(ref.cross_entropy(x, labels)), rel=1e-15)
    # eps = 1: the target is uniform, the label no longer matters
    uniform = float(ref.cross_entropy(x, labels, "mean", 1.0))
    for label in range(3):
        assert float(as_np(juanji.cross_entropy(x, [label], label_smoothing=1.0))) == pytest.approx(uniform, rel=1e-15)

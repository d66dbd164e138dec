"""Mixed precision (Layer.set_precision("bf16")): convolutions and linear layers compute from their
input, weights and output gradient rounded to bfloat16 with float32 sums, and round their output
and input gradient to bfloat16; weights, weight gradients, the other layers, the loss and the
optimizer stay float32. Checked against float32 ops on the rounded operands (bit for bit),
against NumPy (integer-valued operands: exact, on every SIMD level and thread count) and against
a NumPy model of the same rounding trained for a few steps."""

import numpy as np
import pytest

import juanji
from helpers import cpu_simd_levels
from juanji import nn, optim

ml_dtypes = pytest.importorskip("ml_dtypes")

LEVELS = cpu_simd_levels()
pytestmark = pytest.mark.usefixtures("restore_runtime")


def bf16(a):
    """The bfloat16 nearest each element (ml_dtypes: round to nearest even), as float32."""
    return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def parameter(layer, name):
    return dict(layer.named_parameters())[name]


def conv_layer(rng):
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    parameter(conv, "weight").data = rng.standard_normal((5, 3, 3, 3))
    parameter(conv, "bias").data = rng.standard_normal(5)
    return conv


@pytest.mark.parametrize("make", ["conv", "linear"])
def test_a_layer_in_bf16_is_the_float32_op_on_rounded_operands(make):
    rng = np.random.default_rng(0)
    if make == "conv":
        layer, x = conv_layer(rng), rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
        forward = lambda a, w: juanji.conv2d(a, w, np.asarray(layer.bias), stride=2, padding=1)  # noqa: E731
        backward = lambda dy, a, w: juanji.conv2d_backward(dy, a, w, stride=2, padding=1)  # noqa: E731
    else:
        layer, x = nn.Linear(11, 6), rng.standard_normal((4, 11)).astype(np.float32)
        forward = lambda a, w: juanji.linear(a, w, np.asarray(layer.bias))  # noqa: E731
        backward = lambda dy, a, w: juanji.linear_backward(dy, a, w)  # noqa: E731
    w = np.array(layer.weight)
    full = np.asarray(layer.forward(x))
    assert layer.set_precision("bf16") is layer and layer.precision == "bf16"
    y = np.asarray(layer.forward(x))
    np.testing.assert_array_equal(y, bf16(forward(bf16(x), bf16(w))))
    assert not np.array_equal(y, full)  # the rounding happened
    dy = rng.standard_normal(y.shape).astype(np.float32)
    layer.zero_grad()
    grad_x = np.asarray(layer.backward(dy))
    expected = [np.asarray(t) for t in backward(bf16(dy), bf16(x), bf16(w))]
    np.testing.assert_array_equal(grad_x, bf16(expected[0]))
    np.testing.assert_array_equal(parameter(layer, "weight").grad, expected[1])  # float32 sums, not rounded
    np.testing.assert_array_equal(parameter(layer, "bias").grad, expected[2])
    assert parameter(layer, "weight").data.dtype == np.float32
    np.testing.assert_array_equal(layer.weight, w)  # the master weights are untouched


def small_ints(rng, shape, bound):
    return rng.integers(-bound, bound + 1, shape).astype(np.float32)


@pytest.mark.parametrize("threads", [1, 2])
def test_integer_operands_are_exact_on_every_simd_level_and_thread_count(threads):
    """Integers in [-16, 16] are bfloat16 values and their products and sums exact in float32, so
    every kernel must give NumPy's exact result, rounded to bfloat16 where bf16 rounds, bit for
    bit."""
    juanji.set_num_threads(threads)
    rng = np.random.default_rng(1)
    x, w = small_ints(rng, (3, 6, 13, 11), 16), small_ints(rng, (10, 6, 3, 3), 16)
    dy = small_ints(rng, (3, 10, 13, 11), 16)
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1))),
                                                       (3, 3), axis=(2, 3))
    expected_y = np.einsum("ncpqrs,kcrs->nkpq", windows, w.astype(np.float64))
    expected_grad_w = np.einsum("ncpqrs,nkpq->kcrs", windows, dy.astype(np.float64))
    dy_windows = np.lib.stride_tricks.sliding_window_view(
        np.pad(dy.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), axis=(2, 3))
    expected_grad_x = np.einsum("nkpqrs,kcrs->ncpq", dy_windows, w[:, :, ::-1, ::-1].astype(np.float64))
    for level in LEVELS:
        assert juanji.set_simd_level(level) == level
        conv = nn.Conv2d(6, 10, 3, padding=1, bias=False).set_precision("bf16")
        parameter(conv, "weight").data = w
        y = np.asarray(conv.forward(x))
        # the float32 sums are exact, so their rounding to bfloat16 is too
        np.testing.assert_array_equal(y, bf16(expected_y), err_msg=level)
        conv.zero_grad()
        grad_x = np.asarray(conv.backward(dy))
        np.testing.assert_array_equal(grad_x, bf16(expected_grad_x), err_msg=level)
        np.testing.assert_array_equal(parameter(conv, "weight").grad, expected_grad_w, err_msg=level)


class NumpyModel:
    """conv(1->4, 3x3, padding 1) -> ReLU -> 2x2 max pool -> flatten -> linear(4*4*4 -> 3) with
    the rounding of bf16 precision, and SGD, in float64 with float32 rounding where juanji stores."""

    def __init__(self, model):
        self.cw, self.cb = np.array(model[0].weight, np.float64), np.array(model[0].bias, np.float64)
        self.lw, self.lb = np.array(model[4].weight, np.float64), np.array(model[4].bias, np.float64)

    def step(self, x, labels, lr):
        r = lambda a: bf16(np.asarray(a, np.float32)).astype(np.float64)  # noqa: E731
        xr, cwr = r(x), r(self.cw)
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(xr, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3),
                                                           axis=(2, 3))
        conv = r(np.einsum("ncpqrs,kcrs->nkpq", windows, cwr) + self.cb[None, :, None, None])
        act = np.maximum(conv, 0)
        n = len(x)
        blocks = act.reshape(n, 4, 4, 2, 4, 2)
        pooled = blocks.max(axis=(3, 5))
        flat = pooled.reshape(n, -1)
        flat_r, lwr = r(flat), r(self.lw)
        logits = r(flat_r @ lwr.T + self.lb)
        shifted = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        loss = -np.log(p[np.arange(n), labels]).mean()
        dlogits = p.copy()
        dlogits[np.arange(n), labels] -= 1
        dlogits /= n
        dlr = r(dlogits)
        grad_lw, grad_lb = dlr.T @ flat_r, dlr.sum(axis=0)
        dflat = r(dlr @ lwr)
        dpooled = dflat.reshape(n, 4, 4, 4)
        is_max = blocks == pooled[:, :, :, None, :, None]
        first = np.cumsum(np.cumsum(is_max, axis=3), axis=5) == 1  # the first maximum in each window
        dact = (is_max & first) * dpooled[:, :, :, None, :, None]
        dconv = r(dact.reshape(n, 4, 8, 8) * (conv > 0))
        grad_cw = np.einsum("ncpqrs,nkpq->kcrs", windows, dconv)
        grad_cb = dconv.sum(axis=(0, 2, 3))
        for value, grad in ((self.cw, grad_cw), (self.cb, grad_cb), (self.lw, grad_lw), (self.lb, grad_lb)):
            value -= lr * grad
        return loss


def test_training_in_bf16_follows_a_numpy_model_of_the_same_rounding():
    juanji.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3)).set_precision("bf16")
    reference = NumpyModel(model)
    rng = np.random.default_rng(5)
    opt = optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        x = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
        labels = rng.integers(0, 3, 6)
        loss = model.train_step(x, labels, nn.CrossEntropyLoss(), opt)
        expected_loss = reference.step(x, labels, 0.1)
        assert loss == pytest.approx(expected_loss, rel=1e-4)
    pairs = {"0.weight": reference.cw, "0.bias": reference.cb, "4.weight": reference.lw, "4.bias": reference.lb}
    for name, theirs in pairs.items():
        np.testing.assert_allclose(model.state_dict()[name], theirs, rtol=1e-4, atol=1e-5, err_msg=name)


def test_bf16_trains_residual_models_with_every_optimizer_and_batch_norm():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 16)
    for make_optimizer in (lambda p: optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4),
                           lambda p: optim.AdamW(p, lr=1e-3, max_grad_norm=1.0)):
        juanji.manual_seed(0)
        model = juanji.models.resnet().set_precision("bf16")
        assert all(m.precision == "bf16" for m in model.modules())
        opt = make_optimizer(model.parameters())
        losses = [model.train_step(x, labels, nn.CrossEntropyLoss(), opt) for _ in range(6)]
        assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
        assert all(p.data.dtype == np.float32 and p.grad.dtype == np.float32 for p in model.parameters())
        # eval-mode inference runs in bf16 too, and differs from fp32's in the last bits only
        logits = np.asarray(model.eval()(x))
        full = np.asarray(model.set_precision("fp32")(x))
        assert not np.array_equal(logits, full)
        np.testing.assert_allclose(logits, full, rtol=0.1, atol=0.1)


def test_bf16_precision_mistakes_are_clear_errors():
    conv = nn.Conv2d(1, 2, 3)
    with pytest.raises(ValueError, match="precision: expected 'fp32' or 'bf16', got 'half'"):
        conv.set_precision("half")
    assert conv.precision == "fp32"
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    model.to("float64")
    model.set_precision("bf16")
    with pytest.raises(TypeError, match=r"Conv2d: bf16 precision computes from float32 parameters, this layer's "
                                        r"are float64"):
        model(np.zeros((1, 1, 6, 6)))


def test_show_config_says_how_bf16_computes():
    line = next(line for line in juanji.config_string().splitlines() if line.strip().startswith("bfloat16:"))
    assert "AVX512-BF16: yes" in line or "AVX512-BF16: no" in line


def test_functional_ops_take_bfloat16_and_compute_with_float32_sums():
    """conv, linear, activations and pooling on bfloat16 operands (ml_dtypes arrays or juanji
    tensors): the float32 op on the widened operands, rounded back to bfloat16."""
    rng = np.random.default_rng(3)
    b16 = ml_dtypes.bfloat16

    def as_b16(*shape):
        return rng.standard_normal(shape).astype(np.float32).astype(b16)

    def f32(a):
        return np.asarray(a, np.float32) if a.dtype != b16 else a.astype(np.float32)

    def same(got, want_f32):
        got = np.asarray(got)
        assert got.dtype == b16
        np.testing.assert_array_equal(got.astype(np.float32), bf16(want_f32))

    x, w, bias = as_b16(2, 3, 9, 8), as_b16(4, 3, 3, 3), as_b16(4)
    same(juanji.conv2d(x, w, bias, padding=1, stride=2),
         juanji.conv2d(f32(x), f32(w), f32(bias), padding=1, stride=2))
    dy = as_b16(2, 4, 5, 4)
    for got, want in zip(juanji.conv2d_backward(dy, x, w, padding=1, stride=2),
                         juanji.conv2d_backward(f32(dy), f32(x), f32(w), padding=1, stride=2)):
        same(got, want)
    xl, wl = as_b16(5, 7), as_b16(3, 7)
    same(juanji.linear(xl, wl), juanji.linear(f32(xl), f32(wl)))
    same(juanji.relu(juanji.from_numpy(x)), juanji.relu(f32(x)))
    same(juanji.max_pool2d(x, 2), juanji.max_pool2d(f32(x), 2))
    same(juanji.avg_pool2d(x, 2), juanji.avg_pool2d(f32(x), 2))
    same(juanji.max_pool2d_backward(as_b16(2, 3, 4, 4) * 0 + b16(1), x, 2),
         juanji.max_pool2d_backward(np.ones((2, 3, 4, 4), np.float32), f32(x), 2))
    with pytest.raises(TypeError, match="conv2d: x is bfloat16 but weight is float32"):
        juanji.conv2d(x, f32(w))

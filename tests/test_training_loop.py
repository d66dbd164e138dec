"""The explicit training loop (forward, loss.forward_backward, backward, step, zero_grad), layers
written in Python, and the readable side of models (repr, summary, modes, named parameters)."""

import gc
import threading

import numpy as np
import pytest

import juanji
from juanji import nn, optim


def small_resnet():
    juanji.manual_seed(7)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))),
        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 5 * 5, 3),
    )


def batches(count, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, 1, 10, 10)).astype(np.float32), rng.integers(0, 3, n)) for _ in range(count)]


def snapshot(model):
    return {p.name: p.data.copy() for p in model.parameters() + model.buffers()}


@pytest.mark.parametrize("make_optimizer", [
    lambda params: optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3),
    lambda params: optim.AdamW(params, lr=1e-2, max_grad_norm=1.0),
])
def test_the_explicit_loop_trains_bit_for_bit_as_train_step(make_optimizer):
    fast, explicit = small_resnet(), small_resnet()
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)
    fast_opt, explicit_opt = make_optimizer(fast.parameters()), make_optimizer(explicit.parameters())
    for x, y in batches(4):
        fast_loss = fast.train_step(x, y, loss, fast_opt)
        out = explicit.forward(x)
        value, grad = loss.forward_backward(out, y)
        explicit.backward(grad)
        explicit_opt.step()
        explicit_opt.zero_grad()
        assert value == fast_loss
    fast_state, explicit_state = snapshot(fast), snapshot(explicit)
    for name, value in fast_state.items():
        np.testing.assert_array_equal(explicit_state[name], value, err_msg=name)


def test_backward_adds_to_the_gradients_until_zero_grad():
    model = small_resnet()
    loss = nn.CrossEntropyLoss()
    (xa, ya), (xb, yb) = batches(2)

    def gradients_of(x, y):
        model.zero_grad()
        model.backward(loss.forward_backward(model.forward(x), y)[1])
        return [p.grad.copy() for p in model.parameters()]

    ga, gb = gradients_of(xa, ya), gradients_of(xb, yb)
    model.zero_grad()
    for x, y in ((xa, ya), (xb, yb)):
        model.backward(loss.forward_backward(model.forward(x), y)[1])
    for p, a, b in zip(model.parameters(), ga, gb):
        np.testing.assert_allclose(p.grad, a + b, rtol=1e-6, atol=1e-7, err_msg=p.name)
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    assert all(not p.grad.any() for p in model.parameters())


def projection_resnet():
    juanji.manual_seed(8)
    body = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6))
    shortcut = nn.Sequential(nn.Conv2d(4, 6, 1, stride=2, bias=False), nn.BatchNorm2d(6))
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Residual(body, shortcut), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 3 * 3, 3))


@pytest.mark.parametrize("make", [small_resnet, projection_resnet], ids=["identity", "projection"])
def test_one_forward_can_be_gone_back_through_twice(make):
    # A training step's backward writes gradients over tensors its forward kept; a backward of
    # one's own loop must not.
    model = make()
    x, y = batches(1, n=6)[0]
    _, grad = nn.CrossEntropyLoss().forward_backward(model.forward(x), y)
    model.zero_grad()
    first = np.asarray(model.backward(grad)).copy()
    once = [p.grad.copy() for p in model.parameters()]
    np.testing.assert_array_equal(np.asarray(model.backward(grad)), first)
    for p, g in zip(model.parameters(), once):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-6, atol=1e-7, err_msg=p.name)


def every_layer_kind():
    juanji.manual_seed(9)
    branches = nn.Concat(nn.Sequential(nn.Conv2d(4, 2, 1), nn.Sigmoid()),
                         nn.Sequential(nn.AvgPool2d(3, 1, 1), nn.Tanh()), nn.Identity())
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), branches, nn.LeakyReLU(0.1),
        nn.Residual(nn.Sequential(nn.Conv2d(10, 10, 3, padding=1), nn.Dropout(0.2)), nn.Conv2d(10, 10, 1)),
        nn.MaxPool2d(2, ceil_mode=True), nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(10, 3), nn.Softmax(),
    )


@pytest.mark.parametrize("make", [small_resnet, projection_resnet, every_layer_kind],
                         ids=["identity", "projection", "every_kind"])
def test_every_layer_refuses_a_backward_after_a_training_step(make):
    # A training step drops what each layer's forward kept once it is done with it: no layer may
    # then read the dropped tensors, whichever one is asked to go back.
    model = make()
    x, y = batches(1, n=6)[0]
    model.train_step(x, y, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1))
    for layer in model.modules():
        with pytest.raises(ValueError, match="used up what"):
            layer.backward(np.ones((6, 3), np.float32))
    model.forward(x)
    assert np.isfinite(np.asarray(model.backward(np.ones((6, 3), np.float32)))).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_evaluate_with_mirror_averages_each_image_with_its_mirror_image(dtype, smoothing):
    model = every_layer_kind().to("float64" if dtype == np.float64 else "float32").eval()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((11, 1, 10, 13)).astype(dtype)[:, :, :, ::-1]  # not contiguous
    labels = rng.integers(0, 3, 11)
    logits = (np.asarray(model.forward(x, training=False)).astype(np.float64) +
              np.asarray(model.forward(np.ascontiguousarray(x[..., ::-1]), training=False))) / 2
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    want_loss = -((1 - smoothing) * log_p[np.arange(11), labels] + smoothing * log_p.mean(axis=1)).mean()
    want_accuracy = np.mean(logits.argmax(axis=1) == labels)
    loss, accuracy = model.evaluate(x, labels, nn.CrossEntropyLoss(label_smoothing=smoothing), batch_size=4,
                                    mirror=True)
    assert accuracy == want_accuracy
    assert loss == pytest.approx(want_loss, rel=1e-5 if dtype == np.float32 else 1e-12)
    assert model.evaluate(x, labels, batch_size=4) == model.evaluate(x, labels, batch_size=4, mirror=False)


def test_gradient_accumulation_over_two_half_batches_matches_one_batch():
    # Without batch norm, the mean loss over 2n is the mean of the two halves' means.
    juanji.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).to("float64")
    loss = nn.CrossEntropyLoss()
    x, y = batches(1, n=8)[0]
    x = x.astype(np.float64)
    model.backward(loss.forward_backward(model.forward(x), y)[1])
    whole = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    for half in (slice(0, 4), slice(4, 8)):
        _, grad = loss.forward_backward(model.forward(x[half]), y[half])
        model.backward(np.asarray(grad) / 2)
    for p, g in zip(model.parameters(), whole):
        np.testing.assert_allclose(p.grad, g, rtol=1e-12, atol=1e-14, err_msg=p.name)


def test_loss_forward_backward_returns_the_loss_and_its_gradient():
    out = np.array([[1.0, 2.0, 0.5], [0.1, -1.0, 3.0]], np.float32)
    y = np.array([1, 2])
    value, grad = nn.CrossEntropyLoss().forward_backward(out, y)
    assert isinstance(value, float) and value == nn.CrossEntropyLoss()(out, y)
    p = np.exp(out - out.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(grad), (p - np.eye(3)[y]) / 2, rtol=1e-6)
    value, grad = nn.MSELoss().forward_backward(out, np.zeros_like(out))
    np.testing.assert_allclose(np.asarray(grad), 2 * out / out.size, rtol=1e-6)
    with pytest.raises(ValueError, match=r"labels: expected shape \(2,\)"):
        nn.CrossEntropyLoss().forward_backward(out, np.array([0, 1, 2]))


def test_backward_before_forward_is_a_clear_error():
    with pytest.raises(ValueError, match="forward"):
        nn.Linear(2, 2).backward(np.ones((1, 2), np.float32))


# ---- layers written in Python ----

class PyLinear(nn.Layer):
    """y = x W^T + b in NumPy: the built-in Linear's formulas."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.w = self.add_parameter("weight", np.zeros((out_features, in_features), np.float32))
        self.b = self.add_parameter("bias", np.zeros(out_features, np.float32))

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features}

    def forward(self, x):
        self.x = x
        return x @ self.w.data.T + self.b.data

    def backward(self, grad_out):
        self.w.grad[...] = grad_out.T @ self.x
        self.b.grad[...] = grad_out.sum(axis=0)
        return grad_out @ self.w.data


class PyScale(nn.Layer):
    """A per-channel scale that also counts its training-mode calls (a buffer)."""

    def __init__(self, channels=2):
        super().__init__()
        self.channels = channels
        self.scale = self.add_parameter("scale", np.full(channels, 1.5, np.float32))
        self.calls = self.add_parameter("training_calls", np.zeros(1, np.float32), trainable=False)

    def get_config(self):
        return {"channels": self.channels}

    def output_shape(self, shape):
        return shape

    def forward(self, x):
        if self.training:
            self.calls.data[0] += 1
        self.x = x
        return x * self.scale.data[None, :, None, None]

    def backward(self, grad_out):
        self.scale.grad[...] = (grad_out * self.x).sum(axis=(0, 2, 3))
        return grad_out * self.scale.data[None, :, None, None]


def linear_model(last):
    juanji.manual_seed(5)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), last)


def test_a_python_layer_trains_as_the_built_in_layer_it_imitates():
    builtin = linear_model(nn.Linear(2 * 8 * 8, 3)).to("float64")
    python = linear_model(PyLinear(2 * 8 * 8, 3)).to("float64")
    python[3].w.data = builtin[3].weight
    python[3].b.data = builtin[3].bias
    loss = nn.CrossEntropyLoss()
    opts = [optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (builtin, python)]
    for x, y in batches(5):
        losses = [m.train_step(x.astype(np.float64), y, loss, o) for m, o in zip((builtin, python), opts)]
        assert losses[1] == pytest.approx(losses[0], rel=1e-12)
    for a, b in zip(builtin.parameters(), python.parameters()):
        assert a.name == b.name
        np.testing.assert_allclose(b.data, a.data, rtol=1e-10, atol=1e-12, err_msg=a.name)


def test_python_layers_inside_residual_blocks_against_finite_differences():
    juanji.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Residual(nn.Sequential(PyScale(2), nn.Tanh())),
                          nn.Flatten()).to("float64")
    model.eval()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 1, 4, 4))
    g = rng.standard_normal((2, 32))
    model.forward(x, training=True)
    model.zero_grad()
    grad_x = np.asarray(model.backward(g))
    scale = model[1].body[0].scale
    analytic = scale.grad.copy()

    def objective():
        return float((np.asarray(model.forward(x, training=False)) * g).sum())

    eps = 1e-6
    for i in range(2):
        keep = scale.data[i]
        scale.data[i] = keep + eps
        up = objective()
        scale.data[i] = keep - eps
        down = objective()
        scale.data[i] = keep
        assert analytic[i] == pytest.approx((up - down) / (2 * eps), rel=1e-6)
    x_up, x_down = x.copy(), x.copy()
    x_up[0, 0, 1, 2] += eps
    x_down[0, 0, 1, 2] -= eps
    numeric = (float((np.asarray(model.forward(x_up, training=False)) * g).sum())
               - float((np.asarray(model.forward(x_down, training=False)) * g).sum())) / (2 * eps)
    assert grad_x[0, 0, 1, 2] == pytest.approx(numeric, rel=1e-6)


def test_python_layers_see_the_mode_of_each_call():
    layer = PyScale(2)
    x = np.ones((1, 2, 2, 2), np.float32)
    model = nn.Sequential(layer)
    model.forward(x)  # a fresh model trains
    model(x)  # calling a model is inference
    model.eval()
    model.forward(x)
    assert layer.calls.data[0] == 1
    assert layer.training is False and model.training is False
    model.train()
    model.train_step(x, np.ones_like(x), nn.MSELoss(), optim.SGD(model.parameters(), lr=0.1))
    assert layer.calls.data[0] == 2


def test_python_layers_round_trip_through_checkpoints(tmp_path):
    juanji.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), PyScale(2), nn.Residual(PyScale(2)), nn.Flatten(),
                          PyLinear(2 * 4 * 4, 3))
    model[1].scale.data = [0.5, 2.0]
    path = tmp_path / "py.safetensors"
    model.save(path)
    loaded = juanji.load(path)
    assert repr(loaded) == repr(model)
    assert [p.name for p in loaded.parameters()] == [p.name for p in model.parameters()]
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert isinstance(loaded[4], PyLinear) and loaded[4].get_config() == {"in_features": 32, "out_features": 3}


class Vanishing(nn.Layer):
    def forward(self, x):
        return x


def test_a_python_layer_whose_class_cannot_be_imported_fails_clearly_on_load(tmp_path):
    path = tmp_path / "gone.safetensors"
    nn.Sequential(globals()["Vanishing"]()).save(path)
    kept = globals().pop("Vanishing")
    try:
        with pytest.raises(ValueError, match=r"test_training_loop:Vanishing' cannot be imported"):
            juanji.load(path)
    finally:
        globals()["Vanishing"] = kept


def test_a_python_layer_that_does_not_rebuild_its_parameters_fails_clearly_on_load(tmp_path):
    class Forgetful(PyScale):
        def get_config(self):
            return {"channels": 1}
    Forgetful.__qualname__ = "Forgetful"
    globals()["Forgetful"] = Forgetful
    try:
        path = tmp_path / "f.safetensors"
        nn.Sequential(Forgetful(2)).save(path)
        with pytest.raises(ValueError, match="layer 0 .Forgetful. was built with other parameters than the checkpoint"):
            juanji.load(path)
    finally:
        del globals()["Forgetful"]


def test_a_python_layer_lives_as_long_as_its_container():
    model = nn.Sequential(nn.Flatten(), PyLinear(4, 2))
    gc.collect()
    x = np.ones((3, 4), np.float32)
    assert np.asarray(model(x)).shape == (3, 2)
    assert isinstance(model[1], PyLinear) and model[1].out_features == 2


def test_python_layers_train_from_several_threads():
    models = [linear_model(PyLinear(2 * 8 * 8, 3)) for _ in range(2)]
    errors = []

    def train(model):
        try:
            opt = optim.SGD(model.parameters(), lr=0.01)
            for x, y in batches(10):
                model.train_step(x, y, nn.CrossEntropyLoss(), opt)
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=train, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    np.testing.assert_array_equal(models[0].parameters()[-1].data, models[1].parameters()[-1].data)


def test_python_layer_mistakes_are_clear_errors():
    class NoForward(nn.Layer):
        pass

    with pytest.raises(TypeError, match="forward"):
        nn.Sequential(NoForward())(np.ones((1, 2), np.float32))

    class WrongShape(nn.Layer):
        def forward(self, x):
            return x

        def backward(self, grad_out):
            return grad_out[:, :1]

    model = nn.Sequential(nn.Linear(2, 2), WrongShape())
    model.forward(np.ones((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"WrongShape.backward: returned shape \(1, 1\) but the input had shape"):
        model.backward(np.ones((1, 2), np.float32))

    class IntegerOutput(nn.Layer):
        def forward(self, x):
            return x.astype(np.int64)

    with pytest.raises(TypeError, match="IntegerOutput.forward's result"):
        IntegerOutput()(np.ones((1, 2), np.float32))

    layer = PyScale(2)
    with pytest.raises(ValueError, match="has a parameter of that name"):
        layer.add_parameter("scale", np.ones(2))
    model = nn.Sequential(layer)
    with pytest.raises(ValueError, match="in a container already"):
        layer.add_parameter("late", np.ones(2))
    with pytest.raises(ValueError, match="runs on the CPU"):
        layer.to("cuda")
    with pytest.raises(TypeError, match="only layers written in Python"):
        nn.Linear(2, 2).add_parameter("w", np.ones(2))
    assert len(model.parameters()) == 1


# ---- readable models ----

def test_repr_is_pytorchs_nested_style():
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Residual(nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)),
                                      nn.Identity()),
                          nn.Flatten(), nn.Linear(6 * 14 * 14, 10), nn.Dropout(0.25), PyScale(3))
    assert repr(model) == """Sequential(
  (0): Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))
  (1): ReLU()
  (2): MaxPool2d(kernel_size=2, stride=None, padding=0, ceil_mode=False)
  (3): Residual(
    (body): Sequential(
      (0): Conv2d(6, 6, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
      (1): BatchNorm2d(6, eps=1e-05, momentum=0.1)
    )
    (shortcut): Identity()
  )
  (4): Flatten()
  (5): Linear(in_features=1176, out_features=10, bias=True)
  (6): Dropout(p=0.25)
  (7): PyScale(channels=3)
)"""
    assert repr(nn.Conv1d(2, 3, 4, stride=2, dilation=2, groups=1)) == \
        "Conv1d(2, 3, kernel_size=(4,), stride=(2,), dilation=(2,))"
    assert repr(nn.Sequential()) == "Sequential()"
    assert str(nn.LeakyReLU(0.2)) == "LeakyReLU(negative_slope=0.2)"


def test_summary_takes_the_shape_with_or_without_the_batch_and_prints_it(capsys):
    model = juanji.models.lenet5()
    text = model.summary((1, 28, 28))
    assert capsys.readouterr().out == text
    assert model.summary((64, 1, 28, 28)) == text
    assert "total: 61706 parameters" in text
    with pytest.raises(ValueError, match="expected"):
        model.summary((3, 5))


def test_modes_names_and_parameter_access():
    model = small_resnet()
    assert model.train(False) is model and not model.training
    assert not model[3].body[1].training  # the mode reaches the layers inside blocks
    assert model.train() is model and model[3].body[1].training
    assert model.eval() is model and not model.training
    named = model.named_parameters()
    assert [name for name, _ in named] == [p.name for p in model.parameters()]
    assert named[3][0] == "3.body.0.weight"
    assert all(not p.trainable for p in model.buffers()) and all(p.trainable for p in model.parameters())
    assert [p.name for p in model[1].parameters()] == ["1.weight", "1.bias"]
    weight = model.parameters()[0]
    assert weight.numel() == 4 * 1 * 3 * 3
    weight.data = np.arange(36, dtype=np.float64).reshape(4, 1, 3, 3)
    assert weight.data.dtype == np.float32 and weight.data[3, 0, 2, 2] == 35
    weight.grad = np.ones((4, 1, 3, 3))
    assert weight.grad.sum() == 36
    with pytest.raises(ValueError, match=r"must keep the shape \(4, 1, 3, 3\), got \(36,\)"):
        weight.data = np.zeros(36)
    with pytest.raises(TypeError, match="buffer"):
        model.buffers()[0].grad = np.zeros(4)
    assert len(model) == 8 and isinstance(model[-1], nn.Linear)
    modules = model.modules()  # depth first, the model itself first, as PyTorch's
    assert modules[0] is model and modules[4] is model[3] and modules[5] is model[3].body
    assert [type(m).__name__ for m in modules[6:10]] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]
    assert len(modules) == 1 + 8 + 1 + 5 and model[1].modules() == [model[1]]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in modules) == 3


@pytest.mark.parametrize("make_model", [juanji.models.convnet, juanji.models.lenet5, small_resnet])
def test_backward_after_an_eval_mode_forward_is_a_clear_error(make_model):
    model = make_model()
    x = np.zeros((2, 1, 28, 28) if make_model is not small_resnet else (2, 1, 10, 10), np.float32)
    out = model.forward(x, training=False)
    with pytest.raises(ValueError, match="backward needs a training-mode forward"):
        model.backward(np.ones(np.asarray(out).shape, np.float32))


# ---- PyTorch weights ----

def torch_resnet(torch):
    class Residual(torch.nn.Module):
        def __init__(self, body, shortcut=None):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    T = torch.nn
    return T.Sequential(
        T.Conv2d(1, 4, 3, padding=1, bias=False), T.BatchNorm2d(4), T.ReLU(), T.MaxPool2d(2),
        Residual(T.Sequential(T.Conv2d(4, 8, 3, stride=2, padding=1, bias=False), T.BatchNorm2d(8), T.ReLU(),
                              T.Conv2d(8, 8, 3, padding=1, bias=False), T.BatchNorm2d(8)),
                 T.Sequential(T.Conv2d(4, 8, 1, stride=2, bias=False), T.BatchNorm2d(8))),
        T.ReLU(), T.AdaptiveAvgPool2d(1), T.Flatten(), T.Linear(8, 5))


def juanji_resnet():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Residual(nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)),
                    nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))),
        nn.ReLU(), nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(8, 5))


def test_a_torch_state_dict_loads_and_gives_torchs_outputs_and_gradients():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tmodel = torch_resnet(torch).double()
    for m in tmodel.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    model = juanji_resnet().to("float64")
    assert model.load_state_dict({k: v.numpy() for k, v in tmodel.state_dict().items()}) == ([], [])
    assert model.load_state_dict(tmodel.state_dict()) == ([], [])  # torch tensors as they are
    x = np.random.default_rng(0).standard_normal((3, 1, 12, 12))
    tmodel.eval()
    np.testing.assert_allclose(np.asarray(model(x)), tmodel(torch.from_numpy(x)).detach().numpy(), rtol=1e-10)
    tmodel.train()
    tx = torch.from_numpy(x).requires_grad_()
    tout = tmodel(tx)
    g = np.random.default_rng(1).standard_normal(tout.shape)
    tout.backward(torch.from_numpy(g))
    out = model.forward(x, training=True)
    np.testing.assert_allclose(np.asarray(out), tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    grad_x = model.backward(g)
    np.testing.assert_allclose(np.asarray(grad_x), tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    tgrads = {name: p.grad.numpy() for name, p in tmodel.named_parameters()}
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, tgrads[name], rtol=1e-9, atol=1e-12, err_msg=name)
    state = model.state_dict()
    assert list(state) == [k for k in tmodel.state_dict() if not k.endswith("num_batches_tracked")]
    np.testing.assert_allclose(state["4.body.1.running_var"], tmodel.state_dict()["4.body.1.running_var"].numpy())


def test_load_state_dict_checks_names_and_shapes_before_copying_anything():
    model = juanji_resnet()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    state = {k: np.ones_like(v) for k, v in before.items()}
    state["8.weight"] = np.zeros((5, 7), np.float32)
    del state["0.weight"]
    state["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"mismatched: '8.weight: \(5, 7\) where the model has \(5, 8\)'; "
                                         r"missing: '0.weight'; unexpected: 'extra.weight'"):
        model.load_state_dict(state)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    del state["8.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["0.weight", "8.weight"] and unexpected == ["extra.weight"]
    assert (model.state_dict()["8.bias"] == 1).all() and (model.state_dict()["0.weight"] == before["0.weight"]).all()
    with pytest.raises(TypeError, match="dict"):
        model.load_state_dict([1, 2])

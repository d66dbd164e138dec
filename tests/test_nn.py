"""Layers against the functional ops, the C++ training step, SGD semantics, schedules,
reproducibility, and model checkpoints (round trip and every mismatch)."""

import json
import struct

import numpy as np
import pytest

import juanji
from juanji import nn, optim

RNG = np.random.default_rng(0)


def f64(*shape):
    return RNG.standard_normal(shape)


def as64(layer):
    layer.to("float64")
    return layer


LAYER_CASES = [
    ("conv2d", lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 7, 6),
     lambda l, x: juanji.conv2d(x, l.weight, l.bias, stride=2, padding=1),
     lambda l, g, x: juanji.conv2d_backward(g, x, l.weight, stride=2, padding=1)[0]),
    ("conv2d_groups_same", lambda: nn.Conv2d(4, 6, (3, 2), padding="same", dilation=2, groups=2), (1, 4, 6, 7),
     lambda l, x: juanji.conv2d(x, l.weight, l.bias, padding="same", dilation=2, groups=2),
     lambda l, g, x: juanji.conv2d_backward(g, x, l.weight, padding="same", dilation=2, groups=2)[0]),
    ("conv1d", lambda: nn.Conv1d(2, 3, 4, stride=3), (2, 2, 11),
     lambda l, x: juanji.conv1d(x, l.weight, l.bias, stride=3),
     lambda l, g, x: juanji.conv1d_backward(g, x, l.weight, stride=3)[0]),
    ("linear", lambda: nn.Linear(5, 3), (4, 5),
     lambda l, x: juanji.linear(x, l.weight, l.bias),
     lambda l, g, x: juanji.linear_backward(g, x, l.weight)[0]),
    ("maxpool2d", lambda: nn.MaxPool2d(3, 2, 1), (2, 2, 7, 7),
     lambda l, x: juanji.max_pool2d(x, 3, 2, 1), lambda l, g, x: juanji.max_pool2d_backward(g, x, 3, 2, 1)),
    ("avgpool2d", lambda: nn.AvgPool2d(2, ceil_mode=True), (1, 2, 5, 5),
     lambda l, x: juanji.avg_pool2d(x, 2, ceil_mode=True),
     lambda l, g, x: juanji.avg_pool2d_backward(g, x, 2, ceil_mode=True)),
    ("maxpool1d", lambda: nn.MaxPool1d(2), (2, 3, 9),
     lambda l, x: juanji.max_pool1d(x, 2), lambda l, g, x: juanji.max_pool1d_backward(g, x, 2)),
    ("avgpool1d", lambda: nn.AvgPool1d(3, 2, 1, count_include_pad=False), (2, 3, 9),
     lambda l, x: juanji.avg_pool1d(x, 3, 2, 1, count_include_pad=False),
     lambda l, g, x: juanji.avg_pool1d_backward(g, x, 3, 2, 1, count_include_pad=False)),
    ("global_avg", lambda: nn.GlobalAvgPool2d(), (2, 3, 4, 5),
     lambda l, x: juanji.global_avg_pool2d(x), lambda l, g, x: juanji.global_avg_pool2d_backward(g, x)),
    ("relu", lambda: nn.ReLU(), (3, 7), lambda l, x: juanji.relu(x), lambda l, g, x: juanji.relu_backward(g, x)),
    ("leaky", lambda: nn.LeakyReLU(0.2), (3, 7), lambda l, x: juanji.leaky_relu(x, 0.2),
     lambda l, g, x: juanji.leaky_relu_backward(g, x, 0.2)),
    ("sigmoid", lambda: nn.Sigmoid(), (3, 7), lambda l, x: juanji.sigmoid(x),
     lambda l, g, x: juanji.sigmoid_backward(g, x)),
    ("tanh", lambda: nn.Tanh(), (3, 7), lambda l, x: juanji.tanh(x), lambda l, g, x: juanji.tanh_backward(g, x)),
    ("softmax", lambda: nn.Softmax(), (3, 7), lambda l, x: juanji.softmax(x),
     lambda l, g, x: juanji.softmax_backward(g, x)),
    ("flatten", lambda: nn.Flatten(), (2, 3, 4), lambda l, x: np.asarray(x).reshape(2, 12),
     lambda l, g, x: np.asarray(g).reshape(2, 3, 4)),
]


@pytest.mark.parametrize("name,make,shape,fwd,bwd", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_layer_matches_functional_ops(name, make, shape, fwd, bwd):
    layer = as64(make())
    x = f64(*shape)
    y = layer.forward(x, training=True)
    np.testing.assert_allclose(np.asarray(y), np.asarray(fwd(layer, x)), rtol=1e-12, atol=1e-12)
    g = f64(*y.shape)
    np.testing.assert_allclose(np.asarray(layer.backward(g)), np.asarray(bwd(layer, g, x)), rtol=1e-12, atol=1e-12)


def test_parameter_gradients_match_functional_ops():
    conv = as64(nn.Conv2d(2, 3, 3, padding=1))
    x = f64(2, 2, 5, 5)
    y = conv.forward(x, training=True)
    g = f64(*y.shape)
    conv.backward(g)
    _, gw, gb = juanji.conv2d_backward(g, x, conv.weight, padding=1)
    weight, bias = conv.parameters()
    np.testing.assert_allclose(weight.grad, np.asarray(gw), rtol=1e-12)
    np.testing.assert_allclose(bias.grad, np.asarray(gb), rtol=1e-12)


def test_parameters_are_zero_copy_views():
    lin = nn.Linear(3, 2)
    w = lin.parameters()[0]
    w.data[...] = 1.0
    np.testing.assert_array_equal(lin.weight, np.ones((2, 3), np.float32))
    assert np.shares_memory(w.data, lin.weight)


def test_dropout_train_and_eval():
    juanji.manual_seed(3)
    drop = nn.Dropout(0.5)
    x = np.ones((200, 50), np.float32)
    y = np.asarray(drop.forward(x, training=True))
    assert set(np.unique(y)) <= {0.0, 2.0} and 0.4 < (y == 0).mean() < 0.6
    np.testing.assert_array_equal(np.asarray(drop.backward(np.ones_like(x))), y)
    np.testing.assert_array_equal(np.asarray(drop.forward(x, training=False)), x)


def test_batchnorm_normalises_in_training_and_uses_running_stats_in_eval():
    bn = as64(nn.BatchNorm2d(3, momentum=1.0))
    x = f64(4, 3, 5, 5) * 3 + 2
    y = np.asarray(bn.forward(x, training=True))
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-3)
    model = nn.Sequential(bn)
    running_mean, running_var = (b.data for b in model.buffers())
    np.testing.assert_allclose(running_mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(running_var, x.var(axis=(0, 2, 3), ddof=1), rtol=1e-12)
    z = np.asarray(bn.forward(x, training=False))
    expected = (x - running_mean[:, None, None]) / np.sqrt(running_var[:, None, None] + 1e-5)
    np.testing.assert_allclose(z, expected, rtol=1e-10, atol=1e-12)


def test_batchnorm_backward_against_finite_differences():
    bn = as64(nn.BatchNorm2d(2))
    x, r = f64(3, 2, 2, 3), f64(3, 2, 2, 3)

    def loss(xv):
        return float((np.asarray(bn.forward(xv, training=True)) * r).sum())

    bn.forward(x, training=True)
    gx = np.asarray(bn.backward(r))
    eps, num = 1e-6, np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        num[i] = (loss(xp) - loss(xm)) / (2 * eps)
    np.testing.assert_allclose(gx, num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("shape", [(4, 3, 5, 7), (2, 16, 9, 9), (1, 2, 3, 40)])
def test_batchnorm_float32_matches_float64_reference(shape):
    # float32 runs through the SIMD sums and the folded grad_x = a*g + b*x + c; it must agree with
    # the textbook formulas in float64 to float32 precision, on planes with vector tails.
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    C = shape[1]
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    bn = nn.BatchNorm2d(C)
    bn.weight[...] = gamma
    bn.bias[...] = beta
    y = np.asarray(bn.forward(x, training=True))
    gx = np.asarray(bn.backward(g))
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3), keepdims=True)
    invstd = 1 / np.sqrt(x64.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    xhat = (x64 - mean) * invstd
    c = (slice(None), None, None)
    np.testing.assert_allclose(y, gamma[c] * xhat + beta[c], rtol=1e-5, atol=1e-5)
    expected_gx = gamma[c] * invstd * (g64 - g64.mean(axis=(0, 2, 3), keepdims=True)
                                        - xhat * (g64 * xhat).mean(axis=(0, 2, 3), keepdims=True))
    np.testing.assert_allclose(gx, expected_gx, rtol=1e-4, atol=1e-5)
    weight, bias = [p for p in bn.parameters() if p.trainable]
    np.testing.assert_allclose(weight.grad, (g64 * xhat).sum(axis=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bias.grad, g64.sum(axis=(0, 2, 3)), rtol=1e-4, atol=1e-4)


def sgd_reference(w, grads, lr, momentum, nesterov, wd):
    v = np.zeros_like(w)
    for g in grads:
        d = g + wd * w
        if momentum:
            v = momentum * v + d
            d = d + momentum * v if nesterov else v
        w = w - lr * d
    return w


@pytest.mark.parametrize("momentum,nesterov,wd", [(0, False, 0), (0.9, False, 0), (0.9, True, 1e-2), (0.5, False, 0.1)])
def test_sgd_matches_pytorch_semantics(momentum, nesterov, wd):
    lin = as64(nn.Linear(4, 3, bias=False))
    model = nn.Sequential(lin)
    w0 = lin.weight.copy()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    grads = []
    for _ in range(4):
        x, g = f64(5, 4), f64(5, 3)
        lin.forward(x, training=True)
        lin.backward(g)
        grads.append(model.parameters()[0].grad.copy())
        opt.step()
    np.testing.assert_allclose(lin.weight, sgd_reference(w0, grads, 0.1, momentum, nesterov, wd), rtol=1e-12)


def test_lr_is_read_write_and_schedules_follow_formulas():
    model = nn.Sequential(nn.Linear(2, 2))
    opt = optim.SGD(model.parameters(), lr=0.4)
    opt.lr = 0.2
    assert opt.lr == 0.2
    step = optim.StepLR(opt, step_size=2, gamma=0.5)
    lrs = []
    for _ in range(5):
        step.step()
        lrs.append(opt.lr)
    np.testing.assert_allclose(lrs, [0.2, 0.1, 0.1, 0.05, 0.05])
    opt2 = optim.SGD(model.parameters(), lr=1.0)
    cos = optim.CosineLR(opt2, t_max=4, eta_min=0.1)
    got = []
    for _ in range(4):
        cos.step()
        got.append(opt2.lr)
    np.testing.assert_allclose(got, [0.1 + 0.9 * (1 + np.cos(np.pi * e / 4)) / 2 for e in range(1, 5)])


@pytest.mark.parametrize("kwargs,match", [
    ({"lr": -1.0}, "lr"), ({"lr": 0.1, "momentum": 1.5}, "momentum"),
    ({"lr": 0.1, "weight_decay": -1.0}, "weight_decay"), ({"lr": 0.1, "nesterov": True}, "nesterov"),
])
def test_sgd_rejects_bad_settings(kwargs, match):
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=match):
        optim.SGD(model.parameters(), **kwargs)


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.1),
        nn.Linear(8 * 2 * 2, 16), nn.Tanh(), nn.Linear(16, 4),
    )


def train(seed, steps=30):
    juanji.manual_seed(seed)
    model = small_cnn()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    data = np.random.default_rng(seed)
    x = data.standard_normal((32, 1, 14, 14)).astype(np.float32)
    y = data.integers(0, 4, 32)
    x[np.arange(32), 0, y * 3, y * 3] += 4  # a learnable signal
    losses = [model.train_step(x, y, nn.CrossEntropyLoss(), opt) for _ in range(steps)]
    return model, losses, x, y


def test_training_step_learns_and_is_reproducible():
    model, losses, x, y = train(7)
    assert losses[-1] < 0.5 * losses[0]
    loss, acc = model.evaluate(x, y, batch_size=10)
    assert acc > 0.8 and loss < losses[0]
    model2, losses2, _, _ = train(7)
    assert losses == losses2
    for a, b in zip(model.parameters(), model2.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


# Conv + ReLU fuse into one pass on the CPU's direct (few input channels), filter-block (8+
# filters) and Winograd (16+ channels in and out) paths; on the GEMM path (6 -> 5 channels) they
# run apart. Same results either way.
@pytest.mark.parametrize("channels", [(1, 2), (8, 16), (16, 16), (6, 5)],
                         ids=["direct", "filter_blocks", "winograd", "gemm"])
def test_training_step_matches_manual_layer_calls(channels):
    c_in, c_out = channels
    juanji.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(c_in, c_out, 3), nn.ReLU(), nn.Flatten(), nn.Linear(c_out * 4 * 4, 3))
    x = RNG.standard_normal((5, c_in, 6, 6)).astype(np.float32)
    w1, b1 = (p.data.copy() for p in model.parameters()[:2])
    np.testing.assert_array_equal(np.asarray(model.layers[1](model.layers[0](x))),
                                  np.asarray(juanji.relu(juanji.conv2d(x, w1, b1))))
    np.testing.assert_array_equal(
        np.asarray(model(x)),
        np.asarray(juanji.linear(np.asarray(juanji.relu(juanji.conv2d(x, w1, b1))).reshape(5, -1),
                                 *(p.data for p in model.parameters()[2:]))))
    y = np.array([0, 1, 2, 1, 0])
    before = [p.data.copy() for p in model.parameters()]
    opt = optim.SGD(model.parameters(), lr=0.1)
    model.train_step(x, y, nn.CrossEntropyLoss(), opt)
    # The same step by hand with the functional ops.
    w1, b1, w2, b2 = before
    h = np.asarray(juanji.conv2d(x, w1, b1))
    r = np.asarray(juanji.relu(h)).reshape(5, -1)
    z = np.asarray(juanji.linear(r, w2, b2))
    gz = np.asarray(juanji.cross_entropy_backward(z, y))
    gr, gw2, gb2 = (np.asarray(t) for t in juanji.linear_backward(gz, r, w2))
    gh = np.asarray(juanji.relu_backward(gr.reshape(h.shape), h))
    _, gw1, gb1 = (np.asarray(t) for t in juanji.conv2d_backward(gh, x, w1))
    for p, w, g in zip(model.parameters(), before, [gw1, gb1, gw2, gb2]):
        np.testing.assert_allclose(p.data, w - 0.1 * g, rtol=1e-5, atol=1e-6)


def convnet_block(seed):
    juanji.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 3))


def assert_train_step_matches_the_layers_one_by_one(fused, apart, x, y):
    """fused.train_step against the same step through apart's layers called one by one (which
    never fuse): the parameters after the update must agree bit for bit."""
    juanji.manual_seed(11)  # the same dropout masks for both
    fused.train_step(x, y, nn.CrossEntropyLoss(), optim.SGD(fused.parameters(), lr=0.1))
    juanji.manual_seed(11)
    h = x
    for layer in apart.layers:
        h = layer.forward(h, training=True)
    g = np.asarray(juanji.cross_entropy_backward(np.asarray(h), y))
    for layer in reversed(apart.layers):
        g = layer.backward(g)
    optim.SGD(apart.parameters(), lr=0.1).step()
    for a, b in zip(fused.parameters(), apart.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_batchnorm_relu_fused_in_sequential_matches_the_layers_one_by_one():
    # Sequential runs BatchNorm2d + ReLU as one pass on the CPU; calling the layers one by one does
    # not fuse. Outputs, parameter updates and running statistics must agree bit for bit.
    x = RNG.standard_normal((3, 2, 5, 5)).astype(np.float32)
    y = np.array([0, 2, 1])
    fused, apart = convnet_block(4), convnet_block(4)
    h = x
    for layer in apart.layers:
        h = layer.forward(h, training=True)
    np.testing.assert_array_equal(np.asarray(fused.forward(x, training=True)), np.asarray(h))

    fused, apart = convnet_block(5), convnet_block(5)
    assert_train_step_matches_the_layers_one_by_one(fused, apart, x, y)
    for a, b in zip(fused.buffers(), apart.buffers()):
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("algorithm", ["filter_blocks", "direct", "gemm", "reference"])
def test_conv_with_batchnorm_trains_as_its_layers_one_by_one_whatever_its_weight_gradient(algorithm):
    # Each weight-gradient algorithm sums the bias gradient its own way; the batch norm after the
    # layer gives it one only where the two have the same bits.
    def make():
        juanji.manual_seed(9)
        return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                             nn.Linear(8 * 6 * 6, 3))

    x = RNG.standard_normal((3, 2, 6, 6)).astype(np.float32)
    previous = juanji._core._set_conv_algorithm("weight_grad", algorithm)
    try:
        assert_train_step_matches_the_layers_one_by_one(make(), make(), x, np.array([0, 2, 1]))
    finally:
        juanji._core._set_conv_algorithm("weight_grad", previous)


@pytest.mark.parametrize("channels, spatial", [(8, (10, 10)), (16, (7, 9)), (1, (12, 12))])
def test_depthwise_conv_with_batchnorm_trains_as_its_layers_one_by_one(channels, spatial):
    # The batch norm after a convolution gives it its bias gradient from its own input gradient in
    # the plan's fused backward; the depthwise layer's own bias gradient (the layers one by one)
    # must have the same bits, as every other algorithm's has.
    def make():
        juanji.manual_seed(8)
        return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.BatchNorm2d(channels),
                             nn.ReLU(), nn.Flatten(), nn.Linear(channels * spatial[0] * spatial[1], 3))

    x = RNG.standard_normal((3, channels) + spatial).astype(np.float32)
    assert make()._plan()[0] == "Conv2d, BatchNorm2d+ReLU | Conv2d+BatchNorm2d, ReLU"
    assert_train_step_matches_the_layers_one_by_one(make(), make(), x, np.array([0, 2, 1]))


@pytest.mark.parametrize("make, shape", [
    (lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 16, 3, padding=1),
                           nn.ReLU(), nn.MaxPool2d(3, stride=1), nn.Flatten(), nn.Linear(16 * 2 * 2, 3)), (8, 8)),
    (lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Flatten(), nn.Linear(4 * 4 * 4, 3)), (8, 8)),
    # Rows of 35 windows: whole vectors of them and a tail, an odd row and column left over.
    (lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                           nn.Linear(4 * 3 * 35, 3)), (7, 71)),
], ids=["relu_pool_overlapping_windows", "bn_relu_pool", "relu_pool_wide_rows"])
def test_relu_backward_fused_into_max_pool_matches_the_layers_one_by_one(make, shape):
    # Sequential's train_step runs a ReLU's backward inside the next max pool's backward (CPU);
    # calling the layers one by one does not. The updates must agree bit for bit, zeros and ties
    # (ReLU makes many) included.
    x = RNG.standard_normal((3, 2) + shape).astype(np.float32)
    y = np.array([0, 2, 1])
    juanji.manual_seed(6)
    fused = make()
    juanji.manual_seed(6)
    apart = make()
    assert_train_step_matches_the_layers_one_by_one(fused, apart, x, y)


BN_POOLS = {
    "2x2": (lambda: nn.MaxPool2d(2), (8, 8)),
    # A row and a column no window reads; rows of 35 windows (vector tails).
    "2x2_odd": (lambda: nn.MaxPool2d(2), (7, 71)),
    # Overlapping windows: one element wins in several and gets their gradients summed.
    "3x3_s1": (lambda: nn.MaxPool2d(3, stride=1), (6, 5)),
    "3x3_s2_pad_ceil": (lambda: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), (9, 6)),
    "stride_over_kernel": (lambda: nn.MaxPool2d(2, stride=3), (8, 8)),
}


BN_HEADS = {
    "conv": lambda: [nn.Conv2d(2, 3, 3, padding=1)],
    # Depthwise (one filter per channel): its weight gradient sums the bias gradient itself.
    "conv_depthwise": lambda: [nn.Conv2d(2, 2, 3, padding=1, groups=2)],
    "conv_without_bias": lambda: [nn.Conv2d(2, 3, 3, padding=1, bias=False)],
    # 16 filters, stride 2: the filter-block weight gradient, which sums the bias gradient itself.
    "conv_filter_blocks": lambda: [nn.Conv2d(2, 16, 3, stride=2, padding=1)],
    "nothing": lambda: [],
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("before", BN_HEADS)
@pytest.mark.parametrize("pool_name", BN_POOLS)
def test_batchnorm_relu_max_pool_fused_in_sequential_matches_the_layers_one_by_one(pool_name, before, dtype):
    # Sequential runs BatchNorm2d + ReLU + MaxPool2d forward as one pass on the CPU that never
    # stores the normalized tensor, and their backward as another (giving a convolution before them
    # its bias gradient); the layers called one by one do not fuse. Outputs in training and
    # evaluation, parameter updates and running statistics must agree bit for bit.
    make_pool, shape = BN_POOLS[pool_name]
    head = BN_HEADS[before]()
    channels = head[0].weight.data.shape[0] if head else 2
    features = nn.Sequential(*head, nn.BatchNorm2d(channels), nn.ReLU(), make_pool(), nn.Flatten())
    pooled = np.asarray(features(np.zeros((1, 2) + shape, np.float32))).shape[1]

    def make():
        juanji.manual_seed(7)
        model = nn.Sequential(*BN_HEADS[before](), nn.BatchNorm2d(channels), nn.ReLU(), make_pool(),
                              nn.Flatten(), nn.Linear(pooled, 3))
        model.to(dtype)
        return model

    x = RNG.standard_normal((3, 2) + shape).astype(dtype)
    y = np.array([0, 2, 1])
    fused, apart = make(), make()
    h = x
    for layer in apart.layers:
        h = layer.forward(h, training=True)
    np.testing.assert_array_equal(np.asarray(fused.forward(x, training=True)), np.asarray(h))

    fused, apart = make(), make()
    assert_train_step_matches_the_layers_one_by_one(fused, apart, x, y)
    for a, b in zip(fused.buffers(), apart.buffers()):
        np.testing.assert_array_equal(a.data, b.data)
    h = x
    for layer in apart.layers:
        h = layer.forward(h, training=False)
    np.testing.assert_array_equal(np.asarray(fused.forward(x, training=False)), np.asarray(h))


def test_max_pool_backward_after_the_fused_batchnorm_forward_is_refused():
    model = nn.Sequential(nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2))
    out = np.asarray(model.forward(RNG.standard_normal((2, 2, 4, 4)).astype(np.float32), training=True))
    with pytest.raises(ValueError, match="fused with the batch norm"):
        model.layers[2].backward(np.ones_like(out))


def small_projection_resnet():
    body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
    shortcut = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Residual(body, shortcut), nn.ReLU(), nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(16, 4))


@pytest.mark.parametrize("make", [small_cnn, lambda: nn.Sequential(
    nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
    nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 10)), small_projection_resnet],
    ids=["small_cnn", "lenet_like", "resnet_like"])
def test_training_step_allocates_nothing_after_the_first(make):
    # A training step drops each layer's activations as its backward ends and takes them again in
    # the next forward: from memory already touched, which the arena hands out first.
    model = make()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = nn.CrossEntropyLoss()
    x = RNG.standard_normal((8, 1, 14, 14)).astype(np.float32)
    y = RNG.integers(0, 4, 8)
    model.train_step(x, y, loss, opt)
    before = juanji.storage_allocations()
    for _ in range(3):
        model.train_step(x, y, loss, opt)
    assert juanji.storage_allocations() == before


def test_mse_training_and_loss_objects():
    juanji.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    x = RNG.standard_normal((16, 3)).astype(np.float32)
    target = (x @ np.array([[1.0, 0.5], [-1.0, 0.0], [0.5, 2.0]])).astype(np.float32)
    opt = optim.SGD(model.parameters(), lr=0.1)
    losses = [model.train_step(x, target, nn.MSELoss(), opt) for _ in range(100)]
    assert losses[-1] < 1e-2 * losses[0]
    z = np.asarray(model(x))
    assert nn.MSELoss()(z, target) == pytest.approx(float(((z - target) ** 2).mean()), rel=1e-5)
    labels = np.array([0, 1] * 8)
    expected = float(np.asarray(juanji.cross_entropy(z, labels)))
    assert nn.CrossEntropyLoss()(z, labels) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("loss, target, other_kind", [
    (nn.CrossEntropyLoss(), np.array([0, 2]), np.zeros(2, np.float32)),
    (nn.MSELoss(), np.zeros((2, 3), np.float32), np.array([0, 2])),
], ids=["class_labels", "values"])
def test_every_use_of_a_loss_takes_the_target_it_says(loss, target, other_kind):
    # Called directly, in train_step and in evaluate, a loss's target goes through one conversion.
    model = nn.Sequential(nn.Linear(4, 3))
    opt = optim.SGD(model.parameters(), lr=0.0)
    x = np.ones((2, 4), np.float32)
    output = model(x)
    uses = [lambda t: loss(output, t), lambda t: model.train_step(x, t, loss, opt),
            lambda t: model.evaluate(x, t, loss)]
    for use in uses:
        use(target)
        with pytest.raises(TypeError, match="^target: expected"):
            use(other_kind)


def test_summary_counts_parameters_and_flops():
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(6 * 14 * 14, 10))
    text = model.summary((1, 28, 28))
    assert "(6, 28, 28)" in text and "(6, 14, 14)" in text and "(1176,)" in text
    assert str(6 * 25 + 6) in text and str(1176 * 10 + 10) in text
    assert str(2 * 6 * 28 * 28 * 25) in text
    with pytest.raises(ValueError, match="Linear"):
        nn.Sequential(nn.Flatten(), nn.Linear(5, 2)).summary((1, 28, 28))


def test_model_inputs_are_checked():
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="weight|x"):
        model(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(TypeError, match="float64"):
        model(np.zeros((2, 1, 8, 8)))
    lin = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    opt = optim.SGD(lin.parameters(), lr=0.1)
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="labels"):
        lin.train_step(x, np.array([0, 3]), nn.CrossEntropyLoss(), opt)
    with pytest.raises(ValueError, match="labels"):
        lin.train_step(x, np.array([0, 1, 2]), nn.CrossEntropyLoss(), opt)
    with pytest.raises(TypeError, match="Sequential"):
        nn.Sequential(nn.ReLU(), "relu")


# ---- checkpoints ----

def test_checkpoint_round_trip(tmp_path):
    model, _, x, _ = train(3, steps=5)
    path = tmp_path / "model.safetensors"
    model.save(path, metadata={"mean": "0.5", "note": "测试"})
    loaded = juanji.load(path)
    assert loaded.architecture_json() == model.architecture_json()
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert juanji.load_metadata(str(path)) == {"mean": "0.5", "note": "测试"}
    safetensors = pytest.importorskip("safetensors.numpy")
    tensors = safetensors.load_file(str(path))
    for p in model.parameters() + model.buffers():
        np.testing.assert_array_equal(tensors[p.name], p.data)


def rewrite(path, edit_header=None, edit_tensors=None):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    if edit_header:
        edit_header(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def _set_arch(header, fn):
    arch = json.loads(header["__metadata__"]["architecture"])
    fn(arch)
    header["__metadata__"]["architecture"] = json.dumps(arch)


MODEL_CORRUPTIONS = {
    "not_juanji": lambda h: h["__metadata__"].pop("format"),
    "no_architecture": lambda h: h["__metadata__"].pop("architecture"),
    "architecture_not_json": lambda h: h["__metadata__"].update(architecture="[{"),
    "unknown_layer": lambda h: _set_arch(h, lambda a: a[0].update(type="Conv9d")),
    "bad_config": lambda h: _set_arch(h, lambda a: a[0]["config"].update(in_channels=-2)),
    "shape_mismatch": lambda h: _set_arch(h, lambda a: a[0]["config"].update(out_channels=5)),
    "missing_tensor": lambda h: _set_arch(
        h, lambda a: a.append({"type": "Linear", "config": {"in_features": 2, "out_features": 2, "bias": True}})),
    "extra_tensor": lambda h: _set_arch(h, lambda a: a[0]["config"].update(bias=False)),
}


@pytest.mark.parametrize("case", list(MODEL_CORRUPTIONS))
def test_mismatched_checkpoint_raises_value_error(tmp_path, case):
    path = tmp_path / "m.safetensors"
    nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten()).save(path)
    rewrite(path, MODEL_CORRUPTIONS[case])
    with pytest.raises(ValueError, match="checkpoint"):
        juanji.load(path)


def test_truncated_model_checkpoint_raises_value_error(tmp_path):
    path = tmp_path / "m.safetensors"
    nn.Sequential(nn.Linear(20, 20)).save(path)
    raw = path.read_bytes()
    for cut in (0, 4, 8, 20, len(raw) // 2, len(raw) - 1):
        path.write_bytes(raw[:cut])
        with pytest.raises(ValueError):
            juanji.load(path)


def test_every_layer_has_its_own_type_also_after_loading(tmp_path):
    layers = [nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.AvgPool2d(1), nn.LeakyReLU(0.1),
              nn.Sigmoid(), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3), nn.Softmax()]
    model = nn.Sequential(*layers)
    path = tmp_path / "m.safetensors"
    model.save(path)
    for original, loaded in zip(model.layers, juanji.load(path).layers):
        assert type(original) is type(loaded) and isinstance(loaded, nn.Layer)
        assert loaded.type == type(loaded).__name__
    assert isinstance(nn.Conv1d(1, 1, 2), nn.Conv) and isinstance(nn.MaxPool1d(2), nn.Pool)
    assert isinstance(nn.ReLU(), nn.Activation)


def every_layer_type():
    """One layer of each type, with settings away from the defaults where it has any."""
    return [
        nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding="same", dilation=(1, 2), groups=2, bias=False),
        nn.Conv1d(2, 3, 4, stride=3, padding=1), nn.Linear(5, 3, bias=False),
        nn.MaxPool2d((3, 2), stride=(2, 1), padding=1, ceil_mode=True), nn.MaxPool1d(2),
        nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), nn.AvgPool1d(2),
        nn.GlobalAvgPool2d(), nn.ReLU(), nn.Sigmoid(), nn.Tanh(), nn.LeakyReLU(1 / 3), nn.Softmax(),
        nn.Dropout(0.1), nn.Flatten(), nn.Identity(),
        nn.Residual(nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU()), nn.Conv2d(2, 2, 1, bias=False)),
        nn.Residual(nn.Linear(3, 3)), nn.Concat(nn.Identity(), nn.Sequential(nn.Linear(2, 2), nn.Tanh())),
        nn.Sequential(nn.BatchNorm2d(2), nn.Sequential(nn.ReLU())),
        nn.BatchNorm2d(3, eps=2.5e-10, momentum=1.0),
    ]


def test_every_layer_config_round_trips_through_a_checkpoint(tmp_path):
    bases = (nn.Layer, nn.Conv, nn.Pool, nn.Activation, nn.Container)
    layer_types = {name for name, cls in vars(nn).items()
                   if isinstance(cls, type) and issubclass(cls, nn.Layer) and cls not in bases}
    model = nn.Sequential(*every_layer_type())
    assert {layer.type for layer in model.layers} == layer_types
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = juanji.load(path)
    for original, rebuilt in zip(model.layers, loaded.layers):
        assert rebuilt.config_json() == original.config_json()
        assert repr(rebuilt) == repr(original)
    assert loaded.architecture_json() == model.architecture_json()
    # What checkpoints have always held: json.dumps' separators, doubles to 17 digits.
    assert json.loads(model.architecture_json())[-1] == {
        "type": "BatchNorm2d", "config": {"channels": 3, "eps": 2.5e-10, "momentum": 1}}
    assert model[-1].config_json() == '{"channels": 3, "eps": 2.5000000000000002e-10, "momentum": 1}'


def test_reserved_metadata_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        nn.Sequential(nn.ReLU()).save(tmp_path / "x.safetensors", metadata={"architecture": "[]"})

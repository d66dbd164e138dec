"""Containers: Residual, Concat, Identity and nested Sequential models, forward and backward
against NumPy references written from the definitions (y = body(x) + shortcut(x), concatenation
along the channels) and central finite differences in float64, a residual block against torch,
parameter names by place, nested checkpoints and summaries, the fused sum+ReLU, and bad input."""

import threading

import numpy as np
import pytest

import juanji
import reference as ref
from helpers import check_fd
from juanji import nn, optim

f32 = np.float32


def as64(layer):
    return layer.to("float64")


def conv_weights(layer):
    """(weight, bias or None) of a Conv2d as float64 copies."""
    bias = layer.bias
    return np.array(layer.weight, dtype=np.float64), None if bias is None else np.array(bias, dtype=np.float64)


def model_grads(model, x, grad_out):
    """Training-mode forward, backward of grad_out: (output, input gradient, {name: gradient})."""
    out = np.asarray(model.forward(x, training=True))
    grad_x = np.asarray(model.backward(grad_out))
    return out, grad_x, {p.name: np.array(p.grad) for p in model.parameters()}


# ---- forward and backward against NumPy ------------------------------------------------------


def conv_relu_conv(c_in, c_out, stride=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1))


@pytest.mark.parametrize("projection", [False, True], ids=["identity", "projection"])
def test_residual_matches_numpy(projection):
    rng = np.random.default_rng(0)
    c_in, c_out, stride = (3, 5, 2) if projection else (4, 4, 1)
    body = conv_relu_conv(c_in, c_out, stride)
    shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride) if projection else None
    model = as64(nn.Sequential(nn.Residual(body, shortcut), nn.ReLU()))
    x = rng.standard_normal((2, c_in, 7, 9))
    w1, b1 = conv_weights(body[0])
    w2, b2 = conv_weights(body[2])
    h = ref.conv2d(x, w1, b1, stride=stride, padding=1)
    a = ref.relu(h)
    branch = ref.conv2d(a, w2, b2, padding=1)
    if projection:
        ws, bs = conv_weights(shortcut)
        short = ref.conv2d(x, ws, bs, stride=stride)
    else:
        short = x
    s = branch + short
    expected = ref.relu(s)
    g = rng.standard_normal(expected.shape)
    out, grad_x, grads = model_grads(model, x, g)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)

    gs = ref.relu_backward(g, s)
    ga, gw2, gb2 = ref.conv2d_backward(gs, a, w2, padding=1)
    gh = ref.relu_backward(ga, h)
    gx_body, gw1, gb1 = ref.conv2d_backward(gh, x, w1, stride=stride, padding=1)
    expected_grads = {"0.body.0.weight": gw1, "0.body.0.bias": gb1, "0.body.2.weight": gw2,
                      "0.body.2.bias": gb2}
    if projection:
        gx_short, gws, gbs = ref.conv2d_backward(gs, x, ws, stride=stride)
        expected_grads.update({"0.shortcut.weight": gws, "0.shortcut.bias": gbs})
    else:
        gx_short = gs
    assert sorted(grads) == sorted(expected_grads)
    for name, expected_grad in expected_grads.items():
        np.testing.assert_allclose(grads[name], expected_grad, rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(grad_x, gx_body + gx_short, rtol=1e-10, atol=1e-12)


def test_concat_matches_numpy():
    rng = np.random.default_rng(1)
    one_by_one, three_by_three = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 4, 3, padding=1)
    pool = nn.MaxPool2d(3, stride=1, padding=1)
    model = as64(nn.Sequential(nn.Concat(one_by_one, three_by_three, nn.Identity(), pool)))
    x = rng.standard_normal((2, 3, 5, 6))
    parts = [ref.conv2d(x, *conv_weights(one_by_one)), ref.conv2d(x, *conv_weights(three_by_three), padding=1),
             x, ref.max_pool2d(x, 3, 1, 1)]
    expected = np.concatenate(parts, axis=1)
    g = rng.standard_normal(expected.shape)
    out, grad_x, grads = model_grads(model, x, g)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    g0, g1, g2, g3 = np.split(g, [2, 6, 9], axis=1)
    gx0, gw0, gb0 = ref.conv2d_backward(g0, x, conv_weights(one_by_one)[0])
    gx1, gw1, gb1 = ref.conv2d_backward(g1, x, conv_weights(three_by_three)[0], padding=1)
    gx3 = ref.max_pool2d_backward(g3, x, 3, 1, 1)
    np.testing.assert_allclose(grad_x, gx0 + gx1 + g2 + gx3, rtol=1e-10, atol=1e-12)
    for name, expected_grad in {"0.0.weight": gw0, "0.0.bias": gb0, "0.1.weight": gw1, "0.1.bias": gb1}.items():
        np.testing.assert_allclose(grads[name], expected_grad, rtol=1e-10, atol=1e-12, err_msg=name)


def test_identity_passes_values_and_gradients_through():
    x = np.arange(24, dtype=f32).reshape(2, 3, 4)
    layer = nn.Identity()
    np.testing.assert_array_equal(np.asarray(layer.forward(x, training=True)), x)
    np.testing.assert_array_equal(np.asarray(layer.backward(-x)), -x)
    model = nn.Sequential(nn.Linear(4, 4), nn.Identity(), nn.Sequential(nn.Identity()))
    out, grad_x, _ = model_grads(model, x.reshape(6, 4), np.ones((6, 4), f32))
    np.testing.assert_array_equal(out, np.asarray(model[0](x.reshape(6, 4))))


# ---- finite differences ----------------------------------------------------------------------


def fd_model_cases():
    def projection_block():
        # (a bias before a batch norm has a zero gradient, which finite differences cannot check)
        body = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(3), nn.Tanh(),
                             nn.Conv2d(3, 3, 3, padding=1))
        shortcut = nn.Sequential(nn.Conv2d(2, 3, 1, stride=2, bias=False), nn.BatchNorm2d(3))
        return nn.Sequential(nn.Residual(body, shortcut), nn.ReLU())

    def nested():
        inner = nn.Residual(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Sigmoid()))
        return nn.Sequential(nn.Conv2d(2, 2, 1), nn.Residual(nn.Sequential(inner, nn.Tanh())),
                             nn.Concat(nn.Identity(), nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1))),
                             nn.LeakyReLU(0.2))

    def concat_groups():
        branches = nn.Conv2d(2, 4, 3, groups=2), nn.Conv2d(2, 1, 3, dilation=2, padding=1)
        return nn.Sequential(nn.Concat(*branches), nn.Tanh())

    return {"projection_block": ((3, 2, 5, 7), projection_block), "nested": ((2, 2, 4, 5), nested),
            "concat_groups": ((2, 2, 5, 4), concat_groups)}


@pytest.mark.parametrize("case", sorted(fd_model_cases()))
def test_containers_against_finite_differences(case):
    shape, make = fd_model_cases()[case]
    model = as64(make())
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape)
    out = np.asarray(model.forward(x, training=True))
    R = rng.standard_normal(out.shape)
    _, grad_x, grads = model_grads(model, x, R)
    params = {p.name: p for p in model.parameters()}

    def forward(x, **values):
        for name, value in values.items():
            params[name].data[...] = value
        return np.asarray(model.forward(x, training=True))

    inputs = {"x": x, **{name: np.array(p.data) for name, p in params.items()}}
    check_fd(forward, inputs, {"x": grad_x, **grads}, R)


# ---- torch ------------------------------------------------------------------------------------


def test_a_residual_block_matches_torch():
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    class Block(tnn.Module):
        def __init__(self, body, shortcut):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + self.shortcut(x)

    def torch_block():
        body = tnn.Sequential(tnn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU(),
                              tnn.Conv2d(16, 16, 3, padding=1, bias=False), tnn.BatchNorm2d(16))
        shortcut = tnn.Sequential(tnn.Conv2d(8, 16, 1, stride=2, bias=False), tnn.BatchNorm2d(16))
        return tnn.Sequential(tnn.Conv2d(3, 8, 3, padding=1), tnn.ReLU(), Block(body, shortcut), tnn.ReLU())

    def juanji_block():
        body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        shortcut = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Residual(body, shortcut), nn.ReLU())

    torch.manual_seed(0)
    tmodel = torch_block().double()
    model = as64(juanji_block())
    state = {k: v for k, v in tmodel.state_dict().items() if not k.endswith("num_batches_tracked")}
    by_name = {p.name: p for p in model.parameters() + model.buffers()}
    assert sorted(by_name) == sorted(state), "juanji names its parameters as torch's state_dict does"
    for name, value in state.items():
        by_name[name].data[...] = value.numpy()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 9, 9))
    xt = torch.tensor(x, requires_grad=True)
    yt = tmodel(xt)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(g))
    out, grad_x, grads = model_grads(model, x, g)
    np.testing.assert_allclose(out, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grad_x, xt.grad.numpy(), rtol=1e-9, atol=1e-10)
    for name, param in tmodel.named_parameters():
        np.testing.assert_allclose(grads[name], param.grad.numpy(), rtol=1e-9, atol=1e-9, err_msg=name)
    for name, buffer in tmodel.named_buffers():
        if not name.endswith("num_batches_tracked"):
            np.testing.assert_allclose(by_name[name].data, buffer.numpy(), rtol=1e-12, err_msg=name)


# ---- names, summary, checkpoints ---------------------------------------------------------------


def small_resnet():
    def block(c_in, c_out, stride):
        body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                             nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        shortcut = None if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        return nn.Residual(body, shortcut)

    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         block(4, 4, 1), nn.ReLU(), block(4, 8, 2), nn.ReLU(),
                         nn.Concat(nn.Conv2d(8, 2, 1), nn.Identity()),
                         nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(10, 3))


def test_parameters_are_named_by_their_place():
    names = [p.name for p in small_resnet().parameters()]
    assert names[:3] == ["0.weight", "1.weight", "1.bias"]
    assert "3.body.0.weight" in names and "3.body.4.bias" in names
    assert "5.shortcut.0.weight" in names and "5.shortcut.1.weight" in names
    assert "7.0.weight" in names and names[-1] == "10.bias"
    assert len(names) == len(set(names))
    buffers = [b.name for b in small_resnet().buffers()]
    assert "5.shortcut.1.running_var" in buffers


def test_summary_shows_the_nesting():
    text = small_resnet().summary((1, 12, 12))
    lines = text.splitlines()
    row = {line.split()[0]: line for line in lines[2:-1]}
    assert row["3"].split()[1] == "Residual" and row["3.body.0"].split()[1] == "Conv2d"
    assert "  Conv2d" in row["3.body.0"] and "    Conv2d" in row["5.shortcut.0"]
    assert "(8, 6, 6)" in row["5"] and "(10, 6, 6)" in row["7"]
    model = small_resnet()
    total = sum(p.data.size for p in model.parameters())
    assert lines[-1].startswith(f"total: {total} parameters")
    # a block's row counts what is inside it
    block_params = sum(p.data.size for p in model[5].parameters() if p.trainable)
    assert int(row["5"].split()[-2]) == block_params


def test_nested_checkpoint_round_trips(tmp_path):
    model = small_resnet()
    x = np.random.default_rng(4).standard_normal((3, 1, 12, 12)).astype(f32)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        model.train_step(x, np.array([0, 1, 2]), nn.CrossEntropyLoss(), opt)
    path = tmp_path / "resnet.safetensors"
    model.save(path)
    loaded = juanji.load(path)
    assert loaded.architecture_json() == model.architecture_json()
    assert [p.name for p in loaded.parameters()] == [p.name for p in model.parameters()]
    assert [b.name for b in loaded.buffers()] == [b.name for b in model.buffers()]
    model.eval()
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert isinstance(loaded[3], nn.Residual) and isinstance(loaded[3].body, nn.Sequential)
    assert loaded[3].shortcut is None and isinstance(loaded[5].shortcut, nn.Sequential)
    assert isinstance(loaded[7], nn.Concat) and isinstance(loaded[7].branches[1], nn.Identity)


def test_a_nested_checkpoint_missing_a_tensor_names_it(tmp_path):
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "m.safetensors"
    small_resnet().save(path)
    import json
    import struct

    raw = path.read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    tensors = load_file(path)
    del tensors["5.shortcut.0.weight"]
    save_file(tensors, tmp_path / "cut.safetensors", metadata=header["__metadata__"])
    with pytest.raises(ValueError, match=r"tensor '5\.shortcut\.0\.weight' of shape \(8, 4, 1, 1\) is missing"):
        juanji.load(tmp_path / "cut.safetensors")


# ---- the plan ----------------------------------------------------------------------------------


def test_the_sum_fuses_with_the_relu_after_it_and_gives_the_same_bits():
    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, (2, 3, 6, 6)).astype(f32)
    body = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Tanh())
    fused = nn.Sequential(nn.Residual(body), nn.ReLU())
    assert fused._plan() == ["Residual+ReLU"]
    # the same layers one at a time
    block, relu = fused[0], fused[1]
    stepwise = np.asarray(relu.forward(np.asarray(block.forward(x, training=True)), training=True))
    g = rng.integers(-3, 4, stepwise.shape).astype(f32)
    stepwise_grad = np.asarray(block.backward(np.asarray(relu.backward(g))))
    out, grad_x, _ = model_grads(fused, x, g)
    np.testing.assert_array_equal(out, stepwise)
    np.testing.assert_array_equal(grad_x, stepwise_grad)
    # Inside blocks the plan fuses as in a flat model.
    inner = nn.Sequential(nn.Residual(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())))
    assert inner[0].body._plan() == ["Conv2d+ReLU | Conv2d, ReLU"]


def test_integer_data_gives_the_same_bits_at_every_thread_count():
    rng = np.random.default_rng(6)
    x = rng.integers(-2, 3, (4, 1, 12, 12)).astype(f32)
    g = None
    results = []
    threads = juanji.get_num_threads()
    try:
        for n in (1, 2):
            juanji.set_num_threads(n)
            juanji.manual_seed(0)
            model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                                  nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                                                            nn.Conv2d(4, 4, 1))), nn.ReLU(),
                                  nn.Concat(nn.Conv2d(4, 2, 1), nn.Identity()))
            for p in model.parameters():
                p.data[...] = rng.integers(-2, 3, p.data.shape) if n == 1 else results[0][3][p.name]
            out = np.asarray(model.forward(x, training=True))
            if g is None:
                g = np.random.default_rng(7).integers(-2, 3, out.shape).astype(f32)
            grad_x = np.asarray(model.backward(g))
            results.append((out, grad_x, {p.name: np.array(p.grad) for p in model.parameters()},
                            {p.name: np.array(p.data) for p in model.parameters()}))
    finally:
        juanji.set_num_threads(threads)
    (out1, gx1, grads1, _), (out2, gx2, grads2, _) = results
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_array_equal(gx1, gx2)
    for name in grads1:
        np.testing.assert_array_equal(grads1[name], grads2[name], err_msg=name)


# ---- training ----------------------------------------------------------------------------------


def test_a_residual_network_learns():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((64, 1, 12, 12)).astype(f32)
    y = (x[:, 0, :6].mean(axis=(1, 2)) > x[:, 0, 6:].mean(axis=(1, 2))).astype(np.int64) + \
        (x[:, 0, :, :6].mean(axis=(1, 2)) > 0)
    juanji.manual_seed(0)
    model = small_resnet()
    opt = optim.Adam(model.parameters(), lr=0.01)
    losses = [model.train_step(x, y, nn.CrossEntropyLoss(), opt) for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    assert model.evaluate(x, y)[1] > 0.8


def test_models_with_blocks_train_side_by_side_in_threads():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((8, 1, 12, 12)).astype(f32)
    y = rng.integers(0, 3, 8)
    models = [small_resnet() for _ in range(2)]
    errors = []

    def train(model):
        try:
            opt = optim.SGD(model.parameters(), lr=0.01)
            for _ in range(5):
                model.train_step(x, y, nn.CrossEntropyLoss(), opt)
                model[3].forward(x[:, :1].repeat(4, axis=1), training=False)  # a block of it, alone
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=train, args=(m,)) for m in models + models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ---- bad input ---------------------------------------------------------------------------------


def test_branches_that_cannot_add_name_both_shapes():
    block = nn.Residual(nn.Conv2d(3, 5, 3, padding=1))
    with pytest.raises(ValueError, match=r"body's output \(N, 5, 6, 6\) and the shortcut's \(N, 3, 6, 6\) cannot "
                                         r"be added"):
        block(np.ones((2, 3, 6, 6), f32))
    model = nn.Sequential(nn.Residual(nn.Conv2d(3, 3, 3, stride=2, padding=1), nn.Conv2d(3, 3, 1)))
    with pytest.raises(ValueError, match=r"\(N, 3, 3, 3\) and the shortcut's \(N, 3, 5, 5\)"):
        model.summary((3, 5, 5))
    with pytest.raises(ValueError, match=r"\(N, 3, 3, 3\) and the shortcut's \(N, 3, 5, 5\)"):
        model(np.ones((1, 3, 5, 5), f32))


def test_branches_that_cannot_concatenate_name_both_shapes():
    block = nn.Concat(nn.Conv2d(3, 2, 1), nn.MaxPool2d(2))
    with pytest.raises(ValueError, match=r"branch 0's output \(N, 2, 6, 6\) and branch 1's \(N, 3, 3, 3\) "
                                         r"cannot be concatenated"):
        block(np.ones((1, 3, 6, 6), f32))
    with pytest.raises(ValueError, match=r"cannot be concatenated"):
        nn.Sequential(block).summary((3, 6, 6))
    with pytest.raises(ValueError, match="no channel dimension"):
        nn.Concat(nn.Identity()).output_shape((5,))


def test_containers_refuse_layers_they_cannot_own():
    conv = nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match=r"Residual: shortcut \(Conv2d\) already appears earlier in this Residual"):
        nn.Residual(conv, conv)
    block = nn.Residual(conv)
    with pytest.raises(ValueError, match="belongs to another container"):
        nn.Sequential(conv)
    inner = nn.Sequential(nn.ReLU())
    outer = nn.Sequential(inner, block)
    with pytest.raises(ValueError, match="inside another container"):
        inner.append(nn.ReLU())
    with pytest.raises(ValueError, match="at least one branch"):
        nn.Concat()
    with pytest.raises(TypeError, match="Concat: branch 1: expected a layer, got int"):
        nn.Concat(nn.ReLU(), 3)
    with pytest.raises(TypeError, match="Residual: body: expected a layer, got NoneType"):
        nn.Residual(None)
    # A refused layer stays free.
    free = nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError):
        nn.Residual(free, conv)
    assert [p.name for p in nn.Sequential(free).parameters()] == ["0.weight", "0.bias"]
    assert len(outer) == 2


def test_backward_before_forward_is_a_clear_error():
    with pytest.raises(ValueError, match="no forward"):
        nn.Sequential(nn.ReLU()).backward(np.ones((1, 2), f32))


def test_mixed_dtypes_in_branches_are_a_clear_error():
    block = nn.Residual(nn.Linear(2, 2).to("float64"))
    with pytest.raises(TypeError, match="float"):
        block(np.ones((1, 2), f32))

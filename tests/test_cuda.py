"""CUDA backend against the CPU: every op forward and backward over the CPU tests' shape grids
(float32 within 1e-4, float64 within 1e-10 of the CPU result, relative to its largest
magnitude), layers, Sequential training, SGD, determinism, and device errors.

Tests decorated with @gpu need a CUDA build and a visible GPU and skip otherwise; the tests at the
end check the errors a machine without one gives and run in the CPU suite. Without a GPU the
kernels can still run on the CPU emulation: python tests/cuda_emulation/emulate.py."""

import numpy as np
import pytest

import juanji
import test_conv
import test_dense
import test_nn
import test_pool
from helpers import assert_close, randn
from juanji import nn, optim

HAS_GPU = juanji.cuda_compiled() and juanji.cuda_device_count() > 0

RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


def gpu(test):
    """Marks a test that needs a CUDA build and a visible GPU; it skips without one."""
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU visible")(test))


def on_gpu(a, dtype=None):
    """A CUDA copy of an array (integer labels: dtype="int64")."""
    return juanji.tensor(np.asarray(a), dtype=dtype, device="cuda")


def host(t) -> np.ndarray:
    assert t.device == "cuda:0", f"result on {t.device}, expected cuda:0"
    return np.asarray(t.to("cpu"))


def assert_matches(gpu_result, cpu_result, dtype, what=""):
    """The GPU result equals the CPU one within the dtype's tolerance (NaNs must match)."""
    assert_close(host(gpu_result), np.asarray(cpu_result), dtype, rtol=RTOL[np.dtype(dtype)], what=what)


def compare(fn, dtype, *arrays, labels=None, what=""):
    """fn on CPU arrays and on CUDA copies of them; every result must match."""
    expected = fn(*arrays, *([] if labels is None else [labels]))
    got = fn(*[on_gpu(a) for a in arrays], *([] if labels is None else [on_gpu(labels, "int64")]))
    if isinstance(expected, tuple):
        assert isinstance(got, tuple) and len(got) == len(expected)
        for i, (e, g) in enumerate(zip(expected, got)):
            assert_matches(g, e, dtype, what=f"{what}[{i}]")
    else:
        assert_matches(got, expected, dtype, what=what)


# ----------------------------------------------------------------------- device layer

@gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_and_fill(dtype):
    a = np.arange(12, dtype=dtype).reshape(3, 4)
    g = juanji.tensor(a, device="cuda")
    assert g.device == "cuda:0"
    np.testing.assert_array_equal(np.asarray(g.to("cpu")), a)
    g.fill_(2.5)
    np.testing.assert_array_equal(np.asarray(g.to("cpu")), np.full((3, 4), 2.5, dtype))
    ones = juanji.ones(5, dtype=dtype, device="cuda")
    np.testing.assert_array_equal(np.asarray(ones.to("cpu")), np.ones(5, dtype))


@gpu
def test_strided_copy_on_device():
    a = np.arange(24.0).reshape(4, 6)
    g = juanji.tensor(a, device="cuda")
    np.testing.assert_array_equal(np.asarray(g.T.contiguous().to("cpu")), a.T)
    np.testing.assert_array_equal(np.asarray(g[:, 1::2].contiguous().to("cpu")), a[:, 1::2])


@gpu
def test_bfloat16_conversions_on_device_match_the_cpu():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(16)
    f32 = rng.integers(0, 2**32, size=100000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    f64 = np.concatenate([rng.integers(0, 2**64, size=50000, dtype=np.uint64).view(np.float64),
                          rng.standard_normal(50000) * np.exp2(rng.integers(-140, 130, size=50000)),
                          [1 + 2.0**-8 + 2.0**-40, float(2**128 - 2**119), 3.5e38, 5e-324, -0.0, np.inf]])
    ints = rng.integers(-2**62, 2**62, size=1000)
    for src in (f32, f64, ints):
        cpu = np.asarray(juanji.tensor(src, dtype=src.dtype.name).to("bfloat16")).view(np.uint16)
        gpu = host(on_gpu(src, src.dtype.name).to("bfloat16")).view(np.uint16)
        np.testing.assert_array_equal(gpu, cpu, err_msg=f"from {src.dtype}")
    every = juanji.from_numpy(np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(ml_dtypes.bfloat16))
    on_device = every.to("cuda")
    for wide in ("float32", "float64"):
        cpu, gpu = np.asarray(every.to(wide)), host(on_device.to(wide))
        np.testing.assert_array_equal(np.isnan(gpu), np.isnan(cpu))
        np.testing.assert_array_equal(gpu[~np.isnan(cpu)], cpu[~np.isnan(cpu)], err_msg=f"to {wide}")
    in_range = np.abs(np.asarray(every.to("float32"))) < 2.0**62  # int64 of the others is undefined
    integral = juanji.from_numpy(np.asarray(every)[in_range])
    np.testing.assert_array_equal(host(integral.to("cuda").to("int64")), np.asarray(integral.to("int64")))
    filled = juanji.full((5,), 1 + 2.0**-8 + 2.0**-40, dtype="bfloat16", device="cuda")
    assert host(filled).astype(np.float64).tolist() == [1 + 2.0**-7] * 5
    strided = np.asarray(every)[:4096].reshape(64, 64)
    np.testing.assert_array_equal(host(juanji.from_numpy(strided).to("cuda").T.contiguous()).view(np.uint16),
                                  strided.T.view(np.uint16))


@gpu
def test_numpy_of_cuda_tensor_is_refused():
    with pytest.raises(ValueError, match="cpu"):
        np.asarray(juanji.zeros(2, device="cuda"))


# ----------------------------------------------------------------------- convolution

CONV_CASES = test_conv.grid_params() + test_conv.RANDOM + [
    pytest.param(nd, c, id=f"larger-{name}") for name, (nd, c) in test_conv.LARGER.items()]


def conv_forward_and_backward(nd, c, dtype, seed):
    rng = np.random.default_rng(seed)
    fwd, bwd, _, _ = test_conv.OPS[nd]
    x, w, b = test_conv.make_inputs(rng, c, dtype)
    kw = test_conv.conv_kwargs(c)
    if b is None:
        compare(lambda x, w: fwd(x, w, None, **kw), dtype, x, w, what="y")
    else:
        compare(lambda x, w, b: fwd(x, w, b, **kw), dtype, x, w, b, what="y")
    gy = randn(rng, test_conv.out_shape(c), dtype)
    compare(lambda gy, x, w: bwd(gy, x, w, **kw), dtype, gy, x, w, what="grads")


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd,c", CONV_CASES)
def test_conv_matches_cpu(nd, c, dtype):
    conv_forward_and_backward(nd, c, dtype, seed=1)


# Layers big enough for every tile shape of the implicit GEMM (wide, square and narrow), split-K
# GEMMs (forward and data gradient with few tiles, weight gradients), the direct data gradient of
# few-channel layers (strided, depthwise), bias gradients over several chunks, and grids with many
# blocks.
LARGE_CONV = [
    ((4, 32, 20, 20), (64, 32, 3, 3), dict(padding=1)),
    ((2, 64, 24, 22), (128, 64, 3, 3), dict(stride=2, padding=(2, 1), dilation=2)),
    ((2, 48, 17, 19), (48, 1, 3, 3), dict(padding=1, groups=48)),
    ((3, 3, 61, 58), (16, 3, 7, 7), dict(stride=2, padding=3)),
    ((8, 96, 9, 9), (32, 96, 1, 1), {}),
    ((8, 4, 33, 33), (8, 4, 3, 3), dict(padding=1)),
]


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,ws,kw", LARGE_CONV,
                         ids=["res", "strided_dilated", "depthwise", "stem", "pointwise", "many_pixels"])
def test_large_conv_matches_cpu(xs, ws, kw, dtype):
    rng = np.random.default_rng(5)
    x, w, b = randn(rng, xs, dtype), randn(rng, ws, dtype), randn(rng, (ws[0],), dtype)
    compare(lambda x, w, b: juanji.conv2d(x, w, b, **kw), dtype, x, w, b, what="y")
    gy = randn(rng, np.asarray(juanji.conv2d(x, w, b, **kw)).shape, dtype)
    compare(lambda gy, x, w: juanji.conv2d_backward(gy, x, w, **kw), dtype, gy, x, w, what="grads")


@gpu
def test_conv_integer_valued_float32_is_exact():
    # Small integers: every partial sum is exact in float32, so any summation order gives the
    # CPU's bits.
    rng = np.random.default_rng(6)
    for nd, c in test_conv.EXACT.values():
        fwd, bwd, _, _ = test_conv.OPS[nd]
        x, w, b = test_conv.make_inputs(rng, c, np.float32, gen=test_conv.randint_data)
        kw = test_conv.conv_kwargs(c)
        np.testing.assert_array_equal(host(fwd(on_gpu(x), on_gpu(w), on_gpu(b), **kw)), np.asarray(fwd(x, w, b, **kw)))
        gy = test_conv.randint_data(rng, test_conv.out_shape(c))
        for g, e in zip(bwd(on_gpu(gy), on_gpu(x), on_gpu(w), **kw), bwd(gy, x, w, **kw)):
            np.testing.assert_array_equal(host(g), np.asarray(e))


# ----------------------------------------------------------------------- pooling

POOL_CASES = test_pool.grid_params() + test_pool.RANDOM


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("nd,c", POOL_CASES)
def test_pool_matches_cpu(nd, c, op, dtype):
    rng = np.random.default_rng(1)
    fwd, bwd, _, _ = (test_pool.MAX if op == "max" else test_pool.AVG)[nd]
    kw = test_pool.max_kw(c) if op == "max" else test_pool.avg_kw(c)
    x = test_pool.pool_input(rng, c, dtype, op)
    compare(lambda x: fwd(x, **kw), dtype, x, what=f"{op} y")
    gy = randn(rng, np.asarray(fwd(x, **kw)).shape, dtype)
    compare(lambda gy, x: bwd(gy, x, **kw), dtype, gy, x, what=f"{op} grad_x")


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_nan_and_ties_match_cpu(dtype):
    # The first maximum of a window wins and a NaN beats any number: the same winners (so the
    # same values, bit for bit, and the same gradient routing) as the CPU.
    x = np.round(np.random.default_rng(2).standard_normal((2, 3, 9, 8)), 0).astype(dtype)
    x[0, 0, 1, 1] = x[1, 2, 4, 5] = x[1, 2, 4, 6] = np.nan
    kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    np.testing.assert_array_equal(host(juanji.max_pool2d(on_gpu(x), **kw)), np.asarray(juanji.max_pool2d(x, **kw)))
    gy = randn(np.random.default_rng(3), np.asarray(juanji.max_pool2d(x, **kw)).shape, dtype)
    compare(lambda gy, x: juanji.max_pool2d_backward(gy, x, **kw), dtype, gy, x)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (1, 4, 1, 9), (3, 2, 8, 8), (2, 16, 33, 31)],
                         ids=lambda s: "x".join(map(str, s)))
def test_global_avg_pool_matches_cpu(shape, dtype):
    rng = np.random.default_rng(4)
    x, gy = randn(rng, shape, dtype), randn(rng, shape[:2] + (1, 1), dtype)
    compare(juanji.global_avg_pool2d, dtype, x)
    compare(juanji.global_avg_pool2d_backward, dtype, gy, x)


# ----------------------------------------------------------------------- dense part

LINEAR_CASES = test_dense.linear_params() + [
    pytest.param(256, 400, 120, id="lenet_fc1_b256"),
    pytest.param(300, 200, 130, id="large_tiles"),
    pytest.param(4096, 20, 10, id="tall_split_k"),
]


@gpu
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,fin,fout", LINEAR_CASES)
def test_linear_matches_cpu(N, fin, fout, dtype, bias):
    rng = np.random.default_rng(7)
    x, w, b = randn(rng, (N, fin), dtype), randn(rng, (fout, fin), dtype), randn(rng, (fout,), dtype)
    if bias:
        compare(juanji.linear, dtype, x, w, b, what="y")
    else:
        compare(lambda x, w: juanji.linear(x, w), dtype, x, w, what="y")
    compare(juanji.linear_backward, dtype, randn(rng, (N, fout), dtype), x, w, what="grads")


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", test_dense.ACT_SHAPES + [(3, 70001)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(test_dense.ACTIVATIONS))
def test_activation_matches_cpu(name, shape, dtype):
    f, fb, _, _, kw = test_dense.ACTIVATIONS[name]
    rng = np.random.default_rng(8)
    x, gy = (3.0 * randn(rng, shape)).astype(dtype), randn(rng, shape, dtype)
    compare(lambda x: f(x, **kw), dtype, x, what="y")
    compare(lambda gy, x: fb(gy, x, **kw), dtype, gy, x, what="grad_x")


@gpu
@pytest.mark.parametrize("scale", [1.0, 1000.0], ids=["unit", "x1000"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", test_dense.SOFTMAX_CASES + [((3, 1000), -1), ((2, 70, 3), 1)],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else f"dim{v}")
@pytest.mark.parametrize("name", list(test_dense.SOFTMAX))
def test_softmax_matches_cpu(name, shape, dim, dtype, scale):
    f, fb, _, _ = test_dense.SOFTMAX[name]
    rng = np.random.default_rng(9)
    x, gy = (scale * randn(rng, shape)).astype(dtype), randn(rng, shape, dtype)
    compare(lambda x: f(x, dim=dim), dtype, x, what="y")
    compare(lambda gy, x: fb(gy, x, dim=dim), dtype, gy, x, what="grad_x")


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", test_dense.MSE_SHAPES + [(1000, 333)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("reduction", test_dense.MSE_REDUCTIONS)
def test_mse_matches_cpu(reduction, shape, dtype):
    rng = np.random.default_rng(10)
    z, y = randn(rng, shape, dtype), randn(rng, shape, dtype)
    compare(lambda z, y: juanji.mse_loss(z, y, reduction=reduction), dtype, z, y, what="loss")
    compare(lambda z, y: juanji.mse_loss_backward(z, y, reduction=reduction), dtype, z, y, what="grad")


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", test_dense.CE_SHAPES + [(5, 1000), (700, 10)], ids=lambda s: "N{}C{}".format(*s))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_cpu(reduction, shape, dtype):
    rng = np.random.default_rng(11)
    x, labels = (2.0 * randn(rng, shape)).astype(dtype), rng.integers(0, shape[1], size=shape[0])
    compare(lambda x, t: juanji.cross_entropy(x, t, reduction=reduction), dtype, x, labels=labels)
    compare(lambda x, t: juanji.cross_entropy_backward(x, t, reduction=reduction), dtype, x, labels=labels)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_stable_for_huge_logits(dtype):
    x = np.array([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, -1000.0]], dtype)
    labels = np.array([1, 2])
    compare(lambda x, t: juanji.cross_entropy(x, t, reduction="none"), dtype, x, labels=labels)
    compare(juanji.cross_entropy_backward, dtype, x, labels=labels)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 3), (32, 7), (5, 1000)], ids=lambda s: "N{}C{}".format(*s))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_smoothed_cross_entropy_matches_cpu(reduction, shape, dtype):
    rng = np.random.default_rng(13)
    x, labels = (2.0 * randn(rng, shape)).astype(dtype), rng.integers(0, shape[1], size=shape[0])
    compare(lambda x, t: juanji.cross_entropy(x, t, reduction=reduction, label_smoothing=0.15), dtype, x,
            labels=labels)
    compare(lambda x, t: juanji.cross_entropy_backward(x, t, reduction=reduction, label_smoothing=0.15), dtype, x,
            labels=labels)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_draws_the_cpu_mask(dtype):
    x = randn(np.random.default_rng(12), (33, 71), dtype)
    juanji.manual_seed(5)
    y_cpu, mask_cpu = juanji.dropout(x, 0.3)
    juanji.manual_seed(5)
    y_gpu, mask_gpu = juanji.dropout(on_gpu(x), 0.3)
    np.testing.assert_array_equal(host(mask_gpu), np.asarray(mask_cpu))
    np.testing.assert_array_equal(host(y_gpu), np.asarray(y_cpu))


# ----------------------------------------------------------------------- layers

def twin_layers(make, dtype="float64"):
    """The same freshly initialised layer twice: one on the CPU, one on the GPU."""
    juanji.manual_seed(21)
    cpu_layer = make().to(dtype)
    juanji.manual_seed(21)
    return cpu_layer, make().to(dtype).to("cuda")


@gpu
@pytest.mark.parametrize("name,make,shape,fwd,bwd", test_nn.LAYER_CASES, ids=[c[0] for c in test_nn.LAYER_CASES])
def test_layer_matches_cpu(name, make, shape, fwd, bwd):
    cpu_layer, gpu_layer = twin_layers(make)
    rng = np.random.default_rng(13)
    x = rng.standard_normal(shape)
    y = cpu_layer.forward(x, training=True)
    y_gpu = gpu_layer.forward(on_gpu(x), training=True)
    assert_matches(y_gpu, y, np.float64, what=f"{name} y")
    g = rng.standard_normal(np.asarray(y).shape)
    assert_matches(gpu_layer.backward(on_gpu(g)), cpu_layer.backward(g), np.float64, what=f"{name} grad_x")
    for p_cpu, p_gpu in zip(cpu_layer.parameters(), gpu_layer.parameters()):
        assert p_gpu.device == "cuda:0"
        assert_matches(p_gpu.tensor, p_cpu.data, np.float64, what=p_cpu.name)


@gpu
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm_matches_cpu(training):
    cpu_layer, gpu_layer = twin_layers(lambda: nn.BatchNorm2d(5, momentum=0.3))
    rng = np.random.default_rng(14)
    for _ in range(2):  # the second pass sees updated running statistics
        x, g = rng.standard_normal((4, 5, 6, 7)) * 2 + 1, rng.standard_normal((4, 5, 6, 7))
        assert_matches(gpu_layer.forward(on_gpu(x), training=training), cpu_layer.forward(x, training=training),
                       np.float64)
        if training:
            assert_matches(gpu_layer.backward(on_gpu(g)), cpu_layer.backward(g), np.float64)
    model_cpu, model_gpu = nn.Sequential(cpu_layer), nn.Sequential(gpu_layer)
    for b_cpu, b_gpu in zip(model_cpu.buffers() + model_cpu.parameters(), model_gpu.buffers() + model_gpu.parameters()):
        assert_matches(b_gpu.tensor, b_cpu.data, np.float64, what=b_cpu.name)


@gpu
def test_empty_batch_through_a_linear_layer():
    cpu_layer, gpu_layer = twin_layers(lambda: nn.Linear(3, 2))
    x, g = np.zeros((0, 3)), np.zeros((0, 2))
    assert_matches(gpu_layer.forward(on_gpu(x), training=True), cpu_layer.forward(x, training=True), np.float64)
    assert_matches(gpu_layer.backward(on_gpu(g)), cpu_layer.backward(g), np.float64)
    gpu_layer.to("cpu")  # gradients come along
    for p_cpu, p_gpu in zip(cpu_layer.parameters(), gpu_layer.parameters()):
        np.testing.assert_array_equal(p_gpu.grad, p_cpu.grad)


@gpu
def test_layer_rejects_input_on_another_device():
    conv = nn.Conv2d(1, 2, 3).to("cuda")
    with pytest.raises(ValueError, match=r"Conv2d: input .* is on cpu but the layer's parameters are on cuda:0"):
        conv.forward(np.zeros((1, 1, 5, 5), np.float32))


# ----------------------------------------------------------------------- training

def small_cnn_pair(dtype):
    juanji.manual_seed(31)
    model_cpu = test_nn.small_cnn().to(dtype)
    juanji.manual_seed(31)
    model_gpu = test_nn.small_cnn().to(dtype).to("cuda")
    return model_cpu, model_gpu


def train_steps(model, x, y, steps, seed):
    juanji.manual_seed(seed)  # the same dropout masks on both devices
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    return [model.train_step(x, y, nn.CrossEntropyLoss(), opt) for _ in range(steps)]


@gpu
@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-3), ("float64", 1e-9)], ids=["f32", "f64"])
def test_training_on_cuda_follows_the_cpu(dtype, rtol):
    model_cpu, model_gpu = small_cnn_pair(dtype)
    assert model_gpu.device == "cuda:0" and model_cpu.device == "cpu"
    data = np.random.default_rng(32)
    x = data.standard_normal((32, 1, 14, 14)).astype(dtype)
    y = data.integers(0, 4, 32)
    losses_cpu = train_steps(model_cpu, x, y, 6, seed=33)
    losses_gpu = train_steps(model_gpu, x, y, 6, seed=33)
    np.testing.assert_allclose(losses_gpu, losses_cpu, rtol=rtol)
    for p_cpu, p_gpu in zip(model_cpu.parameters(), model_gpu.parameters()):
        np.testing.assert_allclose(np.asarray(p_gpu.tensor.to("cpu")), p_cpu.data, rtol=rtol, atol=rtol,
                                   err_msg=p_cpu.name)
    loss_cpu, acc_cpu = model_cpu.evaluate(x, y, batch_size=10)
    loss_gpu, acc_gpu = model_gpu.evaluate(x, y, batch_size=10)
    assert loss_gpu == pytest.approx(loss_cpu, rel=rtol)
    assert abs(acc_gpu - acc_cpu) <= 1 / 32  # a near-tie may flip one prediction


@gpu
@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-3), ("float64", 1e-9)], ids=["f32", "f64"])
def test_residual_network_on_cuda_follows_the_cpu(dtype, rtol):
    import test_residual

    models = []
    for device in ("cpu", "cuda"):
        juanji.manual_seed(41)
        models.append(test_residual.small_resnet().to(dtype).to(device))
    model_cpu, model_gpu = models
    data = np.random.default_rng(42)
    x = data.standard_normal((16, 1, 12, 12)).astype(dtype)
    y = data.integers(0, 3, 16)
    np.testing.assert_allclose(train_steps(model_gpu, x, y, 4, seed=43), train_steps(model_cpu, x, y, 4, seed=43),
                               rtol=rtol)
    for p_cpu, p_gpu in zip(model_cpu.parameters() + model_cpu.buffers(), model_gpu.parameters() + model_gpu.buffers()):
        assert p_cpu.name == p_gpu.name
        np.testing.assert_allclose(np.asarray(p_gpu.tensor.to("cpu")), p_cpu.data, rtol=rtol, atol=rtol,
                                   err_msg=p_cpu.name)
    g = data.standard_normal((16, 3)).astype(dtype)
    model_cpu.forward(x, training=True)
    model_gpu.forward(x, training=True)
    assert_matches(model_gpu.backward(on_gpu(g)), np.asarray(model_cpu.backward(g)), dtype, what="grad_x")


@gpu
@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-4), ("float64", 1e-10)], ids=["f32", "f64"])
def test_smoothed_training_step_on_cuda_follows_the_cpu(dtype, rtol):
    data = np.random.default_rng(36)
    x, y = data.standard_normal((48, 6)).astype(dtype), data.integers(0, 5, 48)
    results = []
    for device in ("cpu", "cuda"):
        juanji.manual_seed(37)
        model = nn.Sequential(nn.Linear(6, 5)).to(dtype).to(device)
        loss = nn.CrossEntropyLoss(label_smoothing=0.2)
        step_loss = model.train_step(x, y, loss, optim.SGD(model.parameters(), lr=0.3))
        results.append((step_loss, *model.evaluate(x, y, loss), np.asarray(model.parameters()[0].tensor.to("cpu"))))
    (cpu_step, cpu_loss, cpu_acc, cpu_w), (gpu_step, gpu_loss, gpu_acc, gpu_w) = results
    assert gpu_step == pytest.approx(cpu_step, rel=rtol) and gpu_loss == pytest.approx(cpu_loss, rel=rtol)
    assert gpu_acc == cpu_acc
    np.testing.assert_allclose(gpu_w, cpu_w, rtol=rtol, atol=rtol)


@gpu
def test_training_with_mse_and_labels_already_on_the_gpu():
    juanji.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).to("cuda")
    rng = np.random.default_rng(34)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    target = (x @ rng.standard_normal((3, 2))).astype(np.float32)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    losses = [model.train_step(on_gpu(x), on_gpu(target), nn.MSELoss(), opt) for _ in range(200)]
    assert losses[-1] < 0.1 * losses[0]
    labels = np.argmax(target, axis=1)
    loss = model.train_step(on_gpu(x), on_gpu(labels, "int64"), nn.CrossEntropyLoss(), opt)
    assert np.isfinite(loss)


@gpu
def test_training_step_on_cuda_allocates_nothing_after_the_first():
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 10)).to("cuda")
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = nn.CrossEntropyLoss()
    rng = np.random.default_rng(35)
    x, y = rng.standard_normal((8, 1, 14, 14)).astype(np.float32), rng.integers(0, 10, 8)
    model.train_step(x, y, loss, opt)
    before = juanji.storage_allocations()
    for _ in range(3):
        model.train_step(x, y, loss, opt)
    assert juanji.storage_allocations() == before


@gpu
def test_momentum_follows_the_model_to_the_gpu():
    # SGD state made on the CPU moves with the model: the same trajectory as staying on the CPU.
    juanji.manual_seed(36)
    stay = nn.Sequential(nn.Linear(4, 3)).to("float64")
    juanji.manual_seed(36)
    move = nn.Sequential(nn.Linear(4, 3)).to("float64")
    x, y = np.random.default_rng(37).standard_normal((6, 4)), np.array([0, 1, 2, 0, 1, 2])
    opts = [optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01) for m in (stay, move)]
    for model, opt in zip((stay, move), opts):
        model.train_step(x, y, nn.CrossEntropyLoss(), opt)
    move.to("cuda")
    for _ in range(3):
        for model, opt in zip((stay, move), opts):
            model.train_step(x, y, nn.CrossEntropyLoss(), opt)
    move.to("cpu")
    for a, b in zip(stay.parameters(), move.parameters()):
        np.testing.assert_allclose(b.data, a.data, rtol=1e-10, atol=1e-12)


@gpu
@pytest.mark.parametrize("momentum,nesterov,wd", [(0, False, 0), (0.9, False, 0), (0.9, True, 1e-2), (0.5, False, 0.1)])
def test_sgd_matches_cpu(momentum, nesterov, wd):
    models = []
    for device in ("cpu", "cuda"):
        juanji.manual_seed(38)
        models.append(nn.Sequential(nn.Linear(40, 30)).to("float64").to(device))
    rng = np.random.default_rng(39)
    opts = [optim.SGD(m.parameters(), lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd) for m in models]
    x, y = rng.standard_normal((16, 40)), rng.integers(0, 30, 16)
    for _ in range(4):
        for model, opt in zip(models, opts):
            model.train_step(x, y, nn.CrossEntropyLoss(), opt)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert_matches(b.tensor, a.data, np.float64, what=a.name)


@gpu
@pytest.mark.parametrize("name,kwargs", [("Adam", {}), ("Adam", {"weight_decay": 0.1}), ("AdamW", {}),
                                         ("SGD", {"momentum": 0.9})])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_optimizers_with_clipping_match_cpu(name, kwargs, dtype):
    # max_grad_norm small enough to clip every step: the norm's reduction and the scaling run too
    # (SGD shows the scaling in its update; Adam's m/sqrt(v) hardly does).
    models = []
    for device in ("cpu", "cuda"):
        juanji.manual_seed(40)
        models.append(nn.Sequential(nn.Linear(40, 30)).to(dtype).to(device))
    rng = np.random.default_rng(41)
    opts = [getattr(optim, name)(m.parameters(), lr=0.01, max_grad_norm=0.1, **kwargs) for m in models]
    x, y = rng.standard_normal((16, 40)).astype(dtype), rng.integers(0, 30, 16)
    for _ in range(4):
        for model, opt in zip(models, opts):
            model.train_step(x, y, nn.CrossEntropyLoss(), opt)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert_matches(b.tensor, a.data, np.dtype(dtype).type, what=a.name)


@gpu
def test_bad_label_in_a_cuda_training_step_is_a_value_error():
    model = nn.Sequential(nn.Linear(4, 3)).to("cuda")
    opt = optim.SGD(model.parameters(), lr=0.1)
    before = np.asarray(model.parameters()[0].tensor.to("cpu")).copy()
    with pytest.raises(ValueError, match=r"label 7 at index 1 is out of range \[0, 3\)"):
        model.train_step(np.zeros((3, 4), np.float32), on_gpu([0, 7, 1], "int64"), nn.CrossEntropyLoss(), opt)
    np.testing.assert_array_equal(np.asarray(model.parameters()[0].tensor.to("cpu")), before)


@gpu
def test_model_saved_from_the_gpu_loads_on_the_cpu(tmp_path):
    juanji.manual_seed(40)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).to("cuda")
    model.save(tmp_path / "m.safetensors")
    loaded = juanji.load(tmp_path / "m.safetensors")
    x = np.random.default_rng(41).standard_normal((2, 1, 6, 6)).astype(np.float32)
    assert_matches(model(x), np.asarray(loaded(x)), np.float32)


@gpu
def test_cli_trains_on_the_gpu(tmp_path, capsys):
    import test_cli
    from juanji import cli

    status = cli.main(["train", "--model", "lenet5", "--device", "cuda", "--data", test_cli.SUBSET_DIR,
                       "--epochs", "1", "--limit", "256", "--out", str(tmp_path)])
    assert status == 0, capsys.readouterr().err
    assert "device cuda" in capsys.readouterr().out
    assert (tmp_path / "model.safetensors").exists()


# ----------------------------------------------------------------------- determinism

@gpu
def test_results_are_identical_run_to_run():
    # No float atomics anywhere: split-K weight gradients, bias sums and losses add their
    # partial sums in a fixed order, so a rerun gives the same bits.
    rng = np.random.default_rng(42)
    x, w, gy = (randn(rng, s, np.float32) for s in ((8, 64, 20, 20), (64, 64, 3, 3), (8, 64, 20, 20)))
    a, b, g = (randn(rng, s, np.float32) for s in ((4096, 20), (10, 20), (4096, 10)))
    logits, labels = randn(rng, (700, 10), np.float32), rng.integers(0, 10, 700)
    args = [on_gpu(v) for v in (x, w, gy, a, b, g, logits)] + [on_gpu(labels, "int64")]

    def run(x, w, gy, a, b, g, logits, labels):
        outs = [juanji.conv2d(x, w, padding=1), *juanji.conv2d_backward(gy, x, w, padding=1),
                *juanji.linear_backward(g, a, b), juanji.cross_entropy(logits, labels),
                juanji.global_avg_pool2d(x), juanji.mse_loss(a, a.T.contiguous().T)]
        return [host(o) for o in outs]

    for first, second in zip(run(*args), run(*args)):
        np.testing.assert_array_equal(first, second)
    data = np.random.default_rng(43)
    xs, ys = data.standard_normal((32, 1, 14, 14)).astype(np.float32), data.integers(0, 4, 32)
    losses = [train_steps(small_cnn_pair("float32")[1], xs, ys, 5, seed=44) for _ in range(2)]
    assert losses[0] == losses[1]


# ----------------------------------------------------------------------- device errors

MIXED_DEVICE_CALLS = {
    "conv2d": (lambda: juanji.conv2d(on_gpu(np.ones((1, 1, 4, 4))), np.ones((1, 1, 3, 3))),
               r"x is on cuda:0 but weight is on cpu"),
    "conv2d_bias": (lambda: juanji.conv2d(on_gpu(np.ones((1, 1, 4, 4))), on_gpu(np.ones((2, 1, 3, 3))), np.ones(2)),
                    r"x is on cuda:0 but bias is on cpu"),
    "conv2d_backward": (lambda: juanji.conv2d_backward(np.ones((1, 1, 2, 2)), on_gpu(np.ones((1, 1, 4, 4))),
                                                       on_gpu(np.ones((1, 1, 3, 3)))),
                        r"grad_out is on cpu but x is on cuda:0"),
    "linear": (lambda: juanji.linear(np.ones((2, 3)), on_gpu(np.ones((4, 3)))), r"x is on cpu but weight is on cuda:0"),
    "linear_bias": (lambda: juanji.linear(on_gpu(np.ones((2, 3))), on_gpu(np.ones((4, 3))), np.ones(4)),
                    r"x is on cuda:0 but bias is on cpu"),
    "max_pool2d_backward": (lambda: juanji.max_pool2d_backward(np.ones((1, 1, 2, 2)), on_gpu(np.ones((1, 1, 4, 4))), 2),
                            r"grad_out is on cpu but x is on cuda:0"),
    "relu_backward": (lambda: juanji.relu_backward(on_gpu(np.ones(3)), np.ones(3)),
                      r"grad_out is on cuda:0 but x is on cpu"),
    "softmax_backward": (lambda: juanji.softmax_backward(np.ones(3), on_gpu(np.ones(3))),
                         r"grad_out is on cpu but x is on cuda:0"),
    "mse_loss": (lambda: juanji.mse_loss(on_gpu(np.ones(3)), np.ones(3)), r"z is on cuda:0 but y is on cpu"),
    "cross_entropy": (lambda: juanji.cross_entropy(on_gpu(np.ones((2, 3))), np.array([0, 1])),
                      r"logits is on cuda:0 but labels is on cpu"),
}


@gpu
@pytest.mark.parametrize("call,message", MIXED_DEVICE_CALLS.values(), ids=MIXED_DEVICE_CALLS.keys())
def test_mixing_devices_is_a_value_error_naming_both(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@gpu
def test_parameters_of_a_cuda_model_are_not_numpy_views():
    model = nn.Sequential(nn.Linear(2, 2)).to("cuda")
    with pytest.raises(ValueError, match=r"cuda:0.*to\('cpu'\)"):
        _ = model.parameters()[0].data


# ----------------------------------------------------------------------- everywhere

def test_to_returns_the_model_and_takes_devices_and_dtypes():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    assert model.to("cpu") is model and model.device == "cpu"
    assert model.to("float64") is model and model.parameters()[0].data.dtype == np.float64
    layer = nn.Conv2d(1, 2, 3)
    assert layer.to(np.float64) is layer and layer.parameters()[0].device == "cpu"
    with pytest.raises(ValueError, match="cuda:N"):
        model.to("cuda:x")
    with pytest.raises(TypeError, match="dtype"):
        model.to("float16")


without_gpu = pytest.mark.skipif(HAS_GPU, reason="a CUDA GPU is visible: the tests above use it")


@without_gpu
def test_cuda_tensors_without_a_gpu_are_a_clear_error():
    with pytest.raises(ValueError, match="cuda:0"):
        juanji.zeros(2, device="cuda")
    with pytest.raises(ValueError, match="cuda:0"):
        juanji.tensor(np.ones(3), device="cuda")
    with pytest.raises(ValueError, match="cuda:0"):
        juanji.cuda_synchronize()


@without_gpu
def test_moving_a_model_without_a_gpu_is_a_clear_error_and_moves_nothing():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 2))
    before = [p.data.copy() for p in model.parameters() + model.buffers()]
    with pytest.raises(ValueError, match="cuda:0"):
        model.to("cuda")
    assert model.device == "cpu"
    for p, values in zip(model.parameters() + model.buffers(), before):
        assert p.device == "cpu"
        np.testing.assert_array_equal(p.data, values)
    with pytest.raises(ValueError, match="cuda:1"):
        nn.Linear(2, 2).to("cuda:1")

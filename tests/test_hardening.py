"""Hostile input, classes at a time: empty tensors, allocation failures inside parallel regions,
read-only memory, unchecked gradients, several threads on one model, thread counts, indexing,
layer reuse and the messages bad arguments get. Each class is tested across the ops it touches."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
import threading

import numpy as np
import pytest

import juanji
from juanji import models, nn, optim

f32 = np.float32


def under_address_sanitizer() -> bool:
    # Its shadow memory does not work under RLIMIT_AS, and it aborts on impossible allocations.
    with open("/proc/self/maps") as maps:
        return "libasan" in maps.read()


needs_plain_allocator = pytest.mark.skipif(
    not sys.platform.startswith("linux") or under_address_sanitizer(),
    reason="caps memory with RLIMIT_AS (Linux, not under AddressSanitizer)")


def run_isolated(code: str, memory_mib: int | None = None) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter (optionally under an address-space limit): a crash there
    shows as a signal in returncode instead of taking the test process down."""
    prefix = ""
    if memory_mib:
        prefix = (
            "import resource\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({memory_mib} << 20, {memory_mib} << 20))\n"
        )
    return subprocess.run([sys.executable, "-c", prefix + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


# ---- empty tensors: shape-correct results wherever torch gives one --------------------------

EMPTY_POOL_SHAPES = [(0, 3, 6, 6), (0, 1, 5, 4), (0, 3, 7)]


@pytest.mark.parametrize("shape", EMPTY_POOL_SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_of_an_empty_batch(shape, kind):
    torch = pytest.importorskip("torch")
    dims = len(shape) - 2
    x = np.zeros(shape, f32)
    op = getattr(juanji, f"{kind}_pool{dims}d")
    torch_op = getattr(torch.nn.functional, f"{kind}_pool{dims}d")
    for kwargs in ({"kernel_size": 2}, {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}):
        y = op(x, **kwargs)
        assert y.shape == tuple(torch_op(torch.from_numpy(x), **kwargs).shape)
        gx = getattr(juanji, f"{kind}_pool{dims}d_backward")(np.zeros(y.shape, f32), x, **kwargs)
        assert gx.shape == shape


def test_pooling_without_channels():
    x = np.zeros((2, 0, 4, 4), f32)
    assert juanji.max_pool2d(x, 2).shape == (2, 0, 2, 2)
    assert juanji.max_pool2d_backward(np.zeros((2, 0, 2, 2), f32), x, 2).shape == x.shape
    assert juanji.max_pool1d(np.zeros((2, 0, 4), f32), 2).shape == (2, 0, 2)
    assert juanji.global_avg_pool2d(x).shape == (2, 0, 1, 1)


def test_global_average_of_empty_planes_is_nan():
    y = np.asarray(juanji.global_avg_pool2d(np.zeros((2, 3, 0, 4), f32)))
    assert y.shape == (2, 3, 1, 1) and np.isnan(y).all()
    gx = juanji.global_avg_pool2d_backward(np.ones((2, 3, 1, 1), f32), np.zeros((2, 3, 0, 4), f32))
    assert gx.shape == (2, 3, 0, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dims", [1, 2])
def test_convolution_of_an_empty_batch(dims, dtype):
    spatial = (6, 5)[:dims] if dims == 2 else (9,)
    x = np.zeros((0, 4) + spatial, dtype)
    w = np.ones((4, 2) + (3,) * dims, dtype)
    conv = getattr(juanji, f"conv{dims}d")
    y = conv(x, w, np.ones(4, dtype), padding=1, groups=2)
    assert y.shape == (0, 4) + spatial
    gx, gw, gb = getattr(juanji, f"conv{dims}d_backward")(np.zeros(y.shape, dtype), x, w, padding=1, groups=2)
    assert gx.shape == x.shape
    np.testing.assert_array_equal(np.asarray(gw), np.zeros_like(w))
    np.testing.assert_array_equal(np.asarray(gb), np.zeros(4, dtype))


def test_convolution_without_input_channels_is_its_bias():
    x = np.zeros((2, 0, 5, 5), f32)
    w = np.zeros((3, 0, 3, 3), f32)
    bias = np.array([1.0, -2.0, 0.5], f32)
    y = np.asarray(juanji.conv2d(x, w, bias))
    np.testing.assert_array_equal(y, np.broadcast_to(bias[None, :, None, None], (2, 3, 3, 3)))
    dy = np.arange(2 * 3 * 9, dtype=f32).reshape(2, 3, 3, 3)
    gx, gw, gb = juanji.conv2d_backward(dy, x, w)
    assert gx.shape == x.shape and gw.shape == w.shape
    np.testing.assert_array_equal(np.asarray(gb), dy.sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("n,k,m", [(0, 3, 2), (4, 0, 2), (4, 3, 0)], ids=str)
def test_linear_with_an_empty_dimension(n, k, m):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, k)).astype(f32)
    w = rng.standard_normal((m, k)).astype(f32)
    b = rng.standard_normal(m).astype(f32)
    np.testing.assert_allclose(np.asarray(juanji.linear(x, w, b)), x @ w.T + b, atol=1e-6)
    dy = rng.standard_normal((n, m)).astype(f32)
    gx, gw, gb = juanji.linear_backward(dy, x, w)
    np.testing.assert_allclose(np.asarray(gx), dy @ w, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gw), dy.T @ x, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gb), dy.sum(axis=0), atol=1e-6)


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0)], ids=str)
def test_elementwise_and_losses_of_empty_tensors(shape):
    x = np.zeros(shape, f32)
    for name in ("relu", "sigmoid", "tanh", "leaky_relu"):
        assert getattr(juanji, name)(x).shape == shape
        assert getattr(juanji, f"{name}_backward")(x, x).shape == shape
    for name in ("softmax", "log_softmax"):
        assert getattr(juanji, name)(x, -1).shape == shape
    assert juanji.mse_loss(x, x, reduction="none").shape == shape
    assert juanji.mse_loss(x, x, reduction="sum").item() == 0.0
    assert np.isnan(juanji.mse_loss(x, x).item())  # the mean of nothing, as torch and NumPy give it


def test_cross_entropy_of_an_empty_batch():
    logits, labels = np.zeros((0, 4), f32), np.zeros(0, np.int64)
    assert juanji.cross_entropy(logits, labels, reduction="none").shape == (0,)
    assert juanji.cross_entropy(logits, labels, reduction="sum").item() == 0.0
    assert np.isnan(juanji.cross_entropy(logits, labels).item())
    assert juanji.cross_entropy_backward(logits, labels).shape == (0, 4)


@pytest.mark.parametrize("make", [models.lenet5, models.convnet], ids=["lenet5", "convnet"])
def test_models_on_an_empty_batch(make):
    model = make()
    x = np.zeros((0, 1, 28, 28), f32)
    assert model(x).shape == (0, 10)
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="empty batch"):
        model.train_step(x, np.zeros(0, np.int64), nn.CrossEntropyLoss(), opt)
    with pytest.raises(ValueError, match="empty batch"):
        model.evaluate(x, np.zeros(0, np.int64))


def test_layers_forward_and_backward_on_an_empty_batch():
    layers = [
        (nn.Conv2d(2, 3, 3, padding=1), (0, 2, 5, 5)),
        (nn.Conv1d(2, 3, 3), (0, 2, 7)),
        (nn.Linear(4, 3), (0, 4)),
        (nn.MaxPool2d(2), (0, 2, 4, 4)),
        (nn.AvgPool1d(2), (0, 2, 4)),
        (nn.GlobalAvgPool2d(), (0, 2, 4, 4)),
        (nn.ReLU(), (0, 5)),
        (nn.Softmax(), (0, 5)),
        (nn.Dropout(0.5), (0, 5)),
        (nn.Flatten(), (0, 2, 3)),
    ]
    for layer, shape in layers:
        y = layer.forward(np.zeros(shape, f32), training=True)
        gx = layer.backward(np.zeros(y.shape, f32))
        assert gx.shape == shape, layer


# ---- allocation failures inside parallel regions -------------------------------------------


def test_huge_padding_takes_the_bounded_path():
    # The direct kernel would pad the 1x1 image to 50001x50001 (10 GB of planes) for one output.
    y = juanji.conv2d(np.ones((1, 1, 1, 1), f32), np.ones((1, 1, 2, 2), f32), dilation=50000, padding=25000)
    np.testing.assert_array_equal(np.asarray(y), np.zeros((1, 1, 1, 1), f32))
    torch = pytest.importorskip("torch")
    x = np.arange(1, 10, dtype=f32).reshape(1, 1, 3, 3)
    w = np.arange(1, 5, dtype=f32).reshape(1, 1, 2, 2)
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), dilation=40, padding=30)
    np.testing.assert_array_equal(np.asarray(juanji.conv2d(x, w, dilation=40, padding=30)), expected.numpy())


@needs_plain_allocator
@pytest.mark.parametrize("threads", [1, 2])
def test_scratch_that_cannot_be_had_inside_a_parallel_region_is_a_memory_error(threads):
    # The address-space limit leaves room for the output but not for the direct kernel's
    # per-thread padded planes (~100 MB each), which are asked for inside the OpenMP region: the
    # failure must come out as a MemoryError naming the bytes, not terminate the process.
    result = run_isolated(f"""
        import resource
        import numpy as np, juanji
        juanji.set_num_threads({threads})
        x = np.ones((2, 4, 2500, 2500), np.float32)
        w = np.ones((4, 4, 3, 3), np.float32)
        juanji.conv2d(x[:, :, :40, :40].copy(), w, padding=1)  # starts the thread pool
        with open("/proc/self/status") as status:
            size = next(int(line.split()[1]) << 10 for line in status if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (size + x.nbytes + (48 << 20), resource.RLIM_INFINITY))
        try:
            juanji.conv2d(x, w, padding=1)
            print("ran")
        except MemoryError as e:
            print("MemoryError:", e)
        """)
    assert result.returncode == 0, result.stderr
    assert "terminate" not in result.stderr
    assert result.stdout.startswith("MemoryError: could not allocate "), result.stdout
    assert "bytes for scratch (padded or unfolded convolution input)" in result.stdout


# ---- read-only memory --------------------------------------------------------------------


def test_read_only_numpy_through_dlpack_is_not_written():
    a = np.arange(4, dtype=f32)
    a.flags.writeable = False
    t = juanji.from_dlpack(a)
    with pytest.raises(ValueError, match="read-only"):
        t.fill_(9)
    np.testing.assert_array_equal(a, np.arange(4, dtype=f32))
    assert not np.asarray(t).flags.writeable
    assert not t[1:].numpy().flags.writeable  # views share the flag


def test_read_only_memory_map_is_not_written(tmp_path):
    path = tmp_path / "values.bin"
    np.arange(16, dtype=f32).tofile(path)
    mapped = np.memmap(path, dtype=f32, mode="r")
    for t in (juanji.from_dlpack(mapped), juanji.from_numpy(mapped)):
        with pytest.raises(ValueError, match="read-only"):
            t.fill_(1)
        # Reading is fine and shares the mapping.
        y = juanji.conv2d(t.reshape(1, 1, 4, 4), np.ones((1, 1, 2, 2), f32))
        assert y.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(np.fromfile(path, dtype=f32), np.arange(16, dtype=f32))


def test_read_only_flag_travels_through_dlpack_export():
    a = np.arange(6, dtype=f32)
    a.flags.writeable = False
    t = juanji.from_numpy(a)
    back = np.from_dlpack(t)
    assert not back.flags.writeable


def test_writable_arrays_stay_shared_and_writable():
    a = np.arange(4, dtype=f32)
    t = juanji.from_numpy(a)
    t.fill_(2)
    np.testing.assert_array_equal(a, np.full(4, 2, f32))


# ---- gradients checked against the forward ------------------------------------------------

GRAD_LAYERS = [
    ("Linear", lambda: nn.Linear(3, 2), (4, 3)),
    ("Conv2d", lambda: nn.Conv2d(1, 2, 3), (2, 1, 5, 5)),
    ("Conv1d", lambda: nn.Conv1d(1, 2, 3), (2, 1, 7)),
    ("MaxPool2d", lambda: nn.MaxPool2d(2), (2, 1, 4, 4)),
    ("AvgPool2d", lambda: nn.AvgPool2d(2), (2, 1, 4, 4)),
    ("GlobalAvgPool2d", nn.GlobalAvgPool2d, (2, 3, 4, 4)),
    ("ReLU", nn.ReLU, (4, 3)),
    ("Tanh", nn.Tanh, (4, 3)),
    ("Softmax", nn.Softmax, (4, 3)),
    ("Dropout", lambda: nn.Dropout(0.5), (4, 3)),
    ("Flatten", nn.Flatten, (2, 3, 4)),
    ("BatchNorm2d", lambda: nn.BatchNorm2d(2), (3, 2, 4, 4)),
]


@pytest.mark.parametrize("name,make,shape", GRAD_LAYERS, ids=[g[0] for g in GRAD_LAYERS])
def test_backward_checks_its_gradient(name, make, shape):
    layer = make()
    with pytest.raises(ValueError, match="no forward"):
        layer.backward(np.ones((1,), f32))
    y = layer.forward(np.ones(shape, f32), training=True)
    wrong_shapes = [(1,) + y.shape[1:], y.shape + (1,), y.shape[:-1] + (y.shape[-1] + 1,)]
    for wrong in wrong_shapes:
        with pytest.raises(ValueError, match=r"grad_out has shape .* last forward's output has shape"):
            layer.backward(np.ones(wrong, f32))
    with pytest.raises(TypeError, match="float64"):
        layer.backward(np.ones(y.shape, np.float64))
    assert layer.backward(np.ones(y.shape, f32)).shape == shape


# ---- one model, several threads -----------------------------------------------------------


def test_training_and_inference_on_one_model_from_two_threads():
    juanji.manual_seed(0)
    model = models.lenet5()
    opt = optim.SGD(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    x = rng.random((32, 1, 28, 28), dtype=f32)
    labels = rng.integers(0, 10, 32)
    small = rng.random((3, 1, 28, 28), dtype=f32)
    errors, shapes = [], set()
    stop = threading.Event()

    def train():
        try:
            for _ in range(40):
                model.train_step(x, labels, nn.CrossEntropyLoss(), opt)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)
        finally:
            stop.set()

    def infer():
        try:
            while not stop.is_set():
                shapes.add(model(small).shape)
                model.evaluate(x, labels, batch_size=16)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=train), threading.Thread(target=infer), threading.Thread(target=infer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert shapes == {(3, 10)}


def test_concurrent_calls_give_the_serial_results():
    juanji.manual_seed(1)
    model = models.convnet()
    model.eval()
    inputs = [np.random.default_rng(i).random((4, 1, 28, 28), dtype=f32) for i in range(6)]
    expected = [np.asarray(model(x)).copy() for x in inputs]
    results = [None] * len(inputs)

    def call(i):
        for _ in range(10):
            results[i] = np.asarray(model(inputs[i])).copy()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def concat_model():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Concat(nn.Conv2d(4, 3, 1), nn.Sequential(nn.Conv2d(4, 2, 3, padding=1), nn.ReLU())),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(5 * 14 * 14, 10))


class Doubler(nn.Layer):
    """A Python layer: a model with one runs its eval calls one at a time on itself."""

    def forward(self, x):
        self.last_input = x
        return x * 2

    def backward(self, grad_out):
        return grad_out * 2


def calls_from_threads(model, inputs, threads=4, rounds=5):
    """Every thread calls model(x) on every input, rounds times; returns each thread's last
    outputs and the errors raised."""
    results, errors = [None] * threads, []

    def call(t):
        try:
            for _ in range(rounds):
                results[t] = [np.asarray(model(x)).copy() for x in inputs[t:] + inputs[:t]]
        except Exception as e:  # noqa: BLE001 (reported by the caller)
            errors.append(e)

    workers = [threading.Thread(target=call, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return [r[-t:] + r[:-t] if t else r for t, r in enumerate(results)], errors


@pytest.mark.parametrize("make_model", [models.lenet5, models.convnet, models.resnet, concat_model])
@pytest.mark.parametrize("setting", ["float32", "float64", "bf16"])
def test_eval_calls_on_one_model_from_four_threads_give_the_serial_results(make_model, setting):
    juanji.manual_seed(2)
    model = make_model()
    rng = np.random.default_rng(0)
    batch = rng.random((8, 1, 28, 28), dtype=f32)
    # Trained a step, so that the batch norms' running statistics are not the initial ones.
    model.train_step(batch, np.arange(8) % 10, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.05))
    dtype = np.float64 if setting == "float64" else f32
    model.to(dtype)
    if setting == "bf16":
        model.set_precision("bf16")
    model.eval()
    inputs = [rng.random((n, 1, 28, 28)).astype(dtype) for n in (1, 3, 1, 8)]
    # The model's own layers one after the other: no replica, no fused pass.
    serial = [np.asarray(model.activations(x)[-1]) for x in inputs]
    results, errors = calls_from_threads(model, inputs)
    assert not errors, errors
    for outputs in results:
        for got, want in zip(outputs, serial):
            assert got.dtype == dtype
            np.testing.assert_array_equal(got, want)


def test_eval_calls_on_a_model_with_a_python_layer_run_one_at_a_time_and_agree():
    model = nn.Sequential(nn.Linear(6, 8), Doubler(), nn.ReLU(), nn.Linear(8, 3)).eval()
    inputs = [np.random.default_rng(i).random((i + 1, 6), dtype=f32) for i in range(4)]
    serial = [np.asarray(model.activations(x)[-1]) for x in inputs]
    results, errors = calls_from_threads(model, inputs)
    assert not errors, errors
    for outputs in results:
        for got, want in zip(outputs, serial):
            np.testing.assert_array_equal(got, want)


def test_eval_calls_see_every_change_to_the_model():
    """Calls run on replicas of the layers that keep their buffers from call to call: each must
    compute with the model as it is at that moment."""
    juanji.manual_seed(3)
    model = concat_model().eval()
    x = np.random.default_rng(1).random((2, 1, 28, 28), dtype=f32)

    def check():
        np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(model.activations(x)[-1]))
        return np.asarray(model(x)).copy()

    first = check()
    model.train_step(x, np.array([1, 2]), nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.5))
    assert not np.array_equal(check(), first)  # new weights and running statistics
    model.parameters()[0].data = np.zeros((4, 1, 3, 3), f32)
    zeroed = check()
    model[0].bias[...] = 1  # in place, through the NumPy view
    assert not np.array_equal(check(), zeroed)
    model.load_state_dict({k: v * 2 for k, v in model.state_dict().items()})
    assert not np.array_equal(check(), zeroed)
    model.set_precision("bf16")
    check()
    model.set_precision("fp32")
    model.to(np.float64)
    assert model(x.astype(np.float64)).dtype == "float64"
    model.to(np.float32)
    model.append(nn.Softmax())
    assert check().sum(axis=1) == pytest.approx([1, 1])
    with pytest.raises(TypeError, match="Conv2d: input is float64 but the layer's parameters are float32"):
        model(x.astype(np.float64))


def test_backward_after_an_eval_call_is_refused():
    model = models.lenet5()
    x = np.zeros((2, 1, 28, 28), f32)
    y = model.forward(x, training=True)
    model(x)  # eval mode: the model's training-mode forward is no longer the last
    with pytest.raises(ValueError, match="backward needs a training-mode forward"):
        model.backward(np.ones(np.asarray(y).shape, f32))
    model.forward(x, training=True)
    assert model.backward(np.ones(np.asarray(y).shape, f32)) is not None


def test_a_layer_called_from_threads_while_its_model_trains():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = optim.SGD(model.parameters(), lr=0.01)
    first = model[0]
    x = np.ones((32, 8), f32)
    errors = []

    def train():
        for _ in range(200):
            model.train_step(x, np.zeros(32, np.int64), nn.CrossEntropyLoss(), opt)

    def poke():
        # Each call is atomic, the pair is not: the model's step may run in between, and then
        # backward refuses the gradient of a forward that is no longer the last one, or finds that
        # the step's backward has used up what its forward kept.
        for _ in range(200):
            y = first.forward(np.ones((5, 8), f32), training=True)
            try:
                assert first.backward(np.ones(y.shape, f32)).shape == (5, 8)
            except ValueError as e:
                if "last forward's output has shape (32, 16)" not in str(e) and "used up what" not in str(e):
                    errors.append(e)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

    threads = [threading.Thread(target=train), threading.Thread(target=poke)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# ---- the thread count ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -1, 10**6, 2**31, 2**70])
def test_thread_count_out_of_range(n):
    before = juanji.get_num_threads()
    with pytest.raises(ValueError, match=r"\bn\b"):
        juanji.set_num_threads(n)
    assert juanji.get_num_threads() == before


@pytest.mark.parametrize("bad", [2.0, "2", None, True])
def test_thread_count_must_be_an_int(bad):
    with pytest.raises(TypeError, match=r"\bn\b"):
        juanji.set_num_threads(bad)


def test_thread_count_is_process_wide():
    before = juanji.get_num_threads()
    try:
        juanji.set_num_threads(np.int64(1))
        seen = []
        worker = threading.Thread(target=lambda: seen.append(juanji.get_num_threads()))
        worker.start()
        worker.join()
        assert seen == [1]
        juanji.set_num_threads(3)
        x = np.random.default_rng(0).random((8, 3, 16, 16), dtype=f32)
        w = np.ones((4, 3, 3, 3), f32)
        results = []
        worker = threading.Thread(target=lambda: results.append(np.asarray(juanji.conv2d(x, w))))
        worker.start()
        worker.join()
        np.testing.assert_array_equal(results[0], np.asarray(juanji.conv2d(x, w)))
    finally:
        juanji.set_num_threads(before)


# ---- indexing --------------------------------------------------------------------------


INDEXES = [True, False, None, (None, 1), (True, 0), (Ellipsis, 1), (1, Ellipsis), (0, None, slice(1, 3)),
           np.int64(2), (np.int32(1), np.int64(-1)), slice(None, None, 2), -1]


@pytest.mark.parametrize("key", INDEXES, ids=repr)
def test_indexing_follows_numpy(key):
    a = np.arange(24, dtype=np.float64).reshape(3, 4, 2)
    got = juanji.tensor(a)[key]
    want = a[key]
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got), want)


def test_indexing_errors():
    t = juanji.tensor(np.zeros((3, 4)))
    with pytest.raises(IndexError, match="out of bounds"):
        t[3]
    with pytest.raises(IndexError, match="out of bounds"):
        t[0, -5]
    with pytest.raises(ValueError, match="too many indices"):
        t[0, 0, 0]
    with pytest.raises(ValueError, match="single ellipsis"):
        t[..., ...]
    with pytest.raises(TypeError, match="index"):
        t["a"]
    assert len(list(t)) == 3


# ---- layer reuse ----------------------------------------------------------------------------


def test_a_layer_joins_one_model_only():
    shared = nn.Linear(3, 2)
    first = nn.Sequential(shared)
    with pytest.raises(ValueError, match="belongs to another container"):
        nn.Sequential(nn.ReLU(), shared)
    assert [p.name for p in first.parameters()] == ["0.weight", "0.bias"]
    twice = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="earlier in this Sequential"):
        nn.Sequential(twice, nn.Tanh(), twice)
    with tempfile.TemporaryDirectory() as directory:
        first.save(f"{directory}/m.safetensors")
        loaded = juanji.load(f"{directory}/m.safetensors")
        np.testing.assert_array_equal(np.asarray(loaded(np.ones((1, 3), f32))), np.asarray(first(np.ones((1, 3), f32))))


def test_a_layer_is_free_again_when_its_model_goes():
    layer = nn.Linear(3, 2)
    model = nn.Sequential(layer)
    del model
    import gc

    gc.collect()
    assert len(nn.Sequential(layer).parameters()) == 2


# ---- messages -----------------------------------------------------------------------------


def test_int_arguments_name_themselves():
    x, w = np.ones((1, 1, 4, 4), f32), np.ones((1, 1, 2, 2), f32)
    with pytest.raises(ValueError, match=r"stride: 18446744073709551616 does not fit"):
        juanji.conv2d(x, w, stride=2**64)
    with pytest.raises(ValueError, match=r"shape: 18446744073709551616 does not fit"):
        juanji.zeros(2**64)
    with pytest.raises(TypeError, match="kernel_size"):
        juanji.max_pool2d(x, 2.5)
    with pytest.raises(TypeError, match="params"):
        optim.SGD([1, 2], lr=0.1)
    np.testing.assert_array_equal(np.asarray(juanji.conv2d(x, w, stride=np.int64(2))),
                                  np.asarray(juanji.conv2d(x, w, stride=2)))
    assert juanji.zeros(np.int64(2), np.int32(3)).shape == (2, 3)
    assert juanji.max_pool2d(x, np.int64(2), stride=(np.int16(2), 2)).shape == (1, 1, 2, 2)


def test_dlpack_dtypes_and_devices_are_named():
    torch = pytest.importorskip("torch")
    for dtype, name in [(torch.float16, "float16"), (torch.uint8, "uint8"),
                        (torch.int32, "int32"), (torch.complex64, "complex64"), (torch.bool, "bool")]:
        with pytest.raises(TypeError, match=f"x has dtype {name};"):
            juanji.from_dlpack(torch.zeros(3, dtype=dtype))


def test_large_unsigned_labels_are_not_wrapped():
    logits = np.zeros((2, 3), f32)
    with pytest.raises(ValueError, match="label 18446744073709551615 is out of range"):
        juanji.cross_entropy(logits, np.array([0, 2**64 - 1], np.uint64))
    with pytest.raises(ValueError, match="label 18446744073709551615 is out of range"):
        models.lenet5().evaluate(np.zeros((2, 1, 28, 28), f32), np.array([0, 2**64 - 1], np.uint64))


def test_reductions_listed_are_the_ones_taken():
    logits, labels = np.zeros((2, 3), f32), np.array([0, 1])
    for op in (juanji.cross_entropy, juanji.cross_entropy_backward):
        with pytest.raises(ValueError) as info:
            op(logits, labels, reduction="bogus")
        assert "half_sum" not in str(info.value)
        with pytest.raises(ValueError):
            op(logits, labels, reduction="half_sum")
    with pytest.raises(ValueError, match="half_sum"):
        juanji.mse_loss(logits, logits, reduction="bogus")


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -0.1])
def test_learning_rate_setter_checks_like_the_constructor(lr):
    opt = optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.lr = lr
    assert opt.lr == 0.1
    with pytest.raises(ValueError, match="lr"):
        optim.SGD(nn.Linear(2, 2).parameters(), lr=lr)


@needs_plain_allocator
def test_memory_error_says_how_many_bytes():
    result = run_isolated("""
        import juanji
        try:
            juanji.empty(1 << 40, dtype="float64")
        except MemoryError as e:
            print(e)
        """, memory_mib=2048)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"could not allocate {8 << 40} bytes for tensor storage"


@pytest.mark.parametrize("make", [
    lambda: optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1, weight_decay=float("inf")),
    lambda: optim.StepLR(optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), 1, gamma=float("inf")),
    lambda: nn.LeakyReLU(float("nan")),
    lambda: nn.LeakyReLU(float("inf")),
    lambda: juanji.leaky_relu(np.ones(3, f32), float("nan")),
    lambda: juanji.leaky_relu_backward(np.ones(3, f32), np.ones(3, f32), float("-inf")),
], ids=["weight_decay", "gamma", "slope_nan", "slope_inf", "functional", "functional_backward"])
def test_non_finite_settings_are_refused(make):
    # Each would turn every later value into NaN or infinity without a word.
    with pytest.raises(ValueError, match="finite"):
        make()


def test_seed_range():
    juanji.manual_seed(np.uint64(2**64 - 1))
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match=r"seed: must be in \[0, 2\*\*64\)"):
            juanji.manual_seed(bad)
    with pytest.raises(TypeError, match="seed"):
        juanji.manual_seed(1.5)


def test_a_refused_model_leaves_its_layers_free():
    layer = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="earlier in this Sequential"):
        nn.Sequential(layer, nn.ReLU(), layer)
    model = nn.Sequential(nn.Tanh(), layer)
    assert [p.name for p in model.parameters()] == ["1.weight", "1.bias"]


def test_a_layer_moved_to_a_new_model_is_named_there(tmp_path):
    import gc

    layer = nn.Linear(2, 2)
    first = nn.Sequential(layer)
    del first
    gc.collect()
    second = nn.Sequential(nn.ReLU(), layer)
    assert [p.name for p in second.parameters()] == ["1.weight", "1.bias"]
    second.save(tmp_path / "m.safetensors")
    x = np.ones((1, 2), f32)
    np.testing.assert_array_equal(np.asarray(juanji.load(tmp_path / "m.safetensors")(x)), np.asarray(second(x)))


class running_elsewhere:
    """Runs layer.forward in a loop on another thread for the with-block; on leaving, the thread
    must stop within 30 s (a deadlock keeps it waiting)."""

    def __init__(self, layer):
        self.stop = threading.Event()
        self.worker = threading.Thread(target=self.work, args=(layer,))

    def work(self, layer):
        while not self.stop.is_set():
            layer.forward(np.ones((8, 64), f32))

    def __enter__(self):
        self.worker.start()

    def __exit__(self, *exc):
        self.stop.set()
        self.worker.join(timeout=30)
        assert not self.worker.is_alive()


def test_deleting_a_model_while_its_layer_runs_elsewhere():
    # The model's destructor runs with the GIL held: it must not wait for a layer's lock, whose
    # holder may need the GIL.
    for _ in range(50):
        model = nn.Sequential(nn.Linear(64, 64))
        with running_elsewhere(model[0]):
            del model


@pytest.mark.parametrize("make,shape",
                         [(lambda: nn.MaxPool2d(2), (1, 1, 4, 4)), (lambda: nn.BatchNorm2d(1), (2, 1, 4, 4))],
                         ids=["MaxPool2d", "BatchNorm2d"])
def test_backward_after_an_eval_forward_is_refused(make, shape):
    layer = make()
    layer.forward(np.random.default_rng(0).random(shape, dtype=f32), training=True)
    y = layer.forward(np.random.default_rng(1).random(shape, dtype=f32), training=False)
    with pytest.raises(ValueError, match="training-mode forward"):
        layer.backward(np.ones(y.shape, f32))


def test_read_only_tensors_are_not_exported_without_the_flag():
    a = np.arange(4, dtype=f32)
    a.flags.writeable = False
    t = juanji.from_numpy(a)
    with pytest.raises(BufferError, match="read-only"):
        t.__dlpack__()
    assert not np.from_dlpack(t).flags.writeable


def test_index_whose_index_method_raises():
    class Bad:
        def __index__(self):
            raise RuntimeError("no index here")

    with pytest.raises(RuntimeError, match="no index here"):
        juanji.zeros(3)[Bad()]


def test_bools_and_huge_ints_are_not_layer_sizes():
    for make in (lambda: nn.Conv2d(True, 4, 3), lambda: nn.Linear(True, True), lambda: nn.BatchNorm2d(True),
                 lambda: juanji.conv2d(np.ones((1, 2, 3, 3), f32), np.ones((2, 1, 1, 1), f32), groups=True)):
        with pytest.raises(TypeError, match="(in|out)_(channels|features)|num_features|groups"):
            make()
    with pytest.raises(ValueError, match="out_features: 18446744073709551616 does not fit"):
        nn.Linear(2, 2**64)
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    assert model[np.int64(1)].type == "ReLU"
    with pytest.raises(ValueError, match="batch_size"):
        model.evaluate(np.ones((2, 2), f32), np.zeros(2, np.int64), batch_size=2**64)


def test_bools_are_not_dims_kernel_sizes_or_schedule_lengths():
    x = np.ones((2, 3), f32)
    optimizer = optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    uses = {"dim": [lambda: juanji.softmax(x, dim=True), lambda: juanji.log_softmax_backward(x, x, dim=True)],
            "n": [lambda: juanji.kernels.box(True), lambda: juanji.kernels.gaussian(True, 1.0)],
            "dim1": [lambda: juanji.tensor(x).transpose(0, True)],
            "step_size": [lambda: optim.StepLR(optimizer, True)], "t_max": [lambda: optim.CosineLR(optimizer, True)]}
    for name, calls in uses.items():
        for call in calls:
            with pytest.raises(TypeError, match=f"^{name}: expected an int, got bool True$"):
                call()
    assert juanji.tensor(x).transpose(np.int64(0), 1).shape == (3, 2)
    assert optim.StepLR(optimizer, np.int64(2)).epoch == 0


def test_a_checkpoint_mixing_dtypes_is_refused(tmp_path):
    safetensors = pytest.importorskip("safetensors.numpy")
    model = nn.Sequential(nn.Linear(2, 3))
    model.save(tmp_path / "m.safetensors")
    tensors = safetensors.load_file(tmp_path / "m.safetensors")
    with open(tmp_path / "m.safetensors", "rb") as f:
        import json
        import struct

        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    tensors["0.weight"] = tensors["0.weight"].astype(np.float64)
    safetensors.save_file(tensors, tmp_path / "mixed.safetensors", metadata=header["__metadata__"])
    with pytest.raises(ValueError, match="share one dtype"):
        juanji.load(tmp_path / "mixed.safetensors")


def test_a_layer_joins_a_model_while_it_runs_elsewhere():
    # Joining takes the layer's lock: the constructor must not wait for it with the GIL held.
    layer = nn.Linear(64, 64)
    with running_elsewhere(layer):
        for _ in range(50):
            model = nn.Sequential(layer)
            del model

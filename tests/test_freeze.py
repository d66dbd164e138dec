"""Sequential.freeze(): a copy of a model for inference whose convolutions keep the layouts their
kernels make of the weights. Its outputs must be the model's eval-mode outputs bit for bit, on every
forward algorithm, batch size (which changes the algorithm, so one layer keeps several layouts),
thread and call; nothing may change it, and nothing done to the model may reach it."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

import juanji
from juanji import _core as core
from juanji import models, nn, optim

f32 = np.float32


def trained(make_model, seed=0):
    """A model after one training step, so that its batch norms' running statistics are not the
    initial ones."""
    juanji.manual_seed(seed)
    model = make_model()
    rng = np.random.default_rng(seed)
    model.train_step(rng.random((8, 1, 28, 28), dtype=f32), np.arange(8) % 10, nn.CrossEntropyLoss(),
                     optim.SGD(model.parameters(), lr=0.05))
    return model.eval()


def concat_model():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                         nn.Concat(nn.Conv2d(8, 8, 1), nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())),
                         nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(24, 10))


def depthwise_model():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
                         nn.Conv2d(16, 32, 1), nn.ReLU(), nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(32, 10))


def wide_model():
    """Activations of 64 KiB and more (at 64x64), which inference drops as soon as it is done
    with them, through residual blocks, a Concat, pooling and an Identity."""
    block = nn.Residual(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)))
    down = nn.Residual(nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 1)),
                       nn.Conv2d(16, 32, 1, stride=2))
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), block, nn.ReLU(),
                         nn.Concat(nn.Conv2d(16, 8, 1), nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())),
                         down, nn.ReLU(), nn.MaxPool2d(2), nn.Identity(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(32, 10))


@pytest.mark.parametrize("make_model", [models.lenet5, models.convnet, models.resnet, concat_model, depthwise_model,
                                        wide_model])
def test_frozen_outputs_are_the_models_eval_outputs_bit_for_bit(make_model):
    model = trained(make_model)
    frozen = model.freeze()
    rng = np.random.default_rng(1)
    # Batch 1, then 9 (other algorithms, so other layouts), then 1 again (the kept layouts).
    for batch in (1, 9, 1, 9):
        x = rng.random((batch, 1, 28, 28), dtype=f32)
        np.testing.assert_array_equal(np.asarray(frozen(x)), np.asarray(model(x)))


def test_inference_that_drops_activations_gives_the_outputs_of_a_forward_that_keeps_them():
    # activations() runs the layers one by one, each keeping what its forward made; frozen(x) and
    # model(x) drop each activation once the next layer has read it, and their outputs take blocks
    # that earlier activations held.
    model = trained(wide_model)
    frozen = model.freeze()
    rng = np.random.default_rng(2)
    for batch in (2, 1, 3, 2):
        x = rng.random((batch, 1, 64, 64), dtype=f32)
        kept = np.asarray(model.activations(x)[-1])
        np.testing.assert_array_equal(np.asarray(frozen(x)), kept)
        np.testing.assert_array_equal(np.asarray(model(x)), kept)


def test_a_frozen_chain_holds_a_few_activations_at_a_time():
    # 24 layers of 4 MiB activations: kept, they took 96 MiB more at the peak; dropped as the
    # next layer reads them, a few blocks serve them all. A fresh process, whose peak is its own.
    code = """
import resource
import numpy as np
from juanji import nn
def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
model = nn.Sequential(*[layer for _ in range(24) for layer in (nn.Conv2d(16, 16, 1), nn.ReLU())]).eval()
frozen = model.freeze()
x = np.ones((1, 16, 256, 256), np.float32)
before = peak_mib()
for _ in range(3):
    frozen(x)
print(peak_mib() - before)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert float(result.stdout) < 40, result.stdout


def forced_forward(name):
    class Forced:
        def __enter__(self):
            self.previous = core._set_conv_algorithm("forward", name)

        def __exit__(self, *exc):
            core._set_conv_algorithm("forward", self.previous or None)

    return Forced()


@pytest.mark.parametrize("algorithm", ["winograd", "filter_blocks", "gemm", "direct", "depthwise"])
def test_frozen_outputs_match_on_every_forward_algorithm(algorithm):
    # Layers that the forced algorithm takes: 3x3 stride-1 convolutions with 16 channels per group in
    # and out (Winograd, filter blocks, GEMM); few channels per group (direct); one per channel.
    if algorithm == "direct":
        layers = [nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=2, groups=4)]
    elif algorithm == "depthwise":
        layers = [nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, groups=4)]
    else:
        layers = [nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=2, bias=False)]
    juanji.manual_seed(3)
    model = nn.Sequential(*layers).eval()
    frozen = model.freeze()
    rng = np.random.default_rng(2)
    channels = layers[0].parameters()[0].shape[1] * (4 if algorithm == "depthwise" else 1)
    # Integer values: exact sums, so any difference in the packed weights would show.
    for batch in (1, 3, 1):
        x = rng.integers(-3, 4, (batch, channels, 13, 11)).astype(f32)
        with forced_forward(algorithm):
            want = np.asarray(model(x))
            got = np.asarray(frozen(x))
            again = np.asarray(frozen(x))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(again, want)


def test_float64_and_bf16_models_freeze_too():
    model = trained(models.convnet)
    x = np.random.default_rng(3).random((4, 1, 28, 28), dtype=f32)
    model.set_precision("bf16")
    np.testing.assert_array_equal(np.asarray(model.freeze()(x)), np.asarray(model(x)))
    model.set_precision("fp32")
    model.to("float64")
    frozen = model.freeze()
    assert frozen.state_dict()["0.weight"].dtype == np.float64
    x = x.astype(np.float64)
    np.testing.assert_array_equal(np.asarray(frozen(x)), np.asarray(model(x)))


def test_changes_to_the_model_do_not_reach_the_frozen_copy():
    model = trained(models.resnet)
    frozen = model.freeze()
    x = np.random.default_rng(4).random((2, 1, 28, 28), dtype=f32)
    before = np.asarray(frozen(x)).copy()
    rng = np.random.default_rng(5)
    model.train()
    model.train_step(rng.random((8, 1, 28, 28), dtype=f32), np.arange(8) % 10, nn.CrossEntropyLoss(),
                     optim.SGD(model.parameters(), lr=0.5))
    model.state_dict()["0.weight"][...] = 0.0
    assert not np.array_equal(np.asarray(model(x)), before)
    np.testing.assert_array_equal(np.asarray(frozen(x)), before)


def test_a_frozen_model_refuses_every_change():
    model = trained(models.convnet)
    frozen = model.freeze()
    x = np.random.default_rng(6).random((2, 1, 28, 28), dtype=f32)
    assert frozen.frozen and all(layer.frozen for layer in frozen.modules())
    assert not model.frozen and model.training is False
    assert frozen.training is False and frozen.parameters() == []
    with pytest.raises(ValueError, match="frozen"):
        frozen.train()
    with pytest.raises(ValueError, match="frozen"):
        frozen[0].train()
    with pytest.raises(ValueError, match="frozen"):
        frozen.forward(x, training=True)
    norm = next(layer for layer in frozen.modules() if isinstance(layer, nn.BatchNorm2d))
    with pytest.raises(ValueError, match="frozen"):  # it would update the running statistics
        norm.forward(np.ones((2, norm.buffers()[0].shape[0], 28, 28), f32), training=True)
    with pytest.raises(ValueError, match="frozen"):
        frozen.train_step(x, np.arange(2), nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="frozen"):
        frozen.to("float64")
    with pytest.raises(ValueError, match="frozen"):
        frozen.load_state_dict(model.state_dict())
    for name, view in frozen.state_dict().items():
        assert not view.flags.writeable, name
        with pytest.raises(ValueError):
            view[...] = 0
    with pytest.raises(ValueError, match="read-only"):
        frozen.buffers()[0].data = np.zeros(frozen.buffers()[0].shape, f32)
    # The summary still counts the weights, which are read-only now, not gone.
    assert frozen.summary((1, 28, 28)).splitlines()[-1] == model.summary((1, 28, 28)).splitlines()[-1]
    # Still the model's outputs after all that.
    np.testing.assert_array_equal(np.asarray(frozen(x)), np.asarray(model(x)))


def test_a_frozen_layers_backward_is_refused_after_an_eval_forward():
    frozen = trained(models.lenet5).freeze()
    conv = frozen[0]
    conv.forward(np.ones((1, 1, 28, 28), f32))
    with pytest.raises(ValueError, match="frozen"):
        conv.backward(np.ones((1, 6, 28, 28), f32))


def test_a_frozen_model_saves_a_checkpoint_that_loads_as_a_model_that_trains(tmp_path):
    model = trained(concat_model)
    frozen = model.freeze()
    path = tmp_path / "frozen.safetensors"
    frozen.save(str(path))
    loaded = juanji.load(str(path))
    assert not loaded.frozen
    x = np.random.default_rng(7).random((3, 1, 28, 28), dtype=f32)
    np.testing.assert_array_equal(np.asarray(loaded.eval()(x)), np.asarray(frozen(x)))
    loaded.train()
    loaded.train_step(x, np.arange(3), nn.CrossEntropyLoss(), optim.SGD(loaded.parameters(), lr=0.1))


def test_a_model_with_a_python_layer_cannot_be_frozen():
    class Double(nn.Layer):
        def forward(self, x):
            return x * 2

        def backward(self, grad_out):
            return grad_out * 2

    with pytest.raises(ValueError, match="Python"):
        nn.Sequential(nn.Conv2d(1, 2, 3), Double()).freeze()


def test_frozen_calls_from_four_threads_give_the_serial_results():
    model = trained(models.resnet)
    frozen = model.freeze()
    rng = np.random.default_rng(8)
    inputs = [rng.random((batch, 1, 28, 28), dtype=f32) for batch in (1, 2, 5, 1)]
    serial = [np.asarray(model(x)) for x in inputs]
    results, errors = [None] * 4, []

    def call(t):
        try:
            for _ in range(3):
                results[t] = [np.asarray(frozen(x)).copy() for x in inputs]
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    workers = [threading.Thread(target=call, args=(t,)) for t in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    for outputs in results:
        for got, want in zip(outputs, serial):
            np.testing.assert_array_equal(got, want)


def test_freezing_leaves_the_model_trainable():
    model = trained(models.lenet5)
    model.train()
    model.freeze()
    assert model.training and not model.frozen and len(model.parameters()) == 10
    rng = np.random.default_rng(9)
    model.train_step(rng.random((4, 1, 28, 28), dtype=f32), np.arange(4), nn.CrossEntropyLoss(),
                     optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.parametrize("algorithm", ["winograd", "filter_blocks", "gemm", "direct", "depthwise"])
def test_concat_branches_compute_into_their_share_of_the_output_on_every_forward_algorithm(algorithm):
    # A frozen Concat lends each branch's last convolution its channels of the output, whose images
    # lie apart in a batch: Winograd, the filter blocks and GEMM write them in place, the others
    # through a buffer. The model's layers one by one (activations) copy each branch's output in.
    def branch(conv, relu):
        return nn.Sequential(conv, nn.ReLU()) if relu else nn.Sequential(conv)

    if algorithm == "direct":
        channels, convs = 2, [nn.Conv2d(2, 8, 3, padding=1), nn.Conv2d(2, 5, 3, padding=2, dilation=2)]
    elif algorithm == "depthwise":
        channels, convs = 4, [nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 4, 5, padding=2, groups=4)]
    else:
        channels, convs = 16, [nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1, bias=False)]
    juanji.manual_seed(4)
    model = nn.Sequential(nn.Concat(branch(convs[0], True), branch(convs[1], False), nn.Identity())).eval()
    frozen = model.freeze()
    rng = np.random.default_rng(3)
    for batch in (1, 3, 2):
        x = rng.integers(-3, 4, (batch, channels, 13, 11)).astype(f32)
        with forced_forward(algorithm):
            want = np.asarray(model.activations(x)[-1])
            got = np.asarray(frozen(x))
            again = np.asarray(model(x))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(again, want)

"""The execution plan a Sequential runs: which layers each stage computes in one pass (per device;
the dtype does not change it), and training through it against the layers called one by one."""

import numpy as np
import pytest

import juanji
from juanji import models, nn
from test_cuda import gpu
from test_nn import assert_train_step_matches_the_layers_one_by_one

LENET5_CPU = [
    # Forward: the convolution applies the ReLU as it stores; backward: the pooling's pass also
    # computes the ReLU's.
    "Conv2d+ReLU, MaxPool2d | Conv2d, ReLU+MaxPool2d",
    "Conv2d+ReLU, MaxPool2d | Conv2d, ReLU+MaxPool2d",
    "Flatten",
    "Linear+ReLU | Linear, ReLU",
    "Linear+ReLU | Linear, ReLU",
    "Linear",
]

CONVNET_CPU = [
    # Batch norm, ReLU and pooling in one pass each way; the norm's backward pass also gives the
    # convolution its bias gradient.
    "Conv2d, BatchNorm2d+ReLU+MaxPool2d | Conv2d+BatchNorm2d+ReLU+MaxPool2d",
    "Conv2d, BatchNorm2d+ReLU+MaxPool2d | Conv2d+BatchNorm2d+ReLU+MaxPool2d",
    "Flatten",
    "Dropout",
    "Linear+ReLU | Linear, ReLU",
    "Linear",
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name, plan", [("lenet5", LENET5_CPU), ("convnet", CONVNET_CPU)])
def test_the_models_plans_on_the_cpu(name, plan, dtype):
    model = models.MODELS[name]()
    assert model._plan() == plan
    model.to(dtype)
    assert model._plan() == plan


@pytest.mark.parametrize("layers, plan", [
    # The first layer's input gradient is not computed: its ReLU goes back on its own.
    (lambda: [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()], ["ReLU", "MaxPool2d", "Flatten"]),
    (lambda: [nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2)],
     ["Conv2d", "BatchNorm2d+ReLU+MaxPool2d"]),
    (lambda: [nn.BatchNorm2d(1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU()],
     ["BatchNorm2d+ReLU+MaxPool2d", "Conv2d, BatchNorm2d+ReLU | Conv2d+BatchNorm2d, ReLU"]),
    # Only 2-d max pooling joins the norm; a 1-d one still takes the ReLU's backward.
    (lambda: [nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool1d(2), nn.AvgPool2d(2)],
     ["Conv2d, BatchNorm2d+ReLU, MaxPool1d | Conv2d+BatchNorm2d, ReLU+MaxPool1d", "AvgPool2d"]),
    # A leaky ReLU with a negative slope needs its input in backward; the CPU's batch norm fuses
    # only a ReLU; the ReLU's backward joins max pooling only.
    (lambda: [nn.Conv2d(1, 2, 3), nn.LeakyReLU(-0.5), nn.Conv2d(2, 2, 3), nn.LeakyReLU(0.1),
              nn.BatchNorm2d(2), nn.Sigmoid(), nn.Flatten(), nn.Linear(4, 4), nn.Tanh(), nn.ReLU(),
              nn.AvgPool2d(1)],
     ["Conv2d", "LeakyReLU", "Conv2d+LeakyReLU | Conv2d, LeakyReLU", "BatchNorm2d", "Sigmoid", "Flatten",
      "Linear+Tanh | Linear, Tanh", "ReLU", "AvgPool2d"]),
])
def test_plans_follow_the_fusion_rules(layers, plan):
    assert nn.Sequential(*layers())._plan() == plan


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_training_through_the_plan_matches_the_layers_one_by_one(name, dtype):
    def make():
        juanji.manual_seed(3)
        return models.MODELS[name]().to(dtype)

    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, 6)
    fused, apart = make(), make()
    h = x
    for layer in apart.layers:
        h = layer.forward(h, training=False)
    np.testing.assert_array_equal(np.asarray(fused(x)), np.asarray(h))
    assert_train_step_matches_the_layers_one_by_one(fused, apart, x, y)
    for a, b in zip(fused.buffers(), apart.buffers()):
        np.testing.assert_array_equal(a.data, b.data)


def test_a_model_starting_with_relu_and_max_pooling_trains_as_its_layers_one_by_one():
    def make():
        juanji.manual_seed(5)
        return nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(3, 2))

    x = np.random.default_rng(6).standard_normal((4, 2, 8, 8)).astype(np.float32)
    assert_train_step_matches_the_layers_one_by_one(make(), make(), x, np.array([0, 1, 1, 0]))


@gpu
def test_the_plan_follows_the_model_to_the_gpu_and_back():
    # On a GPU the convolution and linear layers apply their activation (the fusions of batch
    # norm and of max pooling are the CPU's).
    lenet5 = models.lenet5().to("cuda")
    assert lenet5._plan() == ["Conv2d+ReLU | Conv2d, ReLU", "MaxPool2d", "Conv2d+ReLU | Conv2d, ReLU", "MaxPool2d",
                              "Flatten", "Linear+ReLU | Linear, ReLU", "Linear+ReLU | Linear, ReLU", "Linear"]
    assert lenet5.to("cpu")._plan() == LENET5_CPU
    convnet = models.convnet().to("cuda")
    assert convnet._plan() == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"] * 2 + [
        "Flatten", "Dropout", "Linear+ReLU | Linear, ReLU", "Linear"]

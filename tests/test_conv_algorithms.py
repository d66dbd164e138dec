"""Every CPU convolution algorithm on every shape it takes: each pass's algorithm is forced in
turn (juanji._core._set_conv_algorithm) and checked against the NumPy reference, and integer-valued
data must come out bit-exact whichever algorithm runs. The named cases also pin the algorithm the
default choice gives them."""

from __future__ import annotations

import numpy as np
import pytest

import juanji
from helpers import assert_bitwise, assert_close, conv_kwargs, cpu_simd_levels, randint_data, randn
from test_conv import (
    DEPTHWISE,
    DIRECT,
    FILTER_BLOCKS,
    GRID_2D,
    IMAGE_LANES,
    OPS,
    STRIDED,
    WINOGRAD,
    case,
    make_inputs,
)

core = juanji._core
PASSES = ("forward", "data_grad", "weight_grad")

SHAPES = {
    **{f"grid_{k}": (2, c) for k, c in GRID_2D.items()},
    **{f"direct_{k}": v for k, v in DIRECT.items()},
    **{f"filter_blocks_{k}": v for k, v in FILTER_BLOCKS.items()},
    **{f"image_lanes_{k}": v for k, v in IMAGE_LANES.items()},
    **{f"strided_{k}": v for k, v in STRIDED.items()},
    **{f"winograd_{k}": v for k, v in WINOGRAD.items()},
    **{f"depthwise_{k}": v for k, v in DEPTHWISE.items()},
}


def choices(pass_, c, x, w):
    """[(name, why it refuses or None, why the default choice passes it over or None)]."""
    kw = conv_kwargs(c)
    return core._conv_algorithms(pass_, x, w, kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1),
                                 kw.get("groups", 1))


def accepted(pass_, nd, c, x, w):
    """The algorithms that take the problem (each can be forced), in the order of preference."""
    return [name for name, why, _ in choices(pass_, c, x, w) if why is None]


def default_pick(pass_, c, x, w):
    return next(name for name, why, passed_over in choices(pass_, c, x, w) if why is None and passed_over is None)


class forced:
    """Forces one pass's algorithm for the with-block."""

    def __init__(self, pass_, name):
        self.pass_, self.name = pass_, name

    def __enter__(self):
        self.previous = core._set_conv_algorithm(self.pass_, self.name)

    def __exit__(self, *exc):
        core._set_conv_algorithm(self.pass_, self.previous or None)


def pass_outputs(pass_, nd, c, x, w, b, gy, reference=False):
    """What the pass computes, by juanji or (reference=True) by the NumPy reference."""
    fwd, bwd, rfwd, rbwd = OPS[nd]
    fwd, bwd = (rfwd, rbwd) if reference else (fwd, bwd)
    kw = conv_kwargs(c)
    if pass_ == "forward":
        return [fwd(x, w, b, **kw)]
    grad_x, grad_w, grad_b = bwd(gy, x, w, **kw)
    return [grad_x] if pass_ == "data_grad" else [grad_w, grad_b]


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("name", list(SHAPES))
def test_every_algorithm_that_takes_a_shape(name, pass_):
    nd, c = SHAPES[name]
    rng = np.random.default_rng(5)
    x, w, b = make_inputs(rng, c, np.float32)
    gy = randn(rng, pass_outputs("forward", nd, c, x, w, b, None, reference=True)[0].shape, np.float32)
    expected = pass_outputs(pass_, nd, c, x, w, b, gy, reference=True)
    xi, wi, bi = make_inputs(rng, c, np.float32, gen=randint_data)
    gyi = randint_data(rng, gy.shape)
    exact = pass_outputs(pass_, nd, c, xi, wi, bi, gyi, reference=True)
    names = accepted(pass_, nd, c, x, w)
    assert names[-2:] == ["gemm", "reference"]
    for algorithm in names:
        with forced(pass_, algorithm):
            for got, want in zip(pass_outputs(pass_, nd, c, x, w, b, gy), expected):
                assert_close(got, want, np.float32, what=f"{pass_} by {algorithm}")
            for got, want in zip(pass_outputs(pass_, nd, c, xi, wi, bi, gyi), exact):
                assert_bitwise(got, want, what=f"{pass_} by {algorithm}, integer-valued")


# The algorithm the default choice gives each named layer (one filter per channel: depthwise;
# stride-1 3x3 16+ channels: Winograd; few input channels: direct; 8+ filters: filter blocks;
# strided data gradients: stride phases).
DEPTHWISE_PICKS = {"forward": "depthwise", "data_grad": "depthwise", "weight_grad": "depthwise"}
DEFAULTS = [
    ("lenet_c1", case(N=8, C=1, K=6, spatial=(28, 28), kernel=(5, 5), padding=2),
     {"forward": "direct", "data_grad": "direct", "weight_grad": "direct"}),
    ("cifar_c2", case(N=4, C=32, K=64, spatial=(16, 16), padding=1),
     {"forward": "winograd", "data_grad": "winograd", "weight_grad": "winograd"}),
    # Few tiles (batch 1): filter blocks, unless the channels are many; the gradients keep Winograd.
    ("convnet_c2_b1", case(N=1, C=32, K=64, spatial=(14, 14), padding=1),
     {"forward": "filter_blocks", "data_grad": "winograd", "weight_grad": "winograd"}),
    ("res_512_b1", case(N=1, C=512, K=16, spatial=(7, 7), padding=1), {"forward": "filter_blocks"}),
    ("res_256_b1", case(N=1, C=256, K=16, spatial=(14, 14), padding=1), {"forward": "winograd"}),
    ("res_64_b2", case(N=2, C=64, K=64, spatial=(14, 14), padding=1), {"forward": "winograd"}),
    # Pointwise: GEMM for two images or more where a layer widens up to 256 channels into more
    # filters on planes of 2048+ pixels (one image per GEMM, the GEMMs shared out); filter blocks
    # for the rest.
    ("pw_expand_b1", case(N=1, C=64, K=256, spatial=(56, 56), kernel=(1, 1)), {"forward": "filter_blocks"}),
    ("pw_expand_b2", case(N=2, C=96, K=128, spatial=(48, 48), kernel=(1, 1)), {"forward": "gemm"}),
    ("pw_b2", case(N=2, C=64, K=64, spatial=(56, 56), kernel=(1, 1)), {"forward": "filter_blocks"}),
    ("pw_b1_narrowing", case(N=1, C=256, K=64, spatial=(56, 56), kernel=(1, 1)), {"forward": "filter_blocks"}),
    ("pw_b1_13", case(N=1, C=64, K=256, spatial=(13, 13), kernel=(1, 1)), {"forward": "filter_blocks"}),
    ("pw_expand_wide", case(N=1, C=320, K=640, spatial=(56, 56), kernel=(1, 1)), {"forward": "filter_blocks"}),
    ("pw_b1_13_wide", case(N=1, C=512, K=64, spatial=(13, 13), kernel=(1, 1)), {"forward": "filter_blocks"}),
    ("pw_b1_7", case(N=1, C=64, K=64, spatial=(7, 7), kernel=(1, 1)), {"forward": "filter_blocks"}),
    ("pw_28", case(N=8, C=64, K=64, spatial=(28, 28), kernel=(1, 1)), {"forward": "filter_blocks"}),
    ("pw_512", case(N=2, C=512, K=16, spatial=(56, 56), kernel=(1, 1)), {"forward": "filter_blocks"}),
    ("convnet_c1", case(N=4, C=1, K=32, spatial=(28, 28), padding=1),
     {"forward": "direct", "weight_grad": "filter_blocks"}),
    ("stem", case(N=1, C=3, K=64, spatial=(32, 32), kernel=(7, 7), stride=2, padding=3),
     {"forward": "filter_blocks", "data_grad": "strided_phases"}),
    ("huge_padding", case(N=1, C=1, K=1, spatial=(1, 1), kernel=(2, 2), padding=25000, dilation=50000),
     {"forward": "gemm", "data_grad": "gemm", "weight_grad": "gemm"}),
    ("mobilenet_dw", case(N=2, C=32, K=32, groups=32, spatial=(28, 28), padding=1), DEPTHWISE_PICKS),
    ("mobilenet_dw_s2", case(N=2, C=64, K=64, groups=64, spatial=(28, 28), stride=2, padding=1), DEPTHWISE_PICKS),
    ("dw_5x5_dilated", case(N=1, C=8, K=8, groups=8, spatial=(12, 12), kernel=(5, 5), dilation=2, padding=4),
     DEPTHWISE_PICKS),
    # Rows past 1024 columns (a long signal) take the direct kernel.
    ("dw_long_rows", case(N=1, C=2, K=2, groups=2, spatial=(2, 1030), padding=1),
     {"forward": "direct", "data_grad": "direct", "weight_grad": "direct"}),
    # A channel multiplier of 2 is no depthwise layer for these kernels.
    ("dw_multiplier2", case(N=2, C=8, K=16, groups=8, spatial=(10, 10), padding=1),
     {"forward": "direct", "data_grad": "direct", "weight_grad": "direct"}),
]


@pytest.mark.parametrize("name,c,picks", DEFAULTS, ids=[d[0] for d in DEFAULTS])
def test_default_choices(name, c, picks):
    x, w, _ = make_inputs(np.random.default_rng(0), c, np.float32)
    for pass_, expected in picks.items():
        assert default_pick(pass_, c, x, w) == expected, pass_
    assert all(accepted(p, 2, c, x.astype(np.float64), w.astype(np.float64)) == ["gemm", "reference"] for p in PASSES)


def test_infinite_weights_keep_the_direct_data_gradient_away():
    c = case(N=2, C=3, K=2, spatial=(9, 9), kernel=(5, 5), padding=2)
    x, w, _ = make_inputs(np.random.default_rng(1), c, np.float32)
    assert default_pick("data_grad", c, x, w) == "direct"
    w[0, 1, 4, 4] = np.inf
    refusals = {name: why for name, why, _ in core._conv_algorithms("data_grad", x, w, 1, 2)}
    assert "finite weights" in refusals["direct"]


def test_infinite_weights_keep_the_depthwise_data_gradient_away():
    c = case(N=2, C=4, K=4, groups=4, spatial=(9, 9), stride=2, padding=1)
    x, w, _ = make_inputs(np.random.default_rng(2), c, np.float32)
    assert default_pick("data_grad", c, x, w) == "depthwise"
    w[2, 0, 1, 1] = -np.inf
    refusals = {name: why for name, why, _ in core._conv_algorithms("data_grad", x, w, 2, 1, 1, 4)}
    assert "finite weights" in refusals["depthwise"]
    assert default_pick("forward", c, x, w) == "depthwise"


LEVELS = cpu_simd_levels()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("level", LEVELS)
def test_depthwise_at_every_simd_level_and_thread_count(level, threads, restore_runtime):
    """Every depthwise shape through the depthwise kernels at each SIMD level this CPU runs, on 1
    and 2 threads: integer-valued data bit for bit, normal data within the tolerance and with the
    same bits on both thread counts."""
    assert juanji.set_simd_level(level) == level
    for name, (nd, c) in DEPTHWISE.items():
        rng = np.random.default_rng(22)
        x, w, b = make_inputs(rng, c, np.float32)
        gy = randn(rng, pass_outputs("forward", nd, c, x, w, b, None, reference=True)[0].shape, np.float32)
        xi, wi, bi = make_inputs(rng, c, np.float32, gen=randint_data)
        gyi = randint_data(rng, gy.shape)
        for pass_ in PASSES:
            assert default_pick(pass_, c, x, w) == "depthwise", (name, pass_)
            expected = pass_outputs(pass_, nd, c, x, w, b, gy, reference=True)
            exact = pass_outputs(pass_, nd, c, xi, wi, bi, gyi, reference=True)
            juanji.set_num_threads(threads)
            got = [np.asarray(t).copy() for t in pass_outputs(pass_, nd, c, x, w, b, gy)]
            for g, want in zip(got, expected):
                assert_close(g, want, np.float32, what=f"{name} {pass_}")
            for g, want in zip(pass_outputs(pass_, nd, c, xi, wi, bi, gyi), exact):
                assert_bitwise(g, want, what=f"{name} {pass_}, integer-valued")
            juanji.set_num_threads(3 - threads)
            for g, other in zip(got, pass_outputs(pass_, nd, c, x, w, b, gy)):
                np.testing.assert_array_equal(g, np.asarray(other), err_msg=f"{name} {pass_}: thread count")


def test_forcing_an_algorithm_that_refuses_the_layer_names_why():
    x, w = np.ones((1, 3, 8, 8), np.float32), np.ones((4, 3, 3, 3), np.float32)
    with forced("forward", "winograd"):
        with pytest.raises(ValueError, match="forced forward algorithm 'winograd'.*16\\+ channels"):
            juanji.conv2d(x, w)
    with pytest.raises(ValueError, match="no algorithm named 'strided_phases'"):
        core._set_conv_algorithm("forward", "strided_phases")
    with pytest.raises(ValueError, match="pass_"):
        core._set_conv_algorithm("sideways", "gemm")
    np.testing.assert_array_equal(np.asarray(juanji.conv2d(x, w)), np.full((1, 4, 6, 6), 27, np.float32))


@pytest.mark.parametrize("shape, kernel, stride, padding", [
    ((2, 16, 48, 48), 1, 1, 0),  # pointwise, two images widening on a large plane: GEMM by default
    ((1, 300, 14, 14), 1, 1, 0),  # GEMM's sums in two blocks of the inner dimension
    ((2, 32, 9, 9), 3, 1, 1),
    ((1, 3, 17, 17), 3, 2, 0),
])
def test_every_forward_algorithm_applies_a_following_relu_as_the_layers_one_by_one(shape, kernel, stride, padding):
    # A convolution followed by a ReLU is one pass in eval mode (the algorithm applies the ReLU as
    # it stores, GEMM as each tile completes): the same bits as the convolution's output with the
    # ReLU applied after it, a NaN kept, for whichever algorithm takes the layer.
    rng = np.random.default_rng(11)
    x = randint_data(rng, shape, np.float32)
    x[0, 0, 1, 1] = np.nan
    conv = juanji.nn.Conv2d(shape[1], 24, kernel, stride=stride, padding=padding)
    conv.load_state_dict({"weight": randint_data(rng, (24, shape[1], kernel, kernel), np.float32, lo=-2, hi=3),
                          "bias": randint_data(rng, (24,), np.float32)})
    model = juanji.nn.Sequential(conv, juanji.nn.ReLU()).eval()
    for name, why, _ in core._conv_algorithms("forward", x, np.asarray(conv.weight), stride, padding):
        if why is not None:
            continue
        with forced("forward", name):
            y = np.asarray(conv(x))
            want = np.where(y < 0, np.float32(0), y)
            got = np.asarray(model(x))
        assert np.isnan(got).any(), name
        assert_bitwise(got, want, what=f"{name}: Conv2d+ReLU")

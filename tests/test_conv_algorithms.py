"""Every CPU convolution algorithm on every shape it takes: each pass's algorithm is forced in
turn (juanji._core._set_conv_algorithm) and checked against the NumPy reference, and integer-valued
data must come out bit-exact whichever algorithm runs. The named cases also pin the algorithm the
default choice gives them."""

from __future__ import annotations

import numpy as np
import pytest

import juanji
from helpers import assert_bitwise, assert_close, conv_kwargs, randint_data, randn
from test_conv import DIRECT, FILTER_BLOCKS, GRID_2D, IMAGE_LANES, OPS, STRIDED, WINOGRAD, case, make_inputs

core = juanji._core
PASSES = ("forward", "data_grad", "weight_grad")

SHAPES = {
    **{f"grid_{k}": (2, c) for k, c in GRID_2D.items()},
    **{f"direct_{k}": v for k, v in DIRECT.items()},
    **{f"filter_blocks_{k}": v for k, v in FILTER_BLOCKS.items()},
    **{f"image_lanes_{k}": v for k, v in IMAGE_LANES.items()},
    **{f"strided_{k}": v for k, v in STRIDED.items()},
    **{f"winograd_{k}": v for k, v in WINOGRAD.items()},
}


def accepted(pass_, nd, c, x, w):
    kw = conv_kwargs(c)
    choices = core._conv_algorithms(pass_, x, w, kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1),
                                    kw.get("groups", 1))
    return [name for name, why in choices if why is None]


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


# The algorithm the default choice gives each named layer (stride-1 3x3 16+ channels: Winograd;
# few input channels: direct; 8+ filters: filter blocks; strided data gradients: stride phases).
DEFAULTS = [
    ("lenet_c1", case(N=8, C=1, K=6, spatial=(28, 28), kernel=(5, 5), padding=2),
     {"forward": "direct", "data_grad": "direct", "weight_grad": "direct"}),
    ("cifar_c2", case(N=4, C=32, K=64, spatial=(16, 16), padding=1),
     {"forward": "winograd", "data_grad": "winograd", "weight_grad": "winograd"}),
    ("convnet_c1", case(N=4, C=1, K=32, spatial=(28, 28), padding=1),
     {"forward": "direct", "weight_grad": "filter_blocks"}),
    ("stem", case(N=1, C=3, K=64, spatial=(32, 32), kernel=(7, 7), stride=2, padding=3),
     {"forward": "filter_blocks", "data_grad": "strided_phases"}),
    ("huge_padding", case(N=1, C=1, K=1, spatial=(1, 1), kernel=(2, 2), padding=25000, dilation=50000),
     {"forward": "gemm", "data_grad": "gemm", "weight_grad": "gemm"}),
]


@pytest.mark.parametrize("name,c,picks", DEFAULTS, ids=[d[0] for d in DEFAULTS])
def test_default_choices(name, c, picks):
    x, w, _ = make_inputs(np.random.default_rng(0), c, np.float32)
    for pass_, expected in picks.items():
        assert accepted(pass_, 2, c, x, w)[0] == expected, pass_
    assert all(accepted(p, 2, c, x.astype(np.float64), w.astype(np.float64)) == ["gemm", "reference"] for p in PASSES)


def test_infinite_weights_keep_the_direct_data_gradient_away():
    c = case(N=2, C=3, K=2, spatial=(9, 9), kernel=(5, 5), padding=2)
    x, w, _ = make_inputs(np.random.default_rng(1), c, np.float32)
    assert accepted("data_grad", 2, c, x, w)[0] == "direct"
    w[0, 1, 4, 4] = np.inf
    choices = dict(core._conv_algorithms("data_grad", x, w, 1, 2))
    assert "finite weights" in choices["direct"]


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

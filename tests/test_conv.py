"""conv1d / conv2d (cross-correlation, seed 000) forward and backward against the
NumPy reference: named shape grids, seeded random shapes, memory layouts,
integer-exact float32, and finite differences."""

import numpy as np
import pytest

import juanji
import reference as ref
from helpers import (
    DTYPES,
    LAYOUTS,
    as_np,
    assert_bitwise,
    assert_close,
    ceil_div,
    check_fd,
    conv_kwargs,
    conv_out_spatial,
    layout,
    randint_data,
    randn,
    random_conv_cases,
)

OPS = {
    1: (juanji.conv1d, juanji.conv1d_backward, ref.conv1d, ref.conv1d_backward),
    2: (juanji.conv2d, juanji.conv2d_backward, ref.conv2d, ref.conv2d_backward),
}


def case(N=2, C=3, K=4, spatial=(7, 8), kernel=(3, 3), stride=1, padding=0, dilation=1,
         groups=1, bias=True):
    return dict(N=N, C=C, K=K, spatial=tuple(spatial), kernel=tuple(kernel), stride=stride,
                padding=padding, dilation=dilation, groups=groups, bias=bias)


GRID_2D = {
    "basic_3x3": case(),
    "no_bias": case(bias=False),
    "batch1": case(N=1),
    "kernel_1x1": case(kernel=(1, 1)),
    "stride2": case(stride=2),
    "stride_gt_kernel": case(spatial=(11, 10), kernel=(2, 2), stride=3),
    "stride_pair": case(stride=(2, 1)),
    "pad1": case(padding=1),
    "pad_half_kernel_5x5": case(spatial=(6, 7), kernel=(5, 5), padding=2),
    "pad_pair": case(kernel=(3, 2), padding=(1, 0)),
    "pad_pair_stride_pair": case(spatial=(9, 6), kernel=(4, 3), padding=(2, 1), stride=(3, 2)),
    "dilation2": case(spatial=(9, 9), dilation=2),
    "dilation3_pad": case(spatial=(8, 9), dilation=3, padding=1),
    "dilation_pair": case(spatial=(9, 7), dilation=(3, 1), kernel=(2, 3)),
    "groups2": case(C=4, K=6, groups=2),
    "groups3_stride2": case(C=6, K=3, groups=3, stride=2, padding=1),
    "depthwise": case(C=3, K=3, groups=3, padding=1),
    "depthwise_mult2": case(C=3, K=6, groups=3, padding=1),
    "depthwise_dil2_stride2": case(C=4, K=4, groups=4, dilation=2, stride=2, spatial=(10, 9)),
    "out_1x1": case(spatial=(3, 3), kernel=(3, 3)),
    "out_1x1_by_stride": case(spatial=(5, 4), kernel=(2, 2), stride=5),
    "kernel_eq_padded_input": case(spatial=(3, 2), kernel=(5, 4), padding=(1, 1)),
    "nonsquare_kernel": case(kernel=(2, 5), spatial=(6, 9)),
    "odd_sizes": case(N=3, C=5, K=7, spatial=(9, 11), kernel=(3, 5)),
    "input_1x1": case(spatial=(1, 1), kernel=(1, 1)),
    "input_row": case(spatial=(1, 9), kernel=(1, 3)),
    "valid": case(padding="valid"),
    "same_3x3": case(padding="same"),
    "same_even_2x4": case(padding="same", kernel=(2, 4)),
    "same_even_4x4": case(padding="same", kernel=(4, 4), spatial=(6, 5)),
    "same_nonsquare_3x2": case(padding="same", kernel=(3, 2)),
    "same_stride2": case(padding="same", stride=2, spatial=(7, 8)),
    "same_stride3_even": case(padding="same", stride=3, kernel=(2, 4), spatial=(10, 11)),
    "same_stride_pair_dil2": case(padding="same", stride=(2, 3), dilation=2, spatial=(9, 10)),
    "same_kernel_gt_input": case(padding="same", kernel=(5, 4), spatial=(3, 2)),
    "same_groups_depthwise": case(padding="same", C=4, K=8, groups=4, kernel=(2, 3), stride=2),
    "everything": case(N=2, C=6, K=4, groups=2, spatial=(12, 9), kernel=(3, 2), stride=(2, 3),
                       padding=(1, 1), dilation=(2, 1)),
}

GRID_1D = {
    "basic_k3": case(spatial=(10,), kernel=(3,)),
    "no_bias": case(spatial=(10,), kernel=(3,), bias=False),
    "batch1_k1": case(N=1, spatial=(7,), kernel=(1,)),
    "stride2": case(spatial=(11,), kernel=(3,), stride=2),
    "stride_tuple": case(spatial=(11,), kernel=(3,), stride=(2,)),
    "stride_gt_kernel": case(spatial=(13,), kernel=(2,), stride=4),
    "pad_half_kernel": case(spatial=(8,), kernel=(5,), padding=2),
    "pad_tuple": case(spatial=(8,), kernel=(4,), padding=(2,)),
    "dilation2": case(spatial=(12,), kernel=(3,), dilation=2),
    "dilation3_tuple": case(spatial=(12,), kernel=(3,), dilation=(3,), padding=1),
    "groups2": case(C=4, K=6, groups=2, spatial=(9,), kernel=(3,)),
    "depthwise": case(C=5, K=5, groups=5, spatial=(9,), kernel=(3,), padding=1),
    "depthwise_mult2": case(C=3, K=6, groups=3, spatial=(9,), kernel=(4,)),
    "out_len1": case(spatial=(4,), kernel=(4,)),
    "input_len1": case(spatial=(1,), kernel=(1,)),
    "kernel_gt_input_padded": case(spatial=(3,), kernel=(5,), padding=1),
    "valid": case(spatial=(9,), kernel=(4,), padding="valid"),
    "same_odd": case(spatial=(9,), kernel=(3,), padding="same"),
    "same_even": case(spatial=(9,), kernel=(4,), padding="same"),
    "same_stride2": case(spatial=(9,), kernel=(3,), padding="same", stride=2),
    "same_stride3_even_dil2": case(spatial=(11,), kernel=(2,), padding="same", stride=3, dilation=2),
    "same_kernel_gt_input": case(spatial=(2,), kernel=(5,), padding="same"),
    "odd_sizes": case(N=3, C=5, K=7, spatial=(13,), kernel=(5,), stride=2, padding=1),
}

GRIDS = {1: GRID_1D, 2: GRID_2D}


def grid_params():
    return [pytest.param(nd, c, id=f"{nd}d-{name}") for nd in (1, 2) for name, c in GRIDS[nd].items()]


def table_params(cases):
    """A table {name: (dims, case)} as test parameters named by its keys."""
    return [pytest.param(nd, c, id=name) for name, (nd, c) in cases.items()]


RANDOM = [pytest.param(1, p.values[0], id=f"1d-{p.id}") for p in random_conv_cases(1, 20, seed=101)]
RANDOM += [pytest.param(2, p.values[0], id=f"2d-{p.id}") for p in random_conv_cases(2, 40, seed=202)]


def make_inputs(rng, c, dtype, gen=randn):
    x = gen(rng, (c["N"], c["C"]) + c["spatial"], dtype)
    w = gen(rng, (c["K"], c["C"] // c["groups"]) + c["kernel"], dtype)
    b = gen(rng, (c["K"],), dtype) if c.get("bias", True) else None
    return x, w, b


def out_shape(c):
    return (c["N"], c["K"]) + conv_out_spatial(c)


def run_forward_and_backward(nd, c, dtype, seed):
    rng = np.random.default_rng(seed)
    fwd, bwd, rfwd, rbwd = OPS[nd]
    x, w, b = make_inputs(rng, c, dtype)
    kw = conv_kwargs(c)

    y = fwd(x, w, b, **kw)
    y_ref = rfwd(x, w, b, **kw)
    assert y_ref.shape == out_shape(c)
    assert_close(y, y_ref, dtype, what="y")

    gy = randn(rng, y_ref.shape, dtype)
    grads = bwd(gy, x, w, **kw)
    assert isinstance(grads, tuple) and len(grads) == 3
    for name, g, g_ref in zip(("grad_x", "grad_w", "grad_b"), grads, rbwd(gy, x, w, **kw)):
        assert_close(g, g_ref, dtype, what=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd,c", grid_params())
def test_conv_grid(nd, c, dtype):
    run_forward_and_backward(nd, c, dtype, seed=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd,c", RANDOM)
def test_conv_random(nd, c, dtype):
    run_forward_and_backward(nd, c, dtype, seed=2)


LARGER = {
    "resnet_like_3x3": (2, case(N=2, C=8, K=16, spatial=(16, 16), kernel=(3, 3), padding=1)),
    "stem_7x7_s2": (2, case(N=1, C=3, K=8, spatial=(24, 20), kernel=(7, 7), stride=2, padding=3)),
    "depthwise_s2": (2, case(N=2, C=16, K=16, groups=16, spatial=(15, 17), kernel=(3, 3), stride=2,
                             padding="same")),
    "grouped_dilated": (2, case(N=2, C=8, K=12, groups=4, spatial=(14, 13), kernel=(3, 3),
                                dilation=2, padding=2)),
    "conv1d_long": (1, case(N=3, C=6, K=10, spatial=(97,), kernel=(7,), stride=3, padding="same")),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd,c", table_params(LARGER))
def test_conv_larger_shapes(nd, c, dtype):
    run_forward_and_backward(nd, c, dtype, seed=3)


# Layers with 8+ output channels per group take the filter-vectorised direct kernels (16 filters
# per vector block) for float32: block tails, several pixel blocks per row, every padding/cropping
# case of the data gradient's correlation, strides (weight gradient only), groups.
FILTER_BLOCKS = {
    "basic": (2, case(C=8, K=16, spatial=(10, 9), padding=1)),
    "filters_past_block": (2, case(C=9, K=20, spatial=(7, 13))),
    "wide_rows": (2, case(C=8, K=9, spatial=(5, 29), kernel=(3, 5), padding=(1, 2))),
    "stride2": (2, case(C=8, K=17, spatial=(11, 12), stride=2, padding=1)),
    "stride_gt_kernel": (2, case(C=8, K=16, spatial=(11, 10), kernel=(2, 2), stride=3)),
    "dilation2": (2, case(C=10, K=12, spatial=(12, 11), dilation=2, padding=2)),
    "groups2": (2, case(C=16, K=32, groups=2, padding=1)),
    "groups_wide_in": (2, case(C=24, K=16, groups=2, spatial=(6, 15))),
    "pointwise_pad1": (2, case(C=8, K=8, kernel=(1, 1), padding=1)),
    "pad_beyond_kernel": (2, case(C=8, K=8, spatial=(5, 6), padding=3)),
    "same_even_kernel": (2, case(C=8, K=8, spatial=(9, 8), kernel=(4, 4), padding="same")),
    "batch1_1x7": (2, case(N=1, C=8, K=16, spatial=(6, 20), kernel=(1, 7), padding=(0, 3))),
    "conv1d": (1, case(C=8, K=16, spatial=(40,), kernel=(5,), padding=2)),
    "conv1d_stride2_dil2": (1, case(C=12, K=10, spatial=(41,), kernel=(3,), stride=2, dilation=2)),
    # 16 (group, block) jobs: the weight gradient sums all images in one chunk
    "sixteen_groups": (2, case(N=3, C=16, K=128, groups=16, spatial=(6, 7), padding=1)),
    # 8+ filters on few input channels: the direct kernel's forward, the filter blocks' weight
    # gradient (convnet's first layer, cifar_c1).
    "one_channel_weight_grad": (2, case(N=3, C=1, K=32, spatial=(12, 11), padding=1)),
    "three_channels_weight_grad": (2, case(N=2, C=3, K=20, spatial=(9, 10), padding=1)),
    # Sources past 1 MiB: a job's blocks of filters take each block of pixels in turn (the images
    # share 8 jobs of 1 or 2 of the 5 blocks, the last one 8 or 6 filters wide: the pointwise
    # layers' forward and data gradient, the padded one's forward). With 64+ error channels a
    # pointwise data gradient past 1 MiB per image is a GEMM (the first one's).
    "pointwise_source_past_l2": (2, case(N=3, C=70, K=72, spatial=(62, 61), kernel=(1, 1))),
    "pointwise_error_past_l2": (2, case(N=3, C=70, K=40, spatial=(82, 81), kernel=(1, 1))),
    "padded_source_past_l2_s2": (2, case(N=2, C=40, K=72, spatial=(81, 83), stride=2, padding=1)),
    # Strided with 16+ input channels a group: the forward reads a copy split into the stride's
    # phases (made once and shared out by the threads for fewer images than threads, whose rows
    # are then shared out where the image outweighs the weights).
    "phases_batch1_rows": (2, case(N=1, C=16, K=20, spatial=(29, 27), stride=2, padding=1)),
    "phases_stride3_dilation2": (2, case(N=2, C=16, K=12, spatial=(17, 19), stride=3, dilation=2, padding=(2, 1))),
    "phases_stride_gt_kernel": (2, case(N=1, C=17, K=16, spatial=(11, 10), kernel=(2, 2), stride=3)),
    "phases_pointwise": (2, case(N=1, C=32, K=16, spatial=(15, 14), kernel=(1, 1), stride=2)),
    "phases_stride_pair": (2, case(N=1, C=16, K=9, spatial=(13, 16), kernel=(3, 4), stride=(2, 3), padding=(0, 2))),
    "phases_groups": (2, case(N=1, C=32, K=32, groups=2, spatial=(9, 10), stride=2, padding=1)),
    "phases_conv1d": (1, case(N=1, C=16, K=10, spatial=(41,), kernel=(3,), stride=2, dilation=2)),
    # Pointwise at stride 1: each plane one long row written in place, whatever its width, shared
    # out by rows between the threads for a batch of one.
    "pointwise_wide_batch1": (2, case(N=1, C=12, K=40, spatial=(23, 27), kernel=(1, 1))),
    "pointwise_narrow_batch1": (2, case(N=1, C=20, K=24, spatial=(13, 13), kernel=(1, 1))),
    "pointwise_short_rows": (2, case(N=2, C=9, K=17, spatial=(5, 37), kernel=(1, 1))),
}

LARGE_SOURCES = ("pointwise_source_past_l2", "pointwise_error_past_l2", "padded_source_past_l2_s2")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd,c", table_params(FILTER_BLOCKS))
def test_conv_filter_block_shapes(nd, c, dtype):
    run_forward_and_backward(nd, c, dtype, seed=4)


@pytest.mark.parametrize("name", LARGE_SOURCES)
def test_conv_filter_blocks_large_source_integer_valued_is_exact(name):
    check_integer_valued_is_exact(*FILTER_BLOCKS[name], seed=16)


# Layers with at most 4 input channels per group (forward) or few error channels (data gradient)
# take the direct kernel: blocks of rows x vectors of pixels for up to 6 filters, overlapping at
# the ends of rows and planes. Widths cross every block shape at 16 and 8 lanes per vector: one
# vector per row, two-vector blocks on rows of 3-5 vectors, a row's run of vectors (up to 15 for
# one filter) ending at the last one; planes shorter than a block; filters split 5, 4, 4.
DIRECT = {
    "one_vector_rows_tall": (2, case(N=1, C=1, K=1, spatial=(20, 9), padding=1)),
    "plane_shorter_than_block": (2, case(C=2, K=3, spatial=(5, 7))),
    "two_vector_blocks_overlap": (2, case(N=1, C=1, K=6, spatial=(9, 40), padding=1)),
    "row_runs_overlap": (2, case(N=1, C=1, K=3, spatial=(3, 130), kernel=(3, 5), padding=(1, 2))),
    "single_filter_long_rows": (2, case(N=1, C=1, K=1, spatial=(2, 250), kernel=(1, 3))),
    "thirteen_filters": (2, case(N=1, C=2, K=13, spatial=(6, 21), padding=1)),
    "data_grad_skips_pad_rows": (2, case(N=2, C=3, K=2, spatial=(17, 20), kernel=(5, 5))),
    "dilated_wide": (2, case(N=1, C=2, K=5, spatial=(12, 35), dilation=2, padding=2)),
    "groups": (2, case(N=2, C=4, K=6, groups=2, spatial=(11, 18), padding=1)),
    "conv1d_long": (1, case(N=2, C=1, K=4, spatial=(300,), kernel=(5,), padding=2)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd,c", table_params(DIRECT))
def test_conv_direct_kernel_shapes(nd, c, dtype):
    run_forward_and_backward(nd, c, dtype, seed=6)


@pytest.mark.parametrize("nd,c", table_params(DIRECT))
def test_conv_direct_kernel_integer_valued_is_exact(nd, c):
    check_integer_valued_is_exact(nd, c, seed=14)


# With at least half a vector of images (16 lanes with AVX-512, 8 with AVX2, 4 portable), direct
# data gradients of planes narrower than a vector and direct weight gradients put the images in
# the lanes: groups of images with a partial last one, output channels in blocks of 4 + 3 (and
# filters in blocks of 3 + 2 + 2 or 2 + 2 + 2 + 1), rows wider than a vector, padding that crops rows,
# dilation, and one group of images split into ranges of rows (or of filters).
IMAGE_LANES = {
    "lenet_c2_partial_group": (2, case(N=20, C=6, K=16, spatial=(14, 14), kernel=(5, 5))),
    "lenet_c1_weight_grad": (2, case(N=20, C=1, K=7, spatial=(12, 28), kernel=(5, 5), padding=2)),
    "padded_seven_channels": (2, case(N=9, C=7, K=5, spatial=(7, 9), padding=1)),
    "tiny_planes_every_level": (2, case(N=8, C=2, K=3, spatial=(3, 3), kernel=(2, 2), padding=1)),
    "dilated": (2, case(N=16, C=3, K=4, spatial=(11, 12), dilation=2, padding=2)),
    "rows_cropped": (2, case(N=16, C=2, K=3, spatial=(6, 7), padding=(3, 1))),
    "one_group_row_ranges": (2, case(N=8, C=1, K=2, spatial=(5, 5), padding=1)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd,c", table_params(IMAGE_LANES))
def test_conv_image_lane_data_grad_shapes(nd, c, dtype):
    run_forward_and_backward(nd, c, dtype, seed=17)


@pytest.mark.parametrize("nd,c", table_params(IMAGE_LANES))
def test_conv_image_lane_data_grad_integer_valued_is_exact(nd, c):
    check_integer_valued_is_exact(nd, c, seed=18)


# Strided float32 data gradients run by phases: each residue of the input rows (columns) gets a
# stride-1 data gradient of the taps that reach it, through the direct kernel, Winograd, filter
# blocks or GEMM, or zeros where no tap does; gcd(stride, dilation) > 1 skips taps.
STRIDED = {
    "stem_phases_direct": (2, case(N=1, C=3, K=16, spatial=(23, 30), kernel=(7, 7), stride=2, padding=3)),
    "phases_winograd": (2, case(N=2, C=16, K=16, spatial=(13, 12), kernel=(5, 5), stride=2, padding=2)),
    "phases_filter_blocks": (2, case(N=2, C=8, K=12, spatial=(11, 13), kernel=(4, 4), stride=2, padding=1)),
    "stride4_dilation2": (2, case(N=1, C=3, K=4, spatial=(17, 19), stride=4, dilation=2, padding=2)),
    "stride_dilation_pairs": (2, case(N=1, C=2, K=3, spatial=(16, 14), kernel=(4, 3), stride=(3, 2),
                                      dilation=(2, 3), padding=(3, 1))),
    "pointwise_stride3": (2, case(N=2, C=4, K=6, spatial=(9, 10), kernel=(1, 1), stride=3)),
    "phases_gemm": (2, case(N=2, C=1, K=12, spatial=(20, 40), stride=2, padding=1)),
    "conv1d_stride2": (1, case(N=2, C=3, K=8, spatial=(61,), kernel=(7,), stride=2, padding=3)),
    # 8+ channels in every phase: the phases in one pass of the filter-block kernel, which writes
    # each phase's values into dx's rows stride apart.
    "one_pass_3x3": (2, case(N=3, C=20, K=24, spatial=(13, 14), stride=2, padding=1)),
    "one_pass_groups": (2, case(N=2, C=16, K=20, groups=2, spatial=(9, 10), stride=2, padding=1)),
    "one_pass_stride3_dilation2": (2, case(N=1, C=9, K=10, spatial=(17, 16), stride=3, dilation=2, padding=2)),
    "one_pass_pointwise": (2, case(N=2, C=12, K=16, spatial=(9, 11), kernel=(1, 1), stride=2)),
    "one_pass_stride_pair": (2, case(N=1, C=8, K=9, spatial=(12, 15), kernel=(3, 5), stride=(2, 3),
                                     padding=(1, 2))),
    "one_pass_conv1d": (1, case(N=2, C=10, K=12, spatial=(29,), kernel=(5,), stride=2, padding=2)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd,c", table_params(STRIDED))
def test_conv_strided_data_grad_phases(nd, c, dtype):
    run_forward_and_backward(nd, c, dtype, seed=7)


@pytest.mark.parametrize("nd,c", table_params(STRIDED))
def test_conv_strided_data_grad_phases_integer_valued_is_exact(nd, c):
    check_integer_valued_is_exact(nd, c, seed=17)


def test_conv_data_grad_with_infinite_weight_has_no_products_in_the_padding():
    # The direct data gradient reads the padded error's zeros; an infinite weight must not meet
    # them (inf * 0 = NaN): grad_x is +-inf exactly where the weight meets an error value.
    rng = np.random.default_rng(16)
    x, w = randn(rng, (2, 3, 9, 9), np.float32), randn(rng, (2, 3, 5, 5), np.float32)
    w[0, 1, 4, 4] = np.inf
    dy = randn(rng, (2, 2, 9, 9), np.float32)
    dy[dy == 0] = 1.0
    grad_x = np.asarray(juanji.conv2d_backward(dy, x, w, padding=2)[0])
    assert not np.isnan(grad_x).any()
    hit = np.zeros(grad_x.shape, bool)
    hit[:, 1, 2:, 2:] = True  # x[h, w] meets dy[h - 2, w - 2] through tap (4, 4)
    assert np.array_equal(np.isinf(grad_x), hit)
    assert np.array_equal(np.sign(grad_x[:, 1, 2:, 2:]), np.sign(dy[:, 0, :7, :7]))
    finite_w = w.copy()
    finite_w[0, 1, 4, 4] = 0.0
    expected = ref.conv2d_backward(dy, x, finite_w, padding=2)[0]
    assert_close(np.where(hit, 0.0, grad_x), np.where(hit, 0.0, expected), np.float32, what="grad_x")


# One filter per channel (groups = channels = filters) takes the depthwise kernels in every float32
# pass: 3x3 with its weights in registers, other sizes read as they go; planes narrower than a
# vector (blocks of rows), of a few vectors, and wider than a block (overlapping blocks at the end
# of a row); strides 2 and 3 with odd sizes (the forward's rows split into stride phases, the data
# gradient's error spread by the stride), padding 0 to 3 (past the kernel: the data gradient's
# error cropped), dilation, a single pixel, a batch of one, many images, conv1d.
DEPTHWISE = {
    "pad1": (2, case(N=2, C=5, K=5, groups=5, spatial=(9, 11), padding=1)),
    "batch1_odd": (2, case(N=1, C=3, K=3, groups=3, spatial=(7, 13), padding=1)),
    "no_bias_pad0": (2, case(N=2, C=3, K=3, groups=3, spatial=(10, 9), bias=False)),
    "pad2": (2, case(N=2, C=3, K=3, groups=3, spatial=(8, 7), padding=2)),
    "stride2_odd": (2, case(N=2, C=4, K=4, groups=4, spatial=(13, 11), stride=2, padding=1)),
    "stride2_even_pad0": (2, case(N=3, C=6, K=6, groups=6, spatial=(12, 10), stride=2)),
    "stride2_pad3": (2, case(N=1, C=3, K=3, groups=3, spatial=(9, 10), stride=2, padding=3)),
    "narrow_tall": (2, case(N=2, C=3, K=3, groups=3, spatial=(21, 3), padding=1)),
    "wide_rows": (2, case(N=1, C=2, K=2, groups=2, spatial=(5, 75), padding=1)),
    "wide_rows_stride2": (2, case(N=1, C=2, K=2, groups=2, spatial=(6, 131), stride=2, padding=1)),
    "many_channels": (2, case(N=3, C=40, K=40, groups=40, spatial=(10, 10), padding=1)),
    # The weight gradient sums a channel's images in chunks of as many as lay out in 16 KiB:
    # chunks of small planes, the last one short; chunks of a few and of one large plane each.
    "chunked_small_planes": (2, case(N=100, C=2, K=2, groups=2, spatial=(7, 7), padding=1)),
    "chunked_large_planes": (2, case(N=5, C=2, K=2, groups=2, spatial=(40, 44), padding=1)),
    "chunked_stride2": (2, case(N=3, C=2, K=2, groups=2, spatial=(70, 66), stride=2, padding=1)),
    "single_pixel": (2, case(N=2, C=3, K=3, groups=3, spatial=(1, 1), padding=1)),
    "kernel_5x5": (2, case(N=2, C=3, K=3, groups=3, spatial=(11, 12), kernel=(5, 5), padding=2)),
    "kernel_1x7_stride_pair": (2, case(N=2, C=2, K=2, groups=2, spatial=(6, 20), kernel=(1, 7), stride=(1, 2),
                                       padding=(0, 3))),
    "stride3_dilation2": (2, case(N=1, C=4, K=4, groups=4, spatial=(17, 16), stride=3, dilation=2, padding=2)),
    "same_stride2": (2, case(N=2, C=3, K=3, groups=3, spatial=(9, 8), kernel=(4, 3), stride=2, padding="same")),
    "one_channel": (2, case(N=2, C=1, K=1, groups=1, spatial=(6, 9), padding=1)),
    # Stride 1 with output rows as wide as the input's: the planes read unpadded, through masks of
    # lanes (dilated taps, padding that differs left and right, planes past the unpadded limit).
    "dilated_same_width": (2, case(N=2, C=3, K=3, groups=3, spatial=(10, 9), dilation=2, padding=2)),
    "same_even_kernel": (2, case(N=2, C=4, K=4, groups=4, spatial=(7, 10), kernel=(4, 4), padding="same")),
    "wide_unpadded": (2, case(N=1, C=2, K=2, groups=2, spatial=(40, 41), padding=1)),
    "past_unpadded_limit": (2, case(N=1, C=2, K=2, groups=2, spatial=(65, 64), padding=1)),
    "conv1d_stride2": (1, case(N=2, C=6, K=6, groups=6, spatial=(37,), kernel=(3,), stride=2, padding=1)),
    # Stride 2 whose error planes are half the input's (even sizes): the data gradient phase by
    # phase of dx, each the correlation of the error with the taps that reach it (odd and even
    # dilations, even kernels, phases no tap reaches, a one-pixel error, many channels).
    "stride2_phases": (2, case(N=2, C=5, K=5, groups=5, spatial=(14, 16), stride=2, padding=1)),
    "stride2_phases_dilation2": (2, case(N=2, C=3, K=3, groups=3, spatial=(12, 10), stride=2, dilation=2, padding=2)),
    "stride2_phases_dilation3": (2, case(N=1, C=3, K=3, groups=3, spatial=(16, 14), stride=2, dilation=3, padding=3)),
    "stride2_phases_even_kernel": (2, case(N=2, C=4, K=4, groups=4, spatial=(10, 12), kernel=(4, 2), stride=2,
                                           padding=(1, 0))),
    "stride2_phases_1x1": (2, case(N=2, C=3, K=3, groups=3, spatial=(8, 6), kernel=(1, 1), stride=2)),
    "stride2_phases_one_pixel": (2, case(N=1, C=2, K=2, groups=2, spatial=(2, 2), stride=2, padding=1)),
    "stride2_phases_many_channels": (2, case(N=2, C=45, K=45, groups=45, spatial=(28, 28), kernel=(5, 5), stride=2,
                                             padding=2)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd,c", table_params(DEPTHWISE))
def test_conv_depthwise_shapes(nd, c, dtype):
    run_forward_and_backward(nd, c, dtype, seed=19)


@pytest.mark.parametrize("nd,c", table_params(DEPTHWISE))
def test_conv_depthwise_integer_valued_is_exact(nd, c):
    check_integer_valued_is_exact(nd, c, seed=20)


@pytest.mark.parametrize("kind", LAYOUTS)
def test_conv_depthwise_noncontiguous_inputs(kind):
    # float32, so that the depthwise kernels read what the layouts turn into contiguous planes
    c = case(N=2, C=4, K=4, groups=4, spatial=(9, 10), stride=2, padding=1)
    rng = np.random.default_rng(21)
    x, w, b = make_inputs(rng, c, np.float32, gen=randint_data)
    kw = conv_kwargs(c)
    y_ref = ref.conv2d(x, w, b, **kw)
    assert_bitwise(juanji.conv2d(layout(x, kind), layout(w, kind), layout(b, kind), **kw), y_ref, what=f"y ({kind})")
    gy = randint_data(rng, y_ref.shape)
    grads = juanji.conv2d_backward(layout(gy, kind), layout(x, kind), layout(w, kind), **kw)
    for name, g, g_ref in zip(("grad_x", "grad_w", "grad_b"), grads, ref.conv2d_backward(gy, x, w, **kw)):
        assert_bitwise(g, g_ref, what=f"{name} ({kind})")


# Stride-1 3x3 float32 layers with 16+ channels in and out per group take Winograd F(2x2, 3x3)
# (forward, and the data gradient: its correlation has the filters and channels swapped): odd
# output sizes (half-used tiles), padding 0..3 (the data gradient's cropping), filter blocks past
# 16, tile rows wider than a vector of tiles, chunks across images, groups, a single output pixel.
# The weight gradient's two schedules, each over two or more chunks of tiles that split an image:
# few channels by halves of the transforms (16 + 16 -> 768-tile chunks), more through shared
# chunks (40 + 64 -> 1260 tiles).
WINOGRAD = {
    "basic": (2, case(C=16, K=16, spatial=(8, 8), padding=1)),
    "odd_outputs_valid": (2, case(N=3, C=16, K=20, spatial=(7, 9))),
    "pad2_filter_tail": (2, case(C=17, K=33, spatial=(6, 5), padding=2)),
    "pad3_crops_data_grad": (2, case(C=16, K=16, spatial=(5, 6), padding=3)),
    "same": (2, case(C=20, K=16, spatial=(9, 10), padding="same")),
    "pad_pair": (2, case(C=16, K=18, spatial=(6, 11), padding=(0, 2))),
    "wide_rows": (2, case(N=1, C=16, K=16, spatial=(5, 75), padding=1)),
    "many_tiles": (2, case(N=5, C=24, K=16, spatial=(17, 13), padding=1)),
    "groups2": (2, case(C=32, K=48, groups=2, spatial=(7, 8), padding=1)),
    "batch1_out_1x1": (2, case(N=1, C=16, K=17, spatial=(3, 3))),
    "no_bias": (2, case(C=16, K=16, spatial=(6, 6), padding=1, bias=False)),
    "weight_grad_by_halves_chunks": (2, case(N=7, C=16, K=16, spatial=(24, 24), padding=1)),
    "weight_grad_shared_chunks": (2, case(N=4, C=40, K=64, spatial=(40, 40), padding=1)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd,c", table_params(WINOGRAD))
def test_conv_winograd_shapes(nd, c, dtype):
    run_forward_and_backward(nd, c, dtype, seed=5)


@pytest.mark.parametrize("nd,c", table_params(WINOGRAD))
def test_conv_winograd_integer_valued_is_exact(nd, c):
    check_integer_valued_is_exact(nd, c, seed=13)


def test_conv_winograd_error_stays_near_the_direct_sums():
    # 256 channels of standard normal data: Winograd's rounding error, like the direct sum's, grows
    # with the channel count; both stay within a few float32 ulps of the output's scale.
    rng = np.random.default_rng(14)
    x, w = randn(rng, (2, 256, 10, 10), np.float32), randn(rng, (32, 256, 3, 3), np.float32)
    y_ref = ref.conv2d(x.astype(np.float64), w.astype(np.float64), None, padding=1)
    err = np.max(np.abs(np.asarray(juanji.conv2d(x, w, padding=1)) - y_ref)) / np.max(np.abs(y_ref))
    assert err < 4e-6


def test_winograd_can_be_turned_off_for_the_direct_sums():
    rng = np.random.default_rng(15)
    x, w = randn(rng, (2, 16, 6, 7), np.float32), randn(rng, (16, 16, 3, 3), np.float32)
    x[1, 3, 2, 4] = np.inf  # the direct sums give +-inf where the definition does, never NaN
    y_ref = ref.conv2d(x.astype(np.float64), w.astype(np.float64), None, padding=1)
    dy = randn(rng, y_ref.shape, np.float32)
    assert juanji.winograd_enabled()
    on = [np.asarray(juanji.conv2d(x, w, padding=1))]
    on += [np.asarray(t) for t in juanji.conv2d_backward(dy, x, w, padding=1)]
    assert juanji.set_winograd(False) is True
    try:
        assert not juanji.winograd_enabled()
        off = [np.asarray(juanji.conv2d(x, w, padding=1))]
        off += [np.asarray(t) for t in juanji.conv2d_backward(dy, x, w, padding=1)]
        assert "winograd:     off" in juanji.config_string()
    finally:
        assert juanji.set_winograd(True) is False
    assert_close(off[0], y_ref, np.float32, what="y")
    assert np.isinf(off[0]).sum() == np.isinf(y_ref).sum() > 0 and not np.isnan(off[0]).any()
    # grad_x has no infinity in it: both algorithms agree within rounding, and differ in it.
    assert_close(on[1], off[1], np.float32, what="grad_x")
    assert not np.array_equal(on[1], off[1])


# ------------------------------------------------------------------- output shapes

@pytest.mark.parametrize("n,f,s,d", [(7, 3, 1, 1), (7, 4, 1, 1), (7, 3, 2, 1), (8, 3, 2, 1),
                                      (10, 2, 3, 2), (3, 5, 1, 1), (9, 4, 3, 3), (1, 3, 2, 1)])
def test_conv2d_same_output_is_ceil_n_over_s(n, f, s, d):
    x = np.zeros((1, 1, n, n + 1))
    w = np.zeros((1, 1, f, f))
    y = juanji.conv2d(x, w, stride=s, padding="same", dilation=d)
    assert as_np(y).shape == (1, 1, ceil_div(n, s), ceil_div(n + 1, s))


def test_conv2d_same_pads_extra_after():
    # kernel 2: total pad 1, all of it after (TensorFlow convention): the first output
    # sees x[0:2] and the last one sees x[-1] and a zero
    x = np.arange(1.0, 6.0).reshape(1, 1, 1, 5)
    w = np.array([[[[1.0, 10.0]]]])
    y = as_np(juanji.conv2d(x, w, padding="same"))
    np.testing.assert_array_equal(y.ravel(), [21.0, 32.0, 43.0, 54.0, 5.0])


def test_conv1d_same_asymmetric_stride2():
    # n=7, f=4, s=2: out = ceil(7/2) = 4, total = max(3*2 + 3 + 1 - 7, 0) = 3 -> (1 before,
    # 2 after); windows of 4 over [0, 1..7, 0, 0] starting at 0, 2, 4, 6
    x = np.arange(1.0, 8.0).reshape(1, 1, 7)
    w = np.ones((1, 1, 4))
    y = as_np(juanji.conv1d(x, w, stride=2, padding="same"))
    np.testing.assert_array_equal(y.ravel(), [6.0, 14.0, 22.0, 13.0])


def test_conv_is_cross_correlation_not_flipped():
    # seed 000: CNN convolution does no 180-degree flip
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    w = np.zeros((1, 1, 2, 2))
    w[0, 0, 0, 0] = 1.0  # picks the top-left of every window
    y = as_np(juanji.conv2d(x, w))
    np.testing.assert_array_equal(y[0, 0], [[0.0, 1.0], [3.0, 4.0]])


def test_seed_example_two_filters_stride2_zero_padding():
    # seed 001 figure: 3 input channels 5x5, two 3x3x3 filters, stride 2, zero padding 1
    # -> a 3x3x2 output, each value the sum over the 3 channels plus the bias
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(1, 3, 5, 5)).astype(np.float64)
    w = rng.integers(-1, 2, size=(2, 3, 3, 3)).astype(np.float64)
    b = np.array([1.0, 0.0])
    y = as_np(juanji.conv2d(x, w, b, stride=2, padding=1))
    assert y.shape == (1, 2, 3, 3)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for k in range(2):
        for i in range(3):
            for j in range(3):
                assert y[0, k, i, j] == np.sum(xp[0, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3] * w[k]) + b[k]


# ------------------------------------------------------ argument forms and inputs

def test_conv2d_int_and_pair_arguments_agree():
    rng = np.random.default_rng(4)
    x, w, b = randn(rng, (2, 3, 9, 9)), randn(rng, (4, 3, 3, 3)), randn(rng, (4,))
    a = as_np(juanji.conv2d(x, w, b, stride=2, padding=1, dilation=2))
    p = as_np(juanji.conv2d(x, w, b, stride=(2, 2), padding=(1, 1), dilation=(2, 2)))
    np.testing.assert_array_equal(a, p)


def test_conv1d_int_and_1tuple_arguments_agree():
    rng = np.random.default_rng(5)
    x, w = randn(rng, (2, 3, 12)), randn(rng, (4, 3, 3))
    a = as_np(juanji.conv1d(x, w, stride=2, padding=1, dilation=2))
    p = as_np(juanji.conv1d(x, w, stride=(2,), padding=(1,), dilation=(2,)))
    np.testing.assert_array_equal(a, p)


def test_conv_valid_equals_zero_padding():
    rng = np.random.default_rng(6)
    x, w = randn(rng, (1, 2, 6, 7)), randn(rng, (3, 2, 2, 3))
    np.testing.assert_array_equal(as_np(juanji.conv2d(x, w, padding="valid")),
                                  as_np(juanji.conv2d(x, w, padding=0)))


def test_conv_bias_none_equals_zero_bias():
    rng = np.random.default_rng(7)
    x, w = randn(rng, (2, 2, 5, 5)), randn(rng, (3, 2, 3, 3))
    np.testing.assert_array_equal(as_np(juanji.conv2d(x, w)),
                                  as_np(juanji.conv2d(x, w, np.zeros(3))))


def test_conv1d_matches_conv2d_with_unit_height():
    rng = np.random.default_rng(8)
    x, w, b = randn(rng, (2, 4, 11)), randn(rng, (6, 2, 3)), randn(rng, (6,))
    y1 = as_np(juanji.conv1d(x, w, b, stride=2, padding=1, dilation=2, groups=2))
    y2 = as_np(juanji.conv2d(x[:, :, None, :], w[:, :, None, :], b, stride=(1, 2), padding=(0, 1),
                             dilation=(1, 2), groups=2))
    assert_close(y1, y2[:, :, 0, :], np.float64)


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("nd", [1, 2])
def test_conv_noncontiguous_and_tensor_inputs(nd, kind):
    c = case(N=2, C=4, K=6, groups=2, spatial=(9, 8) if nd == 2 else (11,),
             kernel=(3, 2) if nd == 2 else (3,), stride=2, padding=1)
    rng = np.random.default_rng(9)
    fwd, bwd, rfwd, rbwd = OPS[nd]
    x, w, b = make_inputs(rng, c, np.float64)
    kw = conv_kwargs(c)
    y = fwd(layout(x, kind), layout(w, kind), layout(b, kind), **kw)
    assert_close(y, rfwd(x, w, b, **kw), np.float64, what=f"y ({kind})")
    gy = randn(rng, as_np(y).shape)
    grads = bwd(layout(gy, kind), layout(x, kind), layout(w, kind), **kw)
    for name, g, g_ref in zip(("grad_x", "grad_w", "grad_b"), grads, rbwd(gy, x, w, **kw)):
        assert_close(g, g_ref, np.float64, what=f"{name} ({kind})")


def test_conv_tensor_inputs_via_juanji_tensor():
    rng = np.random.default_rng(10)
    x, w = randn(rng, (1, 2, 5, 5), np.float32), randn(rng, (2, 2, 3, 3), np.float32)
    y = juanji.conv2d(juanji.tensor(x), juanji.tensor(w), padding=1)
    assert y.shape == (1, 2, 5, 5)
    assert y.dtype == np.dtype(np.float32)
    assert_close(y.numpy(), ref.conv2d(x, w, padding=1), np.float32)


# ------------------------------------------------------- integer-exact float32

EXACT = {
    "2d_basic": (2, case(N=2, C=4, K=6, spatial=(9, 9), kernel=(3, 3), padding=1)),
    "2d_stride_dil_groups": (2, case(N=2, C=6, K=4, groups=2, spatial=(11, 10), kernel=(3, 2),
                                     stride=(2, 3), dilation=(2, 1), padding=(2, 1))),
    "2d_depthwise_same_s2": (2, case(N=1, C=5, K=10, groups=5, spatial=(8, 9), kernel=(4, 3),
                                     stride=2, padding="same")),
    "1d_basic": (1, case(N=3, C=4, K=5, spatial=(17,), kernel=(5,), stride=2, padding=2)),
    "2d_filter_blocks": (2, case(N=3, C=8, K=20, spatial=(9, 14), padding=1)),
    # few input channels, rows of one vector: the data gradient's direct kernel in row pairs
    "2d_lenet_c2_like": (2, case(N=2, C=6, K=16, spatial=(14, 14), kernel=(5, 5))),
    "2d_row_pairs_odd_rows": (2, case(N=1, C=5, K=12, spatial=(9, 13), padding=1)),
    "2d_filter_blocks_s2_groups": (2, case(N=2, C=16, K=18, groups=2, spatial=(9, 8), stride=2, padding=1)),
    "1d_filter_blocks": (1, case(N=2, C=9, K=16, spatial=(30,), kernel=(5,), padding=2)),
}


def check_integer_valued_is_exact(nd, c, seed):
    rng = np.random.default_rng(seed)
    fwd, bwd, rfwd, rbwd = OPS[nd]
    x, w, b = make_inputs(rng, c, np.float32, gen=randint_data)
    kw = conv_kwargs(c)
    y_ref = rfwd(x, w, b, **kw)
    assert_bitwise(fwd(x, w, b, **kw), y_ref, what="y")
    gy = randint_data(rng, y_ref.shape)
    for name, g, g_ref in zip(("grad_x", "grad_w", "grad_b"), bwd(gy, x, w, **kw), rbwd(gy, x, w, **kw)):
        assert np.max(np.abs(g_ref)) < 2**24
        assert_bitwise(g, g_ref, what=name)


@pytest.mark.parametrize("nd,c", table_params(EXACT))
def test_conv_integer_valued_float32_is_exact(nd, c):
    check_integer_valued_is_exact(nd, c, seed=11)


# ------------------------------------------------------- finite differences (f64)

FD_CASES = {
    "2d_pad1": (2, case(N=2, C=2, K=2, spatial=(4, 5), kernel=(2, 3), padding=1)),
    "2d_stride2_dil2_groups2": (2, case(N=1, C=2, K=4, groups=2, spatial=(6, 5), kernel=(2, 2),
                                        stride=2, dilation=2, padding=(1, 0))),
    "2d_stride_gt_kernel": (2, case(N=1, C=2, K=2, spatial=(7, 5), kernel=(2, 1), stride=3)),
    "2d_same_even_stride2": (2, case(N=1, C=2, K=3, spatial=(5, 6), kernel=(2, 3), stride=2,
                                     padding="same")),
    "2d_depthwise_mult2": (2, case(N=1, C=2, K=4, groups=2, spatial=(4, 4), kernel=(3, 3), padding=1)),
    "2d_depthwise_stride2": (2, case(N=2, C=3, K=3, groups=3, spatial=(5, 6), kernel=(3, 3), stride=2, padding=1)),
    "1d_basic": (1, case(N=2, C=2, K=3, spatial=(7,), kernel=(3,), padding=1)),
    "1d_stride3_dil2_same": (1, case(N=1, C=3, K=3, groups=3, spatial=(10,), kernel=(2,), stride=3,
                                     dilation=2, padding="same")),
}


@pytest.mark.parametrize("nd,c", table_params(FD_CASES))
def test_conv_backward_matches_finite_differences(nd, c):
    rng = np.random.default_rng(12)
    fwd, bwd, _, _ = OPS[nd]
    x, w, b = make_inputs(rng, c, np.float64)
    kw = conv_kwargs(c)
    R = randn(rng, out_shape(c))
    gx, gw, gb = bwd(R, x, w, **kw)

    def forward(x, w, b):
        return fwd(x, w, b, **kw)

    check_fd(forward, dict(x=x, w=w, b=b), dict(x=gx, w=gw, b=gb), R)


# Layers whose im2col matrix would outgrow the caches take the implicit-GEMM path (B packed
# straight from x); small test shapes never reach it, so these do.
LARGE_CASES = [
    ((2, 64, 40, 40), (8, 64, 3, 3), dict(padding=1)),
    ((2, 64, 125, 119), (6, 32, 3, 3), dict(stride=2, padding=(2, 1), dilation=2, groups=2)),
    ((1, 3, 230, 228), (5, 3, 7, 7), dict(stride=2, padding=3)),
]


@pytest.mark.parametrize("xs,ws,kw", LARGE_CASES, ids=["res_like", "strided_dilated_groups", "stem_like"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_layers_take_the_implicit_path_correctly(xs, ws, kw, dtype):
    rng = np.random.default_rng(11)
    x, w, b = randn(rng, xs, dtype), randn(rng, ws, dtype), randn(rng, (ws[0],), dtype)
    expected = ref.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **kw)
    assert_close(juanji.conv2d(x, w, b, **kw), expected, dtype)


@pytest.mark.parametrize("xs,ws,kw", LARGE_CASES, ids=["res_like", "strided_dilated_groups", "stem_like"])
def test_large_layers_weight_gradient_on_the_implicit_path(xs, ws, kw):
    rng = np.random.default_rng(12)
    x, w = randn(rng, xs), randn(rng, ws)
    dy = randn(rng, np.asarray(ref.conv2d(x, w, None, **kw)).shape)
    _, gw_ref, gb_ref = ref.conv2d_backward(dy, x, w, **kw)
    gx, gw, gb = juanji.conv2d_backward(dy, x, w, **kw)
    assert_close(gw, gw_ref, np.float64)
    assert_close(gb, gb_ref, np.float64)

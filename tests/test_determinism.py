"""Results must not depend on the thread count, and integer-valued inputs (exact in float32) must
give bit-identical results on every SIMD path: the exactness trick of oneDNN's benchdnn."""

import numpy as np
import pytest

import juanji
from helpers import cpu_simd_levels
from juanji import nn

LEVELS = cpu_simd_levels()
pytestmark = pytest.mark.usefixtures("restore_runtime")


def conv_case(rng, values):
    # Big enough for the threaded paths (images in parallel, threaded GEMM, weight-grad chunks)
    # and odd enough for the vector tails.
    x = values(rng, (5, 6, 13, 11))
    w = values(rng, (10, 3, 3, 3))
    b = values(rng, (10,))
    dy = values(rng, (5, 10, 7, 6))
    return x, w, b, dy


def all_ops(x, w, b, dy):
    outs = [juanji.conv2d(x, w, b, stride=2, padding=1, groups=2)]
    outs += list(juanji.conv2d_backward(dy, x, w, stride=2, padding=1, groups=2))
    flat = x.reshape(5, -1)
    lw = np.resize(w, (10, flat.shape[1]))
    outs.append(juanji.linear(flat, lw, b))
    outs += list(juanji.linear_backward(np.resize(dy, (5, 10)), flat, lw))
    # A few rows (inference on a few images): dot products from w's rows, the rows split by thread.
    outs.append(juanji.linear(np.resize(x, (3, 131)), np.resize(w, (300, 131)), np.resize(b, 300)))
    # 8+ filters per group: the filter-vectorised direct kernels (data gradient at stride 1).
    fb_x, fb_w = np.resize(x, (5, 9, 13, 11)), np.resize(w, (20, 9, 3, 3))
    outs.append(juanji.conv2d(fb_x, fb_w, np.resize(b, 20), padding=1))
    outs += list(juanji.conv2d_backward(np.resize(dy, (5, 20, 13, 11)), fb_x, fb_w, padding=1))
    # 16+ channels in and out, stride-1 3x3: Winograd F(2x2, 3x3), forward and data gradient.
    wg_x, wg_w = np.resize(x, (5, 16, 13, 11)), np.resize(w, (18, 16, 3, 3))
    outs.append(juanji.conv2d(wg_x, wg_w, np.resize(b, 18), padding=1))
    outs += list(juanji.conv2d_backward(np.resize(dy, (5, 18, 13, 11)), wg_x, wg_w, padding=1))
    # Its weight gradient over three chunks, three filter blocks' halves shared out by the thread
    # count (with 3 threads one takes a block's top half and another's bottom half).
    wg_x, wg_w = np.resize(x, (7, 16, 24, 24)), np.resize(w, (48, 16, 3, 3))
    outs += list(juanji.conv2d_backward(np.resize(dy, (7, 48, 24, 24)), wg_x, wg_w, padding=1))
    # LeNet's second layer: the data gradient's direct kernel in row pairs (AVX-512), GEMM below.
    ln_x, ln_w = np.resize(x, (5, 6, 14, 14)), np.resize(w, (16, 6, 5, 5))
    outs += list(juanji.conv2d_backward(np.resize(dy, (5, 16, 10, 10)), ln_x, ln_w))
    # 20 images: LeNet's layers with the batch in the lanes (the first layer's weight gradient, the
    # second's data gradient), split into ranges of filters or rows by the thread count.
    il_x, il_w = np.resize(x, (20, 1, 28, 28)), np.resize(w, (6, 1, 5, 5))
    outs += list(juanji.conv2d_backward(np.resize(dy, (20, 6, 28, 28)), il_x, il_w, padding=2))
    il_x, il_w = np.resize(x, (20, 6, 14, 14)), np.resize(w, (16, 6, 5, 5))
    outs += list(juanji.conv2d_backward(np.resize(dy, (20, 16, 10, 10)), il_x, il_w))
    # A stem-like strided layer: the data gradient's stride phases through the direct kernel,
    # rows of 7+ vectors of 16 lanes.
    st_x, st_w = np.resize(x, (2, 3, 12, 230)), np.resize(w, (16, 3, 7, 7))
    outs += list(juanji.conv2d_backward(np.resize(dy, (2, 16, 6, 115)), st_x, st_w, stride=2, padding=3))
    # Depthwise 3x3 at strides 1 and 2 (planes split among the threads, the weight gradient's
    # per-plane sums added image by image) and a 5x5 through the kernels' general sizes.
    dw_x, dw_w = np.resize(x, (5, 12, 13, 11)), np.resize(w, (12, 1, 3, 3))
    outs.append(juanji.conv2d(dw_x, dw_w, np.resize(b, 12), padding=1, groups=12))
    outs += list(juanji.conv2d_backward(np.resize(dy, (5, 12, 13, 11)), dw_x, dw_w, padding=1, groups=12))
    outs += list(juanji.conv2d_backward(np.resize(dy, (5, 12, 7, 6)), dw_x, dw_w, stride=2, padding=1, groups=12))
    dw_w5 = np.resize(w, (12, 1, 5, 5))
    outs += list(juanji.conv2d_backward(np.resize(dy, (5, 12, 13, 11)), dw_x, dw_w5, padding=2, groups=12))
    # One image (batch-1 inference): the direct kernel's filters split among the threads (1 and 3
    # input channels), and Winograd passed over for filter blocks (few tiles).
    for channels in (1, 3):
        one_x, one_w = np.resize(x, (1, channels, 28, 27)), np.resize(w, (29, channels, 3, 3))
        outs.append(juanji.conv2d(one_x, one_w, np.resize(b, 29), padding=1))
    one_x, one_w = np.resize(x, (1, 32, 14, 13)), np.resize(w, (40, 32, 3, 3))
    outs.append(juanji.conv2d(one_x, one_w, np.resize(b, 40), padding=1))
    # One image's pointwise layers, at strides 1 and 2: the image outweighs the weights, so its rows
    # are shared out among the threads.
    pw_x, pw_w = np.resize(x, (1, 40, 13, 11)), np.resize(w, (20, 40, 1, 1))
    outs.append(juanji.conv2d(pw_x, pw_w, np.resize(b, 20)))
    outs.append(juanji.conv2d(pw_x, pw_w, np.resize(b, 20), stride=2))
    outs.append(juanji.max_pool2d(x, 3, 2, 1))
    # Dropout's masks: threaded chunks with tails, vector bodies with scalar tails.
    juanji.manual_seed(7)
    outs += list(juanji.dropout(np.resize(x, (5, 7001)), 0.3))
    outs.append(juanji.avg_pool2d(x, 2))
    return [np.asarray(o).copy() for o in outs]


def floats(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def small_ints(rng, shape):
    return rng.integers(-3, 4, shape).astype(np.float32)


def test_thread_count_does_not_change_results():
    rng = np.random.default_rng(0)
    case = conv_case(rng, floats)
    results = {}
    for threads in (1, 2, 3):
        juanji.set_num_threads(threads)
        results[threads] = all_ops(*case)
    for threads in (2, 3):
        for a, b in zip(results[1], results[threads]):
            np.testing.assert_array_equal(a, b)


def test_large_conv_is_thread_independent():
    rng = np.random.default_rng(1)
    x, w = floats(rng, (3, 32, 20, 20)), floats(rng, (48, 32, 3, 3))
    dy = floats(rng, (3, 48, 20, 20))
    outs = {}
    for threads in (1, 2):
        juanji.set_num_threads(threads)
        outs[threads] = [np.asarray(juanji.conv2d(x, w, padding=1))] + [
            np.asarray(t) for t in juanji.conv2d_backward(dy, x, w, padding=1)]
    for a, b in zip(outs[1], outs[2]):
        np.testing.assert_array_equal(a, b)


def test_one_image_through_a_fused_batch_norm_relu_max_pool_is_thread_independent():
    # Eval mode, one image: the pass's channels are shared out among the threads.
    rng = np.random.default_rng(2)
    model = nn.Sequential(nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2)).eval()
    state = model.state_dict()
    for name in ("0.weight", "0.bias", "0.running_mean"):
        state[name][...] = floats(rng, 32)
    state["0.running_var"][...] = rng.random(32, dtype=np.float32) + 0.5
    x = floats(rng, (1, 32, 28, 27))
    assert model._plan() == ["BatchNorm2d+ReLU+MaxPool2d"]
    outs = {}
    for threads in (1, 2, 3):
        juanji.set_num_threads(threads)
        outs[threads] = np.asarray(model(x)).copy()
    for threads in (2, 3):
        np.testing.assert_array_equal(outs[1], outs[threads])


@pytest.mark.parametrize("threads", [1, 2])
def test_integer_inputs_are_bit_identical_on_every_simd_level(threads):
    juanji.set_num_threads(threads)
    case = conv_case(np.random.default_rng(2), small_ints)
    per_level = {}
    for level in LEVELS:
        assert juanji.set_simd_level(level) == level
        per_level[level] = all_ops(*case)
    first = per_level[LEVELS[0]]
    for level in LEVELS[1:]:
        for a, b in zip(first, per_level[level]):
            np.testing.assert_array_equal(a, b)


def test_set_simd_level_never_exceeds_detected():
    assert juanji.set_simd_level("avx512") == juanji.simd_detected()
    with pytest.raises(ValueError, match="level"):
        juanji.set_simd_level("sse9")


@pytest.mark.parametrize("position", [0, 5, 16, 17, 31, 40])
def test_nan_propagates_in_vector_bodies_and_tails(position):
    x = np.arange(41, dtype=np.float32).reshape(1, 1, 1, 41)
    x[0, 0, 0, position] = np.nan
    for level in LEVELS:
        juanji.set_simd_level(level)
        r = np.asarray(juanji.relu(x))
        assert np.isnan(r[0, 0, 0, position]) and np.isnan(r).sum() == 1
        p = np.asarray(juanji.max_pool1d(x.reshape(1, 1, 41), 2))
        assert np.isnan(p[0, 0, position // 2]) if position < 40 else not np.isnan(p).any()
        y = np.asarray(juanji.conv1d(x.reshape(1, 1, 41), np.ones((1, 1, 3), np.float32)))
        assert np.isnan(y[0, 0, max(0, position - 2): position + 1]).all()
        assert np.isnan(y).sum() == min(position, 38) - max(0, position - 2) + 1


@pytest.mark.parametrize("position", [0, 1, 20, 39, 40])
def test_nan_reaches_exactly_the_weight_taps_that_see_it(position):
    x = np.ones((2, 1, 41), np.float32)
    x[1, 0, position] = np.nan
    dy = np.ones((2, 2, 39), np.float32)
    w = np.ones((2, 1, 3), np.float32)
    expected = [position - s in range(39) for s in range(3)]
    for level in LEVELS:
        juanji.set_simd_level(level)
        gw = np.asarray(juanji.conv1d_backward(dy, x, w)[1])
        for k in range(2):
            assert list(np.isnan(gw[k, 0])) == expected


def documented_sum(*planes):
    # vec_math's order for sums in double: term i of every plane to partial sum i % 32, the planes
    # in order; the partial sums j, j + 8, j + 16, j + 24 added as (j + (j + 8)) + ((j + 16) + (j +
    # 24)), then those eight in order.
    partial = [0.0] * 32
    for values in planes:
        for i, v in enumerate(values):
            partial[i % 32] += float(v)
    total = 0.0
    for j in range(8):
        total += (partial[j] + partial[j + 8]) + (partial[j + 16] + partial[j + 24])
    return total


@pytest.mark.parametrize("threads", [1, 2])
def test_batch_norm_mean_is_the_documented_sum_on_every_simd_level(threads):
    # The SIMD chains must add in exactly the documented order at every level. Each plane holds
    # pairs of large values that cancel exactly among values near 1: which of those survive next to
    # a large partial sum depends on the order, so any other order changes the mean even after its
    # rounding to float32. Planes of 259 values: whole rounds of the four chains, a lone chunk of 8
    # and a scalar tail.
    juanji.set_num_threads(threads)
    rng = np.random.default_rng(5)
    x = rng.uniform(0.5, 1.5, (3, 4, 7, 37)).astype(np.float32)
    for plane in x.reshape(12, -1):
        at = rng.permutation(plane.size)[:40]
        large = np.exp2(rng.integers(30, 60, 20)).astype(np.float32)
        plane[at[:20]], plane[at[20:]] = large, -rng.permutation(large)
    N, C = x.shape[:2]
    expected = np.array([documented_sum(*(x[n, c].ravel() for n in range(N))) / x[:, c].size for c in range(C)],
                        np.float32)
    for level in LEVELS:
        juanji.set_simd_level(level)
        bn = nn.BatchNorm2d(C, momentum=1.0)  # running_mean becomes the batch mean
        bn.forward(x, training=True)
        running_mean = next(iter(nn.Sequential(bn).buffers())).data
        np.testing.assert_array_equal(running_mean, expected, err_msg=level)

"""Sizes computed from huge arguments (SPEC "Errors"): where a size overflows int64, or passes
what a tensor can hold or the kernels can index, the op raises ValueError naming the argument;
it never returns a value computed from a wrapped size and never crashes. Large values that fit
still give torch's results.

Values stay at or below 2**63 - 1: larger Python ints fail in the argument conversion, before
any size is computed."""

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import juanji
from juanji import kernels, nn

BIG = 2**62
MAX = 2**63 - 1
LIMIT = 2**61 - 1  # the largest padded size or dilated kernel a convolution or pooling takes

PADDING = r"(?i)padding"
DILATION = r"(?i)dilation"
DILATION_OR_PADDING = r"(?i)(dilation|padding)"
KERNEL = r"(?i)kernel"
GROUPS = r"(?i)groups"
X = r"(?i)\bx\b"


def o(*shape):
    return np.ones(shape, dtype=np.float32)


CONV = {
    1: (juanji.conv1d, juanji.conv1d_backward, (1, 1, 5), (1, 1, 3)),
    2: (juanji.conv2d, juanji.conv2d_backward, (1, 1, 5, 5), (1, 1, 3, 3)),
}

# (id, options, pattern) for conv1d and conv2d, forward and backward
CONV_OPTIONS = [
    ("padding_2**62", dict(padding=BIG), PADDING),
    ("padding_max", dict(padding=MAX), PADDING),
    ("padding_past_limit", dict(padding=2**60), PADDING),
    ("output_too_large", dict(padding=2**58), PADDING),
    ("dilation_2**62", dict(dilation=BIG), DILATION),
    ("dilation_max", dict(dilation=MAX), DILATION),
    ("dilation_past_limit", dict(dilation=2**60), DILATION),
    ("dilation_and_padding_2**62", dict(dilation=BIG, padding=BIG), DILATION_OR_PADDING),
    ("dilation_and_padding_max", dict(dilation=MAX, padding=MAX), DILATION_OR_PADDING),
    ("same_padding_past_limit", dict(dilation=(LIMIT - 1) // 2, padding="same"), PADDING),
    ("stride_max_padding_2**62", dict(stride=MAX, padding=BIG), PADDING),
    ("stride_and_dilation_2**62", dict(stride=BIG, dilation=BIG), DILATION),
    ("all_max", dict(stride=MAX, padding=MAX, dilation=MAX), DILATION_OR_PADDING),
]
CONV_2D_OPTIONS = [
    ("padding_pair", dict(padding=(0, BIG)), PADDING),
    ("dilation_pair", dict(dilation=(MAX, 1)), DILATION),
    ("groups_2**62", dict(groups=BIG), GROUPS),
]


def conv_cases():
    for dims, (forward, backward, xs, ws) in CONV.items():
        options = CONV_OPTIONS + (CONV_2D_OPTIONS if dims == 2 else [])
        for name, kw, pattern in options:
            yield pytest.param(lambda f=forward, kw=kw, xs=xs, ws=ws: f(o(*xs), o(*ws), **kw), pattern,
                               id=f"conv{dims}d-{name}")
            yield pytest.param(lambda b=backward, kw=kw, xs=xs, ws=ws: b(o(*xs), o(*xs), o(*ws), **kw), pattern,
                               id=f"conv{dims}d_backward-{name}")


POOL = {
    "max_pool2d": (juanji.max_pool2d, juanji.max_pool2d_backward, (1, 1, 5, 5)),
    "avg_pool2d": (juanji.avg_pool2d, juanji.avg_pool2d_backward, (1, 1, 5, 5)),
    "max_pool1d": (juanji.max_pool1d, juanji.max_pool1d_backward, (1, 1, 5)),
    "avg_pool1d": (juanji.avg_pool1d, juanji.avg_pool1d_backward, (1, 1, 5)),
}

# (id, kernel_size, options, pattern) for every pooling, forward and backward
POOL_OPTIONS = [
    ("kernel_max_padding_2**62", MAX, dict(padding=BIG), PADDING),  # more than half the kernel
    ("kernel_max_padding_2**62-1", MAX, dict(padding=BIG - 1), PADDING),
    ("kernel_2**62_padding_2**61", BIG, dict(padding=2**61), PADDING),
    ("kernel_max", MAX, {}, KERNEL),
    ("kernel_2**62_stride_max", BIG, dict(stride=MAX), KERNEL),
    ("kernel_stride_max_padding", MAX, dict(stride=MAX, padding=BIG - 1, ceil_mode=True), PADDING),
    ("stride_max_padding_2**61", BIG, dict(stride=MAX, padding=2**61), PADDING),
]
# the average's divisor, a window's area in the padded plane, would pass int64
POOL_2D_OPTIONS = [("padded_plane", 2**40, dict(padding=2**39), PADDING)]


def pool_cases():
    for op, (forward, backward, xs) in POOL.items():
        options = POOL_OPTIONS + (POOL_2D_OPTIONS if op.endswith("2d") else [])
        for name, k, kw, pattern in options:
            yield pytest.param(lambda f=forward, k=k, kw=kw, xs=xs: f(o(*xs), k, **kw), pattern, id=f"{op}-{name}")
            yield pytest.param(lambda b=backward, k=k, kw=kw, xs=xs: b(o(1, 1, 1), o(*xs), k, **kw), pattern,
                               id=f"{op}_backward-{name}")


def conv2d_forward_past_int64():
    # Built for a (1, 1, 2**20, 2**20) input, its output fits; a batch of 4 does not.
    layer = nn.Conv2d(1, 1, 3, padding=2**28)
    return layer.forward(o(4, 1, 5, 5), training=True)


def avg_pool2d_forward_past_int64():
    # Fine for the layer's probe; 2**21 rows make the padded plane (2**21 x 2**42 + 1) pass int64.
    layer = nn.AvgPool2d((2, 2**42), padding=(0, 2**41))
    return layer.forward(o(1, 1, 2**21, 1), training=True)


LAYER_CASES = [
    pytest.param(lambda: nn.Conv2d(1, 1, 3, padding=BIG), PADDING, id="Conv2d-padding"),
    pytest.param(lambda: nn.Conv2d(1, 1, 3, padding=(1, MAX)), PADDING, id="Conv2d-padding_pair"),
    pytest.param(lambda: nn.Conv2d(1, 1, 3, dilation=BIG), DILATION, id="Conv2d-dilation"),
    pytest.param(lambda: nn.Conv2d(1, 1, 3, dilation=BIG, padding=BIG), DILATION_OR_PADDING,
                 id="Conv2d-dilation_and_padding"),
    pytest.param(lambda: nn.Conv2d(1, 1, 3, stride=MAX, padding=MAX), PADDING, id="Conv2d-stride_and_padding"),
    pytest.param(lambda: nn.Conv2d(1, 1, BIG), r"kernel_size", id="Conv2d-kernel_size"),
    pytest.param(lambda: nn.Conv2d(1, 1, (3, MAX)), r"kernel_size", id="Conv2d-kernel_size_pair"),
    pytest.param(lambda: nn.Conv2d(BIG, 1, 3), r"in_channels", id="Conv2d-in_channels"),
    pytest.param(lambda: nn.Conv2d(1, BIG, 3), r"out_channels", id="Conv2d-out_channels"),
    pytest.param(lambda: nn.Conv1d(1, 1, 3, padding=MAX), PADDING, id="Conv1d-padding"),
    pytest.param(lambda: nn.Conv1d(1, 1, 3, dilation=MAX), DILATION, id="Conv1d-dilation"),
    pytest.param(lambda: nn.Conv2d(1, 1, 3).output_shape((1, 1, BIG, 5)), X, id="Conv2d-output_shape"),
    pytest.param(conv2d_forward_past_int64, PADDING, id="Conv2d-forward"),
    pytest.param(lambda: nn.MaxPool2d(MAX, padding=BIG), PADDING, id="MaxPool2d-padding"),
    pytest.param(lambda: nn.MaxPool2d(MAX, padding=BIG - 1), PADDING, id="MaxPool2d-padding_past_limit"),
    pytest.param(lambda: nn.MaxPool2d(MAX), KERNEL, id="MaxPool2d-kernel_size"),
    pytest.param(lambda: nn.MaxPool2d(BIG, stride=MAX, padding=2**61), PADDING, id="MaxPool2d-stride_and_padding"),
    pytest.param(lambda: nn.AvgPool2d(2**40, padding=2**39), PADDING, id="AvgPool2d-padded_plane"),
    pytest.param(lambda: nn.MaxPool1d(MAX, padding=BIG), PADDING, id="MaxPool1d-padding"),
    pytest.param(lambda: nn.AvgPool1d(BIG, stride=MAX), KERNEL, id="AvgPool1d-kernel_size"),
    pytest.param(lambda: nn.MaxPool2d(2).output_shape((1, 1, BIG, 5)), X, id="MaxPool2d-output_shape"),
    pytest.param(avg_pool2d_forward_past_int64, PADDING, id="AvgPool2d-forward"),
    pytest.param(lambda: nn.Linear(BIG, BIG), r"features", id="Linear-features"),
    pytest.param(lambda: nn.Flatten().output_shape((1, 2**40, 2**40)), r"(?i)flatten", id="Flatten-output_shape"),
]

# A broadcast view holds its elements without the memory: the conversion refuses the count.
SIGNAL_CASES = [
    pytest.param(lambda: juanji.convolve(np.broadcast_to(np.float32(1), (2**60,)), o(3)), r"\bf\b",
                 id="convolve"),
    pytest.param(lambda: juanji.correlate(o(3), np.broadcast_to(np.float32(1), (2**60,))), r"\bg\b",
                 id="correlate"),
    pytest.param(lambda: juanji.convolve2d(np.broadcast_to(np.float32(1), (2**30, 2**30)), o(3, 3)), r"\ba\b",
                 id="convolve2d"),
    pytest.param(lambda: kernels.box(BIG), r"\bn\b", id="kernels.box"),
    pytest.param(lambda: kernels.box(3037000500), r"\bn\b", id="kernels.box_square_past_int64"),
    pytest.param(lambda: kernels.gaussian(MAX, 1.0), r"\bn\b", id="kernels.gaussian"),
]

TENSOR_CASES = [
    pytest.param(lambda: juanji.arange(0, 1e300), r"arange", id="arange"),
    pytest.param(lambda: juanji.arange(0.0, float(2**63), 1.0), r"arange", id="arange_2**63"),
    pytest.param(lambda: juanji.zeros(4).reshape(BIG, BIG, -1), r"reshape", id="reshape_inferred"),
]


def assert_refused(call, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        call()
    # A size that overflowed must not reach the message as a wrapped, negative number (-1 is
    # reshape's request to infer a size).
    assert not re.search(r"-(?!1\b)\d", str(info.value)), str(info.value)


@pytest.mark.parametrize("call,pattern", list(conv_cases()))
def test_conv_refuses_overflowing_sizes(call, pattern):
    assert_refused(call, pattern)


@pytest.mark.parametrize("call,pattern", list(pool_cases()))
def test_pool_refuses_overflowing_sizes(call, pattern):
    assert_refused(call, pattern)


@pytest.mark.parametrize("call,pattern", LAYER_CASES)
def test_layers_refuse_overflowing_sizes(call, pattern):
    assert_refused(call, pattern)


@pytest.mark.parametrize("call,pattern", SIGNAL_CASES + TENSOR_CASES)
def test_signal_and_tensor_sizes_refused(call, pattern):
    assert_refused(call, pattern)


# These crashed the interpreter (segfault, heap corruption) before sizes were checked: each runs
# in a fresh one, so a regression fails this test instead of ending the session.
CRASHED_BEFORE = [
    "juanji.conv2d(o(1, 1, 5, 5), o(1, 1, 3, 3), dilation=2**61, padding=2**61)",
    "juanji.conv1d(o(1, 1, 5), o(1, 1, 3), dilation=2**62, padding=2**62)",
    "juanji.conv2d_backward(o(1, 1, 5, 5), o(1, 1, 5, 5), o(1, 1, 3, 3), dilation=2**61, padding=2**61)",
]


def run_in_fresh_interpreter(code):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"exit status {proc.returncode}: {proc.stderr[-2000:]}"
    return proc.stdout


@pytest.mark.parametrize("expression", CRASHED_BEFORE)
def test_crash_prone_geometry_is_refused_in_a_fresh_interpreter(expression):
    out = run_in_fresh_interpreter(f"""
        import numpy as np
        import juanji
        o = lambda *shape: np.ones(shape, dtype=np.float32)
        try:
            {expression}
        except ValueError as e:
            print("ValueError:", e)
        else:
            print("returned a value")
    """)
    assert re.match(r"ValueError:.*(dilation|padding)", out), out


# ---- large values that fit: torch's results -------------------------------------------------


def test_large_stride_float32_data_gradient_finishes():
    # The float32 data gradient loops over the stride's phases (stride_h x stride_w of them): one
    # output must not make that 10**18. In a fresh interpreter with a timeout, so that a
    # regression fails here (and -x stops) instead of hanging the comparisons below.
    out = run_in_fresh_interpreter("""
        import numpy as np
        import juanji
        x, w = np.ones((1, 1, 5, 5), np.float32), np.ones((1, 1, 3, 3), np.float32)
        grad_x, _, _ = juanji.conv2d_backward(np.ones((1, 1, 1, 1), np.float32), x, w, stride=10**9)
        print(np.asarray(grad_x)[0, 0].tolist())
    """)
    expected = np.zeros((5, 5))
    expected[:3, :3] = 1
    assert out.strip() == str(expected.tolist())


def torch_stride(stride):
    # One output either way; torch's oneDNN refuses some huge strides with padding.
    return tuple(min(s, 1000) for s in stride) if isinstance(stride, tuple) else min(stride, 1000)


CONV_VALID = [
    dict(stride=10**9),
    dict(stride=BIG),
    dict(stride=MAX),
    dict(stride=MAX, padding=1),
    dict(stride=10**9, padding=2),
    dict(stride=(10**9, 2), padding=1),
    dict(dilation=2**40, padding=2**40),  # only the centre tap reaches the input
    dict(dilation=2**59, padding="same"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("options", CONV_VALID, ids=str)
def test_large_conv_arguments_match_torch(dims, options, dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    if dims == 1 and isinstance(options.get("stride"), tuple):
        pytest.skip("a pair of strides is 2-d")
    forward, backward, _, _ = CONV[dims]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3) + (7,) * dims).astype(dtype)
    w = rng.standard_normal((4, 3) + (3,) * dims).astype(dtype)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    torch_options = dict(options, **({"stride": torch_stride(options["stride"])} if "stride" in options else {}))
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    ty = (F.conv1d if dims == 1 else F.conv2d)(tx, tw, **torch_options)
    y = np.asarray(forward(x, w, **options))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=tolerance, atol=tolerance)
    g = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(g))
    grad_x, grad_w, _ = backward(g, x, w, **options)
    np.testing.assert_allclose(np.asarray(grad_x), tx.grad.numpy(), rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(np.asarray(grad_w), tw.grad.numpy(), rtol=tolerance, atol=tolerance)


POOL_VALID = [
    dict(stride=10**9),
    dict(stride=10**9, padding=1),
    dict(stride=10**9, ceil_mode=True),
    dict(stride=(10**9, 2), padding=1, ceil_mode=True),
]


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("options", POOL_VALID, ids=str)
@pytest.mark.parametrize("huge", [False, True], ids=["1e9", "max"])
def test_large_pool_strides_match_torch(op, options, huge):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 7, 7))
    expected = getattr(torch.nn.functional, op)(torch.tensor(x), 3, **options).numpy()
    if huge:  # past torch's int32 arguments: still one window along that dim
        stride = options["stride"]
        options = dict(options, stride=(MAX, stride[1]) if isinstance(stride, tuple) else MAX)
    forward, backward, _ = POOL[op]
    y = np.asarray(forward(x, 3, **options))
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    assert np.asarray(backward(np.ones_like(y), x, 3, **options)).shape == x.shape


def test_large_strides_in_layers():
    x = np.random.default_rng(2).standard_normal((2, 3, 7, 7)).astype(np.float32)
    conv = nn.Conv2d(3, 4, 3, stride=MAX, padding=1)
    y = conv.forward(x, training=True)
    np.testing.assert_allclose(np.asarray(y), np.asarray(juanji.conv2d(x, conv.weight, conv.bias, padding=1,
                                                                       stride=10)), rtol=1e-6, atol=1e-6)
    assert np.asarray(conv.backward(np.ones(y.shape, np.float32))).shape == x.shape
    pool = nn.MaxPool2d(3, stride=MAX)
    np.testing.assert_array_equal(np.asarray(pool.forward(x, training=True)),
                                  x[:, :, :3, :3].max(axis=(2, 3), keepdims=True))


def test_slice_with_a_huge_step_keeps_its_first_element():
    x = juanji.tensor(np.arange(5.0))
    np.testing.assert_array_equal(np.asarray(x[3:5:MAX]), [3.0])
    np.testing.assert_array_equal(np.asarray(x[0:5:MAX]), [0.0])


def test_summary_prints_flops_past_int64():
    # 8 x (2**27 - 2) x (2**28 - 2) outputs of 2 x 27 FLOPs: about 1.6e19, past int64.
    text = nn.Sequential(nn.Conv2d(3, 8, 3)).summary((3, 2**27, 2**28))
    flops = 2.0 * 8 * (2**27 - 2) * (2**28 - 2) * 3 * 3 * 3  # in the library's order of rounding
    assert text.splitlines()[2].split()[-2:] == ["224", f"{flops:.0f}"], text

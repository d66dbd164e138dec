"""Bad input never crashes and never gives a silent wrong answer (SPEC "Errors"):
ValueError whose message names the argument, TypeError for wrong dtypes.

One case per test (parametrised).  The `match` patterns only look for the argument's
name (or one of its obvious spellings) so the exact wording stays free."""

import numpy as np
import pytest

import juanji

# argument-name patterns (case-insensitive, tolerant about spelling)
X = r"(?i)(\bx\b|input)"
W = r"(?i)(\bw\b|weight|kernel)"
CHANNELS = r"(?i)(channel|groups|\bw\b|weight|\bx\b|input)"
KERNEL_VS_INPUT = r"(?i)(kernel|\bw\b|weight|input|\bx\b|padding|size)"
STRIDE = r"(?i)stride"
DILATION = r"(?i)dilation"
PADDING = r"(?i)padding"
GROUPS = r"(?i)groups"
BIAS = r"(?i)(bias|\bb\b)"
GRAD_OUT = r"(?i)grad"
LABELS = r"(?i)label"
LOGITS = r"(?i)logit"
REDUCTION = r"(?i)reduction"
MODE = r"(?i)mode"
DIM = r"(?i)dim"
ZY = r"(?i)(\bz\b|\by\b|shape|target)"
LINEAR_FEATURES = r"(?i)(\bw\b|weight|feature|\bx\b|input)"
POOL_KERNEL = r"(?i)kernel"
FG = r"(?i)(\bf\b|\bg\b|empty|input)"


def z(*shape, dtype=np.float64):
    return np.zeros(shape, dtype=dtype)


def o(*shape, dtype=np.float64):
    return np.ones(shape, dtype=dtype)


# (id, callable, pattern) -> ValueError
VALUE_ERRORS = [
    # ---- conv: ranks
    ("conv2d_x_3d", lambda: juanji.conv2d(o(1, 2, 5), o(1, 2, 3, 3)), X),
    ("conv2d_x_5d", lambda: juanji.conv2d(o(1, 1, 2, 5, 5), o(1, 2, 3, 3)), X),
    ("conv2d_w_3d", lambda: juanji.conv2d(o(1, 2, 5, 5), o(1, 2, 3)), W),
    ("conv1d_x_4d", lambda: juanji.conv1d(o(1, 2, 5, 5), o(1, 2, 3)), X),
    ("conv1d_w_4d", lambda: juanji.conv1d(o(1, 2, 5), o(1, 2, 3, 3)), W),
    # ---- conv: channels and groups
    ("conv2d_channels_mismatch", lambda: juanji.conv2d(o(1, 3, 5, 5), o(2, 2, 3, 3)), CHANNELS),
    ("conv2d_channels_mismatch_groups", lambda: juanji.conv2d(o(1, 4, 5, 5), o(2, 1, 3, 3), groups=2), CHANNELS),
    ("conv1d_channels_mismatch", lambda: juanji.conv1d(o(1, 3, 8), o(2, 2, 3)), CHANNELS),
    ("conv2d_K_not_divisible_by_groups", lambda: juanji.conv2d(o(1, 4, 5, 5), o(3, 2, 3, 3), groups=2), GROUPS),
    ("conv2d_C_not_divisible_by_groups", lambda: juanji.conv2d(o(1, 5, 5, 5), o(4, 2, 3, 3), groups=2), GROUPS),
    ("conv2d_groups_zero", lambda: juanji.conv2d(o(1, 2, 5, 5), o(2, 2, 3, 3), groups=0), GROUPS),
    ("conv2d_groups_negative", lambda: juanji.conv2d(o(1, 2, 5, 5), o(2, 2, 3, 3), groups=-1), GROUPS),
    ("conv1d_K_not_divisible_by_groups", lambda: juanji.conv1d(o(1, 4, 8), o(3, 2, 3), groups=2), GROUPS),
    # ---- conv: kernel larger than the padded input
    ("conv2d_kernel_larger_than_input", lambda: juanji.conv2d(o(1, 1, 3, 3), o(1, 1, 5, 5)), KERNEL_VS_INPUT),
    ("conv2d_kernel_larger_than_padded_input",
     lambda: juanji.conv2d(o(1, 1, 3, 3), o(1, 1, 6, 3), padding=1), KERNEL_VS_INPUT),
    ("conv2d_dilated_kernel_larger_than_input",
     lambda: juanji.conv2d(o(1, 1, 5, 5), o(1, 1, 3, 3), dilation=3), KERNEL_VS_INPUT),
    ("conv1d_kernel_larger_than_input", lambda: juanji.conv1d(o(1, 1, 4), o(1, 1, 5)), KERNEL_VS_INPUT),
    # ---- conv: stride / dilation / padding values
    ("conv2d_stride_zero", lambda: juanji.conv2d(o(1, 1, 5, 5), o(1, 1, 3, 3), stride=0), STRIDE),
    ("conv2d_stride_negative", lambda: juanji.conv2d(o(1, 1, 5, 5), o(1, 1, 3, 3), stride=-1), STRIDE),
    ("conv2d_stride_pair_zero", lambda: juanji.conv2d(o(1, 1, 5, 5), o(1, 1, 3, 3), stride=(1, 0)), STRIDE),
    ("conv1d_stride_zero", lambda: juanji.conv1d(o(1, 1, 5), o(1, 1, 3), stride=0), STRIDE),
    ("conv2d_dilation_zero", lambda: juanji.conv2d(o(1, 1, 5, 5), o(1, 1, 3, 3), dilation=0), DILATION),
    ("conv2d_dilation_negative", lambda: juanji.conv2d(o(1, 1, 5, 5), o(1, 1, 3, 3), dilation=(1, -2)),
     DILATION),
    ("conv1d_dilation_zero", lambda: juanji.conv1d(o(1, 1, 5), o(1, 1, 3), dilation=0), DILATION),
    ("conv2d_padding_negative", lambda: juanji.conv2d(o(1, 1, 5, 5), o(1, 1, 3, 3), padding=-1), PADDING),
    ("conv2d_padding_pair_negative", lambda: juanji.conv2d(o(1, 1, 5, 5), o(1, 1, 3, 3), padding=(0, -1)),
     PADDING),
    ("conv1d_padding_negative", lambda: juanji.conv1d(o(1, 1, 5), o(1, 1, 3), padding=-2), PADDING),
    ("conv2d_padding_unknown_string", lambda: juanji.conv2d(o(1, 1, 5, 5), o(1, 1, 3, 3), padding="full"),
     PADDING),
    ("conv1d_padding_unknown_string", lambda: juanji.conv1d(o(1, 1, 5), o(1, 1, 3), padding="causal"), PADDING),
    # ---- conv: empty tensors torch refuses too (empty batches and channels work: test_hardening)
    ("conv2d_empty_out_channels", lambda: juanji.conv2d(o(1, 2, 5, 5), o(0, 2, 3, 3)), W),
    ("conv2d_empty_spatial", lambda: juanji.conv2d(o(1, 2, 0, 5), o(2, 2, 1, 1)), KERNEL_VS_INPUT),
    # ---- conv: bias and backward shapes
    ("conv2d_bias_wrong_length", lambda: juanji.conv2d(o(1, 2, 5, 5), o(3, 2, 3, 3), o(2)), BIAS),
    ("conv2d_bias_2d", lambda: juanji.conv2d(o(1, 2, 5, 5), o(3, 2, 3, 3), o(3, 1)), BIAS),
    ("conv2d_backward_grad_out_shape",
     lambda: juanji.conv2d_backward(o(1, 3, 4, 4), o(1, 2, 5, 5), o(3, 2, 3, 3)), GRAD_OUT),
    ("conv1d_backward_grad_out_shape", lambda: juanji.conv1d_backward(o(1, 3, 4), o(1, 2, 5), o(3, 2, 3)),
     GRAD_OUT),
    ("conv2d_backward_groups", lambda: juanji.conv2d_backward(o(1, 3, 3, 3), o(1, 4, 5, 5), o(3, 2, 3, 3),
                                                              groups=2), GROUPS),
    # ---- pooling
    ("max_pool2d_padding_gt_half_kernel", lambda: juanji.max_pool2d(o(1, 1, 8, 8), 3, padding=2), PADDING),
    ("max_pool2d_padding_pair_gt_half_kernel", lambda: juanji.max_pool2d(o(1, 1, 8, 8), (2, 4), padding=(2, 1)),
     PADDING),
    ("avg_pool2d_padding_gt_half_kernel", lambda: juanji.avg_pool2d(o(1, 1, 8, 8), 2, padding=2), PADDING),
    ("max_pool1d_padding_gt_half_kernel", lambda: juanji.max_pool1d(o(1, 1, 8), 3, padding=2), PADDING),
    ("avg_pool1d_padding_gt_half_kernel", lambda: juanji.avg_pool1d(o(1, 1, 8), 1, padding=1), PADDING),
    ("max_pool2d_backward_padding_gt_half_kernel",
     lambda: juanji.max_pool2d_backward(o(1, 1, 4, 4), o(1, 1, 8, 8), 3, padding=2), PADDING),
    ("max_pool2d_padding_negative", lambda: juanji.max_pool2d(o(1, 1, 8, 8), 3, padding=-1), PADDING),
    ("max_pool2d_kernel_zero", lambda: juanji.max_pool2d(o(1, 1, 8, 8), 0), POOL_KERNEL),
    ("avg_pool1d_kernel_negative", lambda: juanji.avg_pool1d(o(1, 1, 8), -2), POOL_KERNEL),
    ("max_pool2d_stride_zero", lambda: juanji.max_pool2d(o(1, 1, 8, 8), 2, stride=0), STRIDE),
    ("avg_pool2d_stride_negative", lambda: juanji.avg_pool2d(o(1, 1, 8, 8), 2, stride=(1, -1)), STRIDE),
    ("max_pool2d_kernel_larger_than_input", lambda: juanji.max_pool2d(o(1, 1, 3, 3), 4), KERNEL_VS_INPUT),
    ("avg_pool1d_kernel_larger_than_padded_input", lambda: juanji.avg_pool1d(o(1, 1, 3), 6, padding=1),
     KERNEL_VS_INPUT),
    ("max_pool2d_x_3d", lambda: juanji.max_pool2d(o(1, 8, 8), 2), X),
    ("avg_pool1d_x_4d", lambda: juanji.avg_pool1d(o(1, 1, 8, 8), 2), X),
    ("global_avg_pool2d_x_3d", lambda: juanji.global_avg_pool2d(o(2, 3, 4)), X),
    ("max_pool2d_backward_grad_out_shape", lambda: juanji.max_pool2d_backward(o(1, 1, 3, 3), o(1, 1, 8, 8), 2),
     GRAD_OUT),
    ("avg_pool2d_backward_grad_out_shape", lambda: juanji.avg_pool2d_backward(o(1, 1, 4, 5), o(1, 1, 8, 8), 2),
     GRAD_OUT),
    ("global_avg_pool2d_backward_grad_out_shape",
     lambda: juanji.global_avg_pool2d_backward(o(1, 2, 1, 1), o(1, 3, 4, 4)), GRAD_OUT),
    # ---- linear
    ("linear_in_features_mismatch", lambda: juanji.linear(o(2, 3), o(4, 5)), LINEAR_FEATURES),
    ("linear_x_1d", lambda: juanji.linear(o(3), o(4, 3)), X),
    ("linear_w_1d", lambda: juanji.linear(o(2, 3), o(3)), W),
    ("linear_bias_wrong_length", lambda: juanji.linear(o(2, 3), o(4, 3), o(3)), BIAS),
    ("linear_backward_grad_out_shape", lambda: juanji.linear_backward(o(2, 5), o(2, 3), o(4, 3)), GRAD_OUT),
    # ---- activations
    ("relu_backward_shape_mismatch", lambda: juanji.relu_backward(o(3, 4), o(4, 3)), GRAD_OUT),
    ("sigmoid_backward_shape_mismatch", lambda: juanji.sigmoid_backward(o(5), o(4)), GRAD_OUT),
    ("softmax_dim_out_of_range", lambda: juanji.softmax(o(3, 4), dim=2), DIM),
    ("log_softmax_dim_out_of_range", lambda: juanji.log_softmax(o(3, 4), dim=-3), DIM),
    ("softmax_backward_shape_mismatch", lambda: juanji.softmax_backward(o(3, 5), o(3, 4)), GRAD_OUT),
    # ---- losses
    ("mse_shape_mismatch", lambda: juanji.mse_loss(o(3, 4), o(4, 3)), ZY),
    ("mse_shape_mismatch_size", lambda: juanji.mse_loss(o(3, 4), o(3, 5)), ZY),
    ("mse_backward_shape_mismatch", lambda: juanji.mse_loss_backward(o(3), o(4)), ZY),
    ("mse_unknown_reduction", lambda: juanji.mse_loss(o(3), o(3), reduction="avg"), REDUCTION),
    ("mse_backward_unknown_reduction", lambda: juanji.mse_loss_backward(o(3), o(3), reduction="max"), REDUCTION),
    ("ce_unknown_reduction", lambda: juanji.cross_entropy(o(2, 3), np.array([0, 1]), reduction="half_sum"),
     REDUCTION),
    ("ce_backward_unknown_reduction",
     lambda: juanji.cross_entropy_backward(o(2, 3), np.array([0, 1]), reduction="avg"), REDUCTION),
    ("ce_label_too_large", lambda: juanji.cross_entropy(o(2, 3), np.array([0, 3])), LABELS),
    ("ce_label_negative", lambda: juanji.cross_entropy(o(2, 3), np.array([-1, 0])), LABELS),
    ("ce_backward_label_too_large", lambda: juanji.cross_entropy_backward(o(2, 3), np.array([5, 0])), LABELS),
    ("ce_labels_too_short", lambda: juanji.cross_entropy(o(3, 4), np.array([0, 1])), LABELS),
    ("ce_labels_too_long", lambda: juanji.cross_entropy(o(2, 4), [0, 1, 2]), LABELS),
    ("ce_labels_2d", lambda: juanji.cross_entropy(o(2, 4), np.array([[0], [1]])), LABELS),
    ("ce_backward_labels_length", lambda: juanji.cross_entropy_backward(o(3, 4), np.array([0, 1])), LABELS),
    ("ce_logits_1d", lambda: juanji.cross_entropy(o(4), np.array([0])), LOGITS),
    # ---- signal
    ("convolve_unknown_mode", lambda: juanji.convolve(o(5), o(3), mode="circular"), MODE),
    ("correlate_unknown_mode", lambda: juanji.correlate(o(5), o(3), mode="linear"), MODE),
    ("convolve2d_unknown_mode", lambda: juanji.convolve2d(o(5, 5), o(3, 3), mode="wrap"), MODE),
    ("correlate2d_unknown_mode", lambda: juanji.correlate2d(o(5, 5), o(3, 3), mode="nearest"), MODE),
    ("convolve2d_valid_neither_larger", lambda: juanji.convolve2d(o(2, 7), o(4, 2), mode="valid"),
     r"(?i)(valid|larger|dimension)"),
    ("correlate2d_valid_neither_larger", lambda: juanji.correlate2d(o(7, 2), o(2, 4), mode="valid"),
     r"(?i)(valid|larger|dimension)"),
    ("convolve_empty", lambda: juanji.convolve(o(0), o(3)), FG),
    ("correlate_empty", lambda: juanji.correlate(o(4), o(0)), FG),
    ("convolve_2d_input", lambda: juanji.convolve(o(3, 3), o(3)), r"(?i)(\bf\b|\bg\b|1-?d|dim|rank)"),
    ("convolve2d_1d_input", lambda: juanji.convolve2d(o(5), o(3, 3)), r"(?i)(\ba\b|2-?d|dim|rank|input)"),
]


@pytest.mark.parametrize("call,pattern", [pytest.param(c, p, id=i) for i, c, p in VALUE_ERRORS])
def test_value_error(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


@pytest.mark.parametrize("call", [
    pytest.param(lambda: juanji.conv2d(o(1, 1, 5, 5), o(1, 1, 3, 3), stride=(1, 1, 1)), id="conv2d_stride_3_tuple"),
    pytest.param(lambda: juanji.conv2d(o(1, 1, 5, 5), o(1, 1, 3, 3), padding=(1, 1, 1)), id="conv2d_padding_3_tuple"),
    pytest.param(lambda: juanji.conv1d(o(1, 1, 5), o(1, 1, 3), dilation=(1, 1)), id="conv1d_dilation_2_tuple"),
    pytest.param(lambda: juanji.max_pool2d(o(1, 1, 6, 6), (2, 2, 2)), id="max_pool2d_kernel_3_tuple"),
])
def test_wrong_length_tuple_argument(call):
    # a binding layer with fixed-size tuples may refuse these before the op sees them
    # (pybind11 raises TypeError, whose message lists the signature): either is fine,
    # as long as it is refused and names the argument
    with pytest.raises((ValueError, TypeError), match=r"(?i)(stride|padding|dilation|kernel)"):
        call()


# ---------------------------------------------------------------- TypeError

f32, f64 = np.float32, np.float64
INT_X = np.arange(2 * 25).reshape(1, 2, 5, 5)  # integer data
CPLX = np.ones((1, 2, 5, 5), dtype=np.complex128)
OBJ = np.ones((1, 2, 5, 5)).astype(object)

TYPE_ERRORS = [
    # ---- mixed float32 / float64
    ("conv2d_x32_w64", lambda: juanji.conv2d(o(1, 2, 5, 5, dtype=f32), o(3, 2, 3, 3))),
    ("conv2d_bias_other_dtype", lambda: juanji.conv2d(o(1, 2, 5, 5), o(3, 2, 3, 3), o(3, dtype=f32))),
    ("conv1d_x64_w32", lambda: juanji.conv1d(o(1, 2, 5), o(3, 2, 3, dtype=f32))),
    ("conv2d_backward_grad_out_other_dtype",
     lambda: juanji.conv2d_backward(o(1, 3, 3, 3, dtype=f32), o(1, 2, 5, 5), o(3, 2, 3, 3))),
    ("max_pool2d_backward_mixed", lambda: juanji.max_pool2d_backward(o(1, 1, 4, 4, dtype=f32), o(1, 1, 8, 8), 2)),
    ("avg_pool1d_backward_mixed", lambda: juanji.avg_pool1d_backward(o(1, 1, 4), o(1, 1, 8, dtype=f32), 2)),
    ("linear_x32_w64", lambda: juanji.linear(o(2, 3, dtype=f32), o(4, 3))),
    ("linear_bias_other_dtype", lambda: juanji.linear(o(2, 3), o(4, 3), o(4, dtype=f32))),
    ("linear_backward_mixed", lambda: juanji.linear_backward(o(2, 4), o(2, 3, dtype=f32), o(4, 3, dtype=f32))),
    ("relu_backward_mixed", lambda: juanji.relu_backward(o(3, dtype=f32), o(3))),
    ("softmax_backward_mixed", lambda: juanji.softmax_backward(o(2, 3), o(2, 3, dtype=f32))),
    ("mse_mixed", lambda: juanji.mse_loss(o(3, dtype=f32), o(3))),
    ("convolve_mixed", lambda: juanji.convolve(o(5, dtype=f32), o(3))),
    ("correlate2d_mixed", lambda: juanji.correlate2d(o(5, 5), o(3, 3, dtype=f32))),
    # ---- integer data
    ("conv2d_integer_x", lambda: juanji.conv2d(INT_X, o(3, 2, 3, 3))),
    ("conv2d_integer_x_and_w", lambda: juanji.conv2d(INT_X, np.ones((3, 2, 3, 3), dtype=np.int64))),
    ("conv1d_integer_w", lambda: juanji.conv1d(o(1, 2, 5), np.ones((3, 2, 3), dtype=np.int32))),
    ("max_pool2d_integer", lambda: juanji.max_pool2d(INT_X, 2)),
    ("linear_integer", lambda: juanji.linear(np.arange(6).reshape(2, 3), o(4, 3))),
    ("relu_integer", lambda: juanji.relu(np.arange(6).reshape(2, 3))),
    ("softmax_bool", lambda: juanji.softmax(np.ones((2, 3), dtype=bool))),
    ("mse_integer", lambda: juanji.mse_loss(np.arange(3), np.arange(3))),
    ("cross_entropy_integer_logits", lambda: juanji.cross_entropy(np.ones((2, 3), dtype=np.int64), [0, 1])),
    ("convolve_integer", lambda: juanji.convolve(np.arange(5), np.arange(3))),
    # ---- complex data
    ("conv2d_complex_x", lambda: juanji.conv2d(CPLX, o(3, 2, 3, 3))),
    ("avg_pool2d_complex", lambda: juanji.avg_pool2d(CPLX, 2)),
    ("linear_complex_w", lambda: juanji.linear(o(2, 3), np.ones((4, 3), dtype=np.complex64))),
    ("convolve_complex", lambda: juanji.convolve(np.ones(5, dtype=np.complex128), np.ones(3, dtype=np.complex128))),
    ("sigmoid_complex", lambda: juanji.sigmoid(np.ones(3, dtype=np.complex128))),
    # ---- object arrays
    ("conv2d_object_x", lambda: juanji.conv2d(OBJ, o(3, 2, 3, 3))),
    ("tanh_object", lambda: juanji.tanh(np.array([1.0, "a"], dtype=object))),
]


@pytest.mark.parametrize("call", [pytest.param(c, id=i) for i, c in TYPE_ERRORS])
def test_type_error(call):
    with pytest.raises(TypeError):
        call()

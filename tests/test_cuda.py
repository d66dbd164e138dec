"""CUDA device layer: allocation, copies both ways, and the fill kernel. Skips without a GPU."""

import numpy as np
import pytest

import juanji

pytestmark = pytest.mark.cuda
needs_gpu = pytest.mark.skipif(
    not juanji.cuda_compiled() or juanji.cuda_device_count() == 0, reason="no CUDA GPU visible"
)


@needs_gpu
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


@needs_gpu
def test_strided_copy_on_device():
    a = np.arange(24.0).reshape(4, 6)
    g = juanji.tensor(a, device="cuda")
    np.testing.assert_array_equal(np.asarray(g.T.contiguous().to("cpu")), a.T)
    np.testing.assert_array_equal(np.asarray(g[:, 1::2].contiguous().to("cpu")), a[:, 1::2])


@needs_gpu
def test_numpy_of_cuda_tensor_is_refused():
    with pytest.raises(ValueError, match="cpu"):
        np.asarray(juanji.zeros(2, device="cuda"))

"""Tensor core: creation, views, NumPy and DLPack zero-copy, seeded randomness, bad input."""

import subprocess
import sys

import numpy as np
import pytest

import juanji


def test_version_and_config(capsys):
    assert juanji.__version__ == "0.1.0"
    juanji.show_config()
    out = capsys.readouterr().out
    for word in ("juanji 0.1.0", "compiler", "threads", "simd", "cuda"):
        assert word in out


def test_threads_round_trip():
    before = juanji.get_num_threads()
    try:
        juanji.set_num_threads(1)
        assert juanji.get_num_threads() == 1
    finally:
        juanji.set_num_threads(before)
    with pytest.raises(ValueError, match="n must be"):
        juanji.set_num_threads(0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_from_numpy_shares_memory_both_ways(dtype):
    a = np.arange(12, dtype=dtype).reshape(3, 4)
    t = juanji.from_numpy(a)
    assert t.shape == (3, 4) and t.dtype == dtype and t.device == "cpu" and t.ndim == 2
    back = np.asarray(t)
    assert np.shares_memory(a, back) and np.shares_memory(a, t.numpy())
    back[1, 2] = -7
    assert a[1, 2] == -7


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        lambda: np.arange(24.0).reshape(4, 6)[:, ::2],
        lambda: np.arange(12.0).reshape(3, 4).T,
    ],
    ids=["fortran", "sliced", "transposed"],
)
def test_from_numpy_copies_other_layouts(make):
    a = make()
    t = juanji.from_numpy(a)
    np.testing.assert_array_equal(np.asarray(t), a)
    assert not np.shares_memory(a, np.asarray(t))


def test_readonly_array_is_shared_read_only():
    a = np.arange(4.0)
    a.setflags(write=False)
    t = juanji.from_numpy(a)
    view = np.asarray(t)
    assert np.shares_memory(a, view) and not view.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        t.fill_(1.0)
    np.testing.assert_array_equal(a, np.arange(4.0))


def test_tensor_copies_and_converts():
    t = juanji.tensor([[1, 2], [3, 4]])
    assert t.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(t), [[1, 2], [3, 4]])
    a = np.ones(3)
    t = juanji.tensor(a)
    assert t.dtype == np.float64 and not np.shares_memory(a, np.asarray(t))
    assert juanji.tensor(a, dtype="float32").dtype == np.float32
    assert juanji.tensor(np.arange(3), dtype=np.float64).dtype == np.float64


def test_views_share_storage():
    t = juanji.arange(24, dtype="float64").reshape(2, 3, 4)
    base = np.asarray(t)
    tr = t.transpose(0, 2)
    assert tr.shape == (4, 3, 2) and not tr.is_contiguous()
    np.testing.assert_array_equal(np.asarray(tr), base.transpose(2, 1, 0))
    assert np.shares_memory(np.asarray(tr), base)
    sl = t[1, :, 1:4:2]
    np.testing.assert_array_equal(np.asarray(sl), base[1, :, 1:4:2])
    assert np.shares_memory(np.asarray(sl), base)
    c = sl.contiguous()
    assert c.is_contiguous() and not np.shares_memory(np.asarray(c), base)
    np.testing.assert_array_equal(np.asarray(t.permute(2, 0, 1)), base.transpose(2, 0, 1))
    r = t.reshape(4, -1)
    assert r.shape == (4, 6) and np.shares_memory(np.asarray(r), base)
    np.testing.assert_array_equal(np.asarray(tr.reshape(-1)), base.transpose(2, 1, 0).ravel())


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_copies_shared_out_among_threads_are_exact(threads, restore_runtime):
    # Past 65536 elements a copy is split into ranges of rows, one a thread, each starting its
    # odometer part-way through the dimensions (odd sizes: ranges end inside every dimension).
    juanji.set_num_threads(threads)
    t = juanji.arange(3 * 41 * 29 * 37, dtype="float64").reshape(3, 41, 29, 37)
    base = np.asarray(t)
    views = [(t.permute(2, 0, 3, 1), base.transpose(2, 0, 3, 1)), (t[:, :, 1:, 2:], base[:, :, 1:, 2:]),
             (t.transpose(1, 3), base.transpose(0, 3, 2, 1))]
    for view, want in views:
        assert view.numel() > 65536 and not view.is_contiguous()
        np.testing.assert_array_equal(np.asarray(view.contiguous()), want)
        np.testing.assert_array_equal(np.asarray(view.astype("float32")), want.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(t.clone()), base)
    np.testing.assert_array_equal(np.asarray(t.astype("float32")), base.astype(np.float32))


def test_reused_host_blocks_are_never_shared_by_live_tensors():
    # Freed blocks of 64 KiB and more are kept for reuse: a released block may come back, but
    # never to two live tensors, and factories still initialise what they hand out.
    shape = (64, 1024)  # 256 KiB
    first = juanji.full(shape, 7.0)
    del first
    live = [juanji.zeros(shape) for _ in range(3)]
    assert len({np.asarray(t).ctypes.data for t in live}) == 3
    for t in live:
        np.testing.assert_array_equal(np.asarray(t), 0.0)
    ones = juanji.ones(shape)
    np.testing.assert_array_equal(np.asarray(ones), 1.0)


def test_factories():
    assert np.all(np.asarray(juanji.zeros(2, 3)) == 0)
    assert np.all(np.asarray(juanji.ones((2, 3), dtype="float64")) == 1)
    assert np.all(np.asarray(juanji.full((2,), 2.5)) == 2.5)
    assert juanji.empty(4, 5).shape == (4, 5)
    np.testing.assert_array_equal(np.asarray(juanji.arange(5)), np.arange(5, dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(juanji.arange(1, 2, 0.25)), [1, 1.25, 1.5, 1.75])


def test_seeded_random_is_reproducible():
    juanji.manual_seed(123)
    a, b = np.asarray(juanji.rand(1000)), np.asarray(juanji.randn(1000, dtype="float64"))
    juanji.manual_seed(123)
    np.testing.assert_array_equal(a, np.asarray(juanji.rand(1000)))
    np.testing.assert_array_equal(b, np.asarray(juanji.randn(1000, dtype="float64")))
    assert 0 <= a.min() and a.max() < 1 and abs(a.mean() - 0.5) < 0.05
    assert abs(b.mean()) < 0.1 and abs(b.std() - 1) < 0.1


def test_repr_shows_values():
    text = repr(juanji.tensor([1.5, 2.0]))
    assert "shape=(2,)" in text and "float32" in text and "1.5" in text


def test_dlpack_round_trip_with_torch():
    torch = pytest.importorskip("torch")
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = juanji.from_numpy(a)
    x = torch.from_dlpack(t)
    assert x.data_ptr() == a.ctypes.data
    x[0, 0] = 42
    assert a[0, 0] == 42
    y = torch.arange(8, dtype=torch.float64).reshape(2, 4)[:, 1:3]
    j = juanji.from_dlpack(y)
    assert j.shape == (2, 2) and not j.is_contiguous()
    np.testing.assert_array_equal(np.asarray(j), y.numpy())
    y[1, 1] = -1
    assert np.asarray(j)[1, 1] == -1


def test_dlpack_with_numpy():
    a = np.arange(4.0)
    j = juanji.from_dlpack(a)
    assert np.shares_memory(np.asarray(j), a)
    b = np.from_dlpack(juanji.from_numpy(a))
    assert np.shares_memory(a, b)


@pytest.mark.parametrize(
    "bad",
    [np.arange(3), np.ones(3, dtype=complex), np.array(["a"]), np.array([object()]), np.ones(3, dtype=bool)],
    ids=["int", "complex", "str", "object", "bool"],
)
def test_bad_dtypes_raise_type_error(bad):
    with pytest.raises(TypeError, match="data|dtype"):
        juanji.tensor(bad)
    with pytest.raises(TypeError, match="x"):
        juanji.relu(bad)


def test_unsupported_float_width_raises_type_error():
    with pytest.raises(TypeError, match="float32 or float64"):
        juanji.from_numpy(np.ones(3, dtype=np.float16))


@pytest.mark.parametrize("shape", [(-1, 3), (2**40, 2**40)], ids=["negative", "overflow"])
def test_bad_shapes_raise_value_error(shape):
    with pytest.raises(ValueError, match="shape"):
        juanji.zeros(*shape)


def test_cuda_without_gpu_is_a_clear_error():
    if juanji.cuda_device_count() > 0:
        pytest.skip("a GPU is visible")
    with pytest.raises(ValueError, match="cuda"):
        juanji.zeros(3, device="cuda")
    with pytest.raises(ValueError, match="device"):
        juanji.zeros(3, device="tpu")



def run_in_a_fresh_process(code):
    """The printed numbers of `code`, run with an arena of its own (ARENA_CODE's helpers in scope)."""
    result = subprocess.run([sys.executable, "-c", ARENA_CODE + code], capture_output=True, text=True, timeout=120,
                            check=True)
    return [float(v) for v in result.stdout.split()]


ARENA_CODE = """
import resource
import juanji
MIB = 2**20 // 4  # floats
def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
def page_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
"""


def test_freed_host_memory_goes_back_to_the_kernel():
    # Wholly free segments go back, the longest idle first, while more than 256 MiB is free.
    full, returned = run_in_a_fresh_process("""
blocks = [juanji.zeros((100 * MIB,)) for _ in range(4)]
full = resident_mib()
del blocks[:]
print(full, full - resident_mib())
""")
    # Two of the four 100 MiB blocks went back (under AddressSanitizer less shows: poisoning the
    # freed blocks' shadow takes pages too).
    assert returned > 100, (full, returned)


def test_the_block_freed_last_stays_however_much_else_is_free():
    # 240 MiB free in segments still in use, then a 100 MiB block freed: it stays mapped, ready for
    # the same request again (an inference frees and takes back its largest activation on every
    # call; going back to the kernel, it took a page fault per page each time).
    (faults,) = run_in_a_fresh_process("""
big, pinned = [], []
for _ in range(4):
    big.append(juanji.zeros((60 * MIB,)))
    pinned.append(juanji.zeros((MIB,)))  # in the rest of the big block's segment, which stays in use
del big[:]
block = juanji.zeros((100 * MIB,))
del block
before = page_faults()
block = juanji.zeros((100 * MIB,))
print(page_faults() - before)
""")
    # Mapped anew it took a fault a page, 25600; AddressSanitizer's shadow of it takes 3200.
    assert faults < 6000, faults

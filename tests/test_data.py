"""juanji.data: the IDX reader/writer, the MNIST-like loader and the batch iterator."""

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from juanji import data

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SUBSET_DIR = os.path.join(TESTS_DIR, "data", "fashion-mnist-subset")
FULL_DATA_PRESENT = all(os.path.isfile(os.path.join(data.DEFAULT_DIR, name + ".gz"))
                        for name in data.STANDARD_FILES.values())


def write_dataset(directory, n_train=30, n_test=10, size=(28, 28), seed=0, gz=True):
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, *size), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, *size), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for key, array in arrays.items():
        name = data.STANDARD_FILES[key] + (".gz" if gz else "")
        data.write_idx(os.path.join(directory, name), array)
    return arrays


# --------------------------------------------------------------------------------------------
# IDX format
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["", ".gz"], ids=["raw", "gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    path = str(tmp_path / f"a-idx3{suffix}")
    data.write_idx(path, array)
    back = data.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_idx_layout_is_big_endian_with_magic_header(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    data.write_idx(str(path), np.array([258, -1], dtype=np.int32))
    header = [0, 0, 0x0C, 1, 0, 0, 0, 2]  # zero, int32 type code, 1 dimension, size 2
    assert path.read_bytes() == bytes(header + [0, 0, 1, 2, 0xFF, 0xFF, 0xFF, 0xFF])


def test_idx_reads_hand_made_ubyte_file(tmp_path):
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6)))
    expected = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    np.testing.assert_array_equal(data.read_idx(str(path)), expected)


def test_write_idx_gz_is_reproducible(tmp_path):
    array = np.arange(100, dtype=np.uint8)
    first, second = str(tmp_path / "a.gz"), str(tmp_path / "b.gz")
    data.write_idx(first, array)
    data.write_idx(second, array)
    assert Path(first).read_bytes() == Path(second).read_bytes()


@pytest.mark.parametrize("suffix", ["", ".gz"], ids=["raw", "gz"])
@pytest.mark.parametrize("form", [str, os.fsencode, Path], ids=["str", "bytes", "pathlib"])
def test_idx_paths_are_taken_as_open_takes_them(tmp_path, form, suffix):
    path = form(str(tmp_path / f"a-idx1{suffix}"))
    data.write_idx(path, np.arange(3, dtype=np.uint8))
    assert os.listdir(tmp_path) == [f"a-idx1{suffix}"]
    np.testing.assert_array_equal(data.read_idx(path), np.arange(3))


def test_load_from_a_pathlib_or_bytes_directory(tmp_path):
    arrays = write_dataset(str(tmp_path))
    for directory in (tmp_path, os.fsencode(tmp_path)):
        np.testing.assert_array_equal(data.load_mnist_like(directory).y_test, arrays["test_labels"])


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(TypeError, match="uint16"):
        data.write_idx(str(tmp_path / "a"), np.zeros(3, dtype=np.uint16))


@pytest.mark.parametrize("suffix", ["", ".gz"], ids=["raw", "gz"])
def test_truncated_idx_names_path_and_sizes(tmp_path, suffix):
    full = str(tmp_path / "full-idx3-ubyte")
    data.write_idx(full, np.zeros((4, 5, 5), dtype=np.uint8))
    raw = Path(full).read_bytes()[:-7]  # header 16 bytes + 100 pixels, 7 pixels lost
    path = str(tmp_path / f"cut-idx3-ubyte{suffix}")
    with (gzip.open(path, "wb") if suffix else open(path, "wb")) as f:
        f.write(raw)
    message = r"cut-idx3-ubyte.*truncated.*\(4, 5, 5\).*expected 116 bytes, got 109"
    with pytest.raises(ValueError, match=message):
        data.read_idx(path)


def test_trailing_bytes_are_corrupt(tmp_path):
    path = tmp_path / "a-idx1-ubyte"
    data.write_idx(str(path), np.zeros(3, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(ValueError, match=r"corrupt.*expected 11 bytes, got 12"):
        data.read_idx(str(path))


@pytest.mark.parametrize(
    "header, message",
    [
        (b"", "not an IDX file"),
        (bytes([0, 0, 0x08]), "not an IDX file"),
        (bytes([1, 0, 0x08, 1, 0, 0, 0, 0]), "bad IDX magic number 0x01000801"),
        (bytes([0, 0, 0x07, 1, 0, 0, 0, 0]), "bad IDX magic number 0x00000701"),
        (bytes([0, 0, 0x08, 0]), "bad IDX magic number"),
        (bytes([0, 0, 0x08, 3, 0, 0, 0, 1]), r"truncated IDX header: expected 16 bytes.*got 8"),
    ],
)
def test_bad_headers(tmp_path, header, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(header)
    with pytest.raises(ValueError, match=message):
        data.read_idx(str(path))


def test_truncated_gzip_stream(tmp_path):
    good = str(tmp_path / "good.gz")
    data.write_idx(good, np.arange(1000, dtype=np.int32))
    bad = tmp_path / "bad.gz"
    bad.write_bytes(Path(good).read_bytes()[:-20])
    with pytest.raises(ValueError, match="bad.gz.*corrupt or truncated gzip"):
        data.read_idx(str(bad))


def test_not_gzip_at_all(tmp_path):
    bad = tmp_path / "plain.gz"
    bad.write_bytes(b"this is not gzip data")
    with pytest.raises(ValueError, match="plain.gz.*gzip"):
        data.read_idx(str(bad))


def test_read_idx_refuses_directories_and_devices(tmp_path):
    with pytest.raises(ValueError, match=r"is a directory, expected an IDX file"):
        data.read_idx(str(tmp_path))
    if os.path.exists("/dev/zero"):  # would otherwise be read until memory runs out
        with pytest.raises(ValueError, match=r"/dev/zero: not a regular file"):
            data.read_idx("/dev/zero")


def test_declared_size_is_checked_before_reading(tmp_path):
    # Three dimensions of 2**32 - 1: the product overflows 64 bits, the file has 16 bytes.
    huge = tmp_path / "huge-idx3-ubyte"
    huge.write_bytes(bytes([0, 0, 0x08, 3]) + b"\xff" * 12)
    with pytest.raises(ValueError, match=r"truncated IDX file.*got 16$"):
        data.read_idx(str(huge))
    # A small gzip file cannot expand to the gigabyte its header declares.
    claim = tmp_path / "claim-idx1-ubyte.gz"
    with gzip.open(claim, "wb") as f:
        f.write(bytes([0, 0, 0x08, 1, 0x40, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"claim-idx1-ubyte.gz: truncated.*expand to at most"):
        data.read_idx(str(claim))


def test_idx_data_above_the_limit_is_refused(tmp_path, monkeypatch):
    path = str(tmp_path / "a-idx1-ubyte")
    data.write_idx(path, np.zeros(100, dtype=np.uint8))
    monkeypatch.setattr(data, "MAX_IDX_BYTES", 99)
    with pytest.raises(ValueError, match=r"more than the 99 bytes of data an IDX file may have"):
        data.read_idx(path)


# --------------------------------------------------------------------------------------------
# load_mnist_like
# --------------------------------------------------------------------------------------------
def test_missing_directory_gives_install_hint(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        data.load_mnist_like(str(tmp_path / "nowhere"))
    message = str(info.value)
    assert "nowhere" in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "--data DIR" in message


def test_missing_file_names_it(tmp_path):
    write_dataset(str(tmp_path))
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    message = r"t10k-labels-idx1-ubyte\[\.gz\].*apt-get install dataset-fashion-mnist"
    with pytest.raises(FileNotFoundError, match=message):
        data.load_mnist_like(str(tmp_path))


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_load_normalises_with_training_statistics(tmp_path, gz):
    arrays = write_dataset(str(tmp_path), gz=gz)
    loaded = data.load_mnist_like(str(tmp_path))
    assert loaded.x_train.shape == (30, 1, 28, 28) and loaded.x_test.shape == (10, 1, 28, 28)
    assert loaded.x_train.dtype == np.float32 and loaded.x_test.dtype == np.float32
    assert loaded.y_train.dtype == np.int64 and loaded.y_test.dtype == np.int64
    pixels = arrays["train_images"] / 255.0
    assert loaded.mean == pytest.approx(pixels.mean(), rel=1e-6)
    assert loaded.std == pytest.approx(pixels.std(), rel=1e-6)
    expected = (arrays["test_images"] / 255.0 - loaded.mean) / loaded.std
    np.testing.assert_allclose(loaded.x_test[:, 0], expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(loaded.y_test, arrays["test_labels"])
    # Unnormalising with the returned statistics restores the [0, 1] pixels.
    restored = loaded.x_train[:, 0] * loaded.std + loaded.mean
    np.testing.assert_allclose(restored, pixels, rtol=0, atol=1e-6)


def test_limit_takes_first_training_images(tmp_path):
    arrays = write_dataset(str(tmp_path))
    loaded = data.load_mnist_like(str(tmp_path), limit=7)
    assert len(loaded.x_train) == 7 and len(loaded.x_test) == 10
    np.testing.assert_array_equal(loaded.y_train, arrays["train_labels"][:7])
    assert loaded.mean == pytest.approx((arrays["train_images"][:7] / 255.0).mean(), rel=1e-6)
    with pytest.raises(ValueError, match="limit must be positive, got 0"):
        data.load_mnist_like(str(tmp_path), limit=0)


def test_label_count_must_match_images(tmp_path):
    write_dataset(str(tmp_path))
    data.write_idx(str(tmp_path / "train-labels-idx1-ubyte.gz"), np.zeros(29, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"train-labels.*expected 30 labels.*got shape \(29,\)"):
        data.load_mnist_like(str(tmp_path))


def test_labels_must_be_classes(tmp_path):
    write_dataset(str(tmp_path))
    data.write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), np.full(10, 10, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"t10k-labels.*\[0, 9\], got \[10, 10\]"):
        data.load_mnist_like(str(tmp_path))


def test_labels_must_be_integers(tmp_path):
    write_dataset(str(tmp_path))
    data.write_idx(str(tmp_path / "train-labels-idx1-ubyte.gz"), np.zeros(30, dtype=np.float32))
    with pytest.raises(ValueError, match=r"train-labels.*must be integers, got float32"):
        data.load_mnist_like(str(tmp_path))


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_empty_split_is_an_error(tmp_path, split):
    write_dataset(str(tmp_path))
    data.write_idx(str(tmp_path / f"{split}-images-idx3-ubyte.gz"),
                   np.zeros((0, 28, 28), dtype=np.uint8))
    data.write_idx(str(tmp_path / f"{split}-labels-idx1-ubyte.gz"), np.zeros(0, dtype=np.uint8))
    with pytest.raises(ValueError, match=rf"{split}-images-idx3-ubyte.gz: holds no images"):
        data.load_mnist_like(str(tmp_path))


def test_data_directory_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("not a directory")
    with pytest.raises(ValueError, match=r"'.*file' is not a directory.*--data DIR"):
        data.load_mnist_like(str(path))


def test_train_and_test_image_sizes_must_agree(tmp_path):
    write_dataset(str(tmp_path))
    bigger = np.zeros((10, 32, 32), dtype=np.uint8)
    data.write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), bigger)
    with pytest.raises(ValueError, match=r"\(28, 28\).*\(32, 32\)"):
        data.load_mnist_like(str(tmp_path))


def test_subset_is_real_balanced_fashion_mnist():
    loaded = data.load_mnist_like(SUBSET_DIR)
    assert loaded.x_train.shape == (500, 1, 28, 28) and loaded.x_test.shape == (100, 1, 28, 28)
    assert loaded.x_train.dtype == np.float32 and loaded.y_train.dtype == np.int64
    assert np.bincount(loaded.y_train).tolist() == [50] * 10
    assert np.bincount(loaded.y_test).tolist() == [10] * 10
    assert abs(float(loaded.x_train.mean())) < 1e-4
    assert float(loaded.x_train.std()) == pytest.approx(1.0, abs=1e-4)
    # Real Fashion-MNIST pixel statistics (full training set: mean 0.2860, std 0.3530).
    assert 0.25 < loaded.mean < 0.32 and 0.32 < loaded.std < 0.38
    size = sum(os.path.getsize(os.path.join(SUBSET_DIR, f)) for f in os.listdir(SUBSET_DIR))
    assert size < 300_000


@pytest.mark.skipif(not FULL_DATA_PRESENT, reason="dataset-fashion-mnist is not installed")
def test_subset_is_reproducible_from_full_data(tmp_path):
    script = os.path.join(TESTS_DIR, "data", "make_subset.py")
    subprocess.run([sys.executable, script, "--out", str(tmp_path)], check=True,
                   capture_output=True)
    for name in os.listdir(SUBSET_DIR):
        assert (tmp_path / name).read_bytes() == Path(SUBSET_DIR, name).read_bytes(), name


@pytest.mark.skipif(not FULL_DATA_PRESENT, reason="dataset-fashion-mnist is not installed")
def test_full_fashion_mnist():
    loaded = data.load_mnist_like()
    assert loaded.x_train.shape == (60000, 1, 28, 28) and loaded.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(loaded.y_train).tolist() == [6000] * 10
    assert loaded.mean == pytest.approx(0.2860, abs=1e-4)
    assert loaded.std == pytest.approx(0.3530, abs=1e-4)


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------
def test_batches_in_order():
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.arange(10)
    got = list(data.batches(x, y, 4))
    assert [len(b) for b, _ in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b for b, _ in got])[:, 0], np.arange(10))
    assert all(b.flags.c_contiguous and t.flags.c_contiguous for b, t in got)


def test_batches_shuffled_cover_everything_once_and_follow_the_seed():
    x = np.arange(100, dtype=np.float32).reshape(100, 1)
    y = np.arange(100)

    def order(seed):
        pairs = list(data.batches(x, y, 32, shuffle=True, rng=np.random.default_rng(seed)))
        for xb, yb in pairs:
            np.testing.assert_array_equal(xb[:, 0], yb)  # images stay with their labels
        return np.concatenate([yb for _, yb in pairs])

    first = order(0)
    assert sorted(first.tolist()) == list(range(100))
    assert not np.array_equal(first, np.arange(100))
    np.testing.assert_array_equal(first, order(0))
    assert not np.array_equal(first, order(1))


def test_batches_bad_arguments():
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        list(data.batches(np.zeros(3), np.zeros(2), 1))
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        list(data.batches(np.zeros(3), np.zeros(3), 0))


def test_class_names():
    assert len(data.CLASS_NAMES) == 10
    assert data.CLASS_NAMES[0] == "T-shirt/top" and data.CLASS_NAMES[9] == "Ankle boot"

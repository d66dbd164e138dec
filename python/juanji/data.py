"""Image data sets in the IDX format of MNIST and Fashion-MNIST, and mini-batches of them.

``load_mnist_like(directory)`` reads the four standard files (raw or gzipped) and returns
float32 images normalised with the training set's mean and standard deviation. Those two
numbers are returned with the data (``MnistLike.mean`` / ``.std``) because a model trained
on normalised images must see new images normalised the same way: the CLI stores them in the
checkpoint's metadata and ``juanji predict`` applies them with :func:`normalize`.

``batches`` cuts arrays into mini-batches in NumPy; ``augmented_batches`` (the C++
``BatchLoader``) also crops and flips them at random, on a background thread.
"""

from __future__ import annotations

import gzip
import math
import os
import stat
import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple, Union

import numpy as np

from ._core.data import BatchLoader, epoch_plan

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# What open() takes as a file name.
PathArg = Union[str, bytes, os.PathLike]

# IDX type byte -> big-endian NumPy dtype ("the IDX file format", yann.lecun.com/exdb/mnist).
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# The most data an IDX file may declare. Fashion-MNIST's 60,000 training images are 47 MB;
# a header that claims more than 4 GiB is taken as corrupt rather than read into memory.
MAX_IDX_BYTES = 4 * 2**30
# Deflate expands at most ~1032:1, so a gzip file whose header declares more data than that
# cannot hold it: refused before decompressing anything.
MAX_DEFLATE_RATIO = 1032

STANDARD_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _missing_data_hint() -> str:
    return (
        "install Fashion-MNIST with `sudo apt-get install dataset-fashion-mnist` "
        f"(it goes to {DEFAULT_DIR}) or pass `--data DIR` naming a directory with MNIST-format "
        f"idx files ({', '.join(STANDARD_FILES.values())}, optionally .gz)"
    )


def regular_file_size(path: str, expected: str) -> int:
    """The size in bytes of the regular file ``path``; ValueError naming the path if it is a
    directory, a device or a pipe (``expected`` says what it should have been, e.g.
    "an IDX file"). Checked before opening: a directory fails with an unhelpful message and
    a device such as /dev/zero can be read until memory runs out."""
    status = os.stat(path)  # FileNotFoundError / PermissionError name the path
    if stat.S_ISDIR(status.st_mode):
        raise ValueError(f"{path}: is a directory, expected {expected}")
    if not stat.S_ISREG(status.st_mode):
        raise ValueError(f"{path}: not a regular file (a device, pipe or socket), "
                         f"expected {expected}")
    return status.st_size


def _read_idx_stream(path: str, stream: BinaryIO, compressed_size: int | None,
                     raw_size: int | None) -> np.ndarray:
    """Parses an IDX stream. The size the header declares is checked before the data is read:
    against ``raw_size`` (the file's size) for a plain file, against what ``compressed_size``
    bytes of gzip can expand to for a gzipped one, and against MAX_IDX_BYTES for both."""
    magic = stream.read(4)
    if len(magic) < 4:
        raise ValueError(f"{path}: not an IDX file: {len(magic)} bytes, the header alone needs 4")
    zero, type_code, ndim = struct.unpack(">HBB", magic)
    if zero != 0 or type_code not in IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{magic.hex()}: expected 0x0000, a type code in "
            f"{{{', '.join(f'0x{c:02x}' for c in IDX_DTYPES)}}} and at least 1 dimension"
        )
    header_size = 4 + 4 * ndim
    dimensions = stream.read(4 * ndim)
    if len(dimensions) < 4 * ndim:
        raise ValueError(
            f"{path}: truncated IDX header: expected {header_size} bytes for {ndim} dimensions, "
            f"got {4 + len(dimensions)}"
        )
    shape = struct.unpack(f">{ndim}I", dimensions)
    dtype = IDX_DTYPES[type_code]
    # Python ints: up to 255 dimensions of 2**32 - 1 overflow any fixed-width product.
    data_size = math.prod(shape) * dtype.itemsize
    expected = header_size + data_size
    declared = f"header says shape {tuple(shape)} of {dtype.name}, expected {expected} bytes"
    if raw_size is not None and raw_size != expected:
        problem = "truncated" if raw_size < expected else "corrupt (trailing bytes)"
        raise ValueError(f"{path}: {problem} IDX file: {declared}, got {raw_size}")
    if compressed_size is not None and expected > MAX_DEFLATE_RATIO * compressed_size:
        raise ValueError(f"{path}: truncated IDX file: {declared}, but {compressed_size} bytes "
                         f"of gzip expand to at most {MAX_DEFLATE_RATIO * compressed_size}")
    if data_size > MAX_IDX_BYTES:
        raise ValueError(f"{path}: {declared}, more than the {MAX_IDX_BYTES} bytes of data an "
                         "IDX file may have")
    payload = stream.read(data_size)
    if len(payload) < data_size:
        raise ValueError(f"{path}: truncated IDX file: {declared}, "
                         f"got {header_size + len(payload)}")
    if stream.read(1):
        raise ValueError(f"{path}: corrupt (trailing bytes) IDX file: {declared}, got more")
    data = np.frombuffer(payload, dtype=dtype).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def read_idx(path: PathArg) -> np.ndarray:
    """Reads an IDX file (raw, or gzipped if the name ends in .gz) into a native-endian array.

    Raises ValueError if the path is not a regular file, or the magic number, type code or
    size does not match the header, or the header declares more than MAX_IDX_BYTES of data.
    """
    path = os.fsdecode(path)
    file_size = regular_file_size(path, "an IDX file")
    with open(path, "rb") as file:
        if not path.endswith(".gz"):
            return _read_idx_stream(path, file, compressed_size=None, raw_size=file_size)
        try:
            with gzip.GzipFile(fileobj=file) as stream:
                return _read_idx_stream(path, stream, compressed_size=file_size, raw_size=None)
        except (OSError, EOFError, zlib.error) as e:
            # gzip reports a cut-off or damaged stream as EOFError / BadGzipFile / zlib.error.
            raise ValueError(f"{path}: corrupt or truncated gzip stream ({e})") from e


def write_idx(path: PathArg, array: np.ndarray) -> None:
    """Writes ``array`` as an IDX file, gzipped if ``path`` ends in .gz."""
    path = os.fsdecode(path)
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise TypeError(f"write_idx: dtype {array.dtype} has no IDX type code")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"write_idx: array of shape {array.shape} needs 1 to 255 dimensions")
    header = struct.pack(f">HBB{array.ndim}I", 0, codes[native], array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[codes[native]]).tobytes()
    if path.endswith(".gz"):
        # mtime=0 keeps the output byte-identical from run to run.
        with open(path, "wb") as raw_file, gzip.GzipFile(
            filename="", mode="wb", fileobj=raw_file, mtime=0, compresslevel=9
        ) as f:
            f.write(payload)
    else:
        with open(path, "wb") as f:
            f.write(payload)


def find_idx_file(directory: str, name: str) -> str:
    """The path of ``name`` or ``name.gz`` in ``directory``; FileNotFoundError with the
    install hint if neither exists."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"no {name}[.gz] in {directory!r}: {_missing_data_hint()}")


def to_float_images(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 -> (N, 1, H, W) float32 in [0, 1]."""
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W), got {images.shape}")
    return (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]


def normalize(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(x - mean) / std in float32, the normalisation the models are trained with."""
    return ((x - np.float32(mean)) / np.float32(std)).astype(np.float32, copy=False)


class MnistLike(NamedTuple):
    """A normalised train/test split; ``mean``/``std`` are what normalised it (on [0, 1] pixels)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: float
    std: float


def check_labels(path: str, labels: np.ndarray, images_path: str, count: int,
                 classes: int) -> None:
    """ValueError naming ``path`` unless ``labels`` holds one integer in [0, classes) for each
    of the ``count`` images in ``images_path``."""
    if labels.ndim != 1 or labels.shape[0] != count:
        raise ValueError(f"{path}: expected {count} labels (one per image in {images_path}), "
                         f"got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels must be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"{path}: labels must lie in [0, {classes - 1}], "
                         f"got [{labels.min()}, {labels.max()}]")


def _check_split(images_path: str, images: np.ndarray,
                 labels_path: str, labels: np.ndarray) -> None:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected uint8 images of shape (N, H, W), "
                         f"got {images.dtype} {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{images_path}: holds no images")
    check_labels(labels_path, labels, images_path, images.shape[0], len(CLASS_NAMES))


def load_mnist_like(directory: PathArg = DEFAULT_DIR, limit: int | None = None) -> MnistLike:
    """Loads the four standard IDX files from ``directory``.

    Images come back as float32 (N, 1, H, W): pixels scaled to [0, 1], then normalised with
    the mean and standard deviation of the (first ``limit``) training images. Labels are int64.
    """
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    directory = os.fsdecode(directory)
    if not os.path.exists(directory):
        raise FileNotFoundError(
            f"data directory {directory!r} does not exist: {_missing_data_hint()}")
    if not os.path.isdir(directory):
        raise ValueError(f"data directory {directory!r} is not a directory: "
                         f"{_missing_data_hint()}")
    paths = {key: find_idx_file(directory, name) for key, name in STANDARD_FILES.items()}
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        _check_split(
            paths[f"{split}_images"], arrays[f"{split}_images"],
            paths[f"{split}_labels"], arrays[f"{split}_labels"],
        )
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise ValueError(
            f"{directory}: training images are {arrays['train_images'].shape[1:]} but test images "
            f"are {arrays['test_images'].shape[1:]}"
        )
    if limit is not None:
        arrays["train_images"] = arrays["train_images"][:limit]
        arrays["train_labels"] = arrays["train_labels"][:limit]

    x_train = to_float_images(arrays["train_images"])
    x_test = to_float_images(arrays["test_images"])
    # Accumulated in float64: a float32 sum over 47M pixels keeps only ~6 digits.
    mean = float(x_train.mean(dtype=np.float64))
    std = float(x_train.std(dtype=np.float64))
    if not std > 0.0:
        raise ValueError(f"{paths['train_images']}: all training pixels are equal, "
                         "cannot normalise")
    return MnistLike(
        x_train=normalize(x_train, mean, std),
        y_train=arrays["train_labels"].astype(np.int64),
        x_test=normalize(x_test, mean, std),
        y_test=arrays["test_labels"].astype(np.int64),
        mean=mean,
        std=std,
    )


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shuffle: bool = False,
    rng: np.random.Generator | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields contiguous (x, y) mini-batches; the last one may be smaller.

    With ``shuffle`` the order is a fresh permutation drawn from ``rng``.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if shuffle:
        order = (rng if rng is not None else np.random.default_rng()).permutation(len(x))
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            yield x[index], y[index]
    else:
        for start in range(0, len(x), batch_size):
            yield (
                np.ascontiguousarray(x[start : start + batch_size]),
                np.ascontiguousarray(y[start : start + batch_size]),
            )


class EpochPlan(NamedTuple):
    """The random choices of one epoch, one entry per position: the image taken there
    (``order``), the corner of its crop in the padded image and whether it is mirrored."""

    order: np.ndarray  # int64
    crop_top: np.ndarray  # int64, in [0, 2 * crop_padding]
    crop_left: np.ndarray  # int64, in [0, 2 * crop_padding]
    flipped: np.ndarray  # bool


def augmented_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    crop_padding: int = 4,
    flip: bool = True,
    shuffle: bool = True,
    fill: float = 0.0,
    prefetch: int = 2,
    shard: int = 0,
    shards: int = 1,
) -> BatchLoader:
    """One epoch of (x, y) mini-batches, each image randomly cropped and flipped, made in C++ on
    a background thread up to ``prefetch`` batches ahead of the loop that consumes them.

    ``x`` is (N, C, H, W) float32, ``y`` (N,) integers. Each image is padded by
    ``crop_padding`` pixels of ``fill`` and an H x W window taken at a random offset
    (torchvision's ``RandomCrop(padding=crop_padding, fill=fill)``; for normalised images pass
    the normalised value of black, ``(0 - mean) / std``), then mirrored left-right with
    probability 1/2 if ``flip``. The batches depend only on (``seed``, ``epoch``) and the
    arguments, never on timing or the thread count; :func:`augmentation_plan` lists the choices.
    ``crop_padding=0, flip=False`` gives the plain (shuffled) batches. For data parallelism,
    ``shard=rank, shards=world`` makes only that rank's slice of each batch (rows
    ``rank * n // world`` to ``(rank + 1) * n // world`` of its ``n``), the same rows as the
    whole batch would hold there.
    """
    return BatchLoader(x, y, batch_size, shuffle=shuffle, crop_padding=crop_padding, flip=flip,
                       fill=fill, seed=seed, epoch=epoch, prefetch=prefetch, shard=shard, shards=shards)


def augmentation_plan(count: int, *, seed: int, epoch: int, crop_padding: int = 4,
                      flip: bool = True, shuffle: bool = True) -> EpochPlan:
    """The choices ``augmented_batches`` makes with these arguments for ``count`` images: the
    batches are ``batch_size`` consecutive positions of the plan."""
    return EpochPlan(*epoch_plan(count, shuffle=shuffle, crop_padding=crop_padding, flip=flip,
                                 seed=seed, epoch=epoch))

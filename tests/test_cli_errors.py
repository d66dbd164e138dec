"""Every user error of the ``juanji`` command: exit status 2, one line on stderr naming the bad
argument or file, no traceback. One case of each kind runs the command as a subprocess, as a
user would; variants run ``cli.main`` in this process, which is ten times quicker."""

import os
import stat
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

import juanji
from juanji import cli, data, nn

# The subprocess must import the juanji these tests import, wherever that is.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(juanji.__file__)))
ENV = {**os.environ,
       "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")]))}
TRAIN_IMAGES = data.STANDARD_FILES["train_images"]
TRAIN_LABELS = data.STANDARD_FILES["train_labels"]


def juanji_command(*argv):
    # The timeout turns a read that never ends (a device, a pipe) into a failure, not a hang.
    return subprocess.run([sys.executable, "-m", "juanji", *map(str, argv)], capture_output=True,
                          text=True, env=ENV, timeout=60)


def juanji_main(capsys, *argv):
    """``cli.main`` in this process, its outcome as a CompletedProcess like juanji_command's."""
    try:
        status = cli.main([str(arg) for arg in argv])
    except SystemExit as e:  # argparse's way out
        status = e.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, status, out, err)


def assert_user_error(done, *names):
    """Exit status 2 and one stderr line that names each of ``names``."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("juanji") and "error: " in lines[0], lines[0]
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a 1-bit grayscale image of width x height and holds no pixels."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b""))


@pytest.fixture
def checkpoint(tmp_path):
    """A model for (N, 1, 28, 28) images with the normalisation `juanji train` would store."""
    path = tmp_path / "model.safetensors"
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    model.save(str(path), metadata={"mean": "0.25", "std": "0.5"})
    return path


@pytest.fixture
def images(tmp_path):
    path = tmp_path / "images-idx3-ubyte"
    data.write_idx(str(path), np.random.default_rng(0).integers(0, 256, (25, 28, 28), np.uint8))
    return path


@pytest.fixture
def data_dir(tmp_path):
    """A tiny MNIST-format data set: 8 training and 4 test images."""
    directory = tmp_path / "data"
    directory.mkdir()
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 4)):
        data.write_idx(str(directory / data.STANDARD_FILES[f"{split}_images"]),
                       rng.integers(0, 256, (count, 28, 28), np.uint8))
        data.write_idx(str(directory / data.STANDARD_FILES[f"{split}_labels"]),
                       (np.arange(count) % 10).astype(np.uint8))
    return directory


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("a shopping list, not a picture or a model\n" * 10)
    return path


def small_png(path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(str(path))
    return path


# --------------------------------------------------------------------------------------------
# files that are not what they should be
# --------------------------------------------------------------------------------------------
def test_directory_given_for_a_file(tmp_path, checkpoint, capsys):
    folder = tmp_path / "folder.png"
    folder.mkdir()
    assert_user_error(juanji_command("predict", checkpoint, folder), folder, "is a directory")
    assert_user_error(juanji_main(capsys, "predict", tmp_path, folder), tmp_path, "is a directory")
    assert_user_error(juanji_main(capsys, "filters", folder, "--out", tmp_path / "out"), folder)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_device_is_refused_unread(checkpoint, capsys):
    # Read as an IDX file, /dev/zero would be read until memory runs out: in a subprocess,
    # which the timeout ends.
    assert_user_error(juanji_command("predict", checkpoint, "/dev/zero"), "/dev/zero",
                      "not a regular file")
    assert_user_error(juanji_main(capsys, "predict", "/dev/zero", checkpoint), "/dev/zero",
                      "not a regular file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_named_pipe_is_refused_unopened(tmp_path, checkpoint):
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)  # opening it for reading would wait for a writer forever
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert_user_error(juanji_command("predict", checkpoint, pipe), pipe, "not a regular file")


def test_text_file_as_a_picture(checkpoint, text_file, tmp_path, capsys):
    # matplotlib used to hand a .png to Pillow's PNG reader, which raised SyntaxError.
    fake_png, fake_jpeg = tmp_path / "fake.png", tmp_path / "fake.jpg"
    for fake in (fake_png, fake_jpeg):
        fake.write_bytes(text_file.read_bytes())
    assert_user_error(juanji_command("predict", checkpoint, fake_png), fake_png, "not a picture")
    assert_user_error(juanji_main(capsys, "predict", checkpoint, fake_jpeg), fake_jpeg,
                      "not a picture")


def test_text_file_to_filters(text_file, tmp_path):
    assert_user_error(juanji_command("filters", text_file, "--out", tmp_path / "out"), text_file,
                      "not a picture")


def test_truncated_picture(checkpoint, tmp_path, capsys):
    picture = tmp_path / "cut.png"
    whole = small_png(tmp_path / "whole.png").read_bytes()
    picture.write_bytes(whole[: len(whole) // 2])
    assert_user_error(juanji_main(capsys, "predict", checkpoint, picture), picture)


def test_decompression_bomb_is_refused(checkpoint, tmp_path, capsys):
    picture = tmp_path / "bomb.png"  # 100 million pixels declared in 67 bytes
    picture.write_bytes(png_header_only(10_000, 10_000))
    assert_user_error(juanji_main(capsys, "predict", checkpoint, picture), picture,
                      "exceeds limit")


def test_oversized_picture_is_refused_unread(checkpoint, tmp_path, capsys):
    picture = tmp_path / "huge.png"
    with open(picture, "wb") as f:
        f.truncate(cli.MAX_PICTURE_BYTES + 1)  # sparse: takes no disk space
    assert_user_error(juanji_main(capsys, "predict", checkpoint, picture), picture,
                      f"more than the {cli.MAX_PICTURE_BYTES} bytes")


def test_text_file_as_a_checkpoint(text_file, images):
    assert_user_error(juanji_command("predict", text_file, images), text_file)


def test_missing_files(tmp_path, checkpoint, images, capsys):
    assert_user_error(juanji_main(capsys, "predict", tmp_path / "none.safetensors", images),
                      "none.safetensors")
    assert_user_error(juanji_main(capsys, "predict", checkpoint, tmp_path / "none.png"),
                      "none.png", "No such file")


# --------------------------------------------------------------------------------------------
# IDX files that contradict themselves or each other
# --------------------------------------------------------------------------------------------
def test_out_of_range_labels(checkpoint, images, tmp_path, data_dir, capsys):
    labels = tmp_path / "labels-idx1-ubyte"
    data.write_idx(str(labels), np.full(25, 10, dtype=np.uint8))
    assert_user_error(juanji_command("predict", checkpoint, images, "--labels", labels),
                      labels, "[0, 9], got [10, 10]")
    train_labels = data_dir / TRAIN_LABELS
    data.write_idx(str(train_labels), np.full(8, 255, dtype=np.uint8))
    assert_user_error(juanji_main(capsys, "train", "--data", data_dir, "--out", tmp_path / "run"),
                      train_labels, "[0, 9]")


def test_label_count_differs_from_image_count(checkpoint, images, tmp_path, data_dir, capsys):
    labels = tmp_path / "labels-idx1-ubyte"
    data.write_idx(str(labels), np.zeros(24, dtype=np.uint8))
    assert_user_error(juanji_command("predict", checkpoint, images, "--labels", labels),
                      labels, "expected 25 labels")
    data.write_idx(str(data_dir / TRAIN_LABELS), np.zeros(9, dtype=np.uint8))
    assert_user_error(juanji_main(capsys, "train", "--data", data_dir, "--out", tmp_path / "run"),
                      TRAIN_LABELS, "expected 8 labels")


def test_wrong_magic(checkpoint, tmp_path, data_dir, capsys):
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x08\x03" + bytes(12))
    assert_user_error(juanji_command("predict", checkpoint, bad), bad, "bad IDX magic")
    (data_dir / TRAIN_IMAGES).write_bytes(b"\x01\x02\x08\x03" + bytes(12))
    assert_user_error(juanji_main(capsys, "train", "--data", data_dir, "--out", tmp_path / "run"),
                      TRAIN_IMAGES, "bad IDX magic")


def test_truncated_idx(checkpoint, images, tmp_path, capsys):
    cut = tmp_path / "cut-idx3-ubyte"
    cut.write_bytes(images.read_bytes()[:-1])
    assert_user_error(juanji_command("predict", checkpoint, cut), cut, "truncated")
    # 2**32 - 1 images of 28 x 28 declared in a 16-byte file: refused before reading.
    liar = tmp_path / "liar-idx3-ubyte"
    liar.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**32 - 1, 28, 28))
    assert_user_error(juanji_main(capsys, "predict", checkpoint, liar), liar, "truncated")


def test_empty_training_set(data_dir, tmp_path):
    data.write_idx(str(data_dir / TRAIN_IMAGES), np.zeros((0, 28, 28), dtype=np.uint8))
    data.write_idx(str(data_dir / TRAIN_LABELS), np.zeros(0, dtype=np.uint8))
    assert_user_error(juanji_command("train", "--data", data_dir, "--out", tmp_path / "run"),
                      TRAIN_IMAGES, "holds no images")


def test_missing_data_directory(tmp_path):
    line = assert_user_error(juanji_command("train", "--data", tmp_path / "nowhere"), "nowhere")
    assert "--data DIR" in line


# --------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------
def test_out_naming_an_existing_file(data_dir, text_file, tmp_path, capsys):
    assert_user_error(juanji_command("train", "--data", data_dir, "--out", text_file),
                      f"--out {text_file}", "not a directory")
    picture = small_png(tmp_path / "small.png")
    assert_user_error(juanji_main(capsys, "filters", picture, "--out", text_file),
                      f"--out {text_file}")


def test_invalid_numeric_option():
    assert_user_error(juanji_command("predict", "model.safetensors", "image.png", "--std", "0"),
                      "argument --std:", "'0'")


@pytest.mark.parametrize("argv", [
    ["predict", "m", "f", "--mean", "nan"],
    ["predict", "m", "f", "--limit", "0"],
    ["train", "--epochs", "-1"],
    ["train", "--epochs", "two"],
    ["train", "--batch-size", "0"],
    ["train", "--lr", "nan"],
    ["train", "--lr", "-0.1"],
    ["train", "--momentum", "inf"],
    ["train", "--weight-decay", "-1"],
    ["train", "--threads", "0"],
    ["train", "--seed", "-1"],
    ["train", "--limit", "0"],
], ids=" ".join)
def test_invalid_numeric_options(argv, capsys):
    option, value = argv[-2:]
    assert_user_error(juanji_main(capsys, *argv), f"argument {option}:", repr(value))


def test_unusable_checkpoint_statistics(tmp_path, images, capsys):
    path = tmp_path / "zero-std.safetensors"
    nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).save(
        str(path), metadata={"mean": "0.25", "std": "0"})
    assert_user_error(juanji_main(capsys, "predict", path, images), path, "std", "--std")


def test_cmake_dir_of_a_copy_built_without_it(monkeypatch, tmp_path, capsys):
    # As if the wheel had been built with install.components = ["python"].
    monkeypatch.setattr(juanji._core, "__file__", str(tmp_path / "_core.so"))
    with pytest.raises(FileNotFoundError, match="CMake package is not installed"):
        juanji.cmake_dir()
    line = assert_user_error(juanji_main(capsys, "--cmake-dir"), tmp_path, "juanjiConfig.cmake")
    assert line.startswith("juanji: error: ")


# --------------------------------------------------------------------------------------------
# what is not a user error
# --------------------------------------------------------------------------------------------
def test_ctrl_c_exits_130_quietly(monkeypatch, capsys, tmp_path):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_filters", interrupted)
    assert cli.main(["filters", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr() == ("", "")


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    def buggy(args):
        return {}["missing"]

    monkeypatch.setattr(cli, "cmd_filters", buggy)
    with pytest.raises(KeyError):
        cli.main(["filters", "--out", str(tmp_path)])


def test_reader_closing_the_pipe_early(checkpoint, tmp_path):
    # `juanji predict ... --all | head -1`: the reader goes away, which is no error of ours.
    many = tmp_path / "many-idx3-ubyte"
    data.write_idx(str(many), np.zeros((5000, 28, 28), np.uint8))
    process = subprocess.Popen([sys.executable, "-m", "juanji", "predict", str(checkpoint), str(many), "--all"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    with process:
        process.stdout.readline()
        process.stdout.close()
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=60) == 0, stderr
    assert stderr == ""


def test_model_too_large_for_memory(monkeypatch, capsys):
    def too_large(args):
        raise MemoryError("could not allocate 123456789012 bytes for tensor storage")

    parser_handler = cli.build_parser().parse_args(["train", "--model", "lenet5"]).handler
    monkeypatch.setattr(cli, parser_handler.__name__, too_large)
    done = juanji_main(capsys, "train", "--model", "lenet5")
    assert_user_error(done, "123456789012 bytes")

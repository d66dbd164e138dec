"""The ``juanji`` command (train / predict / filters) and the figures it draws (juanji.plots)."""

import ctypes
import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import juanji
from juanji import cli, data, plots

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SUBSET_DIR = os.path.join(TESTS_DIR, "data", "fashion-mnist-subset")
SUBSET_TEST_IMAGES = os.path.join(SUBSET_DIR, "t10k-images-idx3-ubyte.gz")
SUBSET_TEST_LABELS = os.path.join(SUBSET_DIR, "t10k-labels-idx1-ubyte.gz")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def parse_train(*argv):
    args = cli.build_parser().parse_args(["train", *argv])
    cli.resolve_train_defaults(args)
    return args


def hyperparameters(args):
    return tuple(getattr(args, field) for field in cli.TrainDefaults._fields)


def assert_png(path):
    assert os.path.isfile(path), path
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, path


# --------------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["convnet", "lenet5", "resnet"])
def test_train_defaults_per_model(model):
    args = parse_train() if model == "convnet" else parse_train("--model", model)
    assert args.model == model
    assert hyperparameters(args) == tuple(cli.TRAIN_DEFAULTS[model])
    assert args.out == os.path.join("runs", model)
    assert (args.data, args.device, args.seed) == (data.DEFAULT_DIR, "cpu", 0)
    assert args.limit is None and args.threads is None


def test_train_flags_override_defaults():
    args = parse_train("--model", "lenet5", "--epochs", "3", "--batch-size", "32", "--lr", "0.1",
                       "--momentum", "0.5", "--weight-decay", "1e-4", "--schedule", "step",
                       "--threads", "1", "--seed", "7", "--data", "d", "--out", "o",
                       "--device", "cuda", "--limit", "600", "--augment", "flip", "--optimizer", "adamw",
                       "--warmup-epochs", "2", "--lr-update", "step", "--label-smoothing", "0.05",
                       "--crop-padding", "2", "--tta", "flip")
    assert hyperparameters(args) == (3, 32, 0.1, 0.5, 1e-4, "step", "flip", "adamw", 2, "step", 0.05, 2, "flip")
    assert (args.threads, args.seed, args.data, args.out) == (1, 7, "d", "o")
    assert (args.device, args.limit) == ("cuda", 600)


@pytest.mark.parametrize("argv", [
    ["train", "--model", "resnet50"], ["train", "--schedule", "linear"], ["train", "--device", "tpu"],
    ["train", "--epochs", "two"], [], ["predict", "x"], ["train", "--optimizer", "rmsprop"],
    ["train", "--label-smoothing", "1.5"], ["train", "--warmup-epochs", "-1"], ["train", "--lr-update", "batch"],
    ["train", "--crop-padding", "0"],
])
def test_bad_arguments_exit_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("juanji") and "error:" in err
    assert "--help)" in err


@pytest.mark.parametrize("flag", ["--epochs", "--batch-size", "--limit", "--threads"])
def test_non_positive_sizes_are_errors(flag, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", flag, "0", "--data", SUBSET_DIR])
    assert info.value.code == 2
    assert f"argument {flag}: must be a positive integer, got '0'" in capsys.readouterr().err


@pytest.mark.skipif(juanji.cuda_device_count() > 0, reason="a GPU is visible: test_cuda.py trains on it")
def test_cuda_training_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    status = cli.main(["train", "--device", "cuda", "--data", SUBSET_DIR, "--out", str(tmp_path)])
    assert status == 2
    err = capsys.readouterr().err
    assert "--device cuda: no CUDA GPU" in err and "use --device cpu" in err


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    status = cli.main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    assert status == 2
    err = capsys.readouterr().err
    assert "juanji train: error:" in err and "sudo apt-get install dataset-fashion-mnist" in err
    assert "--data DIR" in err


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "juanji", "train", "--help"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for flag in ("--model", "--epochs", "--batch-size", "--lr", "--momentum", "--schedule",
                 "--augment", "--threads", "--seed", "--data", "--out", "--device", "--limit"):
        assert flag in done.stdout


def test_version_and_cmake_dir_options(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"juanji {juanji.__version__}\n"
    # The folder of juanjiConfig.cmake that pip installs; test_cmake_package.py builds against it.
    done = subprocess.run([sys.executable, "-m", "juanji", "--cmake-dir"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == juanji.cmake_dir() + "\n"
    assert os.path.isfile(os.path.join(juanji.cmake_dir(), "juanjiConfig.cmake"))


# --------------------------------------------------------------------------------------------
# train + predict on the real-image subset
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["convnet", "lenet5", "resnet"])
def test_train_writes_artifacts_and_loss_falls(tmp_path, model, capsys):
    import juanji

    out = tmp_path / "run"
    limit, batch = 400, 64
    status = cli.main(["train", "--model", model, "--data", SUBSET_DIR, "--epochs", "2",
                       "--limit", str(limit), "--batch-size", str(batch), "--out", str(out),
                       "--seed", "1"])
    printed = capsys.readouterr().out
    assert status == 0
    assert "epoch 2/2:" in printed and "test accuracy" in printed

    log = json.loads((out / "log.json").read_text())
    assert log["args"]["model"] == model and log["args"]["limit"] == limit
    assert log["steps_per_epoch"] == math.ceil(limit / batch)
    assert len(log["step_losses"]) == 2 * log["steps_per_epoch"]
    assert all(math.isfinite(v) for v in log["step_losses"])
    first, second = log["epochs"]
    assert second["train_loss"] < first["train_loss"]
    assert 0.0 <= second["test_accuracy"] <= 1.0 and second["seconds"] > 0

    metadata = juanji.load_metadata(str(out / "model.safetensors"))
    assert metadata["model"] == model
    assert float(metadata["mean"]) == pytest.approx(log["mean"])
    assert float(metadata["std"]) == pytest.approx(log["std"])

    if plots.available():
        for name in ("curves.png", "filters.png", "feature_maps.png"):
            assert_png(str(out / name))

    # The ResNet's evaluations average each image's outputs with its mirror image's (--tta flip),
    # and the images alone are scored once more at the end.
    mirrored = cli.TRAIN_DEFAULTS[model].tta == "flip"
    assert ("with mirror images averaged (--tta flip)" in printed) == mirrored
    assert ("single_view_test_accuracy" in log) == mirrored
    single_view = log["single_view_test_accuracy"] if mirrored else second["test_accuracy"]

    # The saved model scores the test images (one view each) exactly as the last evaluation did.
    status = cli.main(["predict", str(out / "model.safetensors"), SUBSET_TEST_IMAGES,
                       "--labels", SUBSET_TEST_LABELS, "--limit", "100"])
    printed = capsys.readouterr().out.splitlines()
    assert status == 0
    assert len(printed) == 101
    assert printed[-1] == f"accuracy {100 * single_view:.2f}% on 100 images"


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_train_with_adam_warm_up_and_per_step_schedule(tmp_path, optimizer, capsys):
    out = tmp_path / "run"
    precision = "bf16" if optimizer == "adamw" else "fp32"  # mixed precision trains with either
    assert cli.main(["train", "--model", "convnet", "--data", SUBSET_DIR, "--epochs", "3", "--limit", "256",
                     "--batch-size", "64", "--out", str(out), "--optimizer", optimizer, "--lr", "0.004",
                     "--warmup-epochs", "1", "--lr-update", "step", "--label-smoothing", "0.1",
                     "--augment", "crop,flip", "--precision", precision]) == 0
    printed = capsys.readouterr().out
    assert f"{optimizer} lr 0.004, weight decay" in printed and "label smoothing 0.1" in printed
    assert f"precision {precision}," in printed
    log = json.loads((out / "log.json").read_text())
    # Per step: a linear warm-up from lr / (4 + 1) over the first epoch's 4 steps, then a cosine over
    # the other 2 epochs' 8 steps, half way down after 4 of them.
    assert [e["lr"] for e in log["epochs"]] == pytest.approx([0.004 / 5, 0.004, 0.002])
    assert log["training_seconds"] > 0


def test_train_without_tqdm_and_matplotlib(tmp_path, capsys, monkeypatch):
    # A None entry in sys.modules makes `import name` raise ImportError.
    for name in ("tqdm", "matplotlib", "matplotlib.figure", "matplotlib.image"):
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "run"
    assert cli.main(["train", "--model", "lenet5", "--data", SUBSET_DIR, "--epochs", "1",
                     "--limit", "128", "--batch-size", "32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/1: 128/128 images, loss" in printed
    assert "matplotlib is not installed: skipping" in printed
    assert (out / "model.safetensors").is_file() and (out / "log.json").is_file()
    assert not list(out.glob("*.png"))
    assert cli.main(["filters", "--out", str(tmp_path / "filters")]) == 2
    assert "needs matplotlib" in capsys.readouterr().err


def test_predict_reads_pictures(tmp_path, capsys):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    out = tmp_path / "run"
    assert cli.main(["train", "--model", "lenet5", "--data", SUBSET_DIR, "--epochs", "1",
                     "--limit", "64", "--out", str(out)]) == 0
    boot = data.read_idx(SUBSET_TEST_IMAGES)[0]
    exact, large = str(tmp_path / "boot.png"), str(tmp_path / "boot_large.png")
    matplotlib_image.imsave(exact, boot, cmap="gray", vmin=0, vmax=255)  # written as RGBA
    matplotlib_image.imsave(large, np.kron(boot, np.ones((3, 3))), cmap="gray", vmin=0, vmax=255)
    capsys.readouterr()
    for picture in (exact, large):
        assert cli.main(["predict", str(out / "model.safetensors"), picture]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 1 and lines[0].startswith("0: ")
    # The RGBA picture reads back as the original pixels (the gray colormap may move one level).
    pixels = cli.read_images(exact, 28, 28, invert=False)[0, 0]
    assert pixels == pytest.approx(boot / 255.0, abs=1.01 / 255)
    assert cli.read_images(large, 28, 28, invert=True).shape == (1, 1, 28, 28)


def test_predict_missing_checkpoint(tmp_path, capsys):
    status = cli.main(["predict", str(tmp_path / "none.safetensors"), SUBSET_TEST_IMAGES])
    assert status == 2
    assert "juanji predict: error:" in capsys.readouterr().err


def linear_classifier_and_images(tmp_path, count):
    """A checkpoint of a linear classifier of 28x28 images and an idx file of `count` images."""
    checkpoint = str(tmp_path / "model.safetensors")
    juanji.nn.Sequential(juanji.nn.Flatten(), juanji.nn.Linear(28 * 28, 10)).save(
        checkpoint, metadata={"mean": "0.25", "std": "0.5"})
    images = str(tmp_path / "images-idx3-ubyte")
    data.write_idx(images, np.zeros((count, 28, 28), dtype=np.uint8))
    return checkpoint, images


def test_predict_says_how_many_images_it_left_out(tmp_path, capsys):
    checkpoint, images = linear_classifier_and_images(tmp_path, 1025)

    assert cli.main(["predict", checkpoint, images]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 21 and printed[19].startswith("19: ")
    assert printed[-1] == "... and 1,005 more images, not classified (use --limit N or --all)"
    assert cli.main(["predict", checkpoint, images, "--all"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1025 and printed[-1].startswith("1024: ")
    with pytest.raises(SystemExit):
        cli.main(["predict", checkpoint, images, "--all", "--limit", "5"])
    assert "not allowed with argument" in capsys.readouterr().err


def count_opens(path, action) -> int:
    """How many times the file `path` is opened while `action()` runs, as Linux's inotify sees
    it (opens made in C++ as well as in Python)."""
    libc = ctypes.CDLL(None, use_errno=True)
    in_close, in_open, in_nonblock = 0x08 | 0x10, 0x20, os.O_NONBLOCK  # <sys/inotify.h>
    fd = libc.inotify_init1(in_nonblock)
    if fd < 0:
        pytest.skip(f"inotify: {os.strerror(ctypes.get_errno())}")
    try:
        # Closes too: the kernel merges an event into an identical one just before it.
        if libc.inotify_add_watch(fd, os.fsencode(path), in_open | in_close) < 0:
            pytest.skip(f"inotify: {os.strerror(ctypes.get_errno())}")
        action()
        opens = 0
        while True:
            try:
                events = os.read(fd, 4096)
            except BlockingIOError:
                return opens
            offset = 0
            while offset < len(events):  # struct inotify_event, then `length` bytes of name
                _, mask, _, length = struct.unpack_from("iIII", events, offset)
                opens += bool(mask & in_open)
                offset += struct.calcsize("iIII") + length
    finally:
        os.close(fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts opens with Linux's inotify")
def test_predict_reads_the_checkpoint_once(tmp_path, capsys):
    # The model and the metadata it is used with come from one reading of the file.
    checkpoint, images = linear_classifier_and_images(tmp_path, 2)
    assert count_opens(checkpoint, lambda: cli.main(["predict", checkpoint, images])) == 1
    assert capsys.readouterr().out.startswith("0: ")
    # The count sees every open: two readings are two.
    assert count_opens(checkpoint, lambda: [juanji.load_metadata(checkpoint) for _ in range(2)]) == 2


def test_resize_keeps_a_constant_image_and_shape():
    image = np.full((100, 70), 0.25, dtype=np.float32)
    resized = cli.resize_image(image, 28, 28)
    assert resized.shape == (28, 28) and resized.dtype == np.float32
    np.testing.assert_allclose(resized, 0.25, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# filters (the seeds' edge-detection demo)
# --------------------------------------------------------------------------------------------
FILTER_OUTPUTS = ["input", "box", "gaussian", "laplacian", "sobel_x", "sobel_y",
                  "gradient_magnitude", "overview"]


def test_filters_writes_pngs(tmp_path):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    picture = str(tmp_path / "step.png")
    step = np.zeros((40, 60))
    step[:, 30:] = 1.0  # a vertical edge: Sobel x responds, Sobel y does not
    matplotlib_image.imsave(picture, step, cmap="gray")
    assert cli.main(["filters", picture, "--out", str(tmp_path / "out")]) == 0
    for name in FILTER_OUTPUTS:
        assert_png(str(tmp_path / "out" / f"{name}.png"))
    sobel_y = matplotlib_image.imread(str(tmp_path / "out" / "sobel_y.png"))
    sobel_x = matplotlib_image.imread(str(tmp_path / "out" / "sobel_x.png"))
    assert sobel_x.shape[:2] == (40, 60)
    # Away from the top/bottom borders Sobel y sees a constant column profile; Sobel x does not.
    assert np.ptp(sobel_y[5:-5, :, :3], axis=0).max() < 1e-6 and np.ptp(sobel_x[20, :, 0]) > 0.5


def test_filters_default_photo(tmp_path):
    pytest.importorskip("matplotlib")
    assert os.path.isfile(cli.default_photo())
    assert cli.main(["filters", "--out", str(tmp_path)]) == 0
    assert_png(str(tmp_path / "gradient_magnitude.png"))


# --------------------------------------------------------------------------------------------
# juanji.plots with made-up arrays
# --------------------------------------------------------------------------------------------
def test_plots_draw_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    epochs = [{"epoch": e, "train_loss": 2.0 / e, "test_loss": 2.1 / e,
               "test_accuracy": 0.5 + 0.1 * e} for e in (1, 2, 3)]
    log = {"steps_per_epoch": 4, "step_losses": list(np.linspace(2.3, 0.4, 12)), "epochs": epochs}
    plots.plot_curves(log, str(tmp_path / "curves.png"))
    plots.plot_filters(rng.standard_normal((6, 1, 5, 5)), str(tmp_path / "filters1.png"))
    plots.plot_filters(rng.standard_normal((4, 3, 3, 3)), str(tmp_path / "filters3.png"))
    maps = [("conv", rng.random((12, 28, 28))), ("pool", rng.random((3, 14, 14)))]
    plots.plot_feature_maps(rng.random((28, 28)), maps, str(tmp_path / "maps.png"), title="maps")
    plots.save_image_grid([rng.random((8, 8)) for _ in range(5)], str(tmp_path / "grid.png"),
                          titles=list("abcde"), ncols=2)
    for name in ("curves", "filters1", "filters3", "maps", "grid"):
        assert_png(str(tmp_path / f"{name}.png"))


def test_plots_reject_wrong_shapes(tmp_path):
    pytest.importorskip("matplotlib")
    path = str(tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\(K, C, R, S\), got \(5, 5\)"):
        plots.plot_filters(np.zeros((5, 5)), path)
    with pytest.raises(ValueError, match=r"map 'conv' must be \(C, H, W\), got shape \(4, 4\)"):
        plots.plot_feature_maps(np.zeros((4, 4)), [("conv", np.zeros((4, 4)))], path)
    with pytest.raises(ValueError, match="2 images but 1 titles"):
        plots.save_image_grid([np.zeros((2, 2))] * 2, path, titles=["a"])
    with pytest.raises(ValueError, match="no images"):
        plots.save_image_grid([], path)
    assert not os.path.exists(path)
